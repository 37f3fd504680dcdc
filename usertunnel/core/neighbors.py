"""Point-to-multipoint: which spoke is behind which outer address (`--remote any`; Linux has no such thing).

Linux accepts a GRE tunnel with a local address and no remote, and its lookup
finds it for packets from anyone carrying its key; but on transmit it has no
outer destination, so the tunnel cannot answer (the seed's "行不通"). A hub
here keeps the missing piece, a neighbor table:

  learned: the inner source address of every packet accepted from a spoke ->
           that spoke's outer source address (after any NAT: what we saw) and
           the key it used, with the time it was last seen;
  static:  `--neighbor PREFIX=OUTER` routes a prefix to an outer address;
  spokes:  `--spoke KEY=PREFIX[,PREFIX...]` binds a key to the inner prefixes
           behind it: a packet carrying KEY is accepted only from inner sources
           in those prefixes (so one spoke cannot claim another's addresses),
           and the prefixes route to wherever KEY was last seen from.

Transmit picks the longest prefix that matches the inner destination: a host
entry (learned, or a static /32 or /128), then static and spoke prefixes from
the longest down. A destination with no neighbor is dropped and counted.

Each (outer address, key) is a `Peer`: what we send to it (key, the next
sequence number) and what we accept from it (its sequence window), so spokes
sharing one key still have their own sequence streams. A peer silent for
`timeout` seconds is forgotten with the hosts learned behind it; a spoke whose
NAT rebinds to a new outer address is followed at its next packet.

Rules for this file: no clock is read (every call takes `now`, seconds on a
monotonic clock); memory is bounded (`max_peers`, `max_hosts`): past the bound
packets are still delivered but nothing new is learned, and that is counted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import ConfigError
from .sequence import KernelSequence, SequenceState

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_TIMEOUT = 300.0
DEFAULT_MAX_PEERS = 4096
DEFAULT_MAX_HOSTS = 65536


@dataclass(frozen=True, slots=True)
class StaticNeighbor:
    """`--neighbor PREFIX=OUTER`: inner destinations in `prefix` go to outer address `outer`."""

    prefix: Network
    outer: bytes


@dataclass(frozen=True, slots=True)
class Spoke:
    """`--spoke KEY=PREFIX[,PREFIX...]`: the inner prefixes a spoke sending `key` may use."""

    key: int
    prefixes: tuple[Network, ...]


@dataclass(frozen=True, slots=True)
class HubParams:
    """What makes a tunnel a point-to-multipoint hub (its remote is any)."""

    neighbors: tuple[StaticNeighbor, ...] = ()
    spokes: tuple[Spoke, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    max_peers: int = DEFAULT_MAX_PEERS
    max_hosts: int = DEFAULT_MAX_HOSTS

    def __post_init__(self) -> None:
        if not 1 <= self.timeout <= 86400 * 7:
            raise ConfigError(f"neighbor timeout {self.timeout:g} out of range: 1..604800 seconds")
        keys = [s.key for s in self.spokes]
        if len(set(keys)) != len(keys):
            raise ConfigError("a key is given to two --spoke options: give each spoke key once, with all its prefixes")
        seen: dict[Network, str] = {}
        for where, prefix in [(f"--spoke {s.key}", p) for s in self.spokes for p in s.prefixes] + [
            (f"--neighbor {n.prefix}", n.prefix) for n in self.neighbors
        ]:
            if prefix in seen:
                raise ConfigError(f"prefix {prefix} is given twice ({seen[prefix]} and {where}): give it once")
            seen[prefix] = where

    @property
    def spoke_keys(self) -> tuple[int, ...]:
        return tuple(s.key for s in self.spokes)


def parse_neighbor(text: str) -> StaticNeighbor:
    """`PREFIX=OUTER`, e.g. `203.0.113.8/29=198.51.100.8` (a bare address means a host)."""
    prefix_text, sep, outer_text = text.partition("=")
    if not sep:
        raise ConfigError(f"invalid neighbor {text!r}: PREFIX=OUTER_ADDR, such as 203.0.113.8/29=198.51.100.8")
    prefix = _network(prefix_text, "neighbor")
    try:
        outer = ipaddress.IPv4Address(outer_text).packed
    except ipaddress.AddressValueError:
        raise ConfigError(
            f"invalid neighbor {text!r}: the outer address {outer_text!r} must be an IPv4 address such as 198.51.100.8"
        ) from None
    return StaticNeighbor(prefix, outer)


def parse_spoke(text: str) -> Spoke:
    """`KEY=PREFIX[,PREFIX...]`, e.g. `1001=203.0.113.16/28,2001:db8:16::/48`."""
    from .values import parse_key

    key_text, sep, prefixes_text = text.partition("=")
    if not sep or not prefixes_text:
        raise ConfigError(f"invalid spoke {text!r}: KEY=PREFIX[,PREFIX...], such as 1001=203.0.113.16/28")
    return Spoke(parse_key(key_text), tuple(_network(p, "spoke") for p in prefixes_text.split(",")))


def parse_timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 1 <= value <= 86400 * 7:
        raise ConfigError(f"invalid neighbor timeout {text!r}: seconds, 1..604800 (default 300)")
    return value


def _network(text: str, what: str) -> Network:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ConfigError(
            f"invalid {what} prefix {text!r} ({exc}): a prefix such as 203.0.113.16/28 or 2001:db8:16::/48"
        ) from None


class Peer:
    """One spoke as the hub sees it: an outer address and the key it uses."""

    __slots__ = (
        "outer",
        "key",
        "okey",
        "static",
        "last_seen",
        "oseq_next",
        "window",
        "hosts",
        "gre_fixed",
        "outer_sum",
        "port",
    )

    def __init__(
        self,
        outer: bytes,
        key: int | None,
        okey: int | None,
        now: float,
        static: bool = False,
        window: SequenceState | None = None,
        port: int = 0,
    ) -> None:
        self.outer = outer
        self.port = port  # FOU / GUE: the UDP port it sends from, after any NAT (0: straight over IP)
        self.key = key  # the key it sends (our ikey for it)
        self.okey = okey  # the key we send to it
        self.static = static
        self.last_seen = now
        self.oseq_next = 0
        self.window: SequenceState = window if window is not None else KernelSequence()
        self.hosts: set[bytes] = set()
        self.gre_fixed: dict[int, bytes] | None = None  # filled by the tunnel that sends to it
        self.outer_sum = (outer[0] << 8 | outer[1]) + (outer[2] << 8 | outer[3])

    def as_dict(self, now: float) -> dict[str, object]:
        return {
            "outer": ipaddress.IPv4Address(self.outer).compressed,
            **({"port": self.port} if self.port else {}),
            "key": self.key,
            "static": self.static,
            "idle": None if self.static else round(now - self.last_seen, 1),
            "hosts": sorted(str(ipaddress.ip_address(h)) for h in self.hosts),
        }


@dataclass
class NeighborCounters:
    learned: int = 0  # new host entries
    moved: int = 0  # a host seen from a new outer address or key (NAT rebinding, a spoke that moved)
    expired: int = 0  # peers forgotten after `timeout`
    table_full: int = 0  # packets delivered without learning: max_peers or max_hosts reached

    def as_dict(self) -> dict[str, int]:
        return {"learned": self.learned, "moved": self.moved, "expired": self.expired, "table_full": self.table_full}


@dataclass
class _PrefixRoutes:
    """Routes of one family, one dict per prefix length, tried longest first."""

    bits: int
    by_length: list[tuple[int, dict[int, Peer | int]]] = field(default_factory=list)

    def add(self, prefix: Network, target: Peer | int) -> None:
        for length, table in self.by_length:
            if length == prefix.prefixlen:
                table[int(prefix.network_address) >> (self.bits - length)] = target
                return
        self.by_length.append(
            (prefix.prefixlen, {int(prefix.network_address) >> (self.bits - prefix.prefixlen): target})
        )
        self.by_length.sort(key=lambda entry: -entry[0])

    def match(self, address: int) -> Peer | int | None:
        bits = self.bits
        for length, table in self.by_length:
            target = table.get(address >> (bits - length))
            if target is not None:
                return target
        return None


class NeighborTable:
    """The hub's view of its spokes (see the module docstring)."""

    def __init__(
        self,
        hub: HubParams,
        okey: int | None,
        now: float = 0.0,
        new_window: Callable[[], SequenceState] = KernelSequence,
        port: int = 0,
    ) -> None:
        self.params = hub
        self.port = port  # FOU / GUE: where static neighbors receive (the tunnel's encap-dport); 0: raw IP
        self.new_window = new_window  # each peer's receive sequence state, under the tunnel's policy
        self.okey = okey  # what we send to a spoke that uses the shared key
        self.counters = NeighborCounters()
        # By outer address, UDP port (FOU / GUE: two spokes behind one NAT differ by it; else 0) and key.
        self.peers: dict[tuple[bytes, int, int | None], Peer] = {}
        self.hosts: dict[bytes, Peer] = {}  # learned and static host entries, by inner address
        self._routes = {4: _PrefixRoutes(32), 6: _PrefixRoutes(128)}
        self._spoke_prefixes: dict[int, tuple[Network, ...]] = {s.key: s.prefixes for s in hub.spokes}
        self._spoke_peer: dict[int, Peer] = {}  # where each spoke key was last seen from
        self._static_hosts: set[bytes] = set()
        for n in hub.neighbors:
            peer = self.peers.get((n.outer, port, okey))
            if peer is None:
                peer = Peer(n.outer, okey, okey, now, static=True, window=new_window(), port=port)
                self.peers[(n.outer, port, okey)] = peer
            if n.prefix.prefixlen == n.prefix.max_prefixlen:
                host = n.prefix.network_address.packed
                self.hosts[host] = peer
                self._static_hosts.add(host)
                peer.hosts.add(host)
            else:
                self._routes[n.prefix.version].add(n.prefix, peer)
        for s in hub.spokes:
            for prefix in s.prefixes:
                self._routes[prefix.version].add(prefix, s.key)

    # Receive side -----------------------------------------------------------------------------

    def peer(self, outer: bytes, key: int | None, now: float, port: int = 0) -> Peer | None:
        """The peer a packet from `outer` (and UDP `port`) with `key` comes from, created on first sight
        (None: table full)."""
        peer = self.peers.get((outer, port, key))
        if peer is None:
            if len(self.peers) >= self.params.max_peers:
                self.expire(now)
                if len(self.peers) >= self.params.max_peers:
                    self.counters.table_full += 1
                    return None
            okey = key if key in self._spoke_prefixes else self.okey
            peer = Peer(outer, key, okey, now, window=self.new_window(), port=port)
            self.peers[(outer, port, key)] = peer
        return peer

    def source_allowed(self, key: int | None, inner_source: bytes) -> bool:
        """Per-spoke keys: may a packet carrying `key` come from `inner_source`? (Other keys: yes.)"""
        prefixes = self._spoke_prefixes.get(key) if key is not None else None
        if prefixes is None:
            return True
        address = ipaddress.ip_address(inner_source)
        return any(address in p for p in prefixes)

    def learn(self, peer: Peer, inner_source: bytes, now: float) -> None:
        """A packet from `peer` with inner source `inner_source` was accepted: remember where it lives."""
        peer.last_seen = now
        if peer.key is not None and peer.key in self._spoke_prefixes:
            self._spoke_peer[peer.key] = peer
        current = self.hosts.get(inner_source)
        if current is peer or inner_source in self._static_hosts:
            return
        if current is None:
            if len(self.hosts) >= self.params.max_hosts:
                self.counters.table_full += 1
                return
            self.counters.learned += 1
        else:
            current.hosts.discard(inner_source)
            self.counters.moved += 1
        self.hosts[inner_source] = peer
        peer.hosts.add(inner_source)

    # Transmit side ----------------------------------------------------------------------------

    def route(self, destination: bytes, now: float) -> Peer | None:
        """The peer to send an inner packet for `destination` to (longest prefix), or None."""
        peer = self.hosts.get(destination)
        if peer is not None:
            if peer.static or now - peer.last_seen <= self.params.timeout:
                return peer
            self._forget(peer)
        routes = self._routes.get(4 if len(destination) == 4 else 6)
        if routes is None or not routes.by_length:
            return None
        target = routes.match(int.from_bytes(destination, "big"))
        if isinstance(target, int):  # a spoke prefix: wherever that key was last seen from
            found = self._spoke_peer.get(target)
            if found is None:
                return None
            if now - found.last_seen > self.params.timeout:
                self._forget(found)
                return None
            return found
        return target

    # Housekeeping -----------------------------------------------------------------------------

    def expire(self, now: float) -> int:
        """Forget peers silent for longer than the timeout; returns how many."""
        stale = [p for p in self.peers.values() if not p.static and now - p.last_seen > self.params.timeout]
        for peer in stale:
            self._forget(peer)
        return len(stale)

    def _forget(self, peer: Peer) -> None:
        if self.peers.pop((peer.outer, peer.port, peer.key), None) is None:
            return
        for host in peer.hosts:
            if self.hosts.get(host) is peer:
                del self.hosts[host]
        peer.hosts.clear()
        if peer.key is not None and self._spoke_peer.get(peer.key) is peer:
            del self._spoke_peer[peer.key]
        self.counters.expired += 1

    def as_list(self, now: float) -> list[dict[str, object]]:
        """The table for `show`: one entry per peer, static first, then by outer address."""
        peers = sorted(self.peers.values(), key=lambda p: (not p.static, p.outer, p.port, p.key or 0))
        listed = []
        for peer in peers:
            entry = peer.as_dict(now)
            prefixes: list[Network] = []
            if peer.static:
                prefixes = [n.prefix for n in self.params.neighbors if n.outer == peer.outer]
            elif peer.key is not None and self._spoke_peer.get(peer.key) is peer:
                prefixes = list(self._spoke_prefixes[peer.key])
            entry["prefixes"] = [str(p) for p in prefixes if p.prefixlen != p.max_prefixlen]
            listed.append(entry)
        return listed
