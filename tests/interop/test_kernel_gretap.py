"""gretap against a real Linux 6.1 kernel (ip_gre's gretap) in user-mode-linux: one L2 segment, both ways.

The kernel and usertunnel each put a TAP-like device on the segment; they ping
each other (ARP crosses the tunnel), and the kernel's GRE packets (protocol type
0x6558) equal what our core builds for the same frame, byte for byte (the
IPv4 identification copied from the kernel's packet, as in test_kernel).

And the same Ethernet frames (IPv4 and IPv6 TCP, UDP and ICMP over several
TOS/traffic class and TTL/hop limit values, two of the full MTU, an ARP request)
are written into both TAP devices: what the running `usertunnel up` puts on
the wire must be what the kernel's gretap puts there, byte for byte but the
outer identification and header checksum (same_inner), and each side must count
as received every packet the other counts as sent.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

import pytest
import same_inner
from kernel_peer import GUEST_ADDR, HOST_ADDR, NS_HOST, VETH_HOST, KernelPeer
from test_kernel import NO_IPV6, KernelAndOurs, assert_nothing_lost_unseen

from usertunnel.core.encap import Tunnel
from usertunnel.core.params import Mode, TunnelParams
from usertunnel.io import netns
from usertunnel.io.netns import UpProcess

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


# --- the same frames through the running usertunnel and through the kernel ----------------------------------


@dataclass(frozen=True)
class Variant:
    """One gretap configuration, said once for the kernel (`ip link add ... type gretap` words) and once for
    usertunnel."""

    name: str
    kernel: str
    ours: tuple[str, ...]


VARIANTS = [
    Variant("gretap", "", ()),
    Variant("gretap-key", "key 1234", ("--key", "1234")),
    Variant(
        "gretap-key-seq-csum-ttl-tos-inherit",
        "key 1234 seq csum ttl 64 tos inherit",
        ("--key", "1234", "--seq", "--csum", "--ttl", "64", "--tos", "inherit"),
    ),
]


class QuietPair(KernelAndOurs):
    """The kernel's gretap kt0 and the running usertunnel's ut0, with no address and IPv6 off on both devices
    (no ARP, router solicitation or MLD report of their own): every frame either side counts is one the test
    wrote into a TAP device."""

    mtu_what = "gretap"

    def __init__(self, kernel: KernelPeer, variant: Variant) -> None:
        super().__init__(
            kernel,
            variant,
            f"ip link add kt0 type gretap local {GUEST_ADDR} remote {HOST_ADDR} {variant.kernel}"
            f" && {NO_IPV6} && ip link set kt0 up",
            ["--mode", "gretap", "--local", HOST_ADDR, "--remote", GUEST_ADDR, "--name", "ut0", *variant.ours],
        )


@pytest.mark.netns
@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
@pytest.mark.matrix("usertunnel up's packets = kernel's (same frames: TCP, UDP, ICMP, ARP); tx = peer's rx")
def test_running_usertunnel_sends_what_the_kernels_gretap_sends_for_the_same_frames(
    pair_factory, variant: Variant
) -> None:
    pair = pair_factory(QuietPair, variant)
    frames = same_inner.inner_frames(pair.mtu())
    sources = (HOST_ADDR, GUEST_ADDR)
    capture = same_inner.inject_both_of(pair.kernel, frames, NS_HOST, VETH_HOST, "gretap", sources)
    ours = same_inner.tunnel_packets_of(capture.outgoing, "gretap", HOST_ADDR)
    theirs = same_inner.tunnel_packets_of(capture.incoming, "gretap", GUEST_ADDR)
    same_inner.assert_one_each_of(ours, frames, "usertunnel")
    same_inner.assert_one_each_of(theirs, frames, "the kernel")
    counted, theirs_counted = pair.counters()
    assert counted["tx_packets"] == counted["rx_packets"] == len(frames), counted
    assert_nothing_lost_unseen(counted, theirs_counted, pair.kernel)
    differ = []
    for frame, sent_by_us, sent_by_kernel in zip(frames, ours, theirs, strict=True):
        a, b = same_inner.masked_any(sent_by_us), same_inner.masked_any(same_inner.mirrored_any(sent_by_kernel, None))
        if a != b:
            differ.append(f"{same_inner.describe_any(frame)}: {'; '.join(same_inner.differences_any(a, b))}")
    assert not differ, f"{len(differ)} of {len(frames)} frames differ:\n" + "\n".join(differ[:12])
    assert pair.close()["ut0"]["drops"] == {}
