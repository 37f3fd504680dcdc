"""IPsec ESP (RFC 4303) with manual keys: seal and open one packet at a time, with an AEAD cipher.

Rules for this file: no socket, no file, no clock. Cryptography comes from the
`cryptography` package only (AES-GCM, ChaCha20-Poly1305); nothing here is
hand-written crypto, only the framing around it. A key never appears in a
repr, a str or an error message: security associations print as
"key=<20 bytes>", and `keys_from_table` says how long a wrong key is, never
what it is.

Theory of operation. One `SecurityAssociation` describes one direction the way
`ip xfrm state add ... proto esp spi SPI aead NAME KEY ICVBITS` does: the SPI,
the kernel's algorithm name, the key as ip xfrm takes it (the cipher key, then
a 4-byte salt), the ICV length, the anti-replay window and whether sequence
numbers are extended (64-bit). A `Sealer` holds the outbound SA's sequence
counter and turns a payload into an ESP packet; an `Opener` holds the inbound
SA's anti-replay window and turns an ESP packet back into (next header,
payload), or says with a `Drop` why not. Both build their AEAD object once.

On the wire (RFC 4303 section 2, RFC 4106 section 3, RFC 7634 section 2):

    SPI (4) | sequence number, low 32 bits (4) | IV (8)
    | ciphertext of: payload, padding 1 2 3 ..., pad length (1), next header (1)
    | ICV (8, 12 or 16)

The AEAD's nonce is the SA's 4-byte salt then the 8-byte IV; its additional
authenticated data is SPI|sequence (8 bytes), or SPI|high 32 bits|low 32 bits
(12 bytes) with extended sequence numbers, whose high half is never sent
(RFC 4106 section 5, RFC 7634 section 2.1).

`protect_ipv4`/`unprotect_ipv4` apply ESP in transport mode to a whole outer
IPv4 packet (GRE, IPIP or SIT): the IP header stays, its protocol becomes 50
and the old protocol travels as ESP's next header. An ipip-shaped packet so
protected is byte for byte what Linux's ESP tunnel mode (and ip_vti) sends.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from .checksum import internet_checksum
from .drops import Drop
from .errors import ConfigError

__all__ = [
    "CHACHA",
    "DEFAULT_REPLAY_WINDOW",
    "GCM",
    "IPPROTO_ESP",
    "MAX_REPLAY_WINDOW",
    "NEXT_HEADER_DUMMY",
    "EspKeys",
    "Opener",
    "Sealer",
    "SecurityAssociation",
    "keys_from_table",
    "protect_ipv4",
    "spi_of",
    "unprotect_ipv4",
]

GCM: Final = "rfc4106(gcm(aes))"  # the kernel's names, as `ip xfrm state ... aead NAME KEY ICVBITS` takes them
CHACHA: Final = "rfc7539esp(chacha20,poly1305)"

DEFAULT_REPLAY_WINDOW: Final = 64
"""The anti-replay window an SA gets unless it says otherwise.

