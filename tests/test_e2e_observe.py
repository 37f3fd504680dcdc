"""--trace and --pcap on a running tunnel: the packets are shown, saved, and every one is accounted for."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import INNER_A, INNER_B, UNDER_A, UNDER_B, Lab
from traffic import corrupt_last_byte, echo_request, fix_total_length

RX_DROPS = {
    "outer_malformed", "outer_fragment", "gre_truncated", "gre_version", "gre_routing", "gre_protocol", "no_tunnel",
    "key_mismatch", "csum_missing", "csum_bad", "csum_unexpected", "seq_missing", "seq_old", "ecn_ce_not_ect",
    "inner_malformed", "family", "icmp_error", "tun_write_error", "tun_down",
}  # fmt: skip


def tshark_fields(path: Path, *fields: str, display_filter: str = "") -> list[list[str]]:
    argv = ["tshark", "-r", str(path), "-T", "fields", "-E", "separator=|"]
    for f in fields:
        argv += ["-e", f]
    if display_filter:
        argv += ["-Y", display_filter]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [line.split("|") for line in done.stdout.splitlines()]


@pytest.mark.netns
def test_trace_and_pcap_show_every_packet_and_the_counters_add_up(lab: Lab, tmp_path: Path) -> None:
    assert shutil.which("tshark"), "tshark (Debian package tshark) is needed"
    pcap = tmp_path / "a.pcapng"
    end_a = lab.start(
        lab.a,
        ["--local", UNDER_A, "--remote", UNDER_B, "--name", "tun0", "--address", f"{INNER_A}/30",
         "--key", "7", "--seq", "--trace", "--pcap", str(pcap)],
    )  # fmt: skip
    lab.start(
        lab.b,
        ["--local", UNDER_B, "--remote", UNDER_A, "--name", "tun0", "--address", f"{INNER_B}/30",
         "--key", "7", "--seq"],
    )  # fmt: skip
    assert lab.ping(lab.a, INNER_B, count=3).returncode == 0
    # What A must refuse, sent from B's namespace: wrong key, replayed sequence, from a stranger, garbage.
    tx = lab.socket(lab.b, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    outer, inner = (UNDER_B, UNDER_A), (INNER_B, INNER_A)
    crafted = [
        echo_request(outer, inner, 9, 1, key=8, seq=10**6),
        echo_request(outer, inner, 9, 2, key=7, seq=0),
        corrupt_last_byte(echo_request(outer, inner, 9, 3, key=7, seq=10**6, csum=True)),
        echo_request(outer, inner, 9, 4, key=7, seq=10**6 + 1)[:30],
    ]
    for packet in crafted:
        tx.sendto(fix_total_length(packet), (UNDER_A, 0))
    tx.close()
    time.sleep(0.3)
    stats = end_a.stop()

    trace = [line for line in end_a.lines if line.startswith("trace: ")]
    text = "\n".join(trace)
    assert "trace: tx tun0: read 84 bytes from TUN: IPv4 203.0.113.1 > 203.0.113.2 ICMP" in text
    assert "trace:   lookup: tunnel tun0, rule 'exact local+remote'" in text
    for reason in ("key_mismatch", "seq_old", "csum_bad", "gre_truncated"):
        assert f"trace:   dropped: {reason}:" in text, reason

    rows = tshark_fields(pcap, "frame.interface_name", "frame.packet_flags_direction", "gre.key", "icmp.type")
    assert {r[0] for r in rows} == {"underlay", "tun"}
    underlay_in = [r for r in rows if r[0] == "underlay" and r[1] == "0x00000001"]
    tun_out = [r for r in rows if r[0] == "tun" and r[1] == "0x00000002"]
    assert any(r[2] == "0x00000007" and r[3] == "0" for r in underlay_in)  # an echo reply, key 7, as received
    assert any(r[3] == "8" for r in tun_out)  # an echo request as read from the TUN device

    # Every packet read from the raw socket was delivered or dropped with a reason.
    counted = stats["tun0"]["rx_packets"]
    for name in ("tun0", "unmatched"):
        counted += sum(n for reason, n in stats[name]["drops"].items() if reason in RX_DROPS)
    assert counted == len(underlay_in)
    assert stats["tun0"]["rx_packets"] == len([r for r in rows if r[0] == "tun" and r[1] == "0x00000001"])
