"""ESP (RFC 4303) with AES-GCM and ChaCha20-Poly1305: usertunnel.core.esp against scapy, the RFCs and models."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP
from scapy.layers.ipsec import ESP
from scapy.layers.ipsec import SecurityAssociation as ScapySA

from usertunnel.core import esp
from usertunnel.core.drops import Drop
from usertunnel.core.errors import ConfigError
from usertunnel.core.esp import CHACHA, GCM, EspKeys, Opener, Sealer, SecurityAssociation

SCAPY_NAME = {GCM: "AES-GCM", CHACHA: "CHACHA20-POLY1305"}
# (kernel name, key length with salt): AES-GCM-128, AES-GCM-256, ChaCha20-Poly1305.
SUITES = [(GCM, 20), (GCM, 36), (CHACHA, 36)]
SUITE_IDS = ["gcm128", "gcm256", "chacha"]


def outer(proto: int = 47, payload: bytes = b"\x00\x00\x08\x00" + bytes(range(40)), options: bytes = b"") -> bytes:
    """A whole outer IPv4 packet, as usertunnel sends it (GRE by default)."""
    return bytes(IP(src="198.51.100.1", dst="198.51.100.2", proto=proto, id=7, ttl=64, options=options) / payload)


def sealed(sealer: Sealer, next_header: int, payload: bytes) -> bytes:
    """`sealer.seal`, which must give a packet."""
    packet = sealer.seal(next_header, payload)
    assert isinstance(packet, bytes), packet
    return packet


def sa_for(aead: str, key_len: int, **kw: Any) -> SecurityAssociation:
    return SecurityAssociation(spi=0x1000, aead=aead, key=os.urandom(key_len), **kw)


# --- scapy, the independent implementation -----------------------------------------------------------------------


@pytest.mark.parametrize("esn", [False, True], ids=["32bit", "esn"])
@pytest.mark.parametrize(("aead", "key_len"), SUITES, ids=SUITE_IDS)
def test_scapy_decrypts_what_we_seal_and_we_open_what_scapy_encrypts(aead: str, key_len: int, esn: bool) -> None:
    sa = sa_for(aead, key_len, esn=esn)
    sealer, opener = Sealer(sa), Opener(sa)
    start = 2**32 + 5 if esn else 5  # with ESN, beyond the first 2**32 so the high half matters
    sealer.seq = start
    opener.highest = start
    inner = bytes(IP(src="203.0.113.1", dst="203.0.113.2") / b"inner")
    # 253 (experimental, RFC 3692) so scapy keeps the payload raw whatever its size; then GRE and IPIP whole.
    cases = [outer(proto=253, payload=os.urandom(size)) for size in (0, 1, 2, 3, 4, 5, 61, 1400)]
    cases += [outer(proto=47, payload=b"\x00\x00\x08\x00" + inner), outer(proto=4, payload=inner)]
    for packet in cases:
        theirs = ScapySA(ESP, spi=sa.spi, crypt_algo=SCAPY_NAME[aead], crypt_key=sa.key, esn_en=esn, esn=start >> 32)
        protected = esp.protect_ipv4(sealer, packet)
        assert isinstance(protected, bytes)
        assert IP(protected).proto == 50 and len(protected) % 4 == 0  # 20-byte header, ESP aligned to 4
        assert bytes(theirs.decrypt(IP(protected))) == packet
        low = (sealer.seq + 1) & 0xFFFFFFFF
        sealed_by_scapy = bytes(theirs.encrypt(IP(packet), seq_num=low))
        assert esp.unprotect_ipv4(opener, sealed_by_scapy) == packet
        sealer.seq += 1  # scapy's packet used the next number; we take the one after


def test_our_padding_matches_scapys_byte_for_byte_given_the_same_iv() -> None:
    # Both pad to 4 bytes with 1, 2, 3 (RFC 4303 2.4; Linux's esp4 does the same): same IV -> same packet.
    sa = sa_for(GCM, 20)
    salt = bytes(8)
    sealer = Sealer(sa, iv_salt=salt)
    theirs = ScapySA(ESP, spi=sa.spi, crypt_algo="AES-GCM", crypt_key=sa.key)
    for size in range(9):
        packet = outer(payload=bytes(range(size)))
        ours = esp.protect_ipv4(sealer, packet)
        iv = sealer.seq.to_bytes(8, "big")  # seq XOR a zero salt
        assert ours == bytes(theirs.encrypt(IP(packet), seq_num=sealer.seq, iv=iv))


@pytest.mark.parametrize("icv_bits", [64, 96])
def test_a_truncated_gcm_icv_is_the_full_tags_first_bytes_and_opens(icv_bits: int) -> None:
    # scapy's AEAD path takes no truncated GCM tag; SP 800-38D 5.2.1.2 defines one as the leading bits of the
    # full tag, so the 128-bit packet scapy accepts, cut short, is the truncated one.
    key = os.urandom(20)
    full = Sealer(SecurityAssociation(0x1000, GCM, key), iv_salt=b"\x01" * 8)
    short = Sealer(SecurityAssociation(0x1000, GCM, key, icv_bits=icv_bits), iv_salt=b"\x01" * 8)
    opener = Opener(SecurityAssociation(0x1000, GCM, key, icv_bits=icv_bits))
    for size in (0, 5, 100):
        long_packet = full.seal(4, bytes(size))
        short_packet = short.seal(4, bytes(size))
        assert isinstance(long_packet, bytes)
        assert short_packet == long_packet[: len(long_packet) - 16 + icv_bits // 8]
        assert opener.open(short_packet) == (4, bytes(size))


# --- the wire format, by hand ------------------------------------------------------------------------------------


def test_header_iv_and_sequence_numbers_are_where_rfc_4303_puts_them() -> None:
    sa = sa_for(CHACHA, 36)
    sealer = Sealer(sa, iv_salt=bytes.fromhex("0102030405060708"))
    assert sealer.seq == 0
    first = sealer.seal(47, b"abc")
    second = sealer.seal(47, b"abc")
    assert isinstance(first, bytes) and isinstance(second, bytes)
    assert first[:8] == bytes.fromhex("00001000 00000001") and esp.spi_of(first) == 0x1000
    assert second[4:8] == bytes.fromhex("00000002")
    # The IV is the sequence number XOR the salt chosen once (as the kernel's seqiv).
    assert first[8:16] == bytes.fromhex("0102030405060709")
    assert second[8:16] == bytes.fromhex("010203040506070a")
    # 3 bytes + pad length + next header = 5 -> 3 bytes of padding -> 8 encrypted bytes + 16 ICV.
    assert len(first) == 8 + 8 + 8 + 16
    assert sealer.seq == 2


def test_two_sealers_with_the_same_manual_key_do_not_repeat_ivs() -> None:
    sa = sa_for(GCM, 20)
    a, b = Sealer(sa), Sealer(sa)  # a restarted process with the same key file
    first_a, first_b = a.seal(4, b"x"), b.seal(4, b"x")
    assert isinstance(first_a, bytes) and isinstance(first_b, bytes)
    assert first_a[:8] == first_b[:8] and first_a[8:16] != first_b[8:16]


def test_spi_of_short_input_is_none() -> None:
    assert esp.spi_of(b"\x00\x00\x10") is None
    assert esp.spi_of(b"\x00\x00\x10\x00") == 0x1000


# --- what open refuses, and in which order -----------------------------------------------------------------------


def test_open_checks_spi_then_length_then_replay_then_icv() -> None:
    sa = sa_for(GCM, 20)
    sealer, opener = Sealer(sa), Opener(sa)
    packet = sealer.seal(4, b"payload")
    assert isinstance(packet, bytes)
    assert opener.open(packet[:7]) is Drop.ESP_TRUNCATED
    assert opener.open(b"\x00\x00\x20\x00" + packet[4:]) is Drop.ESP_NO_SA
    assert opener.open(packet[: 8 + 8 + 16 + 1]) is Drop.ESP_TRUNCATED
    forged = packet[:-1] + bytes([packet[-1] ^ 1])
    assert opener.open(forged) is Drop.ESP_ICV
    assert opener.highest == 0  # a forgery does not move the window
    assert opener.open(packet) == (4, b"payload")
    assert opener.open(packet) is Drop.ESP_REPLAY
    assert opener.open(forged) is Drop.ESP_REPLAY  # replay is checked first: no decryption spent on it


def _seal_raw(sa: SecurityAssociation, seq: int, plaintext: bytes) -> bytes:
    """An ESP packet whose plaintext (padding and trailer included) is given whole: to test bad trailers."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    header = sa.spi.to_bytes(4, "big") + seq.to_bytes(4, "big")
    iv = os.urandom(8)
    return header + iv + AESGCM(sa.key[:-4]).encrypt(sa.key[-4:] + iv, plaintext, header)