RFC 4303 section 3.4.3: "a minimum window size of 32 packets MUST be
supported ... a window size of 64 is preferred and SHOULD be employed as the
default". Linux's `ip xfrm state add` defaults to `replay-window 0`, which
turns the check off altogether (an IKE daemon always sets one; a hand-written
state rarely does), so a replayed packet is accepted again and again. With
manual keys nothing else protects against replay, so we follow the RFC; a
`replay_window = 0` in the key file gives Linux's behaviour when it is wanted.
"""
MAX_REPLAY_WINDOW: Final = 4096  # bits; Linux's ESN replay state takes larger bitmaps, nobody needs them

IPPROTO_ESP: Final = 50
NEXT_HEADER_DUMMY: Final = 59  # RFC 4303 2.6: "no next header", a dummy packet for traffic flow confidentiality

SPI_MIN: Final = 256  # RFC 4303 2.1: 1..255 are reserved by IANA, 0 is for local use and never sent
SPI_MAX: Final = 2**32 - 1
SALT_LEN: Final = 4  # RFC 4106 section 4 / RFC 7634 section 2: the last 4 bytes of the keying material
IV_LEN: Final = 8  # RFC 4106 section 3.1 / RFC 7634 section 2
HEADER_LEN: Final = 8  # SPI + sequence number
_ALIGN: Final = 4  # esp4's blksize = ALIGN(crypto_aead_blocksize, 4); both AEADs here have block size 1

_KEY_LENGTHS: Final[dict[str, tuple[int, ...]]] = {
    GCM: (16 + SALT_LEN, 32 + SALT_LEN),  # AES-128 and AES-256 (RFC 4106 section 8.1)
    CHACHA: (32 + SALT_LEN,),  # RFC 7634 section 2
}
_ICV_BITS: Final[dict[str, tuple[int, ...]]] = {
    GCM: (64, 96, 128),  # RFC 4106 section 6
    CHACHA: (128,),  # RFC 7634 section 2
}

_HEADER: Final = struct.Struct("!II")  # SPI, sequence number (low 32 bits)
_AAD_ESN: Final = struct.Struct("!III")  # SPI, sequence high, sequence low
_IV: Final = struct.Struct("!Q")
_SEQ: Final = struct.Struct("!I")

# The trailer for each pad length: padding 1, 2, 3 ... (RFC 4303 2.4's default), then the pad length.
_PADDING: Final = tuple(bytes(range(1, n + 1)) for n in range(_ALIGN))
_TRAILERS: Final = tuple(_PADDING[n] + bytes((n,)) for n in range(_ALIGN))
_BYTE: Final = tuple(bytes((n,)) for n in range(256))  # a next header as one byte, without building it per packet


def _describe(aead: str) -> str:
    return f"{aead} ({'AES-GCM' if aead == GCM else 'ChaCha20-Poly1305'})"


def _sa_problems(spi: object, aead: object, key: object, icv_bits: object, window: object, esn: object) -> list[str]:
    """Every reason these values make no SA, one line each, keyed by the TOML names; never the key's value."""
    problems: list[str] = []
    if not isinstance(spi, int) or isinstance(spi, bool) or not SPI_MIN <= spi <= SPI_MAX:
        problems.append(
            f"spi: {spi!r} is not an SPI: give an integer {SPI_MIN}..{SPI_MAX} (0x100..0xffffffff; "
            "1..255 are reserved by IANA, RFC 4303 2.1)"
        )
    names = f"{GCM!r} or {CHACHA!r}"
    if aead not in _KEY_LENGTHS:
        problems.append(f"aead: {aead!r} is not an algorithm usertunnel has: give {names} (the kernel's names)")
    elif isinstance(key, bytes | bytearray):
        lengths = _KEY_LENGTHS[str(aead)]
        if len(key) not in lengths:
            takes = " or ".join(str(n) for n in lengths)
            problems.append(
                f"key: {len(key)} bytes, {aead} takes {takes} (the cipher key followed by a {SALT_LEN}-byte salt)"
            )
    if not isinstance(key, bytes | bytearray):
        problems.append(f"key: a {type(key).__name__}, not bytes")
    allowed = _ICV_BITS.get(str(aead), (64, 96, 128))
    if isinstance(icv_bits, bool) or icv_bits not in allowed:
        takes = ", ".join(str(n) for n in allowed[:-1]) + (" or " if len(allowed) > 1 else "") + str(allowed[-1])
        what = _describe(str(aead)) if aead in _ICV_BITS else "ESP"
        problems.append(f"icv: {icv_bits!r} bits, {what} takes {takes}")
    problems.extend(_window_problems(window, esn))
    return problems


def _window_problems(window: object, esn: object) -> list[str]:
    """What is wrong with a replay window and an ESN flag, which may also be given for both SAs at once."""
    problems = []
    if not isinstance(window, int) or isinstance(window, bool) or not 0 <= window <= MAX_REPLAY_WINDOW:
        problems.append(
            f"replay_window: {window!r} is not a window: give 0..{MAX_REPLAY_WINDOW} packets "
            f"(0 turns the check off, as Linux's default does; RFC 4303 prefers {DEFAULT_REPLAY_WINDOW})"
        )
    if not isinstance(esn, bool):
        problems.append(f"esn: {esn!r} is not true or false")
    elif esn and window == 0:
        problems.append(
            "esn: extended sequence numbers need a replay window (their high half is inferred from it, "
            "RFC 4303 appendix A); Linux refuses esn with replay-window 0 too"
        )
    return problems


