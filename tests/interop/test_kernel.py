"""usertunnel against a real Linux 6.1 kernel (ip_gre, ipip) booted in user-mode-linux.

The kernel judges our packets: it must accept what we send for every option
combination it supports, and we must accept what it sends. Both sides' counters
must agree, both ways: every packet the running usertunnel counts as sent is
one the kernel's tunnel device counts as received, and the reverse (Linux drops
some packets before its tunnel lookup and counts them nowhere, and TCP's
retransmissions would hide them). What the running `usertunnel up` puts on the
wire is compared, field by field, with what the kernel sends for the same inner
packets (same_inner.py says which fields are masked, and why); and what the
kernel sends is compared byte for byte with what our core's specification
builds for it.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import same_inner
from kernel_peer import GUEST_ADDR, HOST_ADDR, NS_HOST, VETH_HOST, KernelPeer

from usertunnel.core import gre
from usertunnel.core.encap import Tunnel
from usertunnel.core.params import Mode, TunnelParams
from usertunnel.core.values import parse_key
from usertunnel.io import netns
from usertunnel.io.netns import UpProcess

OURS, THEIRS = "203.0.113.1", "203.0.113.2"
TRANSFER = 5 * 1024 * 1024
# The receive buffer of each 5 MB's receiver (its window is about half of it). The guest reads its underlay
# through one packet socket of 208 KiB (user-mode-linux's vector driver), which also gets a copy of every frame
# the guest sends; windows of megabytes overflow it. The host drops there, before the guest's kernel sees a
# packet, and TCP recovers: no tunnel counter moves. Bounded windows leave that socket room, so every packet
# one side counts as sent must be counted by the other as received.
RCVBUF = 32 * 1024


@dataclass(frozen=True)
class Variant:
    """One configuration, said once for the kernel (`ip tunnel` words) and once for usertunnel."""

    name: str
    mode: str
    kernel: str  # options for `ip tunnel add` on the kernel side
    ours: tuple[str, ...]  # options for `usertunnel up`

    def kernel_params(self) -> TunnelParams:
        """The kernel side's configuration as our core would describe it (to rebuild its packets)."""
        words = self.kernel.split()
        p: dict[str, object] = {"ttl": None, "tos": 0, "pmtudisc": True}
        i = 0
        while i < len(words):
            w = words[i]
            if w in ("key", "ikey", "okey"):
                value = parse_key(words[i + 1])
                if w in ("key", "okey"):
                    p["okey"] = value
                if w in ("key", "ikey"):
                    p["ikey"] = value
                i += 1
            elif w in ("seq", "csum"):
                p["i" + w] = p["o" + w] = True
            elif w == "ttl":
                p["ttl"] = int(words[i + 1])
                i += 1
            elif w == "tos":
                p["tos"] = None if words[i + 1] == "inherit" else int(words[i + 1], 16)
                i += 1
            elif w == "nopmtudisc":
                p["pmtudisc"] = False
            i += 1
        return TunnelParams(
            "kernel",
            Mode.from_name(self.mode),
            socket.inet_aton(GUEST_ADDR),
            socket.inet_aton(HOST_ADDR),
            **p,  # type: ignore[arg-type]
        )

    def our_okey(self) -> int | None:
        """The key usertunnel sends (--okey or --key), or None."""
        words = list(self.ours)
        for option in ("--okey", "--key"):
            if option in words:
                return parse_key(words[words.index(option) + 1])
        return None


VARIANTS = [
    Variant("gre", "gre", "", ()),
    Variant("gre-key", "gre", "key 1234", ("--key", "1234")),
    Variant("gre-ikey-okey", "gre", "ikey 2 okey 1", ("--ikey", "1", "--okey", "2")),
    Variant("gre-seq", "gre", "seq", ("--seq",)),
    Variant("gre-csum", "gre", "csum", ("--csum",)),
    Variant("gre-all", "gre", "key 0.0.4.210 seq csum", ("--key", "1234", "--seq", "--csum")),
    Variant("gre-ttl-fixed", "gre", "ttl 64", ("--ttl", "64")),
    Variant("gre-tos-fixed", "gre", "tos 28", ("--tos", "28")),
    Variant("gre-tos-inherit", "gre", "tos inherit", ("--tos", "inherit")),
    Variant("gre-nopmtudisc", "gre", "nopmtudisc", ("--nopmtudisc",)),
    Variant("ipip", "ipip", "", ()),
    Variant("ipip-ttl-fixed", "ipip", "ttl 64", ("--ttl", "64")),
    Variant("ipip-tos-inherit", "ipip", "tos inherit", ("--tos", "inherit")),
    Variant("ipip-nopmtudisc", "ipip", "nopmtudisc", ("--nopmtudisc",)),
]


