"""Plans (core.plan) against the specification (core.encap), over random tunnels and random packets.

The property that makes a plan safe to run: for every tunnel configuration and
every packet, "the plan, or the specification when the plan declines" gives
the same bytes, the same drop reason and the same state (IP identification,
output sequence number, receive window, every counter) as the specification
alone. A plan that declines must have changed nothing. And a plan is only
worth having if it serves the ordinary packet: for a tunnel and a peer that
agree, well-formed TCP, UDP and ICMP packets never reach the specification.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from usertunnel.core import plan
from usertunnel.core.checksum import internet_checksum
from usertunnel.core.drops import Drop
from usertunnel.core.encap import Demux, Received, Result, Tunnel
from usertunnel.core.esp import GCM, EspKeys, SecurityAssociation
from usertunnel.core.fou import Encap, EncapKind
from usertunnel.core.params import VTI_OUTER, Mode, TunnelParams
from usertunnel.core.sequence import SeqPolicy

EXAMPLES = int(os.environ.get("USERTUNNEL_PLAN_EXAMPLES", "400"))
PLAN = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

A = bytes([198, 51, 100, 1])
B = bytes([198, 51, 100, 2])
C = bytes([198, 51, 100, 3])
V4 = (bytes([203, 0, 113, 1]), bytes([203, 0, 113, 2]))
V6 = (bytes.fromhex("20010db8000000000000000000000001"), bytes.fromhex("20010db8000000000000000000000002"))

keys = st.one_of(st.none(), st.sampled_from([0, 1, 1234, 0xFFFFFFFF]))


def ipv4_packet(protocol: int, payload: bytes, tos: int = 0, ttl: int = 64, flags: int = 0x4000, csum: bool = True,
                src: bytes = V4[0], dst: bytes = V4[1]) -> bytes:  # fmt: skip
    """An IPv4 packet; TCP and UDP get a right checksum when `csum` (what TUN hands us)."""
    if csum and protocol in (6, 17) and len(payload) >= (20 if protocol == 6 else 8):
        where = 16 if protocol == 6 else 6
        body = bytearray(payload)
        body[where : where + 2] = b"\0\0"
        pseudo = src + dst + struct.pack("!BBH", 0, protocol, len(body))
        value = internet_checksum(pseudo + bytes(body)) or (0xFFFF if protocol == 17 else 0)
        struct.pack_into("!H", body, where, value)
        payload = bytes(body)
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(payload), 7, flags, ttl, protocol, 0, src, dst))
    struct.pack_into("!H", header, 10, internet_checksum(header))
    return bytes(header) + payload


def ipv6_packet(next_header: int, payload: bytes, tclass: int = 0, hop_limit: int = 64) -> bytes:
    if next_header in (6, 17) and len(payload) >= (20 if next_header == 6 else 8):
        where = 16 if next_header == 6 else 6
        body = bytearray(payload)
        body[where : where + 2] = b"\0\0"
        pseudo = V6[0] + V6[1] + struct.pack("!IxxxB", len(body), next_header)
        struct.pack_into("!H", body, where, internet_checksum(pseudo + bytes(body)) or 0xFFFF)
        payload = bytes(body)
    first = 0x60000000 | (tclass << 20) | 0x12345
    return struct.pack("!IHBB16s16s", first, len(payload), next_header, hop_limit, *V6) + payload


@st.composite
def ordinary_inner(draw: st.DrawFn, families: frozenset[int] = frozenset({4, 6}), right_sums: bool = False) -> bytes:
    """A well-formed inner packet of one of `families`: TCP, UDP, ICMP, or an inner GRE packet; its TCP/UDP
    checksum right (as TUN hands them over) when `right_sums`, else maybe not."""
    family = draw(st.sampled_from(sorted(families)))
    protocol = draw(st.sampled_from([6, 17, 1, 47] if family == 4 else [6, 17, 58]))
    size = draw(st.integers(0, 1600))
    payload = draw(st.binary(min_size=20, max_size=40)) + bytes(size)
    if family == 4:
        flags = draw(st.sampled_from([0, 0x4000, 0x2000, 0x0001]))
        return ipv4_packet(protocol, payload, tos=draw(st.integers(0, 255)), ttl=draw(st.integers(1, 255)), flags=flags,
                           csum=right_sums or draw(st.booleans()))  # fmt: skip
    return ipv6_packet(protocol, payload, tclass=draw(st.integers(0, 255)), hop_limit=draw(st.integers(0, 255)))


@st.composite
def inner_packets(draw: st.DrawFn) -> bytes:
    """Ordinary packets, and what a TUN device should never hand over but a fuzzer will: runts, lies, noise."""
    packet = draw(ordinary_inner())
    how = draw(st.sampled_from(["as is", "as is", "as is", "truncate", "flip", "random"]))
    if how == "truncate":
        return packet[: draw(st.integers(0, len(packet)))]
    if how == "flip":
        data = bytearray(packet)
        at = draw(st.integers(0, min(len(data) - 1, 60)))
        data[at] ^= draw(st.integers(1, 255))
        return bytes(data)
    if how == "random":
        return draw(st.binary(max_size=80))
    return packet


@st.composite
def tunnel_params(
    draw: st.DrawFn, local: bytes | None = A, remote: bytes | None = B, ipv6_outer: bool = False
) -> TunnelParams:
    modes = [Mode.GRE, Mode.GRE, Mode.GRE, Mode.IPIP, Mode.SIT, Mode.VTI]
    if ipv6_outer:
        modes += [Mode.IP6GRE, Mode.IP6GRE, Mode.IPIP6, Mode.IP6IP6, Mode.VTI6]
    mode = draw(st.sampled_from(modes))
    options: dict[str, Any] = {}
    if mode.value.outer == 6:
        local, remote = L6, R6
        options["flowlabel"] = draw(st.one_of(st.none(), st.just(0), st.integers(1, 0xFFFFF)))
        options["encaplimit"] = draw(st.one_of(st.none(), st.integers(0, 255)))
    if mode is Mode.GRE:
        key = draw(keys)
        options.update(ikey=key, okey=key if draw(st.booleans()) else draw(keys))
        options.update(iseq=draw(st.booleans()), oseq=draw(st.booleans()))
        options.update(icsum=draw(st.booleans()), ocsum=draw(st.booleans()))
        if options["iseq"]:
            options["seq_policy"] = draw(st.sampled_from(list(SeqPolicy)))
        if options["icsum"]:
            options["csum_verify"] = draw(st.sampled_from(["full", "derived"]))
    options["tos"] = draw(st.one_of(st.none(), st.integers(0, 255)))
    pmtudisc = draw(st.booleans())
    options["pmtudisc"] = pmtudisc
    options["ttl"] = draw(st.one_of(st.none(), st.integers(1, 255))) if pmtudisc else None
    options["reflect_keepalives"] = draw(st.booleans())
    if mode.value.esp:  # vti, vti6: xfrm's outer header; keys that are not on the wire
        options.update(zip(("ttl", "tos", "pmtudisc"), VTI_OUTER, strict=True))
        key = draw(keys)
        options.update(ikey=key, okey=key, esp=EspKeys(SA, SA))
        if mode.value.outer == 6:
            options.update(flowlabel=None, encaplimit=None)
    elif mode.value.outer == 4 and draw(st.integers(0, 3)) == 0:  # --esp-keys, a quarter of the IPv4 ones
        options["esp"] = EspKeys(SA, SA)
    elif remote is not None and draw(st.integers(0, 2)) == 0:  # FOU / GUE, a third of the tunnels
        kind = draw(st.sampled_from(list(EncapKind)))
        sport = draw(st.one_of(st.none(), st.integers(1, 65535)))
        options["encap"] = Encap(kind, dport=draw(st.integers(1, 65535)), sport=sport, csum=draw(st.booleans()))
    return TunnelParams("t0", mode, local, remote, **options)


SA = SecurityAssociation(0x1000, GCM, bytes(20))  # IPsec: plans build what ESP then seals
L6 = bytes.fromhex("20010db8000100000000000000000001")
R6 = bytes.fromhex("20010db8000100000000000000000002")


def state(tunnel: Tunnel) -> dict[str, object]:
    """Everything a packet may change in a tunnel."""
    window = tunnel.iseq_window
    return {
        "counters": tunnel.counters.as_dict(),
        "ident": tunnel.ident,
        "oseq_next": tunnel.oseq_next,
        "window": window.as_dict(),
        "reflected": tunnel.reflected,
    }


def planned_tx(tunnel: Tunnel, inner: bytes) -> tuple[bytes | Drop, bool]:
    """The plan's header, or the specification's answer when it declines; and whether the plan served."""
    assert tunnel.tx_plan is not None
    before = state(tunnel)
    header = tunnel.tx_plan(inner)
    if header is not None:
        return header, True
    assert state(tunnel) == before, "a plan that declines must change nothing"
    return tunnel.encapsulate_header(inner, 5.0), False


# --- transmit --------------------------------------------------------------------------------------------------


@PLAN
@given(
    params=tunnel_params(ipv6_outer=True),
    packets=st.lists(inner_packets(), min_size=1, max_size=6),
    ident=st.integers(0, 0xFFFF),
    link_mtu=st.sampled_from([0xFFFF, 1500, 600]),
    path_mtu=st.sampled_from([None, 1400, 576]),
)
def test_tx_plan_then_specification_equals_the_specification(
    params: TunnelParams, packets: list[bytes], ident: int, link_mtu: int, path_mtu: int | None
) -> None:
    planned, spec = Tunnel(params, ident), Tunnel(params, ident)
    assert planned.tx_plan is not None
    for tunnel in (planned, spec):
        tunnel.link_mtu = link_mtu
        if ident % 2:  # FOU / GUE with auto source ports: the shell's sockets, or (even) none
            tunnel.source_ports = (40000 + ident % 7, 50001)
        if path_mtu is not None:
            tunnel.update_path_mtu(path_mtu, 0.0)
    for inner in packets:
        expected = spec.encapsulate_header(inner, 5.0)
        got, _ = planned_tx(planned, inner)
        assert got == expected
        assert state(planned) == state(spec)
        assert planned.path_mtu == spec.path_mtu


@PLAN
@given(params=tunnel_params(ipv6_outer=True), data=st.data())
def test_tx_plan_serves_every_ordinary_packet_that_fits(params: TunnelParams, data: st.DataObject) -> None:
    tunnel = Tunnel(params)
    tunnel.link_mtu = 1500
    inner = data.draw(ordinary_inner(params.mode.value.families))
    _, served = planned_tx(tunnel, inner)
    assert served == (len(inner) + params.header_length <= 1500)


@PLAN
@given(params=tunnel_params(ipv6_outer=True), next_header=st.sampled_from([0, 43, 44, 51, 60]), data=st.data())
def test_an_inner_ipv6_packet_with_extension_headers_goes_to_the_specification(
    params: TunnelParams, next_header: int, data: st.DataObject
) -> None:
    # An inner tunnel encapsulation limit may hide behind them (RFC 2473 4.1.1): IPv6 outer headers read it.
    if 6 not in params.mode.value.families or params.mode.value.outer != 6:
        return
    inner = ipv6_packet(next_header, bytes([59, 0, 4, 1, data.draw(st.integers(0, 3)), 1, 1, 0]) + bytes(40))
    planned, spec = Tunnel(params), Tunnel(params)
    got, served = planned_tx(planned, inner)
    assert not served and got == spec.encapsulate_header(inner, 5.0)


# --- receive ---------------------------------------------------------------------------------------------------


@st.composite
def outer_packets(draw: st.DrawFn, params: TunnelParams) -> bytes:
    """What arrives for a tunnel: sent by a peer that agrees, or one that disagrees, maybe damaged."""
    agree = draw(st.booleans())
    if params.mode is Mode.VTI:  # what ESP carries for vti: an ipip-shaped packet (the key is not on the wire)
        peer_params = TunnelParams("peer", Mode.IPIP, params.remote, params.local, tos=params.tos)
    elif agree:
        peer_params = TunnelParams(
            "peer", params.mode, params.remote, params.local,
            okey=params.ikey, oseq=params.iseq, ocsum=params.icsum, ttl=params.ttl, tos=params.tos,
        )  # fmt: skip
    else:
        peer_params = draw(tunnel_params(local=draw(st.sampled_from([B, C])), remote=A))
    if peer_params.mode is not params.mode and not params.mode.value.esp and draw(st.booleans()):
        peer_params = TunnelParams("peer", params.mode, B, A)
    peer = Tunnel(peer_params)
    peer.oseq_next = draw(st.sampled_from([0, 5, 0xFFFFFFFE]))
    inner = draw(ordinary_inner(peer_params.mode.value.families))
    packet = peer.encapsulate(inner)
    if isinstance(packet, Drop):
        return draw(st.binary(max_size=60))
    data = bytearray(packet)
    how = draw(st.sampled_from(["as is", "as is", "as is", "flip", "truncate", "ce", "options", "pad"]))
    if how == "flip":
        at = draw(st.integers(0, min(len(data) - 1, 80)))
        data[at] ^= draw(st.integers(1, 255))
    elif how == "truncate":
        del data[draw(st.integers(0, len(data))) :]
    elif how == "ce":
        data[1] |= 3
    elif how == "options":
        data[0] = 0x46
    elif how == "pad":
        data += bytes(draw(st.integers(1, 8)))
    return bytes(data)


@PLAN
@given(params=tunnel_params(), data=st.data())
def test_rx_plan_then_specification_equals_the_specification(params: TunnelParams, data: st.DataObject) -> None:
    planned, spec = Tunnel(params), Tunnel(params)
    if planned.rx_plan is None:
        assert not plan.rx_eligible(planned)
        return
    if params.encap is not None:  # its plan reads UDP payloads: tests/test_fou.py proves that one
        return
    # A protected tunnel (--esp-keys) is looked up by what ESP carried: the lookup of protected tunnels.
    protected = params.esp is not None
    planned_demux, spec_demux = Demux(protected), Demux(protected)
    planned_demux.add(planned)
    spec_demux.add(spec)
    for _ in range(data.draw(st.integers(1, 5))):
        packet = data.draw(outer_packets(params))
        expected = spec_demux.decapsulate(packet, 5.0)
        before = state(planned)
        inner = planned.rx_plan(memoryview(packet))
        if inner is None:
            assert state(planned) == before, "a plan that declines must change nothing"
            got: Result = planned_demux.decapsulate(packet, 5.0)
            assert _comparable(got) == _comparable(expected)
        else:
            assert isinstance(expected, Received) and expected.tunnel is spec and not expected.then
            assert bytes(inner) == bytes(expected.inner)
        assert state(planned) == state(spec)
        assert planned_demux.unmatched.as_dict() == spec_demux.unmatched.as_dict()


def _comparable(result: Result) -> object:
    if isinstance(result, Drop):
        return result
    return type(result).__name__, [bytes(x) if isinstance(x, (bytes, bytearray, memoryview)) else None for x in result]


@PLAN
@given(params=tunnel_params(), data=st.data())
def test_rx_plan_serves_every_ordinary_packet_from_a_peer_that_agrees(
    params: TunnelParams, data: st.DataObject
) -> None:
    tunnel = Tunnel(params)
    if tunnel.rx_plan is None or params.encap is not None:  # FOU / GUE: tests/test_fou.py
        return
    if params.mode is Mode.VTI:  # what ESP carries for vti is ipip-shaped, without a key
        peer = Tunnel(TunnelParams("peer", Mode.IPIP, B, A))
    else:
        peer = Tunnel(TunnelParams("peer", params.mode, B, A, okey=params.ikey, oseq=params.iseq, ocsum=params.icsum))
    inner = data.draw(ordinary_inner(params.mode.value.families, right_sums=True))
    if params.reflect_keepalives and inner[0] >> 4 == 4 and inner[9] == 47:
        return  # a peer's keepalive, maybe: the specification's to answer
    packet = peer.encapsulate(inner)
    assert not isinstance(packet, Drop)
    out = tunnel.rx_plan(memoryview(packet))
    assert out is not None and bytes(out) == inner


def test_which_tunnels_get_plans() -> None:
    gre = Tunnel(TunnelParams("t0", Mode.GRE, A, B, ikey=1, okey=1))
    assert gre.tx_plan is not None and gre.rx_plan is not None
    no_local = Tunnel(TunnelParams("t0", Mode.GRE, None, B))
    assert no_local.tx_plan is not None and no_local.rx_plan is None  # lookup rules other than exact: the spec
    sit = Tunnel(TunnelParams("t0", Mode.SIT, A, B))
    assert sit.tx_plan is not None and sit.rx_plan is None  # packet_is_spoofed: the spec
    six_to_four = Tunnel(TunnelParams("t0", Mode.SIT, A, None))
    assert six_to_four.tx_plan is None
    ip6gre = Tunnel(TunnelParams("t0", Mode.IP6GRE, bytes(15) + b"\1", bytes(15) + b"\2"))
    assert ip6gre.tx_plan is not None and ip6gre.rx_plan is None  # the IPv6 receive path: the spec
    gretap = Tunnel(TunnelParams("t0", Mode.GRETAP, A, B))
    assert gretap.tx_plan is None and gretap.rx_plan is None
    rfc2890 = Tunnel(TunnelParams("t0", Mode.GRE, A, B, iseq=True, seq_policy=SeqPolicy.RFC2890))
    assert rfc2890.rx_plan is None


def test_a_learned_path_mtu_sends_larger_packets_to_the_specification_until_it_expires() -> None:
    tunnel = Tunnel(TunnelParams("t0", Mode.GRE, A, B))
    inner = ipv4_packet(17, bytes(1000))
    assert tunnel.tx_plan is not None and tunnel.tx_plan(inner) is not None
    assert tunnel.update_path_mtu(800, now=0.0)
    assert tunnel.tx_plan(inner) is None
    assert tunnel.encapsulate_header(inner, 1.0) is Drop.FRAG_NEEDED
    assert tunnel.encapsulate_header(inner, 10_000.0) is not Drop.FRAG_NEEDED  # expired: forgotten
    assert tunnel.tx_plan(inner) is not None


def test_planned_finds_each_tunnel_among_many_between_the_same_addresses_and_forgets_removed_ones() -> None:
    # Keys with and without the checksum word before them, a keyless GRE and an IPIP tunnel: told apart by
    # key, or by protocol when there is none.
    tunnels = [Tunnel(TunnelParams(f"k{key}", Mode.GRE, A, B, ikey=key, okey=key, iseq=True, icsum=key % 2 == 1))
               for key in range(1, 8)]  # fmt: skip
    tunnels += [Tunnel(TunnelParams("u", Mode.GRE, A, B)), Tunnel(TunnelParams("ip", Mode.IPIP, A, B))]
    tunnels += [Tunnel(TunnelParams("c", Mode.GRE, A, C))]
    demux = Demux()
    for tunnel in tunnels:
        demux.add(tunnel)
    assert demux.single is None
    inner = ipv4_packet(17, bytes(100))
    for tunnel in tunnels:
        p = tunnel.params
        assert p.remote is not None and p.local is not None
        peer = Tunnel(TunnelParams("peer", p.mode, p.remote, p.local, okey=p.ikey, oseq=p.iseq, ocsum=p.icsum))
        packet = peer.encapsulate(inner)
        assert isinstance(packet, bytes)
        hit = demux.planned(memoryview(packet))
        assert hit is not None and hit[0] is tunnel and bytes(hit[1]) == inner
        demux.remove(tunnel)
        assert demux.planned(memoryview(packet)) is None
        assert isinstance(demux.decapsulate(packet), Drop)
    assert demux.fast == {} and demux.single is None


def test_a_lone_planned_tunnel_is_the_demuxs_single() -> None:
    demux = Demux()
    first = Tunnel(TunnelParams("a", Mode.GRE, A, B))
    demux.add(first)
    assert demux.single is first
    second = Tunnel(TunnelParams("b", Mode.GRE, A, C))
    demux.add(second)
    assert demux.single is None
    demux.remove(first)
    assert demux.single is second


def test_show_plan_prints_the_code_that_serves_the_tunnel_and_creates_nothing() -> None:
    import subprocess
    import sys

    argv = [sys.executable, "-m", "usertunnel", "up", "--local", "198.51.100.1", "--remote", "198.51.100.2",
            "--key", "1234", "--seq", "--csum", "--show-plan"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "def tx(inner):" in done.stdout and "def rx(view):" in done.stdout
    assert "#   IKEY = 1234" in done.stdout and "#   SRC = 198.51.100.1" in done.stdout
    assert "inner_sum(inner)" in done.stdout  # the checksum the options asked for is in the code
    plain = plan.describe_plans(Tunnel(TunnelParams("t0", Mode.GRE, A, B)))
    assert "inner_sum" not in plain and "IKEY" not in plain  # and what they did not ask for is not
    assert "no plan" in plan.describe_plans(Tunnel(TunnelParams("t0", Mode.SIT, A, None)))


def test_plans_count_on_the_counters_the_tunnel_has_now() -> None:
    # The daemon's `change` builds a new tunnel and hands it the old one's counters.
    old, new = Tunnel(TunnelParams("t0", Mode.GRE, A, B)), Tunnel(TunnelParams("t0", Mode.GRE, A, B))
    new.counters = old.counters
    inner = ipv4_packet(17, bytes(100))
    assert new.tx_plan is not None and new.rx_plan is not None
    assert new.tx_plan(inner) is not None
    peer = Tunnel(TunnelParams("peer", Mode.GRE, B, A))
    packet = peer.encapsulate(inner)
    assert isinstance(packet, bytes) and new.rx_plan(memoryview(packet)) is not None
    assert (old.counters.tx_packets, old.counters.rx_packets) == (1, 1)