@dataclass(frozen=True, repr=False)
class SecurityAssociation:
    """One direction of a manually keyed ESP association, as `ip xfrm state add` sets it up.

    `key` is the keying material exactly as ip xfrm takes it: the AES or
    ChaCha20 key followed by the 4-byte salt (RFC 4106 section 8.1, RFC 7634
    section 2). It is never printed: repr and str show its length only.
    """

    spi: int  # 256..2**32-1 (1..255 are reserved by IANA, 0 is never used)
    aead: str  # GCM or CHACHA
    key: bytes  # the cipher key followed by the 4-byte salt (GCM: 16 or 32 + 4; ChaCha: 32 + 4)
    icv_bits: int = 128  # GCM: 64, 96 or 128 (RFC 4106); ChaCha20-Poly1305: 128 only (RFC 7634)
    replay_window: int = DEFAULT_REPLAY_WINDOW  # 0 = no replay check (as Linux); at most MAX_REPLAY_WINDOW
    esn: bool = False  # extended (64-bit) sequence numbers, RFC 4303 2.2.1 / appendix A

    def __post_init__(self) -> None:
        problems = _sa_problems(self.spi, self.aead, self.key, self.icv_bits, self.replay_window, self.esn)
        if isinstance(self.key, bytearray):
            object.__setattr__(self, "key", bytes(self.key))  # frozen and hashable: no mutable key behind it
        if problems:
            raise ConfigError(
                "\n".join(f"ESP SA 0x{self.spi:08x}: {p}" if isinstance(self.spi, int) else p for p in problems)
            )

    @property
    def cipher_key(self) -> bytes:
        return self.key[:-SALT_LEN]

    @property
    def salt(self) -> bytes:
        return self.key[-SALT_LEN:]

    @property
    def icv_len(self) -> int:
        return self.icv_bits // 8

    def __repr__(self) -> str:
        return (
            f"SecurityAssociation(spi=0x{self.spi:08x}, aead={self.aead!r}, key=<{len(self.key)} bytes>, "
            f"icv_bits={self.icv_bits}, replay_window={self.replay_window}, esn={self.esn})"
        )

    def __str__(self) -> str:
        esn = " esn" if self.esn else ""
        return (
            f"spi 0x{self.spi:08x} aead {self.aead} key <{len(self.key)} bytes> {self.icv_bits}"
            f" replay-window {self.replay_window}{esn}"
        )


@dataclass(frozen=True)
class EspKeys:
    """The two SAs of one tunnel: what we send with and what we accept."""

    outbound: SecurityAssociation  # the TOML table [out]
    inbound: SecurityAssociation  # the TOML table [in]


# --- the --esp-keys file ------------------------------------------------------------------------------------------

_TABLES: Final = ("out", "in")
_SA_FIELDS: Final = ("spi", "aead", "key", "icv", "replay_window", "esn")
_SHARED_FIELDS: Final = ("replay_window", "esn")  # also allowed at the top level, as a default for both tables
_HEX: Final = re.compile(r"(?:0[xX])?((?:[0-9a-fA-F]{2})+)")


def _parse_key(value: object) -> bytes | str:
    """The key's bytes, or what is wrong with it (never quoting it)."""
    if not isinstance(value, str):
        return f'{_toml_type(value)}, give a hex string (as ip xfrm takes it: "0x" and 40 or 72 hex digits)'
    found = _HEX.fullmatch(value.strip())
    if found is None:
        digits = len(value.strip().removeprefix("0x").removeprefix("0X"))
        why = (
            "an odd number of hex digits"
            if digits % 2 and re.fullmatch(r"(?:0[xX])?[0-9a-fA-F]+", value.strip())
            else "not hexadecimal"
        )
        return f'{why} ({digits} characters), give the key in hex as ip xfrm takes it ("0x" optional)'
    return bytes.fromhex(found.group(1))


def _toml_type(value: object) -> str:
    """The TOML name of `value`'s type, with its article: "an integer", "a string"."""
    names = {bool: "a boolean", int: "an integer", str: "a string", float: "a float", dict: "a table", list: "an array"}
    return names.get(type(value), f"a {type(value).__name__}")


