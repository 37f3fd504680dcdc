"""Fuzzing `Demux.decapsulate` and `decapsulate6`, the receive path: whatever arrives on a raw socket.

Inputs start from valid packets, built by the core's own `Tunnel.encapsulate` for
random tunnel parameters and random inner packets (IPv4 ICMP / TCP / UDP, IPv6,
Ethernet frames for gretap, IPv6 with 6to4 addresses for sit, Cisco keepalives),
then are mutated (bit flips, truncations, insertions, deletions, overwrites at
header offsets, outer CE; lengths and checksums fixed up or not, so that
mutations reach later checks), sent by peers whose options disagree with ours,
replayed, or are pure random bytes. Several tunnels share one `Demux`: gre with
keys, no key, key 0, remote-only, local-only and wildcard lookups; ipip; gretap
beside a gre tunnel of the same key; sit point to point and sit with 6to4; a hub
(`--remote any`) with a spoke key and room for few spokes; ip6gre and ip6ip6
over IPv6 (fed to `decapsulate6` as a raw IPv6 socket delivers them: the payload
after the IPv6 header and its options, with the addresses and traffic class
beside it); with or without keepalives and their reflection.

Properties, for every packet:
- decapsulate never raises, does not modify its input, and returns exactly what
  an independent model written here decides (`Model.expect`): delivered on
  which tunnel with which bytes, reflected (which bytes), taken as our
  keepalive's reply, or dropped for which reason. The model follows the
  kernel's order: the outer header, the tunnel table of the protocol (gretap's
  apart), the GRE header, the lookup (the four rules, the key exactly; a key
  mismatch blamed on the first tunnel whose addresses match), the checksum
  rules, our keepalive's reply, a hub's room for a new spoke, the sequence
  window (per tunnel, per spoke for a hub), the inner header and family,
  RFC 6040 (outer CE over Not-ECT dropped, reflected keepalives included),
  sit's 6to4 address rule, a peer's keepalive to reflect, a spoke's prefixes;
- a delivered inner packet is a well-formed IPv4 or IPv6 packet of a family the
  mode carries (an Ethernet frame for gretap), a reflected one well-formed IPv4;
- exactly the counter the decision names moves, by one (rx_bytes by the inner
  length), on the tunnel the model names (`unmatched` for what no tunnel owns);
  a keepalive reply moves none in the core (the I/O shell counts it);
and decapsulate(encapsulate(x)) == x on the tunnel the lookup order picks, for
valid x, with or without link-layer padding after the packet.

`hypothesis.target` steers the search toward packets that get far along the
receive path and toward examples that stop at many places: coverage-guided-ish.
The budget is USERTUNNEL_FUZZ_EXAMPLES (default 2000; .ci/run sets 6000, run
derandomised under conftest's `ci` profile); the round trip gets a quarter.
`python tests/test_fuzz_decapsulate.py` runs the same test coverage-guided under
atheris, when atheris is installed (it is not a dependency).
"""

from __future__ import annotations

import ipaddress
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, assume, given, settings, target
from hypothesis import strategies as st

from usertunnel.core import gre
from usertunnel.core.checksum import checksum_is_valid, internet_checksum
from usertunnel.core.drops import Drop
from usertunnel.core.encap import Demux, KeepaliveReply, Received, Reflect, Result, Tunnel
from usertunnel.core.ipv4 import IPv4Header
from usertunnel.core.ipv6 import IPv6Header
from usertunnel.core.keepalive import KeepaliveParams, inner_request
from usertunnel.core.neighbors import HubParams, Spoke
from usertunnel.core.params import Mode, TunnelParams

