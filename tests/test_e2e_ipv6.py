"""The IPv6 modes end to end: two namespaces on an IPv6 (and IPv4) underlay, ping and a TCP transfer
through every mode; sit without a fixed remote (6to4, 6rd, ISATAP) between three hosts.

Underlay: 198.51.100.0/24 and 2001:db8:1::/64 on one veth pair (or a bridge for three hosts);
inner: 203.0.113.0/30 and 2001:db8:100::/64.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator

import pytest
from conftest import require_netns
from pyroute2 import NetNS
from traffic import tcp_transfer

from usertunnel.core import sit
from usertunnel.io import netns
from usertunnel.io.netns import UpProcess

UNDER4 = ("198.51.100.1", "198.51.100.2")
UNDER6 = ("2001:db8:1::1", "2001:db8:1::2")
INNER4 = ("203.0.113.1", "203.0.113.2")
INNER6 = ("2001:db8:100::1", "2001:db8:100::2")
SIZE = 10 * 1024 * 1024


class Pair:
    """Two namespaces, one veth pair with both families (no duplicate address detection to wait for)."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.ns = (f"ut6-{tag}-a", f"ut6-{tag}-b")
        self.procs: list[UpProcess] = []
        for name in self.ns:
            netns.create(name)
            netns.run(name, ["sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0",
                             "net.ipv6.conf.default.accept_dad=0"], check=True)  # fmt: skip
        netns.veth(self.ns[0], "u6a", self.ns[1], "u6b", UNDER4[0], UNDER4[1], 24)
        for name, ifname, address in ((self.ns[0], "u6a", UNDER6[0]), (self.ns[1], "u6b", UNDER6[1])):
            with NetNS(name) as ns:
                ns.addr("add", index=ns.link_lookup(ifname=ifname)[0], address=address, prefixlen=64)

    def up(self, mode: str, inner: list[tuple[str, str, int]], extra: list[str] | None = None) -> None:
        outer = UNDER6 if mode in ("ipip6", "ip6ip6", "ip6gre") else UNDER4
        for i, name in enumerate(self.ns):
            args = ["--mode", mode, "--local", outer[i], "--remote", outer[1 - i], "--name", "tun0"]
            for a, b, plen in inner:
                args += ["--address", f"{(a, b)[i]}/{plen}"]
            proc = UpProcess(name, [*args, *(extra or [])])
            self.procs.append(proc)
            proc.wait_ready()

    def ping(self, target: str) -> bool:
        return netns.run(self.ns[0], ["ping", "-c", "2", "-i", "0.2", "-W", "2", target], timeout=20).returncode == 0

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
        for name in self.ns:
            netns.remove(name)


@pytest.fixture
def pair() -> Iterator[Pair]:
    require_netns()
    p = Pair()
    try:
        yield p
    finally:
        p.close()


CASES = {
    "ipip6": [INNER4],
    "ip6ip6": [INNER6],
    "ip6gre": [INNER4, INNER6],
    "sit": [INNER6],
    "gre": [INNER4, INNER6],
}


@pytest.mark.netns
@pytest.mark.parametrize("mode", list(CASES))
def test_every_mode_carries_ping_and_a_10_mb_tcp_transfer(pair: Pair, mode: str) -> None:
    inner = [(a, b, 30 if ":" not in a else 64) for a, b in CASES[mode]]
    pair.up(mode, inner, ["--key", "1234"] if "gre" in mode else [])
    for _, target in CASES[mode]:
        assert pair.ping(target), f"{mode}: no answer from {target}"
        sent, received = tcp_transfer(pair.ns[0], pair.ns[1], target, 5201, SIZE)
        assert sent == received, f"{mode}: {target}: data differs"
    a, b = (proc.stop()["tun0"] for proc in pair.procs)
    # Every transfer went A -> B: at least its bytes crossed, and nothing was dropped either way.
    assert a["tx_bytes"] >= SIZE * len(CASES[mode]) and b["rx_bytes"] >= SIZE * len(CASES[mode]), (a, b)
    assert a["drops"] == {} and b["drops"] == {}, (a, b)