def test_bad_padding_and_dummy_packets_are_dropped_but_use_their_number() -> None:
    sa = sa_for(GCM, 20)
    opener = Opener(sa)
    assert opener.open(_seal_raw(sa, 1, b"abcd" + b"\x01\x03" + b"\x02\x04")) is Drop.ESP_PADDING  # 1, 3
    assert opener.open(_seal_raw(sa, 2, b"ab" + b"\x07\x04")) is Drop.ESP_PADDING  # longer than the packet
    assert opener.open(_seal_raw(sa, 3, b"abcdef" + b"\x00\x3b")) is Drop.ESP_DUMMY  # next header 59
    assert opener.open(_seal_raw(sa, 4, b"abcdefg" + b"\x01\x01\x04")) == (4, b"abcdefg")
    assert opener.open(_seal_raw(sa, 5, b"a" + bytes(range(1, 10)) + b"\x09\x04")) == (4, b"a")  # longer pads too
    assert opener.highest == 5 and opener.bitmap == 0b11111


def test_sealer_stops_for_ever_when_sequence_numbers_run_out() -> None:
    sa = sa_for(GCM, 20)
    sealer = Sealer(sa)
    sealer.seq = 2**32 - 2
    last = sealer.seal(4, b"x")
    assert isinstance(last, bytes) and last[4:8] == b"\xff\xff\xff\xff"
    assert sealer.seal(4, b"x") is Drop.ESP_SEQ_EXHAUSTED
    assert sealer.seal(4, b"x") is Drop.ESP_SEQ_EXHAUSTED
    assert sealer.seq == 2**32 - 1 and sealer.exhausted
    wide = Sealer(sa_for(GCM, 20, esn=True))
    wide.seq = 2**32 - 1
    beyond = wide.seal(4, b"x")  # with ESN the counter goes on past 2**32
    assert isinstance(beyond, bytes) and beyond[4:8] == bytes(4) and wide.seq == 2**32
    wide.seq = 2**64 - 1
    assert wide.seal(4, b"x") is Drop.ESP_SEQ_EXHAUSTED


