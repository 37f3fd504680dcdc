"""Processes that share a network namespace: one serves each tunnel identity (io.claim), and each reads only
its own tunnels' packets (io.raw.tunnel_filter). Namespaces ut-claim-*."""

from __future__ import annotations

import socket
import struct
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import INNER_A, UNDER_A, UNDER_B, Lab, require_netns
from hypothesis import given, settings
from hypothesis import strategies as st
from test_daemon import start_daemon, usertunnel
from test_queues import run_filter

from usertunnel.core.drops import Drop
from usertunnel.core.encap import Demux, Tunnel
from usertunnel.core.params import Mode, TunnelParams
from usertunnel.io import netns
from usertunnel.io.claim import Identity, identities
from usertunnel.io.netns import UpProcess
from usertunnel.io.raw import BPF_MAXINSNS, FilterOffsets, receive_filter, tunnel_filter

# --- the filter against the lookup (a classic BPF interpreter: tests/test_queues.py) ------------------------

ADDRESSES = [bytes([198, 51, 100, n]) for n in (1, 2, 3)]
KEYS = [None, 1, 2]
GRE, GRETAP = Mode.GRE.value.table, Mode.GRETAP.value.table
_STEPS = ((True, True), (False, True), (True, False), (False, False))  # which of local, remote a step tests


def tunnel_of(identity: Identity, index: int) -> Tunnel:
    (mode,) = [m for m in Mode if m.value.table == identity.table and not m.value.isatap and not m.value.esp]
    key = identity.key
    return Tunnel(TunnelParams(f"t{index}", mode, identity.local, identity.remote, ikey=key, okey=key))


def identity_of(tunnel: Tunnel) -> Identity:
    (identity,) = identities(tunnel.params)
    return identity


def first_pattern(claims: list[Identity], src: bytes, dst: bytes) -> list[Identity]:
    """The identities of the first address pattern, in lookup order, that matches (core.lookup.address_match)."""
    for uses_local, uses_remote in _STEPS:
        found = [
            c for c in claims
            if (c.local is not None) == uses_local and (c.remote is not None) == uses_remote
            and c.local in (None, dst) and c.remote in (None, src)
        ]  # fmt: skip
        if found:
            return found
    return []


def expected_keep(claims: list[Identity], mine: set[Identity], packet: bytes) -> bool:
    """What the filter should do (io.raw._tunnel_code's rule), from one Demux holding every claim's tunnel:
    `packet` begins with its outer IPv4 header, or with its outer IPv6 header (no extension headers)."""
    if all(c in mine for c in claims):
        return True
    ipv6 = packet[0] >> 4 == 6
    if not ipv6 and (packet[0] != 0x45 or struct.unpack_from("!H", packet, 6)[0] & 0x3FFF):
        return True  # an outer header the filter does not read is kept
    tunnels = [tunnel_of(c, i) for i, c in enumerate(claims)]
    demux = Demux()
    for t in tunnels:
        demux.add(t)
    before = [(t.counters.rx_packets, sum(t.counters.drops.values())) for t in tunnels]
    if ipv6:
        src, dst = packet[8:24], packet[24:40]
        result = demux.decapsulate6(packet[6], src, dst, 0, packet[40:])
    else:
        src, dst = packet[12:16], packet[16:20]
        result = demux.decapsulate(packet)
    counted = [t for t, b in zip(tunnels, before, strict=True)
               if (t.counters.rx_packets, sum(t.counters.drops.values())) != b]  # fmt: skip
    if result in (Drop.GRE_TRUNCATED, Drop.GRE_VERSION, Drop.GRE_ROUTING):
        return any(c in mine for c in first_pattern(claims, src, dst))
    if not counted:
        return False  # nobody's (no_tunnel, or a wrong key no address pattern matches)
    (owner,) = counted
    if result is Drop.KEY_MISMATCH:
        table = identity_of(owner).table
        group = [c for c in claims if c.table == table and (c.local, c.remote) == (owner.params.local,
                                                                                      owner.params.remote)]  # fmt: skip
        return any(c in mine for c in group)
    return identity_of(owner) in mine


