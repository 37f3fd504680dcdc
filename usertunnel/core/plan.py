"""Plans: each tunnel's transmit and receive code, compiled from its options when it is configured.

Theory of operation. `Tunnel.encapsulate_header` and `Demux.decapsulate`
(core.encap) are the specification: one readable code path for every mode and
option, which asks on every packet which features the tunnel has. A plan asks
once. When a tunnel is built, `compile_tx` and `compile_rx` write the source
of a function that does exactly what the specification does for *this*
tunnel's options and an ordinary packet, with every constant folded in (outer
addresses, protocol, GRE flags and key, the TOS table, header lengths), and
compile it. The kernel does the same in spirit: `ip_tunnel` computes `hlen`
once, and `ipgre_xmit`, `gre_tap_xmit`, `ipip_tunnel_xmit` are chosen when a
device is created.

A plan's contract is the whole of its correctness argument:

- it returns what the specification would return for the packet and changes
  the tunnel's state (IP identification, output sequence number, receive
  window, counters) exactly as the specification would; or
- it returns None *without changing anything*, and the caller runs the
  specification, which then decides (and counts) as it always did.

So a plan handles the ordinary packet (right size, a family the mode carries,
the canonical GRE flags of this tunnel, an in-order sequence number, a sound
inner header, no ECN CE mark, no keepalive) and leaves every other case,
every drop reason included, to the one place that knows them all. The tests
(tests/test_plan.py) prove with hypothesis, over random tunnels and random
packets, that plan-then-specification is byte for byte and counter for
counter the specification, and that ordinary packets do take the plan.

Which tunnels get a plan: transmit, every tunnel with a fixed remote (gre,
ipip, sit; ip6gre, ipip6, ip6ip6 with their IPv6 outer header and encapsulation
limit option) but gretap and hubs; receive, IPv4-outer gre and ipip with both
local and remote set (the lookup's exact rule) and the kernel's sequence
policy. Hubs, 6to4/6rd/ISATAP, sit's receive checks, the IPv6 receive path,
gretap and the rfc2890 and resync policies (state a plan would have to share)
run the specification.

Rules for this file: it only writes and compiles code from a tunnel's
options; the generated code touches no socket. `source` of each plan is
kept, so that a learner can read the exact code that serves their tunnel.
The source names a tunnel's values (its addresses, keys, TTL) instead of
spelling them, so that tunnels configured alike share one compiled code
object (`_compile`).
"""

from __future__ import annotations

import functools
import re
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from . import ecn, fou, gre, ipv4, ipv6
from .checksum import checksum_is_valid, inner_sum, ones_complement_sum
from .sequence import HALF, SeqPolicy

if TYPE_CHECKING:
    from .neighbors import NeighborTable
    from .params import Mode, TunnelParams


class Planned(Protocol):
    """What a plan is compiled from: `core.encap.Tunnel` (named here by what it has, so that this module,
    which `encap` imports, does not import `encap`). The plans' source also reads the tunnel's counters
    and state through the name T."""

    params: TunnelParams
    hub: NeighborTable | None
    sit_rules: bool

    @property
    def outer_sum(self) -> int: ...


TxFunction = Callable[[bytes | bytearray | memoryview], bytes | None]
RxFunction = Callable[[memoryview], memoryview | None]


@dataclass(frozen=True)
class Plan:
    """A compiled function and the source it was compiled from (for reading and for tracebacks)."""

    function: Callable[..., object]
    lines: tuple[str, ...]
    values: dict[str, object]  # what the source's capitalised names are bound to for this tunnel

    @property
    def source(self) -> str:
        return "\n".join(self.lines) + "\n"


def _fold_lines(var: str, indent: str) -> list[str]:
    """Two end-around carries: enough for any sum of fewer than 65,536 16-bit words."""
    return [f"{indent}{var} = ({var} & 0xFFFF) + ({var} >> 16)", f"{indent}{var} = ({var} & 0xFFFF) + ({var} >> 16)"]


@functools.lru_cache(maxsize=257)
def _tos_table(tos: int | None) -> bytes:
    """The outer TOS byte for each inner one: RFC 6040 section 4.1 with a fixed DSCP, or the inner one (None)."""
    return bytes(ecn.encapsulate(x if tos is None else tos, x) for x in range(256))


