"""Which tunnel owns a received packet: the precedence of the kernel's ip_tunnel_lookup.

Given the outer source (the sender: our `remote`), the outer destination (our
`local`) and the GRE key (or its absence), the kernel tries, in order:

  1. exact:       tunnel.local == dst and tunnel.remote == src
  2. remote only: tunnel.remote == src, tunnel.local is any
  3. local only:  tunnel.local == dst, tunnel.remote is any
  4. wildcard:    tunnel.local and tunnel.remote are both any

and at every step the key must match exactly: a tunnel with an `ikey` takes
only packets carrying that key, a tunnel without one only packets carrying no
key. Each step is one dictionary probe here. Tunnels of different outer
protocols (GRE, IPIP) never compete: keep one table per protocol.
"""

from __future__ import annotations

import enum
from typing import Generic, Protocol, TypeVar

from .drops import Drop
from .errors import ConfigError
from .params import TunnelParams


class Rule(enum.Enum):
    """The lookup step that chose a tunnel, in the kernel's order."""

    EXACT = "exact local+remote"
    REMOTE_ONLY = "remote only"
    LOCAL_ONLY = "local only"
    WILDCARD = "wildcard"


class HasParams(Protocol):
    @property
    def params(self) -> TunnelParams: ...


T = TypeVar("T", bound=HasParams)

_Addr = bytes | None
_Key = tuple[_Addr, _Addr, int | None]


def _rule_for(params: TunnelParams) -> Rule:
    if params.local is not None and params.remote is not None:
        return Rule.EXACT
    if params.remote is not None:
        return Rule.REMOTE_ONLY
    if params.local is not None:
        return Rule.LOCAL_ONLY
    return Rule.WILDCARD


class TunnelTable(Generic[T]):
    """Tunnels of one outer protocol, found by outer addresses and key."""

    def __init__(self) -> None:
        self._by_key: dict[_Key, T] = {}
        self._by_addresses: dict[tuple[_Addr, _Addr], list[T]] = {}

    def __len__(self) -> int:
        return sum(len(same) for same in self._by_addresses.values())

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter([t for same in self._by_addresses.values() for t in same])

    def add(self, tunnel: T) -> None:
        p = tunnel.params
        keys = [(p.local, p.remote, ikey) for ikey in p.ikeys]
        for key in keys:
            if key in self._by_key:
                other = self._by_key[key].params.name
                raise ConfigError(f"tunnel {p.name!r} has the same local, remote and ikey as {other!r}: File exists")
        for key in keys:
            self._by_key[key] = tunnel
        self._by_addresses.setdefault((p.local, p.remote), []).append(tunnel)

    def remove(self, tunnel: T) -> None:
        p = tunnel.params
        for ikey in p.ikeys:
            if self._by_key.get((p.local, p.remote, ikey)) is tunnel:
                del self._by_key[(p.local, p.remote, ikey)]
        same = self._by_addresses.get((p.local, p.remote), [])
        if tunnel in same:
            same.remove(tunnel)
        if not same:
            self._by_addresses.pop((p.local, p.remote), None)

    def lookup(self, dst: bytes, src: bytes, key: int | None) -> tuple[T, Rule] | Drop:
        """The tunnel for a packet from `src` to `dst` carrying `key`, and the rule that chose it."""
        get = self._by_key.get
        t = get((dst, src, key))
        if t is not None:
            return t, Rule.EXACT
        t = get((None, src, key))
        if t is not None:
            return t, Rule.REMOTE_ONLY
        t = get((dst, None, key))
        if t is not None:
            return t, Rule.LOCAL_ONLY
        t = get((None, None, key))
        if t is not None:
            return t, Rule.WILDCARD
        return Drop.KEY_MISMATCH if self.address_match(dst, src) is not None else Drop.NO_TUNNEL

    def address_match(self, dst: bytes, src: bytes) -> T | None:
        """The first tunnel whose addresses match, ignoring the key (to blame a key mismatch on)."""
        for addresses in ((dst, src), (None, src), (dst, None), (None, None)):
            found = self._by_addresses.get(addresses)
            if found:
                return found[0]
        return None
