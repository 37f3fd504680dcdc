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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import gre, ipv4, ipv6
from .errors import ConfigError
from .fou import Encap
from .options import CSUM_VERIFY, takes
from .sequence import SeqPolicy
from .tables import table_of

if TYPE_CHECKING:
    from .esp import EspKeys
    from .keepalive import KeepaliveParams
    from .neighbors import HubParams
    from .sit import PrlEntry, SixRd


@dataclass(frozen=True, slots=True)
class ModeSpec:
    name: str
    ip_protocol: int  # outer IP protocol number (IPv6: the next header)
    families: frozenset[int]  # inner IP versions this mode carries
    is_gre: bool
    outer: int = 4  # the outer header's IP version
    isatap: bool = False  # sit with RFC 5214's ISATAP rules
    ethernet: bool = False  # Ethernet frames through a TAP device (GRE protocol type 0x6558)
    # Always inside ESP (vti): `ip_protocol` is then ESP's next header, what the ESP payload carries.
    esp: bool = False

    @property
    def table(self) -> int:
        """The demultiplexing table this mode's packets arrive on (core.tables: Linux keeps gretap tunnels
        apart from gre ones, gre_tap_net vs ipgre_net, and IPv6 outer ones apart from IPv4 ones)."""
        return table_of(self.ip_protocol, self.outer, self.ethernet)


class Mode(enum.Enum):
    """Tunnel modes, named as iproute2 names them. Modes differ by data (protocol numbers, families), not by code."""

    GRE = ModeSpec("gre", 47, frozenset({4, 6}), True)  # RFC 2784 over IPv4
    IPIP = ModeSpec("ipip", 4, frozenset({4}), False)  # RFC 2003: IPv4 in IPv4
    SIT = ModeSpec("sit", 41, frozenset({6}), False)  # RFC 4213: IPv6 in IPv4 (6to4, 6rd with --remote any)
    ISATAP = ModeSpec("isatap", 41, frozenset({6}), False, isatap=True)  # RFC 5214
    IPIP6 = ModeSpec("ipip6", 4, frozenset({4}), False, outer=6)  # RFC 2473: IPv4 in IPv6
    IP6IP6 = ModeSpec("ip6ip6", 41, frozenset({6}), False, outer=6)  # RFC 2473: IPv6 in IPv6
    IP6GRE = ModeSpec("ip6gre", 47, frozenset({4, 6}), True, outer=6)  # GRE over IPv6 (RFC 7676)
    GRETAP = ModeSpec("gretap", 47, frozenset({4, 6}), True, ethernet=True)  # Ethernet over GRE (RFC 1701 0x6558)
    IP6GRETAP = ModeSpec("ip6gretap", 47, frozenset({4, 6}), True, outer=6, ethernet=True)  # the same over IPv6
    # Linux's ip_vti: IPv4 in ESP tunnel mode (RFC 4303), which on the wire is an ipip packet whose protocol
    # moved into ESP's next header (4). The keys select the security associations, as the kernel's marks do.
    VTI = ModeSpec("vti", 4, frozenset({4}), False, esp=True)
    # Linux's ip6_vti: IPv6 in ESP tunnel mode over IPv6 (next header 50, ESP's next header 41).
    VTI6 = ModeSpec("vti6", 41, frozenset({6}), False, outer=6, esp=True)

    @classmethod
    def from_name(cls, name: str) -> Mode:
        for mode in cls:
            if mode.value.name == name:
                return mode
        accepted = ", ".join(m.value.name for m in cls)
        raise ConfigError(f"unknown mode {name!r}; accepted: {accepted}")


