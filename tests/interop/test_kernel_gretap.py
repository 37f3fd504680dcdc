"""gretap against a real Linux 6.1 kernel (ip_gre's gretap) in user-mode-linux: one L2 segment, both ways.

The kernel and usertunnel each put a TAP-like device on the segment; they ping
each other (ARP crosses the tunnel), and the kernel's GRE packets (protocol type
0x6558) equal what our core builds for the same frame, byte for byte (the
IPv4 identification copied from the kernel's packet, as in test_kernel).
"""

from __future__ import annotations

import socket
import struct
import time

import pytest
from kernel_peer import GUEST_ADDR, HOST_ADDR, NS_HOST, VETH_HOST, KernelPeer

from usertunnel import netns
from usertunnel.core.encap import Tunnel
from usertunnel.core.params import Mode, TunnelParams
from usertunnel.netns import UpProcess

OURS, THEIRS = "203.0.113.1", "203.0.113.2"


@pytest.mark.netns
@pytest.mark.matrix("ping both ways; kernel's packets = our core's bytes")
def test_kernel_gretap_and_usertunnel_share_a_segment_and_agree_on_every_byte(kernel: KernelPeer) -> None:
    kernel.check(
        f"ip link add kt0 type gretap local {GUEST_ADDR} remote {HOST_ADDR} key 1234"
        f" && ip link set kt0 up && ip addr add {THEIRS}/24 dev kt0"
    )
    ours = UpProcess(NS_HOST, ["--mode", "gretap", "--local", HOST_ADDR, "--remote", GUEST_ADDR, "--key", "1234",
                               "--name", "ut0", "--address", f"{OURS}/24"])  # fmt: skip
    try:
        ours.wait_ready()
        capture = netns.Capture(NS_HOST, VETH_HOST)
        try:
            ping = netns.run(NS_HOST, ["ping", "-c", "3", "-i", "0.2", "-W", "2", THEIRS], timeout=30)
            assert ping.returncode == 0, ping.stdout.decode()
            assert kernel.sh(f"ping -c 3 -i 0.2 -W 2 -Q 0xa2 -t 33 {OURS}")["rc"] == 0
            time.sleep(0.2)
        finally:
            capture.stop()
        guest = socket.inet_aton(GUEST_ADDR)
        theirs = [p for p in capture.incoming if p[9] == 47 and p[12:16] == guest and p[22:24] == b"\x65\x58"]
        assert len(theirs) >= 4, "no gretap packets from the kernel captured"
        params = TunnelParams("kernel", Mode.GRETAP, guest, socket.inet_aton(HOST_ADDR), ikey=1234, okey=1234)
        for packet in theirs:
            tunnel = Tunnel(params, ident=struct.unpack_from("!H", packet, 4)[0])
            rebuilt = tunnel.encapsulate(packet[20 + 8 :])
            assert isinstance(rebuilt, bytes) and rebuilt.hex() == packet.hex()
        stats = ours.stop()["ut0"]
        assert stats["rx_packets"] >= 6 and not set(stats["drops"]) - {"family"}, stats
    finally:
        ours.kill()
        kernel.sh("ip link del kt0")