# --- transport mode around the outer IPv4 packet -----------------------------------------------------------------


@pytest.mark.parametrize("proto", [47, 4, 41])
def test_protect_keeps_the_header_and_options_and_unprotect_restores_the_packet(proto: int) -> None:
    sa = sa_for(GCM, 36)
    packet = outer(proto=proto, options=b"\x94\x04\x00\x00")  # router alert: a 24-byte header
    protected = esp.protect_ipv4(Sealer(sa), packet)
    assert isinstance(protected, bytes)
    parsed = IP(protected)
    assert parsed.ihl == 6 and parsed.proto == 50 and parsed.len == len(protected)
    assert parsed.src == "198.51.100.1" and parsed.id == 7 and parsed.options == IP(packet).options
    assert IP(bytes(parsed.copy().__class__(bytes(protected)))).chksum == parsed.chksum
    del parsed.chksum
    assert IP(bytes(parsed)).chksum == IP(protected).chksum  # the checksum scapy computes
    assert esp.unprotect_ipv4(Opener(sa), protected + b"trailing") == packet


def test_unprotect_refuses_malformed_outer_packets() -> None:
    sa = sa_for(GCM, 20)
    protected = esp.protect_ipv4(Sealer(sa), outer())
    assert isinstance(protected, bytes)
    opener = Opener(sa)
    assert esp.unprotect_ipv4(opener, protected[:19]) is Drop.OUTER_MALFORMED
    assert esp.unprotect_ipv4(opener, protected[:-1]) is Drop.OUTER_MALFORMED  # total length lies
    assert esp.unprotect_ipv4(opener, b"\x65" + protected[1:]) is Drop.OUTER_MALFORMED  # version 6
    not_esp = bytearray(protected)
    not_esp[9] = 47
    assert esp.unprotect_ipv4(opener, bytes(not_esp)) is Drop.OUTER_MALFORMED
    fragment = bytearray(protected)
    fragment[6] |= 0x20
    assert esp.unprotect_ipv4(opener, bytes(fragment)) is Drop.OUTER_FRAGMENT
    assert esp.protect_ipv4(Sealer(sa), outer()[:-1]) is Drop.OUTER_MALFORMED