def ipv6_default(disabled: bool) -> None:
    """IPv6 off (or on) for the devices created from now on in NS_HOST."""
    netns.run(NS_HOST, ["sysctl", "-q", "-w", f"net.ipv6.conf.default.disable_ipv6={int(disabled)}"], check=True)


NO_IPV6 = "sysctl -q -w net.ipv6.conf.kt0.disable_ipv6=1"  # kt0 sends no router solicitation or MLD report


def up_without_ipv6(args: Sequence[str]) -> UpProcess:
    """`usertunnel up ARGS` in NS_HOST, ready; its device is created while the namespace's IPv6 default is off
    (usertunnel creates its device: it takes the namespace's default), so it sends nothing of its own."""
    ipv6_default(disabled=True)
    try:
        ours = UpProcess(NS_HOST, list(args))
        ours.wait_ready()
        return ours
    finally:
        ipv6_default(disabled=False)


class KernelAndOurs:
    """The kernel's tunnel device kt0, made in the guest by `setup`, and `usertunnel up`'s ut0 in NS_HOST
    (`up_without_ipv6`), pointing at each other; the counters and the MTU of both, and their removal."""

    mtu_what = "tunnel"  # what an MTU disagreement names

    def __init__(self, kernel: KernelPeer, variant: Any, setup: str, ours: Sequence[str]) -> None:
        self.kernel = kernel
        self.variant = variant
        kernel.check(setup)
        self.ours = up_without_ipv6(ours)

    def our_stats(self) -> dict[str, Any]:
        """The running usertunnel's counters, as `usertunnel stats -j ut0` prints them."""
        return usertunnel_stats("ut0")

    def counters(self, timeout: float = 5.0) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
        """Our counters and the kernel device's, once every packet one side counts as sent is counted by the
        other as received (or after `timeout` s: the caller's assertion then says what differs)."""
        return settled_counters(self.kernel, self.our_stats, "kt0", timeout)

    def mtu(self) -> int:
        """The tunnel MTU, the same on both sides (AssertionError if not)."""
        return agreed_mtu(self.kernel, self.mtu_what)

    def close(self) -> dict[str, dict]:
        stats = self.ours.stop()
        self.kernel.sh("ip link del kt0")
        return stats


class Pair(KernelAndOurs):
    """A kernel tunnel `kt0` in the guest and `usertunnel up` in NS_HOST, pointing at each other.

    Neither tunnel device has IPv6 (no router solicitations, no MLD reports), so every packet either side
    counts is one a test sent. The kernel's device has no TCP or generic segmentation offload, so that its
    TCP segments reach its transmit routine one by one: Linux counts one transmitted packet per skb, and a
    GSO skb is many packets on the wire.
    """

    def __init__(self, kernel: KernelPeer, variant: Variant) -> None:
        super().__init__(
            kernel,
            variant,
            f"ip tunnel add kt0 mode {variant.mode} local {GUEST_ADDR} remote {HOST_ADDR} {variant.kernel}"
            f" && {NO_IPV6} && ethtool -K kt0 tso off gso off"
            f" && ip link set kt0 up && ip addr add {THEIRS}/30 dev kt0",
            ["--mode", variant.mode, "--local", HOST_ADDR, "--remote", GUEST_ADDR, "--name", "ut0",
             "--address", f"{OURS}/30", *variant.ours],
        )  # fmt: skip


def settled_counters(
    kernel: KernelPeer, ours: Callable[[], dict[str, Any]], device: str = "kt0", timeout: float = 5.0
) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
    """Our counters (`ours()`) and the kernel device's, once every packet one side counts as sent is counted by
    the other as received, or after `timeout` s (the caller's assertion then says what differs)."""
    deadline = time.monotonic() + timeout
    while True:
        mine, theirs = ours(), kernel.link_counters(device)
        agree = mine["tx_packets"] == theirs["rx"]["packets"] and theirs["tx"]["packets"] == mine["rx_packets"]
        if agree or time.monotonic() > deadline:
            return mine, theirs
        time.sleep(0.2)


