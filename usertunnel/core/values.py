"""Single values as iproute2 reads them: keys, ports, TTL, TOS, addresses, encaplimit, flowlabel.

Each parser takes the text a person typed (command line, configuration file, `ip tunnel` words) and
returns the value or raises `ConfigError` with a sentence that says what is accepted.
"""

from __future__ import annotations

import ipaddress
import re

from . import ipv6
from .errors import ConfigError
from .fou import EncapKind

_STRTOUL = re.compile(r"^(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$")


def strtoul(text: str) -> int | None:
    """An unsigned number the way iproute2 reads one (C strtoul, base 0): 0x hex, leading-0 octal, decimal."""
    if not _STRTOUL.match(text):
        return None
    if text[:2] in ("0x", "0X"):
        return int(text[2:], 16)
    if text.startswith("0"):
        return int(text, 8)
    return int(text, 10)


def parse_key(text: str) -> int:
    """A GRE key as iproute2 reads it: an unsigned 32-bit number (strtoul, base 0) or a dotted quad."""
    if "." in text:
        try:
            return int(ipaddress.IPv4Address(text))
        except ipaddress.AddressValueError:
            pass
    else:
        value = strtoul(text)
        if value is not None and value <= 0xFFFFFFFF:
            return value
    raise ConfigError(f'invalid key "{text}": an unsigned integer 0..4294967295 or a dotted quad such as 0.0.4.210')


def parse_encap(text: str) -> EncapKind | None:
    """`--encap fou|gue|none` (iproute2's words; `none` is no UDP)."""
    if text.lower() == "none":
        return None
    try:
        return EncapKind(text.lower())
    except ValueError:
        raise ConfigError(f"invalid encap {text!r}: fou, gue or none") from None


def parse_port(text: str, what: str) -> int:
    """A UDP port, 1..65535."""
    value = strtoul(text)
    if value is None or not 1 <= value <= 65535:
        raise ConfigError(f"invalid {what} {text!r}: a UDP port 1..65535")
    return value


def parse_sport(text: str) -> int | None:
    """`--encap-sport auto|N`: None is auto (a port per inner flow)."""
    return None if text == "auto" else parse_port(text, "encap-sport")


def parse_ttl(text: str) -> int | None:
    """`inherit` (or 0, as iproute2 also accepts) -> None; otherwise 1..255 (strtoul, base 0)."""
    if text == "inherit":
        return None
    value = strtoul(text)
    if value == 0:
        return None
    if value is None or not 1 <= value <= 255:
        raise ConfigError(f'invalid ttl "{text}": a number 1..255 or "inherit"')
    return value


def parse_tos(text: str) -> int | None:
    """`inherit` -> None; otherwise a hex byte, as iproute2 reads `tos` (00..ff, 0x optional)."""
    return _hex_or_inherit(text, 0xFF, f'invalid tos "{text}": a hex byte 00..ff or "inherit"')


def _hex_or_inherit(text: str, maximum: int, refusal: str) -> int | None:
    """`inherit` -> None; otherwise a hex number 0..maximum (0x optional), or ConfigError(refusal)."""
    if text == "inherit":
        return None
    try:
        value = int(text, 16)
    except ValueError:
        value = -1
    if not 0 <= value <= maximum:
        raise ConfigError(refusal)
    return value


def parse_ipv4_address(text: str, what: str) -> bytes:
    """A dotted-quad IPv4 address, packed. Names the option and says what is accepted."""
    try:
        return ipaddress.IPv4Address(text).packed
    except ipaddress.AddressValueError:
        pass
    try:
        ipaddress.IPv6Address(text)
    except ipaddress.AddressValueError:
        raise ConfigError(f"invalid {what} address {text!r}: an IPv4 address such as 198.51.100.1") from None
    raise ConfigError(f"{what} address {text!r} is IPv6, but this mode runs over IPv4: give an IPv4 address")


def parse_address(text: str, what: str) -> bytes:
    """An outer address, IPv4 or IPv6, packed (4 or 16 bytes); the mode says which family it must be."""
    try:
        return ipaddress.ip_address(text).packed
    except ValueError:
        raise ConfigError(
            f"invalid {what} address {text!r}: an IPv4 address such as 198.51.100.1 "
            "or an IPv6 address such as 2001:db8:1::1"
        ) from None


def parse_interface(text: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """An inner address with its prefix length, for the device (--address, the config's addresses)."""
    try:
        return ipaddress.ip_interface(text)
    except ValueError:
        raise ConfigError(
            f"invalid address {text!r}: an address with prefix length, such as 203.0.113.1/30 or 2001:db8::1/64"
        ) from None


def parse_encaplimit(text: str) -> int | None:
    """`none` -> None (no encapsulation limit option); otherwise 0..255, as iproute2's `encaplimit`."""
    if text == "none":
        return None
    value = strtoul(text)
    if value is None or value > 255:
        raise ConfigError(f'invalid encaplimit "{text}": a number 0..255 or "none"')
    return value


def parse_flowlabel(text: str) -> int | None:
    """`inherit` -> None; otherwise a hex value 0..fffff, as iproute2's `flowlabel`."""
    return _hex_or_inherit(text, ipv6.FLOW_LABEL_MASK, f'invalid flowlabel "{text}": a hex value 0..fffff or "inherit"')
