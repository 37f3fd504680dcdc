"""Negative interop: what the Linux kernel refuses from us, and what we refuse from it.

First direction: packets crafted with scapy are sent from usertunnel's namespace
to a kernel tunnel; the kernel answers every echo request it accepts through
its tunnel, so the answers captured on our side say exactly which packets it
delivered, and its device counters say how it counted the others.
Second direction: the kernel is configured to send what our receive rules
refuse, and our counters must say why.
Then usertunnel itself misconfigured against the kernel (our key wrong, our
checksums or sequence numbers on and the kernel's off): the same inner packets
are written into both tunnel devices, and what the kernel counts for ours and
what we count for its (`usertunnel stats -j` while running, and the stats
`usertunnel up` prints at exit) are asserted both ways, packet for packet,
with the packets themselves seen on the wire.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Any

import pytest
import same_inner
from kernel_peer import GUEST_ADDR, HOST_ADDR, NS_HOST, VETH_HOST, KernelPeer
from scapy.layers.inet import ICMP, IP, UDP
from test_kernel import OURS, THEIRS, Pair, Variant
from traffic import corrupt_last_byte, echo_replies_seen, echo_request

from usertunnel.io import netns

ECHO_ID = 0x5575


def crafted(n: int, **options: Any) -> bytes:
    return echo_request((HOST_ADDR, GUEST_ADDR), (OURS, THEIRS), ECHO_ID, n, **options)


def corrupted(packet: bytes) -> bytes:
    return corrupt_last_byte(packet)


class KernelTunnel:
    """A kernel tunnel `kt0` alone (no usertunnel): we talk to it with crafted packets."""

    def __init__(self, kernel: KernelPeer, mode: str, options: str) -> None:
        self.kernel = kernel
        self.mode = mode
        kernel.check(
            f"ip tunnel add kt0 mode {mode} local {GUEST_ADDR} remote {HOST_ADDR} {options}"
            f" && ip link set kt0 up && ip addr add {THEIRS}/30 dev kt0"
        )
        proto = 47 if mode == "gre" else 4
        self.tx = netns.open_socket(NS_HOST, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.rx = netns.open_socket(NS_HOST, socket.AF_INET, socket.SOCK_RAW, proto)

    def send(self, packets: list[bytes]) -> tuple[list[int], dict[str, int], dict[str, int]]:
        """Send each packet; the echo sequence numbers answered, and the counters before and after."""
        before = self.kernel.link_stats("kt0")
        for packet in packets:
            self.tx.sendto(packet, (GUEST_ADDR, 0))
            time.sleep(0.05)
        answered = echo_replies_seen(self.rx, ECHO_ID)
        after = self.kernel.link_stats("kt0")
        return answered, before, after

    def close(self) -> None:
        self.tx.close()
        self.rx.close()
        self.kernel.sh("ip tunnel del kt0")


@pytest.fixture
def kernel_tunnel(kernel: KernelPeer):  # type: ignore[no-untyped-def]
    made: list[KernelTunnel] = []

    def make(mode: str, options: str) -> KernelTunnel:
        made.append(KernelTunnel(kernel, mode, options))
        return made[-1]

    yield make
    for t in made:
        t.close()


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


# --- what the kernel refuses from us ----------------------------------------------------------------------


@pytest.mark.netns
@pytest.mark.matrix("kernel: wrong or missing key finds no tunnel")
def test_kernel_delivers_only_the_right_key_and_finds_no_tunnel_for_others(kernel_tunnel) -> None:  # type: ignore[no-untyped-def]
    t = kernel_tunnel("gre", "key 1234")
    answered, before, after = t.send([crafted(1, key=1234), crafted(2, key=99), crafted(3), crafted(4, key=1234)])
    assert answered == [1, 4]
    # A wrong or missing key matches no tunnel (ip_tunnel_lookup): nothing is counted on kt0.
    assert delta(before, after) == {"bytes": delta(before, after)["bytes"], "packets": 2}


@pytest.mark.netns
@pytest.mark.matrix("kernel: C bit disagreeing with icsum dropped (crc_errors)")
def test_kernel_drops_a_checksum_flag_that_disagrees_with_its_icsum_and_counts_crc_errors(kernel_tunnel) -> None:  # type: ignore[no-untyped-def]
    with_icsum = kernel_tunnel("gre", "icsum")
    answered, before, after = with_icsum.send([crafted(1, csum=True), crafted(2)])
    assert answered == [1]
    assert delta(before, after)["crc_errors"] == 1
    with_icsum.close()
    without = kernel_tunnel("gre", "")
    answered, before, after = without.send([crafted(3), crafted(4, csum=True)])
    # Linux drops a checksummed packet on a tunnel without icsum: RFC 2784 says a receiver
    # "MUST" accept it; usertunnel matches Linux (Drop.CSUM_UNEXPECTED).
    assert answered == [3]
    assert delta(before, after)["crc_errors"] == 1


@pytest.mark.netns
@pytest.mark.matrix("kernel: bad checksum dropped before lookup")
def test_kernel_drops_a_bad_checksum_before_finding_the_tunnel(kernel_tunnel) -> None:  # type: ignore[no-untyped-def]
    t = kernel_tunnel("gre", "csum")
    answered, before, after = t.send([corrupted(crafted(1, csum=True)), crafted(2, csum=True)])
    assert answered == [2]
    # gre_parse_header rejects it before the lookup: the tunnel never sees it.
    assert delta(before, after).get("crc_errors", 0) == 0 and delta(before, after)["packets"] == 1


@pytest.mark.netns
@pytest.mark.matrix("kernel: missing, replayed, old seq dropped (fifo_errors)")
def test_kernel_drops_missing_replayed_and_old_sequence_numbers_as_fifo_errors(kernel_tunnel) -> None:  # type: ignore[no-untyped-def]
    t = kernel_tunnel("gre", "iseq")
    packets = [
        crafted(1, seq=10),
        crafted(2, seq=10),  # replayed
        crafted(3, seq=5),  # older
        crafted(4),  # no sequence number
        crafted(5, seq=12),
        crafted(6, seq=11),  # reordered
    ]
    answered, before, after = t.send(packets)
    assert answered == [1, 5]
    assert delta(before, after)["fifo_errors"] == 4


@pytest.mark.netns
@pytest.mark.parametrize("mode", ["gre", "ipip"])
@pytest.mark.matrix("kernel: outer CE over Not-ECT dropped (frame_errors)")
def test_kernel_applies_rfc6040_outer_ce_over_not_ect_is_dropped_as_frame_error(kernel_tunnel, mode: str) -> None:  # type: ignore[no-untyped-def]
    t = kernel_tunnel(mode, "")
    answered, before, after = t.send(
        [crafted(1, tos=0x03, inner_tos=0x00, mode=mode), crafted(2, tos=0x03, inner_tos=0x02, mode=mode)]
    )
    assert answered == [2]
    assert delta(before, after)["frame_errors"] == 1


GUE_PORT = 6080


def gue_datagram(n: int, gue: bytes, source: str = HOST_ADDR) -> bytes:
    """Our echo request `n` to the kernel's inner address in UDP to GUE_PORT, after the bytes `gue` (a GUE
    header, or nothing for GUE variant 1: the inner IPv4 packet itself)."""
    inner = IP(src=OURS, dst=THEIRS) / ICMP(id=ECHO_ID, seq=n) / b"usertunnel-crafted"
    return bytes(IP(src=source, dst=GUEST_ADDR, flags="DF") / UDP(sport=40000, dport=GUE_PORT) / (gue + bytes(inner)))


@pytest.mark.netns
@pytest.mark.matrix(
    "kernel: GUE with C, unknown flags, variant 2, or no tunnel's outer addresses: taken by UDP, no device"
)
def test_kernel_takes_every_gue_datagram_into_udp_but_hands_only_variants_0_and_1_to_its_tunnel(
    kernel: KernelPeer, kernel_tunnel: Any
) -> None:
    # Linux 6.1's gue_udp_recv (net/ipv4/fou.c, later renamed fou_core.c) runs as the port's encap_rcv: the UDP layer
    # counts the datagram (Udp.InDatagrams) before it looks, and what it frees never reaches a tunnel device
    # and is counted nowhere else. What it hands on is resubmitted as IP protocol Proto/ctype (variant 0), or
    # 4/41 from the version nibble (variant 1), and meets ipip's lookup by the outer addresses.
    t = kernel_tunnel("ipip", "")
    kernel.check(f"ip fou add port {GUE_PORT} gue")
    try:
        packets = [
            gue_datagram(1, bytes((0x00, 4, 0, 0))),  # variant 0, proto 4: delivered
            gue_datagram(2, bytes((0x20, 4, 0, 0))),  # C: a control message (gue_control_message frees it)
            gue_datagram(3, bytes((0x00, 4, 0x80, 0))),  # a flag Linux does not know (validate_gue_flags)
            gue_datagram(4, bytes((0x00, 4, 0, 0x01))),  # the private flag without its 4 option bytes (hlen 0)
            gue_datagram(5, bytes((0x80, 4, 0, 0))),  # variant 2: undefined
            gue_datagram(6, b""),  # variant 1: the inner IPv4 packet right after UDP: delivered
            # Variant 0, proto 4, from an outer source no ipip tunnel has as its remote: handed to ipip, whose
            # lookup (by the outer addresses, as for plain IPIP) finds no tunnel: tunnel4 answers ICMP port
            # unreachable (sent, or counted as rate-limited).
            gue_datagram(7, bytes((0x00, 4, 0, 0)), source="198.51.100.9"),
        ]
        snmp = kernel.snmp()
        answered, before, after = t.send(packets)
        grown = {k: v - snmp.get(k, 0) for k, v in kernel.snmp().items()}
    finally:
        kernel.sh(f"ip fou del port {GUE_PORT}")
    assert answered == [1, 6]
    assert delta(before, after) == {"bytes": delta(before, after)["bytes"], "packets": 2}
    assert grown["Udp.InDatagrams"] == len(packets), grown
    assert grown["Udp.InErrors"] == grown["Udp.NoPorts"] == grown["Udp.InCsumErrors"] == 0, grown
    unreachable = ("Icmp.OutDestUnreachs", "Icmp.OutRateLimitHost", "Icmp.OutRateLimitGlobal")
    assert sum(grown.get(k, 0) for k in unreachable) == 1, {k: grown.get(k, 0) for k in unreachable}


# --- what we refuse from the kernel -----------------------------------------------------------------------

REFUSED_BY_US = [
    (Variant("their-okey-wrong", "gre", "okey 99", ("--key", "1234")), "key_mismatch"),
    (Variant("their-key-we-none", "gre", "key 7", ()), "key_mismatch"),
    (Variant("we-iseq-they-none", "gre", "", ("--iseq",)), "seq_missing"),
    (Variant("we-icsum-they-none", "gre", "", ("--icsum",)), "csum_missing"),
    (Variant("they-ocsum-we-none", "gre", "ocsum", ()), "csum_unexpected"),
]


@pytest.mark.netns
@pytest.mark.parametrize(("variant", "reason"), REFUSED_BY_US, ids=[v.name for v, _ in REFUSED_BY_US])
@pytest.mark.matrix("usertunnel refuses and counts the reason")
def test_we_refuse_what_the_kernel_sends_against_our_rules_and_count_why(
    kernel: KernelPeer, variant: Variant, reason: str
) -> None:
    pair = Pair(kernel, variant)
    assert kernel.sh(f"ping -c 3 -i 0.2 -W 1 {OURS}")["rc"] != 0
    stats = pair.close()
    ours = stats["ut0"]
    assert ours["rx_packets"] == 0
    assert ours["drops"].get(reason, 0) >= 3, stats


# --- usertunnel misconfigured against the kernel: what each side counts ------------------------------------


@dataclass(frozen=True)
class Misconfigured:
    """usertunnel set up against the kernel's tunnel with one option wrong, and what each side must count for
    the N packets the other sends: the kernel device's rx counters, how much sums of the kernel's own
    /proc/net/snmp counters grow, and usertunnel's drop reasons (exactly these, no other)."""

    variant: Variant
    kernel_rx: dict[str, str]  # counter -> "N" (every packet the other side sent) or "0"
    kernel_snmp: dict[str, str]  # "Group.Field+Group.Field" -> how much their sum grows: "N" or "0"
    our_drops: dict[str, str]  # reason -> "N"