@functools.lru_cache(maxsize=256)
def _struct(fmt: str) -> struct.Struct:
    return struct.Struct(fmt)


def tx_eligible(tunnel: Planned) -> bool:
    """Whether `tunnel` gets a transmit plan (see the module docstring)."""
    p = tunnel.params
    return not p.mode.value.ethernet and p.remote is not None and tunnel.hub is None


def rx_eligible(tunnel: Planned) -> bool:
    """Whether `tunnel` gets a receive plan (see the module docstring)."""
    p = tunnel.params
    mode = p.mode.value
    return (
        mode.outer == 4
        and not mode.ethernet
        and p.local is not None
        and p.remote is not None
        and tunnel.hub is None
        and not tunnel.sit_rules
        and (not p.iseq or p.seq_policy is SeqPolicy.KERNEL)
    )


def compile_tx(tunnel: Planned) -> Plan | None:
    """The transmit plan of `tunnel`: `tx(inner) -> outer header bytes`, or None (run the specification)."""
    if not tx_eligible(tunnel):
        return None
    p = tunnel.params
    assert p.remote is not None
    keyed = p.okey is not None
    outer6 = p.mode.value.outer == 6
    fixed_label = p.flowlabel is not None and p.flowlabel & ipv6.FLOW_LABEL_MASK != 0
    shape = (keyed, p.oseq, p.ocsum, p.ttl is not None, p.pmtudisc, p.encaplimit is not None, fixed_label)
    encap = p.encap
    udp = (encap.kind.value, encap.sport is not None, encap.csum) if encap is not None else None
    lines, fmt = _tx_source(p.mode, *shape, udp)
    env: dict[str, object] = {
        "T": tunnel,
        "SRC": p.local or bytes(16 if outer6 else 4),
        "DST": p.remote,
        # IPv6 outer: the flow label (fixed, or per packet: ip6_tunnel's choice), the encapsulation limit option.
        "FLOWLABEL": p.flowlabel,
        "LABEL": (p.flowlabel or 0) & ipv6.FLOW_LABEL_MASK,
        "outer_flow_label": ipv6.outer_flow_label,
        "OPTION": ipv6.encap_limit_option(p.encaplimit, p.outer_protocol) if p.encaplimit is not None else b"",
        "EXTENSIONS": ipv6.EXTENSION_HEADERS,
        # RFC 6040 section 4.1 with the tunnel's DSCP (fixed, or inherited): one table look-up per packet.
        "TOS": _tos_table(p.tos),
        "TTL": p.ttl,
        "OKEY": p.okey,
        "OUTER_SUM": tunnel.outer_sum,
        # The GRE header's words that never change, for its checksum (flags and key; the protocol varies).
        "GRE_SUM": gre.flags_for(p.ocsum, keyed, p.oseq) + _words(p.okey),
        "inner_sum": inner_sum,
        "INNER4": _INNER4,
        "HEADER": _struct(fmt),
    }
    if encap is not None:
        src = p.local or bytes(16 if outer6 else 4)
        gue = p.mode.value.ip_protocol if encap.kind is fou.EncapKind.GUE else 0
        gre_words = gre.flags_for(p.ocsum, keyed, p.oseq) + _words(p.okey) if p.mode.value.is_gre else 0
        env.update(
            SPORT=encap.sport or 0,
            DPORT=encap.dport,
            flow_hash=fou.flow_hash,
            flow_source_port=fou.flow_source_port,
            # The UDP checksum's words that never change: pseudo-header addresses and protocol, the
            # destination port, GUE's protocol word, and (without a GRE checksum) GRE's flags and key.
            UDP_SUM=ones_complement_sum(src)
            + ones_complement_sum(p.remote)
            + 17
            + encap.dport
            + gue
            + (0 if p.ocsum else gre_words),
        )
    return _compile(lines, env, "<plan tx>")


# An inner IPv4 header without options: version and IHL, TOS, total length, flags and fragment offset, TTL,
# protocol, and the addresses as four 16-bit words (the transmit plans' O(1) inner sum).
_INNER4 = struct.Struct("!BBH2xHBB2x4H")