# --- properties --------------------------------------------------------------------------------------------------

suites = st.sampled_from([(GCM, 20, 128), (GCM, 36, 128), (GCM, 20, 64), (GCM, 36, 96), (CHACHA, 36, 128)])


@st.composite
def security_associations(draw: st.DrawFn, esn: bool | None = None) -> SecurityAssociation:
    aead, key_len, icv = draw(suites)
    return SecurityAssociation(
        spi=draw(st.integers(256, 2**32 - 1)),
        aead=aead,
        key=draw(st.binary(min_size=key_len, max_size=key_len)),
        icv_bits=icv,
        esn=draw(st.booleans()) if esn is None else esn,
    )


@settings(max_examples=200, deadline=None)
@given(
    sa=security_associations(),
    next_header=st.integers(0, 255).filter(lambda n: n != 59),
    payload=st.binary(max_size=300),
    start=st.integers(0, 2**32 + 10),
)
def test_open_returns_what_seal_sealed(sa: SecurityAssociation, next_header: int, payload: bytes, start: int) -> None:
    sealer, opener = Sealer(sa), Opener(sa)
    start = start if sa.esn else start & 0x7FFFFFFF
    sealer.seq = opener.highest = start
    packet = sealer.seal(next_header, payload)
    assert isinstance(packet, bytes)
    assert (len(packet) - 8 - 8 - sa.icv_bits // 8) % 4 == 0  # RFC 4303 2.4: 4-byte aligned
    assert opener.open(packet) == (next_header, payload)
    assert opener.highest == start + 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sa=security_associations(), payload=st.binary(max_size=64), data=st.data())
def test_every_single_byte_change_is_a_drop_never_a_payload_nor_an_exception(
    sa: SecurityAssociation, payload: bytes, data: st.DataObject
) -> None:
    packet = Sealer(sa).seal(4, payload)
    assert isinstance(packet, bytes)
    for index in range(len(packet)):
        flip = data.draw(st.integers(1, 255), label=f"xor at {index}")
        changed = bytearray(packet)
        changed[index] ^= flip
        result = Opener(sa).open(bytes(changed))
        assert isinstance(result, Drop), f"byte {index} changed and still opened"
        if index < 4:
            assert result is Drop.ESP_NO_SA
        else:  # a changed sequence number can be 0 (refused by the window) or fails the ICV like the rest
            assert result in (Drop.ESP_REPLAY, Drop.ESP_ICV)


@settings(max_examples=100, deadline=None)
@given(sa=security_associations(), payload=st.binary(max_size=64), cut=st.integers(0, 200))
def test_every_truncation_is_a_drop(sa: SecurityAssociation, payload: bytes, cut: int) -> None:
    packet = Sealer(sa).seal(4, payload)
    assert isinstance(packet, bytes)
    assume(cut < len(packet))
    result = Opener(sa).open(packet[:cut])
    assert result in (Drop.ESP_TRUNCATED, Drop.ESP_ICV)


@settings(max_examples=100, deadline=None)
@given(junk=st.binary(max_size=80))
def test_arbitrary_bytes_are_a_drop(junk: bytes) -> None:
    sa = SecurityAssociation(0x1000, GCM, bytes(20))
    assert isinstance(Opener(sa).open(b"\x00\x00\x10\x00" + junk), Drop)
    assert isinstance(esp.unprotect_ipv4(Opener(sa), junk), Drop)


def _window_model(arrivals: list[int], window: int) -> list[bool]:
    """RFC 4303 3.4.3 as a set: accepted iff not 0, not seen, and above highest - window."""
    seen: set[int] = set()
    highest = 0
    verdicts = []
    for seq in arrivals:
        ok = seq != 0 and seq not in seen and seq > highest - window
        if ok:
            seen.add(seq)
            highest = max(highest, seq)
        verdicts.append(ok)
    return verdicts


