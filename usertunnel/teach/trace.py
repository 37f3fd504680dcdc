"""`--trace`: each packet's journey through the tunnel, decision by decision, in plain words.

Rules for this file: it decides nothing. The core decides (encapsulate,
decapsulate); this file only describes, from the packet bytes, the core's
result and the state the core had just before, what was decided and why. So
the data path runs the same code with tracing on or off, and with it off the
loop never calls in here at all.

Transmit lines follow the kernel's ipgre_xmit -> ip_tunnel_xmit; receive lines
follow gre_rcv -> ipgre_rcv -> ip_tunnel_lookup -> ip_tunnel_rcv.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from ..core import gre, ipv4
from ..core.drops import Drop
from ..core.encap import Demux, Held, KeepaliveReply, Reflect, Result, Tunnel
from ..core.lookup import Rule
from ..core.sequence import MOD, SequenceState
from .describe import ECN_SHORT, describe, refusal

PROTOCOLS = {1: "ICMP", 4: "IPIP", 6: "TCP", 17: "UDP", 41: "IPv6", 47: "GRE", 58: "ICMPv6"}


def _v4(addr: bytes) -> str:
    return str(ipaddress.IPv4Address(bytes(addr)))


def inner_summary(packet: bytes | bytearray | memoryview) -> str:
    """One phrase for an inner packet, from what the describer says of its IP header: family, addresses,
    protocol, TTL/hop limit, TOS. A packet whose IP header it could not read gets its refusal."""
    e = describe(packet)
    ip = {f.name: f.value for f in e.layers[0].fields} if e.layers else {}
    kind = e.layers[0].kind if e.layers else ""
    numbers = {name: value for name, value in ip.items() if isinstance(value, int)}
    addresses = f"{ip.get('source address')} > {ip.get('destination address')}"
    if kind == "IPv4" and numbers.keys() >= {"DSCP", "ECN", "protocol", "TTL"} and "destination address" in ip:
        tos, proto = numbers["DSCP"] << 2 | numbers["ECN"], numbers["protocol"]
        name = PROTOCOLS.get(proto, str(proto))
        return f"IPv4 {addresses} {name} ttl {numbers['TTL']} tos {tos:#04x} ({ECN_SHORT[tos & 3]})"
    if kind == "IPv6" and numbers.keys() >= {"DSCP", "ECN", "next header", "hop limit"} and "destination address" in ip:
        tc, nh = numbers["DSCP"] << 2 | numbers["ECN"], numbers["next header"]
        return f"IPv6 {addresses} {PROTOCOLS.get(nh, str(nh))} hlim {numbers['hop limit']} tclass {tc:#04x}"
    why = refusal(e)
    return f"{len(packet)} bytes that are not an IP packet" + (f" ({why})" if why else "")


def _gre_words(header: gre.GREHeader) -> str:
    words = [
        f"C={int(header.checksum is not None)} K={int(header.key is not None)} S={int(header.sequence is not None)}",
        f"ver {header.version}",
        f"proto {header.protocol:#06x}",
    ]
    if header.checksum is not None:
        words.append(f"csum {header.checksum:#06x}")
    if header.key is not None:
        words.append(f"key {header.key}")
    if header.sequence is not None:
        words.append(f"seq {header.sequence}")
    return ", ".join(words)


def describe_tx(tunnel: Tunnel, inner: bytes, result: bytes | Drop, send_error: Drop | None = None) -> list[str]:
    """The transmit path of one packet read from the TUN device."""
    p = tunnel.params
    lines = [f"tx {tunnel.name}: read {len(inner)} bytes from TUN: {inner_summary(inner)}"]
    if isinstance(result, Drop):
        return [*lines, f"  dropped: {result.value}: {result.description}"]
    outer = ipv4.parse_ipv4(result)
    assert not isinstance(outer, Drop)
    if p.mode.value.is_gre:
        header = gre.parse_gre(result[outer.header_length :] + inner)
        if not isinstance(header, Drop):
            lines.append(f"  GRE header ({header.length} bytes): {_gre_words(header)}")
    else:
        lines.append(f"  {p.mode.value.name} header: none, the inner packet follows the outer header (RFC 2003)")
    ttl_why = "inherited from the inner packet" if p.ttl is None else "fixed"
    tos_why = "DSCP inherited" if p.tos is None else f"DSCP fixed {p.tos & 0xFC:#04x}"
    ecn_words = f"ECN {ECN_SHORT[outer.tos & 3]} copied from the inner packet, CE sent as ECT(0), RFC 6040"
    df_why = "always, pmtudisc" if p.pmtudisc else "copied from the inner packet"
    lines.append(
        f"  outer IPv4: {_v4(outer.src)} > {_v4(outer.dst)} proto {outer.protocol} "
        f"ttl {outer.ttl} ({ttl_why}), tos {outer.tos:#04x} ({tos_why}; {ecn_words}), "
        f"DF {'set' if outer.dont_fragment else 'clear'} ({df_why}), id {outer.identification:#06x}"
    )
    total = outer.total_length
    if send_error is None:
        lines.append(f"  sent {total} bytes ({total - len(inner)} of headers) to {_v4(outer.dst)}")
    else:
        lines.append(f"  dropped: {send_error.value}: {send_error.description}")
    return lines


@dataclass(frozen=True)
class RxContext:
    """What the receive path looked like just before the core decided: the tunnel the lookup
    would pick (and by which rule), and that tunnel's last accepted sequence number."""

    tunnel: Tunnel | None
    rule: Rule | None
    last_accepted: int | None