@functools.lru_cache(maxsize=256)
def _tx_source(
    mode: Mode,
    keyed: bool,
    oseq: bool,
    ocsum: bool,
    fixed_ttl: bool,
    pmtudisc: bool,
    limit: bool,
    fixed_label: bool,
    udp: tuple[str, bool, bool] | None = None,
) -> tuple[tuple[str, ...], str]:
    """The transmit plan's source for one shape of options (the values are the caller's), and its header's
    struct format. Written once per shape: tunnels configured alike share it, and its compiled code.
    `udp`: FOU or GUE over IPv4 (kind, a fixed source port, the UDP checksum), core.fou."""
    spec = mode.value
    outer6 = spec.outer == 6
    families = sorted(spec.families)
    flags = gre.flags_for(ocsum, keyed, oseq)
    gre_len = gre.header_length(flags) if spec.is_gre else 0
    udp_len = 0 if udp is None else fou.UDP_HEADER_LEN + (fou.GUE_HEADER_LEN if udp[0] == "gue" else 0)
    gre_len += udp_len  # what follows the outer IP header, UDP and GUE included
    if outer6:
        # ip6_tnl_xmit: version, traffic class and flow label; payload length; next header (the destination
        # options header with the encapsulation limit, or the protocol); hop limit; the addresses.
        after = ipv6.ENCAP_LIMIT_OPTION_LEN if limit else 0
        hlen = ipv6.HEADER_LEN + after + gre_len
        fields = ["0x60000000 | (tos << 20) | label", f"{after + gre_len} + n"]
        fields += [str(ipv6.NEXTHDR_DEST if limit else (17 if udp is not None else spec.ip_protocol)), "ttl", "SRC"]
        fields.append("DST")
        fmt = "!IHBB16s16s"
        if limit:
            fields.append("OPTION")
            fmt += f"{ipv6.ENCAP_LIMIT_OPTION_LEN}s"
    else:
        protocol = 17 if udp is not None else spec.ip_protocol
        fields = ["0x45", "tos", "total", "ident", "frag", "ttl", str(protocol), "csum", "SRC", "DST"]
        fmt = "!BBHHHBBH4s4s"
        hlen = ipv4.MIN_HEADER_LEN + gre_len
    lines = [
        "def tx(inner):",
        "    n = len(inner)",
        # Larger packets (path MTU, link MTU, 64 KiB) and runts go to the specification.
        f"    if n > T.plan_fit or n < {20 if 4 in families else 40}:",
        "        return None",
        "    v = inner[0] >> 4",
    ]
    # Whether a checksum needs the inner packet's sum: the GRE checksum, or a UDP one without it.
    summed = (spec.is_gre and ocsum) or (udp is not None and udp[2])
    first = True
    for family in families:
        lines.append(f"    {'if' if first else 'elif'} v == {family}:")
        first = False
        if family == 4 and summed:
            # checksum.inner_sum's O(1) case written out: an IPv4 header without options, the whole packet,
            # not a fragment, TCP (or UDP with a checksum) and at least 40 bytes: the sum follows from the
            # pseudo-header's words, all read by the one unpack that also gives the TOS and the TTL.
            lines += [
                "        _vihl, itos, ilen, ifrag, ittl, iproto, a, b, c, d = INNER4.unpack_from(inner)",
                f"        if (_vihl == 0x45 and ilen == n and n >= 40 and not ifrag & {0x3FFF:#x}",
                "                and (iproto == 6 or (iproto == 17 and (inner[26] or inner[27])))):",
                "            isum = 0xFFFF - (a + b + c + d + iproto + n - 20) % 0xFFFF",
                "        else:",
                "            isum = inner_sum(inner)",
                "        tos = TOS[itos]",
                "        ttl = TTL" if fixed_ttl else "        ttl = ittl",
            ]
            if not outer6:
                df = f"{ipv4.FLAG_DF}" if pmtudisc else f"ifrag & {ipv4.FLAG_DF}"
                lines.append(f"        frag = {df}")
            proto = gre.PROTO_IPV4
        elif family == 4:
            lines.append("        tos = TOS[inner[1]]")
            lines.append("        ttl = TTL" if fixed_ttl else "        ttl = inner[8]")
            if not outer6:
                df = f"{ipv4.FLAG_DF}" if pmtudisc else f"(inner[6] << 8) & {ipv4.FLAG_DF}"
                lines.append(f"        frag = {df}")
            proto = gre.PROTO_IPV4
        else:
            lines.append("        if n < 40:")
            lines.append("            return None")
            if outer6:
                # An inner limit of its own (RFC 2473 4.1.1) is the specification's to read.
                lines += ["        if inner[6] in EXTENSIONS:", "            return None"]
            if summed:
                lines.append("        isum = inner_sum(inner)")
            lines.append("        tos = TOS[((inner[0] & 0x0F) << 4) | (inner[1] >> 4)]")
            lines.append("        ttl = TTL" if fixed_ttl else "        ttl = inner[7]")
            if not outer6:
                lines.append(f"        frag = {ipv4.FLAG_DF if pmtudisc else 0}")
            proto = gre.PROTO_IPV6
        if spec.is_gre:
            lines.append(f"        proto = {proto:#06x}")
    lines += ["    else:", "        return None"]
    if outer6:
        lines.append("    label = LABEL" if fixed_label else "    label = outer_flow_label(FLOWLABEL, inner)")
    else:
        lines += ["    ident = T.ident", "    T.ident = (ident + 1) & 0xFFFF"]
    if udp is not None:
        kind, fixed_sport, udp_csum = udp
        if fixed_sport:
            lines.append("    sport = SPORT")
        else:  # one of the shell's sockets by the inner flow, else the port the flow hashes to (core.fou)
            lines += [
                "    ports = T.source_ports",
                "    sport = ports[flow_hash(inner) % len(ports)] if ports else flow_source_port(inner)",
            ]
        lines.append(f"    ulen = {gre_len} + n")  # UDP, GUE, GRE and the inner packet
        fmt += "HHHH"
        fields += ["sport", "DPORT", "ulen", "ucsum"]
        if kind == "gue":
            fmt += "HH"
            fields += [str(spec.ip_protocol), "0"]  # version 0, C 0, hlen 0, proto/ctype; flags 0
    if spec.is_gre:
        fmt += "HH"
        fields += [f"{flags:#06x}", "proto"]
        if oseq:
            lines += ["    seq = T.oseq_next", "    T.oseq_next = (seq + 1) & 0xFFFFFFFF"]
        if ocsum:
            # RFC 2784 section 2.5: over the GRE header (checksum field zero) and the payload; the inner
            # packet's sum in O(1) for TCP and UDP (checksum.inner_sum).
            seq_words = " + (seq >> 16) + (seq & 0xFFFF)" if oseq else ""
            lines.append(f"    g = GRE_SUM + proto{seq_words} + isum")
            lines += _fold_lines("g", "    ")
            fmt += "HH"
            fields += ["~g & 0xFFFF", "0"]
        if keyed:
            fmt += "I"
            fields.append("OKEY")
        if oseq:
            fmt += "I"
            fields.append("seq")
    if udp is not None:
        if udp[2]:
            # RFC 768 over the pseudo-header, the UDP header and everything after it. A GRE checksum makes the
            # GRE header and the inner packet sum to all ones, which adds nothing.
            rest = ""
            if not (spec.is_gre and ocsum):
                seq_words = " + (seq >> 16) + (seq & 0xFFFF)" if spec.is_gre and oseq else ""
                rest = (" + proto" if spec.is_gre else "") + seq_words + " + isum"
            lines.append(f"    u = UDP_SUM + ulen + ulen + sport{rest}")
            lines += _fold_lines("u", "    ")
            lines.append("    ucsum = (~u & 0xFFFF) or 0xFFFF")  # a computed 0 is sent as all ones
        else:
            lines.append("    ucsum = 0")
    if not outer6:
        lines.append(f"    total = {hlen} + n")
        # The outer IPv4 header's checksum: the words that never change for this tunnel are summed once.
        lines.append("    s = OUTER_SUM + tos + total + ident + frag + (ttl << 8)")
        lines += _fold_lines("s", "    ")
        lines.append("    csum = ~s & 0xFFFF")
    # The counters are read from the tunnel on each packet: a daemon's `change` hands a new tunnel the old ones.
    lines += ["    counters = T.counters", "    counters.tx_packets += 1", "    counters.tx_bytes += n"]
    lines.append(f"    return HEADER.pack({', '.join(fields)})")
    assert struct.calcsize(fmt) == hlen, (fmt, hlen)
    return tuple(lines), fmt


