"""The address logic of Linux's `sit` (IPv6 in IPv4, net/ipv6/sit.c): 6to4, 6rd, ISATAP.

Rules for this file: pure functions over packed addresses (IPv6: 16 bytes,
IPv4: 4 bytes) and small immutable configuration types. No sockets, no routing
table: where the kernel consults a route or the tunnel device's addresses, the
caller passes what it knows as an argument. Verdicts are values; only
configuration errors raise (`ConfigError`, with the kernel's errno in words).

Theory of operation.

Transmit (ipip6_tunnel_xmit), for a tunnel whose remote is `any` (NBMA), in
the kernel's order; `ipv4_destination` returns the outer IPv4 destination or
None ("no IPv4 destination": the kernel counts tx_errors and drops):

1. A configured remote is the destination (point-to-point sit).
2. ISATAP tunnels (`mode isatap`, RFC 5214) take it from the route's IPv6
   next hop: it must be unicast with an ISATAP interface identifier
   (::0:5efe:a.b.c.d or ::200:5efe:a.b.c.d), whose last 32 bits are the IPv4
   address. No next hop, or any other next hop: no destination.
3. Still none: the IPv6 destination is tried against the tunnel's 6rd prefix
   (try_6rd / check_6rd). With the default 2002::/16 and no relay prefix this
   is 6to4 (RFC 3056 section 2): 2002:V4ADDR::/48 gives V4ADDR. With
   `6rd-prefix P/n 6rd-relay_prefix R/r` (RFC 5969 section 4) the 32 - r bits
   after the first n bits of the destination, ORed into R, give the address.
   A derived 0.0.0.0 counts as "not found", as in the kernel.
4. Still none: the route's IPv6 next hop (the neighbour the kernel resolves:
   the gateway, or the destination itself for an on-link route; `::` means the
   destination) must be IPv4-compatible, ::a.b.c.d other than :: and ::1
   (RFC 4291 section 2.5.5.1), and its last 32 bits are the destination.
   Anything else (a native, 6to4, mapped, link-local or multicast next hop):
   no destination. The usual `ip -6 route add 2000::/3 via ::192.88.99.1 dev
   sit0` works through this rule.

Receive (ipip6_rcv -> packet_is_spoofed), `check_source`:

* ISATAP tunnels (isatap_chksrc): an outer source in the potential router list
  is accepted (as a default or non-default router, per its flag); otherwise the
  inner source must be an ISATAP address embedding the outer source, under a
  prefix on-link on the tunnel device; anything else is refused.
* Point-to-point tunnels (a remote configured): no check.
* Otherwise (is_spoofed_6rd): an inner source inside the 6rd/6to4 prefix must
  embed the outer source; an inner destination inside it must embed the outer
  destination, unless it falls in a delegated prefix configured on the tunnel
  device (only_dnatted: a NAT rewrote the outer destination). Native IPv6
  sources (traffic from a relay) pass.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import NamedTuple

from .errors import ConfigError
from .values import parse_address

ZERO4 = bytes(4)
ZERO6 = bytes(16)
PRL_DEFAULT = 0x0001  # struct ip_tunnel_prl flags (include/uapi/linux/if_tunnel.h)

_ISATAP_ID = bytes.fromhex("00005efe")  # RFC 5214 section 6.1: IANA OUI 00-00-5E, type 0xFE
_U_BIT = 0x02  # the universal/local bit of a modified EUI-64 identifier (RFC 4291 appendix A)


def _prefix_equal(a: bytes, b: bytes, prefixlen: int) -> bool:
    """The kernel's ipv6_prefix_equal: the first `prefixlen` bits of `a` and `b` agree."""
    if prefixlen == 0:
        return True
    shift = 128 - prefixlen
    return int.from_bytes(a, "big") >> shift == int.from_bytes(b, "big") >> shift


def _masked6(address: bytes, prefixlen: int) -> bytes:
    value = int.from_bytes(address, "big") >> (128 - prefixlen) << (128 - prefixlen) if prefixlen else 0
    return value.to_bytes(16, "big")


def _masked4(address: bytes, prefixlen: int) -> bytes:
    value = int.from_bytes(address, "big") >> (32 - prefixlen) << (32 - prefixlen) if prefixlen else 0
    return value.to_bytes(4, "big")