def keys_from_table(table: Mapping[str, object], source: str = "esp keys") -> EspKeys:
    """The two SAs an --esp-keys file describes, from its parsed TOML.

    The file has a table `[out]` (the SA we send with) and a table `[in]` (the
    SA we accept), each with `spi` (an integer; TOML writes 0x1000 too),
    `aead` (the kernel's name: "rfc4106(gcm(aes))" or
    "rfc7539esp(chacha20,poly1305)"), `key` (hex as ip xfrm takes it: the
    cipher key then the 4-byte salt, "0x" optional) and `icv` (bits, default
    128). `replay_window` and `esn` may be given at the top level, for both
    SAs, and in either table, which then overrides the top level for that SA
    (as ip xfrm sets them per state). Every mistake is reported at once, one
    line each, in one ConfigError; a key's value never appears in it.
    """
    problems: list[str] = []
    for name in sorted(set(table) - set(_TABLES) - set(_SHARED_FIELDS)):
        problems.append(
            f"{name}: unknown top-level key: the file has tables [out] and [in], and optionally "
            "replay_window and esn for both"
        )
    defaults = {"icv": 128, "replay_window": DEFAULT_REPLAY_WINDOW, "esn": False}
    for name in _SHARED_FIELDS:
        if name in table:
            defaults[name] = table[name]  # type: ignore[assignment]  # checked with the SA's own values below
    if any(name in table for name in _SHARED_FIELDS):
        problems.extend(_window_problems(defaults["replay_window"], defaults["esn"]))
    built: dict[str, SecurityAssociation] = {}
    for which in _TABLES:
        sub = table.get(which)
        if sub is None:
            problems.append(
                f"[{which}]: missing: the file needs [out] (the SA we send with) and [in] (the one we accept)"
            )
            continue
        if not isinstance(sub, Mapping):
            problems.append(f"{which}: {_toml_type(sub)}, expected a table [{which}]")
            continue
        mine = [
            f"{name}: unknown key in [{which}]: give {', '.join(_SA_FIELDS)}"
            for name in sorted(set(sub) - set(_SA_FIELDS))
        ]
        for name in ("spi", "aead", "key"):
            if name not in sub:
                mine.append(f"{name}: missing in [{which}]")
        values = {**defaults, **{k: v for k, v in sub.items() if k in _SA_FIELDS}}
        key = values.get("key")
        parsed_key: bytes | None = None
        if key is not None:
            result = _parse_key(key)
            if isinstance(result, str):
                mine.append(f"key: {result}")
            else:
                parsed_key = result
        unchecked = tuple(f"{name}:" for name in ("spi", "aead") if name not in values)
        if not any(name in sub for name in _SHARED_FIELDS):
            unchecked += tuple(f"{name}:" for name in _SHARED_FIELDS)  # the top level's: said once above
        if parsed_key is None:
            unchecked += ("key:",)  # missing or not hex: said above
        sa_problems = _sa_problems(
            values.get("spi"),
            values.get("aead"),
            parsed_key if parsed_key is not None else b"",
            values["icv"],
            values["replay_window"],
            values["esn"],
        )
        mine.extend(p for p in sa_problems if not p.startswith(unchecked))
        if not mine and parsed_key is not None:
            built[which] = SecurityAssociation(
                spi=values["spi"],
                aead=values["aead"],
                key=parsed_key,
                icv_bits=values["icv"],
                replay_window=values["replay_window"],
                esn=values["esn"],
            )
        problems.extend(f"[{which}] {p}" for p in mine)
    if problems:
        raise ConfigError("\n".join(f"{source}: {p}" for p in problems))
    return EspKeys(outbound=built["out"], inbound=built["in"])


# --- the data path ------------------------------------------------------------------------------------------------


