"""`usertunnel lab`, the README's main job: it works, shows the packets, and leaves nothing behind; with
--html it writes a page that draws it all, which Chromium shows (tests/test_browser.py's checks)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import require_netns
from test_browser import check_lab_report
from test_pictures import PageDOM, assert_lab_report, assert_page_shows

from usertunnel.io import netns
from usertunnel.teach import explain
from usertunnel.teach.lab import NS_A, NS_B


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


NAT_MAPPING = re.compile(
    r"^     (198\.51\.100\.6[67]) port 6000 -> 198\.51\.100\.12 port (\d+)( \(the NAT's choice\))?$", re.M
)
HUB_ENTRY = re.compile(
    r"^     198\.51\.100\.12 port (\d+)(?: \(the NAT's choice\))? key 1234: (203\.0\.113\.2[12]) \(CPE [12]\)$", re.M
)


@pytest.mark.netns
@pytest.mark.parametrize("kind", ["fou", "gue"])
def test_nat_lab_in_udp_puts_two_cpes_behind_one_nat_and_the_hub_follows_the_nat_rebinding(
    kind: str, tmp_path: Path
) -> None:
    require_netns()
    report = tmp_path / f"nat-{kind}.html"
    html = ["--html", str(report)] if kind == "fou" else []
    result = subprocess.run(lab_command("nat", "--encap", kind, *html), capture_output=True, text=True, timeout=120)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "== summary: two CPEs behind one NAT reached the POP at once (one public address, two ports)" in out
    assert "nf_conntrack_udp_timeout 5 s and nf_conntrack_udp_timeout_stream 5 s (set by the lab" in out
    assert "100% packet loss" not in out and out.count(" 3 received, 0% packet loss") == 10
    before, after = out.split("== 2. the NAT forgets")
    assert "the NAT's conntrack table is empty" in after
    for phase, first in ((before, "198.51.100.66"), (after, "198.51.100.67")):
        # The NAT keeps port 6000 for whichever CPE speaks first, and picks another for the second ...
        mapped = {cpe: (int(port), bool(chosen)) for cpe, port, chosen in NAT_MAPPING.findall(phase)}
        assert len(mapped) == 2 and mapped[first] == (6000, False), phase
        second = next(cpe for cpe in mapped if cpe != first)
        assert mapped[second][0] != 6000 and mapped[second][1]
        # ... and the hub sends to each CPE at the port the NAT gave it: one public address, two ports.
        at = {host: int(port) for port, host in HUB_ENTRY.findall(phase)}
        cpe_of = {"203.0.113.21": "198.51.100.66", "203.0.113.22": "198.51.100.67"}
        assert {cpe_of[h]: p for h, p in at.items()} == {cpe: port for cpe, (port, _) in mapped.items()}
        carried = "GRE key 1234" if kind == "fou" else "GUE proto 47, GRE key 1234"
        port = {"fou": 4754, "gue": 6080}[kind]
        for host, p in at.items():
            chosen = " (the NAT's choice)" if p != 6000 else ""
            flow = f"198.51.100.12 port {p}{chosen} > 198.51.100.1 port {port}: 9 datagrams ({carried}, inside {host} >"
            assert flow in phase, flow
    assert "(learned 2, moved 0, expired 0)" in before and "(learned 2, moved 2, expired 0)" in after
    assert "- (its host moved away)" in after
    assert not any(name.startswith("ut-nat-") for name in os.listdir("/run/netns"))
    if kind == "fou":
        dom = PageDOM(report.read_text())
        assert sorted(dom.nodes) == sorted(f"ut-nat-{n}" for n in ("cpe1", "cpe2", "nat", "ix", "pop"))
        assert len(dom.tunnels) == 2 and dom.journeys == []
        explanations = [explain.explain(wire) for wire in dom.packets()]
        assert len(explanations) == 72  # 4 flows of 9 datagrams, twice
        assert all(
            [layer.title for layer in e.layers[:3]]
            == [
                "outer IPv4 header",
                "UDP header (FOU: GRE in UDP, RFC 8086)",
                "GRE header (RFC 2784, RFC 2890), 8 bytes",
            ]
            for e in explanations
        )
        assert_page_shows(dom, explanations)
        assert dom.pre and out.split("== report:")[0] in dom.pre[-1]


def test_encap_belongs_to_the_nat_lab_and_is_refused_elsewhere_in_one_line() -> None:
    for scenario in ([], ["p2mp"]):
        result = subprocess.run(lab_command(*scenario, "--encap", "fou"), capture_output=True, text=True)
        assert result.returncode == 2 and result.stdout == ""
        assert (
            result.stderr == "usertunnel lab: error: --encap fou is for the nat lab (usertunnel lab nat --encap fou)\n"
        )
    result = subprocess.run(lab_command("nat", "--encap", "vxlan"), capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice: 'vxlan' (choose from 'fou', 'gue')" in result.stderr


def test_a_nats_udp_mappings_are_read_from_its_conntrack_table() -> None:
    from usertunnel.teach.topology import Mapping, parse_conntrack

    table = (
        "ipv4     2 udp      17 4 src=198.51.100.66 dst=198.51.100.1 sport=6000 dport=4754 src=198.51.100.1 "
        "dst=198.51.100.12 sport=4754 dport=6000 [ASSURED] mark=0 zone=0 use=2\n"
        "ipv4     2 udp      17 2 src=198.51.100.67 dst=198.51.100.1 sport=6000 dport=4754 [UNREPLIED] "
        "src=198.51.100.1 dst=198.51.100.12 sport=4754 dport=40123 mark=0 zone=0 use=2\n"
        "ipv4     2 gre      47 29 timeout=30, stream_timeout=180 src=198.51.100.66 dst=198.51.100.1 srckey=0x0 "
        "dstkey=0x0 src=198.51.100.1 dst=198.51.100.12 srckey=0x0 dstkey=0x0 mark=0 zone=0 use=2\n"
        "ipv4     2 icmp     1 29 src=198.51.100.66 dst=198.51.100.1 type=8 code=0 id=7 src=198.51.100.1 "
        "dst=198.51.100.12 type=0 code=0 id=7 mark=0 zone=0 use=2\n"
    )
    assert parse_conntrack(table) == [
        Mapping(("198.51.100.66", 6000), ("198.51.100.12", 6000), ("198.51.100.1", 4754)),
        Mapping(("198.51.100.67", 6000), ("198.51.100.12", 40123), ("198.51.100.1", 4754)),
    ]
    assert parse_conntrack(table, "icmp") == [] and parse_conntrack("") == []  # no ports: no UDP-style mapping


@pytest.mark.netns
def test_several_hosts_behind_one_nat_share_its_public_address_and_reach_the_public_side() -> None:
    from usertunnel.teach.topology import Topology

    require_netns()
    topo = Topology(f"utF{os.getpid() % 10000}")
    try:
        pop = topo.public_host("pop", "198.51.100.1")
        nat = topo.nat("nat", "198.51.100.12")
        hosts = topo.private_hosts(["h1", "h2", "h3"], nat)
        assert [h.address for h in hosts] == ["198.51.100.66", "198.51.100.67", "198.51.100.68"]
        assert [h.namespace for h in hosts] == [f"{topo.prefix}-h{n}" for n in (1, 2, 3)]
        with pytest.raises(ValueError, match="this NAT has a host already"):
            topo.private_host("h4", nat)
        with pytest.raises(ValueError, match="this NAT has hosts already"):
            topo.private_hosts(["h4"], nat)
        for h in hosts:
            done = netns.run(h.namespace, ["ping", "-c", "1", "-W", "2", pop.address], timeout=10)
            assert done.returncode == 0, done.stdout.decode()
        # Each host's ping is a connection the NAT tracks (and forgets after its timeout); nothing reaches a
        # host from outside but through a mapping its own packets made.
        topo.set_conntrack_udp_timeout(nat, 7)
        assert topo.conntrack_timeouts(nat) == {"nf_conntrack_udp_timeout": 7, "nf_conntrack_udp_timeout_stream": 7}
        assert topo.conntrack_count(nat) >= 3
        no_route = netns.run(pop.namespace, ["ping", "-c", "1", "-W", "1", hosts[0].address], timeout=10)
        assert no_route.returncode != 0
    finally:
        topo.remove()
    assert not any(name.startswith(topo.prefix) for name in os.listdir("/run/netns"))
