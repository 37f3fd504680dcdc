"""`usertunnel explain` on IPsec ESP (issue 17): the SPI and sequence number read back exactly from packets
core.esp sealed, the rest said to be encrypted (a normal end, not a malformed packet), every truncation inside
the ESP header a malformed verdict and never a traceback, over IPv4 and IPv6; the pictures draw it; and the
key never appears in any output."""

from __future__ import annotations

import ipaddress
import json
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from test_explain import run

from usertunnel.core import esp
from usertunnel.core.checksum import internet_checksum
from usertunnel.core.drops import Drop
from usertunnel.core.encap import Tunnel
from usertunnel.core.params import VTI_OUTER, Mode, TunnelParams
from usertunnel.teach import describe, explain
from usertunnel.teach.describe import Explanation, Layer

A, B = bytes((198, 51, 100, 1)), bytes((198, 51, 100, 2))
A6, B6 = ipaddress.IPv6Address("2001:db8::1").packed, ipaddress.IPv6Address("2001:db8::2").packed
KEY_AB = bytes.fromhex("0123456789abcdeffedcba9876543210a1b2c3d4")  # AES-128 key and 4-byte salt, A -> B
KEY_BA = bytes.fromhex("00112233445566778899aabbccddeeff5a5b5c5d")
SA_AB = esp.SecurityAssociation(0x00C0FFEE, esp.GCM, KEY_AB)
SA_BA = esp.SecurityAssociation(0x00001002, esp.GCM, KEY_BA)
INNER = bytes(IP(src="203.0.113.1", dst="203.0.113.2", id=7, flags="DF") / ICMP(id=1, seq=1) / b"ping")
INNER6 = bytes(IPv6(src="2001:db8:1::1", dst="2001:db8:1::2") / ICMPv6EchoRequest(id=1, seq=1, data=b"ping"))


def tunnel(mode: Mode, key: int | None = None) -> Tunnel:
    outer = dict(zip(("ttl", "tos", "pmtudisc"), VTI_OUTER, strict=True)) if mode.value.esp else {}
    keys = esp.EspKeys(SA_AB, SA_BA)
    return Tunnel(TunnelParams("a", mode, A, B, ikey=key, okey=key, esp=keys, **outer))  # type: ignore[arg-type]


def sealed(mode: Mode, key: int | None = None, count: int = 1) -> bytes:
    """The `count`th packet a protected tunnel of `mode` sends (sequence number `count`)."""
    t = tunnel(mode, key)
    for _ in range(count):
        wire = t.encapsulate(INNER6 if mode is Mode.SIT else INNER)
    assert isinstance(wire, bytes)
    return wire


def esp_over_ipv6(seq: int = 1) -> bytes:
    """ESP sealed by core.esp in an IPv6 packet (next header 50), as vti6 sends it."""
    sealer = esp.Sealer(SA_AB)
    sealer.seq = seq - 1
    body = sealer.seal(4, INNER)
    assert isinstance(body, bytes)
    header = bytes([0x60, 0, 0, 0]) + struct.pack("!HBB", len(body), 50, 64) + A6 + B6
    return header + body


def esp_layer(e: Explanation) -> Layer:
    found = [layer for layer in e.layers if layer.kind == "ESP"]
    assert len(found) == 1, [layer.kind for layer in e.layers]
    return found[0]


def values(layer: Layer) -> dict[str, int | str]:
    return {f.name: f.value for f in layer.fields}


def with_ipv4_length(packet: bytes, total: int) -> bytes:
    """`packet` with its IPv4 total length set to `total` and its header checksum fixed."""
    header = bytearray(packet[:20])
    header[2:4] = total.to_bytes(2, "big")
    header[10:12] = b"\0\0"
    header[10:12] = internet_checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header) + packet[20:]


