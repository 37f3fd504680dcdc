"""Keepalives between two running tunnels: the line protocol follows the peer, and Cisco's are reflected."""

from __future__ import annotations

import socket
import time

import pytest
from conftest import INNER_A, INNER_B, UNDER_A, UNDER_B, Lab
from scapy.layers.inet import GRE, IP

from usertunnel.io import netns

PERIOD, RETRIES = 0.5, 2


def end_args(local: str, remote: str, inner: str) -> list[str]:
    return ["--local", local, "--remote", remote, "--name", "tun0", "--address", f"{inner}/30",
            "--key", "5", "--keepalive", f"{PERIOD},{RETRIES}"]  # fmt: skip


def carrier(lab: Lab) -> bool:
    out = netns.run(lab.a, ["ip", "link", "show", "tun0"]).stdout.decode()
    return "NO-CARRIER" not in out


def wait_for(predicate, timeout: float) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s")


@pytest.mark.netns
def test_line_protocol_goes_down_when_the_peer_stops_and_up_when_it_returns(lab: Lab) -> None:
    end_a = lab.start(lab.a, end_args(UNDER_A, UNDER_B, INNER_A))
    end_b = lab.start(lab.b, end_args(UNDER_B, UNDER_A, INNER_B))
    time.sleep(3 * PERIOD)
    assert carrier(lab) and lab.ping(lab.a, INNER_B, count=1).returncode == 0
    end_b.stop()
    # Down within PERIOD x (RETRIES + 1) of the last reply (plus one period of slack for timing).
    took = wait_for(lambda: not carrier(lab), PERIOD * (RETRIES + 2) + 2)
    assert took <= PERIOD * (RETRIES + 2) + 1.0
    assert any("line protocol down" in line for line in end_a.lines)
    lab.start(lab.b, end_args(UNDER_B, UNDER_A, INNER_B))
    wait_for(lambda: carrier(lab), 3 * PERIOD + 2)
    assert any("line protocol up" in line for line in end_a.lines)
    assert lab.ping(lab.a, INNER_B, count=1).returncode == 0
    stats = end_a.stop()["tun0"]
    assert stats["drops"] == {}


@pytest.mark.netns
def test_a_keepalive_crafted_as_cisco_sends_it_is_reflected_back_to_the_sender(lab: Lab) -> None:
    lab.start(lab.a, ["--local", UNDER_A, "--remote", UNDER_B, "--name", "tun0", "--address", f"{INNER_A}/30"])
    # B plays the Cisco router: its keepalive to A carries a packet from A back to B.
    inner = IP(src=UNDER_A, dst=UNDER_B, ttl=255, id=0x1234) / GRE(proto=0)
    cisco = bytes(IP(src=UNDER_B, dst=UNDER_A) / GRE(proto=0x0800) / inner)
    tx = lab.socket(lab.b, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    rx = lab.socket(lab.b, socket.AF_INET, socket.SOCK_RAW, 47)
    rx.settimeout(2)
    tx.sendto(cisco, (UNDER_A, 0))
    back = IP(rx.recv(65535))
    tx.close()
    rx.close()
    assert (back.src, back.dst, back.id, back.ttl) == (UNDER_A, UNDER_B, 0x1234, 255)
    assert back[GRE].proto == 0 and len(bytes(back[GRE].payload)) == 0