@settings(max_examples=300, deadline=None)
@given(
    window=st.sampled_from([1, 2, 32, 64, 100, 4096]),
    arrivals=st.lists(st.integers(0, 300), max_size=60),
)
def test_the_replay_window_accepts_exactly_what_a_set_model_accepts(window: int, arrivals: list[int]) -> None:
    opener = Opener(SecurityAssociation(0x1000, GCM, bytes(20), replay_window=window))
    verdicts = []
    for seq in arrivals:
        ok = not opener.replayed(seq)
        if ok:
            opener._accept(seq)
        verdicts.append(ok)
    assert verdicts == _window_model(arrivals, window)


@settings(max_examples=30, deadline=None)
@given(
    window=st.sampled_from([1, 32, 64]),
    arrivals=st.lists(st.integers(1, 100), max_size=25),
)
def test_the_replay_window_on_real_packets(window: int, arrivals: list[int]) -> None:
    sa = SecurityAssociation(0x1000, CHACHA, bytes(36), replay_window=window)
    sealer, opener = Sealer(sa), Opener(sa)
    packets = {}
    for seq in sorted(set(arrivals)):
        sealer.seq = seq - 1
        packets[seq] = sealed(sealer, 4, seq.to_bytes(2, "big"))
    results = [opener.open(packets[seq]) for seq in arrivals]
    expected = _window_model(arrivals, window)
    assert [r != Drop.ESP_REPLAY for r in results] == expected
    assert all(r == (4, s.to_bytes(2, "big")) for r, s, ok in zip(results, arrivals, expected, strict=True) if ok)


def test_without_a_window_everything_authentic_is_accepted_as_linux_does() -> None:
    sa = sa_for(GCM, 20, replay_window=0)
    sealer, opener = Sealer(sa), Opener(sa)
    packet = sealed(sealer, 4, b"x")
    assert opener.open(packet) == (4, b"x") and opener.open(packet) == (4, b"x")


@settings(max_examples=200, deadline=None)
@given(
    window=st.sampled_from([32, 64, 1000]),
    highest=st.integers(1, 2**40),
    delta=st.integers(-2000, 2000),
)
def test_esn_infers_the_high_half_for_any_number_near_the_window(window: int, highest: int, delta: int) -> None:
    # RFC 4303 appendix A2.2: a number within the window or ahead of it (by less than 2**31) is found from its
    # low 32 bits, whichever side of a 2**32 boundary the window and the number lie.
    opener = Opener(SecurityAssociation(0x1000, GCM, bytes(20), replay_window=window, esn=True))
    opener.highest = highest
    seq = highest + delta
    assume(seq > highest - window and seq > 0)
    assert opener.infer_seq(seq & 0xFFFFFFFF) == seq


def test_esn_packets_cross_the_2_32_boundary_in_both_orders() -> None:
    sa = sa_for(GCM, 20, esn=True)
    sealer, opener = Sealer(sa), Opener(sa)
    sealer.seq = opener.highest = 2**32 - 3
    packets = [sealed(sealer, 4, bytes([i])) for i in range(6)]  # 2**32-2 .. 2**32+3
    assert packets[3][4:8] == b"\x00\x00\x00\x01"
    order = [0, 3, 1, 2, 5, 4]
    assert [opener.open(packets[i]) for i in order] == [(4, bytes([i])) for i in order]
    assert opener.highest == 2**32 + 3
    assert opener.open(packets[1]) is Drop.ESP_REPLAY


# --- keys: validation, the key file, and never printing a key ----------------------------------------------------

KEY_HEX = "a1b2c3d4e5f60718293a4b5c6d7e8f90" + "deadbeef"


def good_table() -> dict[str, Any]:
    return {
        "out": {"spi": 0x1000, "aead": GCM, "key": "0x" + KEY_HEX, "icv": 128},
        "in": {"spi": 0x2000, "aead": CHACHA, "key": ("ab" * 32) + "01020304"},
    }