def _aead(sa: SecurityAssociation) -> AESGCM | ChaCha20Poly1305:
    """The SA's cipher. `cryptography` is imported here, with the first SA: it adds some 7 MB to a process,
    which a tunnel without ESP should not pay (issue 14's memory target)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

    return AESGCM(sa.cipher_key) if sa.aead == GCM else ChaCha20Poly1305(sa.cipher_key)


class Sealer:
    """The outbound direction of one SA: payload in, ESP packet out, sequence numbers counted.

    The IV. GCM and ChaCha20-Poly1305 are broken outright when one key ever
    encrypts two packets under the same nonce (the XOR of the plaintexts leaks
    and, worse, the authentication key can be recovered and packets forged).
    The nonce is the SA's fixed salt and the 8-byte IV, so the IV must never
    repeat for one key. The sequence number alone would do within one run, but
    with manual keys a restarted process starts counting from 1 again under the
    same key. So, as the kernel's `seqiv` IV generator does, the IV is the
    64-bit sequence number XOR a random 64-bit value drawn once per Sealer:
    distinct within a run (XOR with a constant is a bijection) and, across
    runs, colliding only if two random draws happen to line up.
    """

    __slots__ = (
        "_aead",
        "_aad_esn",
        "_esn",
        "_header",
        "_icv_len",
        "_iv_salt",
        "_limit",
        "_nonce_salt",
        "_spi",
        "_truncate",
        "sa",
        "seq",
    )

    def __init__(self, sa: SecurityAssociation, iv_salt: bytes | None = None) -> None:
        if iv_salt is None:
            iv_salt = os.urandom(IV_LEN)
        if len(iv_salt) != IV_LEN:
            raise ValueError(f"iv_salt: {len(iv_salt)} bytes, give {IV_LEN}")
        self.sa = sa
        self.seq = 0  # the last sequence number sent; the next packet uses seq + 1 (RFC 4303 3.3.3)
        self._spi = sa.spi
        self._esn = sa.esn
        self._limit = 2**64 - 1 if sa.esn else 2**32 - 1  # the last number that may be sent
        self._iv_salt = _IV.unpack(iv_salt)[0]
        self._nonce_salt = sa.salt
        self._icv_len = sa.icv_len
        self._truncate = sa.icv_len != 16  # a truncated GCM tag is the full tag's first bytes (SP 800-38D 5.2.1.2)
        self._aead = _aead(sa)
        self._header = _HEADER
        self._aad_esn = _AAD_ESN

    @property
    def exhausted(self) -> bool:
        """True once the last sequence number was used: the SA sends nothing more (RFC 4303 3.3.3)."""
        return self.seq >= self._limit

    def seal(self, next_header: int, payload: bytes | bytearray | memoryview) -> bytes | Drop:
        """`payload` as one ESP packet (from the ESP header on) whose next header is `next_header`.

        Padded to a 4-byte boundary as Linux's esp4 pads. Once the last
        sequence number was sent, returns Drop.ESP_SEQ_EXHAUSTED for ever:
        manual keys cannot be rekeyed, and cycling the counter would reopen
        the replay window and repeat IVs (RFC 4303 3.3.3).
        """
        if self.seq >= self._limit:
            return Drop.ESP_SEQ_EXHAUSTED
        seq = self.seq = self.seq + 1
        low = seq & 0xFFFFFFFF
        header = self._header.pack(self._spi, low)
        aad = self._aad_esn.pack(self._spi, seq >> 32, low) if self._esn else header
        iv = _IV.pack(seq ^ self._iv_salt)
        pad = -(len(payload) + 2) % _ALIGN
        plaintext = b"".join((payload, _TRAILERS[pad], _BYTE[next_header]))
        sealed = self._aead.encrypt(self._nonce_salt + iv, plaintext, aad)
        if self._truncate:
            sealed = sealed[: len(plaintext) + self._icv_len]
        return b"".join((header, iv, sealed))


def spi_of(esp: bytes | bytearray | memoryview) -> int | None:
    """The SPI of the ESP packet `esp` (its first 4 bytes), or None if it is shorter than that."""
    if len(esp) < 4:
        return None
    return int(_SEQ.unpack_from(esp)[0])


class Opener:
    """The inbound direction of one SA: ESP packet in, (next header, payload) or a Drop out.

    The anti-replay window (RFC 4303 3.4.3) is `highest`, the highest
    sequence number accepted (64-bit with ESN; 0 before the first), and
    `bitmap`, whose bit i says that `highest - i` was accepted. A number is
    refused when it is 0, was accepted already, or lies `replay_window` or
    more below `highest`. The check runs before decryption (it is cheap); the
    window moves only after the ICV verified, so forged packets cannot push it
    forward. A packet that verified but is then refused (bad padding, a dummy)
    still used its number: the peer sent it, and it must not be accepted twice.
    With replay_window 0 nothing is checked, as Linux does.

    With ESN only the low 32 bits travel; the high half is inferred from the
    window (RFC 4303 appendix A2.2). A peer that jumps more than 2**31
    numbers ahead is guessed wrong and its packets fail the ICV: appendix
    A3's resynchronisation after many such failures is not implemented (the
    kernel has none either), since a sender never skips numbers.
    """

    __slots__ = (
        "_aead",
        "_esn",
        "_invalid_tag",
        "_icv_len",
        "_min_len",
        "_nonce_salt",
        "_spi",
        "_truncated_key",
        "_window",
        "_window_mask",
        "bitmap",
        "highest",
        "sa",
    )

    def __init__(self, sa: SecurityAssociation) -> None:
        self.sa = sa
        self.highest = 0
        self.bitmap = 0
        self._spi = sa.spi
        self._esn = sa.esn
        self._window = sa.replay_window
        self._window_mask = (1 << sa.replay_window) - 1
        self._icv_len = sa.icv_len
        self._nonce_salt = sa.salt
        self._aead = _aead(sa)
        from cryptography.exceptions import InvalidTag  # loaded by _aead already (see there)

        self._invalid_tag = InvalidTag
        # Truncated GCM tags need the streaming API, which checks a short tag (the one-shot AESGCM only takes 16).
        self._truncated_key = sa.cipher_key if sa.icv_len != 16 else None
        self._min_len = HEADER_LEN + IV_LEN + 2 + sa.icv_len  # at least pad length and next header encrypted

    def infer_seq(self, low: int) -> int:
        """The full sequence number of a packet carrying `low` (RFC 4303 appendix A2.2), or -1 for a number
        below the window at the very start. Without ESN, `low` itself."""
        if not self._esn:
            return low
        window = self._window
        top_low = self.highest & 0xFFFFFFFF
        top_high = self.highest >> 32
        if top_low >= window - 1:  # case A: the window lies within one 2**32 subspace
            high = top_high if low >= top_low - window + 1 else top_high + 1
        else:  # case B: the window spans two subspaces
            high = top_high - 1 if low >= (top_low - window + 1) & 0xFFFFFFFF else top_high
        if high < 0 or high > 0xFFFFFFFF:
            return -1
        return (high << 32) | low

    def replayed(self, seq: int) -> bool:
        """True when `seq` (the full number) is refused by the window: 0, seen, or too old."""
        if self._window == 0:
            return False
        if seq <= 0:
            return True
        if seq > self.highest:
            return False
        diff = self.highest - seq
        return diff >= self._window or bool(self.bitmap >> diff & 1)

    def _accept(self, seq: int) -> None:
        if self._window == 0:
            self.highest = max(self.highest, seq)
            return
        if seq > self.highest:
            shift = seq - self.highest
            self.bitmap = ((self.bitmap << shift) | 1) & self._window_mask if shift < self._window else 1
            self.highest = seq
        else:
            self.bitmap |= 1 << (self.highest - seq)

    def open(self, esp: bytes | bytearray | memoryview) -> tuple[int, bytes] | Drop:
        """(next header, payload) of the ESP packet `esp` (from the ESP header on, the outer IP header
        already removed), or why it is refused, in RFC 4303 3.4's order: SPI, length, replay, ICV,
        padding, dummy."""
        if len(esp) < HEADER_LEN:
            return Drop.ESP_TRUNCATED
        spi, low = _HEADER.unpack_from(esp)
        if spi != self._spi:
            return Drop.ESP_NO_SA
        if len(esp) < self._min_len:
            return Drop.ESP_TRUNCATED
        seq = self.infer_seq(low)
        if seq < 0 or self.replayed(seq):
            return Drop.ESP_REPLAY
        view = memoryview(esp)
        nonce = self._nonce_salt + bytes(view[HEADER_LEN : HEADER_LEN + IV_LEN])
        aad = _AAD_ESN.pack(spi, seq >> 32, low) if self._esn else view[:HEADER_LEN]
        body = view[HEADER_LEN + IV_LEN :]
        try:
            if self._truncated_key is None:
                plaintext = self._aead.decrypt(nonce, body, aad)
            else:
                plaintext = self._open_truncated(nonce, body, aad)
        except self._invalid_tag:
            return Drop.ESP_ICV
        self._accept(seq)
        pad, next_header = plaintext[-2], plaintext[-1]
        end = len(plaintext) - 2 - pad
        if end < 0 or plaintext[end:-2] != _padding(pad):
            return Drop.ESP_PADDING
        if next_header == NEXT_HEADER_DUMMY:
            return Drop.ESP_DUMMY
        return next_header, plaintext[:end]

    def _open_truncated(self, nonce: bytes, body: memoryview, aad: bytes | memoryview) -> bytes:
        assert self._truncated_key is not None
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        split = len(body) - self._icv_len
        decryptor = Cipher(
            algorithms.AES(self._truncated_key), modes.GCM(nonce, bytes(body[split:]), min_tag_length=self._icv_len)
        ).decryptor()
        decryptor.authenticate_additional_data(aad)
        return decryptor.update(body[:split]) + decryptor.finalize()


def _padding(n: int) -> bytes:
    return _PADDING[n] if n < _ALIGN else bytes(range(1, n + 1))


# --- transport mode around an outer IPv4 packet ------------------------------------------------------------------


def _ipv4_header(packet: bytes | bytearray | memoryview) -> tuple[int, int] | Drop:
    """(header length, total length) of a whole, unfragmented IPv4 packet, or OUTER_MALFORMED/OUTER_FRAGMENT."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return Drop.OUTER_MALFORMED
    ihl = (packet[0] & 0x0F) * 4
    total = (packet[2] << 8) | packet[3]
    if ihl < 20 or total < ihl or total > len(packet):
        return Drop.OUTER_MALFORMED
    if ((packet[6] << 8) | packet[7]) & 0x3FFF:  # MF or a fragment offset: ESP protects whole datagrams
        return Drop.OUTER_FRAGMENT
    return ihl, total