def agreed_mtu(kernel: KernelPeer, what: str = "tunnel") -> int:
    """ut0's MTU, which must be kt0's (AssertionError naming `what` if not)."""
    theirs = kernel.link_mtu("kt0")
    shown = netns.run(NS_HOST, ["ip", "-j", "link", "show", "dev", "ut0"], check=True).stdout
    ours: int = json.loads(shown)[0]["mtu"]
    assert ours == theirs, f"{what} MTU: ours {ours}, the kernel's {theirs}"
    return ours


def usertunnel_stats(name: str) -> dict[str, Any]:
    """The counters of the usertunnel running tunnel `name` in NS_HOST, as `usertunnel stats -j NAME` prints them."""
    done = netns.run(NS_HOST, [sys.executable, "-m", "usertunnel", "stats", "-j", name], check=True)
    [tunnel] = json.loads(done.stdout)
    stats: dict[str, Any] = tunnel["stats"]
    return stats


def assert_nothing_lost_unseen(ours: dict[str, Any], theirs: dict[str, dict[str, int]], kernel: KernelPeer) -> None:
    """Our tx_packets = the kernel device's rx packets, its tx packets = our rx_packets; no errors, no drops."""
    problems = []
    if ours["tx_packets"] != theirs["rx"]["packets"]:
        problems.append("usertunnel's tx_packets are not the kernel's rx packets")
    if theirs["tx"]["packets"] != ours["rx_packets"]:
        problems.append("the kernel's tx packets are not usertunnel's rx_packets")
    if theirs["rx"]["errors"] or theirs["tx"]["errors"] or theirs["tx"]["dropped"]:
        problems.append("the kernel counted errors")
    if ours["drops"]:
        problems.append("usertunnel dropped packets")
    if problems:
        raise AssertionError(
            f"{'; '.join(problems)}: usertunnel {ours}; kernel kt0 {theirs}"
            f" (frames the guest's underlay socket has dropped so far: {kernel.underlay_drops()})"
        )


def ping_from_us(count: int = 3) -> bool:
    return netns.run(NS_HOST, ["ping", "-c", str(count), "-i", "0.2", "-W", "2", THEIRS]).returncode == 0


def family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def send_from_us(kernel: KernelPeer, port: int, theirs: str = THEIRS) -> tuple[str, str]:
    """5 MB from our inner address to the kernel's (`theirs`, IPv4 or IPv6); both SHA-256."""
    kernel.request({"sink": [theirs, port], "rcvbuf": RCVBUF})
    data = random.Random(port).randbytes(TRANSFER)
    sock = netns.open_socket(NS_HOST, family(theirs), socket.SOCK_STREAM)
    sock.settimeout(60)
    with sock:
        sock.connect((theirs, port))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    result = kernel.request({"sink_result": [theirs, port], "timeout": 60})
    assert result.get("bytes") == TRANSFER, result
    return hashlib.sha256(data).hexdigest(), result["sha256"]


def send_from_kernel(kernel: KernelPeer, port: int, ours: str = OURS) -> tuple[str, str]:
    """5 MB from the kernel's inner address to ours (`ours`, IPv4 or IPv6); both SHA-256."""
    server = netns.open_socket(NS_HOST, family(ours), socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)  # before listen(): see RCVBUF
    server.bind((ours, port))
    server.listen(1)
    server.settimeout(60)
    digest = hashlib.sha256()

    def receive() -> None:
        conn, _ = server.accept()
        conn.settimeout(60)
        with conn:
            while chunk := conn.recv(1 << 16):
                digest.update(chunk)

    thread = threading.Thread(target=receive)
    thread.start()
    try:
        sent = kernel.request({"source": [ours, port], "bytes": TRANSFER, "seed": port})
        thread.join(60)
    finally:
        server.close()
    return sent["sha256"], digest.hexdigest()


def tunnel_header_length(packet: bytes) -> int:
    ihl = (packet[0] & 0x0F) * 4
    if packet[9] == 47:
        flags = struct.unpack_from("!H", packet, ihl)[0]
        return ihl + gre.header_length(flags)
    return ihl


def sequence_of(packet: bytes) -> int | None:
    ihl = (packet[0] & 0x0F) * 4
    if packet[9] != 47:
        return None
    header = gre.parse_gre(packet[ihl:])
    assert not isinstance(header, Exception)
    return getattr(header, "sequence", None)


def rebuilt_by_our_core(variant: Variant, packet: bytes) -> bytes:
    """What our core builds for the kernel's inner packet with the kernel's options.

    The kernel's outer identification comes from a keyed hash (ip_select_ident) that nobody can
    reproduce, so our counter is set to the kernel's value; so is the sequence number.
    """
    tunnel = Tunnel(variant.kernel_params(), ident=struct.unpack_from("!H", packet, 4)[0])
    seq = sequence_of(packet)
    if seq is not None:
        tunnel.oseq_next = seq
    ours = tunnel.encapsulate(packet[tunnel_header_length(packet) :])
    assert isinstance(ours, bytes), ours
    return ours