def test_a_good_key_table_parses() -> None:
    keys = esp.keys_from_table(good_table())
    assert isinstance(keys, EspKeys)
    assert keys.outbound == SecurityAssociation(0x1000, GCM, bytes.fromhex(KEY_HEX))
    assert keys.inbound.aead == CHACHA and keys.inbound.key[-4:] == b"\x01\x02\x03\x04"
    assert keys.inbound.replay_window == esp.DEFAULT_REPLAY_WINDOW and not keys.inbound.esn


def test_replay_window_and_esn_apply_to_both_tables_unless_a_table_says_otherwise() -> None:
    table = good_table() | {"replay_window": 128, "esn": True}
    table["in"] = table["in"] | {"replay_window": 1024}
    keys = esp.keys_from_table(table)
    assert keys.outbound.replay_window == 128 and keys.outbound.esn
    assert keys.inbound.replay_window == 1024 and keys.inbound.esn


def test_every_mistake_in_a_key_table_is_reported_at_once() -> None:
    table: dict[str, Any] = {
        "out": {"spi": 3, "aead": GCM, "key": KEY_HEX[:-2], "icv": 100, "colour": "red"},
        "in": {"aead": "cbc(aes)", "key": "0x" + KEY_HEX + "zz", "esn": "yes"},
        "extra": 1,
    }
    with pytest.raises(ConfigError) as raised:
        esp.keys_from_table(table, source="keys.toml")
    lines = str(raised.value).splitlines()
    assert all(line.startswith("keys.toml: ") for line in lines)
    for expected in (
        "extra: unknown top-level key",
        "[out] colour: unknown key in [out]",
        "[out] spi: 3 is not an SPI",
        "[out] key: 19 bytes, rfc4106(gcm(aes)) takes 20 or 36",
        "[out] icv: 100 bits, rfc4106(gcm(aes)) (AES-GCM) takes 64, 96 or 128",
        "[in] spi: missing in [in]",
        "[in] aead: 'cbc(aes)' is not an algorithm",
        "[in] key: not hexadecimal",
        "[in] esn: 'yes' is not true or false",
    ):
        assert sum(expected in line for line in lines) == 1, (expected, lines)
    assert len(lines) == 9
    assert KEY_HEX[:16].lower() not in str(raised.value).lower()


def test_a_missing_table_and_a_wrong_type_are_reported() -> None:
    with pytest.raises(ConfigError) as raised:
        esp.keys_from_table({"out": "x", "replay_window": 5000})
    text = str(raised.value)
    assert "out: a string, expected a table [out]" in text
    assert "[in]: missing" in text
    assert "replay_window: 5000 is not a window" in text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spi": 0}, "spi: 0 is not an SPI: give an integer 256..4294967295"),
        ({"spi": 2**32}, "is not an SPI"),
        ({"aead": "gcm(aes)"}, "aead: 'gcm(aes)' is not an algorithm usertunnel has"),
        ({"key": bytes(16)}, "key: 16 bytes, rfc4106(gcm(aes)) takes 20 or 36"),
        ({"aead": CHACHA}, "key: 20 bytes, rfc7539esp(chacha20,poly1305) takes 36"),
        ({"aead": CHACHA, "key": bytes(36), "icv_bits": 96}, "takes 128"),
        ({"replay_window": 4097}, "replay_window: 4097 is not a window"),
        ({"esn": True, "replay_window": 0}, "esn: extended sequence numbers need a replay window"),
    ],
)
def test_a_bad_security_association_is_one_clear_config_error(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"spi": 0x1000, "aead": GCM, "key": bytes(20)} | kwargs
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SecurityAssociation(**args)


def test_a_key_never_appears_in_repr_str_or_errors() -> None:
    key = bytes.fromhex(KEY_HEX)
    sa = SecurityAssociation(0x1000, GCM, key)
    keys = EspKeys(sa, sa)
    for text in (repr(sa), str(sa), repr(keys), str(keys), repr(Sealer(sa).sa), repr(Opener(sa).sa)):
        assert KEY_HEX not in text and KEY_HEX[:8] not in text and str(key) not in text
        assert "<20 bytes>" in text
    for bad in (KEY_HEX[:-2], KEY_HEX + "0", KEY_HEX + "g0", KEY_HEX + KEY_HEX):
        table = good_table()
        table["out"]["key"] = bad
        with pytest.raises(ConfigError) as raised:
            esp.keys_from_table(table)
        assert KEY_HEX[:8] not in str(raised.value), str(raised.value)