def _rewrite(header: bytes | bytearray | memoryview, protocol: int, total: int) -> bytearray:
    """`header` with a new protocol and total length, and its checksum recomputed (RFC 791 3.1); byte by byte,
    which is faster than slicing for a 20-byte header."""
    out = bytearray(header)
    out[2], out[3] = total >> 8, total & 0xFF
    out[9] = protocol
    out[10] = out[11] = 0
    checksum = internet_checksum(out)
    out[10], out[11] = checksum >> 8, checksum & 0xFF
    return out


def protect_ipv4(sealer: Sealer, packet: bytes | bytearray | memoryview) -> bytes | Drop:
    """ESP in transport mode around the whole IPv4 packet `packet` (options kept): protocol 50, the old
    protocol as ESP's next header (47 GRE, 4 IPIP, 41 SIT), total length and header checksum fixed."""
    parsed = _ipv4_header(packet)
    if isinstance(parsed, Drop):
        return parsed
    ihl, total = parsed
    view = memoryview(packet)
    esp = sealer.seal(packet[9], view[ihl:total])
    if isinstance(esp, Drop):
        return esp
    if ihl + len(esp) > 0xFFFF:
        return Drop.OVERSIZE
    return b"".join((_rewrite(view[:ihl], IPPROTO_ESP, ihl + len(esp)), esp))


