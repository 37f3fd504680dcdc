"""Point-to-multipoint and NAT, end to end: a hub, spokes behind NAT routers doing nftables masquerade.

Topology (usertunnel.teach.topology): a public segment 198.51.100.0/26 on a bridge,
the hub at 198.51.100.1, NAT routers masquerading private /28s. Spokes point
at the hub with key 1234; the hub runs `--remote any` and knows nothing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from conftest import require_netns
from scapy.layers.inet import GRE, IP, UDP

from usertunnel.io import netns
from usertunnel.io.netns import UpProcess
from usertunnel.teach.topology import Host, Topology

HUB = "198.51.100.1"
KEY = "1234"


@pytest.fixture
def topo() -> Iterator[Topology]:
    require_netns()
    t = Topology(f"utp{os.getpid() % 10000}")
    procs: list[UpProcess] = []
    t.procs = procs  # type: ignore[attr-defined]
    try:
        yield t
    finally:
        for proc in procs:
            proc.kill()
        t.remove()


def start(topo: Topology, host: Host, args: list[str]) -> UpProcess:
    proc = UpProcess(host.namespace, args)
    topo.procs.append(proc)  # type: ignore[attr-defined]
    proc.wait_ready()
    return proc


def ping(host: Host, target: str, count: int = 2) -> bool:
    result = netns.run(host.namespace, ["ping", "-c", str(count), "-i", "0.2", "-W", "2", target], timeout=30)
    return result.returncode == 0


def hub_state(hub: Host) -> dict[str, object]:
    result = netns.run(hub.namespace, [sys.executable, "-m", "usertunnel", "stats", "-j"], timeout=10, check=True)
    tunnels = json.loads(result.stdout)
    assert len(tunnels) == 1
    return tunnels[0]  # type: ignore[no-any-return]


def hub_and_spokes(topo: Topology, keepalive: str = "1") -> tuple[Host, list[Host], UpProcess]:
    hub = topo.public_host("hub", HUB)
    for key in ("ip_forward", "conf.all.send_redirects", "conf.default.send_redirects"):
        netns.run(hub.namespace, ["sysctl", "-q", "-w", f"net.ipv4.{key}={'1' if key == 'ip_forward' else '0'}"])
    spokes = [
        topo.public_host("s1", "198.51.100.11"),
        topo.private_host("s2", topo.nat("n2", "198.51.100.12")),
        topo.private_host("s3", topo.nat("n3", "198.51.100.13")),
    ]
    hub_proc = start(topo, hub, ["--local", HUB, "--remote", "any", "--key", KEY, "--address", "203.0.113.1/24"])
    for n, s in enumerate(spokes, 1):
        args = ["--local", s.address, "--remote", HUB, "--key", KEY, "--address", f"203.0.113.1{n}/24"]
        start(topo, s, [*args, "--keepalive", keepalive])
    return hub, spokes, hub_proc


def test_three_spokes_two_behind_nat_reach_the_hub_and_each_other_through_it(topo: Topology) -> None:
    hub, spokes, _ = hub_and_spokes(topo)
    for s in spokes:
        assert ping(s, "203.0.113.1"), f"{s.namespace} cannot reach the hub"
    for a, b in ((0, 1), (0, 2), (1, 2), (2, 0)):
        assert ping(spokes[a], f"203.0.113.1{b + 1}"), f"spoke {a + 1} cannot reach spoke {b + 1}"
    state = hub_state(hub)
    neighbors = {n["outer"]: n for n in state["neighbors"]}  # type: ignore[attr-defined]
    # The spokes behind NAT are known by their NAT's public address, never by their own.
    assert set(neighbors) == {"198.51.100.11", "198.51.100.12", "198.51.100.13"}
    assert neighbors["198.51.100.12"]["hosts"] == ["203.0.113.12"]
    assert neighbors["198.51.100.13"]["hosts"] == ["203.0.113.13"]
    assert state["stats"]["drops"].get("no_neighbor", 0) == 0  # type: ignore[index]


def test_the_hub_follows_a_spoke_whose_nat_changes_its_public_address(topo: Topology) -> None:
    hub, spokes, _ = hub_and_spokes(topo)
    behind = spokes[1]
    assert behind.nat is not None
    assert ping(behind, "203.0.113.1")
    # The NAT's public address changes: masquerade forgets its mappings, the next packets leave from .14.
    # (Deleted first: deleting a primary address also deletes the secondaries of its subnet.)
    netns.run(behind.nat.namespace, ["ip", "addr", "del", "198.51.100.12/26", "dev", "pub"], check=True)
    netns.run(behind.nat.namespace, ["ip", "addr", "add", "198.51.100.14/26", "dev", "pub"], check=True)
    assert ping(behind, "203.0.113.1", count=3)
    assert ping(spokes[0], "203.0.113.12")
    neighbors = {n["outer"]: n for n in hub_state(hub)["neighbors"]}  # type: ignore[attr-defined]
    assert neighbors["198.51.100.14"]["hosts"] == ["203.0.113.12"]
    assert neighbors.get("198.51.100.12", {"hosts": []})["hosts"] == []
    assert hub_state(hub)["hub"]["moved"] >= 1  # type: ignore[index]


def test_a_packet_with_an_unknown_key_is_dropped_and_counted_by_the_hub(topo: Topology) -> None:
    hub, spokes, _ = hub_and_spokes(topo)
    assert ping(spokes[0], "203.0.113.1")
    inner = IP(src="203.0.113.66", dst="203.0.113.1") / UDP(sport=9, dport=9) / b"stranger"
    wire = bytes(IP(src=spokes[0].address, dst=HUB, proto=47) / GRE(key_present=1, key=999) / inner)
    sock = netns.open_socket(spokes[0].namespace, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        for _ in range(5):
            sock.sendto(wire, (HUB, 0))
    finally:
        sock.close()
    time.sleep(0.3)
    state = hub_state(hub)
    assert state["stats"]["drops"].get("key_mismatch") == 5  # type: ignore[index]
    assert all("203.0.113.66" not in n["hosts"] for n in state["neighbors"])  # type: ignore[attr-defined]


@pytest.mark.parametrize("keepalive", [True, False], ids=["with-keepalives", "without-keepalives"])
def test_keepalives_keep_the_nat_mapping_open_for_traffic_from_the_pop(topo: Topology, keepalive: bool) -> None:
    """The seed's NAT problem: once the NAT forgets the GRE flow, the POP cannot reach the CPE."""
    pop = topo.public_host("pop", HUB)
    nat = topo.nat("nat", "198.51.100.12")
    cpe = topo.private_host("cpe", nat)
    topo.set_conntrack_gre_timeout(nat, 2)
    start(topo, pop, ["--local", HUB, "--remote", "any", "--key", KEY, "--address", "203.0.113.1/30"])
    cpe_args = ["--local", cpe.address, "--remote", HUB, "--key", KEY, "--address", "203.0.113.2/30"]
    start(topo, cpe, [*cpe_args, *(["--keepalive", "1"] if keepalive else [])])
    assert ping(cpe, "203.0.113.1")  # the CPE opens the mapping
    time.sleep(4.5)  # over twice the NAT's GRE timeout, with no traffic but keepalives
    reached = ping(pop, "203.0.113.2", count=2)
    entries = subprocess.run(
        ["ip", "netns", "exec", nat.namespace, "cat", "/proc/net/nf_conntrack"], capture_output=True, check=False
    ).stdout
    assert reached is keepalive, f"POP -> CPE after the NAT timeout: {reached}; conntrack: {entries!r}"
