"""Hand-crafted GRE packets (built with scapy) sent from the peer namespace to a running tunnel.

Only packets that pass every receive rule may reach the TUN device; we know
which did because the receiving host answers each delivered echo request
through the tunnel, and we capture those answers on the peer's side.
"""

from __future__ import annotations

import socket
import time

import pytest
from conftest import INNER_A, INNER_B, UNDER_A, UNDER_B, Lab
from traffic import corrupt_last_byte, echo_replies_seen, echo_request, fix_total_length

ECHO_ID = 0x5554


def gre_packet(icmp_seq: int, key: int | None = 7, seq: int | None = None, csum: bool = True) -> bytes:
    return echo_request((UNDER_A, UNDER_B), (INNER_A, INNER_B), ECHO_ID, icmp_seq, key=key, seq=seq, csum=csum)


@pytest.mark.netns
def test_only_packets_passing_key_seq_and_csum_rules_reach_tun(lab: Lab) -> None:
    end_b = lab.start(
        lab.b,
        [
            "--local",
            UNDER_B,
            "--remote",
            UNDER_A,
            "--name",
            "tun0",
            "--address",
            f"{INNER_B}/30",
            "--key",
            "7",
            "--seq",
            "--csum",
        ],
    )
    tx = lab.socket(lab.a, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    rx = lab.socket(lab.a, socket.AF_INET, socket.SOCK_RAW, 47)
    cases = [
        (1, gre_packet(1, seq=10)),  # delivered
        (2, gre_packet(2, seq=10)),  # replayed: seq_old
        (3, gre_packet(3, seq=5)),  # older: seq_old
        (4, gre_packet(4, seq=12)),  # delivered (a gap is fine)
        (5, gre_packet(5, seq=11)),  # reordered: seq_old
        (6, corrupt_last_byte(gre_packet(6, seq=13))),  # csum_bad
        (7, gre_packet(7, seq=14, csum=False)),  # csum_missing
        (8, gre_packet(8, seq=None)),  # seq_missing
        (9, gre_packet(9, key=8, seq=15)),  # key_mismatch
        (10, gre_packet(10, key=None, seq=15)),  # key_mismatch (no key at all)
        (11, gre_packet(11, seq=16)),  # delivered
    ]
    for _, packet in cases:
        tx.sendto(packet, (UNDER_B, 0))
        time.sleep(0.02)
    replies = echo_replies_seen(rx, ECHO_ID)
    tx.close()
    rx.close()
    stats = end_b.stop()["tun0"]
    assert sorted(replies) == [1, 4, 11]
    assert stats["rx_packets"] == 3
    assert stats["drops"] == {
        "seq_old": 3,
        "csum_bad": 1,
        "csum_missing": 1,
        "seq_missing": 1,
        "key_mismatch": 2,
    }


@pytest.mark.netns
def test_malformed_gre_from_the_peer_is_counted_and_the_tunnel_keeps_working(lab: Lab) -> None:
    end_a, end_b = lab.pair(["--key", "7"])
    tx = lab.socket(lab.a, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    good = gre_packet(1, csum=False)
    ihl = 20
    bad = [
        good[: ihl + 2],  # truncated GRE header
        good[:ihl] + bytes([good[ihl], good[ihl + 1] | 0x01]) + good[ihl + 2 :],  # version 1
        good[:ihl] + bytes([good[ihl] | 0x40]) + good[ihl + 1 :],  # routing bit
        good[: ihl + 8] + b"\x45\x00\x00\xff" + good[ihl + 12 :],  # inner total length lies
    ]
    for packet in bad:
        tx.sendto(fix_total_length(packet), (UNDER_B, 0))  # the truncated one needs it to be delivered
    tx.close()
    time.sleep(0.3)
    ping = lab.ping(lab.a, INNER_B, count=2)
    assert ping.returncode == 0
    stats = end_b.stop()
    assert stats["unmatched"]["drops"] == {"gre_truncated": 1, "gre_version": 1, "gre_routing": 1}
    assert stats["tun0"]["drops"].get("inner_malformed") == 1


@pytest.mark.netns
@pytest.mark.parametrize(
    ("policy", "order", "drops"),
    [
        # Linux's rule: what comes late is dropped (11, and 14 after the stream moved on).
        ("kernel", [10, 12, 13, 15, 16], {"seq_old": 2}),
        # RFC 2890: 12 and 13 wait for 11; 15 waits for 14 until the timer gives up on it; 14, late, is old.
        ("rfc2890", [10, 11, 12, 13, 15, 16], {"seq_old": 1}),
    ],
)
def test_a_reordered_stream_is_delivered_as_the_sequence_policy_says(
    lab: Lab, policy: str, order: list[int], drops: dict[str, int]
) -> None:
    args = ["--local", UNDER_B, "--remote", UNDER_A, "--name", "tun0", "--address", f"{INNER_B}/30"]
    end_b = lab.start(lab.b, [*args, "--key", "7", "--iseq", "--seq-policy", policy])
    tx = lab.socket(lab.a, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    rx = lab.socket(lab.a, socket.AF_INET, socket.SOCK_RAW, 47)
    for seq, pause in ((10, 0), (12, 0), (13, 0), (11, 0), (15, 0.2), (16, 0), (14, 0)):
        tx.sendto(gre_packet(seq, seq=seq, csum=False), (UNDER_B, 0))  # ICMP sequence = GRE sequence
        time.sleep(pause or 0.005)
    replies = echo_replies_seen(rx, ECHO_ID, in_order=True)
    tx.close()
    rx.close()
    stats = end_b.stop()["tun0"]
    assert replies == order
    assert stats["drops"] == drops
    assert stats["rx_packets"] == len(order)
