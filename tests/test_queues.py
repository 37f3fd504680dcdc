"""`usertunnel up --queues N`: the shard filters (each packet kept by exactly one worker, a flow and its
reverse by the same one), the refusals, and N workers end to end in namespaces ut-q*."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from conftest import INNER_A, INNER_B, UNDER_A, UNDER_B, Lab, require_netns
from hypothesis import given, settings
from hypothesis import strategies as st
from traffic import tcp_transfer

from usertunnel import cli
from usertunnel.core.params import Mode, TunnelParams
from usertunnel.io import netns
from usertunnel.io.raw import ShardLayout, shard_filter
from usertunnel.run import workers

SETTINGS = settings(max_examples=300, deadline=None)


# --- a classic BPF interpreter: what the kernel does with the programs ---------------------------------------


def run_filter(program: Sequence[tuple[int, int, int, int]], packet: bytes) -> int:
    """The bytes of `packet` a classic BPF program keeps (0: dropped), for the opcodes io.raw uses; a load
    past the end drops the packet, as in the kernel."""
    a = x = pc = 0
    sizes = {0x00: 4, 0x08: 2, 0x10: 1}
    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        kind = code & 0x07
        if kind == 0x00:  # BPF_LD
            if code & 0xE0 == 0x80:  # BPF_LEN
                a = len(packet)
            else:  # BPF_ABS
                n = sizes[code & 0x18]
                if k + n > len(packet):
                    return 0
                a = int.from_bytes(packet[k : k + n], "big")
        elif kind == 0x04:  # BPF_ALU
            operand = x if code & 0x08 else k
            op = code & 0xF0
            if op == 0x00:
                a += operand
            elif op == 0x20:
                a *= operand
            elif op == 0x50:
                a &= operand
            elif op == 0x70:
                a >>= operand
            else:
                assert op == 0x90, f"ALU opcode {code:#x} not modelled"
                a %= operand
            a &= 0xFFFFFFFF
        elif kind == 0x05:  # BPF_JMP
            if code & 0xF0 == 0x00:  # BPF_JA
                pc += k
                continue
            taken = {0x10: a == k, 0x30: a >= k, 0x40: a & k != 0}[code & 0xF0]
            pc += jt if taken else jf
        elif kind == 0x06:  # BPF_RET
            return k
        elif code == 0x07:  # BPF_TAX
            x = a
        else:
            raise AssertionError(f"opcode {code:#x} not modelled")


def keepers(layout: ShardLayout, count: int, packet: bytes) -> list[int]:
    """The workers whose filter keeps `packet`."""
    return [i for i in range(count) if run_filter(shard_filter(layout, i, count), packet)]


GRE_KEY = workers.shard_layout(TunnelParams("t", Mode.GRE, None, b"\x01\x02\x03\x04", ikey=7, okey=7))
GRE_CSUM = workers.shard_layout(TunnelParams("t", Mode.GRE, None, b"\x01\x02\x03\x04", icsum=True, ocsum=True))
IPIP = workers.shard_layout(TunnelParams("t", Mode.IPIP, None, b"\x01\x02\x03\x04"))
SIT = workers.shard_layout(TunnelParams("t", Mode.SIT, None, b"\x01\x02\x03\x04"))
LAYOUTS = {"gre-key": GRE_KEY, "gre-csum": GRE_CSUM, "ipip": IPIP, "sit": SIT}


def inner_packet(version: int, proto: int, src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    ports = struct.pack("!HH", sport, dport) + bytes(16)
    if version == 4:
        return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(ports), 0, 0x4000, 64, proto, 0, src, dst) + ports
    return struct.pack("!IHBB16s16s", 0x60000000, len(ports), proto, 64, src, dst) + ports


def tunnelled(layout: ShardLayout, inner: bytes, gre_word: int | None = None, frag: int = 0x4000) -> bytes:
    """`inner` behind an outer IPv4 header and, for GRE layouts, a GRE header of `gre_word` (default: the
    layout's own for the inner family) padded to the layout's length."""
    gre = b""
    words = dict(layout.families)
    word = words.get(inner[0] >> 4) if gre_word is None else gre_word
    if word is not None:
        gre = struct.pack("!I", word) + bytes(max(0, layout.inner_offset - 24))
    proto = 47 if word is not None else (4 if inner[0] >> 4 == 4 else 41)
    outer = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(gre) + len(inner), 0, frag, 64, proto, 0,
                        socket.inet_aton(UNDER_A), socket.inet_aton(UNDER_B))  # fmt: skip
    return outer + gre + inner


@st.composite
def received(draw: st.DrawFn) -> tuple[str, bytes]:
    """A layout and a packet its raw socket could receive: well formed or not, truncated or not."""
    name = draw(st.sampled_from(sorted(LAYOUTS)))
    layout = LAYOUTS[name]
    version = draw(st.sampled_from([4, 6]))
    size = 4 if version == 4 else 16
    inner = inner_packet(version, draw(st.sampled_from([6, 17, 1, 47, 0])), draw(st.binary(min_size=size,
                         max_size=size)), draw(st.binary(min_size=size, max_size=size)),
                         draw(st.integers(0, 65535)), draw(st.integers(0, 65535)))  # fmt: skip
    word = draw(st.one_of(st.none(), st.integers(0, 0xFFFFFFFF), st.sampled_from([0x20000800, 0x0800, 0x86DD])))
    packet = bytearray(tunnelled(layout, inner, word, draw(st.sampled_from([0x4000, 0x2000, 0x0001, 0]))))
    for _ in range(draw(st.integers(0, 3))):  # a few bytes anywhere changed: options, lies, garbage
        packet[draw(st.integers(0, len(packet) - 1))] = draw(st.integers(0, 255))
    return name, bytes(packet[: draw(st.integers(0, len(packet)))])


@SETTINGS
@given(received(), st.integers(2, 5))
def test_every_packet_is_kept_by_exactly_one_worker(case: tuple[str, bytes], count: int) -> None:
    name, packet = case
    assert len(keepers(LAYOUTS[name], count, packet)) == 1


@SETTINGS
@given(st.sampled_from(sorted(LAYOUTS)), st.binary(min_size=32, max_size=32), st.integers(0, 65535),
       st.integers(0, 65535), st.sampled_from([6, 17]), st.integers(2, 5))  # fmt: skip
def test_a_flow_and_its_reverse_are_kept_by_the_same_worker(
    name: str, addresses: bytes, sport: int, dport: int, proto: int, count: int
) -> None:
    layout = LAYOUTS[name]
    version = layout.families[-1][0]
    size = 4 if version == 4 else 16
    a, b = addresses[:size], addresses[16 : 16 + size]
    forward = keepers(layout, count, tunnelled(layout, inner_packet(version, proto, a, b, sport, dport)))
    reverse = keepers(layout, count, tunnelled(layout, inner_packet(version, proto, b, a, dport, sport)))
    assert forward == reverse


def test_flows_are_spread_over_every_worker() -> None:
    src, dst = socket.inet_aton(INNER_A), socket.inet_aton(INNER_B)
    for count in (2, 3, 4):
        shares = [0] * count
        for sport in range(40000, 40064):
            (worker,) = keepers(GRE_KEY, count, tunnelled(GRE_KEY, inner_packet(4, 6, src, dst, sport, 5201)))
            shares[worker] += 1
        assert min(shares) >= 64 // count // 2, shares


@pytest.mark.parametrize(
    "packet",
    [
        tunnelled(GRE_KEY, inner_packet(4, 1, bytes(4), bytes(4), 8, 0)),  # ICMP inside
        tunnelled(GRE_KEY, inner_packet(4, 6, bytes(4), bytes(4), 1, 2), gre_word=0x0800),  # no key
        tunnelled(GRE_KEY, inner_packet(4, 6, bytes(4), bytes(4), 1, 2), gre_word=0),  # a keepalive reply
        tunnelled(IPIP, inner_packet(4, 6, bytes(4), bytes(4), 1, 2), frag=0x2000),  # an outer fragment
        tunnelled(GRE_KEY, inner_packet(4, 6, bytes(4), bytes(4), 1, 2))[:40],  # truncated
    ],
    ids=["icmp", "gre-without-key", "keepalive-reply", "fragment", "truncated"],
)
def test_what_cannot_be_hashed_goes_to_worker_0(packet: bytes) -> None:
    assert keepers(GRE_KEY if packet[9] == 47 else IPIP, 3, packet) == [0]


# --- refusals ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--seq"], "sequence numbers"),
        (["--oseq"], "sequence numbers"),
        (["--remote", "any", "--key", "1"], "needs a fixed --remote"),
        (["--trace"], "--trace and --pcap"),
        (["--pcap", "/nonexistent/x.pcapng"], "--trace and --pcap"),
        (["--keepalive", "5", "--local", UNDER_A], "--keepalive"),
        (["--mode", "ip6gre", "--local", "2001:db8::1", "--remote", "2001:db8::2"], "mode ip6gre is not sharded"),
        (["--mode", "gretap"], "mode gretap is not sharded"),
    ],
    ids=["seq", "oseq", "remote-any", "trace", "pcap", "keepalive", "ip6gre", "gretap"],
)
def test_what_workers_cannot_share_is_refused_with_exit_2_before_anything_exists(
    args: list[str], words: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refused(*_: object) -> None:
        raise AssertionError("prepare() reached: something would have been created")

    monkeypatch.setattr(workers, "prepare", refused)
    remote = [] if "--remote" in args else ["--remote", UNDER_B]
    assert cli.main(["up", "--name", "tq0", "--queues", "2", *remote, *args]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("usertunnel up: error: --queues 2") and words in lines[0], lines


# --- end to end ------------------------------------------------------------------------------------------------


class QueueLab(Lab):
    """Namespaces ut-q<pid>-<n>-a/b joined by a veth pair, IPv6 off (nothing but our traffic crosses)."""

    def __init__(self) -> None:
        super().__init__("q", ipv6=False)

    def stats(self, namespace: str) -> dict[str, Any]:
        result = netns.run(namespace, [sys.executable, "-m", "usertunnel", "stats", "-j", "tun0"], timeout=10)
        assert result.returncode == 0, result.stderr.decode()
        (tunnel,) = json.loads(result.stdout)
        return dict(tunnel)

    def device_exists(self, namespace: str) -> bool:
        return netns.run(namespace, ["ip", "link", "show", "tun0"], timeout=10).returncode == 0


@pytest.fixture
def qlab() -> Iterator[QueueLab]:
    require_netns()
    lab = QueueLab()
    try:
        yield lab
    finally:
        lab.close()


def udp_flows(lab: QueueLab, flows: int, per_flow: int) -> dict[int, list[int]]:
    """`per_flow` numbered datagrams on each of `flows` UDP flows A -> B (source ports 41000 + i), paced;
    for each flow, the numbers B received, in the order received."""
    receiver = netns.open_socket(lab.b, socket.AF_INET, socket.SOCK_DGRAM)
    receiver.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE: nothing lost at the socket
    receiver.bind((INNER_B, 6000))
    senders = []
    for i in range(flows):
        sender = netns.open_socket(lab.a, socket.AF_INET, socket.SOCK_DGRAM)
        sender.bind((INNER_A, 41000 + i))
        senders.append(sender)
    seen: dict[int, list[int]] = {i: [] for i in range(flows)}
    try:
        for n in range(per_flow):
            for i, sender in enumerate(senders):
                sender.sendto(f"{i} {n}".encode(), (INNER_B, 6000))
            time.sleep(0.002)
        receiver.settimeout(1.0)
        for _ in range(flows * per_flow * 2):  # bounded: duplicates would show as more than sent
            try:
                data = receiver.recv(100)
            except TimeoutError:
                break
            flow, n = map(int, data.split())
            seen[flow].append(n)
    finally:
        receiver.close()
        for sender in senders:
            sender.close()
    return seen


def delta(after: dict[str, Any], before: dict[str, Any], field: str) -> list[int]:
    """Each worker's change in `field` of its stats between two `usertunnel stats -j` answers."""
    return [w["stats"][field] - v["stats"][field] for w, v in zip(after["workers"], before["workers"], strict=True)]


@pytest.mark.netns
@pytest.mark.parametrize("mode", [["--key", "1234"], ["--mode", "ipip"]], ids=["gre-key", "ipip"])
def test_two_queues_each_packet_handled_once_flows_in_order_and_tcp_intact(qlab: QueueLab, mode: list[str]) -> None:
    end_a, end_b = qlab.pair(["--queues", "2", *mode])
    assert "queues 2" in end_a.wait_ready()
    for namespace, target in ((qlab.a, INNER_B), (qlab.b, INNER_A)):
        ping = netns.run(namespace, ["ping", "-c", "3", "-i", "0.2", "-W", "1", target], timeout=10)
        assert ping.returncode == 0, ping.stdout.decode()

    # Exactly once: 8 UDP flows of numbered datagrams, every datagram once, each flow in order, and the
    # tunnel counters of both ends moved by exactly the number sent; both of B's workers had a share.
    flows, per_flow = 8, 50
    before_a, before_b = qlab.stats(qlab.a), qlab.stats(qlab.b)
    seen = udp_flows(qlab, flows, per_flow)
    after_a, after_b = qlab.stats(qlab.a), qlab.stats(qlab.b)
    assert seen == {i: list(range(per_flow)) for i in range(flows)}
    assert sum(delta(after_a, before_a, "tx_packets")) == flows * per_flow
    received = delta(after_b, before_b, "rx_packets")
    assert sum(received) == flows * per_flow and min(received) > 0, received
    assert after_b["stats"]["rx_packets"] == sum(w["stats"]["rx_packets"] for w in after_b["workers"])
    assert after_b["stats"]["drops"] == {} and after_b["unmatched"]["drops"] == {}

    # 8 parallel TCP flows arrive intact.
    results: dict[int, tuple[str, str]] = {}

    def transfer(port: int) -> None:
        results[port] = tcp_transfer(qlab.a, qlab.b, INNER_B, port, 1 << 20)

    threads = [threading.Thread(target=transfer, args=(5001 + i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 8 and all(sent == got for sent, got in results.values()), results

    stats_a, stats_b = end_a.stop(), end_b.stop()
    assert end_a.returncode == 0 and end_b.returncode == 0
    for stats in (stats_a, stats_b):
        shares = [stats[f"tun0 worker {i}"] for i in range(2)]
        assert stats["tun0"]["rx_packets"] == sum(s["rx_packets"] for s in shares)
        assert stats["tun0"]["tx_packets"] == sum(s["tx_packets"] for s in shares)
        assert stats["tun0"]["drops"] == {}
    assert min(stats_b[f"tun0 worker {i}"]["rx_packets"] for i in range(2)) > 0
    assert stats_b["tun0"]["rx_bytes"] >= 8 << 20


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.netns
def test_sigterm_stops_every_worker_and_removes_the_device(qlab: QueueLab) -> None:
    end = qlab.start(qlab.a, ["--remote", UNDER_B, "--name", "tun0", "--queues", "3"])
    pids = children(end.pid)
    assert len(pids) == 3 and qlab.device_exists(qlab.a)
    t0 = time.monotonic()
    end.stop()
    assert end.returncode == 0 and time.monotonic() - t0 < 3
    assert not qlab.device_exists(qlab.a)
    assert all(gone(pid) for pid in pids)
    assert [f"tun0 worker {i}" for i in range(3)] == [name for name in end.stats() if "worker" in name]


@pytest.mark.netns
def test_a_worker_that_dies_stops_the_others_and_the_parent_exits_1(qlab: QueueLab) -> None:
    end = qlab.start(qlab.a, ["--remote", UNDER_B, "--name", "tun0", "--queues", "2"])
    first, second = children(end.pid)
    os.kill(second, signal.SIGKILL)
    assert end.wait_exit(10) == 1
    assert any(f"worker 1 (pid {second}) killed by SIGKILL; stopping every worker" in line for line in end.lines)
    assert gone(first) and not qlab.device_exists(qlab.a)