def _v6(address: bytes) -> str:
    return str(ipaddress.IPv6Address(address)) if len(address) == 16 else address.hex()


def _v4(address: bytes) -> str:
    return str(ipaddress.IPv4Address(address)) if len(address) == 4 else address.hex()


# --- 6rd (RFC 5969) and 6to4 (RFC 3056) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class SixRd:
    """A tunnel's 6rd parameters, as `ip tunnel 6rd dev D 6rd-prefix P/n 6rd-relay_prefix R/r` sets them.

    The default is the kernel's (ipip6_tunnel_clone_6rd): 2002::/16 with no relay
    prefix, which is 6to4. `relay_prefix` holds the high-order bits common to
    every IPv4 address of the 6rd domain (RFC 5969's IPv4MaskLen = `relay_prefixlen`);
    they are left out of the IPv6 prefix. Validation is ipip6_tunnel_update_6rd's.
    """

    prefix: bytes = bytes.fromhex("2002") + bytes(14)
    prefixlen: int = 16
    relay_prefix: bytes = ZERO4
    relay_prefixlen: int = 0

    def __post_init__(self) -> None:
        shown = (
            f"6rd-prefix {_v6(self.prefix)}/{self.prefixlen} "
            f"6rd-relay_prefix {_v4(self.relay_prefix)}/{self.relay_prefixlen}"
        )
        if len(self.prefix) != 16 or len(self.relay_prefix) != 4:
            raise ConfigError(f"{shown}: a 6rd prefix is 16 bytes and a relay prefix 4")
        if not 0 <= self.relay_prefixlen <= 32:
            raise ConfigError(f"{shown}: the relay prefix length must be 0..32 (the kernel says EINVAL)")
        if self.prefixlen < 0 or self.delegated_prefixlen > 64:
            raise ConfigError(
                f"{shown}: prefix length + (32 - relay prefix length) = {self.delegated_prefixlen} is over 64; "
                "the kernel refuses a delegated prefix longer than 64 bits (EINVAL)"
            )
        if _masked6(self.prefix, self.prefixlen) != self.prefix:
            raise ConfigError(
                f"{shown}: the 6rd prefix has bits set beyond /{self.prefixlen} (the kernel says EINVAL); "
                f"use {_v6(_masked6(self.prefix, self.prefixlen))}/{self.prefixlen}"
            )
        if _masked4(self.relay_prefix, self.relay_prefixlen) != self.relay_prefix:
            raise ConfigError(
                f"{shown}: the relay prefix has bits set beyond /{self.relay_prefixlen} (the kernel says EINVAL); "
                f"use {_v4(_masked4(self.relay_prefix, self.relay_prefixlen))}/{self.relay_prefixlen}"
            )

    @classmethod
    def from_text(cls, prefix: str, relay_prefix: str = "0.0.0.0/0") -> SixRd:
        """From iproute2's arguments; an address without /len is a full-length prefix, as get_prefix reads it."""
        try:
            net6 = ipaddress.IPv6Interface(prefix)
        except ValueError:
            raise ConfigError(f"6rd-prefix {prefix!r} is not an IPv6 prefix; expected e.g. 2001:db8::/32") from None
        try:
            net4 = ipaddress.IPv4Interface(relay_prefix)
        except ValueError:
            raise ConfigError(
                f"6rd-relay_prefix {relay_prefix!r} is not an IPv4 prefix; expected e.g. 10.0.0.0/8"
            ) from None
        return cls(net6.ip.packed, net6.network.prefixlen, net4.ip.packed, net4.network.prefixlen)

    @property
    def delegated_prefixlen(self) -> int:
        """The length of a site's 6rd delegated prefix: the 6rd prefix plus the embedded IPv4 bits."""
        return self.prefixlen + 32 - self.relay_prefixlen

    def embedded_ipv4(self, address: bytes) -> bytes | None:
        """The kernel's check_6rd: the IPv4 address embedded in `address`, or None outside the 6rd prefix.

        The 32 - relay_prefixlen bits following the 6rd prefix, ORed into the
        relay prefix (RFC 5969 section 4). May be 0.0.0.0.
        """
        if not _prefix_equal(address, self.prefix, self.prefixlen):
            return None
        width = 32 - self.relay_prefixlen
        bits = (int.from_bytes(address, "big") >> (128 - self.prefixlen - width)) & ((1 << width) - 1)
        return (int.from_bytes(self.relay_prefix, "big") | bits).to_bytes(4, "big")

    def delegated_prefix(self, ipv4: bytes) -> bytes:
        """The 6rd delegated prefix of the site whose IPv4 address is `ipv4` (RFC 5969 section 4), zero-filled.

        `ipv4` must lie within the relay prefix. Its length is `delegated_prefixlen`.
        """
        if _masked4(ipv4, self.relay_prefixlen) != self.relay_prefix:
            raise ValueError(
                f"{_v4(ipv4)} is outside the 6rd relay prefix {_v4(self.relay_prefix)}/{self.relay_prefixlen}"
            )
        width = 32 - self.relay_prefixlen
        bits = int.from_bytes(ipv4, "big") & ((1 << width) - 1)
        value = int.from_bytes(self.prefix, "big") | (bits << (128 - self.prefixlen - width))
        return value.to_bytes(16, "big")