def compile_rx(tunnel: Planned) -> Plan | None:
    """The receive plan of `tunnel`: `rx(outer packet) -> inner packet view`, or None (run the specification).
    For FOU / GUE, `rx(UDP payload, outer source and destination, outer TOS)`: what a UDP socket hands over.

    The caller has found the tunnel by the packet's outer addresses (`Demux.planned`); the plan checks them
    again, with everything else, from one unpack of the fixed headers.
    """
    if not rx_eligible(tunnel):
        return None
    p = tunnel.params
    assert p.local is not None and p.remote is not None
    udp = p.encap.kind.value if p.encap is not None else None
    keyed = p.ikey is not None
    lines, fmt = _rx_source(p.mode, keyed, p.iseq, p.icsum, p.csum_verify, p.reflect_keepalives, udp)
    env: dict[str, object] = {
        "T": tunnel,
        "ADDRESSES": p.remote + p.local,
        "IKEY": p.ikey,
        "KEY_WORDS": _words(p.ikey),
        "OUTER": _struct(fmt),
        "checksum_is_valid": checksum_is_valid,
        "inner_sum": inner_sum,
    }
    return _compile(lines, env, "<plan rx>")


@functools.lru_cache(maxsize=256)
def _rx_source(
    mode: Mode, keyed: bool, iseq: bool, icsum: bool, csum_verify: str, reflect: bool, udp: str | None = None
) -> tuple[tuple[str, ...], str]:
    """The receive plan's source for one shape of options, and the struct format of its one unpack.
    `udp` ("fou", "gue"): the plan reads a UDP payload, the kernel having checked the outer IPv4 and UDP
    headers; the addresses and TOS come with it (the loop reads them as ancillary data)."""
    spec = mode.value
    flags = gre.flags_for(icsum, keyed, iseq)
    # Where what the mode sends starts: after the outer IPv4 header, or GUE's header, or at once (FOU).
    base = ipv4.MIN_HEADER_LEN if udp is None else (fou.GUE_HEADER_LEN if udp == "gue" else 0)
    hlen = base + (gre.header_length(flags) if spec.is_gre else 0)  # the outer header + the GRE we take
    if udp is None:
        # Outer IPv4: version/IHL, TOS, total length, flags/fragment offset, protocol, source and destination.
        fmt = "!BBH2xHxB2x8s"
        names = ["vihl", "tos", "total", "frag", "proto", "addresses"]
    else:
        fmt = "!I" if udp == "gue" else "!"
        names = ["guehdr"] if udp == "gue" else []
    if spec.is_gre:
        fmt += "I"
        names.append("gre")
        if icsum and csum_verify != "full":
            fmt += "HH"  # the checksum and reserved1 words: the derived check sums them
            names += ["csum", "reserved"]
        elif icsum:
            fmt += "4x"
        if keyed:
            fmt += "I"
            names.append("key")
        if iseq:
            fmt += "I"
            names.append("seq")
    smallest = hlen + (20 if 4 in spec.families else 40)
    # Over raw IPv4 the one unpack reads on into the inner packet's first 20 bytes, as ten 16-bit words: an
    # inner IPv4 header's length, protocol and checksum (a valid header's words sum to a multiple of 0xFFFF)
    # then come without slicing the view, an inner IPv6 header's payload length likewise.
    inner_words = udp is None and 4 in spec.families
    if inner_words:
        assert struct.calcsize(fmt) == hlen, (fmt, hlen)
        fmt += "10H"
        names += [f"i{k}" for k in range(10)]
    if udp is None:
        lines = [
            "def rx(view):",
            f"    if len(view) < {smallest}:",
            "        return None",
            f"    {', '.join(names)} = OUTER.unpack_from(view)",
            # No IP options, not a fragment, not CE (RFC 6040 section 4.2 is the specification's), ours.
            f"    if (vihl != 0x45 or total > len(view) or total < {smallest} "
            f"or frag & {ipv4.FLAG_MF | ipv4.OFFSET_MASK}",
            f"            or proto != {spec.ip_protocol} or tos & 3 == 3 or addresses != ADDRESSES):",
            "        return None",
        ]
    else:
        lines = [
            "def rx(view, addresses, tos):",
            "    total = len(view)",
            f"    if total < {smallest} or tos & 3 == 3 or addresses != ADDRESSES:",
            "        return None",
        ]
        if names:
            lines.append(f"    {', '.join(names)}{',' if len(names) == 1 else ''} = OUTER.unpack_from(view)")
        if udp == "gue":
            # GUE variant 0, no options, no flags, this mode's protocol: anything else is the specification's.
            lines += [f"    if guehdr != {spec.ip_protocol << 16:#010x}:", "        return None"]
    if spec.is_gre:
        # Only this tunnel's canonical GRE flags (exactly C, K and S as icsum, ikey and iseq say); any other
        # header, a keepalive (protocol 0) or gretap's frames included, goes to the specification.
        words = [(flags << 16) | proto for proto in (gre.PROTO_IPV4, gre.PROTO_IPV6)]
        if spec.families == frozenset({4}):
            words = words[:1]
        check = " or ".join(f"gre == {w:#010x}" for w in words)
        lines += [f"    if not ({check}):", "        return None"]
        if keyed:
            lines += ["    if key != IKEY:", "        return None"]
        if icsum and csum_verify == "full":
            lines += [f"    if not checksum_is_valid(view[{base}:total]):", "        return None"]
        if iseq:
            # Linux's ip_tunnel_rcv: not newer than the last accepted goes to the specification (seq_old).
            lines += [
                "    window = T.iseq_window",
                "    expected = window.next_expected",
                f"    if expected is not None and (seq - expected) & 0xFFFFFFFF >= {HALF}:",
                "        return None",
            ]
    m = "total - " + str(hlen)
    lines.append("    b0 = i0 >> 8" if inner_words else f"    b0 = view[{hlen}]")
    branches = []
    if 4 in spec.families:
        # A valid IPv4 header sums to 0xFFFF, a multiple of 0xFFFF (core.checksum).
        header_sum = f"int.from_bytes(view[{hlen}:{hlen + 20}], 'big')"
        if inner_words:
            header_sum = " + ".join(f"i{k}" for k in range(10))
        branches.append(
            [
                "if b0 == 0x45:" if not spec.is_gre else f"if b0 == 0x45 and gre & 0xFFFF == {gre.PROTO_IPV4:#06x}:",
                "    end = i1" if inner_words else f"    end = (view[{hlen + 2}] << 8) | view[{hlen + 3}]",
                f"    if end < 20 or end > {m} or ({header_sum}) % 0xFFFF:",
                "        return None",
            ]
        )
        if reflect:
            # A peer's keepalive (an inner GRE packet) is answered by the specification.
            inner_protocol = "i4 & 0xFF" if inner_words else f"view[{hlen + 9}]"
            branches[-1] += [f"    if {inner_protocol} == 47:", "        return None"]
    if 6 in spec.families:
        head = "if b0 >> 4 == 6:" if not spec.is_gre else f"if b0 >> 4 == 6 and gre & 0xFFFF == {gre.PROTO_IPV6:#06x}:"
        branches.append(
            [
                head,
                "    end = 40 + i2" if inner_words else f"    end = 40 + ((view[{hlen + 4}] << 8) | view[{hlen + 5}])",
                f"    if end > {m}:",
                "        return None",
            ]
        )
    for i, branch in enumerate(branches):
        first, *rest = branch
        lines.append("    " + (first if i == 0 else "el" + first))
        lines += ["    " + line for line in rest]
    lines += ["    else:", "        return None"]
    if spec.is_gre and icsum and csum_verify != "full":
        # --csum-verify derived (checksum.csum_derived_is_valid) once the inner header is known sound: the GRE
        # header's words, plus the inner packet's sum derived in O(1) from its own TCP/UDP checksum (its
        # IPv4 header, just checked, sums to 0xFFFF and adds nothing), must sum to 0xFFFF.
        seq_words = " + (seq >> 16) + (seq & 0xFFFF)" if iseq else ""
        lines.append(
            f"    if ((gre >> 16) + (gre & 0xFFFF) + csum + reserved + KEY_WORDS{seq_words}"
            f" + inner_sum(view[{hlen}:total])) % 0xFFFF:"
        )
        lines.append("        return None")
    if spec.is_gre and iseq:
        lines.append("    window.next_expected = (seq + 1) & 0xFFFFFFFF")
    lines += ["    counters = T.counters", "    counters.rx_packets += 1", "    counters.rx_bytes += end"]
    lines.append(f"    return view[{hlen}:{hlen} + end]")
    return tuple(lines), fmt