@pytest.mark.netns
@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
@pytest.mark.matrix("ping + 5 MB TCP, both directions; tx = peer's rx")
def test_kernel_and_usertunnel_carry_ping_and_5mb_tcp_both_ways_and_count_every_packet_alike(
    pair_factory, variant: Variant
) -> None:
    pair = pair_factory(Pair, variant)
    kernel = pair.kernel
    assert ping_from_us(), "ping from usertunnel's side to the kernel's inner address failed"
    assert kernel.sh(f"ping -c 3 -i 0.2 -W 2 {OURS}")["rc"] == 0, "ping from the kernel's side failed"
    sent, received = send_from_us(kernel, 5101)
    assert sent == received
    sent, received = send_from_kernel(kernel, 5102)
    assert sent == received
    # TCP retransmits what the kernel drops before its tunnel lookup (a bad checksum, a key it does not
    # know: counted nowhere), so equal hashes cannot tell; equal counters can.
    ours, theirs = pair.counters()
    assert_nothing_lost_unseen(ours, theirs, kernel)
    assert theirs["rx"]["bytes"] >= TRANSFER and ours["rx_bytes"] >= TRANSFER
    assert pair.close()["ut0"]["drops"] == {}


@pytest.mark.netns
@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
@pytest.mark.matrix("usertunnel up's packets = kernel's (same inner TCP, UDP, ICMP); tx = peer's rx")
def test_running_usertunnel_sends_what_the_kernel_sends_for_the_same_inner_packets(
    pair_factory, variant: Variant
) -> None:
    pair = pair_factory(Pair, variant)
    packets = same_inner.inner_packets(variant.mode, pair.mtu())
    capture = same_inner.inject_both(pair.kernel, packets, NS_HOST, VETH_HOST)
    ours = same_inner.tunnel_packets(capture.outgoing, variant.mode, HOST_ADDR)
    theirs = same_inner.tunnel_packets(capture.incoming, variant.mode, GUEST_ADDR)
    same_inner.assert_one_each(ours, packets, "usertunnel")
    same_inner.assert_one_each(theirs, packets, "the kernel")
    counted, theirs_counted = pair.counters()
    assert counted["tx_packets"] == counted["rx_packets"] == len(packets), counted
    assert_nothing_lost_unseen(counted, theirs_counted, pair.kernel)
    # The one option two sides may set differently and both be right: the key each sends (ikey/okey).
    theirs_okey, ours_okey = variant.kernel_params().okey, variant.our_okey()
    replace_key = ours_okey if ours_okey != theirs_okey else None
    differ = []
    for inner, sent_by_us, sent_by_kernel in zip(packets, ours, theirs, strict=True):
        a, b = same_inner.masked(sent_by_us), same_inner.masked(same_inner.mirrored(sent_by_kernel, replace_key))
        if a != b:
            differ.append(f"{same_inner.describe(inner)}: {'; '.join(same_inner.differences(a, b))}")
    assert not differ, f"{len(differ)} of {len(packets)} packets differ:\n" + "\n".join(differ[:12])
    assert pair.close()["ut0"]["drops"] == {}


@pytest.mark.netns
@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
@pytest.mark.matrix("kernel's packets = our core's bytes")
def test_kernel_packets_equal_our_core_encapsulation_byte_for_byte(pair_factory, variant: Variant) -> None:
    pair = pair_factory(Pair, variant)
    capture = netns.Capture(NS_HOST, VETH_HOST)
    try:
        # Inner TOS/ECN and TTL values that exercise inherit and ECN rules: ECT(0) and a DSCP.
        assert pair.kernel.sh(f"ping -c 3 -i 0.2 -W 2 -Q 0xa2 -t 33 {OURS}")["rc"] == 0
        assert ping_from_us()
        time.sleep(0.2)
    finally:
        capture.stop()
    proto = 47 if variant.mode == "gre" else 4
    theirs = [p for p in capture.incoming if p[9] == proto and p[12:16] == socket.inet_aton(GUEST_ADDR)]
    assert len(theirs) >= 3, "no tunnel packets from the kernel captured"
    for packet in theirs:
        assert rebuilt_by_our_core(variant, packet).hex() == packet.hex()
    pair.close()