# --- known answers: draft-mcgrew-gcm-test-01 section 4 (AES-GCM in ESP) and RFC 7634 appendix A ---------------------


def _hex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# (algorithm, SPI, sequence number (8 bytes with ESN), key + salt, IV, plaintext with padding and trailer,
# the ESP packet).
# The draft's cases whose SPI is below 256 (reserved, refused by SecurityAssociation) or whose key is AES-192
# (not offered: 128 and 256 only) are left out.
KNOWN_ANSWERS = [
    pytest.param(
        GCM,
        "00004321",
        "8765432100000000",
        "4c80cdefbb5d10da906ac73c3613a634 2e443b68",
        "4956ed7e3b244cfe",
        """45000048699a000080114db7c0a80102 c0a801010a9bf15638d3010000010000 00000000045f736970045f7564700373
        69700963796265726369747902646b00 0021000101020201""",
        """00004321000000004956ed7e3b244cfe fecf537e729d5b07dc30df528dd22b76 8d1b98736696a6fd348509fa13ceac34
        cfa2436f14a3f3cf65925bf1f4a13c5d 15b21e1884f5ff6247aeabb786b93bce 61bc17d768fd9732459018148f6cbe72
        2fd04796562dfdb4""",
        id="draft-case2-gcm128-esn",
    ),
    pytest.param(
        GCM,
        "0000a5f8",
        "0000000a",
        "feffe9928665731c6d6a8f9467308308 cafebabe",
        "facedbaddecaf888",
        """4500003e698f000080114dccc0a80102 c0a801010a980035002a2343b2d00100 00010000000000000373697009637962
        65726369747902646b00000100010001""",
        """0000a5f80000000afacedbaddecaf888 deb22cd9b07c72c16e3a65beeb8df304 a5a5897d33ae530f1ba76d5d114d2a5c
        3de81827c10e9a4f51330d0eec416642 cfbb85a5b47e48a4ec3b9ba95d918bd1 83b70d3aa8bc6ee4c309e9d85a41ad4a""",
        id="draft-case3-gcm128",
    ),
    pytest.param(
        GCM,
        "4a2cbfe3",
        "00000002",
        "abbccddef00112233445566778899aab abbccddef00112233445566778899aab 11223344",
        "0102030405060708",
        """4500003069a6400080062690c0a80102 9389155e0a9e008b2dc57ee000000000 7002400020bf0000020405b401010402
        01020201""",
        """4a2cbfe3000000020102030405060708 ff425c9b724599df7a3bcd510194e00d 6a78107f1b0b1cbf06efae9d65a5d763
        748a637985771d347f0545659f14e99d ef842d8eb335f4eecfdbf831824b4c49 15956c96""",
        id="draft-case4-gcm256",
    ),
    pytest.param(
        GCM,
        "00000100",
        "0000000000000001",
        "abbccddef00112233445566778899aab decaf888",
        "cafedebaceface74",
        """4500004933ba00007f119106c3fb1d10 c2b1d326c02831ce0035dd7b800302d5 00004e20001e8c18d75b81dc91baa047
        6b91b924b280389d92c963bac046ec95 9b6266c04722b14923010101""",
        """0000010000000001cafedebaceface74 18a6fd42f72cbf4ab2a2ea901f73d814 e3e7f243d95412e1c349c1d2fbec168f
        9190feebaf2cb01984e65863965d7472 b79da345e0e780191f0d2f0e0f496c22 6f2127b27db35724e7845d68651f57e6
        5f354f75ff17015769623436""",
        id="draft-case9-gcm128-esn",
    ),
    pytest.param(
        GCM,
        "17405e67",
        "156f3126dd0db99b",
        "abbccddef00112233445566778899aab abbccddef00112233445566778899aab 73616c74",
        "616e640169766563",
        """45080028732c00004006e9f90a010612 0a01038f06b88023dd6bafbecb712602 50101f646d540001""",
        """17405e67dd0db99b616e640169766563 f2d69ecdbd5a0d5b8d5ef38bad4da58d 1f278fde98ef67549d524a3018d9a57f
        f4d3a31ce673119e451626c2415771e3 b7eebca614c89b35""",
        id="draft-case10-gcm256-esn",
    ),
    pytest.param(
        GCM,
        "335467ae",
        "ffffffff",
        "7d773d00c144c525ac619d18c84a3f47 d9664267",
        "43457e9182443bc6",
        "01020201",
        """335467aeffffffff43457e9182443bc6 437f866bcb3f699fe9b0822bac961c45 04bef270""",
        id="draft-case13-gcm128-empty-payload-last-sequence-number",
    ),
    pytest.param(
        GCM,
        "796b6963",
        "ffffffffffffffff",
        "6c6567616c697a656d6172696a75616e 61616e64646f69746265666f72656961 7475726e",
        "333021696765746d",
        """45000030da3a00008001df3bc0a80005 c0a800010800c6cd0200070061626364 65666768696a6b6c6d6e6f7071727374
        01020201""",
        """796b6963ffffffff333021696765746d f97ab2aa356d8edce17644ac8c78e25d d24dedbb29ebf1b64a274b39b49c3a86
        4cd3d78ca4ae68a32b42458fb57dbe82 1dcc63b9d0937ba2945f669368661a32 9fb4c053""",
        id="draft-case15-gcm256-esn-last-sequence-number",
    ),
    pytest.param(
        CHACHA,
        "01020304",
        "00000005",
        "808182838485868788898a8b8c8d8e8f 909192939495969798999a9b9c9d9e9f a0a1a2a3",
        "1011121314151617",
        """45000054a6f200004001e778c6336405 c000020508005b7a3a080000553bec10 000736270809 0a0b0c0d0e0f10111213
        1415161718191a1b1c1d1e1f20212223 2425262728292a2b2c2d2e2f30313233 3435363701020204""",
        """01020304000000051011121314151617 24039428b97f417e3c13753a4f05087b 67c352e6a7fab1b982d466ef407ae5c6
        14ee8099d52844eb61aa95dfab4c02f7 2aa71e7c4c4f64c9befe2facc638e8f3 cbec163fac469b502773f6fb94e664da
        9165b82829f641e0 76aaa8266b7fb0f7b11b369907e1ad43""",
        id="rfc7634-appendix-a-chacha20-poly1305",
    ),
]