SIX_TO_FOUR = SixRd()


def six_to_four_prefix(ipv4: bytes) -> bytes:
    """2002:V4ADDR::, the first 48 bits of the 6to4 prefix of `ipv4` (RFC 3056 section 2), zero-filled."""
    return SIX_TO_FOUR.delegated_prefix(ipv4)


# --- address classes, as the kernel's __ipv6_addr_type sees them ---------------------------


def is_ipv4_compatible(address: bytes) -> bool:
    """IPV6_ADDR_COMPATv4: ::a.b.c.d, excluding :: and ::1 (RFC 4291 section 2.5.5.1, deprecated there)."""
    return address[:12] == ZERO6[:12] and address[12:] not in (ZERO4, b"\0\0\0\1")


def is_unicast(address: bytes) -> bool:
    """IPV6_ADDR_UNICAST: anything but ::, multicast (ff00::/8) and IPv4-mapped (::ffff:0:0/96)."""
    return address != ZERO6 and address[0] != 0xFF and address[:12] != ZERO6[:10] + b"\xff\xff"


def is_isatap(address: bytes) -> bool:
    """ipv6_addr_is_isatap: the interface identifier is 0000:5efe or 0200:5efe followed by an IPv4 address."""
    return address[8] | _U_BIT == _U_BIT and address[9:12] == _ISATAP_ID[1:]


def isatap_ipv4(address: bytes) -> bytes | None:
    """The IPv4 address an ISATAP address embeds (RFC 5214 section 6.1), or None for another address."""
    return bytes(address[12:16]) if is_isatap(address) else None


def isatap_interface_id(ipv4: bytes, universal: bool = False) -> bytes:
    """The 8-byte ISATAP interface identifier of `ipv4` (RFC 5214 section 6.1).

    `universal` sets the u bit (0200:5efe:...), which RFC 5214 reserves for a
    globally unique IPv4 address; the kernel accepts either form.
    """
    return bytes((_U_BIT if universal else 0,)) + _ISATAP_ID[1:] + ipv4


def isatap_address(prefix: bytes, ipv4: bytes, universal: bool = False) -> bytes:
    """An ISATAP address: the first 64 bits of `prefix` and the interface identifier of `ipv4`."""
    return bytes(prefix[:8]) + isatap_interface_id(ipv4, universal)


# --- transmit: which IPv4 address to send to ------------------------------------------------


def ipv4_destination(
    destination: bytes,
    *,
    remote: bytes | None = None,
    sixrd: SixRd = SIX_TO_FOUR,
    next_hop: bytes | None = None,
    isatap: bool = False,
) -> bytes | None:
    """The outer IPv4 destination for an IPv6 packet to `destination`, or None to drop it (ipip6_tunnel_xmit).

    `remote` is the tunnel's configured remote (None: any). `next_hop` is the IPv6
    next hop the route to `destination` gives (its gateway, or `destination`
    itself for an on-link route such as `::/96 dev sit0`); None when there is no
    route. `isatap` is `mode isatap`. The rules are in this module's docstring.
    """
    dst = remote if remote is not None else ZERO4
    if isatap:
        if next_hop is None or not (is_unicast(next_hop) and is_isatap(next_hop)):
            return None
        dst = bytes(next_hop[12:])
    if dst == ZERO4:
        dst = sixrd.embedded_ipv4(destination) or ZERO4
    if dst == ZERO4:
        if next_hop is None:
            return None
        hop = destination if next_hop == ZERO6 else next_hop
        if not is_ipv4_compatible(hop):
            return None
        dst = bytes(hop[12:])
    return dst


