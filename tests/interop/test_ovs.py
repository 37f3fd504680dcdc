"""usertunnel against Open vSwitch 3.1's userspace GRE (datapath_type=netdev, packet_type=legacy_l3).

OVS is booted once for the module (ovs_peer.OvsPeer); each test gives it a
fresh GRE port with the options under test and starts a fresh `usertunnel up`
with the matching ones. Traffic goes both ways (pings at full MTU, 5 MB of TCP
checked by SHA-256), and what OVS puts on the wire is captured on the underlay
and decoded by tshark, so the facts asserted below are what OVS was seen to
send, not what its documentation says.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from ovs_peer import HOST_ADDR, NS_HOST, NS_OVS, OURS, OVS_ADDR, THEIRS, UNDERLAY_MTU, VETH_HOST, OvsPeer, missing
from traffic import tcp_transfer

from usertunnel.io import netns
from usertunnel.io.netns import UpProcess


def _require_netns() -> Callable[[], None]:
    """tests/conftest.py's require_netns, even if a conftest.py in this directory shadows the name `conftest`."""
    try:
        from conftest import require_netns
    except ImportError:
        path = Path(__file__).resolve().parent.parent / "conftest.py"
        spec = importlib.util.spec_from_file_location("_usertunnel_tests_conftest", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        require_netns = module.require_netns
    return require_netns


require_netns = _require_netns()

TRANSFER = 5 * 1024 * 1024
PORT = 5002
OVS_TTL = 64  # OVS's default outer TTL ("the system default"); observed below, not configured
SEND_SIDE_DROPS = ("send_error", "send_nobufs", "send_msgsize", "icmp_error")  # not about what OVS sent us


def receive_drops(stats: dict[str, Any]) -> dict[str, int]:
    """usertunnel's drop counters for what it received (every reason but the send side's), of all tunnels."""
    found: dict[str, int] = {}
    for tunnel in stats.values():
        for reason, n in tunnel["drops"].items():
            if reason not in SEND_SIDE_DROPS:
                found[reason] = found.get(reason, 0) + n
    return found


def require_ovs() -> None:
    """Skip when OVS or tshark is missing, or fail under USERTUNNEL_REQUIRE_NETNS=1."""
    reason = missing()
    if reason is None and shutil.which("tshark") is None:
        reason = "tshark is not installed (Debian package tshark)"
    if reason is None:
        return
    if os.environ.get("USERTUNNEL_REQUIRE_NETNS") == "1":
        pytest.fail(f"USERTUNNEL_REQUIRE_NETNS=1 but the OVS interop tests cannot run: {reason}")
    pytest.skip(reason)


@dataclass(frozen=True)
class Variant:
    """One GRE configuration, said once in OVS's words (Interface options) and once in usertunnel's."""

    name: str
    ovs: dict[str, str] = field(default_factory=dict)
    ours: tuple[str, ...] = ()

    @property
    def mtu(self) -> int:
        """The inner MTU both sides must agree on: underlay - outer IPv4 20 - GRE 4 - 4 per optional field."""
        fields = sum(opt in self.ours for opt in ("--key", "--seq", "--csum"))
        return UNDERLAY_MTU - 20 - 4 - 4 * fields


KEY = Variant("key", {"key": "1234"}, ("--key", "1234"))
CSUM = Variant("csum", {"csum": "true"}, ("--csum",))
SEQ = Variant("seq", {"seq": "true"}, ("--seq",))
WORKING = [KEY, CSUM, SEQ]


@pytest.fixture(scope="module")
def peer() -> Iterator[OvsPeer]:
    require_netns()
    require_ovs()
    with OvsPeer() as ovs:
        yield ovs


class Tunnel:
    """usertunnel in NS_HOST facing the OVS peer's current GRE port."""

    def __init__(self, peer: OvsPeer, variant: Variant) -> None:
        self.variant = variant
        peer.gre(variant.ovs, variant.mtu)
        self.ours = UpProcess(
            NS_HOST,
            ["--local", HOST_ADDR, "--remote", OVS_ADDR, "--name", "ut0", "--address", f"{OURS}/30", *variant.ours],
        )
        try:
            self.ready = self.ours.wait_ready()
        except BaseException:
            self.ours.kill()
            raise

    def stop(self) -> dict[str, Any]:
        stats = self.ours.stop()
        assert self.ours.returncode == 0, self.ours.lines[-5:]
        return stats


@pytest.fixture
def tunnel(peer: OvsPeer) -> Iterator[Callable[[Variant], Tunnel]]:
    made: list[Tunnel] = []

    def make(variant: Variant) -> Tunnel:
        made.append(Tunnel(peer, variant))
        return made[-1]

    yield make
    for t in made:
        t.ours.kill()


# --- traffic ------------------------------------------------------------------------------------------------


def ping(namespace: str, target: str, *extra: str, count: int = 3) -> subprocess.CompletedProcess[bytes]:
    return netns.run(namespace, ["ping", "-c", str(count), "-i", "0.2", "-W", "2", *extra, target], timeout=30)


# --- what is on the wire ------------------------------------------------------------------------------------

FIELDS = (
    "ip.src", "ip.dst", "ip.ttl", "ip.dsfield", "ip.flags.df", "ip.id", "ip.proto",
    "gre.flags.checksum", "gre.flags.routing", "gre.flags.key", "gre.flags.sequence_number", "gre.flags.version",
    "gre.proto", "gre.checksum.status", "gre.offset", "gre.key", "gre.sequence_number",
)  # fmt: skip


@dataclass
class Packet:
    """One GRE packet as tshark decoded it: outer and inner IPv4 (lists: outer first), GRE fields."""

    ip: dict[str, list[str]]
    gre: dict[str, str]

    def outer(self, name: str) -> int:
        return _number(self.ip[name][0])

    def inner(self, name: str) -> int:
        return _number(self.ip[name][1])

    def flag(self, name: str) -> bool:
        return _number(self.gre[f"gre.flags.{name}"]) == 1

    def number(self, name: str) -> int:
        return _number(self.gre[f"gre.{name}"])


def _number(text: str) -> int:
    """A tshark field value: decimal, 0x hex, or a boolean (1/0 in tshark 4.0, True/False in later ones)."""
    if text in ("True", "False"):
        return int(text == "True")
    return int(text, 0)


class Capture:
    """tshark on usertunnel's veth, keeping the GRE packets OVS sends until `packets` is called.

    tshark says "Capturing on" a little before it really is, and it may still hold the last packets when
    stopped: so a canary (a UDP datagram to port 9, also captured) is sent until tshark shows one before
    the traffic, and once more after it, so that everything in between is in the file.
    """

    CANARY_PORT = 9

    def __init__(self, workdir: Path, seconds: int = 30) -> None:
        self.path = workdir / f"ovs-{time.monotonic_ns()}.pcapng"
        wanted = f"(ip proto 47 and src host {OVS_ADDR}) or (udp dst port {self.CANARY_PORT} and src host {HOST_ADDR})"
        argv = ["tshark", "-i", VETH_HOST, "-f", wanted, "-a", f"duration:{seconds}", "-l", "-P", "-w", str(self.path)]
        self.proc = netns.popen(NS_HOST, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._canaries = 0
        self._seen = threading.Condition()
        threading.Thread(target=self._count, daemon=True).start()
        self._sync("start")

    def _count(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # one summary line per captured packet
            if b" UDP " in line:
                with self._seen:
                    self._canaries += 1
                    self._seen.notify_all()

    def _sync(self, when: str) -> None:
        """Send canaries until tshark shows a new one: it has then seen every packet sent before."""
        canary = netns.open_socket(NS_HOST, socket.AF_INET, socket.SOCK_DGRAM)
        with canary, self._seen:
            before = self._canaries
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                canary.sendto(b"usertunnel-capture-canary", (OVS_ADDR, self.CANARY_PORT))
                if self._seen.wait_for(lambda: self._canaries > before, timeout=0.2):
                    return
        self.proc.kill()
        _, err = self.proc.communicate(timeout=10)
        raise RuntimeError(f"tshark on {VETH_HOST} captured no canary at {when}: {err.decode(errors='replace')}")

    def packets(self, expected: int) -> list[Packet]:
        """Stop the capture and decode OVS's GRE packets; there must be `expected` of them."""
        self._sync("stop")
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        argv = ["tshark", "-r", str(self.path), "-Y", "gre", "-T", "fields", "-E", "aggregator=,"]
        for name in FIELDS:
            argv += ["-e", name]
        out = subprocess.run(argv, capture_output=True, timeout=30, check=True).stdout.decode()
        found = []
        for line in out.splitlines():
            row = dict(zip(FIELDS, line.split("\t"), strict=True))
            found.append(
                Packet(
                    {k: v.split(",") for k, v in row.items() if k.startswith("ip.")},
                    {k: v for k, v in row.items() if k.startswith("gre.")},
                )
            )
        assert len(found) == expected, f"expected {expected} GRE packets from OVS, captured {len(found)}: {found}"
        return found


def capture_pings(peer: OvsPeer, count: int = 3) -> list[Packet]:
    """OVS's side of `count` pings each way: its echo replies, then its echo requests (inner TTL 9, ECT(0))."""
    capture = Capture(peer.workdir)
    assert ping(NS_HOST, THEIRS, count=count).returncode == 0
    assert ping(NS_OVS, OURS, "-t", "9", "-Q", "0x02", count=count).returncode == 0
    return capture.packets(2 * count)


def assert_outer_header_is_ovs_default(packets: list[Packet]) -> None:
    """What every packet OVS sent carried in its outer IPv4 header, whatever the GRE options."""
    for p in packets:
        assert (p.ip["ip.src"][0], p.ip["ip.dst"][0], p.outer("ip.proto")) == (OVS_ADDR, HOST_ADDR, 47)
        assert p.outer("ip.ttl") == OVS_TTL  # a fixed TTL: inner TTL 9 is not inherited
        assert p.outer("ip.dsfield") == p.inner("ip.dsfield") & 0x03  # DSCP 0, ECN copied from the inner packet
        assert p.outer("ip.flags.df") == 1  # df_default=true: DF always set
        assert p.outer("ip.id") == 0  # OVS never fills in the identification
        assert not p.flag("routing") and p.number("flags.version") == 0
        assert p.number("proto") == 0x0800  # legacy_l3: IPv4 in GRE, not Ethernet (0x6558)
    assert {p.inner("ip.dsfield") for p in packets} == {0x00, 0x02}  # both cases were seen
    assert {p.inner("ip.ttl") for p in packets} >= {9}


# --- tests --------------------------------------------------------------------------------------------------


@pytest.mark.netns
@pytest.mark.parametrize("variant", WORKING, ids=lambda v: v.name)
@pytest.mark.matrix("ping at full MTU + 5 MB TCP, both directions")
def test_ping_both_ways_at_full_mtu_and_5mb_tcp_both_ways_arrive_intact(
    tunnel: Callable[[Variant], Tunnel], variant: Variant
) -> None:
    t = tunnel(variant)
    assert f"mtu {variant.mtu}" in t.ready
    for namespace, target in ((NS_HOST, THEIRS), (NS_OVS, OURS)):
        result = ping(namespace, target)
        assert result.returncode == 0, result.stdout.decode()
        # The largest unfragmentable inner packet fits the underlay in both encapsulators: same overhead.
        full = ping(namespace, target, "-M", "do", "-s", str(variant.mtu - 28), count=2)
        assert full.returncode == 0, full.stdout.decode()
    sent, received = tcp_transfer(NS_HOST, NS_OVS, THEIRS, PORT, TRANSFER, timeout=30)
    assert sent == received
    sent, received = tcp_transfer(NS_OVS, NS_HOST, OURS, PORT, TRANSFER, timeout=30)
    assert sent == received
    stats = t.stop()
    assert stats["ut0"]["tx_bytes"] >= TRANSFER and stats["ut0"]["rx_bytes"] >= TRANSFER
    assert receive_drops(stats) == {}, stats
    assert stats["unmatched"]["rx_packets"] == 0, stats


@pytest.mark.netns
@pytest.mark.matrix("OVS key: K bit and the configured key")
def test_ovs_key_is_the_k_bit_and_the_configured_key_only(peer: OvsPeer, tunnel: Callable[[Variant], Tunnel]) -> None:
    t = tunnel(KEY)
    packets = capture_pings(peer)
    assert_outer_header_is_ovs_default(packets)
    for p in packets:
        assert p.flag("key") and p.number("key") == 1234
        assert not p.flag("checksum") and not p.flag("sequence_number")
    assert receive_drops(t.stop()) == {}


@pytest.mark.netns
@pytest.mark.matrix("OVS csum: valid checksum on every packet")
def test_ovs_csum_is_a_valid_checksum_on_every_packet(peer: OvsPeer, tunnel: Callable[[Variant], Tunnel]) -> None:
    t = tunnel(CSUM)
    packets = capture_pings(peer)
    assert_outer_header_is_ovs_default(packets)
    for p in packets:
        assert p.flag("checksum") and not p.flag("key") and not p.flag("sequence_number")
        assert p.number("checksum.status") == 1  # tshark: "Good"
        assert p.number("offset") == 0  # reserved1 is zero (RFC 2784 section 2.5)
    assert receive_drops(t.stop()) == {}


@pytest.mark.netns
@pytest.mark.matrix("OVS seq: 0, 1, 2, ... per new port")
def test_ovs_seq_numbers_a_new_port_from_0_one_per_packet(peer: OvsPeer, tunnel: Callable[[Variant], Tunnel]) -> None:
    t = tunnel(SEQ)
    packets = capture_pings(peer)
    assert_outer_header_is_ovs_default(packets)
    for p in packets:
        assert p.flag("sequence_number") and not p.flag("key") and not p.flag("checksum")
    assert [p.number("sequence_number") for p in packets] == list(range(len(packets)))
    assert receive_drops(t.stop()) == {}  # usertunnel's iseq accepted OVS's numbering throughout


@pytest.mark.netns
@pytest.mark.matrix("known OVS bug: seq + csum gives bad checksums after seq 0")
def test_known_peer_bug_ovs_checksum_covers_sequence_number_0_when_seq_and_csum_are_both_on(
    peer: OvsPeer, tunnel: Callable[[Variant], Tunnel]
) -> None:
    """OVS 3.1's netdev_gre_push_header (lib/netdev-native-tnl.c) computes the GRE checksum before it
    writes the sequence number into the header, so the checksum is right only for the packet numbered 0:
    every later one is corrupt, and a receiver that verifies checksums drops it (usertunnel counts
    csum_bad, tshark says Bad). With OVS as a peer, use sequence numbers or checksums, not both."""
    t = tunnel(Variant("seq-csum", {"seq": "true", "csum": "true"}, ("--seq", "--csum")))
    capture = Capture(peer.workdir)
    ping(NS_OVS, OURS, count=5)  # most of them get no answer: that is the bug
    packets = capture.packets(5)
    assert [p.number("sequence_number") for p in packets] == [0, 1, 2, 3, 4]
    assert [p.number("checksum.status") for p in packets] == [1, 0, 0, 0, 0]  # tshark: Good, then Bad
    assert receive_drops(t.stop()) == {"csum_bad": 4}  # usertunnel agrees with tshark, packet for packet


@pytest.mark.netns
@pytest.mark.matrix("known OVS bug: df_default=false sends IP ID 0 without DF")
def test_known_peer_bug_ovs_df_default_false_sends_ip_id_0_on_every_packet(
    peer: OvsPeer, tunnel: Callable[[Variant], Tunnel]
) -> None:
    """With df_default=false OVS clears DF but still leaves the identification 0, so every packet it sends
    to one destination has the same ID although routers may fragment it (RFC 791, RFC 6864: the ID of a
    non-atomic datagram must not repeat within the MSL); fragments of different packets can be mixed up."""
    t = tunnel(Variant("plain-nodf", {"df_default": "false"}, ("--nopmtudisc",)))
    packets = capture_pings(peer)
    assert all(p.outer("ip.flags.df") == 0 for p in packets)
    assert all(p.outer("ip.id") == 0 for p in packets)
    assert all(not (p.flag("key") or p.flag("checksum") or p.flag("sequence_number")) for p in packets)
    assert receive_drops(t.stop()) == {}


# --- what OVS accepts (crafted packets, no usertunnel running) ------------------------------------------------


_probe_ids = itertools.count(0x5500)


def probe(peer: OvsPeer, variant: Variant, crafted: list[dict[str, Any]]) -> list[bool]:
    """Send each crafted GRE-encapsulated echo request to OVS; whether its echo reply came back through OVS.

    Each dict gives scapy GRE fields (chksum_present, chksum, seqnum_present, sequence_number, key_present, key).
    """
    from scapy.layers.inet import GRE, ICMP, IP

    peer.gre(variant.ovs, variant.mtu)
    listener = netns.open_socket(NS_HOST, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_GRE)
    sender = netns.open_socket(NS_HOST, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    listener.settimeout(0.2)
    ident = next(_probe_ids)
    with listener, sender:
        for n, fields in enumerate(crafted):
            inner = IP(src=OURS, dst=THEIRS, ttl=64) / ICMP(id=ident, seq=n) / b"usertunnel-ovs-probe"
            outer = IP(src=HOST_ADDR, dst=OVS_ADDR, flags="DF") / GRE(proto=0x0800, **fields) / inner
            sender.sendto(bytes(outer), (OVS_ADDR, 0))
            time.sleep(0.05)
        replies: set[int] = set()
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and len(replies) < len(crafted):
            try:
                data = listener.recv(65535)
            except TimeoutError:
                continue
            icmp = IP(data).getlayer(ICMP, 1)
            if icmp is not None and icmp.type == 0 and icmp.id == ident:
                replies.add(icmp.seq)
    return [n in replies for n in range(len(crafted))]


@pytest.mark.netns
@pytest.mark.matrix("OVS verifies any checksum, requires none")
def test_ovs_checks_a_received_checksum_even_with_csum_off_and_does_not_require_one_with_csum_on(
    peer: OvsPeer,
) -> None:
    """OVS verifies any checksum present, whatever options:csum says, and accepts packets without one: unlike
    Linux's ip_tunnel_rcv, which usertunnel follows (csum_unexpected, csum_missing), options:csum only
    decides what OVS sends."""
    with_good, with_bad, without = {"chksum_present": 1}, {"chksum_present": 1, "chksum": 0xBAD}, {}
    assert probe(peer, Variant("plain"), [with_good, with_bad, without]) == [True, False, True]
    assert probe(peer, CSUM, [with_good, with_bad, without]) == [True, False, True]


@pytest.mark.netns
@pytest.mark.matrix("OVS delivers only the configured key")
def test_ovs_key_delivers_only_packets_carrying_exactly_that_key(peer: OvsPeer) -> None:
    right, wrong, none = {"key_present": 1, "key": 1234}, {"key_present": 1, "key": 1235}, {}
    assert probe(peer, KEY, [right, wrong, none]) == [True, False, False]


@pytest.mark.netns
@pytest.mark.matrix("known OVS bug: seq is send-only (replays delivered)")
def test_known_peer_bug_ovs_seq_is_send_only_and_delivers_replayed_and_reordered_packets(peer: OvsPeer) -> None:
    """options:seq only numbers what OVS sends: received sequence numbers are skipped unread, so replays and
    reordered packets are delivered (RFC 2890 section 2.2: an out-of-sequence packet SHOULD be discarded),
    and so are packets without one."""
    numbered = [{"seqnum_present": 1, "sequence_number": n} for n in (5, 5, 3)]
    assert probe(peer, SEQ, [*numbered, {}]) == [True, True, True, True]