EXAMPLES = int(os.environ.get("USERTUNNEL_FUZZ_EXAMPLES", "2000"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    # No example database: with `target`, hypothesis keeps a Pareto front of examples in it, and that
    # bookkeeping costs more than the test. A failure prints its example and the blob to reproduce it.
    # Randomised or not is the profile's choice (conftest: derandomised in CI, fresh examples elsewhere).
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ROUND_TRIP = settings(FUZZ, max_examples=max(EXAMPLES // 4, 100))  # a narrower input space

A, B, C, D = (bytes([198, 51, 100, 1]), bytes([198, 51, 100, 2]), bytes([192, 0, 2, 3]), bytes([192, 0, 2, 4]))
STRANGER = bytes([203, 0, 113, 77])  # no tunnel names it
ADDRESSES = [A, B, C, D, STRANGER]
A6, B6, C6 = (ipaddress.IPv6Address(f"2001:db8::{n}").packed for n in (1, 2, 3))
ADDRESSES6 = [A6, B6, C6]
SPOKE_KEY, HUB_KEY = 9, 5
SPOKE_PREFIX = ipaddress.ip_network("203.0.113.0/30")  # the inner sources a spoke with SPOKE_KEY may use
HUB = HubParams(spokes=(Spoke(SPOKE_KEY, (SPOKE_PREFIX,)),), max_peers=2)  # room for two spokes: hub_full


@dataclass(frozen=True)
class Member:
    """A tunnel a Demux may hold: mode, local, remote, ikey, and whether it is a hub."""

    mode: Mode
    local: bytes | None
    remote: bytes | None
    ikey: int | None
    hub: bool = False


# No two of a table share local, remote and ikey (gretap's table is apart from gre's).
POOL = [
    Member(Mode.GRE, A, B, 7),
    Member(Mode.GRE, A, B, None),
    Member(Mode.GRE, A, B, 0),  # key 0 is a key: not the same as no key
    Member(Mode.GRE, None, C, 9),  # remote only
    Member(Mode.GRE, None, B, None),  # remote only, shadowed by (A, B, None) for packets to A
    Member(Mode.GRE, None, B, 7),  # remote only: beats (A, None, 7) for packets from B to A, loses to (A, B, 7)
    Member(Mode.GRE, A, None, 7),  # local only
    Member(Mode.GRE, A, None, None),  # local only: loses to (None, B, None) for packets from B
    Member(Mode.GRE, None, None, 0xFFFFFFFF),  # wildcard
    Member(Mode.GRE, None, None, None),  # wildcard, no key
    Member(Mode.GRE, D, None, HUB_KEY, hub=True),  # a hub: HUB_KEY for any spoke, SPOKE_KEY for one prefix
    Member(Mode.GRETAP, A, B, 7),  # the same addresses and key as a gre tunnel: told apart by protocol type
    Member(Mode.GRETAP, None, None, None),
    Member(Mode.IPIP, A, B, None),
    Member(Mode.IPIP, D, None, None),
    Member(Mode.IPIP, None, None, None),
    Member(Mode.SIT, A, B, None),  # point to point: no address check
    Member(Mode.SIT, D, None, None),  # remote any: 6to4, inner addresses must embed the outer ones
    Member(Mode.IP6GRE, A6, B6, 7),
    Member(Mode.IP6GRE, None, None, None),
    Member(Mode.IP6IP6, A6, B6, None),
]


def ikeys(p: TunnelParams) -> tuple[int | None, ...]:
    """The keys a tunnel takes: its ikey, and a hub's spoke keys (with only spoke keys, no keyless packets)."""
    spokes = tuple(s.key for s in p.hub.spokes) if p.hub is not None else ()
    if not spokes:
        return (p.ikey,)
    return ((p.ikey,) if p.ikey is not None else ()) + spokes


def table_of(p: TunnelParams) -> int:
    """Which packets a tunnel competes for: its outer protocol and family, gretap apart from gre."""
    return p.mode.value.ip_protocol + (256 if p.mode.value.outer == 6 else 0) + (512 if p.mode.value.ethernet else 0)


# How far along the receive path a packet got: what `target` maximises.
DEPTH = {
    Drop.OUTER_MALFORMED: 0,
    Drop.OUTER_FRAGMENT: 1,
    Drop.GRE_TRUNCATED: 2,
    Drop.GRE_VERSION: 2,
    Drop.GRE_ROUTING: 2,
    Drop.NO_TUNNEL: 3,
    Drop.KEY_MISMATCH: 3,
    Drop.CSUM_BAD: 4,
    Drop.CSUM_MISSING: 4,
    Drop.CSUM_UNEXPECTED: 4,
    Drop.HUB_FULL: 4,
    Drop.SEQ_MISSING: 5,
    Drop.SEQ_OLD: 5,
    Drop.INNER_MALFORMED: 6,
    Drop.FAMILY: 6,
    Drop.GRE_PROTOCOL: 6,
    Drop.ECN_CE_NOT_ECT: 7,
    Drop.SIT_SPOOFED: 7,
    Drop.SPOKE_SOURCE: 7,
}
DELIVERED_DEPTH = 8


def depth(result: Result) -> int:
    if isinstance(result, Drop):
        return DEPTH[result]
    return 5 if isinstance(result, KeepaliveReply) else DELIVERED_DEPTH  # a keepalive reply skips the window


# --- an independent model of the lookup (the kernel's ip_tunnel_lookup order) ----------------------------------

ORDER = ((True, True), (False, True), (True, False), (False, False))  # exact, remote only, local only, wildcard


def _rule_addresses(dst: bytes, src: bytes) -> list[tuple[bytes | None, bytes | None]]:
    return [(dst if local else None, src if remote else None) for local, remote in ORDER]


def expected_owner(tunnels: list[Tunnel], table: int, dst: bytes, src: bytes, key: int | None) -> Tunnel | None:
    """The tunnel that must receive a packet, by the four rules in order, the key matching exactly."""
    candidates = [t for t in tunnels if table_of(t.params) == table and key in ikeys(t.params)]
    for local, remote in _rule_addresses(dst, src):
        for t in candidates:
            if t.params.local == local and t.params.remote == remote:
                return t
    return None


def blamed_for_key(tunnels: list[Tunnel], table: int, dst: bytes, src: bytes) -> Tunnel | None:
    """The tunnel a key mismatch is counted on: the first added whose addresses match by the same rules."""
    same_table = [t for t in tunnels if table_of(t.params) == table]
    for local, remote in _rule_addresses(dst, src):
        for t in same_table:
            if t.params.local == local and t.params.remote == remote:
                return t
    return None


# --- strategies ---------------------------------------------------------------------------------------------------
# Strategies are built once, here: hypothesis re-analyses every new strategy object it is handed, and building
# them per draw (a composite with arguments, sampled_from a fresh list) costs more than the test itself.

BOOLEANS = st.booleans()
BYTES = st.integers(0, 255)
ADDRESS = st.sampled_from(ADDRESSES)
ADDRESS6 = st.sampled_from(ADDRESSES6)
TTL = st.one_of(st.none(), st.integers(1, 255))
TOS = st.one_of(st.none(), BYTES)
IPV4_OPTIONS = st.sampled_from([b"", b"\x01" * 4, b"\x01" * 8 + b"\x00" * 4, b"\x01" * 40])
TRANSPORT = st.sampled_from([1, 6, 17])  # ICMP, TCP, UDP
DATA = st.binary(max_size=64)
INSIDE, OUTSIDE = bytes([203, 0, 113, 2]), bytes([203, 0, 113, 99])  # in SPOKE_PREFIX, and not
INNER_SOURCE = st.sampled_from([INSIDE, OUTSIDE])
ETHERTYPE = st.sampled_from([0x0800, 0x86DD, 0x0806, 0x88CC])  # IPv4, IPv6, ARP, LLDP


@st.composite
def demuxes(draw: st.DrawFn) -> tuple[Demux, list[Tunnel]]:
    """A Demux with a few tunnels from POOL, each with random iseq / icsum (GRE modes)."""
    chosen = draw(st.lists(st.sampled_from(range(len(POOL))), min_size=1, max_size=7, unique=True))
    demux = Demux()
    tunnels = []
    for i in chosen:
        m = POOL[i]
        is_gre = m.mode.value.is_gre
        iseq, icsum = is_gre and draw(BOOLEANS), is_gre and draw(BOOLEANS)
        # Keepalives of our own need gre over IPv4 with both addresses; reflecting a peer's is the default.
        own = m.mode is Mode.GRE and m.local is not None and m.remote is not None
        keepalive = KeepaliveParams() if own and draw(BOOLEANS) else None
        params = TunnelParams(
            f"t{i}", m.mode, m.local, m.remote, ikey=m.ikey, okey=m.ikey, iseq=iseq, icsum=icsum, keepalive=keepalive,
            reflect_keepalives=draw(BOOLEANS), hub=HUB if m.hub else None,
        )  # fmt: skip
        tunnel = Tunnel(params)
        demux.add(tunnel)
        tunnels.append(tunnel)
    return demux, tunnels


@st.composite
def inner_packets(draw: st.DrawFn, families: tuple[int, ...], any_source: bool = False) -> bytes:
    """A valid inner packet: IPv4 (ICMP echo, TCP, UDP, with or without options) or IPv6, any TOS / ECN; its
    IPv4 source inside a spoke's prefix, or with `any_source` maybe outside it."""
    family = families[0] if len(families) == 1 else draw(st.sampled_from(families))
    data = draw(DATA)
    if family == 6:
        header = IPv6Header(
            traffic_class=draw(BYTES),
            flow_label=draw(st.integers(0, 0xFFFFF)),
            payload_length=8 + len(data),
            next_header=58,
            hop_limit=draw(BYTES),
            src=bytes.fromhex("20010db8000000000000000000000002"),
            dst=bytes.fromhex("20010db8000000000000000000000001"),
        )
        return header.pack() + struct.pack("!BBHHH", 128, 0, 0, 1, 1) + data
    protocol = draw(TRANSPORT)
    if protocol == 1:
        transport = struct.pack("!BBHHH", 8, 0, 0, draw(st.integers(0, 0xFFFF)), 1)
    elif protocol == 6:
        transport = struct.pack("!HHIIBBHHH", 40000, 5001, 1, 0, 0x50, 0x18, 65535, 0, 0)
    else:
        transport = struct.pack("!HHHH", 40000, 53, 8 + len(data), 0)
    options = draw(IPV4_OPTIONS)
    body = transport + data
    header = IPv4Header(
        tos=draw(BYTES),
        total_length=20 + len(options) + len(body),
        identification=draw(st.integers(0, 0xFFFF)),
        frag_off=0x4000 if draw(BOOLEANS) else 0,
        ttl=draw(BYTES),
        protocol=protocol,
        checksum=0,
        src=draw(INNER_SOURCE) if any_source else INSIDE,
        dst=bytes([203, 0, 113, 1]),
        options=options,
    )
    if protocol == 6:
        # A valid TCP checksum (UDP's 0 means "none", which is valid): a sender's GRE checksum may be
        # derived from it (checksum.inner_sum).
        pseudo = header.src + header.dst + struct.pack("!BBH", 0, 6, len(body))
        body = body[:16] + struct.pack("!H", internet_checksum(pseudo + body)) + body[18:]
    return header.with_checksum().pack() + body


INNER = {
    (families, any_source): inner_packets(families, any_source)
    for families in ((4,), (6,), (4, 6))
    for any_source in (False, True)
}


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """An Ethernet frame for gretap: an IPv4 or IPv6 packet, or something else (ARP, LLDP) with random bytes."""
    ethertype = draw(ETHERTYPE)
    header = bytes.fromhex("020000000001020000000002") + struct.pack("!H", ethertype)
    if ethertype in (0x0800, 0x86DD):
        return header + draw(INNER[((4 if ethertype == 0x0800 else 6,), True)])
    return header + draw(st.binary(max_size=46))


FRAMES = frames()


def six_to_four(ipv4: bytes, host: int) -> bytes:
    """A 6to4 address (RFC 3056): 2002:V4ADDR::host."""
    return b"\x20\x02" + ipv4 + bytes(9) + bytes([host])


NATIVE_SRC, NATIVE_DST = (ipaddress.IPv6Address(a).packed for a in ("2001:db8:6::2", "2001:db8:6::1"))


def sit_inner(draw: Callable[..., Any], src: bytes, dst: bytes, spoof: bool) -> bytes:
    """An IPv6 packet for sit from outer `src` to `dst`: native addresses or 6to4 ones embedding them; with
    `spoof`, maybe 6to4 addresses embedding another (sit --remote any drops those, sit_spoofed)."""
    other = STRANGER if src != STRANGER else C
    sources = [NATIVE_SRC, six_to_four(src, 2)] + ([six_to_four(other, 2)] if spoof else [])
    destinations = [NATIVE_DST, six_to_four(dst, 1)] + ([six_to_four(other, 1)] if spoof else [])
    data = draw(DATA)
    header = IPv6Header(
        traffic_class=draw(BYTES),
        flow_label=0,
        payload_length=8 + len(data),
        next_header=58,
        hop_limit=64,
        src=sources[draw(st.integers(0, len(sources) - 1))],
        dst=destinations[draw(st.integers(0, len(destinations) - 1))],
    )
    return header.pack() + struct.pack("!BBHHH", 128, 0, 0, 1, 1) + data


@dataclass(frozen=True)
class Arrival:
    """What a raw socket hands over. IPv4: the whole packet (`Demux.decapsulate`). IPv6: the payload after the
    IPv6 header and its extension headers, which the kernel steps over, with the next header, the addresses
    and the traffic class beside it (`Demux.decapsulate6`)."""

    packet: bytes
    family: int = 4
    protocol: int = 0
    src: bytes = b""
    dst: bytes = b""
    tclass: int = 0

    def with_packet(self, packet: bytes) -> Arrival:
        return Arrival(packet, self.family, self.protocol, self.src, self.dst, self.tclass)


def arrival_of(packet: bytes) -> Arrival:
    """What the raw socket of the packet's family hands over for `packet`, as sent."""
    if packet[0] >> 4 == 4:
        return Arrival(packet)
    protocol, at = packet[6], 40
    while protocol in (0, 60):  # hop-by-hop, destination options (the encapsulation limit)
        protocol, at = packet[at], at + 8 * (packet[at + 1] + 1)
    tclass = ((packet[0] & 0x0F) << 4) | (packet[1] >> 4)
    return Arrival(packet[at:], 6, protocol, packet[8:24], packet[24:40], tclass)


@dataclass
class Valid:
    """A valid packet, built for the tunnel the lookup will pick, and what it carries."""

    arrival: Arrival
    owner: Tunnel
    inner: bytes


Senders = dict[tuple[str, bytes, bytes, int | None], Tunnel]


def peer(owner: Tunnel, src: bytes, dst: bytes, key: int | None, ttl: int | None, tos: int | None,
         lie: str | None = None) -> Tunnel:  # fmt: skip
    """The sending end for `owner`: our addresses swapped, its output options matching our input options
    (or, with `lie`, one of them not: the checksum, the sequence number or the key). A hub's spokes and sit's
    6to4 peers are tunnels of their own with a fixed remote: us."""
    p = owner.params
    okey, oseq, ocsum = key, p.iseq, p.icsum
    if lie == "csum":
        ocsum = not ocsum
    elif lie == "seq":
        oseq = not oseq
    elif lie == "key":
        okey = None if okey is not None else 7
    pmtudisc = ttl is not None  # iproute2 refuses a fixed ttl with nopmtudisc
    if p.mode.value.outer == 6:
        ttl, tos, pmtudisc = ttl or 64, tos, True
    params = TunnelParams(
        "peer", p.mode, src, dst, okey=okey, oseq=oseq, ocsum=ocsum, ttl=ttl, tos=tos, pmtudisc=pmtudisc
    )
    return Tunnel(params)


def valid_packet(
    draw: Callable[..., Any],
    tunnels: list[Tunnel],
    senders: Senders,
    lie: str | None = None,
    keepalive: bool = False,
    strict: bool = True,
) -> Valid:
    """A packet for a tunnel of the demux, from the addresses it accepts (any address where it has a wildcard);
    with `lie`, from a peer whose output options disagree with that tunnel's input options on one point; with
    `keepalive`, the peer's Cisco keepalive (an IPv4 packet from us back to the peer, bare GRE of type 0).
    `strict`: what the tunnel accepts (a spoke's inner source in its prefix, sit's inner addresses embedding
    the outer ones); otherwise maybe not."""
    wanted = tunnels[draw(st.integers(0, len(tunnels) - 1))]
    wp = wanted.params
    six = wp.mode.value.outer == 6
    src = wp.remote or draw(ADDRESS6 if six else ADDRESS)
    dst = wp.local or draw(ADDRESS6 if six else ADDRESS)
    assume(src != dst)  # the peer's tunnel would have local equal to remote, which TunnelParams refuses
    key = ikeys(wp)[draw(st.integers(0, len(ikeys(wp)) - 1))]
    owner = expected_owner(tunnels, table_of(wp), dst, src, key)
    assert owner is not None  # `wanted` itself matches
    p = owner.params
    if keepalive and p.mode is Mode.GRE:
        # The peer builds it from its own point of view: its local (src) and remote (dst), its input key and
        # icsum; or one whose inner packet comes from another address than ours (not ours to reflect).
        inner = inner_request(src, draw(ADDRESS) if draw(BOOLEANS) else dst, key, p.icsum)
    elif p.mode.value.ethernet:
        inner = draw(FRAMES)
    elif p.mode is Mode.SIT:
        inner = sit_inner(draw, src, dst, spoof=not strict)
    else:
        families = tuple(sorted(p.mode.value.families))
        if strict and key == SPOKE_KEY:
            families = (4,)  # the spoke's prefix is IPv4
        inner = draw(INNER[(families, not strict)])
    # One sender per (owner, addresses, key), kept across the example; the owner's peer numbers its packets with
    # one counter whatever the addresses (a wildcard tunnel has one window for all of them).
    sender = senders.get((owner.name, src, dst, key))
    if lie is not None and p.mode.value.is_gre:
        sender = peer(owner, src, dst, key, draw(TTL), draw(TOS), lie)
    elif sender is None:
        sender = senders[(owner.name, src, dst, key)] = peer(owner, src, dst, key, draw(TTL), draw(TOS))
    sender.oseq_next = max((s.oseq_next for (name, *_), s in senders.items() if name == owner.name), default=0)
    packet = sender.encapsulate(inner)
    assert isinstance(packet, bytes), packet
    return Valid(arrival_of(packet), owner, inner)


# Byte values that mean something in these headers: version/IHL (0x45, 0x46, 0x4F, 0x60), protocols (0x04, 0x2F),
# GRE flags (0x80, 0x20, 0x10, 0x40), 0x86DD, and the extremes.
INTERESTING = [
    0x00,
    0x01,
    0x04,
    0x05,
    0x08,
    0x0F,
    0x10,
    0x20,
    0x2F,
    0x40,
    0x45,
    0x46,
    0x4F,
    0x60,
    0x7F,
    0x80,
    0x86,
    0xDD,
]
Mutation = Callable[[bytearray], None]
POSITION = st.one_of(st.integers(0, 79), st.integers(0, 1 << 16))  # the headers (outer 0-19, GRE 20-35, inner 36-79)
MUTATION_KIND = st.sampled_from(["flip", "truncate", "insert", "overwrite", "interesting", "delete", "append", "CE"])
INTERESTING_BYTE = st.sampled_from(INTERESTING)


@st.composite
def mutations(draw: st.DrawFn) -> Mutation:
    """One change to a packet, at a position that favours the headers."""
    position = draw(POSITION)
    kind = draw(MUTATION_KIND)
    if kind == "CE":  # congestion on the underlay: outer ECN set to CE (RFC 6040 decapsulation decides)

        def congested(b: bytearray) -> None:
            if len(b) > 1:
                b[1] |= 3

        return congested
    if kind == "flip":
        bit = draw(st.integers(0, 7))

        def flip(b: bytearray) -> None:
            if b:
                b[position % len(b)] ^= 1 << bit

        return flip
    if kind == "truncate":
        return lambda b: b.__delitem__(slice(position % (len(b) + 1), None))
    if kind == "delete":
        n = draw(st.integers(1, 8))
        return lambda b: b.__delitem__(slice(position % (len(b) + 1), position % (len(b) + 1) + n))
    if kind == "insert":
        chunk = draw(st.binary(min_size=1, max_size=16))
        return lambda b: b.__setitem__(slice(position % (len(b) + 1), position % (len(b) + 1)), chunk)
    if kind == "append":
        chunk = draw(st.binary(min_size=1, max_size=64))
        return lambda b: b.extend(chunk)
    value = draw(st.binary(min_size=1, max_size=4)) if kind == "overwrite" else bytes([draw(INTERESTING_BYTE)])

    def overwrite(b: bytearray) -> None:
        if b:
            at = position % len(b)
            b[at : at + len(value)] = value[: len(b) - at]

    return overwrite


MUTATIONS = st.lists(mutations(), min_size=1, max_size=4)


def fix_gre_checksum(packet: bytearray, at: int, end: int, fix: bool) -> None:
    """With `fix`, a GRE checksum present at `at` made right again over the GRE header and payload up to `end`."""
    end = min(len(packet), end)
    if fix and end >= at + 8 and packet[at] & 0x80:
        packet[at + 4 : at + 6] = b"\x00\x00"
        packet[at + 4 : at + 6] = internet_checksum(packet[at:end]).to_bytes(2, "big")


def fix_outer(packet: bytearray, total_length: bool, gre_checksum: bool) -> None:
    """Make a mutated packet pass the earlier checks, so the mutation is judged by a later one."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return
    ihl = (packet[0] & 0x0F) * 4
    if total_length:
        packet[2:4] = min(len(packet), 0xFFFF).to_bytes(2, "big")
    if packet[9] == 47:
        fix_gre_checksum(packet, ihl, int.from_bytes(packet[2:4], "big"), gre_checksum)


HOSTILE_KIND = st.sampled_from(
    ["mutated", "mutated", "mutated", "random", "plausible", "replayed", "lying peer", "keepalive", "keepalive reply"]
)
LIE = st.sampled_from(["csum", "seq", "key"])
RANDOM_PACKET = st.binary(max_size=120)
FRAGMENT_WORD = st.sampled_from([0, 0x4000, 0x2000, 0x0001])
OUTER_PROTOCOL = st.sampled_from([47, 4, 41, 17])
GRE_PROTOCOL = st.sampled_from([gre.PROTO_IPV4, gre.PROTO_IPV6, gre.PROTO_TEB, 0])
BODY = st.binary(max_size=100)
TCLASS = st.sampled_from([0, 1, 2, 3, 0xB8, 0xBB])


def hostile_packet(
    draw: Callable[..., Any], tunnels: list[Tunnel], senders: Senders, history: list[Arrival]
) -> Arrival:
    """A mutated valid packet, random bytes, random bytes behind a plausible outer IPv4 header, a packet of
    this example sent again, or a packet from a peer whose options disagree with the receiving tunnel's;
    for a tunnel over IPv6, the payload a raw IPv6 socket hands over, mutated, with its traffic class maybe CE."""
    kind = draw(HOSTILE_KIND)
    if kind == "replayed" and history:
        return history[draw(st.integers(0, len(history) - 1))]
    if kind == "lying peer":
        return valid_packet(draw, tunnels, senders, lie=draw(LIE), strict=False).arrival
    if kind == "keepalive reply":  # one of our keepalives, routed back by the peer (or one we never sent)
        own = [t for t in tunnels if t.params.mode is Mode.GRE and t.params.local and t.params.remote]
        if own:
            t = own[draw(st.integers(0, len(own) - 1))]
            assert t.params.local and t.params.remote
            reply = bytearray(inner_request(t.params.local, t.params.remote, t.params.ikey, t.params.icsum))
            for mutate in draw(MUTATIONS) if draw(BOOLEANS) else []:
                mutate(reply)
            return Arrival(bytes(reply))
    keepalive = kind == "keepalive"
    if kind == "random":
        return Arrival(bytes(draw(RANDOM_PACKET)))
    if kind == "plausible":
        header = IPv4Header(
            tos=draw(BYTES),
            total_length=0,
            identification=0,
            frag_off=draw(FRAGMENT_WORD),
            ttl=64,
            protocol=draw(OUTER_PROTOCOL),
            checksum=0,
            src=draw(ADDRESS),
            dst=draw(ADDRESS),
        )
        body = draw(BODY)
        if header.protocol == 47 and draw(BOOLEANS):
            body = struct.pack("!HH", draw(st.integers(0, 0xFFFF)), draw(GRE_PROTOCOL)) + body
        packet = bytearray(header.pack() + body)
        fix_outer(packet, total_length=True, gre_checksum=draw(BOOLEANS))
        return Arrival(bytes(packet))
    valid = valid_packet(draw, tunnels, senders, keepalive=keepalive, strict=False).arrival
    packet = bytearray(valid.packet)
    if valid.family == 6:
        for mutate in draw(MUTATIONS) if draw(BOOLEANS) else []:
            mutate(packet)
        if valid.protocol == 47:
            fix_gre_checksum(packet, 0, len(packet), draw(BOOLEANS))
        src, dst = (draw(ADDRESS6), valid.dst) if draw(st.integers(0, 7)) == 0 else (valid.src, valid.dst)
        tclass = draw(TCLASS) if draw(BOOLEANS) else valid.tclass
        return Arrival(bytes(packet), 6, valid.protocol, src, dst, tclass)
    for mutate in draw(MUTATIONS) if not keepalive or draw(BOOLEANS) else []:
        mutate(packet)
    fix_outer(packet, total_length=draw(BOOLEANS), gre_checksum=draw(BOOLEANS))
    return Arrival(bytes(packet))


# --- the model: what the kernel's receive path decides, written apart from the core --------------------------------

Expected = tuple[str, str, bytes | Drop | None]  # (delivered | reflected | keepalive reply | dropped, owner, what)


def well_formed_problem(inner: bytes, mode: Mode) -> str | None:
    """Why `inner` must not be handed to the TUN (or TAP) device, or None."""
    if mode.value.ethernet:
        return None if len(inner) >= 14 else f"a frame of {len(inner)} bytes"
    if not inner:
        return "empty"
    version = inner[0] >> 4
    if version not in mode.value.families:
        return f"IP version {version} on a {mode.value.name} tunnel"
    if version == 4:
        ihl = (inner[0] & 0x0F) * 4
        if len(inner) < 20 or ihl < 20 or ihl > len(inner):
            return f"IPv4 IHL {ihl} with {len(inner)} bytes"
        if int.from_bytes(inner[2:4], "big") != len(inner):
            return f"IPv4 total length {int.from_bytes(inner[2:4], 'big')} != {len(inner)}"
        if not checksum_is_valid(inner[:ihl]):
            return "IPv4 header checksum"
        return None
    if len(inner) < 40 or int.from_bytes(inner[4:6], "big") + 40 != len(inner):
        return f"IPv6 payload length with {len(inner)} bytes"
    return None


def request_to_reflect(inner: bytes, local: bytes | None, remote: bytes | None) -> bool:
    """A peer's Cisco keepalive: IPv4 from us (`local`) to the peer (`remote`), a GRE header of type 0, version 0."""
    if len(inner) < 24 or inner[0] >> 4 != 4 or inner[9] != 47 or remote is None or inner[16:20] != remote:
        return False
    ihl = (inner[0] & 0x0F) * 4
    if (local is not None and inner[12:16] != local) or len(inner) < ihl + 4:
        return False
    return inner[ihl + 2 : ihl + 4] == b"\x00\x00" and not inner[ihl + 1] & 0x07


def marked_ce(inner: bytes) -> bytes:
    """The inner packet with ECN set to CE (IPv4 header checksum recomputed), as RFC 6040 decapsulation does."""
    out = bytearray(inner)
    if out[0] >> 4 == 6:
        out[1] |= 0x30
        return bytes(out)
    ihl = (out[0] & 0x0F) * 4
    out[1] |= 0x03
    out[10:12] = b"\x00\x00"
    out[10:12] = internet_checksum(out[:ihl]).to_bytes(2, "big")
    return bytes(out)


def embedded_6to4(address: bytes) -> bytes | None:
    """The IPv4 address a 6to4 address (2002:V4ADDR::/48, RFC 3056) embeds, or None for any other address."""
    return address[2:6] if address[:2] == b"\x20\x02" else None


def reflected_to(inner: bytes, source: bytes, destination: bytes) -> bytes:
    """A hub's answer to a spoke's keepalive: its GRE part under a fresh IPv4 header (TTL 255, DF) back to the
    outer address it came from, through the spoke's NAT."""
    body = inner[(inner[0] & 0x0F) * 4 :]
    header = IPv4Header(0, 20 + len(body), 0, 0x4000, 255, 47, 0, source, destination)
    return header.with_checksum().pack() + body


class Model:
    """What each packet must do to a Demux holding `tunnels` (added in that order), and the state the verdicts
    leave behind: each sequence window's next expected number, a hub's spokes."""

    def __init__(self, tunnels: list[Tunnel]) -> None:
        self.tunnels = tunnels
        self.tables = {table_of(t.params) for t in tunnels}
        self.next_expected: dict[tuple[str, bytes, int | None], int] = {}  # per tunnel, per spoke for a hub
        self.spokes: dict[str, set[tuple[bytes, int | None]]] = {t.name: set() for t in tunnels}

    def expect(self, arrival: Arrival) -> Expected:
        """The decision for `arrival`, in the kernel's order; the model's state moves as the core's must."""
        if arrival.family == 6:
            return self._after_outer(arrival.protocol + 256, arrival.src, arrival.dst, arrival.tclass, arrival.packet)
        packet = arrival.packet
        if len(packet) < 20:
            return "dropped", "unmatched", Drop.OUTER_MALFORMED
        ihl, total = (packet[0] & 0x0F) * 4, int.from_bytes(packet[2:4], "big")
        if packet[0] >> 4 != 4 or ihl < 20 or not ihl <= total <= len(packet):
            return "dropped", "unmatched", Drop.OUTER_MALFORMED
        if int.from_bytes(packet[6:8], "big") & 0x3FFF:  # MF or an offset: the kernel would have reassembled it
            return "dropped", "unmatched", Drop.OUTER_FRAGMENT
        return self._after_outer(packet[9], packet[12:16], packet[16:20], packet[1], packet[ihl:total])

    def _after_outer(self, table: int, src: bytes, dst: bytes, tos: int, payload: bytes) -> Expected:
        protocol = table & 0xFF
        if table not in self.tables and table + 512 not in self.tables:
            return "dropped", "unmatched", Drop.NO_TUNNEL
        key = seq = None
        csum = csum_valid = False
        hlen = 0
        proto = 0x0800 if protocol == 4 else 0x86DD
        if protocol == 47:  # gre_parse_header
            if len(payload) < 4:
                return "dropped", "unmatched", Drop.GRE_TRUNCATED
            flags, proto = struct.unpack_from("!HH", payload)
            if flags & 0x0007:
                return "dropped", "unmatched", Drop.GRE_VERSION
            if flags & 0x4000:
                return "dropped", "unmatched", Drop.GRE_ROUTING
            csum, has_key, has_seq = bool(flags & 0x8000), bool(flags & 0x2000), bool(flags & 0x1000)
            hlen = 4 + 4 * (csum + has_key + has_seq)
            if len(payload) < hlen:
                return "dropped", "unmatched", Drop.GRE_TRUNCATED
            at = 8 if csum else 4
            key = int.from_bytes(payload[at : at + 4], "big") if has_key else None
            at += 4 if has_key else 0
            seq = int.from_bytes(payload[at : at + 4], "big") if has_seq else None
            csum_valid = csum and checksum_is_valid(payload)
        if proto == gre.PROTO_TEB and table + 512 in self.tables:
            table += 512  # gretap tunnels are looked up apart
        if table not in self.tables:
            return "dropped", "unmatched", Drop.NO_TUNNEL
        t = expected_owner(self.tunnels, table, dst, src, key)
        if t is None:
            blamed = blamed_for_key(self.tunnels, table, dst, src)
            return ("dropped", blamed.name, Drop.KEY_MISMATCH) if blamed else ("dropped", "unmatched", Drop.NO_TUNNEL)
        p = t.params
        drop: Callable[[Drop], Expected] = lambda reason: ("dropped", t.name, reason)  # noqa: E731
        if csum and not csum_valid:  # ip_tunnel_rcv: a checksum present is verified, and must agree with icsum
            return drop(Drop.CSUM_BAD)
        if csum != p.icsum:
            return drop(Drop.CSUM_UNEXPECTED if csum else Drop.CSUM_MISSING)
        if proto == 0 and len(payload) == hlen and t.line is not None:
            return "keepalive reply", t.name, None  # our own, routed back: no sequence number to check
        window = (t.name, b"", None)
        if p.hub is not None:  # each spoke (outer source, key) has its own window, and takes room in the table
            if (src, key) not in self.spokes[t.name]:
                if len(self.spokes[t.name]) >= p.hub.max_peers:
                    return drop(Drop.HUB_FULL)
                self.spokes[t.name].add((src, key))
            window = (t.name, src, key)
        if p.iseq:  # ip_tunnel_rcv: (s32)(seq - i_seqno) < 0 is dropped; the window moves before later checks
            if seq is None:
                return drop(Drop.SEQ_MISSING)
            expected = self.next_expected.get(window)
            if expected is not None and (seq - expected) % (1 << 32) >= 1 << 31:
                return drop(Drop.SEQ_OLD)
            self.next_expected[window] = (seq + 1) % (1 << 32)
        inner = payload[hlen:]
        gre_mode = p.mode.value.is_gre
        if not inner:
            return drop(Drop.INNER_MALFORMED)
        if proto == 0x0800:
            if inner[0] >> 4 != 4:
                return drop(Drop.INNER_MALFORMED if gre_mode else Drop.FAMILY)
            ihl = (inner[0] & 0x0F) * 4
            length = int.from_bytes(inner[2:4], "big") if len(inner) >= 4 else 0
            if len(inner) < 20 or ihl < 20 or len(inner) < ihl or not ihl <= length <= len(inner):
                return drop(Drop.INNER_MALFORMED)
            if not checksum_is_valid(inner[:ihl]):
                return drop(Drop.INNER_MALFORMED)
            inner, ecn = inner[:length], inner[1] & 3
        elif proto == 0x86DD:
            if inner[0] >> 4 != 6:
                return drop(Drop.INNER_MALFORMED if gre_mode else Drop.FAMILY)
            if len(inner) < 40 or 40 + int.from_bytes(inner[4:6], "big") > len(inner):
                return drop(Drop.INNER_MALFORMED)
            inner, ecn = inner[: 40 + int.from_bytes(inner[4:6], "big")], (inner[1] >> 4) & 3
        elif proto == gre.PROTO_TEB and p.mode.value.ethernet:
            if len(inner) < 14:
                return drop(Drop.INNER_MALFORMED)
            return self._frame(t, tos, inner)
        else:
            return drop(Drop.GRE_PROTOCOL)
        if tos & 3 == 3:  # RFC 6040 4.2: outer CE
            if ecn == 0:
                return drop(Drop.ECN_CE_NOT_ECT)
            if ecn != 3:
                inner = marked_ce(inner)
        if p.mode is Mode.SIT and p.remote is None:  # packet_is_spoofed: 6to4 addresses embed the outer ones
            source, destination = embedded_6to4(inner[8:24]), embedded_6to4(inner[24:40])
            if (source is not None and source != src) or (destination is not None and destination != dst):
                return drop(Drop.SIT_SPOOFED)
        if p.reflect_keepalives and inner[0] >> 4 == 4:  # after RFC 6040: a CE over Not-ECT is dropped first
            if p.hub is None and request_to_reflect(inner, p.local, p.remote):
                return "reflected", t.name, inner
            if p.hub is not None and request_to_reflect(inner, p.local, inner[16:20]):
                return "reflected", t.name, reflected_to(inner, dst, src)
        if p.hub is not None and key == SPOKE_KEY:  # the spoke's inner sources: its prefixes only
            source = inner[12:16] if proto == 0x0800 else inner[8:24]
            if ipaddress.ip_address(source) not in SPOKE_PREFIX:
                return drop(Drop.SPOKE_SOURCE)
        return "delivered", t.name, inner

    @staticmethod
    def _frame(t: Tunnel, tos: int, frame: bytes) -> Expected:
        """gretap: the frame as it is, but for RFC 6040 on an IP packet inside it."""
        ethertype, ip = int.from_bytes(frame[12:14], "big"), frame[14:]
        carried = (ethertype == 0x0800 and len(ip) >= 20) or (ethertype == 0x86DD and len(ip) >= 40)
        if tos & 3 == 3 and carried:
            ecn = ip[1] & 3 if ethertype == 0x0800 else (ip[1] >> 4) & 3
            if ecn == 0:
                return "dropped", t.name, Drop.ECN_CE_NOT_ECT
            if ecn != 3:
                frame = frame[:14] + marked_ce(ip)
        return "delivered", t.name, frame


def counter_snapshot(demux: Demux, tunnels: list[Tunnel]) -> dict[tuple[str, str], int]:
    """Every counter of the demux, by (owner, counter name)."""
    snap: dict[tuple[str, str], int] = {}
    for name, counters in [("unmatched", demux.unmatched), *((t.name, t.counters) for t in tunnels)]:
        snap[(name, "rx_packets")] = counters.rx_packets
        snap[(name, "rx_bytes")] = counters.rx_bytes
        for reason, n in counters.drops.items():
            snap[(name, reason.value)] = n
    for t in tunnels:
        snap[(t.name, "reflected")] = t.reflected  # a peer's keepalives sent back
        if t.line is not None:
            snap[(t.name, "keepalive replies")] = t.line.replies  # counted by the I/O shell, never by the core
    return snap


def counters_for(expected: Expected) -> dict[tuple[str, str], int]:
    """The counters an expected decision moves: exactly these, by exactly these amounts."""
    kind, owner, what = expected
    if kind == "delivered":
        assert isinstance(what, bytes)
        return {(owner, "rx_packets"): 1, (owner, "rx_bytes"): len(what)}
    if kind == "reflected":
        return {(owner, "reflected"): 1}
    if kind == "keepalive reply":
        return {}  # the I/O shell counts it on the line protocol (LineProtocol.reply)
    assert isinstance(what, Drop)
    return {(owner, what.value): 1}


class Receiver:
    """A Demux under test, beside the model of the same tunnels."""

    def __init__(self, demux: Demux, tunnels: list[Tunnel]) -> None:
        self.demux = demux
        self.tunnels = tunnels
        self.model = Model(tunnels)
        self.history: list[Arrival] = []

    def receive(self, arrival: Arrival) -> Result:
        """Hand `arrival` to the core and check the decision, the bytes and the counters against the model."""
        self.history.append(arrival)
        expected = self.model.expect(arrival)
        before = counter_snapshot(self.demux, self.tunnels)
        buffer = bytearray(arrival.packet)
        if arrival.family == 4:
            result = self.demux.decapsulate(buffer)
        else:
            result = self.demux.decapsulate6(arrival.protocol, arrival.src, arrival.dst, arrival.tclass, buffer)
        assert bytes(buffer) == arrival.packet, "decapsulate modified its input"
        after = counter_snapshot(self.demux, self.tunnels)
        moved = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
        kind, owner, what = decision(result)
        # A drop names no tunnel: whose counter moved (below) says where it was counted.
        assert (kind, what) == (expected[0], expected[2]) and owner in ("", expected[1]), (
            f"decided {(kind, owner, what)}, the model {expected}, for {arrival}"
        )
        assert moved == counters_for(expected), f"counters moved {moved} for {expected}"
        if isinstance(result, Received):
            problem = well_formed_problem(bytes(result.inner), result.tunnel.params.mode)
            assert problem is None, f"delivered, but {problem}: {arrival}"
        elif isinstance(result, Reflect):
            problem = well_formed_problem(bytes(result.packet), Mode.IPIP)
            assert problem is None, f"reflected, but {problem}: {arrival}"
        return result


def decision(result: Result) -> Expected:
    """What the core decided, in the model's terms."""
    if isinstance(result, Received):
        assert isinstance(result.tunnel, Tunnel)
        return "delivered", result.tunnel.name, bytes(result.inner)
    if isinstance(result, Reflect):
        return "reflected", result.tunnel.name, bytes(result.packet)
    if isinstance(result, KeepaliveReply):
        return "keepalive reply", result.tunnel.name, None
    assert isinstance(result, Drop), f"decapsulate returned {result!r}"
    return "dropped", "", result


# --- the properties -------------------------------------------------------------------------------------------------


@FUZZ
@given(data=st.data(), setup=demuxes())
def test_decapsulate_never_raises_and_decides_every_packet_as_the_model_of_the_kernels_rules_does(
    data: st.DataObject, setup: tuple[Demux, list[Tunnel]]
) -> None:
    demux, tunnels = setup
    receiver = Receiver(demux, tunnels)
    senders: Senders = {}
    depths = []
    for _ in range(data.draw(st.integers(1, 4), label="packets")):
        arrival = hostile_packet(data.draw, tunnels, senders, receiver.history)
        result = receiver.receive(arrival)
        depths.append(depth(result))
    # Steer toward packets that get far along the receive path, and toward examples that stop at many places.
    target(float(max(depths)), label="deepest check reached")
    target(float(len(set(depths))), label="distinct checks reached")


PADDING = st.binary(max_size=8)


@ROUND_TRIP
@given(data=st.data(), setup=demuxes())
def test_decapsulate_of_encapsulate_is_the_inner_packet_on_the_tunnel_the_lookup_order_picks(
    data: st.DataObject, setup: tuple[Demux, list[Tunnel]]
) -> None:
    demux, tunnels = setup
    receiver = Receiver(demux, tunnels)
    senders: Senders = {}
    for _ in range(data.draw(st.integers(1, 4), label="packets")):
        valid = valid_packet(data.draw, tunnels, senders)
        # Bytes after the outer total length (link-layer padding) are not part of the packet, nor of its checksum.
        padding = data.draw(PADDING, label="padding") if valid.arrival.family == 4 else b""
        result = receiver.receive(valid.arrival.with_packet(valid.arrival.packet + padding))
        if result is Drop.HUB_FULL:  # a fourth spoke: the model said so too
            continue
        assert isinstance(result, Received), f"valid packet for {valid.owner.name} dropped: {result}"
        assert result.tunnel is valid.owner
        assert bytes(result.inner) == valid.inner


# --- found by the fuzzer, and the model's own checks ------------------------------------------------------------------


def test_a_peers_keepalive_under_outer_ce_over_not_ect_is_dropped_not_reflected() -> None:
    ours = Tunnel(TunnelParams("gre0", Mode.GRE, A, B))
    demux = Demux()
    demux.add(ours)
    keepalive = Tunnel(TunnelParams("peer", Mode.GRE, B, A)).encapsulate(inner_request(B, A, None, False))
    assert isinstance(keepalive, bytes)
    packet = bytearray(keepalive)
    packet[1] |= 0x03  # CE on the underlay; the inner packet (TOS 0) is Not-ECT
    packet[10:12] = b"\x00\x00"
    packet[10:12] = internet_checksum(packet[:20]).to_bytes(2, "big")
    assert Model([ours]).expect(Arrival(bytes(packet))) == ("dropped", "gre0", Drop.ECN_CE_NOT_ECT)
    assert demux.decapsulate(bytes(packet)) is Drop.ECN_CE_NOT_ECT


def test_the_model_and_the_core_agree_on_a_hubs_room_its_spokes_prefixes_and_their_keepalives() -> None:
    """The hub's drops the fuzzer reaches least often, each once on purpose (the Receiver checks model and core)."""
    hub = Tunnel(TunnelParams("hub", Mode.GRE, D, None, ikey=HUB_KEY, okey=HUB_KEY, hub=HUB))
    demux = Demux()
    demux.add(hub)
    receiver = Receiver(demux, [hub])

    def send(src: bytes, key: int, inner: bytes) -> Result:
        packet = peer(hub, src, D, key, None, None).encapsulate(inner)
        assert isinstance(packet, bytes)
        return receiver.receive(Arrival(packet))

    # Any IPv4 packet from INSIDE or OUTSIDE will do (inner_request(local, remote) is one from remote to local).
    inside = inner_request(bytes([203, 0, 113, 1]), INSIDE, None, False)
    outside = inner_request(bytes([203, 0, 113, 1]), OUTSIDE, None, False)
    assert isinstance(send(C, HUB_KEY, outside), Received)  # the shared key: any inner source
    assert isinstance(send(B, SPOKE_KEY, inside), Received)  # the spoke's key: its prefix
    assert send(B, SPOKE_KEY, outside) is Drop.SPOKE_SOURCE
    assert send(STRANGER, HUB_KEY, inside) is Drop.HUB_FULL  # a third spoke: room for two
    reflected = send(C, HUB_KEY, inner_request(C, D, HUB_KEY, False))  # C's keepalive, sent back to C
    assert isinstance(reflected, Reflect) and bytes(reflected.packet)[12:20] == D + C


def test_in_ci_the_fuzz_target_runs_derandomised_with_the_budget_ci_names() -> None:
    """Under USERTUNNEL_REQUIRE_NETNS=1 (.ci/run) conftest loads the `ci` profile before this module builds its
    settings: the examples are the same on every run (derandomize), USERTUNNEL_FUZZ_EXAMPLES of them."""
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "USERTUNNEL_REQUIRE_NETNS": "1", "USERTUNNEL_FUZZ_EXAMPLES": "6000"}
    env.pop("HYPOTHESIS_PROFILE", None)
    show = "import conftest, test_fuzz_decapsulate as f; print(f.FUZZ.derandomize, f.FUZZ.max_examples, "
    show += "f.ROUND_TRIP.max_examples)"
    done = subprocess.run([sys.executable, "-c", show], cwd=tests, env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["True", "6000", "1500"], done.stdout + done.stderr


# --- coverage-guided, by hand: python tests/test_fuzz_decapsulate.py [atheris/libFuzzer options] -----------------

if __name__ == "__main__":
    try:
        import atheris  # type: ignore[import-not-found]
    except ImportError:
        sys.exit("atheris is not installed (pip install atheris); the same properties run under pytest with hypothesis")
    atheris.instrument_all()
    fuzz_one = test_decapsulate_never_raises_and_decides_every_packet_as_the_model_of_the_kernels_rules_does
    atheris.Setup(sys.argv, fuzz_one.hypothesis.fuzz_one_input)  # type: ignore[attr-defined]
    atheris.Fuzz()