# --- ISATAP potential router list (RFC 5214 section 8.3.2) ---------------------------------


@dataclass(frozen=True, slots=True)
class PrlEntry:
    """A potential router: its IPv4 address and whether it may be a default router (PRL_DEFAULT)."""

    address: bytes
    default: bool

    @property
    def flags(self) -> int:
        return PRL_DEFAULT if self.default else 0

    @classmethod
    def from_text(cls, text: str) -> PrlEntry:
        """`ADDR`, `ADDR=default` or `ADDR=nodefault` (--prl, the config's prl list)."""
        address, _, flag = text.partition("=")
        if flag not in ("", "default", "nodefault"):
            raise ConfigError(f"invalid prl {text!r}: ADDR, ADDR=default or ADDR=nodefault")
        packed = parse_address(address, "prl")
        if len(packed) != 4:
            raise ConfigError(f"invalid prl {text!r}: a potential router is an IPv4 address")
        return cls(packed, flag != "nodefault")


@dataclass(frozen=True, slots=True)
class PotentialRouterList:
    """An ISATAP tunnel's PRL, changed the way `ip tunnel prl` and the kernel change it.

    `prl-default ADDR` / `prl-nodefault ADDR` add an entry (SIOCADDPRL: an address
    already listed is refused, EEXIST; 0.0.0.0 is refused, EINVAL); `change`
    is SIOCCHGPRL (ENXIO for an address not listed); `prl-delete ADDR` removes
    one (ENXIO if absent), `prl-delete any` (0.0.0.0) empties the list. New
    entries go first, as the kernel links them.
    """

    entries: tuple[PrlEntry, ...] = ()

    def lookup(self, address: bytes) -> PrlEntry | None:
        """The kernel's __ipip6_tunnel_locate_prl."""
        for entry in self.entries:
            if entry.address == address:
                return entry
        return None

    def add(self, address: bytes, default: bool) -> PotentialRouterList:
        if address == ZERO4:
            raise ConfigError("a potential router cannot be 0.0.0.0 (the kernel says EINVAL)")
        if self.lookup(address) is not None:
            raise ConfigError(f"potential router {_v4(address)} is already listed (the kernel says EEXIST)")
        return PotentialRouterList((PrlEntry(address, default), *self.entries))

    def change(self, address: bytes, default: bool) -> PotentialRouterList:
        if address == ZERO4:
            raise ConfigError("a potential router cannot be 0.0.0.0 (the kernel says EINVAL)")
        if self.lookup(address) is None:
            raise ConfigError(f"potential router {_v4(address)} is not listed (the kernel says ENXIO)")
        return PotentialRouterList(
            tuple(PrlEntry(address, default) if e.address == address else e for e in self.entries)
        )

    def delete(self, address: bytes | None) -> PotentialRouterList:
        if address is None or address == ZERO4:
            return PotentialRouterList()
        if self.lookup(address) is None:
            raise ConfigError(f"potential router {_v4(address)} is not listed (the kernel says ENXIO)")
        return PotentialRouterList(tuple(e for e in self.entries if e.address != address))

    def apply(self, command: str, address: str) -> PotentialRouterList:
        """One `ip tunnel prl` argument pair: prl-default ADDR, prl-nodefault ADDR or prl-delete ADDR."""
        try:
            packed = ZERO4 if address == "any" else ipaddress.IPv4Address(address).packed
        except ValueError:
            raise ConfigError(f"{command} {address!r}: not an IPv4 address") from None
        if command == "prl-default":
            return self.add(packed, True)
        if command == "prl-nodefault":
            return self.add(packed, False)
        if command == "prl-delete":
            return self.delete(packed)
        raise ConfigError(f"unknown PRL command {command!r}; accepted: prl-default, prl-nodefault, prl-delete")


# --- receive: is the inner packet's address consistent with the outer one? ----------------


