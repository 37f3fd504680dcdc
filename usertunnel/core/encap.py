"""Encapsulate and decapsulate: the packet's journey through a tunnel, without I/O.

Transmit (the kernel's ipgre_xmit / ipip_tunnel_xmit + ip_tunnel_xmit):
  read the inner header's version, TOS, TTL and DF; pick the outer TTL
  (fixed, or inherited), TOS (fixed, or inherited, ECN per RFC 6040) and DF
  (always with pmtudisc, otherwise copied); build the GRE header with the
  output key, the next output sequence number and the checksum; build the
  outer IPv4 header.

Receive (the kernel's gre_rcv -> ipgre_rcv -> ip_tunnel_rcv, ipip_rcv):
  check the outer IPv4 header; parse GRE (version 0, no routing); find the
  tunnel (`lookup`); verify any checksum present, and require the C bit to
  agree with `icsum` (Linux drops a checksummed packet on a tunnel without it);
  require an in-order sequence number if `iseq`; check the inner header;
  apply the RFC 6040 decapsulation table; hand back the inner packet.

Rules for this file: one code path for every mode, the modes differing by the
data in `params.Mode`. Per-packet work is kept to slicing and a few integer
operations: per-tunnel constants are computed once, in `Tunnel.__init__`.
Every drop is counted here, on the tunnel it belongs to when one was found,
otherwise on the `Demux`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from . import ecn, esp, fou, gre, icmp, ipv4, ipv6, plan, sit
from .checksum import checksum_is_valid, csum_derived_is_valid, fold, inner_sum, ones_complement_sum
from .drops import Drop
from .errors import ConfigError
from .gre import parse_fields
from .keepalive import LineProtocol, inner_request, is_request_to_reflect
from .lookup import Rule, TunnelTable
from .neighbors import NeighborTable, Peer
from .params import TunnelParams
from .sequence import SeqPolicy, SequenceState, Verdict, new_sequence_state
from .tables import ETHERNET, OVER_IPV6, PROTOCOL

_OUTER = struct.Struct("!BBHHHBBH4s4s")
_OUTER6 = struct.Struct("!IHBB16s16s")
_NOT_IP = bytes(40)  # what ip6gretap reads for the outer header's sake from a frame carrying no IP packet
_U16 = struct.Struct("!H")
_UDP = struct.Struct("!HHHH")  # source port, destination port, length, checksum (RFC 768)
_U32 = struct.Struct("!I")
_FRAGMENT_BITS = ipv4.FLAG_MF | ipv4.OFFSET_MASK


class Counters:
    """Per-tunnel (or per-daemon, for packets no tunnel owns) packet and drop counters."""

    __slots__ = ("tx_packets", "tx_bytes", "rx_packets", "rx_bytes", "drops")

    def __init__(self) -> None:
        self.tx_packets = 0
        self.tx_bytes = 0
        self.rx_packets = 0
        self.rx_bytes = 0
        self.drops: dict[Drop, int] = {}

    def drop(self, reason: Drop) -> Drop:
        self.drops[reason] = self.drops.get(reason, 0) + 1
        return reason

    # The core counts a packet as sent (received) when it hands it out; the I/O
    # shell moves it to a drop column when the kernel then refuses it.
    def tx_failed(self, nbytes: int, reason: Drop) -> None:
        self.tx_packets -= 1
        self.tx_bytes -= nbytes
        self.drop(reason)

    def rx_failed(self, nbytes: int, reason: Drop, packets: int = 1) -> None:
        self.rx_packets -= packets
        self.rx_bytes -= nbytes
        self.drops[reason] = self.drops.get(reason, 0) + packets

    def as_dict(self) -> dict[str, object]:
        return {
            "tx_packets": self.tx_packets,
            "tx_bytes": self.tx_bytes,
            "rx_packets": self.rx_packets,
            "rx_bytes": self.rx_bytes,
            "drops": {reason.value: n for reason, n in sorted(self.drops.items(), key=lambda kv: kv[0].value)},
        }


class Tunnel:
    """One tunnel's moving parts: parameters, output sequence, input window, counters."""

    __slots__ = (
        "params",
        "counters",
        "iseq_window",
        "oseq_next",
        "_gre_fixed",
        "_outer_sum",
        "_src",
        "_dst",
        "_max_inner",
        "ident",
        "line",
        "reflected",
        "hub",
        "_outer_sum_base",
        "_gre_by_key",
        "dynamic_destination",
        "_sixrd",
        "_isatap_router",
        "device_addresses",
        "sit_rules",
        "prl",
        "_path_mtu",
        "path_mtu_expires",
        "_link_mtu",
        "full_csum",
        "plan_fit",
        "tx_plan",
        "rx_plan",
        "source_ports",
        "sealer",
        "opener",
    )

    def __init__(self, params: TunnelParams, ident: int = 0) -> None:
        self.params = params
        # Outer IPv4 identification: Linux's iptunnel_xmit gives every tunnel packet, DF or not, the
        # next value of a per-destination counter (ip_select_ident). The I/O shell starts ours at a
        # random value, as the kernel's counters start; the core takes it as given.
        self.ident = ident & 0xFFFF
        self.line = LineProtocol(params.keepalive) if params.keepalive is not None else None
        self.reflected = 0  # peers' keepalives sent back (with or without keepalives of our own)
        self.counters = Counters()
        self.iseq_window: SequenceState = self.new_window()
        self.oseq_next = 0  # Linux sends the first packet with sequence number 0
        self.full_csum = params.csum_verify == "full"  # else csum_derived_is_valid
        mode = params.mode.value
        size = 4 if mode.outer == 4 else 16
        self._src = params.local or bytes(size)
        self._dst = params.remote or bytes(size)
        # The outer total length (IPv4) or payload length (IPv6) is 16 bits.
        self._max_inner = 0xFFFF - params.header_length + (ipv6.HEADER_LEN if mode.outer == 6 else 0)
        # GRE header without checksum and sequence values, per inner protocol.
        self._gre_fixed: dict[int, bytes] = {}
        if params.mode.value.is_gre:
            for proto in (gre.PROTO_IPV4, gre.PROTO_IPV6, gre.PROTO_TEB):
                hdr = gre.GREHeader(
                    proto,
                    checksum=0 if params.ocsum else None,
                    key=params.okey,
                    sequence=0 if params.oseq else None,
                )
                self._gre_fixed[proto] = hdr.pack()
        # Sum of the outer IPv4 header words that never change for this tunnel
        # (version/IHL, protocol, addresses); TOS, length, flags and TTL are added per packet.
        self._outer_sum_base = 0x4500 + params.outer_protocol + ones_complement_sum(self._src)
        self._outer_sum = self._outer_sum_base + ones_complement_sum(self._dst)
        # Point-to-multipoint (`--remote any`): the outer destination, key and sequence number
        # come from the neighbor table, per packet (core.neighbors).
        # FOU / GUE: a hub tells spokes behind one NAT apart by their UDP port, and answers each at it.
        port = params.encap.dport if params.encap is not None else 0
        self.hub = NeighborTable(params.hub, params.okey, new_window=self.new_window, port=port) if params.hub else None
        self._gre_by_key: dict[int | None, dict[int, bytes]] = {params.okey: self._gre_fixed}
        # sit --remote any: the IPv4 destination comes from each packet's IPv6 destination
        # (6to4, 6rd; ISATAP: the address itself, or the default router of the PRL).
        sit_any = mode.ip_protocol == 41 and mode.outer == 4 and params.remote is None
        self._sixrd = (params.sixrd or sit.SIX_TO_FOUR) if sit_any else None
        self._isatap_router = next((e.address for e in params.prl if e.default), None)
        # The outer destination changes per packet (hub, sit any): the shell reads it from the header.
        self.dynamic_destination = self.hub is not None or sit_any
        # The IPv6 addresses on the tunnel device (sit's only_dnatted check); set by the shell.
        self.device_addresses: tuple[sit.DeviceAddress, ...] = ()
        self.sit_rules = mode.ip_protocol == 41 and mode.outer == 4  # sit and isatap check sources
        # The path MTU to the remote, learned from an ICMP "fragmentation needed" about our outer
        # packets (ipgre_err -> ipv4_update_pmtu); forgotten after PMTU_EXPIRES, as the kernel's.
        self._path_mtu: int | None = None
        self.path_mtu_expires = 0.0
        # The MTU of the underlay device the outer packets leave by (set by the I/O shell): a raw socket
        # does not fragment, so larger outer packets are refused with ICMP (DF) or cut by the shell.
        self._link_mtu = 0xFFFF
        self.prl = sit.PotentialRouterList(params.prl) if mode.isatap else None
        # FOU/GUE with `encap-sport auto`: the UDP ports the I/O shell sends from (one socket each); each
        # inner flow keeps one of them. Empty: the port a flow hashes to (tests, explain).
        self.source_ports: tuple[int, ...] = ()
        # The largest inner packet a plan sends by itself (no fragmentation, no ICMP, no expiry to check).
        self.plan_fit = 0
        self._refit()
        # IPsec (--esp-keys): the outbound security association's sequence and cipher, the inbound one's
        # replay window. Sealing happens after the outer header is built (`encapsulate`), opening before
        # the lookup (`Demux.decapsulate_esp`).
        keys = params.esp
        self.sealer = esp.Sealer(keys.outbound) if keys is not None else None
        self.opener = esp.Opener(keys.inbound) if keys is not None else None
        # This tunnel's compiled transmit and receive code (core.plan); None: the specification serves it.
        tx = plan.compile_tx(self)
        rx = plan.compile_rx(self)
        self.tx_plan: plan.TxFunction | None = tx.function if tx is not None else None  # type: ignore[assignment]
        self.rx_plan: plan.RxFunction | None = rx.function if rx is not None else None  # type: ignore[assignment]

    @property
    def outer_sum(self) -> int:
        """The one's-complement sum of the outer IPv4 header words that never change (plans fold it in)."""
        return self._outer_sum

    @property
    def link_mtu(self) -> int:
        """The MTU of the underlay device the outer packets leave by (set by the I/O shell)."""
        return self._link_mtu

    @link_mtu.setter
    def link_mtu(self, mtu: int) -> None:
        self._link_mtu = mtu
        self._refit()

    @property
    def path_mtu(self) -> int | None:
        """The path MTU to the remote learned from ICMP (None: none known, or expired)."""
        return self._path_mtu

    @path_mtu.setter
    def path_mtu(self, mtu: int | None) -> None:
        self._path_mtu = mtu
        self._refit()

    def _refit(self) -> None:
        hlen = self.params.header_length
        fit = min(self._max_inner, self._link_mtu - hlen)
        if self._path_mtu is not None:
            fit = min(fit, self._path_mtu - hlen)
        self.plan_fit = fit

    @property
    def name(self) -> str:
        return self.params.name

    def new_window(self) -> SequenceState:
        """A fresh receive sequence state under this tunnel's --seq-policy."""
        return new_sequence_state(self.params.seq_policy)

    def _gre_headers(self, okey: int | None) -> dict[int, bytes]:
        """The GRE headers (checksum and sequence fields zero) this tunnel sends with `okey`, per protocol."""
        headers = self._gre_by_key.get(okey)
        if headers is None:
            p = self.params
            headers = self._gre_by_key[okey] = {
                proto: gre.GREHeader(
                    proto, checksum=0 if p.ocsum else None, key=okey, sequence=0 if p.oseq else None
                ).pack()
                for proto in (gre.PROTO_IPV4, gre.PROTO_IPV6, gre.PROTO_TEB)
            }
        return headers

    def encapsulate_header(self, inner: bytes | bytearray | memoryview, now: float = 0.0) -> bytes | Drop:
        """The outer IPv4 header and GRE header to send in front of `inner`, or why not.

        The outer identification is the tunnel's next `ident`, as Linux gives
        one to every tunnel packet (RFC 6864 allows any value with DF). A hub
        (`params.hub`) picks the outer destination from its neighbor table at
        time `now`; the outer destination is then the header's bytes 16..20.
        """
        p = self.params
        n = len(inner)
        if n == 0:
            return self.counters.drop(Drop.INNER_MALFORMED)
        if p.mode.value.ethernet:
            # gretap: an Ethernet frame. TOS, TTL and DF come from the IP packet inside, if any (ipgre_tap_xmit
            # -> ip_tunnel_xmit); for anything else the outer TTL is the default 64 and the TOS 0.
            if n < 14:
                return self.counters.drop(Drop.INNER_MALFORMED)
            ethertype = (inner[12] << 8) | inner[13]
            inner_tos, inner_ttl, inner_df = 0, 64, 0
            if ethertype == 0x0800 and n >= 34 and inner[14] >> 4 == 4:
                inner_tos, inner_ttl, inner_df = inner[15], inner[22], (inner[20] << 8) & ipv4.FLAG_DF
            elif ethertype == 0x86DD and n >= 54 and inner[14] >> 4 == 6:
                inner_tos, inner_ttl = ((inner[14] & 0x0F) << 4) | (inner[15] >> 4), inner[21]
            version = 0  # no ICMP about a frame: path MTU answers are for IP packets
            proto = gre.PROTO_TEB
        elif (version := inner[0] >> 4) == 4:
            if n < ipv4.MIN_HEADER_LEN:
                return self.counters.drop(Drop.INNER_MALFORMED)
            inner_tos = inner[1]
            inner_ttl = inner[8]
            inner_df = (inner[6] << 8) & ipv4.FLAG_DF
            proto = gre.PROTO_IPV4
        elif version == 6:
            if n < ipv6.HEADER_LEN:
                return self.counters.drop(Drop.INNER_MALFORMED)
            inner_tos = ipv6.traffic_class(inner)
            inner_ttl = inner[7]
            inner_df = 0
            proto = gre.PROTO_IPV6
        else:
            return self.counters.drop(Drop.INNER_MALFORMED)
        if version and version not in p.mode.value.families:
            return self.counters.drop(Drop.FAMILY)
        if n > self._max_inner:
            return self.counters.drop(Drop.OVERSIZE)
        if n + p.header_length > self.link_mtu and (version == 6 or inner_df or p.pmtudisc or p.mode.value.outer == 6):
            return self.counters.drop(Drop.FRAG_NEEDED)
        if self.path_mtu is not None and n + p.header_length > self.path_mtu and (version == 6 or inner_df):
            if now < self.path_mtu_expires:
                return self.counters.drop(Drop.FRAG_NEEDED)
            self.path_mtu = None

        hub = self.hub
        sender: Tunnel | Peer = self  # who owns the output sequence number
        dst = self._dst
        outer_sum = self._outer_sum
        gre_fixed = self._gre_fixed
        if self._sixrd is not None:
            found = self._sit_destination(bytes(inner[24:40]))
            if found is None:
                return self.counters.drop(Drop.NO_IPV4_DESTINATION)
            dst = found
            outer_sum = self._outer_sum_base + ones_complement_sum(dst)
        elif hub is not None:
            peer = hub.route(bytes(inner[16:20]) if version == 4 else bytes(inner[24:40]), now)
            if peer is None:
                return self.counters.drop(Drop.NO_NEIGHBOR)
            if peer.gre_fixed is None:
                peer.gre_fixed = self._gre_headers(peer.okey)
            sender = peer
            dst = peer.outer
            outer_sum = self._outer_sum_base + peer.outer_sum
            gre_fixed = peer.gre_fixed

        if p.mode.value.is_gre:
            fixed = gre_fixed[proto]
            if p.oseq or p.ocsum:
                hdr = bytearray(fixed)
                if p.oseq:
                    _U32.pack_into(hdr, len(hdr) - 4, sender.oseq_next)
                    sender.oseq_next = (sender.oseq_next + 1) & 0xFFFFFFFF
                if p.ocsum:
                    # RFC 2784 section 2.5: over the GRE header and payload, checksum field zero.
                    total = fold(ones_complement_sum(hdr) + inner_sum(inner))
                    _U16.pack_into(hdr, 4, ~total & 0xFFFF)
                tunnel_hdr = bytes(hdr)
            else:
                tunnel_hdr = fixed
        else:
            tunnel_hdr = b""

        if p.encap is not None:
            port = sender.port if isinstance(sender, Peer) else p.encap.dport
            tunnel_hdr = self._udp(p.encap, inner, tunnel_hdr, dst, port)
        tos = ecn.encapsulate(inner_tos if p.tos is None else p.tos, inner_tos)
        ttl = inner_ttl if p.ttl is None else p.ttl
        if p.mode.value.outer == 6:
            return self._outer6(inner, tunnel_hdr, tos, ttl)
        frag = ipv4.FLAG_DF if p.pmtudisc else inner_df
        total_length = ipv4.MIN_HEADER_LEN + len(tunnel_hdr) + n
        ident = self.ident
        self.ident = (ident + 1) & 0xFFFF
        csum = ~fold(outer_sum + tos + total_length + ident + frag + (ttl << 8)) & 0xFFFF
        outer = _OUTER.pack(0x45, tos, total_length, ident, frag, ttl, p.outer_protocol, csum, self._src, dst)
        c = self.counters
        c.tx_packets += 1
        c.tx_bytes += n
        return outer + tunnel_hdr

    def _udp(
        self, encap: fou.Encap, inner: bytes | bytearray | memoryview, tunnel_hdr: bytes, dst: bytes, dport: int
    ) -> bytes:
        """FOU or GUE: the UDP header (and GUE's) in front of what the mode puts after the outer IP header.

        The source port is the fixed one, else one of the ports the I/O shell sends from (`source_ports`),
        picked by the inner flow; with no shell (tests, explain), the port the flow hashes to. A hub sends
        from the port it receives on (what a spoke's NAT expects an answer from), to the port it saw the
        spoke's packets come from (`dport`).
        """
        if encap.kind is fou.EncapKind.GUE:
            tunnel_hdr = fou.gue_header(self.params.mode.value.ip_protocol) + tunnel_hdr
        if encap.sport is not None:
            sport = encap.sport
        elif self.hub is not None:
            sport = encap.dport
        elif self.source_ports:
            sport = self.source_ports[fou.flow_hash(inner) % len(self.source_ports)]
        else:
            sport = fou.flow_source_port(inner)
        length = fou.UDP_HEADER_LEN + len(tunnel_hdr) + len(inner)
        csum = 0
        if encap.csum:
            # RFC 768: over the pseudo-header (addresses, protocol, UDP length), the UDP header and the data.
            total = ones_complement_sum(self._src) + ones_complement_sum(dst) + 17 + length
            total += sport + dport + length + ones_complement_sum(tunnel_hdr) + inner_sum(inner)
            csum = ~fold(total) & 0xFFFF or 0xFFFF  # a computed 0 is sent as all ones (RFC 768)
        return _UDP.pack(sport, dport, length, csum) + tunnel_hdr

    def update_path_mtu(self, mtu: int, now: float) -> bool:
        """An ICMP "fragmentation needed" said the path to the remote carries `mtu` bytes (RFC 1191).

        Kept for PMTU_EXPIRES seconds; values below 552 are raised to 552 and never above the MTU we
        already know, as the kernel's ip_rt_min_pmtu / __ip_rt_update_pmtu. True when it lowered the MTU.
        """
        mtu = max(mtu, MIN_PMTU)
        if self.path_mtu is not None and mtu >= self.path_mtu and now < self.path_mtu_expires:
            return False
        self.path_mtu = mtu
        self.path_mtu_expires = now + PMTU_EXPIRES
        return True

    def too_big(self, inner: bytes | bytearray | memoryview) -> bytes | None:
        """The ICMP error for an inner packet dropped as FRAG_NEEDED, to write back into TUN (None: no MTU known)."""
        if not inner or self.params.mode.value.ethernet:
            return None
        mtu = min(self.path_mtu or 0xFFFF, self.link_mtu) - self.params.header_length
        return icmp.packet_too_big(inner, max(mtu, 1280)) if inner[0] >> 4 == 6 else icmp.frag_needed(inner, mtu)

    def _outer6(
        self, inner: bytes | bytearray | memoryview, tunnel_hdr: bytes, tclass: int, hop_limit: int
    ) -> bytes | Drop:
        """The outer IPv6 header (and encapsulation limit option) as ip6_tnl_xmit builds it, then `tunnel_hdr`."""
        p = self.params
        limit = p.encaplimit
        packet = inner
        if p.mode.value.ethernet:
            # ip6gretap: the IP packet inside the frame, if any, is what ip6gre_xmit_ipv4/ipv6 read.
            ethertype = (inner[12] << 8) | inner[13]
            carried = (ethertype == 0x0800 and len(inner) >= 34) or (ethertype == 0x86DD and len(inner) >= 54)
            packet = inner[14:] if carried else _NOT_IP
        if packet[0] >> 4 == 6 and packet[6] in ipv6.EXTENSION_HEADERS:
            # An inner limit wins over ours, one less; a limit of 0 stops here (RFC 2473 section 4.1.1).
            found = ipv6.next_encap_limit(packet, limit)
            if isinstance(found, ipv6.EncapLimitExhausted):
                return self.counters.drop(Drop.ENCAP_LIMIT)
            limit = found
        label = ipv6.outer_flow_label(p.flowlabel, packet)
        protocol = p.outer_protocol  # UDP with FOU / GUE
        n = len(inner)
        if limit is None:
            first = _OUTER6.pack(0x60000000 | tclass << 20 | label, len(tunnel_hdr) + n, protocol, hop_limit,
                                 self._src, self._dst)  # fmt: skip
            header = first + tunnel_hdr
        else:
            length = ipv6.ENCAP_LIMIT_OPTION_LEN + len(tunnel_hdr) + n
            first = _OUTER6.pack(0x60000000 | tclass << 20 | label, length, ipv6.NEXTHDR_DEST, hop_limit,
                                 self._src, self._dst)  # fmt: skip
            header = first + ipv6.encap_limit_option(limit, protocol) + tunnel_hdr
        c = self.counters
        c.tx_packets += 1
        c.tx_bytes += n
        return header

    def _sit_destination(self, destination: bytes) -> bytes | None:
        """sit --remote any: the IPv4 address an IPv6 destination leads to (ipip6_tunnel_xmit), or None."""
        if self.params.mode.value.isatap:
            # RFC 5214: an on-link ISATAP address carries it; anything else goes to the default router.
            embedded = sit.isatap_ipv4(destination)
            return embedded if embedded is not None else self._isatap_router
        assert self._sixrd is not None
        # No routing table here: the destination itself is the next hop (an on-link route, `::` in the kernel).
        return sit.ipv4_destination(destination, sixrd=self._sixrd, next_hop=sit.ZERO6)

    def keepalive_request(self) -> bytes:
        """A Cisco keepalive to send now (see core.keepalive), counted on the line protocol."""
        p = self.params
        assert p.local is not None and p.remote is not None
        packet = self.encapsulate(inner_request(p.local, p.remote, p.ikey, p.icsum))
        assert isinstance(packet, bytes)
        return packet

    def encapsulate(self, inner: bytes | bytearray | memoryview, now: float = 0.0) -> bytes | Drop:
        """The whole outer packet for `inner`, or why not (see `encapsulate_header`); with --esp-keys, sealed
        in ESP (vti: tunnel mode; other modes: transport mode around their GRE, IPIP or SIT packet)."""
        plan = self.tx_plan if self.sealer is not None else None  # with ESP too, the plan builds the header
        planned = plan(inner) if plan is not None else None
        header = planned if planned is not None else self.encapsulate_header(inner, now)
        if isinstance(header, Drop):
            return header
        if self.sealer is None:
            return header + bytes(inner)
        protect = esp.protect_ipv6 if self.params.mode.value.outer == 6 else esp.protect_ipv4
        sealed = protect(self.sealer, header + bytes(inner))
        if isinstance(sealed, Drop):
            self.counters.tx_failed(len(inner), sealed)
        return sealed