@pytest.mark.parametrize(("aead", "spi", "seq", "key", "iv", "plaintext", "packet"), KNOWN_ANSWERS)
def test_known_answers_seal_to_the_published_packet_and_open_back(
    aead: str, spi: str, seq: str, key: str, iv: str, plaintext: str, packet: str
) -> None:
    esn = len(seq) == 16
    sa = SecurityAssociation(int(spi, 16), aead, _hex(key), esn=esn)
    number = int(seq, 16)
    inside = _hex(plaintext)
    pad = inside[-2]
    payload, next_header = inside[: -2 - pad], inside[-1]
    # The IV is the sequence number XOR the Sealer's salt: pick the salt that gives the published IV.
    sealer = Sealer(sa, iv_salt=(int(iv, 16) ^ number).to_bytes(8, "big"))
    sealer.seq = number - 1
    assert sealer.seal(next_header, payload) == _hex(packet)
    opener = Opener(sa)
    opener.highest = number - 1
    assert opener.open(_hex(packet)) == (next_header, payload)


def test_a_forged_packet_far_ahead_does_not_move_the_window_so_genuine_packets_still_pass() -> None:
    # Unlike GRE's sequence numbers (RESULTS.md: forged packets took the real peer's numbers), a forgery must
    # pass the ICV before its number counts.
    sa = sa_for(GCM, 20)
    sealer, opener = Sealer(sa), Opener(sa)
    genuine = [sealed(sealer, 4, bytes([i])) for i in range(3)]
    assert opener.open(genuine[0]) == (4, b"\x00")
    forged = bytearray(genuine[1])
    forged[4:8] = (2**31).to_bytes(4, "big")
    assert opener.open(bytes(forged)) is Drop.ESP_ICV
    assert opener.highest == 1 and opener.bitmap == 1
    assert opener.open(genuine[2]) == (4, b"\x02") and opener.open(genuine[1]) == (4, b"\x01")
    assert opener.highest == 3 and opener.bitmap == 0b111
