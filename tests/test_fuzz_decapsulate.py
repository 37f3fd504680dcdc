"""Fuzzing `Demux.decapsulate`, the receive path: whatever arrives on the raw socket.

Inputs start from valid packets, built by the core's own `Tunnel.encapsulate` for
random tunnel parameters and random inner packets (IPv4 ICMP / TCP / UDP, IPv6,
Cisco keepalives), then are mutated (bit flips, truncations, insertions,
deletions, overwrites at header offsets, outer CE; lengths and checksums fixed
up or not, so that mutations reach later checks), sent by peers whose options
disagree with ours, replayed, or are pure random bytes. Several tunnels share
one `Demux`: keys, no key, key 0, remote-only, local-only and wildcard
lookups, GRE and IPIP, with or without keepalives and their reflection.

Properties, for every packet:
- decapsulate never raises and returns `Received`, `Reflect`, `KeepaliveReply`
  or a `Drop`, and does not modify its input;
- a `Received` inner packet is a well-formed IPv4 (version 4, IHL >= 5, total
  length == its length, header checksum valid) or IPv6 (payload length + 40 ==
  its length) packet of a family the tunnel's mode carries; a `Reflect` packet
  is a well-formed IPv4 packet;
- exactly one counter moves by one: the tunnel's rx_packets (and rx_bytes by
  the inner length), its reflected count, or one drop counter, of that reason;
  a `KeepaliveReply` moves none in the core (the I/O shell counts it on the
  line protocol);
- what is delivered, reflected or taken as a keepalive reply obeys every
  receive rule of its tunnel, checked against a model written here: the lookup
  order, the key, the checksum rules, the sequence window, the inner packet cut
  to its length, RFC 6040 (outer CE);
and decapsulate(encapsulate(x)) == x on the tunnel the lookup order picks, for
valid x, with or without link-layer padding after the packet.

`hypothesis.target` steers the search toward packets that get far along the
receive path (outer header, GRE, lookup, checksum, sequence, inner header,
ECN, delivered) and toward examples that stop at many places: coverage-guided-
ish. The budget is USERTUNNEL_FUZZ_EXAMPLES (default 2000, about 12 s here);
`python tests/test_fuzz_decapsulate.py` runs the same test coverage-guided
under atheris, when atheris is installed (it is not a dependency).
"""

from __future__ import annotations

import os
import struct
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
from usertunnel.core.lookup import Rule
from usertunnel.core.params import Mode, TunnelParams