def _compile(lines: tuple[str, ...], env: dict[str, object], filename: str) -> Plan:
    """The function the source defines, bound to this tunnel's values (`env`) as closure variables.

    The source holds only what the options decide (which fields, which checks), never a tunnel's values, so
    tunnels configured alike share one code object: compiled once, and kept specialised by the interpreter
    however many tunnels run it. The values are the free variables of a closure made per tunnel (a cell read
    each, no dictionary look-up).
    """
    function = _factory(lines, tuple(sorted(env)), filename)(**env)
    assert callable(function)
    return Plan(function, lines, env)


@functools.lru_cache(maxsize=256)
def _factory(lines: tuple[str, ...], names: tuple[str, ...], filename: str) -> Callable[..., object]:
    """`make(**values)`: the plan's function closed over a tunnel's values; compiled once per source."""
    name = lines[0].split()[1].partition("(")[0]
    body = ["    " + line for line in lines]
    source = "\n".join([f"def make({', '.join(names)}):", *body, f"    return {name}", ""])
    namespace: dict[str, object] = {}
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102  the source is ours, written from validated options
    make = namespace["make"]
    assert callable(make)
    return make


def _words(key: int | None) -> int:
    """The sum of a GRE key's two 16-bit words (0 without a key): its share of a GRE checksum."""
    return 0 if key is None else (key >> 16) + (key & 0xFFFF)


