"""Tunnel parameters, the way `ip tunnel add` describes a tunnel.

Rules for this file: it validates configuration and says what was wrong in a
sentence a person can act on (`ConfigError`); it never touches the system.
Names follow iproute2 and the kernel: `ikey`/`okey`, `iseq`/`oseq`,
`icsum`/`ocsum`, `ttl`, `tos`, `pmtudisc`.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import gre, ipv4
from .sequence import SeqPolicy

if TYPE_CHECKING:
    from .keepalive import KeepaliveParams
    from .neighbors import HubParams


class ConfigError(ValueError):
    """A configuration a person gave us cannot be used; the message says why and what is accepted."""


@dataclass(frozen=True, slots=True)
class ModeSpec:
    name: str
    ip_protocol: int  # outer IP protocol number
    families: frozenset[int]  # inner IP versions this mode carries
    is_gre: bool


class Mode(enum.Enum):
    """Tunnel modes. Modes differ by data (protocol number, inner families), not by code."""

    GRE = ModeSpec("gre", 47, frozenset({4, 6}), True)  # RFC 2784
    IPIP = ModeSpec("ipip", 4, frozenset({4}), False)  # RFC 2003

    @classmethod
    def from_name(cls, name: str) -> Mode:
        for mode in cls:
            if mode.value.name == name:
                return mode
        accepted = ", ".join(m.value.name for m in cls)
        raise ConfigError(f"unknown mode {name!r}; accepted: {accepted}")


IFNAMSIZ = 16
_IFNAME = re.compile(r"^[^\s/:]{1,15}$")


@dataclass(frozen=True, slots=True)
class TunnelParams:
    """One tunnel. `None` for `local`/`remote` means any address (a wildcard in lookup).

    `ttl=None` means inherit the inner TTL (Linux's default); `tos=None` means
    inherit the inner DSCP (`tos inherit`); the default fixed TOS is 0, as in Linux.
    """

    name: str
    mode: Mode
    local: bytes | None
    remote: bytes | None
    ikey: int | None = None
    okey: int | None = None
    iseq: bool = False
    oseq: bool = False
    icsum: bool = False
    ocsum: bool = False
    ttl: int | None = None
    tos: int | None = 0
    pmtudisc: bool = True
    keepalive: KeepaliveParams | None = None  # Cisco-style keepalives (core.keepalive); Linux has none
    reflect_keepalives: bool = True  # send a peer's keepalives back at once (see README: RFC 2784 section 3)
    hub: HubParams | None = None  # point-to-multipoint (--remote any): core.neighbors; Linux has none
    seq_policy: SeqPolicy = SeqPolicy.KERNEL  # how iseq enforces order (core.sequence); Linux: kernel

    def __post_init__(self) -> None:
        if not _IFNAME.match(self.name):
            raise ConfigError(
                f"invalid interface name {self.name!r}: 1 to {IFNAMSIZ - 1} characters, no spaces, '/' or ':'"
            )
        if not self.mode.value.is_gre and (
            self.ikey is not None or self.okey is not None or self.iseq or self.oseq or self.icsum or self.ocsum
        ):
            raise ConfigError(
                f"keys, sequence numbers and checksums are GRE options; mode {self.mode.value.name} has none"
            )
        for label, key in (("ikey", self.ikey), ("okey", self.okey)):
            if key is not None and not 0 <= key <= 0xFFFFFFFF:
                raise ConfigError(f"{label} {key} out of range: 0..4294967295 or a dotted quad")
        if self.ttl is not None and not 1 <= self.ttl <= 255:
            raise ConfigError(f"ttl {self.ttl} out of range: 1..255 or 'inherit'")
        if self.tos is not None and not 0 <= self.tos <= 0xFF:
            raise ConfigError(f"tos {self.tos:#x} out of range: 00..ff or 'inherit'")
        if self.keepalive is not None and (not self.mode.value.is_gre or self.local is None or self.remote is None):
            raise ConfigError("keepalives need mode gre with both --local and --remote: they are sent to the remote")
        if self.seq_policy is not SeqPolicy.KERNEL and not self.iseq:
            raise ConfigError(
                f"--seq-policy {self.seq_policy.value} says how received sequence numbers are enforced: "
                "use it with --seq or --iseq"
            )
        if self.hub is not None:
            if self.remote is not None:
                raise ConfigError("neighbors and spokes belong to a hub: use them with --remote any")
            if self.hub.spokes and not self.mode.value.is_gre:
                raise ConfigError(f"spoke keys are GRE keys; mode {self.mode.value.name} has none")
            if self.hub.spokes and self.okey is not None and self.okey != self.ikey:
                raise ConfigError("a hub with --spoke keys answers each spoke with its own key: --okey cannot differ")
        if self.ttl is not None and not self.pmtudisc:
            # iproute2 refuses this combination with the same words.
            raise ConfigError("ttl != 0 and nopmtudisc are incompatible")

    @property
    def ikeys(self) -> tuple[int | None, ...]:
        """Every key this tunnel accepts (None: no key): its ikey, and a hub's spoke keys.

        A hub given only --spoke keys accepts those keys and nothing else (no keyless packets).
        """
        if self.hub is None or not self.hub.spokes:
            return (self.ikey,)
        extra = (self.ikey,) if self.ikey is not None else ()
        return extra + self.hub.spoke_keys

    @property
    def header_length(self) -> int:
        """Bytes added in front of each inner packet: outer IPv4 plus GRE with its options."""
        n = ipv4.MIN_HEADER_LEN
        if self.mode.value.is_gre:
            flags = (gre.FLAG_CSUM if self.ocsum else 0) | (gre.FLAG_KEY if self.okey is not None else 0)
            flags |= gre.FLAG_SEQ if self.oseq else 0
            n += gre.header_length(flags)
        return n

    def default_mtu(self, underlay_mtu: int) -> int:
        """The tunnel MTU Linux picks: the underlay MTU minus the exact overhead."""
        return underlay_mtu - self.header_length


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
    if text == "inherit":
        return None
    try:
        value = int(text, 16)
    except ValueError:
        value = -1
    if not 0 <= value <= 0xFF:
        raise ConfigError(f'invalid tos "{text}": a hex byte 00..ff or "inherit"')
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