# --- the ESP layer ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "key"), [(Mode.VTI, None), (Mode.GRE, 1234), (Mode.IPIP, None), (Mode.SIT, None)])
@pytest.mark.parametrize("count", [1, 2, 77])
def test_spi_and_sequence_number_read_back_exactly_and_the_rest_is_said_encrypted(
    mode: Mode, key: int | None, count: int
) -> None:
    wire = sealed(mode, key, count)
    e = explain.explain(wire)
    assert e.well_formed, (e.stop, e.problems)
    ip = e.layers[0]
    assert ip.kind == "IPv4" and values(ip)["protocol"] == 50
    assert "ESP (IPsec)" in next(f.meaning for f in ip.fields if f.name == "protocol")
    layer = esp_layer(e)
    got = values(layer)
    assert got["SPI"] == SA_AB.spi == esp.spi_of(wire[20:])
    assert got["sequence number"] == count
    assert got["encrypted payload"] == len(wire) - 28
    fields = {f.name: f for f in layer.fields}
    assert [fields[n].offset for n in ("SPI", "sequence number", "encrypted payload")] == [20, 24, 28]
    assert fields["encrypted payload"].length == len(wire) - 28
    assert fields["SPI"].shown == f"{SA_AB.spi} (0x{SA_AB.spi:08x})"
    assert "security association" in fields["SPI"].meaning
    assert "anti-replay" in fields["sequence number"].meaning and "3.4.3" in fields["sequence number"].meaning
    meaning = fields["encrypted payload"].meaning
    assert "IV" in meaning and "ICV" in meaning and "nothing more can be read without the key" in meaning
    # The dissection ends at the ESP payload, as a normal end: nothing after it is pretended to be understood.
    assert e.layers[-1] is layer
    assert e.stop is not None and not e.stop.malformed and e.stop.reason == "encrypted"
    assert e.stop.offset == len(wire)
    assert f"ESP (SPI 0x{SA_AB.spi:08x}, seq {count}, encrypted)" in describe.summary(e)


def test_esp_over_ipv6_is_dissected_the_same_way() -> None:
    wire = esp_over_ipv6(seq=5)
    e = explain.explain(wire)
    assert e.well_formed, (e.stop, e.problems)
    assert e.layers[0].kind == "IPv6" and values(e.layers[0])["next header"] == 50
    got = values(esp_layer(e))
    assert (got["SPI"], got["sequence number"], got["encrypted payload"]) == (SA_AB.spi, 5, len(wire) - 48)
    assert esp_layer(e).fields[0].offset == 40


@pytest.mark.parametrize(("spi", "problem"), [(0, "SPI 0"), (1, "reserved SPI"), (255, "reserved SPI")])
def test_an_spi_no_association_may_have_is_a_problem(spi: int, problem: str) -> None:
    wire = sealed(Mode.VTI)
    wire = wire[:20] + spi.to_bytes(4, "big") + wire[24:]
    e = explain.explain(wire)
    assert not e.well_formed
    assert [f.problem for f in e.problems] == [problem]
    assert "RFC 4303 2.1" in esp_layer(e).fields[0].meaning


def test_the_lowest_spi_an_association_may_have_is_fine() -> None:
    wire = sealed(Mode.VTI)
    e = explain.explain(wire[:20] + (256).to_bytes(4, "big") + wire[24:])
    assert e.well_formed and values(esp_layer(e))["SPI"] == 256


def test_sequence_number_zero_is_explained_not_condemned() -> None:
    wire = sealed(Mode.VTI)
    e = explain.explain(wire[:24] + bytes(4) + wire[28:])
    assert e.well_formed
    assert "0 is never sent without extended sequence numbers" in esp_layer(e).fields[1].meaning


# --- truncation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_every_cut_inside_the_esp_header_is_malformed_with_a_clear_reason(v6: bool) -> None:
    wire = esp_over_ipv6() if v6 else sealed(Mode.GRE, 1234)
    start = 40 if v6 else 20
    for cut in range(start, start + esp.HEADER_LEN + 2):  # inside the header, and 0 or 1 byte after it
        for what, packet in (("the packet cut", wire[:cut]), ("lengths agreeing", agreeing(wire[:cut], v6))):
            e = explain.explain(packet)
            assert not e.well_formed, (cut, what)
            assert e.stop is not None and e.stop.malformed, (cut, what, e.stop)
            text = explain.render_text(e)
            assert "Traceback" not in text
            if cut < start + esp.HEADER_LEN:
                name = "SPI" if cut < start + 4 else "sequence number"
                assert e.stop.reason == "truncated" and f"cut short at the {name}" in e.stop.detail, e.stop
                assert e.stop.layer.startswith("ESP header"), e.stop
            elif what == "lengths agreeing":
                assert e.stop.reason == "ESP without payload", e.stop
                assert "at least the encrypted pad length and next header" in e.stop.detail
            json.dumps(describe.to_json(e))


def agreeing(packet: bytes, v6: bool) -> bytes:
    """`packet` with its IP length field saying exactly how long it is (so only ESP can be blamed)."""
    if v6:
        return packet[:4] + (len(packet) - 40).to_bytes(2, "big") + packet[6:]
    return with_ipv4_length(packet, len(packet))