@st.composite
def claim_sets(
    draw: st.DrawFn, tables: tuple[int, ...] = (GRE, GRETAP), addresses: list[bytes] = ADDRESSES
) -> tuple[list[Identity], set[Identity]]:
    address = st.sampled_from([None, *addresses])
    key = st.sampled_from(KEYS) if tables != (4,) else st.just(None)
    identities = st.builds(Identity, st.sampled_from(tables), address, address, key)
    # A tunnel joins two different hosts: local equal to remote is refused (TunnelParams), so never claimed.
    distinct = identities.filter(lambda c: c.local is None or c.local != c.remote)
    found = draw(st.sets(distinct, min_size=1, max_size=8))
    claims = sorted(found, key=lambda c: c.order)
    mine = {c for c in claims if draw(st.booleans())}
    return claims, mine


@st.composite
def gre_packets(draw: st.DrawFn, ipv6: bool = False) -> bytes:
    flags = draw(st.sampled_from([0, 0x8000]) | st.just(0)) | draw(st.sampled_from([0, 0x2000]))
    flags |= draw(st.sampled_from([0, 0x1000]))
    if draw(st.integers(0, 9)) == 0:
        flags |= draw(st.sampled_from([0x4000, 0x0001, 0x0007]))  # routing or a version: unreadable
    proto = draw(st.sampled_from([0x0800, 0x86DD, 0x6558]))
    header = struct.pack("!HH", flags, proto)
    if flags & 0x8000:
        header += bytes(4)
    if flags & 0x2000:
        header += struct.pack("!I", draw(st.sampled_from([0, 1, 2, 3])))
    if flags & 0x1000:
        header += struct.pack("!I", 7)
    inner = bytes.fromhex("4500001c00000000400100000a0000010a000002") + bytes(8)
    payload = header + (inner if proto != 0x6558 else bytes(14) + inner)
    payload = payload[: draw(st.integers(0, len(payload)))] if draw(st.integers(0, 9)) == 0 else payload
    return outer6(draw, 47, payload) if ipv6 else outer(draw, 47, payload)


def outer(draw: st.DrawFn, protocol: int, payload: bytes) -> bytes:
    src, dst = draw(st.sampled_from(ADDRESSES)), draw(st.sampled_from(ADDRESSES))
    frag = 0x2000 if draw(st.integers(0, 19)) == 0 else 0x4000  # now and then a fragment
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, frag, 64, protocol, 0, src, dst) + payload


ADDRESSES6 = [bytes.fromhex("20010db8000000010000000000000000") + bytes([0, n]) for n in (1, 2, 3)]
ADDRESSES6 = [a[:14] + a[16:] for a in ADDRESSES6]  # 2001:db8:1::1, ::2, ::3
# The program as a raw IPv6 socket runs it reads the addresses through SKF_NET_OFF, which the interpreter does
# not model: the same program with the addresses and the GRE header at their offsets in the whole packet.
WHOLE_IPV6 = FilterOffsets(8, 24, 40, False)


def outer6(draw: st.DrawFn, protocol: int, payload: bytes) -> bytes:
    src, dst = draw(st.sampled_from(ADDRESSES6)), draw(st.sampled_from(ADDRESSES6))
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), protocol, 64, src, dst) + payload


@settings(max_examples=300, deadline=None)
@given(
    claim_sets((Mode.IP6GRE.value.table, Mode.IP6GRETAP.value.table), ADDRESSES6),
    st.lists(gre_packets(ipv6=True), min_size=1, max_size=8),
)
def test_the_ip6gre_filter_keeps_exactly_what_the_namespaces_lookup_gives_this_process(
    case: tuple[list[Identity], set[Identity]], packets: list[bytes]
) -> None:
    claims, mine = case
    program = tunnel_filter(47, claims, mine, outer=6, at=WHOLE_IPV6)
    assert (program is None) == all(c in mine for c in claims)
    for packet in packets:
        kept = program is None or run_filter(program, packet) != 0
        assert kept == expected_keep(claims, mine, packet), (claims, mine, packet.hex())


@settings(max_examples=400, deadline=None)
@given(claim_sets(), st.lists(gre_packets(), min_size=1, max_size=8))
def test_the_gre_filter_keeps_exactly_what_the_namespaces_lookup_gives_this_process(
    case: tuple[list[Identity], set[Identity]], packets: list[bytes]
) -> None:
    claims, mine = case
    program = tunnel_filter(47, claims, mine)
    assert (program is None) == all(c in mine for c in claims)
    for packet in packets:
        kept = program is None or run_filter(program, packet) != 0
        assert kept == expected_keep(claims, mine, packet), (claims, mine, packet.hex())