def rx_context(demux: Demux, packet: bytes | bytearray | memoryview) -> RxContext:
    """Look at a received packet the way the core will, without changing any state."""
    data = bytes(packet)
    outer = ipv4.parse_ipv4(data)
    if isinstance(outer, Drop):
        return RxContext(None, None, None)
    table = demux.tables.get(outer.protocol)
    if table is None:
        return RxContext(None, None, None)
    key = None
    if outer.protocol == 47:
        header = gre.parse_gre(data[outer.header_length : outer.total_length], verify_checksum=False)
        if isinstance(header, Drop):
            return RxContext(None, None, None)
        key = header.key
    found = table.lookup(outer.dst, outer.src, key)
    if isinstance(found, Drop):
        blamed = table.address_match(outer.dst, outer.src)
        return RxContext(blamed, None, _last_accepted(blamed.iseq_window) if blamed else None)
    tunnel, rule = found
    window = tunnel.iseq_window
    if tunnel.hub is not None:
        peer = tunnel.hub.peers.get((outer.src, 0, key))  # raw IP: no UDP port
        window = peer.window if peer is not None else tunnel.new_window()
    return RxContext(tunnel, rule, _last_accepted(window))


def _last_accepted(window: SequenceState) -> int | None:
    expected = window.next_expected
    return None if expected is None else (expected - 1) % MOD


