"""usertunnel's IPv6 modes against a real Linux 6.1 kernel (sit, ip6_tunnel, ip6_gre) in user-mode-linux.

Each mode: both sides ping each other's inner address, and every tunnel packet
the kernel sends is compared byte for byte with what our core builds for the
same inner packet and the same options. The kernel's automatic flow label is a
keyed hash nobody can reproduce, so the IPv6 tunnels get a fixed flow label on
both sides; the IPv4 identification of sit packets is copied from the kernel's
packet, as in test_kernel.

And the same inner packets (TCP, UDP and ICMP over several TOS/traffic class and
TTL/hop limit values, and of the full MTU) are written into both tunnel devices:
what the running `usertunnel up` puts on the wire must be what the kernel puts
there, byte for byte (over IPv6 nothing is masked: no identification, no header
checksum, a fixed or inherited flow label; over IPv4 (sit) the identification
and header checksum, same_inner), but for the one field we set unlike Linux on
purpose (ip6gre's outer ECN, checked on both sides); and each side must count as
received every packet the other counts as sent.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from dataclasses import dataclass

import pytest
import same_inner
from kernel_peer import GUEST_ADDR, GUEST_ADDR6, HOST_ADDR, HOST_ADDR6, NS_HOST, VETH_HOST, KernelPeer
from test_kernel import NO_IPV6, KernelAndOurs, assert_nothing_lost_unseen

from usertunnel.core import gre, ipv6
from usertunnel.core.encap import Tunnel
from usertunnel.core.params import Mode, TunnelParams
from usertunnel.io import netns
from usertunnel.io.netns import UpProcess

INNER4 = ("203.0.113.1", "203.0.113.2")  # ours, the kernel's
INNER6 = ("2001:db8:100::1", "2001:db8:100::2")
LABEL = 0x12345


@dataclass(frozen=True)
class Variant:
    name: str
    mode: str
    kernel: str  # the kernel side's command, with {local} and {remote}
    ours: tuple[str, ...]
    inner6: bool  # the inner family pinged through it
    params: dict[str, object]  # the kernel side's options as our core names them

    @property
    def outer6(self) -> bool:
        return self.mode in ("ipip6", "ip6ip6", "ip6gre")


VARIANTS = [
    Variant("sit", "sit", "ip tunnel add kt0 mode sit local {local} remote {remote}", (), True, {}),
    Variant(
        "sit-ttl-fixed",
        "sit",
        "ip tunnel add kt0 mode sit local {local} remote {remote} ttl 64",
        ("--ttl", "64"),
        True,
        {"ttl": 64},
    ),  # fmt: skip
    Variant(
        "ipip6",
        "ipip6",
        f"ip -6 tunnel add kt0 mode ipip6 local {{local}} remote {{remote}} flowlabel {LABEL:#x}",
        ("--flowlabel", f"{LABEL:x}"),
        False,
        {"flowlabel": LABEL, "ttl": 64},
    ),  # fmt: skip
    Variant(
        "ip6ip6",
        "ip6ip6",
        f"ip -6 tunnel add kt0 mode ip6ip6 local {{local}} remote {{remote}} flowlabel {LABEL:#x}",
        ("--flowlabel", f"{LABEL:x}"),
        True,
        {"flowlabel": LABEL, "ttl": 64},
    ),  # fmt: skip
    Variant(
        "ip6ip6-encaplimit-none",
        "ip6ip6",
        f"ip -6 tunnel add kt0 mode ip6ip6 local {{local}} remote {{remote}} flowlabel {LABEL:#x} encaplimit none",
        ("--flowlabel", f"{LABEL:x}", "--encaplimit", "none"),
        True,
        {"flowlabel": LABEL, "ttl": 64, "encaplimit": None},
    ),  # fmt: skip
    Variant(
        "ipip6-tclass-hoplimit-inherit",
        "ipip6",
        "ip -6 tunnel add kt0 mode ipip6 local {local} remote {remote}"
        f" flowlabel {LABEL:#x} tclass inherit hoplimit 0",
        ("--flowlabel", f"{LABEL:x}", "--tos", "inherit", "--ttl", "inherit"),
        False,
        {"flowlabel": LABEL, "ttl": None, "tos": None},
    ),  # hoplimit 0: the inner TTL (ip6_tnl_xmit)
    Variant(
        "ip6ip6-tclass-hoplimit-flowlabel-inherit",
        "ip6ip6",
        "ip -6 tunnel add kt0 mode ip6ip6 local {local} remote {remote} flowlabel inherit tclass inherit hoplimit 0",
        ("--flowlabel", "inherit", "--tos", "inherit", "--ttl", "inherit"),
        True,
        {"flowlabel": None, "ttl": None, "tos": None},
    ),  # every inner packet has a flow label of its own (same_inner), so none gets an automatic one
    Variant(
        "ip6gre-key",
        "ip6gre",
        f"ip -6 tunnel add kt0 mode ip6gre local {{local}} remote {{remote}} key 1234 flowlabel {LABEL:#x}",
        ("--key", "1234", "--flowlabel", f"{LABEL:x}"),
        False,
        {"flowlabel": LABEL, "ttl": 64, "ikey": 1234, "okey": 1234},
    ),  # fmt: skip
    Variant(
        "ip6gre-seq-csum",
        "ip6gre",
        f"ip -6 tunnel add kt0 mode ip6gre local {{local}} remote {{remote}} seq csum flowlabel {LABEL:#x}",
        ("--seq", "--csum", "--flowlabel", f"{LABEL:x}"),
        True,
        {"flowlabel": LABEL, "ttl": 64, "iseq": True, "oseq": True, "icsum": True, "ocsum": True},
    ),  # fmt: skip
]


class Pair:
    def __init__(self, kernel: KernelPeer, variant: Variant) -> None:
        self.kernel = kernel
        self.variant = variant
        host, guest = (HOST_ADDR6, GUEST_ADDR6) if variant.outer6 else (HOST_ADDR, GUEST_ADDR)
        inner, plen = (INNER6, 64) if variant.inner6 else (INNER4, 30)
        family = "-6 " if variant.inner6 else ""
        kernel.check(
            variant.kernel.format(local=guest, remote=host)
            + f" && ip link set kt0 up && ip {family}addr add {inner[1]}/{plen} dev kt0"
            + (" nodad" if variant.inner6 else "")
        )
        self.ours = UpProcess(
            NS_HOST,
            ["--mode", variant.mode, "--local", host, "--remote", guest, "--name", "ut0",
             "--address", f"{inner[0]}/{plen}", *variant.ours],
        )  # fmt: skip
        self.ours.wait_ready()
        self.inner = inner

    def close(self) -> dict[str, dict]:
        stats = self.ours.stop()
        self.kernel.sh("ip link del kt0")
        return stats


def ping_argv(target: str) -> list[str]:
    return ["ping", "-c", "3", "-i", "0.2", "-W", "2", target]


@pytest.mark.netns
@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
@pytest.mark.matrix("ping both ways")
def test_kernel_and_usertunnel_ping_each_other_through_every_ipv6_mode(pair_factory, variant: Variant) -> None:
    pair = pair_factory(Pair, variant)
    ours, theirs = pair.inner
    time.sleep(0.2)
    assert netns.run(NS_HOST, ping_argv(theirs), timeout=30).returncode == 0, "ping from our side failed"
    assert pair.kernel.sh(" ".join(ping_argv(ours)))["rc"] == 0, "ping from the kernel's side failed"
    stats = pair.close()["ut0"]
    assert stats["rx_packets"] >= 6 and not set(stats["drops"]) - {"family"}, stats


def kernel_params(variant: Variant) -> TunnelParams:
    if variant.outer6:
        local, remote = ipaddress.IPv6Address(GUEST_ADDR6).packed, ipaddress.IPv6Address(HOST_ADDR6).packed
    else:
        local, remote = ipaddress.IPv4Address(GUEST_ADDR).packed, ipaddress.IPv4Address(HOST_ADDR).packed
    return TunnelParams("kernel", Mode.from_name(variant.mode), local, remote, **variant.params)  # type: ignore[arg-type]


def split(variant: Variant, packet: bytes) -> tuple[int, int | None, int | None]:
    """(offset of the inner packet, the kernel's IPv4 identification, its GRE sequence number)."""
    if variant.outer6:
        upper = ipv6.upper_layer(packet)
        assert isinstance(upper, ipv6.UpperLayer)
        offset, ident = upper.offset, None
    else:
        offset, ident = (packet[0] & 0x0F) * 4, struct.unpack_from("!H", packet, 4)[0]
    sequence = None
    if variant.mode == "ip6gre":
        header = gre.parse_gre(packet[offset:])
        assert isinstance(header, gre.GREHeader)
        sequence = header.sequence
        offset += header.length
    return offset, ident, sequence


@pytest.mark.netns
@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
@pytest.mark.matrix("kernel's packets = our core's bytes")
def test_kernel_ipv6_mode_packets_equal_our_core_encapsulation_byte_for_byte(pair_factory, variant: Variant) -> None:
    pair = pair_factory(Pair, variant)
    ours, _ = pair.inner
    capture = netns.Capture(NS_HOST, VETH_HOST, ipv6=True)
    try:
        # An inner traffic class / TOS and hop limit / TTL that exercise the inherit and ECN rules.
        flags = "-Q 0xa2 -t 33"
        assert pair.kernel.sh(f"ping -c 3 -i 0.2 -W 2 {flags} {ours}")["rc"] == 0
        time.sleep(0.2)
    finally:
        capture.stop()
    # Tunnel packets only: the guest's own neighbour solicitations for HOST_ADDR6 come from GUEST_ADDR6 too.
    theirs = same_inner.tunnel_packets_of(capture.incoming, variant.mode, GUEST_ADDR6 if variant.outer6 else GUEST_ADDR)
    assert len(theirs) >= 3, "no tunnel packets from the kernel captured"
    for packet in theirs:
        offset, ident, sequence = split(variant, packet)
        tunnel = Tunnel(kernel_params(variant), ident=ident or 0)
        if sequence is not None:
            tunnel.oseq_next = sequence
        rebuilt = tunnel.encapsulate(packet[offset:])
        assert isinstance(rebuilt, bytes), rebuilt
        if variant.mode == "ip6gre":
            # Linux's ip6gre (unlike ip6_tunnel and ip_gre) leaves the inner ECN out of the outer traffic
            # class; we copy it, as RFC 6040 section 4.1 asks. That must be the only difference.
            if packet[offset] >> 4 == 4:  # an IPv4 inner packet: its ECN field is what we copied
                assert rebuilt[1] & 0x30 == (packet[offset + 1] & 0x03) << 4
            rebuilt = rebuilt[:1] + bytes([rebuilt[1] & ~0x30 & 0xFF]) + rebuilt[2:]
        assert rebuilt.hex() == packet.hex()
    pair.close()


# --- the same inner packets through the running usertunnel and through the kernel ---------------------------


class QuietPair(KernelAndOurs):
    """kt0 and the running usertunnel's ut0 as in `Pair`, but with no inner address and IPv6 off on both
    devices (no router solicitation, MLD report or neighbour discovery of their own): every packet either side
    counts is one the test wrote into a tunnel device (same_inner)."""

    def __init__(self, kernel: KernelPeer, variant: Variant) -> None:
        self.sources = (HOST_ADDR6, GUEST_ADDR6) if variant.outer6 else (HOST_ADDR, GUEST_ADDR)
        host, guest = self.sources
        super().__init__(
            kernel,
            variant,
            variant.kernel.format(local=guest, remote=host) + f" && {NO_IPV6} && ip link set kt0 up",
            ["--mode", variant.mode, "--local", host, "--remote", guest, "--name", "ut0", *variant.ours],
        )


def ecn_rfc6040(inner: bytes) -> int:
    """The outer ECN field RFC 6040 section 4.1 asks for (normal mode): the inner one, CE sent as ECT(0)."""
    ecn = inner[1] & 0x03 if inner[0] >> 4 == 4 else (inner[1] >> 4) & 0x03
    return 0b10 if ecn == 0b11 else ecn


def with_linux_ip6gre_ecn(variant: Variant, inner: bytes, ours: bytes, theirs: bytes) -> bytes:
    """Our packet with the one field we set on purpose unlike Linux 6.1: ip6gre's outer ECN (README). Linux's
    ip6gre leaves it Not-ECT (it never calls INET_ECN_encapsulate; its ip6_tunnel and ip_gre do); we copy the
    inner ECN as RFC 6040 asks. Both are checked here, then ours is given the kernel's value."""
    if variant.mode != "ip6gre":
        return ours
    assert theirs[1] & 0x30 == 0, f"the kernel's ip6gre set an outer ECN: {theirs[:4].hex()}"
    expected = ecn_rfc6040(inner)
    assert (ours[1] >> 4) & 0x03 == expected, (
        f"our outer ECN is {(ours[1] >> 4) & 0x03:#04b} for inner {same_inner.describe(inner)}:"
        f" RFC 6040 4.1 asks {expected:#04b}"
    )
    return ours[:1] + bytes([ours[1] & ~0x30 & 0xFF]) + ours[2:]


@pytest.mark.netns
@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
@pytest.mark.matrix("usertunnel up's packets = kernel's (same inner TCP, UDP, ICMP); tx = peer's rx")
def test_running_usertunnel_sends_what_the_kernel_sends_in_every_ipv6_mode_for_the_same_inner_packets(
    pair_factory, variant: Variant
) -> None:
    pair = pair_factory(QuietPair, variant)
    packets = same_inner.inner_packets_of(variant.mode, pair.mtu())
    capture = same_inner.inject_both_of(pair.kernel, packets, NS_HOST, VETH_HOST, variant.mode, pair.sources)
    ours = same_inner.tunnel_packets_of(capture.outgoing, variant.mode, pair.sources[0])
    theirs = same_inner.tunnel_packets_of(capture.incoming, variant.mode, pair.sources[1])
    same_inner.assert_one_each_of(ours, packets, "usertunnel")
    same_inner.assert_one_each_of(theirs, packets, "the kernel")
    counted, theirs_counted = pair.counters()
    assert counted["tx_packets"] == counted["rx_packets"] == len(packets), counted
    assert_nothing_lost_unseen(counted, theirs_counted, pair.kernel)
    differ = []
    for inner, sent_by_us, sent_by_kernel in zip(packets, ours, theirs, strict=True):
        b = same_inner.masked_any(same_inner.mirrored_any(sent_by_kernel, None))
        a = same_inner.masked_any(with_linux_ip6gre_ecn(variant, inner, sent_by_us, sent_by_kernel))
        if a != b:
            differ.append(f"{same_inner.describe(inner)}: {'; '.join(same_inner.differences_any(a, b))}")
    assert not differ, f"{len(differ)} of {len(packets)} packets differ:\n" + "\n".join(differ[:12])
    assert pair.close()["ut0"]["drops"] == {}
