"""Path MTU through the tunnel: a router between the two ends whose far link carries fewer bytes.

    A 198.51.100.1/30 --- .2 R .5 --(MTU 1300)-- .6/30 B

The tunnel A <-> B runs at 1476 bytes (A's underlay device has 1500). R drops our
outer packets over 1300 with DF and says so (ICMP fragmentation needed, MTU 1300);
A learns the path MTU from it and from then on answers inner packets that no
longer fit (DF, or IPv6) with an ICMP of its own, giving the inner MTU
(1300 - 24 = 1276): the inner sender adapts instead of its packets vanishing.
With --nopmtudisc the outer DF follows the inner one and R fragments instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest
from conftest import require_netns
from pyroute2 import NetNS
from traffic import tcp_transfer

from usertunnel.io import netns
from usertunnel.io.netns import UpProcess

A, R_A, R_B, B = "198.51.100.1", "198.51.100.2", "198.51.100.5", "198.51.100.6"
INNER_A, INNER_B = "203.0.113.1", "203.0.113.2"
NARROW = 1300
OVERHEAD = 24  # outer IPv4 20 + GRE 4


class Path:
    def __init__(self) -> None:
        tag = os.getpid() % 100000
        self.a, self.r, self.b = (f"utm{tag}-{x}" for x in "arb")
        self.procs: list[UpProcess] = []
        for name in (self.a, self.r, self.b):
            netns.create(name, ipv6=False)
        netns.veth(self.a, "ua", self.r, "ra", A, R_A, 30)
        netns.veth(self.r, "rb", self.b, "ub", R_B, B, 30)
        with NetNS(self.r) as ns:  # the narrow link, on R's side only: R must fragment or refuse
            ns.link("set", index=ns.link_lookup(ifname="rb")[0], mtu=NARROW)
        with NetNS(self.b) as ns:
            ns.link("set", index=ns.link_lookup(ifname="ub")[0], mtu=NARROW)
        netns.run(self.r, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"], check=True)
        for name, gateway in ((self.a, R_A), (self.b, R_B)):
            with NetNS(name) as ns:
                ns.route("add", dst="198.51.100.0/24", gateway=gateway)

    def up(self, *extra: str) -> None:
        for name, local, remote, inner in ((self.a, A, B, INNER_A), (self.b, B, A, INNER_B)):
            args = ["--local", local, "--remote", remote, "--name", "tun0", "--address", f"{inner}/30", "--mtu", "1476"]
            proc = UpProcess(name, [*args, *extra])
            self.procs.append(proc)
            proc.wait_ready()

    def ping(self, size: int, count: int = 2) -> tuple[bool, str]:
        done = netns.run(self.a, ["ping", "-M", "do", "-c", str(count), "-i", "0.2", "-W", "1", "-s", str(size),
                                  INNER_B], timeout=30)  # fmt: skip
        return done.returncode == 0, (done.stdout + done.stderr).decode(errors="replace")

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
        for name in (self.a, self.r, self.b):
            netns.remove(name)


@pytest.fixture
def path() -> Iterator[Path]:
    require_netns()
    p = Path()
    try:
        yield p
    finally:
        p.close()


@pytest.mark.netns
def test_a_narrow_path_is_learned_and_inner_senders_get_the_right_mtu(path: Path) -> None:
    path.up()
    inner_mtu = NARROW - OVERHEAD
    assert path.ping(inner_mtu - 28)[0], "a packet that fits the narrow path must pass"
    # Too big for R: the first is lost while A learns the path MTU; then A answers with ICMP itself.
    path.ping(inner_mtu - 28 + 100, count=1)
    ok, out = path.ping(inner_mtu - 28 + 100)
    assert not ok
    assert re.search(rf"mtu ?= ?{inner_mtu}", out), out
    assert path.ping(inner_mtu - 28)[0]
    sent, received = tcp_transfer(path.a, path.b, INNER_B, 5201, 4 * 1024 * 1024)
    assert sent == received
    stats = path.procs[0].stop()["tun0"]
    assert stats["drops"].get("frag_needed", 0) >= 1
    assert any("path MTU to 198.51.100.6 is 1300" in line for line in path.procs[0].lines)


@pytest.mark.netns
def test_with_nopmtudisc_the_router_fragments_and_big_packets_without_df_arrive(path: Path) -> None:
    path.up("--nopmtudisc")
    done = netns.run(path.a, ["ping", "-M", "dont", "-c", "2", "-i", "0.2", "-W", "1", "-s", "1400", INNER_B],
                     timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stdout.decode()
    sent, received = tcp_transfer(path.a, path.b, INNER_B, 5201, 2 * 1024 * 1024)
    assert sent == received