def describe_rx(
    packet: bytes | bytearray | memoryview, context: RxContext, result: Result, write_error: Drop | None = None
) -> list[str]:
    """The receive path of one packet read from the raw socket."""
    data = bytes(packet)
    lines = [f"rx: read {len(data)} bytes from the raw socket"]
    outer = ipv4.parse_ipv4(data)
    if isinstance(outer, Drop):
        return [*lines, f"  dropped: {outer.value}: {outer.description}"]
    lines.append(
        f"  outer IPv4: {_v4(outer.src)} > {_v4(outer.dst)} proto {outer.protocol} ttl {outer.ttl} "
        f"tos {outer.tos:#04x} ({ECN_SHORT[outer.tos & 3]})"
    )
    header: gre.GREHeader | Drop | None = None
    if outer.protocol == 47:
        header = gre.parse_gre(data[outer.header_length : outer.total_length], verify_checksum=False)
        if isinstance(header, gre.GREHeader):
            lines.append(f"  GRE header ({header.length} bytes): {_gre_words(header)}")
    t = context.tunnel
    if context.rule is not None and t is not None:
        lines.append(f"  lookup: tunnel {t.name}, rule '{context.rule.value}'")
        p = t.params
        if isinstance(header, gre.GREHeader):
            want = "no key" if p.ikey is None else f"key {p.ikey}"
            got = "no key" if header.key is None else f"key {header.key}"
            lines.append(f"  key: packet has {got}, tunnel expects {want}: match")
            if header.checksum is not None:
                lines.append("  checksum: present, " + ("valid" if result is not Drop.CSUM_BAD else "WRONG"))
            else:
                lines.append(f"  checksum: absent ({'required by icsum' if p.icsum else 'not required'})")
            if p.iseq:
                last = "none yet" if context.last_accepted is None else str(context.last_accepted)
                seq = "none" if header.sequence is None else str(header.sequence)
                verdict = "refused" if result in (Drop.SEQ_OLD, Drop.SEQ_MISSING) else "accepted"
                lines.append(f"  sequence: {seq}, last accepted {last}: {verdict}")
    elif isinstance(result, Drop) and result in (Drop.NO_TUNNEL, Drop.KEY_MISMATCH):
        key = header.key if isinstance(header, gre.GREHeader) else None
        lines.append(
            f"  lookup: no tunnel for local {_v4(outer.dst)} remote {_v4(outer.src)} "
            f"{'key ' + str(key) if key is not None else 'without key'} "
            "(tried exact, remote only, local only, wildcard)"
        )
        if result is Drop.KEY_MISMATCH and t is not None:
            want = "no key" if t.params.ikey is None else f"key {t.params.ikey}"
            lines.append(f"  key: tunnel {t.name} matches the addresses but expects {want}")
    if isinstance(result, Drop):
        return [*lines, f"  dropped: {result.value}: {result.description}"]
    if isinstance(result, KeepaliveReply):
        line = result.tunnel.line
        state = f"line protocol {'up' if line.up else 'down'}" if line is not None else ""
        return [*lines, f"  keepalive reply: our keepalive came back (GRE protocol type 0); {state}"]
    if isinstance(result, Held):
        released = f"; an overflow released {len(result.released)}" if result.released else ""
        return [*lines, f"  held: early, waits in the reorder buffer for the packets before it (rfc2890){released}"]
    if isinstance(result, Reflect):
        return [
            *lines,
            f"  keepalive from the peer: its inner packet ({len(result.packet)} bytes, to "
            f"{_v4(bytes(result.packet[16:20]))}) is sent straight back (--reflect-keepalives)",
        ]
    if write_error is not None:
        return [*lines, f"  dropped: {write_error.value}: {write_error.description}"]
    stripped = outer.header_length + (header.length if isinstance(header, gre.GREHeader) else 0)
    ce = " (marked CE: the outer header was CE, RFC 6040)" if result.inner[1] != data[stripped + 1] else ""
    written = f"wrote {len(result.inner)} bytes to TUN: {inner_summary(result.inner)}{ce}"
    if result.then:
        written += f"; then {len(result.then)} held packet(s) now in order (rfc2890)"
    return [*lines, f"  stripped {stripped} bytes of outer headers; {written}"]


# --- the stages, for pictures --------------------------------------------------------------------------------
# The lines above, read back as the steps of a journey: which step each line tells, where in our code it is
# taken, and between which lanes the packet moves. They live next to the words they read so that the two
# change together (tests/test_pictures.py checks that every line describe_tx and describe_rx write is known).

TUN_LANE, OUR_LANE, WIRE_LANE = "TUN device", "usertunnel", "raw socket (underlay)"
LANES = (TUN_LANE, OUR_LANE, WIRE_LANE)