class Received(NamedTuple):
    """A packet that passed every receive rule: the tunnel, the rule that chose it, the inner packet."""

    tunnel: Tunnel
    rule: Rule
    inner: bytes | bytearray | memoryview
    then: Sequence[bytes] = ()  # rfc2890 policy: held packets this one put back in order, to deliver after it


class Held(NamedTuple):
    """rfc2890 policy: the packet came early and waits in its tunnel's reorder buffer; `released` are
    packets an overflow pushed out, in order, to be delivered now."""

    tunnel: Tunnel
    released: list[bytes]


class KeepaliveReply(NamedTuple):
    """Our own keepalive came back (GRE protocol type 0, nothing after the header)."""

    tunnel: Tunnel


class Reflect(NamedTuple):
    """A peer's keepalive: `packet` (an IPv4 packet from us to the peer) is to be sent back as it is."""

    tunnel: Tunnel
    packet: bytes | bytearray | memoryview


Result = Received | Held | KeepaliveReply | Reflect | Drop


class Demux:
    """All tunnels of one process, one lookup table per receive table (core.tables: protocol, family, gretap)."""

    def __init__(self, protected: bool = False) -> None:
        self.protected = protected  # the inner lookup of `decapsulate_esp`: it holds the protected tunnels
        self.tables: dict[int, TunnelTable[Tunnel]] = {}
        self.unmatched = Counters()  # drops no tunnel can be blamed for
        # rfc2890 policy: receive states that hold packets, and whose tunnel they belong to.
        self.holding: dict[SequenceState, Tunnel] = {}
        # Tunnels with a receive plan (core.plan), by outer source and destination (the packet's bytes 12..20):
        # a plan that accepts a packet is the one the lookup would pick (the exact rule, its own protocol and
        # key); one that declines changes nothing, so each is tried, then the specification. `single`: the one
        # such tunnel, when there is only one (a `usertunnel up`), tried without the dictionary.
        self.fast: dict[bytes, tuple[Tunnel, ...] | dict[int, Tunnel]] = {}
        self.single: Tunnel | None = None
        # FOU / GUE tunnels with a receive plan, by outer source and destination (`planned_udp`).
        self.udp_fast: dict[bytes, tuple[Tunnel, ...]] = {}
        # IPsec (--esp-keys): protected tunnels by their inbound SPI, and a lookup of their own, which only
        # packets that came out of their ESP reach (a plain GRE packet never finds a protected tunnel).
        self.by_spi: dict[int, Tunnel] = {}
        self._protected: Demux | None = None

    def deadline(self) -> float | None:
        """When `expire` next has work (the earliest OUTOFORDER_TIMER), or None."""
        deadlines = [d for d in (w.deadline() for w in self.holding) if d is not None]
        return min(deadlines) if deadlines else None

    def expire(self, now: float) -> list[tuple[Tunnel, list[bytes]]]:
        """OUTOFORDER_TIMER: packets whose wait in a reorder buffer is over, to deliver now, per tunnel."""
        out = []
        for window, tunnel in list(self.holding.items()):
            released = window.expire(now)
            if released:
                _count_rx(tunnel.counters, released)
                out.append((tunnel, released))
            if window.deadline() is None:
                del self.holding[window]
        return out

    def add(self, tunnel: Tunnel) -> None:
        if tunnel.params.esp is not None and not self.protected:
            self._add_protected(tunnel)
            return
        self.tables.setdefault(tunnel.params.mode.value.table, TunnelTable()).add(tunnel)
        if tunnel.rx_plan is not None and tunnel.params.encap is not None:
            # FOU / GUE: plans that read a UDP payload, by the outer source and destination (planned_udp).
            self.udp_fast[_fast_address(tunnel)] = (*self.udp_fast.get(_fast_address(tunnel), ()), tunnel)
            return
        if tunnel.rx_plan is not None:
            address = _fast_address(tunnel)
            group = self.fast.get(address, ())
            if isinstance(group, dict):
                group[_fast_key(tunnel)] = tunnel
            elif len(group) < FAST_GROUP:
                self.fast[address] = (*group, tunnel)
            else:
                self.fast[address] = {_fast_key(t): t for t in (*group, tunnel)}
            self._single()

    def remove(self, tunnel: Tunnel) -> None:
        if tunnel.params.esp is not None and not self.protected:
            spi = tunnel.params.esp.inbound.spi
            if self.by_spi.get(spi) is tunnel:
                del self.by_spi[spi]
            if self._protected is not None:
                self._protected.remove(tunnel)
            return
        table = self.tables.get(tunnel.params.mode.value.table)
        if table is not None:
            table.remove(tunnel)
        if tunnel.rx_plan is not None and tunnel.params.encap is not None:
            address = _fast_address(tunnel)
            left = tuple(t for t in self.udp_fast.get(address, ()) if t is not tunnel)
            if left:
                self.udp_fast[address] = left
            else:
                self.udp_fast.pop(address, None)
            return
        if tunnel.rx_plan is not None:
            address = _fast_address(tunnel)
            group = self.fast.get(address, ())
            if isinstance(group, dict):
                if group.get(_fast_key(tunnel)) is tunnel:
                    del group[_fast_key(tunnel)]
                if len(group) <= FAST_GROUP:
                    self.fast[address] = tuple(group.values())
            else:
                self.fast[address] = tuple(t for t in group if t is not tunnel)
            if not self.fast[address]:
                del self.fast[address]
            self._single()

    def tunnels(self) -> Iterator[Tunnel]:
        """Every tunnel of this demux, the protected ones (--esp-keys) included."""
        for table in self.tables.values():
            yield from table
        if self._protected is not None:
            yield from self._protected.tunnels()

    def _add_protected(self, tunnel: Tunnel) -> None:
        assert tunnel.params.esp is not None
        spi = tunnel.params.esp.inbound.spi
        other = self.by_spi.get(spi)
        if other is not None:
            raise ConfigError(
                f"tunnel {tunnel.name!r}: inbound SPI {spi:#x} is already tunnel {other.name!r}'s: each security "
                "association needs its own SPI"
            )
        if self._protected is None:
            self._protected = Demux(protected=True)
            self._protected.unmatched = self.unmatched  # one set of counters for packets no tunnel owns
        self._protected.add(tunnel)
        self.by_spi[spi] = tunnel

    def decapsulate_esp(self, packet: bytes | bytearray | memoryview, now: float = 0.0) -> Result:
        """An IPv4 packet of protocol 50 (ESP, RFC 4303): find the security association by SPI and outer
        destination (as xfrm_state_lookup), open it (integrity, anti-replay, padding), then decide what it
        carried as for the same packet in the clear, among protected tunnels only. A peer's keepalive is
        sent back sealed."""
        view = memoryview(packet)
        unmatched = self.unmatched
        n = len(view)
        if n < ipv4.MIN_HEADER_LEN or view[0] >> 4 != 4:
            return unmatched.drop(Drop.OUTER_MALFORMED)
        ihl = (view[0] & 0x0F) << 2
        total = (view[2] << 8) | view[3]
        if ihl < ipv4.MIN_HEADER_LEN or total < ihl or total > n:
            return unmatched.drop(Drop.OUTER_MALFORMED)
        if ((view[6] << 8) | view[7]) & _FRAGMENT_BITS:
            return unmatched.drop(Drop.OUTER_FRAGMENT)
        spi = esp.spi_of(view[ihl:total])
        if spi is None:
            return unmatched.drop(Drop.ESP_TRUNCATED)
        tunnel = self.by_spi.get(spi)
        if tunnel is None or view[16:20].tobytes() != tunnel.params.local or self._protected is None:
            return unmatched.drop(Drop.ESP_NO_SA)
        assert tunnel.opener is not None and tunnel.sealer is not None
        plain = esp.unprotect_ipv4(tunnel.opener, view[:total])
        if isinstance(plain, Drop):
            return tunnel.counters.drop(plain)
        rx = tunnel.rx_plan  # the tunnel's compiled receive code (core.plan) for the ordinary packet ESP carried
        if rx is not None:
            inner = rx(memoryview(plain))
            if inner is not None:
                return Received(tunnel, Rule.EXACT, inner)  # plans serve exact local+remote tunnels only
        result = _sealed_by(tunnel, self._protected.decapsulate(plain, now))
        if isinstance(result, Reflect):
            sealed = esp.protect_ipv4(tunnel.sealer, result.packet)
            if isinstance(sealed, Drop):
                return tunnel.counters.drop(sealed)
            return Reflect(tunnel, sealed)
        return result

    def _single(self) -> None:
        """The one tunnel with a receive plan, when there is only one (the loop then calls its plan directly)."""
        self.single = None
        if len(self.fast) == 1:
            (group,) = self.fast.values()
            if isinstance(group, tuple) and len(group) == 1:
                self.single = group[0]

    def planned(self, packet: memoryview) -> tuple[Tunnel, memoryview] | None:
        """The receive plans' answer for an outer IPv4 packet: its tunnel and inner packet, or None (run
        `decapsulate`, which then decides as it always did: a plan that declines has changed nothing)."""
        group = self.fast.get(packet[12:20].tobytes())
        if group is None:
            return None
        if type(group) is tuple:
            for tunnel in group:
                inner = tunnel.rx_plan(packet)  # type: ignore[misc]  # in `fast`: it has one
                if inner is not None:
                    return tunnel, inner
            return None
        assert isinstance(group, dict)
        # Many tunnels between the same two addresses: told apart by protocol and GRE key (the plan checks all).
        if len(packet) < 32:
            return None
        vihl, protocol, flags, word24, word28 = _KEYED.unpack_from(packet)
        if vihl != 0x45:
            return None
        keyed = protocol == 47 and flags & 0x20  # K: the key follows the checksum word when C
        found = group.get((word28 if flags & 0x80 else word24) if keyed else -protocol)
        if found is None:
            return None
        inner = found.rx_plan(packet)  # type: ignore[misc]
        return None if inner is None else (found, inner)

    def planned_udp(self, payload: memoryview, addresses: bytes, tos: int) -> tuple[Tunnel, memoryview] | None:
        """The receive plans' answer for a FOU / GUE datagram from `addresses` (outer source and destination):
        its tunnel and inner packet, or None (run `decapsulate_udp`: a plan that declines changed nothing)."""
        for tunnel in self.udp_fast.get(addresses, ()):
            inner = tunnel.rx_plan(payload, addresses, tos)  # type: ignore[call-arg,misc]
            if inner is not None:
                return tunnel, inner
        return None

    def decapsulate(self, packet: bytes | bytearray | memoryview, now: float = 0.0) -> Result:
        """Check a packet from the raw socket and return its inner packet, or why it was dropped.

        `now` (seconds, monotonic) matters only to hubs, which learn where each spoke was last seen.
        """
        view = memoryview(packet)
        n = len(view)
        unmatched = self.unmatched
        if n < ipv4.MIN_HEADER_LEN:
            return unmatched.drop(Drop.OUTER_MALFORMED)
        b0 = view[0]
        ihl = (b0 & 0x0F) << 2
        total = (view[2] << 8) | view[3]
        if b0 >> 4 != 4 or ihl < ipv4.MIN_HEADER_LEN or total < ihl or total > n:
            return unmatched.drop(Drop.OUTER_MALFORMED)
        if ((view[6] << 8) | view[7]) & _FRAGMENT_BITS:
            return unmatched.drop(Drop.OUTER_FRAGMENT)
        return self._decapsulate(view[9], bytes(view[12:16]), bytes(view[16:20]), view[1], view[ihl:total], now)

    def decapsulate6(
        self,
        protocol: int,
        src: bytes,
        dst: bytes,
        tclass: int,
        payload: bytes | bytearray | memoryview,
        now: float = 0.0,
    ) -> Result:
        """A packet read from a raw IPv6 socket, which delivers no IPv6 header: the kernel has checked it
        and stepped over its extension headers (an encapsulation limit option included); the source,
        destination and traffic class come with it as ancillary data (IPV6_PKTINFO, IPV6_TCLASS). ESP (50):
        vti6."""
        if protocol == esp.IPPROTO_ESP:
            return self._decapsulate_esp6(src, dst, tclass, memoryview(payload), now)
        return self._decapsulate(protocol | OVER_IPV6, src, dst, tclass, memoryview(payload), now)

    def _decapsulate_esp6(self, src: bytes, dst: bytes, tclass: int, payload: memoryview, now: float) -> Result:
        """ESP over IPv6 (vti6): the security association by SPI and destination, opened, then what it
        carried decided among protected tunnels, as `decapsulate_esp` does over IPv4."""
        spi = esp.spi_of(payload)
        if spi is None:
            return self.unmatched.drop(Drop.ESP_TRUNCATED)
        tunnel = self.by_spi.get(spi)
        if tunnel is None or dst != tunnel.params.local or self._protected is None:
            return self.unmatched.drop(Drop.ESP_NO_SA)
        assert tunnel.opener is not None
        opened = tunnel.opener.open(payload)
        if isinstance(opened, Drop):
            return tunnel.counters.drop(opened)
        next_header, inner = opened
        return _sealed_by(
            tunnel, self._protected._decapsulate(next_header | OVER_IPV6, src, dst, tclass, memoryview(inner), now)
        )

    def decapsulate_udp(
        self,
        kind: fou.EncapKind,
        protocol: int,
        src: bytes,
        dst: bytes,
        tos: int,
        payload: bytes | bytearray | memoryview,
        now: float = 0.0,
        sport: int = 0,
    ) -> Result:
        """A datagram read from a FOU or GUE socket (from UDP port `sport`, which a hub learns with the
        address): the kernel has checked the outer IP and UDP headers (and the UDP checksum) and hands us
        the UDP payload, with the outer addresses and TOS as ancillary data. FOU: `protocol` is the
        port's (`ip fou add port N ipproto P`); GUE: its header says.
        What follows is decided as for the same protocol straight over IP (the kernel, too, hands the
        payload to its gre, ipip or sit receive path)."""
        view = memoryview(payload)
        if kind is fou.EncapKind.GUE:
            found = fou.parse_gue(view)
            if isinstance(found, Drop):
                return self.unmatched.drop(found)
            protocol, start = found
            view = view[start:]
        table = protocol | (OVER_IPV6 if len(src) == 16 else 0)  # over IPv6: that protocol's IPv6 table
        return self._decapsulate(table, src, dst, tos, view, now, sport)

    def _frame(self, tunnel: Tunnel, rule: Rule, frame: bytes | bytearray | memoryview, outer_tos: int) -> Result:
        """gretap: an Ethernet frame for the TAP device. An outer CE reaches an IP packet inside it
        (RFC 6040; Linux's ip_tunnel_rcv reads the inner header after eth_type_trans)."""
        counters = tunnel.counters
        out: bytes | bytearray | memoryview = frame
        if outer_tos & 3 == 3:
            ethertype = (frame[12] << 8) | frame[13]
            ip = frame[14:]
            if (ethertype == 0x0800 and len(ip) >= 20) or (ethertype == 0x86DD and len(ip) >= 40):
                inner_tos = ip[1] if ethertype == 0x0800 else ipv6.traffic_class(ip)
                if inner_tos & 3 == 0:
                    return counters.drop(Drop.ECN_CE_NOT_ECT)
                if inner_tos & 3 != 3:
                    out = bytes(frame[:14]) + set_ce(ip)
        counters.rx_packets += 1
        counters.rx_bytes += len(out)
        return Received(tunnel, rule, out)

    def _decapsulate(
        self, table_id: int, src: bytes, dst: bytes, outer_tos: int, payload: memoryview, now: float, port: int = 0
    ) -> Result:
        """Everything after the outer IP header: GRE, lookup, receive rules, the inner packet."""
        unmatched = self.unmatched
        table = self.tables.get(table_id)
        if table is None and (table_id | ETHERNET) not in self.tables:  # gretap only: decided by the GRE type
            return unmatched.drop(Drop.NO_TUNNEL)
        protocol = table_id & PROTOCOL
        flags = 0
        key = sequence = None
        proto = _PROTO_IPV4 if protocol == 4 else _PROTO_IPV6
        hlen = 0
        if protocol == 47:
            fields = parse_fields(payload)
            if isinstance(fields, Drop):
                return unmatched.drop(fields)
            flags, proto, hlen, key, sequence = fields

        if proto == _PROTO_TEB:
            # Ethernet frames belong to gretap tunnels, which Linux looks up apart (gre_tap_net); with none,
            # a gre tunnel finds the packet and drops it for its protocol type, as before.
            tap_table = self.tables.get(table_id | ETHERNET)
            if tap_table is not None:
                table = tap_table
        if table is None:
            return unmatched.drop(Drop.NO_TUNNEL)
        found = table.lookup(dst, src, key)
        if isinstance(found, Drop):
            if found is Drop.KEY_MISMATCH:
                blamed = table.address_match(dst, src)
                if blamed is not None:
                    return blamed.counters.drop(found)
            return unmatched.drop(found)
        tunnel, rule = found
        p = tunnel.params
        counters = tunnel.counters

        # ip_tunnel_rcv: the C bit must agree with icsum either way; a present checksum is verified.
        if flags & gre.FLAG_CSUM:
            if not (checksum_is_valid(payload) if tunnel.full_csum else csum_derived_is_valid(payload, hlen)):
                return counters.drop(Drop.CSUM_BAD)
            if not p.icsum:
                return counters.drop(Drop.CSUM_UNEXPECTED)
        elif p.icsum:
            return counters.drop(Drop.CSUM_MISSING)
        if proto == gre.PROTO_KEEPALIVE and len(payload) == hlen and tunnel.line is not None:
            # Our keepalive, reflected by the peer. It carries no sequence number (the peer only
            # routed it back), so it is recognised before the sequence check.
            return KeepaliveReply(tunnel)
        hub = tunnel.hub
        peer = None
        window = tunnel.iseq_window
        if hub is not None:
            # Every spoke (outer source, key) has its own sequence stream and learned hosts.
            peer = hub.peer(src, key, now, port)
            if peer is None:
                return counters.drop(Drop.HUB_FULL)
            window = peer.window
        verdict = None
        if p.iseq:
            if sequence is None:
                return counters.drop(Drop.SEQ_MISSING)
            verdict = window.check(sequence, now)
            if verdict is _OLD:
                return counters.drop(Drop.SEQ_OLD)

        inner: bytes | bytearray | memoryview = payload[hlen:]
        m = len(inner)
        if m == 0:
            return counters.drop(Drop.INNER_MALFORMED)
        version = inner[0] >> 4
        if proto == gre.PROTO_IPV4:
            if version != 4:
                return counters.drop(Drop.INNER_MALFORMED if p.mode.value.is_gre else Drop.FAMILY)
            inner_ihl = (inner[0] & 0x0F) << 2
            if m < ipv4.MIN_HEADER_LEN or inner_ihl < ipv4.MIN_HEADER_LEN or m < inner_ihl:
                return counters.drop(Drop.INNER_MALFORMED)
            inner_total = (inner[2] << 8) | inner[3]
            # A valid header sums to 0xFFFF, i.e. its value is a multiple of 0xFFFF (core.checksum).
            if inner_total < inner_ihl or inner_total > m or int.from_bytes(inner[:inner_ihl], "big") % 0xFFFF:
                return counters.drop(Drop.INNER_MALFORMED)
            inner = inner[:inner_total]
            inner_tos = inner[1]
        elif proto == gre.PROTO_IPV6:
            if version != 6:
                return counters.drop(Drop.INNER_MALFORMED if p.mode.value.is_gre else Drop.FAMILY)
            if m < ipv6.HEADER_LEN:
                return counters.drop(Drop.INNER_MALFORMED)
            inner_total = ipv6.HEADER_LEN + ((inner[4] << 8) | inner[5])
            if inner_total > m:
                return counters.drop(Drop.INNER_MALFORMED)
            inner = inner[:inner_total]
            inner_tos = ipv6.traffic_class(inner)
        elif proto == _PROTO_TEB and p.mode.value.ethernet:
            if m < 14:
                return counters.drop(Drop.INNER_MALFORMED)
            return self._frame(tunnel, rule, inner, outer_tos)
        else:
            return counters.drop(Drop.GRE_PROTOCOL)

        if outer_tos & 3 == 3:  # only an outer CE changes anything (RFC 6040 section 4.2)
            if ecn.decapsulate(outer_tos, inner_tos) is _DROP_NOT_ECT:
                return counters.drop(Drop.ECN_CE_NOT_ECT)
            if inner_tos & 3 != 3:
                inner = set_ce(inner)
        if tunnel.sit_rules:
            # ipip6_rcv's packet_is_spoofed: the IPv6 addresses must agree with the IPv4 ones.
            spoof = sit.check_source(
                src, dst, bytes(inner[8:24]), bytes(inner[24:40]),
                point_to_point=p.remote is not None, isatap=p.mode.value.isatap,
                sixrd=p.sixrd or sit.SIX_TO_FOUR, prl=tunnel.prl, device=tunnel.device_addresses,
            )  # fmt: skip
            if not spoof.accepted:
                return counters.drop(Drop.SIT_SPOOFED)
        # A peer's keepalive goes back as a router would route it, after the same RFC 6040 rule (over FOU / GUE
        # the shell sends it back in UDP, to the address and port it came from: through the peer's NAT).
        if inner[0] >> 4 == 4 and inner[9] == 47 and p.reflect_keepalives:
            if peer is None:
                if is_request_to_reflect(inner, p.local, p.remote):
                    tunnel.reflected += 1
                    return Reflect(tunnel, inner)
            elif is_request_to_reflect(inner, p.local, bytes(inner[16:20])):
                # A spoke's keepalive is addressed to the spoke's own (maybe private) address; send its
                # GRE header back to the outer address it came from, through the spoke's NAT.
                peer.last_seen = now
                tunnel.reflected += 1
                return Reflect(tunnel, reflect_to(inner, dst, src))
        if peer is not None:
            assert hub is not None
            source = bytes(inner[12:16]) if proto == gre.PROTO_IPV4 else bytes(inner[8:24])
            if not hub.source_allowed(key, source):
                return counters.drop(Drop.SPOKE_SOURCE)
            hub.learn(peer, source, now)
        if verdict is not None and p.seq_policy is _RFC2890:
            assert sequence is not None
            if verdict is _HOLD:
                released = window.hold(sequence, inner, now)
                self.holding[window] = tunnel
                _count_rx(counters, released)
                return Held(tunnel, released)
            then = window.release()
            if window.deadline() is None:
                self.holding.pop(window, None)
            _count_rx(counters, then)
            counters.rx_packets += 1
            counters.rx_bytes += len(inner)
            return Received(tunnel, rule, inner, then)
        counters.rx_packets += 1
        counters.rx_bytes += len(inner)
        return Received(tunnel, rule, inner)