@st.composite
def ipip_packets(draw: st.DrawFn) -> bytes:
    return outer(draw, 4, bytes.fromhex("4500001c00000000400100000a0000010a000002") + bytes(8))


@settings(max_examples=200, deadline=None)
@given(claim_sets((4,)), st.lists(ipip_packets(), min_size=1, max_size=6))
def test_the_ipip_filter_keeps_exactly_what_the_namespaces_lookup_gives_this_process(
    case: tuple[list[Identity], set[Identity]], packets: list[bytes]
) -> None:
    claims, mine = case
    program = tunnel_filter(4, claims, mine)
    for packet in packets:
        kept = program is None or run_filter(program, packet) != 0
        assert kept == expected_keep(claims, mine, packet), (claims, mine, packet.hex())


def test_claims_of_other_protocols_and_families_do_not_make_a_filter() -> None:
    mine = Identity(GRE, ADDRESSES[0], ADDRESSES[1], 1)
    others = [Identity(4, ADDRESSES[0], ADDRESSES[1], None), Identity(GRE + 256, None, None, 1)]
    assert tunnel_filter(47, [mine, *others], {mine}) is None


def test_a_worker_keeps_its_tunnels_packets_and_its_shard_only() -> None:
    from test_queues import GRE_KEY, keepers

    mine = Identity(GRE, None, bytes([1, 2, 3, 4]), 7)
    other = Identity(GRE, None, ADDRESSES[2], 7)
    packet = bytes.fromhex("4500004000000000402f0000010203040a0000012000080000000007")
    packet += bytes.fromhex("450000240000400040110000c0000201c000020204d2162e00100000") + bytes(8)
    packet = packet[:2] + struct.pack("!H", len(packet)) + packet[4:]
    (worker,) = keepers(GRE_KEY, 2, packet)
    for index in range(2):
        program = receive_filter(47, [mine, other], {mine}, (GRE_KEY, index, 2))
        assert program is not None
        assert (run_filter(program, packet) != 0) == (index == worker)
        theirs = packet[:12] + ADDRESSES[2] + packet[16:]
        assert run_filter(program, theirs) == 0


def test_a_daemon_too_large_for_one_program_reads_everything() -> None:
    many = [Identity(GRE, ADDRESSES[0], n.to_bytes(4, "big"), 1) for n in range(1000)]
    other = Identity(GRE, ADDRESSES[1], ADDRESSES[2], 1)
    assert tunnel_filter(47, [*many, other], set(many)) is None
    program = tunnel_filter(47, [*many[:100], other], set(many[:100]))
    assert program is not None and len(program) <= BPF_MAXINSNS


# --- end to end ------------------------------------------------------------------------------------------------


@pytest.fixture
def clab() -> Iterator[Lab]:
    require_netns()
    lab = Lab("claim-", ipv6=False)
    try:
        yield lab
    finally:
        lab.close()


def up_args(remote: str, name: str, inner: str, *more: str, local: str = UNDER_A) -> list[str]:
    return ["--local", local, "--remote", remote, "--name", name, "--address", inner, *more]


def run_up(namespace: str, args: list[str]) -> Any:
    return netns.run(namespace, [sys.executable, "-m", "usertunnel", "up", *args], timeout=30)


def device_exists(namespace: str, name: str) -> bool:
    return netns.run(namespace, ["ip", "link", "show", name], timeout=10).returncode == 0


@pytest.mark.netns
def test_a_second_up_with_the_same_identity_exits_2_naming_the_first_and_leaves_nothing(clab: Lab) -> None:
    first = clab.start(clab.a, up_args(UNDER_B, "tun0", f"{INNER_A}/30", "--key", "1234"))
    second = run_up(clab.a, up_args(UNDER_B, "tun1", "203.0.113.5/30", "--key", "1234"))
    lines = second.stderr.decode().splitlines()
    assert second.returncode == 2, lines
    assert len(lines) == 1, lines
    assert lines[0] == (
        f"usertunnel up: error: gre local {UNDER_A} remote {UNDER_B} key 1234 is already served in this network "
        f"namespace by pid {first.pid} (usertunnel up, tunnel tun0): File exists"
    )
    assert not device_exists(clab.a, "tun1")
    # Another key, or the same key with another remote, is another identity.
    other = clab.start(clab.a, up_args(UNDER_B, "tun2", "203.0.113.9/30", "--key", "99"))
    other.stop()
    first.kill()  # even kill -9 frees the claim
    again = clab.start(clab.a, up_args(UNDER_B, "tun1", "203.0.113.5/30", "--key", "1234"))
    assert again.stop()["tun1"]["drops"] == {}
    assert again.returncode == 0