IFNAMSIZ = 16
# vti's outer TTL, TOS and pmtudisc as TunnelParams spells them: Linux's xfrm tunnel mode writes TTL 64 (the
# route's hop limit), the inner TOS (ECN as RFC 6040) and the inner packet's DF (xfrm4_tunnel_encap_add).
VTI_OUTER: tuple[int | None, int | None, bool] = (64, None, False)
ETHERNET_HEADER = 14
IP_MAX_MTU = 65535  # the largest outer packet an IPv4 total length can describe (the kernel's IP_MAX_MTU)
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
    # IPv6 outer header (ipip6, ip6ip6, ip6gre), as ip6_tunnel / ip6_gre: `ttl` is the hop limit and
    # `tos` the traffic class; the flow label is fixed or None (inherit, automatic where it is 0);
    # the RFC 2473 tunnel encapsulation limit is sent in a destination option, None: `encaplimit none`.
    flowlabel: int | None = 0
    encaplimit: int | None = ipv6.DEFAULT_ENCAP_LIMIT
    # sit --remote any: 6to4 (the default) or 6rd (`ip tunnel 6rd`); isatap: the potential router list.
    sixrd: SixRd | None = None
    prl: tuple[PrlEntry, ...] = ()
    # How a received GRE checksum is verified (`--csum-verify`, core.checksum.csum_derived_is_valid):
    # "full" sums every byte, as Linux; "derived" sums the headers only and leaves the TCP/UDP payload
    # to the receiving host's transport checksum. Linux has no such choice.
    csum_verify: str = "full"
    # FOU or GUE (`--encap`, core.fou): the packet is carried in UDP; None: straight over IP, as usual.
    encap: Encap | None = None
    # IPsec (`--esp-keys FILE`, core.esp): every outer packet is carried in ESP with these manual security
    # associations (vti: tunnel mode; any other mode: transport mode around its GRE/IPIP/SIT packet).
    esp: EspKeys | None = None

    def __post_init__(self) -> None:
        if not _IFNAME.match(self.name):
            raise ConfigError(
                f"invalid interface name {self.name!r}: 1 to {IFNAMSIZ - 1} characters, no spaces, '/' or ':'"
            )
        if self.mode.value.esp and (self.iseq or self.oseq or self.icsum or self.ocsum):
            raise ConfigError(
                f"mode {self.mode.value.name} has keys (they select its security associations) but no GRE sequence "
                "numbers or checksums: ESP has its own (anti-replay window, integrity check)"
            )
        if not takes("key", self.mode.value) and (
            self.ikey is not None or self.okey is not None or self.iseq or self.oseq or self.icsum or self.ocsum
        ):
            raise ConfigError(
                f"keys, sequence numbers and checksums are GRE options; mode {self.mode.value.name} has none"
            )
        for label, key in (("ikey", self.ikey), ("okey", self.okey)):
            if key is not None and not 0 <= key <= 0xFFFFFFFF:
                raise ConfigError(f"{label} {key} out of range: 0..4294967295 or a dotted quad")
        if self.local is not None and self.local == self.remote:
            shown = ipaddress.ip_address(self.local)
            raise ConfigError(
                f"local and remote are the same address ({shown}): a tunnel joins this host to another one; "
                "give --remote the peer's address"
            )
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
        if self.mode.value.ethernet and (
            self.hub is not None or self.keepalive is not None or self.seq_policy is SeqPolicy.RFC2890
        ):
            raise ConfigError(
                "mode gretap carries Ethernet frames: no hub (--remote any), keepalives or rfc2890 reordering yet"
            )
        if self.hub is not None:
            if self.remote is not None:
                raise ConfigError("neighbors and spokes belong to a hub: use them with --remote any")
            if self.hub.spokes and not takes("spokes", self.mode.value):
                raise ConfigError(f"spoke keys are GRE keys; mode {self.mode.value.name} has none")
            if self.hub.spokes and self.okey is not None and self.okey != self.ikey:
                raise ConfigError("a hub with --spoke keys answers each spoke with its own key: --okey cannot differ")
        if self.csum_verify not in CSUM_VERIFY:
            raise ConfigError(f"invalid csum-verify {self.csum_verify!r}: {' or '.join(CSUM_VERIFY)}")
        if self.csum_verify != "full" and not self.icsum:
            raise ConfigError(
                "--csum-verify says how received GRE checksums are verified: use it with --csum or --icsum"
            )
        if self.ttl is not None and not self.pmtudisc and not self.mode.value.esp:
            # iproute2 refuses this combination with the same words (vti's come from xfrm: see VTI_OUTER).
            raise ConfigError("ttl != 0 and nopmtudisc are incompatible")
        self._check_families()
        if self.encap is not None:
            self._check_encap()
        if self.mode.value.esp or self.esp is not None:
            self._check_esp()

    def _check_esp(self) -> None:
        """IPsec as this version carries it: manual keys, IPv4 outer, one peer."""
        mode = self.mode.value
        if self.esp is None:
            raise ConfigError(
                f"mode {mode.name} carries packets in ESP: give --esp-keys FILE (TOML, [out] and [in] with spi, "
                'aead, key, icv; see README, IPsec), or esp_keys = "FILE" in a configuration file'
            )
        if not takes("esp_keys", mode):
            raise ConfigError(
                f"mode {mode.name}: --esp-keys runs over IPv4 outer headers in this version (over IPv6: mode vti6)"
            )
        if self.encap is not None:
            raise ConfigError("--esp-keys and --encap: ESP inside FOU/GUE (UDP encapsulation) is not in this version")
        if self.local is None or self.remote is None or self.hub is not None:
            raise ConfigError(
                "--esp-keys protects a tunnel between two fixed addresses: give --local and --remote (no hub: one "
                "security association pair belongs to one peer)"
            )
        if self.keepalive is not None:
            raise ConfigError("--esp-keys and --keepalive: keepalives over ESP are not in this version")
        if mode.esp and mode.outer == 6 and (self.flowlabel, self.encaplimit) != (None, None):
            raise ConfigError(
                f"mode {mode.name}: the outer IPv6 header is xfrm's (hop limit 64, the inner traffic class and flow "
                "label, no encapsulation limit option), as on Linux: no --flowlabel or --encaplimit"
            )
        if mode.esp and (self.ttl, self.tos, self.pmtudisc) != VTI_OUTER:
            raise ConfigError(
                f"mode {mode.name}: the outer TTL, TOS and DF are xfrm's (TTL 64, TOS inherited, DF copied from the "
                "inner packet), as on Linux: no --ttl, --tos or --nopmtudisc"
            )

    def _check_encap(self) -> None:
        """FOU and GUE as this version carries them: gre, ipip, sit (to a fixed remote or as a hub), ip6gre,
        ipip6 and ip6ip6 (to a fixed remote: hubs run over IPv4)."""
        mode = self.mode.value
        if not takes("encap", mode):
            raise ConfigError(
                f"mode {mode.name}: FOU and GUE (--encap) carry gre, ipip, sit, ip6gre, ipip6 and ip6ip6 in this "
                "version"
            )
        if self.remote is None and self.hub is None:
            raise ConfigError("FOU and GUE (--encap) need a fixed --remote, or a hub (gre, ipip): no 6to4 or 6rd")

    def _check_families(self) -> None:
        """Addresses of the outer family; IPv6-only and sit-only options only where they mean something."""
        mode = self.mode.value
        size = 4 if mode.outer == 4 else 16
        for label, address in (("local", self.local), ("remote", self.remote)):
            if address is not None and len(address) != size:
                want = "an IPv4" if size == 4 else "an IPv6"
                raise ConfigError(f"mode {mode.name} runs over IPv{mode.outer}: {label} must be {want} address")
        if mode.outer == 6:
            if self.hub is not None or self.keepalive is not None:
                raise ConfigError(f"mode {mode.name}: hubs and keepalives run over IPv4 (gre, ipip) for now")
            if self.encaplimit is not None and not 0 <= self.encaplimit <= 255:
                raise ConfigError(f"encaplimit {self.encaplimit} out of range: 0..255 or 'none'")
            if self.flowlabel is not None and not 0 <= self.flowlabel <= ipv6.FLOW_LABEL_MASK:
                raise ConfigError(f"flowlabel {self.flowlabel:#x} out of range: 0..0xfffff or 'inherit'")
        elif self.flowlabel != 0 or self.encaplimit != ipv6.DEFAULT_ENCAP_LIMIT:
            raise ConfigError(f"flowlabel and encaplimit belong to IPv6 outer headers; mode {mode.name} runs over IPv4")
        if self.sixrd is not None and not takes("6rd_prefix", mode):
            raise ConfigError("6rd prefixes belong to mode sit")
        if self.prl and not takes("prl", mode):
            raise ConfigError("a potential router list (--prl) belongs to mode isatap")
        if mode.isatap and self.remote is not None:
            raise ConfigError("mode isatap has no fixed remote: give --remote any")
        if mode.ip_protocol == 41 and mode.outer == 4 and self.hub is not None:
            raise ConfigError(f"mode {mode.name} --remote any derives each destination from the IPv6 address; no hub")

    @property
    def ikeys(self) -> tuple[int | None, ...]:
        """Every key this tunnel accepts (None: no key): its ikey, and a hub's spoke keys.

        A hub given only --spoke keys accepts those keys and nothing else (no keyless packets). vti's keys
        are not on the wire (they select security associations): its packets carry none.
        """
        if not self.mode.value.is_gre:
            return (None,)
        if self.hub is None or not self.hub.spokes:
            return (self.ikey,)
        extra = (self.ikey,) if self.ikey is not None else ()
        return extra + self.hub.spoke_keys

    @property
    def outer_protocol(self) -> int:
        """The outer IP header's protocol: UDP (17) with FOU or GUE, else the mode's own (47, 4, 41)."""
        return 17 if self.encap is not None else self.mode.value.ip_protocol

    @property
    def header_length(self) -> int:
        """Bytes added in front of each inner packet: the outer IP header (IPv6: with the encapsulation
        limit option, 8 bytes, unless `encaplimit none`), UDP (and GUE) with --encap, plus GRE with its options."""
        if self.mode.value.outer == 6:
            n = ipv6.HEADER_LEN + (ipv6.ENCAP_LIMIT_OPTION_LEN if self.encaplimit is not None else 0)
        else:
            n = ipv4.MIN_HEADER_LEN
        if self.encap is not None:
            n += self.encap.header_length
        if self.mode.value.is_gre:
            n += gre.header_length(gre.flags_for(self.ocsum, self.okey is not None, self.oseq))
        if self.esp is not None:
            # ESP header (SPI, sequence number), IV, at most 3 bytes of padding, pad length, next header, ICV.
            n += 8 + 8 + 3 + 2 + self.esp.outbound.icv_bits // 8
        return n

    def default_mtu(self, underlay_mtu: int) -> int:
        """The tunnel MTU Linux picks: the underlay MTU minus the exact overhead (and, for gretap, the
        14-byte Ethernet header the frame carries: 1462 on a 1500-byte underlay)."""
        ethernet = ETHERNET_HEADER if self.mode.value.ethernet else 0
        # Linux caps it at IP_MAX_MTU (65535) less the overhead: loopback's 65536 would overflow the outer length.
        return min(underlay_mtu, IP_MAX_MTU) - self.header_length - ethernet


def check_address_families(
    params: TunnelParams, addresses: Sequence[ipaddress.IPv4Interface | ipaddress.IPv6Interface]
) -> None:
    """Refuse a device address of a family the tunnel's mode cannot carry."""
    for iface in addresses:
        if iface.version not in params.mode.value.families:
            raise ConfigError(
                f"address {iface} is IPv{iface.version}, which mode {params.mode.value.name} cannot carry"
            )