# Tunnels with receive plans on one pair of outer addresses: up to this many are tried in turn, more are
# found by protocol and key (Demux.planned).
FAST_GROUP = 4


def _sealed_by(tunnel: Tunnel, result: Result) -> Result:
    """What the protected lookup made of a packet that opened with `tunnel`'s keys: refused (no_tunnel, on
    `tunnel`) if the lookup chose another protected tunnel, whose receive count is then taken back."""
    if isinstance(result, Drop) or result.tunnel is tunnel:
        return result
    if isinstance(result, Received):
        result.tunnel.counters.rx_packets -= 1
        result.tunnel.counters.rx_bytes -= len(result.inner)
    return tunnel.counters.drop(Drop.NO_TUNNEL)


def _fast_key(tunnel: Tunnel) -> int:
    """How a planned tunnel is told apart from others between the same two addresses (`Demux.planned`): its
    GRE input key, or minus its IP protocol when it has none (GRE without a key, IPIP, SIT). One integer,
    so that a packet's is read in the same unpack as the rest and needs no tuple."""
    protocol, ikey = tunnel.params.mode.value.ip_protocol, tunnel.params.ikey
    if ikey is None:
        return -protocol
    # A key on another protocol (vti's selects its security association) is in no packet: a key none matches.
    return ikey if protocol == 47 else -1000 - protocol