@pytest.mark.netns
def test_the_daemon_and_up_refuse_each_others_identities(clab: Lab) -> None:
    daemon = start_daemon(clab, clab.a)
    holder = clab.start(clab.a, up_args(UNDER_B, "tun0", f"{INNER_A}/30", "--key", "1234"))
    add = usertunnel(clab.a, "tunnel", "add", "g1", "mode", "gre", "local", UNDER_A, "remote", UNDER_B, "key", "1234")
    assert add.returncode == 1
    assert add.stderr.decode().strip() == (
        f'add tunnel "g1" failed: gre local {UNDER_A} remote {UNDER_B} key 1234 is already served in this network '
        f"namespace by pid {holder.pid} (usertunnel up, tunnel tun0): File exists"
    )
    assert not device_exists(clab.a, "g1")
    ok = usertunnel(clab.a, "tunnel", "add", "g2", "mode", "gre", "local", UNDER_A, "remote", UNDER_B, "key", "99")
    assert ok.returncode == 0, ok.stderr.decode()
    refused = run_up(clab.a, up_args(UNDER_B, "tun1", "203.0.113.5/30", "--key", "99"))
    assert refused.returncode == 2
    assert (
        refused.stderr.decode()
        .strip()
        .endswith(
            f"key 99 is already served in this network namespace by pid {daemon.pid} (usertunnel daemon, tunnel g2): "
            "File exists"
        )
    )
    assert not device_exists(clab.a, "tun1")
    # change takes the new identity and frees the old one; del frees it.
    change = usertunnel(clab.a, "tunnel", "change", "g2", "key", "1234")
    assert change.returncode == 1 and b"already served" in change.stderr
    assert usertunnel(clab.a, "tunnel", "change", "g2", "key", "100").returncode == 0
    taken = clab.start(clab.a, up_args(UNDER_B, "tun1", "203.0.113.5/30", "--key", "99"))
    taken.stop()
    assert usertunnel(clab.a, "tunnel", "del", "g2").returncode == 0
    freed = clab.start(clab.a, up_args(UNDER_B, "tun1", "203.0.113.5/30", "--key", "100"))
    freed.stop()
    assert freed.returncode == 0


# Four tunnels from A (198.51.100.1) to four peers in B: two share their addresses and differ by key.
FOUR = [
    ("198.51.100.2", ["--key", "1"]),
    ("198.51.100.2", ["--key", "2"]),
    ("198.51.100.3", ["--key", "3"]),
    ("198.51.100.4", []),
]


@pytest.mark.netns
def test_four_up_processes_in_one_namespace_each_read_only_their_own_packets(clab: Lab) -> None:
    for extra in ("198.51.100.3", "198.51.100.4"):
        assert clab.run(clab.b, ["ip", "addr", "add", f"{extra}/24", "dev", clab.veth_b]).returncode == 0
    ours: list[UpProcess] = []
    peers: list[UpProcess] = []
    for i, (peer, more) in enumerate(FOUR):
        ours.append(clab.start(clab.a, up_args(peer, f"tun{i}", f"203.0.113.{4 * i + 1}/30", *more)))
        peers.append(clab.start(clab.b, up_args(UNDER_A, f"tun{i}", f"203.0.113.{4 * i + 2}/30", *more, local=peer)))
    time.sleep(0.2)  # the pokes: every process has rebuilt its filter
    for i in range(len(FOUR)):
        ping = clab.ping(clab.a, f"203.0.113.{4 * i + 2}", count=5)
        assert ping.returncode == 0, ping.stdout.decode()
    for i, end in enumerate([*ours, *peers]):
        stats = end.stop()
        name = f"tun{i % len(FOUR)}"
        assert end.returncode == 0
        assert stats[name]["rx_packets"] >= 5, stats
        assert stats[name]["drops"] == {}, stats  # no key_mismatch: another process's key is not read
        assert stats["unmatched"]["drops"] == {}, stats  # no no_tunnel: another process's remote is not read


