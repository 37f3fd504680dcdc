"""`usertunnel lab`, the README's main job: it works, shows the packets, and leaves nothing behind; with
--html it writes a page that draws it all, which Chromium shows (tests/test_browser.py's checks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import require_netns
from test_browser import check_lab_report
from test_pictures import PageDOM, assert_lab_report

from usertunnel import netns
from usertunnel.lab import NS_A, NS_B


def lab_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "usertunnel", "lab", *args]


def check_report(path: Path, name: str, namespaces: list[str], out: str, packets: int | None = None) -> None:
    """The page `lab --html` wrote: as written, then as Chromium builds and shows it (kept as NAME.png)."""
    transcript = out.split("== report:")[0]
    assert f"== report: {path} (open it in a browser)" in out
    dom = PageDOM(path.read_text())
    explanations = assert_lab_report(dom, namespaces, transcript)
    if packets is not None:
        assert len(explanations) == packets
    assert all(e.layers[0].title.startswith("outer IPv4") for e in explanations)
    check_lab_report(path, name, namespaces, transcript)


@pytest.mark.netns
@pytest.mark.parametrize("mode", ["gre", "ipip"])
def test_lab_pings_through_the_tunnel_shows_each_header_and_removes_its_namespaces(mode: str, tmp_path: Path) -> None:
    require_netns()
    report = tmp_path / "report.html"
    result = subprocess.run(
        lab_command("--mode", mode, "--html", str(report)), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "3 received" in out and "the tunnel works" in out
    for field in ("outer IPv4 header", "inner IPv4 header", "inner ICMP", "echo request", "echo reply"):
        assert field in out
    if mode == "gre":
        assert "key                      1234 (0.0.4.210)" in out
        assert "protocol type            0x0800" in out
    assert not netns.exists(NS_A) and not netns.exists(NS_B)
    crossed = sum(1 for line in out.splitlines() if line.startswith(("-- sent by B", "-- received by B")))
    check_report(report, f"lab-{mode}", [NS_A, NS_B], out, crossed)


def test_a_report_that_cannot_be_written_is_refused_in_one_line_before_anything_is_built(tmp_path: Path) -> None:
    for scenario in ([], ["nat"], ["p2mp"]):
        missing = tmp_path / "no-such-dir" / "report.html"
        result = subprocess.run(lab_command(*scenario, "--html", str(missing)), capture_output=True, text=True)
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr == (
            f"usertunnel lab: error: --html {str(missing)!r}: cannot write the report there: there is no directory "
            f"{missing.parent} (give a file name to write)\n"
        )
    result = subprocess.run(lab_command("--html", str(tmp_path)), capture_output=True, text=True)
    assert result.returncode == 2 and "it is a directory" in result.stderr


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


@pytest.mark.netns
def test_nat_lab_shows_the_seeds_failing_setup_then_the_two_that_work(tmp_path: Path) -> None:
    require_netns()
    report = tmp_path / "nat.html"
    result = subprocess.run(lab_command("nat", "--html", str(report)), capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "summary: 1. fails, 2. works, 3. works" in out
    # The failing attempt is explained by the POP's counters: packets from the NAT's address, no tunnel for it.
    first = out.split("== 2.")[0]
    assert "0 received" in first and "no_tunnel" in first
    assert "198.51.100.12 key 1234 (learned" in out
    assert not any(name.startswith("ut-nat-") for name in os.listdir("/run/netns"))
    check_report(report, "lab-nat", [f"ut-nat-{n}" for n in ("cpe", "nat", "ix", "pop")], out)


@pytest.mark.netns
def test_p2mp_lab_connects_three_spokes_through_a_hub_that_learned_them(tmp_path: Path) -> None:
    require_netns()
    report = tmp_path / "p2mp.html"
    result = subprocess.run(lab_command("p2mp", "--html", str(report)), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "every ping answered" in out and "100% packet loss" not in out
    for outer, inner in (("198.51.100.11", "203.0.113.11"), ("198.51.100.12", "203.0.113.12")):
        assert f"{outer} key 1234 (learned" in out and inner in out
    assert "hub: 3 neighbor(s)" in out
    assert not any(name.startswith("ut-p2mp-") for name in os.listdir("/run/netns"))
    names = ["hub", "ix", "spoke1", "nat2", "spoke2", "nat3", "spoke3"]
    check_report(report, "lab-p2mp", [f"ut-p2mp-{n}" for n in names], out)
