"""`usertunnel lab`, the README's main job: it works, shows the packets, and leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import require_netns

from usertunnel import netns
from usertunnel.lab import NS_A, NS_B


def lab_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "usertunnel", "lab", *args]


@pytest.mark.netns
@pytest.mark.parametrize("mode", ["gre", "ipip"])
def test_lab_pings_through_the_tunnel_shows_each_header_and_removes_its_namespaces(mode: str) -> None:
    require_netns()
    result = subprocess.run(lab_command("--mode", mode), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "3 received" in out and "the tunnel works" in out
    for field in ("outer IPv4 header", "inner IPv4 header", "inner ICMP", "echo request", "echo reply"):
        assert field in out
    if mode == "gre":
        assert "key                      1234 (0.0.4.210)" in out
        assert "protocol type            0x0800" in out
    assert not netns.exists(NS_A) and not netns.exists(NS_B)


@pytest.mark.netns
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_lab_still_removes_everything_it_created(sig: signal.Signals) -> None:
    require_netns()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        lab_command("--count", "50"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        # As a shell's background job: SIGINT ignored on entry. The lab must still clean up.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    for line in proc.stdout:
        if b"ping -c 50" in line or time.monotonic() > deadline:
            break
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 130, out.decode()
    assert b"removed ut-lab-a and ut-lab-b" in out
    assert not netns.exists(NS_A) and not netns.exists(NS_B)
    assert not netns.pids(NS_A)