def test_a_capture_that_cut_the_encrypted_payload_says_the_packet_is_cut_not_encrypted() -> None:
    wire = sealed(Mode.VTI)
    e = explain.explain(wire[:40], wire_length=len(wire))
    assert e.stop is not None and e.stop.malformed and e.stop.reason == "truncated"
    field = next(f for f in esp_layer(e).fields if f.name == "encrypted payload")
    assert field.value == 12 and "the rest is cut off" in field.meaning


def test_any_bytes_after_an_esp_header_never_raise() -> None:
    wire = sealed(Mode.IPIP)
    for n in range(0, 64):
        packet = with_ipv4_length(wire[:28] + bytes(range(n)), 28 + n)
        e = explain.explain(packet)
        assert e.well_formed == (n >= 2), n
        explain.render_text(e)


def test_an_icmp_error_quoting_an_esp_packet_ends_with_the_quote() -> None:
    wire = sealed(Mode.VTI)
    error = bytes(IP(src="198.51.100.9", dst="198.51.100.1") / ICMP(type=3, code=4, nexthopmtu=1400) / wire[:28])
    e = explain.explain(error)
    assert e.stop is not None and not e.stop.malformed and e.stop.reason == "end of quote", e.stop
    assert values(esp_layer(e))["SPI"] == SA_AB.spi


# --- the command line and the pictures --------------------------------------------------------------------


@pytest.mark.parametrize("form", [(), ("-j",), ("--svg",), ("--html",)], ids=["text", "json", "svg", "html"])
def test_every_output_form_shows_the_spi_and_never_the_key(
    capsys: pytest.CaptureFixture[str], form: tuple[str]
) -> None:
    wire = sealed(Mode.GRE, 1234, count=3)
    status, out, err = run(capsys, *form, wire.hex())
    assert (status, err) == (0, "")
    assert f"0x{SA_AB.spi:08x}" in out or str(SA_AB.spi) in out
    for secret in (KEY_AB, KEY_BA, SA_AB.cipher_key, SA_AB.salt):
        assert secret.hex() not in out.lower() and secret.hex() not in err.lower()
    if form == ("-j",):
        fields = {f["name"]: f for layer in json.loads(out) for f in layer}
        assert fields["SPI"]["value"] == SA_AB.spi and fields["sequence number"]["value"] == 3
        assert fields["parsing stopped"]["value"] == "encrypted" and fields["parsing stopped"]["problem"] is None
    if form == ("--svg",):
        root = ET.fromstring(out)
        texts = " ".join(t for t in root.itertext())
        assert "SPI" in texts and "sequence number" in texts


def test_the_drawing_has_a_box_for_each_esp_field_at_its_rfc_columns() -> None:
    from usertunnel.teach.picture import packet

    e = explain.explain(sealed(Mode.VTI))
    drawing = packet.svg([("esp", e)], "esp")
    root = ET.fromstring(drawing)
    assert root is not None
    layer = esp_layer(e)
    assert [f.bits for f in layer.fields] == [None, None, None]  # whole 32-bit words, then the payload


def test_a_sealed_packet_opens_to_what_explain_said_it_carried() -> None:
    """The oracle: the SPI and sequence number explain read are the ones the receiver's Opener checks."""
    wire = sealed(Mode.VTI, count=9)
    got = values(esp_layer(explain.explain(wire)))
    opener = esp.Opener(SA_AB)
    opened = opener.open(wire[20:])
    assert not isinstance(opened, Drop) and opened == (4, INNER)
    assert (got["SPI"], got["sequence number"]) == (opener.sa.spi, opener.highest) == (SA_AB.spi, 9)


# --- --esp-keys: what ESP carried, before encryption --------------------------------------------------------