UNDER6_A = "2001:db8:1::1"
THREE6 = [("2001:db8:1::2", ["--key", "1"]), ("2001:db8:1::2", ["--key", "2"]), ("2001:db8:1::3", [])]


@pytest.mark.netns
def test_ip6gre_processes_in_one_namespace_each_read_only_their_own_packets() -> None:
    """The IPv6 filter reads the addresses through SKF_NET_OFF and the GRE header at offset 0."""
    require_netns()
    lab = Lab("claim-", ipv6=True)
    try:
        sides = ((lab.a, lab.veth_a, [UNDER6_A]), (lab.b, lab.veth_b, ["2001:db8:1::2", "2001:db8:1::3"]))
        for ns, veth, addresses in sides:
            for address in addresses:
                assert lab.run(ns, ["ip", "-6", "addr", "add", f"{address}/64", "dev", veth, "nodad"]).returncode == 0
            # No IPv6 on the tunnel devices: their router solicitations and MLD reports, sent as each comes up,
            # would reach the peer's processes before the one with their key exists (a true key mismatch).
            assert lab.run(ns, ["sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1"]).returncode == 0
        ours, peers = [], []
        for i, (peer, more) in enumerate(THREE6):
            mode = ["--mode", "ip6gre"]
            ours.append(lab.start(lab.a, mode + up_args(peer, f"tun{i}", f"203.0.113.{4 * i + 1}/30", *more,
                                                        local=UNDER6_A)))  # fmt: skip
            peers.append(lab.start(lab.b, mode + up_args(UNDER6_A, f"tun{i}", f"203.0.113.{4 * i + 2}/30", *more,
                                                         local=peer)))  # fmt: skip
        time.sleep(0.2)
        for i in range(len(THREE6)):
            ping = lab.ping(lab.a, f"203.0.113.{4 * i + 2}", count=5)
            assert ping.returncode == 0, ping.stdout.decode()
        for i, end in enumerate([*ours, *peers]):
            stats = end.stop()
            name = f"tun{i % len(THREE6)}"
            assert stats[name]["rx_packets"] >= 5, stats
            assert stats[name]["drops"] == {}, stats
            assert stats["unmatched"]["drops"] == {}, stats
    finally:
        lab.close()


@pytest.mark.netns
def test_an_ipv6_raw_sockets_filter_sees_the_gre_header_at_0_and_the_ipv6_header_through_skf_net_off() -> None:
    """What io.raw.IPV6_OFFSETS rests on: `ldb [k]; ret a` keeps as many bytes as the byte it loaded."""
    from usertunnel.io.raw import SKF_NET_OFF

    require_netns()
    lab = Lab("claim-", ipv6=True)
    try:
        assert kept(lab, 0) == 10  # the payload, after the IPv6 header and its destination options
        assert kept(lab, SKF_NET_OFF + 6) == 60  # the IPv6 header's next header: destination options
        assert kept(lab, SKF_NET_OFF + 39) == 1  # the last byte of the destination address, ::1
    finally:
        lab.close()


def kept(lab: Lab, k: int) -> int:
    """The bytes an IPv6 raw socket for GRE keeps of a packet sent to ::1 under the program `ldb [k]; ret a`."""
    from usertunnel.io.raw import _attach_filter

    rx = lab.socket(lab.a, socket.AF_INET6, socket.SOCK_RAW, 47)
    tx = lab.socket(lab.a, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        _attach_filter(rx, [(0x30, 0, 0, k & 0xFFFFFFFF), (0x16, 0, 0, 0)])
        option = bytes([47, 0, 4, 1, 4, 1, 1, 0])  # next header GRE; encapsulation limit 4, PadN
        payload = bytes(range(10, 210))  # the "GRE header" begins with byte 10
        loopback = socket.inet_pton(socket.AF_INET6, "::1")
        header = struct.pack("!IHBB16s16s", 0x60000000, len(option) + len(payload), 60, 64, loopback, loopback)
        tx.sendto(header + option + payload, ("::1", 0))
        rx.settimeout(2)
        return len(rx.recv(4096))
    finally:
        rx.close()
        tx.close()