@dataclass(frozen=True)
class Stage:
    """One step of a packet's journey: what happened, the code that did it, the lanes it moves between
    (the same lane for a step taken inside usertunnel), and the trace line that told it."""

    step: str
    where: str
    source: str
    target: str
    text: str


_ENCAP = "core/plan.py (the tunnel's transmit plan), else core/encap.py Tunnel.encapsulate_header"
_DECAP = "core/plan.py (the tunnel's receive plan), else core/encap.py Demux.decapsulate"
# direction -> (how the line starts, once its indentation is gone; the step; where; from; to), in order tried.
STAGES: dict[str, tuple[tuple[str, str, str, str, str], ...]] = {
    "tx": (
        ("tx ", "read a packet from the TUN device", "io/loop.py Dataplane._on_tun_readable", TUN_LANE, OUR_LANE),
        ("GRE header", "build the GRE header (gre_build_header)", _ENCAP, OUR_LANE, OUR_LANE),
        ("", "no tunnel header: the inner packet follows the outer one", _ENCAP, OUR_LANE, OUR_LANE),
        ("outer IPv4:", "build the outer IPv4 header (ip_tunnel_xmit)", _ENCAP, OUR_LANE, OUR_LANE),
        ("sent ", "send it on the raw socket", "io/loop.py (io/raw.py's socket)", OUR_LANE, WIRE_LANE),
        ("dropped:", "drop it and count why", "core/drops.py", OUR_LANE, OUR_LANE),
    ),
    "rx": (
        ("rx:", "read a packet from the raw socket", "io/loop.py Dataplane._on_raw_readable", WIRE_LANE, OUR_LANE),
        ("outer IPv4:", "parse the outer IPv4 header", "core/ipv4.py parse_ipv4", OUR_LANE, OUR_LANE),
        ("GRE header", "parse the GRE header (gre_parse_header)", "core/gre.py parse_gre", OUR_LANE, OUR_LANE),
        ("lookup:", "find the tunnel (ip_tunnel_lookup)", "core/lookup.py TunnelTable.lookup", OUR_LANE, OUR_LANE),
        ("key:", "match the key", "core/lookup.py TunnelTable.lookup", OUR_LANE, OUR_LANE),
        ("checksum:", "verify the checksum (RFC 2784 2.5)", "core/gre.py parse_gre", OUR_LANE, OUR_LANE),
        ("sequence:", "check the sequence number (RFC 2890)", "core/sequence.py", OUR_LANE, OUR_LANE),
        ("keepalive", "a keepalive", "core/keepalive.py", OUR_LANE, OUR_LANE),
        ("held:", "hold it until the packets before it come", "core/sequence.py", OUR_LANE, OUR_LANE),
        ("stripped ", "strip the outer headers, write the inner packet to TUN", _DECAP, OUR_LANE, TUN_LANE),
        ("dropped:", "drop it and count why", "core/drops.py", OUR_LANE, OUR_LANE),
    ),
}


def _stage(direction: str, line: str) -> Stage:
    text = line.strip()
    for start, step, where, source, target in STAGES[direction]:
        if (start and text.startswith(start)) or (not start and " header: none" in text):
            return Stage(step, where, source, target, text)
    return Stage("(a step this picture does not know)", "", OUR_LANE, OUR_LANE, text)


def journeys(lines: Iterable[str]) -> list[tuple[str, list[Stage]]]:
    """--trace's lines (with or without their "trace: " prefix) as journeys: ("tx" or "rx", its stages).
    A journey starts at an unindented "tx NAME:" or "rx:" line; the indented lines after it are its steps."""
    out: list[tuple[str, list[Stage]]] = []
    for raw in lines:
        line = raw.removeprefix("trace: ")
        if line.startswith(("tx ", "rx:")):
            direction = line[:2]
            out.append((direction, [_stage(direction, line)]))
        elif line.startswith("  ") and out:
            direction, stages = out[-1]
            stages.append(_stage(direction, line))
    return out