EXAMPLES = int(os.environ.get("USERTUNNEL_FUZZ_EXAMPLES", "2000"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=False,
    # No example database: with `target`, hypothesis keeps a Pareto front of examples in it, and that
    # bookkeeping costs more than the test. A failure prints its example and the blob to reproduce it.
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ROUND_TRIP = settings(FUZZ, max_examples=max(EXAMPLES // 4, 100))  # a narrower input space

A, B, C, D = (bytes([198, 51, 100, 1]), bytes([198, 51, 100, 2]), bytes([192, 0, 2, 3]), bytes([192, 0, 2, 4]))
STRANGER = bytes([203, 0, 113, 77])  # no tunnel names it
ADDRESSES = [A, B, C, D, STRANGER]

# Tunnels a Demux may hold: (mode, local, remote, ikey). No two of a mode share local, remote and ikey.
POOL: list[tuple[Mode, bytes | None, bytes | None, int | None]] = [
    (Mode.GRE, A, B, 7),
    (Mode.GRE, A, B, None),
    (Mode.GRE, A, B, 0),  # key 0 is a key: not the same as no key
    (Mode.GRE, None, C, 9),  # remote only
    (Mode.GRE, None, B, None),  # remote only, shadowed by (A, B, None) for packets to A
    (Mode.GRE, None, B, 7),  # remote only: beats (A, None, 7) for packets from B to A, loses to (A, B, 7)
    (Mode.GRE, A, None, 7),  # local only
    (Mode.GRE, A, None, None),  # local only: loses to (None, B, None) for packets from B
    (Mode.GRE, None, None, 0xFFFFFFFF),  # wildcard
    (Mode.GRE, None, None, None),  # wildcard, no key
    (Mode.IPIP, A, B, None),
    (Mode.IPIP, D, None, None),
    (Mode.IPIP, None, None, None),
]

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
    Drop.SEQ_MISSING: 5,
    Drop.SEQ_OLD: 5,
    Drop.INNER_MALFORMED: 6,
    Drop.FAMILY: 6,
    Drop.GRE_PROTOCOL: 6,
    Drop.ECN_CE_NOT_ECT: 7,
}
DELIVERED_DEPTH = 8


def depth(result: Result) -> int:
    if isinstance(result, Drop):
        return DEPTH[result]
    return 5 if isinstance(result, KeepaliveReply) else DELIVERED_DEPTH  # a keepalive reply skips the window


# --- an independent model of the lookup (the kernel's ip_tunnel_lookup order) ----------------------------------


def expected_owner(tunnels: list[Tunnel], protocol: int, dst: bytes, src: bytes, key: int | None) -> Tunnel | None:
    """The tunnel that must receive a packet, by the four rules in order, the key matching exactly."""
    candidates = [t for t in tunnels if t.params.mode.value.ip_protocol == protocol and t.params.ikey == key]
    for local, remote in ((dst, src), (None, src), (dst, None), (None, None)):
        for t in candidates:
            if t.params.local == local and t.params.remote == remote:
                return t
    return None


# --- strategies ---------------------------------------------------------------------------------------------------
# Strategies are built once, here: hypothesis re-analyses every new strategy object it is handed, and building
# them per draw (a composite with arguments, sampled_from a fresh list) costs more than the test itself.

BOOLEANS = st.booleans()
BYTES = st.integers(0, 255)
ADDRESS = st.sampled_from(ADDRESSES)
TTL = st.one_of(st.none(), st.integers(1, 255))
TOS = st.one_of(st.none(), BYTES)
IPV4_OPTIONS = st.sampled_from([b"", b"\x01" * 4, b"\x01" * 8 + b"\x00" * 4, b"\x01" * 40])
TRANSPORT = st.sampled_from([1, 6, 17])  # ICMP, TCP, UDP
DATA = st.binary(max_size=64)


@st.composite
def demuxes(draw: st.DrawFn) -> tuple[Demux, list[Tunnel]]:
    """A Demux with a few tunnels from POOL, each with random iseq / icsum (GRE)."""
    chosen = draw(st.lists(st.sampled_from(range(len(POOL))), min_size=1, max_size=7, unique=True))
    demux = Demux()
    tunnels = []
    for i in chosen:
        mode, local, remote, ikey = POOL[i]
        is_gre = mode is Mode.GRE
        iseq, icsum = is_gre and draw(BOOLEANS), is_gre and draw(BOOLEANS)
        # Keepalives of our own need GRE with both addresses; reflecting a peer's is the default.
        keepalive = KeepaliveParams() if is_gre and local and remote and draw(BOOLEANS) else None
        params = TunnelParams(
            f"t{i}", mode, local, remote, ikey=ikey, okey=ikey, iseq=iseq, icsum=icsum, keepalive=keepalive,
            reflect_keepalives=draw(BOOLEANS),
        )  # fmt: skip
        tunnel = Tunnel(params)
        demux.add(tunnel)
        tunnels.append(tunnel)
    return demux, tunnels


@st.composite
def inner_packets(draw: st.DrawFn, families: tuple[int, ...]) -> bytes:
    """A valid inner packet: IPv4 (ICMP echo, TCP, UDP, with or without options) or IPv6, any TOS / ECN."""
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
        src=bytes([203, 0, 113, 2]),
        dst=bytes([203, 0, 113, 1]),
        options=options,
    )
    if protocol == 6:
        # A valid TCP checksum (UDP's 0 means "none", which is valid): a sender's GRE checksum may be
        # derived from it (encap.inner_sum).
        pseudo = header.src + header.dst + struct.pack("!BBH", 0, 6, len(body))
        body = body[:16] + struct.pack("!H", internet_checksum(pseudo + body)) + body[18:]
    return header.with_checksum().pack() + body


INNER = {(4,): inner_packets((4,)), (4, 6): inner_packets((4, 6))}


@dataclass
class Valid:
    """A valid packet, built for the tunnel the lookup will pick, and what it carries."""

    packet: bytes
    owner: Tunnel
    inner: bytes


Senders = dict[tuple[str, bytes, bytes], Tunnel]


def peer(owner: Tunnel, src: bytes, dst: bytes, ttl: int | None, tos: int | None, lie: str | None = None) -> Tunnel:
    """The sending end for `owner`: our addresses swapped, its output options matching our input options
    (or, with `lie`, one of them not: the checksum, the sequence number or the key)."""
    p = owner.params
    okey, oseq, ocsum = p.ikey, p.iseq, p.icsum
    if lie == "csum":
        ocsum = not ocsum
    elif lie == "seq":
        oseq = not oseq
    elif lie == "key":
        okey = None if okey is not None else 7
    pmtudisc = ttl is not None  # iproute2 refuses a fixed ttl with nopmtudisc
    params = TunnelParams(
        "peer", p.mode, src, dst, okey=okey, oseq=oseq, ocsum=ocsum, ttl=ttl, tos=tos, pmtudisc=pmtudisc
    )
    return Tunnel(params)


def valid_packet(
    draw: Callable[..., Any], tunnels: list[Tunnel], senders: Senders, lie: str | None = None, keepalive: bool = False
) -> Valid:
    """A packet for a tunnel of the demux, from the addresses it accepts (any address where it has a wildcard);
    with `lie`, from a peer whose output options disagree with that tunnel's input options on one point; with
    `keepalive`, the peer's Cisco keepalive (an IPv4 packet from us back to the peer, bare GRE of type 0)."""
    wanted = tunnels[draw(st.integers(0, len(tunnels) - 1))]
    src = wanted.params.remote or draw(ADDRESS)
    dst = wanted.params.local or draw(ADDRESS)
    assume(src != dst)  # the peer's tunnel would have local equal to remote, which TunnelParams refuses
    protocol = wanted.params.mode.value.ip_protocol
    owner = expected_owner(tunnels, protocol, dst, src, wanted.params.ikey)
    assert owner is not None  # `wanted` itself matches
    if keepalive and owner.params.mode is Mode.GRE:
        # The peer builds it from its own point of view: its local (src) and remote (dst), its input key and
        # icsum; or one whose inner packet comes from another address than ours (not ours to reflect).
        inner = inner_request(src, draw(ADDRESS) if draw(BOOLEANS) else dst, owner.params.okey, owner.params.ocsum)
    else:
        inner = draw(INNER[tuple(sorted(owner.params.mode.value.families))])
    # One sender per (owner, addresses), kept across the example; the owner's peer numbers its packets with one
    # counter whatever the addresses (a wildcard tunnel has one window for all of them).
    sender = senders.get((owner.name, src, dst))
    if lie is not None and owner.params.mode is Mode.GRE:
        sender = peer(owner, src, dst, draw(TTL), draw(TOS), lie)
    elif sender is None:
        sender = senders[(owner.name, src, dst)] = peer(owner, src, dst, draw(TTL), draw(TOS))
    sender.oseq_next = max((s.oseq_next for (name, _, _), s in senders.items() if name == owner.name), default=0)
    packet = sender.encapsulate(inner)
    assert isinstance(packet, bytes), packet
    return Valid(packet, owner, inner)


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


def fix_outer(packet: bytearray, total_length: bool, gre_checksum: bool) -> None:
    """Make a mutated packet pass the earlier checks, so the mutation is judged by a later one."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return
    ihl = (packet[0] & 0x0F) * 4
    if total_length:
        packet[2:4] = min(len(packet), 0xFFFF).to_bytes(2, "big")
    if gre_checksum and packet[9] == 47 and len(packet) >= ihl + 8 and packet[ihl] & 0x80:
        end = min(len(packet), int.from_bytes(packet[2:4], "big"))
        if end >= ihl + 8:
            packet[ihl + 4 : ihl + 6] = b"\x00\x00"
            packet[ihl + 4 : ihl + 6] = internet_checksum(packet[ihl:end]).to_bytes(2, "big")


HOSTILE_KIND = st.sampled_from(
    ["mutated", "mutated", "mutated", "random", "plausible", "replayed", "lying peer", "keepalive", "keepalive reply"]
)
LIE = st.sampled_from(["csum", "seq", "key"])
RANDOM_PACKET = st.binary(max_size=120)
FRAGMENT_WORD = st.sampled_from([0, 0x4000, 0x2000, 0x0001])
OUTER_PROTOCOL = st.sampled_from([47, 4, 41, 17])
GRE_PROTOCOL = st.sampled_from([gre.PROTO_IPV4, gre.PROTO_IPV6, gre.PROTO_TEB, 0])
BODY = st.binary(max_size=100)


def hostile_packet(draw: Callable[..., Any], tunnels: list[Tunnel], senders: Senders, history: list[bytes]) -> bytes:
    """A mutated valid packet, random bytes, random bytes behind a plausible outer IPv4 header, a packet of
    this example sent again, or a packet from a peer whose options disagree with the receiving tunnel's."""
    kind = draw(HOSTILE_KIND)
    if kind == "replayed" and history:
        return history[draw(st.integers(0, len(history) - 1))]
    if kind == "lying peer":
        return valid_packet(draw, tunnels, senders, lie=draw(LIE)).packet
    if kind == "keepalive reply":  # one of our keepalives, routed back by the peer (or one we never sent)
        own = [t for t in tunnels if t.params.mode is Mode.GRE and t.params.local and t.params.remote]
        if own:
            t = own[draw(st.integers(0, len(own) - 1))]
            assert t.params.local and t.params.remote
            reply = bytearray(inner_request(t.params.local, t.params.remote, t.params.ikey, t.params.icsum))
            for mutate in draw(MUTATIONS) if draw(BOOLEANS) else []:
                mutate(reply)
            return bytes(reply)
    keepalive = kind == "keepalive"
    if kind == "random":
        return bytes(draw(RANDOM_PACKET))
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
        return bytes(packet)
    packet = bytearray(valid_packet(draw, tunnels, senders, keepalive=keepalive).packet)
    for mutate in draw(MUTATIONS) if not keepalive or draw(BOOLEANS) else []:
        mutate(packet)
    fix_outer(packet, total_length=draw(BOOLEANS), gre_checksum=draw(BOOLEANS))
    return bytes(packet)


# --- checking one call ----------------------------------------------------------------------------------------------


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


def request_to_reflect(inner: bytes, local: bytes | None, remote: bytes | None) -> bool:
    """A peer's Cisco keepalive: IPv4 from us (`local`) to the peer (`remote`), a GRE header of type 0, version 0."""
    if len(inner) < 24 or inner[0] >> 4 != 4 or inner[9] != 47 or remote is None or inner[16:20] != remote:
        return False
    ihl = (inner[0] & 0x0F) * 4
    if (local is not None and inner[12:16] != local) or len(inner) < ihl + 4:
        return False
    return inner[ihl + 2 : ihl + 4] == b"\x00\x00" and not inner[ihl + 1] & 0x07


def well_formed_problem(inner: bytes, mode: Mode) -> str | None:
    """Why `inner` must not be handed to the TUN device, or None."""
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


@dataclass
class Wire:
    """What an outer packet says, read here independently of the core (None from `read_wire`: unreadable)."""

    src: bytes
    dst: bytes
    protocol: int
    tos: int
    key: int | None
    seq: int | None
    csum: bool
    csum_valid: bool
    proto: int  # of the inner packet: the GRE protocol type, 0x0800 for IPIP
    inner: bytes  # everything after the tunnel headers, up to the outer total length


def read_wire(packet: bytes) -> Wire | None:
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl, total = (packet[0] & 0x0F) * 4, int.from_bytes(packet[2:4], "big")
    if ihl < 20 or not ihl <= total <= len(packet) or int.from_bytes(packet[6:8], "big") & 0x3FFF:
        return None
    src, dst, protocol, tos = packet[12:16], packet[16:20], packet[9], packet[1]
    if protocol == 4:
        return Wire(src, dst, protocol, tos, None, None, False, True, 0x0800, packet[ihl:total])
    if protocol != 47 or total - ihl < 4:
        return None
    flags, proto = struct.unpack_from("!HH", packet, ihl)
    csum, has_key, has_seq = bool(flags & 0x8000), bool(flags & 0x2000), bool(flags & 0x1000)
    length = 4 + 4 * (csum + has_key + has_seq)
    if flags & 0x4007 or total - ihl < length:
        return None
    at = ihl + (8 if csum else 4)
    key = int.from_bytes(packet[at : at + 4], "big") if has_key else None
    at += 4 if has_key else 0
    seq = int.from_bytes(packet[at : at + 4], "big") if has_seq else None
    valid = not csum or checksum_is_valid(packet[ihl:total])
    return Wire(src, dst, protocol, tos, key, seq, csum, valid, proto, packet[ihl + length : total])


def newer(seq: int, last: int | None) -> bool:
    """RFC 1982 serial arithmetic on 32 bits: `seq` comes after `last` (anything does, before the first)."""
    return last is None or 0 < (seq - last) % (1 << 32) < (1 << 31)


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


# Drops decided after the sequence window accepted the number (Linux's ip_tunnel_rcv advances it first).
PAST_THE_WINDOW = {Drop.INNER_MALFORMED, Drop.FAMILY, Drop.GRE_PROTOCOL, Drop.ECN_CE_NOT_ECT}


class Receiver:
    """A Demux under test, with a model of each tunnel's sequence window kept from what the core decided."""

    def __init__(self, demux: Demux, tunnels: list[Tunnel]) -> None:
        self.demux = demux
        self.tunnels = tunnels
        self.by_name = {t.name: t for t in tunnels}
        self.last_seq: dict[str, int | None] = {t.name: None for t in tunnels}
        self.history: list[bytes] = []

    def receive(self, packet: bytes) -> Result:
        """decapsulate `packet`, checking every per-call property; the result."""
        self.history.append(packet)
        before = counter_snapshot(self.demux, self.tunnels)
        buffer = bytearray(packet)
        result = self.demux.decapsulate(buffer)
        assert bytes(buffer) == packet, "decapsulate modified its input"
        after = counter_snapshot(self.demux, self.tunnels)
        moved = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
        if isinstance(result, Received):
            assert result.tunnel in self.tunnels and isinstance(result.rule, Rule)
            inner = bytes(result.inner)
            problem = well_formed_problem(inner, result.tunnel.params.mode) or self.unjustified(packet, result)
            assert problem is None, f"delivered, but {problem}: {inner.hex()} from {packet.hex()}"
            name = result.tunnel.name
            expected = {(name, "rx_packets"): 1, (name, "rx_bytes"): len(inner)}
            assert moved == expected, f"counters moved {moved} for a packet delivered on {name}"
        elif isinstance(result, Reflect):
            assert result.tunnel in self.tunnels
            reflected = bytes(result.packet)
            problem = well_formed_problem(reflected, Mode.IPIP) or self.unjustified(packet, result)
            assert problem is None, f"reflected, but {problem}: {reflected.hex()} from {packet.hex()}"
            name = result.tunnel.name
            assert moved == {(name, "reflected"): 1}, f"counters moved {moved} for a keepalive reflected on {name}"
        elif isinstance(result, KeepaliveReply):
            problem = self.unjustified(packet, result)
            assert problem is None, f"taken as our keepalive's reply, but {problem}: {packet.hex()}"
            # The core counts nothing: the I/O shell counts the reply on the line protocol (LineProtocol.reply).
            assert moved == {}, f"counters moved {moved} for a keepalive reply"
        else:
            assert isinstance(result, Drop), f"decapsulate returned {result!r}"
            assert len(moved) == 1, f"counters moved {moved} for drop {result.value}"
            ((name, reason), delta) = next(iter(moved.items()))
            assert (reason, delta) == (result.value, 1), f"drop {result.value} counted as {moved}"
            self.check_window(packet, name, result)
        return result

    def unjustified(self, packet: bytes, result: Received | Reflect | KeepaliveReply) -> str | None:
        """Which receive rule of its tunnel a packet delivered, reflected or taken as a keepalive reply breaks,
        or None; advances the window model as the core must have."""
        t, wire = result.tunnel, read_wire(packet)
        p = t.params
        if wire is None:
            return "the outer packet is malformed, a fragment, or has a GRE version, routing bit or short header"
        if wire.protocol != p.mode.value.ip_protocol:
            return f"outer protocol {wire.protocol} on a {p.mode.value.name} tunnel"
        owner = expected_owner(self.tunnels, wire.protocol, wire.dst, wire.src, wire.key)
        if owner is not t:
            return f"lookup order gives {owner and owner.name}, not {t.name}"
        if wire.csum != p.icsum or not wire.csum_valid:
            return f"GRE checksum present={wire.csum} valid={wire.csum_valid} on a tunnel with icsum={p.icsum}"
        if isinstance(result, KeepaliveReply):  # recognised before the sequence check: the peer only routed it
            if t.line is None or wire.proto != 0 or wire.inner:
                return f"keepalive={t.line is not None}, protocol type {wire.proto:#06x}, {len(wire.inner)} bytes after"
            return None
        if p.iseq:
            if wire.seq is None or not newer(wire.seq, self.last_seq[t.name]):
                return f"sequence number {wire.seq} not after {self.last_seq[t.name]}"
            self.last_seq[t.name] = wire.seq
        version = wire.inner[0] >> 4 if wire.inner else None
        if (wire.proto, version) not in ((0x0800, 4), (0x86DD, 6)):
            return f"IPv{version} inner packet with protocol type {wire.proto:#06x}"
        length = int.from_bytes(wire.inner[2:4], "big") if version == 4 else 40 + int.from_bytes(wire.inner[4:6], "big")
        inner = wire.inner[:length]
        to_reflect = p.reflect_keepalives and request_to_reflect(inner, p.local, p.remote)
        if isinstance(result, Reflect) != to_reflect:
            return "a keepalive to reflect delivered" if to_reflect else "not a keepalive to reflect"
        if wire.tos & 3 == 3 and isinstance(result, Reflect):
            return None  # known: reflected before RFC 6040 (see test_a_peers_keepalive_under_outer_ce_over_not_ect_...)
        if wire.tos & 3 == 3:
            if (inner[1] if version == 4 else inner[1] >> 4) & 3 == 0:
                return "outer CE over a Not-ECT inner packet"
            inner = marked_ce(inner)
        out = bytes(result.packet if isinstance(result, Reflect) else result.inner)
        if out != inner:
            return f"the inner packet should be {inner.hex()}"
        return None

    def check_window(self, packet: bytes, name: str, drop: Drop) -> None:
        """A seq_old drop must be old by the model; drops after the window advance the model as the core did."""
        t = self.by_name.get(name)
        if t is None or not t.params.iseq:
            return
        wire = read_wire(packet)
        if drop is Drop.SEQ_OLD:
            assert wire is not None and wire.seq is not None, (
                f"seq_old for a packet without a sequence number: {packet.hex()}"
            )
            assert not newer(wire.seq, self.last_seq[name]), (
                f"seq {wire.seq} after {self.last_seq[name]} dropped as old"
            )
        elif drop in PAST_THE_WINDOW:
            assert wire is not None and wire.seq is not None and newer(wire.seq, self.last_seq[name]), packet.hex()
            self.last_seq[name] = wire.seq


# --- the properties -------------------------------------------------------------------------------------------------


@FUZZ
@given(data=st.data(), setup=demuxes())
def test_decapsulate_never_raises_delivers_only_well_formed_inner_packets_and_counts_each_packet_once(
    data: st.DataObject, setup: tuple[Demux, list[Tunnel]]
) -> None:
    demux, tunnels = setup
    receiver = Receiver(demux, tunnels)
    senders: Senders = {}
    depths = []
    for _ in range(data.draw(st.integers(1, 4), label="packets")):
        packet = hostile_packet(data.draw, tunnels, senders, receiver.history)
        result = receiver.receive(packet)
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
        result = receiver.receive(valid.packet + data.draw(PADDING, label="padding"))
        assert isinstance(result, Received), f"valid packet for {valid.owner.name} dropped: {result}"
        assert result.tunnel is valid.owner
        assert bytes(result.inner) == valid.inner


# --- found by the fuzzer -------------------------------------------------------------------------------------------


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
    assert demux.decapsulate(bytes(packet)) is Drop.ECN_CE_NOT_ECT


# --- coverage-guided, by hand: python tests/test_fuzz_decapsulate.py [atheris/libFuzzer options] -----------------

if __name__ == "__main__":
    try:
        import atheris  # type: ignore[import-not-found]
    except ImportError:
        sys.exit("atheris is not installed (pip install atheris); the same properties run under pytest with hypothesis")
    atheris.instrument_all()
    fuzz_one = test_decapsulate_never_raises_delivers_only_well_formed_inner_packets_and_counts_each_packet_once
    atheris.Setup(sys.argv, fuzz_one.hypothesis.fuzz_one_input)  # type: ignore[attr-defined]
    atheris.Fuzz()