# Demux.planned among many tunnels: version/IHL, protocol, GRE flags, and the words at 24 and 28 (the key
# is one of them: 24 without a checksum, 28 with one).
_KEYED = struct.Struct("!B8xB10xB3xII")


def _fast_address(tunnel: Tunnel) -> bytes:
    """The outer source and destination (the packet's bytes 12..20) of what a planned tunnel receives."""
    p = tunnel.params
    assert p.remote is not None and p.local is not None
    return p.remote + p.local


_OLD = Verdict.OLD
_HOLD = Verdict.HOLD
_PROTO_TEB = gre.PROTO_TEB
MIN_PMTU = 552  # the kernel's net.ipv4.route.min_pmtu
PMTU_EXPIRES = 600.0  # the kernel's net.ipv4.route.mtu_expires, seconds
# GRE on the receive path, as module constants (a global is cheaper than a module attribute).
_PROTO_IPV4 = gre.PROTO_IPV4
_PROTO_IPV6 = gre.PROTO_IPV6
_RFC2890 = SeqPolicy.RFC2890
_DROP_NOT_ECT = ecn.Decap.DROP


def _count_rx(counters: Counters, packets: Sequence[bytes]) -> None:
    counters.rx_packets += len(packets)
    counters.rx_bytes += sum(len(packet) for packet in packets)


def reflect_to(inner: bytes | bytearray | memoryview, source: bytes, destination: bytes) -> bytes:
    """A hub's reply to a spoke's keepalive: the keepalive's GRE part under a new IPv4 header to `destination`."""
    ihl = (inner[0] & 0x0F) << 2
    body = bytes(inner[ihl:])
    header = ipv4.IPv4Header(0, ipv4.MIN_HEADER_LEN + len(body), 0, ipv4.FLAG_DF, 255, 47, 0, source, destination)
    return header.with_checksum().pack() + body


def set_ce(packet: bytes | bytearray | memoryview) -> bytearray:
    """A copy of an ECN-capable inner packet marked Congestion Experienced (IPv4 checksum updated)."""
    out = bytearray(packet)
    if out[0] >> 4 == 4:
        out[1] |= ecn.CE
        ihl = (out[0] & 0x0F) << 2
        out[10:12] = b"\x00\x00"
        _U16.pack_into(out, 10, ~ones_complement_sum(out[:ihl]) & 0xFFFF)
    else:
        out[1] |= ecn.CE << 4
    return out
