"""`--seq-policy` through `Demux.decapsulate`: reordered, duplicated, lost and restarted streams, fake clock.

The policies themselves are pinned in test_sequence_policy.py; here the packets
are real GRE packets from a sending `Tunnel`, and what comes out is what the
I/O shell would write into TUN: `Received.inner` then `Received.then`, the
`released` packets of `Held`, and what `Demux.expire` returns at a deadline.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usertunnel.core import ipv4
from usertunnel.core.drops import Drop
from usertunnel.core.encap import Demux, Held, Received, Tunnel
from usertunnel.core.errors import ConfigError
from usertunnel.core.ipv4 import IPv4Header
from usertunnel.core.params import Mode, TunnelParams
from usertunnel.core.sequence import SeqPolicy

A = bytes([198, 51, 100, 1])
B = bytes([198, 51, 100, 2])


def inner(n: int) -> bytes:
    """An inner IPv4 packet that says which one it is (its identification field)."""
    payload = n.to_bytes(4, "big")
    return IPv4Header(0, 24, n & 0xFFFF, ipv4.FLAG_DF, 64, 253, 0, A, B).with_checksum().pack() + payload


def number(packet: bytes | bytearray | memoryview) -> int:
    return int.from_bytes(bytes(packet[20:24]), "big")


def stream(count: int) -> list[bytes]:
    """`count` GRE packets B sends to A with --oseq (sequence numbers 0..count-1)."""
    sender = Tunnel(TunnelParams("b", Mode.GRE, B, A, oseq=True))
    out = []
    for n in range(count):
        packet = sender.encapsulate(inner(n))
        assert isinstance(packet, bytes)
        out.append(packet)
    return out


def receiver(policy: SeqPolicy) -> tuple[Demux, Tunnel]:
    tunnel = Tunnel(TunnelParams("a", Mode.GRE, A, B, iseq=True, seq_policy=policy))
    demux = Demux()
    demux.add(tunnel)
    return demux, tunnel


def feed(demux: Demux, packets: list[bytes], times: list[float] | None = None) -> tuple[list[int], list[object]]:
    """Deliver like the shell: returns the inner numbers written to TUN, in order, and every result."""
    written: list[int] = []
    results: list[object] = []
    for i, packet in enumerate(packets):
        now = times[i] if times else 0.0
        for _, released in demux.expire(now):
            written += [number(p) for p in released]
        result = demux.decapsulate(packet, now)
        results.append(result)
        if isinstance(result, Received):
            written.append(number(result.inner))
            written += [number(p) for p in result.then]
        elif isinstance(result, Held):
            written += [number(p) for p in result.released]
    return written, results


def test_rfc2890_delivers_a_reordered_stream_in_order() -> None:
    demux, tunnel = receiver(SeqPolicy.RFC2890)
    s = stream(6)
    written, results = feed(demux, [s[0], s[2], s[3], s[1], s[5], s[4]])
    assert written == [0, 1, 2, 3, 4, 5]
    assert sum(isinstance(r, Held) for r in results) == 3
    assert tunnel.counters.rx_packets == 6 and tunnel.counters.drops == {}
    assert not demux.holding


def test_kernel_policy_drops_what_rfc2890_reorders() -> None:
    demux, tunnel = receiver(SeqPolicy.KERNEL)
    s = stream(4)
    written, _ = feed(demux, [s[0], s[2], s[1], s[3]])
    assert written == [0, 2, 3]
    assert tunnel.counters.drops == {Drop.SEQ_OLD: 1}


def test_rfc2890_gives_up_on_a_lost_packet_when_the_timer_expires() -> None:
    demux, tunnel = receiver(SeqPolicy.RFC2890)
    s = stream(5)
    written, _ = feed(demux, [s[0], s[2], s[3]], [0.0, 0.001, 0.002])  # 1 is lost
    assert written == [0]
    deadline = demux.deadline()
    assert deadline is not None and 0.001 < deadline <= 0.001 + 0.05
    assert demux.expire(deadline - 0.0005) == []
    released = demux.expire(deadline)
    assert [(t, [number(p) for p in ps]) for t, ps in released] == [(tunnel, [2, 3])]
    # The gap is given up: the lost packet, arriving late, is old; the stream goes on.
    later, results = feed(demux, [s[1], s[4]], [1.0, 1.0])
    assert later == [4] and results[0] is Drop.SEQ_OLD
    assert tunnel.counters.rx_packets == 4


def test_rfc2890_drops_duplicates_held_or_delivered() -> None:
    demux, tunnel = receiver(SeqPolicy.RFC2890)
    s = stream(4)
    written, results = feed(demux, [s[0], s[0], s[2], s[2], s[1], s[3], s[1]])
    assert written == [0, 1, 2, 3]
    assert tunnel.counters.drops == {Drop.SEQ_OLD: 3}


def test_resync_takes_a_restarted_peer_back_after_consecutive_packets() -> None:
    demux, tunnel = receiver(SeqPolicy.RESYNC)
    first = stream(100)
    feed(demux, first)
    restarted = stream(12)
    written, results = feed(demux, restarted)
    assert results[:7] == [Drop.SEQ_OLD] * 7
    assert written == list(range(7, 12))
    kernel_demux, _ = receiver(SeqPolicy.KERNEL)
    feed(kernel_demux, first)
    assert feed(kernel_demux, restarted)[0] == []  # Linux: refused until the numbers pass 99


def test_resync_restart_accepts_at_once_after_keepalives_return() -> None:
    demux, tunnel = receiver(SeqPolicy.RESYNC)
    feed(demux, stream(50))
    tunnel.iseq_window.restart()
    written, _ = feed(demux, stream(3))
    assert written == [0, 1, 2]


@settings(max_examples=200, deadline=None)
@given(st.permutations(list(range(12))), st.lists(st.integers(0, 11), max_size=6))
def test_property_rfc2890_writes_each_packet_once_in_order_whatever_the_arrival_order(
    order: list[int], duplicates: list[int]
) -> None:
    demux, tunnel = receiver(SeqPolicy.RFC2890)
    s = stream(12)
    arrivals = [s[i] for i in order] + [s[i] for i in duplicates]
    written, _ = feed(demux, arrivals)
    for _, released in demux.expire(1e9):
        written += [number(p) for p in released]
    assert written == sorted(set(written))
    # The first arrival opens the window (as in Linux); everything after it arrived within a 12-packet
    # window (buffer 64, no timer fired before the end), so none of those is lost.
    assert written == list(range(order[0], 12))
    c = tunnel.counters
    assert c.rx_packets + sum(c.drops.values()) == len(arrivals)


def test_a_seq_policy_without_iseq_is_refused() -> None:
    with pytest.raises(ConfigError, match="--seq or --iseq"):
        TunnelParams("a", Mode.GRE, A, B, seq_policy=SeqPolicy.RFC2890)