def unprotect_ipv4(opener: Opener, packet: bytes | bytearray | memoryview) -> bytes | Drop:
    """The IPv4 packet with protocol 50 `packet`, its ESP opened: the same header with protocol = ESP's next
    header, the decrypted payload after it, total length and checksum fixed. Bytes beyond the total length
    are ignored; a malformed outer header is OUTER_MALFORMED."""
    parsed = _ipv4_header(packet)
    if isinstance(parsed, Drop):
        return parsed
    ihl, total = parsed
    if packet[9] != IPPROTO_ESP:
        return Drop.OUTER_MALFORMED
    view = memoryview(packet)
    opened = opener.open(view[ihl:total])
    if isinstance(opened, Drop):
        return opened
    next_header, payload = opened
    return b"".join((_rewrite(view[:ihl], next_header, ihl + len(payload)), payload))


# --- over IPv6: vti6 (ESP tunnel mode, as Linux's ip6_vti) ------------------------------------------------------


def protect_ipv6(sealer: Sealer, packet: bytes | bytearray | memoryview) -> bytes | Drop:
    """ESP around what follows the fixed 40-byte header of the IPv6 packet `packet`, which has no extension
    header (vti6 sends none): next header 50, the old one as ESP's next header (41: IPv6 inside, ESP tunnel
    mode), the payload length fixed."""
    if len(packet) < 40 or packet[0] >> 4 != 6 or 40 + ((packet[4] << 8) | packet[5]) > len(packet):
        return Drop.OUTER_MALFORMED
    view = memoryview(packet)
    end = 40 + ((packet[4] << 8) | packet[5])
    esp = sealer.seal(packet[6], view[40:end])
    if isinstance(esp, Drop):
        return esp
    if len(esp) > 0xFFFF:
        return Drop.OVERSIZE
    header = bytearray(view[:40])
    header[4], header[5] = len(esp) >> 8, len(esp) & 0xFF
    header[6] = IPPROTO_ESP
    return b"".join((header, esp))