MISCONFIGURED = [
    # Our key is not the kernel's: ip_tunnel_lookup finds no tunnel, so kt0 counts nothing; gre_rcv answers
    # each with an ICMP port unreachable, sent or (rate limits) counted as not sent. The kernel's key is not
    # ours: key_mismatch.
    Misconfigured(
        Variant("our-key-wrong", "gre", "key 1234", ("--key", "99")),
        kernel_rx={"packets": "0", "errors": "0"},
        kernel_snmp={"Icmp.OutDestUnreachs+Icmp.OutRateLimitHost+Icmp.OutRateLimitGlobal": "N"},
        our_drops={"key_mismatch": "N"},
    ),
    # Our checksums on, the kernel's off: it drops a C bit its icsum does not ask for (crc_errors), and we
    # drop its packets without one (csum_missing).
    Misconfigured(
        Variant("our-csum-theirs-off", "gre", "", ("--csum",)),
        kernel_rx={"packets": "0", "errors": "N", "crc_errors": "N"},
        kernel_snmp={"Icmp.OutDestUnreachs": "0"},
        our_drops={"csum_missing": "N"},
    ),
    # Our sequence numbers on, the kernel's off: Linux without iseq accepts numbered packets (ip_tunnel_rcv
    # only looks at the number with iseq), and we drop its unnumbered ones (seq_missing).
    Misconfigured(
        Variant("our-seq-theirs-off", "gre", "", ("--seq",)),
        kernel_rx={"packets": "N", "errors": "0"},
        kernel_snmp={"Icmp.OutDestUnreachs": "0"},
        our_drops={"seq_missing": "N"},
    ),
]


