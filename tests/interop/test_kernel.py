"""usertunnel against a real Linux 6.1 kernel (ip_gre, ipip) booted in user-mode-linux.

The kernel judges our packets: it must accept what we send for every option
combination it supports, and we must accept what it sends. On top of that,
what the kernel puts on the wire is compared byte for byte with what our core
builds for the same inner packet and the same options.
"""

from __future__ import annotations

import hashlib
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass

import pytest
from kernel_peer import GUEST_ADDR, HOST_ADDR, NS_HOST, VETH_HOST, KernelPeer

from usertunnel import netns
from usertunnel.core import gre
from usertunnel.core.encap import Tunnel
from usertunnel.core.params import Mode, TunnelParams, parse_key
from usertunnel.netns import UpProcess

OURS, THEIRS = "203.0.113.1", "203.0.113.2"
TRANSFER = 5 * 1024 * 1024


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


class Pair:
    """A kernel tunnel `kt0` in the guest and `usertunnel up` in NS_HOST, pointing at each other."""

    def __init__(self, kernel: KernelPeer, variant: Variant) -> None:
        self.kernel = kernel
        self.variant = variant
        kernel.check(
            f"ip tunnel add kt0 mode {variant.mode} local {GUEST_ADDR} remote {HOST_ADDR} {variant.kernel}"
            f" && ip link set kt0 up && ip addr add {THEIRS}/30 dev kt0"
        )
        self.ours = UpProcess(
            NS_HOST,
            [
                "--mode",
                variant.mode,
                "--local",
                HOST_ADDR,
                "--remote",
                GUEST_ADDR,
                "--name",
                "ut0",
                "--address",
                f"{OURS}/30",
                *variant.ours,
            ],
        )
        self.ours.wait_ready()

    def close(self) -> dict[str, dict]:
        stats = self.ours.stop()
        self.kernel.sh("ip tunnel del kt0")
        return stats


def ping_from_us(count: int = 3) -> bool:
    return netns.run(NS_HOST, ["ping", "-c", str(count), "-i", "0.2", "-W", "2", THEIRS]).returncode == 0


def send_from_us(kernel: KernelPeer, port: int) -> tuple[str, str]:
    """5 MB from our inner address to the kernel's; both SHA-256."""
    kernel.request({"sink": [THEIRS, port]})
    data = random.Random(port).randbytes(TRANSFER)
    sock = netns.open_socket(NS_HOST, socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(60)
    with sock:
        sock.connect((THEIRS, port))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    result = kernel.request({"sink_result": [THEIRS, port], "timeout": 60})
    assert result.get("bytes") == TRANSFER, result
    return hashlib.sha256(data).hexdigest(), result["sha256"]


def send_from_kernel(kernel: KernelPeer, port: int) -> tuple[str, str]:
    """5 MB from the kernel's inner address to ours; both SHA-256."""
    server = netns.open_socket(NS_HOST, socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((OURS, port))
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
        sent = kernel.request({"source": [OURS, port], "bytes": TRANSFER, "seed": port})
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
@pytest.mark.matrix("ping + 5 MB TCP, both directions")
def test_kernel_and_usertunnel_carry_ping_and_5mb_tcp_both_ways(pair_factory, variant: Variant) -> None:
    pair = pair_factory(Pair, variant)
    kernel = pair.kernel
    before = kernel.link_stats("kt0")
    assert ping_from_us(), "ping from usertunnel's side to the kernel's inner address failed"
    assert kernel.sh(f"ping -c 3 -i 0.2 -W 2 {OURS}")["rc"] == 0, "ping from the kernel's side failed"
    sent, received = send_from_us(kernel, 5101)
    assert sent == received
    sent, received = send_from_kernel(kernel, 5102)
    assert sent == received
    after = kernel.link_stats("kt0")
    assert after["errors"] == before["errors"] == 0, after  # the kernel refused nothing we sent
    assert after["bytes"] - before["bytes"] >= TRANSFER
    stats = pair.close()["ut0"]
    assert set(stats["drops"]) <= {"family"}, stats  # only IPv6 noise an ipip device cannot carry


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