def key_file(tmp_path: Path, inbound: esp.SecurityAssociation, outbound: esp.SecurityAssociation) -> Path:
    """A private --esp-keys file, as usertunnel up reads it, holding `inbound` as [in] and `outbound` as [out]."""
    path = tmp_path / "esp.toml"
    text = "".join(
        f'[{name}]\nspi = {sa.spi}\naead = "{sa.aead}"\nkey = "0x{sa.key.hex()}"\nicv = {sa.icv_bits}\n'
        for name, sa in (("out", outbound), ("in", inbound))
    )
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(("mode", "key", "carried"), [(Mode.VTI, None, 4), (Mode.GRE, 1234, 47), (Mode.SIT, None, 41)])
def test_with_esp_keys_what_esp_carried_is_explained_as_the_tunnel_sends_it_in_the_clear(
    mode: Mode, key: int | None, carried: int
) -> None:
    wire = sealed(mode, key, count=4)
    e = explain.explain(wire, esp_keys=esp.EspKeys(outbound=SA_BA, inbound=SA_AB))  # the receiver's keys
    assert e.well_formed, (e.stop, e.problems)
    opened = next(f for f in esp_layer(e).fields if f.name == "opened with --esp-keys")
    assert opened.value == carried and "the ICV verifies" in opened.meaning and "[in] SA" in opened.meaning
    assert e.inside is not None and e.inside_title.startswith(
        "inside ESP, before encryption (only the two ends can see this)"
    )
    clear = Tunnel(TunnelParams("c", Mode.IPIP if mode is Mode.VTI else mode, A, B, ikey=key, okey=key))
    plain = clear.encapsulate(INNER6 if mode is Mode.SIT else INNER)
    assert isinstance(plain, bytes)
    assert e.inside.packet == plain[20:]  # ESP carried what the same tunnel sends in the clear
    kinds = [layer.kind for layer in e.inside.layers]
    if mode is Mode.GRE:
        assert kinds == ["GRE", "IPv4", "ICMP"] and values(e.inside.layers[0])["key"] == 1234
    elif mode is Mode.VTI:
        assert kinds == ["IPv4", "ICMP"] and "ESP tunnel mode, next header 4" in e.inside.layers[0].title
    else:
        assert kinds == ["IPv6", "ICMPv6"]
    assert e.inside.stop is None and e.inside.well_formed  # the inner checksums verify
    text = explain.render_text(e)
    assert "inside ESP, before encryption (only the two ends can see this)" in text
    assert "--esp-keys opened them: see below" in text


def test_keys_that_are_not_the_packets_say_so_and_show_nothing_inside() -> None:
    wire = sealed(Mode.VTI)
    wrong = esp.SecurityAssociation(SA_AB.spi, esp.GCM, KEY_BA)  # the right SPI, another key
    e = explain.explain(wire, esp_keys=esp.EspKeys(outbound=SA_BA, inbound=wrong))
    assert e.inside is None and [f.problem for f in e.problems] == ["ESP ICV does not verify"]
    e = explain.explain(wire, esp_keys=esp.EspKeys(outbound=SA_BA, inbound=SA_BA))  # no SA with its SPI
    opened = next(f for f in esp_layer(e).fields if f.name == "opened with --esp-keys")
    assert e.inside is None and e.well_formed and "no SA of --esp-keys has SPI 0x00c0ffee" in opened.meaning


@pytest.mark.parametrize("form", [(), ("-j",), ("--svg",), ("--html",)], ids=["text", "json", "svg", "html"])
def test_every_output_form_with_esp_keys_shows_the_inside_and_never_the_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, form: tuple[str]
) -> None:
    keys = key_file(tmp_path, inbound=SA_AB, outbound=SA_BA)
    wire = sealed(Mode.GRE, 1234, count=3)
    status, out, err = run(capsys, *form, "--esp-keys", str(keys), wire.hex())
    assert (status, err) == (0, "")
    assert "inside ESP" in out
    for secret in (KEY_AB, KEY_BA, SA_AB.cipher_key, SA_AB.salt, SA_BA.cipher_key, SA_BA.salt):
        assert secret.hex() not in out.lower(), form
    if form == ("-j",):
        layers = json.loads(out)
        inside = [layer for layer in layers if layer[0]["layer"].startswith("inside ESP")]
        assert [layer[0]["layer"].split(": ", 1)[1].split(" ")[0] for layer in inside] == ["GRE", "inner", "inner"]
        assert {f["name"]: f["value"] for f in inside[0]}["key"] == 1234
    if form == ("--svg",):
        ET.fromstring(out)


def test_an_esp_keys_file_others_may_read_is_refused_in_one_line_without_the_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    keys = key_file(tmp_path, inbound=SA_AB, outbound=SA_BA)
    keys.chmod(0o644)
    status, out, err = run(capsys, "--esp-keys", str(keys), sealed(Mode.VTI).hex())
    assert (status, out) == (2, "") and err.count("\n") == 1 and "chmod 600" in err
    keys.chmod(0o600)
    keys.write_text(keys.read_text().replace("icv = 128", "icv = 100", 1))
    status, out, err = run(capsys, "--esp-keys", str(keys), sealed(Mode.VTI).hex())
    assert (status, out) == (2, "") and err.count("\n") == 1 and "icv" in err
    assert KEY_AB.hex() not in err and KEY_BA.hex() not in err