def describe_plans(tunnel: Planned) -> str:
    """The plans of `tunnel`, as a reader would want them: each one's source and the values it is bound
    to, or why the specification serves that direction (`usertunnel up --show-plan`)."""
    out = []
    for direction, plan, eligible in (
        ("transmit", compile_tx(tunnel), tx_eligible(tunnel)),
        ("receive", compile_rx(tunnel), rx_eligible(tunnel)),
    ):
        if plan is None:
            if direction == "transmit":
                why = "a fixed remote; not gretap, not a hub, not FOU or GUE"
            else:
                why = "IPv4 outer, local and remote set; not sit, gretap, a hub, FOU or GUE; sequence policy kernel"
            out.append(f"# {direction}: no plan ({why} only); core/encap.py's specification serves every packet")
            continue
        assert eligible
        out.append(f"# {direction} plan: None means 'not an ordinary packet': core/encap.py's specification decides")
        for name, value in sorted(plan.values.items()):
            shown = _shown(name, value)
            if shown is not None and re.search(rf"\b{name}\b", plan.source):
                out.append(f"#   {name} = {shown}")
        out.append(plan.source)
    return "\n".join(out)


def _shown(name: str, value: object) -> str | None:
    """A plan's bound value as a person reads it (None: a helper such as T or a struct, left out)."""
    if isinstance(value, bytes):
        if name == "TOS":
            return "the outer TOS for each inner TOS byte (RFC 6040 section 4.1), 256 bytes"
        if name in ("SRC", "DST", "ADDRESSES"):
            size = 16 if len(value) == 16 else 4
            family = socket.AF_INET6 if size == 16 else socket.AF_INET
            return ", ".join(socket.inet_ntop(family, value[i : i + size]) for i in range(0, len(value), size))
        return value.hex(" ")
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value} ({value:#x})" if name.endswith("SUM") else str(value)
    if value is None:
        return "None"
    return None


__all__ = ["Plan", "compile_rx", "compile_tx", "describe_plans", "rx_eligible", "tx_eligible"]