@pytest.mark.netns
@pytest.mark.parametrize("case", MISCONFIGURED, ids=[c.variant.name for c in MISCONFIGURED])
@pytest.mark.matrix("usertunnel misconfigured: the kernel counts ours, we count its, both ways")
def test_usertunnel_misconfigured_against_the_kernel_each_side_counts_the_others_packets(
    pair_factory, case: Misconfigured
) -> None:
    pair = pair_factory(Pair, case.variant)
    kernel = pair.kernel
    # TCP, UDP and ICMP, IPv4 and IPv6, one of 1400 bytes (within both sides' MTU, which differ here).
    packets = same_inner.inner_packets("gre", 1400)[::12]
    n = len(packets)
    snmp = kernel.snmp()
    capture = netns.Capture(NS_HOST, VETH_HOST)
    try:
        same_inner.inject(NS_HOST, "ut0", packets)
        kernel.inject("kt0", packets, gap=same_inner.GAP)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and min(len(capture.incoming), len(capture.outgoing)) < n:
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        capture.stop()
    # Every packet was sent, by both sides, and seen on the wire.
    assert len(same_inner.tunnel_packets(capture.outgoing, "gre", HOST_ADDR)) == n
    assert len(same_inner.tunnel_packets(capture.incoming, "gre", GUEST_ADDR)) == n
    expected_rx = {k: n if v == "N" else 0 for k, v in case.kernel_rx.items()}
    expected_drops = {k: n if v == "N" else 0 for k, v in case.our_drops.items()}
    deadline = time.monotonic() + 5
    while True:  # until both sides have counted everything (bounded: the assertions say what is missing)
        ours, theirs = pair.our_stats(), kernel.link_counters("kt0")
        counted = {k: theirs["rx"][k] for k in expected_rx}
        if (counted == expected_rx and ours["drops"] == expected_drops) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    both = f"usertunnel {ours}; kernel kt0 {theirs}"
    # What the kernel counts for our packets, and that it sent all of its own.
    assert counted == expected_rx, both
    assert theirs["tx"]["packets"] == n and theirs["tx"]["errors"] == 0, both
    after = kernel.snmp()
    for names, grows in case.kernel_snmp.items():
        fields = names.split("+")
        delta = {field: after[field] - snmp[field] for field in fields}
        assert sum(delta.values()) == (n if grows == "N" else 0), f"the kernel's {delta} for {n} packets"
    # What we count for the kernel's packets, and that we sent all of ours.
    assert ours["tx_packets"] == n and ours["rx_packets"] == 0, both
    assert ours["drops"] == expected_drops, both
    # The stats `usertunnel up` prints at exit say the same.
    at_exit = pair.close()["ut0"]
    assert (at_exit["tx_packets"], at_exit["rx_packets"], at_exit["drops"]) == (n, 0, expected_drops), at_exit
