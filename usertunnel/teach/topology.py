"""Small internets in network namespaces: a shared underlay, hosts on it, and hosts behind NAT.

The NAT and point-to-multipoint labs and their tests need more than a veth
pair: several hosts on one "public" segment, and NAT routers with private
hosts behind them, as in the seed's CPE - NAT - POP figure.

    public segment 198.51.100.0/26: a Linux bridge in namespace PREFIX-ix;
        every public host and every NAT's outside interface hangs on it.
    behind NAT number i: 198.51.100.(64 + 16 i)/28, the NAT at .1 of that
        subnet, its hosts after it; they reach the public segment through
        the NAT, which masquerades them (nftables) to its public address.
        One host hangs on the NAT by a veth pair (`private_host`); several
        share a bridge on the NAT's inside (`private_hosts`), as CPEs behind
        one home router, and then reach the outside through one public address.

The NAT keeps each mapping in its connection tracking table for as long as
packets use it, then forgets it (`set_conntrack_udp_timeout`, `nat_mappings`,
`conntrack_count`): the next packet gets a new mapping, perhaps a new port.

Public hosts have no route to any private subnet, as on the real Internet:
a host behind NAT can only be reached through a mapping its own packets made.
Everything lives in namespaces named PREFIX-*, removed by `remove()`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

from pyroute2 import NetNS

from ..io import netns

PUBLIC = ipaddress.IPv4Network("198.51.100.0/26")


@dataclass
class Host:
    """A namespace with an address on the underlay (public, or private behind `nat`)."""

    namespace: str
    address: str
    nat: Nat | None = None


@dataclass
class Nat:
    """A NAT router: its public address, and the private subnet it masquerades."""

    namespace: str
    public: str
    inside: ipaddress.IPv4Network
    hosts: int = 0


@dataclass(frozen=True)
class Mapping:
    """One UDP mapping of a NAT's connection tracking table: `inside` (address, port) is seen outside as
    `public` (address, port) by `remote` (address, port)."""

    inside: tuple[str, int]
    public: tuple[str, int]
    remote: tuple[str, int]


def parse_conntrack(text: str, protocol: str = "udp") -> list[Mapping]:
    """The `protocol` entries of /proc/net/nf_conntrack: each line has the original tuple (src, dst, sport,
    dport: the inside host to the remote) and then the reply tuple (the remote to the NAT's public side)."""
    found = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or words[2] != protocol:
            continue
        tuples: list[dict[str, str]] = [{}]
        for word in words:
            key, sep, value = word.partition("=")
            if sep and key in ("src", "dst", "sport", "dport"):
                if key in tuples[-1]:
                    tuples.append({})
                tuples[-1][key] = value
        if len(tuples) < 2 or any(len(t) < 4 for t in tuples[:2]):
            continue
        original, reply = tuples[0], tuples[1]
        found.append(Mapping(
            (original["src"], int(original["sport"])),
            (reply["dst"], int(reply["dport"])),
            (original["dst"], int(original["dport"])),
        ))  # fmt: skip
    return found


@dataclass
class Topology:
    prefix: str
    namespaces: list[str] = field(default_factory=list)
    _links: int = 0
    _nats: int = 0

    def __post_init__(self) -> None:
        try:
            self.ix = self._namespace("ix")
            with NetNS(self.ix) as ns:
                ns.link("add", ifname="br0", kind="bridge")
                index = ns.link_lookup(ifname="br0")[0]
                ns.link("set", index=index, state="up")
        except BaseException:
            self.remove()
            raise

    def _namespace(self, label: str) -> str:
        name = f"{self.prefix}-{label}"
        netns.create(name, ipv6=False)
        self.namespaces.append(name)
        return name

    def _plug(self, namespace: str, address: str, prefixlen: int) -> str:
        """A veth from `namespace` (named `pub`) to the public bridge; the address goes on `pub`."""
        self._links += 1
        outside = f"{self.prefix[:8]}p{self._links}"[:15]
        netns.veth(namespace, "pub", self.ix, outside, address, None, prefixlen)
        with NetNS(self.ix) as ns:
            bridge = ns.link_lookup(ifname="br0")[0]
            index = ns.link_lookup(ifname=outside)[0]
            ns.link("set", index=index, master=bridge)
        return "pub"

    def public_host(self, label: str, address: str) -> Host:
        name = self._namespace(label)
        self._plug(name, address, PUBLIC.prefixlen)
        return Host(name, address)

    def nat(self, label: str, public: str) -> Nat:
        """A NAT router at `public` masquerading 198.51.100.(64+16i)/28 (the next free one)."""
        inside = ipaddress.IPv4Network(f"198.51.100.{64 + 16 * self._nats}/28")
        self._nats += 1
        name = self._namespace(label)
        self._plug(name, public, PUBLIC.prefixlen)
        netns.run(name, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"], check=True)
        for rule in (
            "add table ip nat",
            "add chain ip nat postrouting { type nat hook postrouting priority srcnat ; }",
            'add rule ip nat postrouting oifname "pub" masquerade',
        ):
            netns.run(name, ["nft", *rule.split()], check=True)
        return Nat(name, public, inside)

    def private_host(self, label: str, nat: Nat) -> Host:
        """A host behind `nat`: its default route goes through the NAT."""
        if nat.hosts:
            raise ValueError("private_host: this NAT has a host already; private_hosts puts several behind one NAT")
        nat.hosts += 1
        gateway = str(nat.inside.network_address + 1)
        address = str(nat.inside.network_address + 2)
        name = self._namespace(label)
        netns.veth(name, "lan", nat.namespace, "lan", address, gateway, nat.inside.prefixlen)
        with NetNS(name) as ns:
            ns.route("add", dst="0.0.0.0/0", gateway=gateway)
        return Host(name, address, nat)

    def private_hosts(self, labels: Sequence[str], nat: Nat) -> list[Host]:
        """Hosts behind one NAT, on one segment: a bridge `lan` on the NAT's inside holds the gateway address
        (.1 of its subnet) and a veth to each host (.2, .3, ...), whose default route is the NAT. Their
        packets leave with the NAT's one public address, told apart (if at all) by the ports it maps."""
        if nat.hosts:
            raise ValueError("private_hosts: this NAT has hosts already")
        if not 1 <= len(labels) <= nat.inside.num_addresses - 3:
            raise ValueError(f"private_hosts: 1 to {nat.inside.num_addresses - 3} hosts fit behind one NAT")
        gateway = str(nat.inside.network_address + 1)
        with NetNS(nat.namespace) as ns:
            ns.link("add", ifname="lan", kind="bridge")
            bridge = ns.link_lookup(ifname="lan")[0]
            ns.addr("add", index=bridge, address=gateway, prefixlen=nat.inside.prefixlen)
            ns.link("set", index=bridge, state="up")
        hosts = []
        for n, label in enumerate(labels, 1):
            address = str(nat.inside.network_address + 1 + n)
            name = self._namespace(label)
            netns.veth(name, "lan", nat.namespace, f"lan{n}", address, None, nat.inside.prefixlen)
            with NetNS(nat.namespace) as ns:
                ns.link("set", index=ns.link_lookup(ifname=f"lan{n}")[0], master=bridge)
            with NetNS(name) as ns:
                ns.route("add", dst="0.0.0.0/0", gateway=gateway)
            nat.hosts += 1
            hosts.append(Host(name, address, nat))
        return hosts

    def set_conntrack_udp_timeout(self, nat: Nat, seconds: int) -> None:
        """Make the NAT forget a UDP mapping idle for `seconds`, whether its flow was seen one way
        (nf_conntrack_udp_timeout, 30 s by default) or both ways (..._stream, 120 s)."""
        for key in ("nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream"):
            netns.run(nat.namespace, ["sysctl", "-q", "-w", f"net.netfilter.{key}={seconds}"], check=True)

    def conntrack_timeouts(self, nat: Nat, protocol: str = "udp") -> dict[str, int]:
        """The NAT's idle timeouts for `protocol` (udp, gre, ...), by sysctl name, in seconds."""
        keys = [
            f"net.netfilter.nf_conntrack_{protocol}_timeout",
            f"net.netfilter.nf_conntrack_{protocol}_timeout_stream",
        ]
        done = netns.run(nat.namespace, ["sysctl", "-n", *keys], check=True)
        return {key.rsplit(".", 1)[1]: int(value) for key, value in zip(keys, done.stdout.split(), strict=True)}

    def conntrack_count(self, nat: Nat) -> int:
        """How many connections (mappings) the NAT tracks now."""
        done = netns.run(nat.namespace, ["sysctl", "-n", "net.netfilter.nf_conntrack_count"], check=True)
        return int(done.stdout)

    def nat_mappings(self, nat: Nat, protocol: str = "udp") -> list[Mapping]:
        """The NAT's `protocol` mappings now, from its /proc/net/nf_conntrack (empty if the kernel has none)."""
        done = netns.run(nat.namespace, ["cat", "/proc/net/nf_conntrack"])
        return parse_conntrack(done.stdout.decode(errors="replace"), protocol)

    def set_conntrack_gre_timeout(self, nat: Nat, seconds: int) -> None:
        """Make the NAT forget an idle GRE mapping after `seconds` (both the unreplied and the stream timeout)."""
        for key in ("nf_conntrack_gre_timeout", "nf_conntrack_gre_timeout_stream"):
            netns.run(nat.namespace, ["sysctl", "-q", "-w", f"net.netfilter.{key}={seconds}"], check=True)

    def remove(self) -> None:
        for name in reversed(self.namespaces):
            netns.remove(name)
        self.namespaces.clear()