@pytest.mark.netns
def test_a_wrong_family_and_a_wrong_remote_are_dropped_and_counted(pair: Pair) -> None:
    import socket

    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6

    pair.up("ipip6", [(*INNER4, 30)])
    assert pair.ping(INNER4[1])
    # From B: next header 4 (IPv4 inside) carrying an IPv6 packet, then a good packet from a stranger's address.
    with NetNS(pair.ns[1]) as ns:
        ns.addr("add", index=ns.link_lookup(ifname="u6b")[0], address="2001:db8:1::99", prefixlen=64)
    peer = netns.open_socket(pair.ns[1], socket.AF_INET6, socket.SOCK_RAW, 4)
    stranger = netns.open_socket(pair.ns[1], socket.AF_INET6, socket.SOCK_RAW, 4)
    try:
        peer.bind((UNDER6[1], 0))
        lie = bytes(IPv6(src=INNER6[1], dst=INNER6[0]) / UDP(sport=9, dport=9) / b"family lie")
        for _ in range(3):
            peer.sendto(lie, (UNDER6[0], 0))
        stranger.bind(("2001:db8:1::99", 0))
        good = bytes(IP(src=INNER4[1], dst=INNER4[0]) / UDP(sport=9, dport=9) / b"stranger")
        for _ in range(2):
            stranger.sendto(good, (UNDER6[0], 0))
    finally:
        peer.close()
        stranger.close()
    import time

    time.sleep(0.3)
    stats = pair.procs[0].stop()
    assert stats["tun0"]["drops"] == {"family": 3}, stats
    assert stats["unmatched"]["drops"] == {"no_tunnel": 2}


# --- sit without a fixed remote: three hosts on one bridge ------------------------------------------------


def sixtofour(v4: str, host: int = 1) -> str:
    packed = sit.six_to_four_prefix(ipaddress.IPv4Address(v4).packed)[:6] + bytes(2) + host.to_bytes(8, "big")
    return str(ipaddress.IPv6Address(packed))


@pytest.mark.netns
@pytest.mark.parametrize("flavour", ["6to4", "6rd", "isatap"])
def test_three_hosts_reach_each_other_over_sit_with_no_per_peer_configuration(flavour: str) -> None:
    require_netns()
    from usertunnel.teach.topology import Topology

    topo = Topology(f"uts{os.getpid() % 10000}")
    procs: list[UpProcess] = []
    try:
        v4 = [f"198.51.100.{i}" for i in (1, 2, 3)]
        hosts = [topo.public_host(f"h{i}", v4[i - 1]) for i in (1, 2, 3)]
        for name in (h.namespace for h in hosts):
            netns.run(name, ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=0",
                             "net.ipv6.conf.default.disable_ipv6=0", "net.ipv6.conf.all.accept_dad=0",
                             "net.ipv6.conf.default.accept_dad=0"], check=True)  # fmt: skip
        sixrd = sit.SixRd.from_text("2001:db8::/32", "198.51.100.0/24")
        prefix = ipaddress.IPv6Address("2001:db8:5::").packed
        addresses = []
        for address in v4:
            packed = ipaddress.IPv4Address(address).packed
            if flavour == "6to4":
                addresses.append((sixtofour(address), 16))
            elif flavour == "6rd":
                delegated = sixrd.delegated_prefix(packed)
                addresses.append((str(ipaddress.IPv6Address(delegated[:15] + b"\x01")), 32))
            else:
                addresses.append((str(ipaddress.IPv6Address(sit.isatap_address(prefix, packed))), 64))
        for h, address, (inner, plen) in zip(hosts, v4, addresses, strict=True):
            mode = "isatap" if flavour == "isatap" else "sit"
            args = ["--mode", mode, "--local", address, "--remote", "any", "--name", "sit1"]
            args += ["--address", f"{inner}/{plen}"]
            if flavour == "6rd":
                args += ["--6rd-prefix", "2001:db8::/32", "--6rd-relay-prefix", "198.51.100.0/24"]
            proc = UpProcess(h.namespace, args)
            procs.append(proc)
            proc.wait_ready()
        for i, j in ((0, 1), (0, 2), (1, 2), (2, 0)):
            done = netns.run(hosts[i].namespace, ["ping", "-c", "2", "-i", "0.2", "-W", "2", addresses[j][0]],
                             timeout=20)  # fmt: skip
            assert done.returncode == 0, f"{flavour}: {hosts[i].namespace} -> {addresses[j][0]}: {done.stdout!r}"
        sent, received = tcp_transfer(hosts[0].namespace, hosts[1].namespace, addresses[1][0], 5201, SIZE)
        assert sent == received, f"{flavour}: TCP data differs"
        # A spoofed source: host 3 claims host 2's IPv6 address; host 1 drops it (sit_spoofed).
        from scapy.layers.inet import IP
        from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6

        spoof = (
            IP(src=v4[2], dst=v4[0], proto=41) / IPv6(src=addresses[1][0], dst=addresses[0][0]) / ICMPv6EchoRequest()
        )
        import socket

        sock = netns.open_socket(hosts[2].namespace, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        try:
            for _ in range(3):
                sock.sendto(bytes(spoof), (v4[0], 0))
        finally:
            sock.close()
        stats = procs[0].stop()["sit1"]
        assert stats["drops"].get("sit_spoofed") == 3, stats
    finally:
        for proc in procs:
            proc.kill()
        topo.remove()
