"""Small internets in network namespaces: a shared underlay, hosts on it, and hosts behind NAT.

The NAT and point-to-multipoint labs and their tests need more than a veth
pair: several hosts on one "public" segment, and NAT routers with private
hosts behind them, as in the seed's CPE - NAT - POP figure.

    public segment 198.51.100.0/26: a Linux bridge in namespace PREFIX-ix;
        every public host and every NAT's outside interface hangs on it.
    behind NAT number i: 198.51.100.(64 + 16 i)/28, the NAT at .1 of that
        subnet, its hosts after it; they reach the public segment through
        the NAT, which masquerades them (nftables) to its public address.

Public hosts have no route to any private subnet, as on the real Internet:
a host behind NAT can only be reached through a mapping its own packets made.
Everything lives in namespaces named PREFIX-*, removed by `remove()`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from pyroute2 import NetNS

from . import netns

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
            raise ValueError("one private host per NAT in this topology (a veth pair, no bridge)")
        nat.hosts += 1
        gateway = str(nat.inside.network_address + 1)
        address = str(nat.inside.network_address + 2)
        name = self._namespace(label)
        netns.veth(name, "lan", nat.namespace, "lan", address, gateway, nat.inside.prefixlen)
        with NetNS(name) as ns:
            ns.route("add", dst="0.0.0.0/0", gateway=gateway)
        return Host(name, address, nat)

    def set_conntrack_gre_timeout(self, nat: Nat, seconds: int) -> None:
        """Make the NAT forget an idle GRE mapping after `seconds` (both the unreplied and the stream timeout)."""
        for key in ("nf_conntrack_gre_timeout", "nf_conntrack_gre_timeout_stream"):
            netns.run(nat.namespace, ["sysctl", "-q", "-w", f"net.netfilter.{key}={seconds}"], check=True)

    def remove(self) -> None:
        for name in reversed(self.namespaces):
            netns.remove(name)
        self.namespaces.clear()