class DeviceAddress(NamedTuple):
    """An IPv6 address configured on the tunnel device, with its prefix length (`ip -6 addr add A/len dev D`)."""

    address: bytes
    prefixlen: int


class Verdict(enum.Enum):
    """The outcome of sit's receive-side source check (packet_is_spoofed). `accepted` says which way it went."""

    ROUTER_DEFAULT = "router_default"  # ISATAP: outer source in the PRL, as a default router
    ROUTER_NODEFAULT = "router_nodefault"  # ISATAP: outer source in the PRL, not a default router
    HOST = "host"  # ISATAP: inner source is an on-link ISATAP address embedding the outer source
    POINT_TO_POINT = "point_to_point"  # a configured remote: sit does not check
    NOT_SPOOFED = "not_spoofed"  # 6to4/6rd addresses (if any) embed the outer addresses
    DNATTED = "dnatted"  # inner destination in a prefix of the device: a NAT rewrote the outer one
    ISATAP_REFUSED = "isatap_refused"
    SPOOFED_SOURCE = "spoofed_source"  # inner 6to4/6rd source does not embed the outer source
    SPOOFED_DESTINATION = "spoofed_destination"

    @property
    def accepted(self) -> bool:
        return self not in _REFUSED


_REFUSED = frozenset({Verdict.ISATAP_REFUSED, Verdict.SPOOFED_SOURCE, Verdict.SPOOFED_DESTINATION})


def isatap_check_source(
    outer_src: bytes, inner_src: bytes, prl: PotentialRouterList, device: tuple[DeviceAddress, ...]
) -> Verdict:
    """The kernel's isatap_chksrc (RFC 5214 section 7.3): a listed router, or an on-link ISATAP host."""
    entry = prl.lookup(outer_src)
    if entry is not None:
        return Verdict.ROUTER_DEFAULT if entry.default else Verdict.ROUTER_NODEFAULT
    if (
        is_isatap(inner_src)
        and inner_src[12:] == outer_src
        and any(_prefix_equal(inner_src, a.address, a.prefixlen) for a in device)  # ipv6_chk_prefix
    ):
        return Verdict.HOST
    return Verdict.ISATAP_REFUSED


def is_spoofed_6rd(sixrd: SixRd, ipv4: bytes, ipv6: bytes) -> bool:
    """The kernel's is_spoofed_6rd: `ipv6` is in the 6rd/6to4 prefix but does not embed `ipv4`."""
    embedded = sixrd.embedded_ipv4(ipv6)
    return embedded is not None and embedded != ipv4


def only_dnatted(sixrd: SixRd, inner_dst: bytes, device: tuple[DeviceAddress, ...]) -> bool:
    """The kernel's only_dnatted: an address of the device shares `inner_dst`'s delegated prefix.

    ipv6_chk_custom_prefix with the delegated prefix length (48 for 6to4): the
    packet was for one of our own 6rd prefixes, and a NAT in front of us
    rewrote the outer IPv4 destination it embeds.
    """
    return any(_prefix_equal(inner_dst, a.address, sixrd.delegated_prefixlen) for a in device)


def check_source(
    outer_src: bytes,
    outer_dst: bytes,
    inner_src: bytes,
    inner_dst: bytes,
    *,
    point_to_point: bool = False,
    isatap: bool = False,
    sixrd: SixRd = SIX_TO_FOUR,
    prl: PotentialRouterList | None = None,
    device: tuple[DeviceAddress, ...] = (),
) -> Verdict:
    """The kernel's packet_is_spoofed, as a verdict. Refused packets are dropped (rx_errors in Linux).

    `point_to_point` is a tunnel with a configured remote (IFF_POINTOPOINT);
    `device` lists the IPv6 addresses on the tunnel device.
    """
    if isatap:
        return isatap_check_source(outer_src, inner_src, prl or PotentialRouterList(), device)
    if point_to_point:
        return Verdict.POINT_TO_POINT
    if is_spoofed_6rd(sixrd, outer_src, inner_src):
        return Verdict.SPOOFED_SOURCE
    if not is_spoofed_6rd(sixrd, outer_dst, inner_dst):
        return Verdict.NOT_SPOOFED
    if only_dnatted(sixrd, inner_dst, device):
        return Verdict.DNATTED
    return Verdict.SPOOFED_DESTINATION
