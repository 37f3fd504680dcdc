"""Which process serves a tunnel identity in this network namespace: abstract Unix sockets as claims.

Rules for this file: it names identities and holds, lists and queries the
sockets that claim them; it never looks at a packet (io.raw's `tunnel_filter`
turns the list of claims into a socket filter).

In one kernel, `ip tunnel add` refuses a second tunnel with the same outer
addresses and input key in the same table ("File exists": the key of
ip_tunnel_find's hash). Processes that share a network namespace share its raw
sockets' packets the same way, so usertunnel keeps the same rule across them:
a tunnel identity (its demultiplexing table, i.e. the outer family and
protocol, gretap apart from gre; its local and remote address, each possibly
any; one input key or none) is served by at most one process of the namespace.

Theory of operation. A process serving an identity binds and listens on the
abstract Unix socket "\\0usertunnel/TABLE/LOCAL/REMOTE/KEY" (for example
"\\0usertunnel/gre/198.51.100.1/198.51.100.2/1234"; "any" for a wildcard
address, "nokey" for none). Abstract names live in the network namespace and
vanish with the last descriptor, so a claim is gone when its process dies,
kill -9 included, and nothing is left to clean up. A bind that fails with
EADDRINUSE is the refusal: the newcomer connects, reads the holder's PID from
SO_PEERCRED (the kernel's, always there) and, when the holder's event loop is
running, the line it answers with (its PID, what it is and its tunnel's
name), and says so in one line. A hub with spoke keys holds one claim per key
it accepts, as the kernel's table would hold one entry per key.

Every process can list the namespace's claims (/proc/net/unix shows abstract
names with a leading "@"): io.raw builds each raw socket's filter from them,
so that a process does not read the packets another process's tunnel owns. A
newcomer connects to the holders whose identities could compete with its own
(`poke`), and a holder that accepts a connection builds its filters again.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from ..core.errors import ConfigError
from ..core.esp import IPPROTO_ESP
from ..core.params import Mode, TunnelParams

PREFIX = "usertunnel/"
PROC_NET_UNIX = "/proc/net/unix"
ANSWER_TIMEOUT = 0.5  # seconds a refused process waits for the holder's line (a busy holder gives only its PID)
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid

# The demultiplexing tables (ModeSpec.table) by name: the first mode of each table names it (sit before
# isatap, which share one).
TABLES: dict[int, str] = {}
for _mode in Mode:
    TABLES.setdefault(_mode.value.table, _mode.value.name)
TABLES[IPPROTO_ESP] = "esp"  # tunnels with --esp-keys share ESP's raw socket; their identity is the inbound SPI
_BY_NAME = {name: table for table, name in TABLES.items()}


@dataclass(frozen=True)
class Identity:
    """What `ip tunnel add` would refuse twice: table, outer local and remote (None: any), input key."""

    table: int
    local: bytes | None
    remote: bytes | None
    key: int | None

    @property
    def order(self) -> tuple[int, bytes, bytes, int]:
        """A total order (wildcards and no key first), so that every process lists identities alike."""
        return self.table, self.local or b"", self.remote or b"", -1 if self.key is None else self.key

    @property
    def name(self) -> str:
        """The abstract socket's name, without its leading NUL."""
        key = "nokey" if self.key is None else str(self.key)
        return f"{PREFIX}{TABLES[self.table]}/{_text(self.local)}/{_text(self.remote)}/{key}"

    def describe(self) -> str:
        """In ip tunnel's words: `gre local 198.51.100.1 remote 198.51.100.2 key 1234`."""
        key = "no key" if self.key is None else f"key {self.key}"
        if self.table == IPPROTO_ESP:
            key = f"spi {self.key:#x}" if self.key is not None else "no spi"
        return f"{TABLES[self.table]} local {_text(self.local)} remote {_text(self.remote)} {key}"

    @classmethod
    def parse(cls, name: str) -> Identity | None:
        """The identity an abstract name claims, or None for a name that is not one of ours."""
        parts = name.removeprefix(PREFIX).split("/")
        if not name.startswith(PREFIX) or len(parts) != 4 or parts[0] not in _BY_NAME:
            return None
        try:
            local, remote = (None if p == "any" else ipaddress.ip_address(p).packed for p in parts[1:3])
            key = None if parts[3] == "nokey" else int(parts[3])
        except ValueError:
            return None
        return cls(_BY_NAME[parts[0]], local, remote, key)

    def overlaps(self, other: Identity) -> bool:
        """Could one packet's outer addresses match both (a wildcard matches any address)?"""
        return all(a is None or b is None or a == b for a, b in ((self.local, other.local),
                                                                 (self.remote, other.remote)))  # fmt: skip


def _text(address: bytes | None) -> str:
    return "any" if address is None else ipaddress.ip_address(address).compressed


def identities(params: TunnelParams) -> list[Identity]:
    """The identities a tunnel serves: one per input key it accepts (a hub's spoke keys included)."""
    if params.esp is not None:
        # IPsec: the raw socket is ESP's (protocol 50), and a security association is known by its inbound SPI.
        return [Identity(IPPROTO_ESP, params.local, params.remote, params.esp.inbound.spi)]
    table = params.mode.value.table
    return [Identity(table, params.local, params.remote, key) for key in params.ikeys]


def claimed() -> set[Identity]:
    """Every identity claimed in this network namespace (by any process, this one included)."""
    try:
        with open(PROC_NET_UNIX) as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return set()
    found = set()
    for line in lines:
        # Num RefCount Protocol Flags Type St Inode Path; a listening socket's flags have __SO_ACCEPTCON.
        fields = line.split()
        if len(fields) == 8 and fields[7].startswith("@" + PREFIX) and int(fields[3], 16) & 0x10000:
            identity = Identity.parse(fields[7][1:])
            if identity is not None:
                found.add(identity)
    return found


def holder(identity: Identity) -> str:
    """Who holds `identity`, for a refusal: `pid 4242 (usertunnel up, tunnel tun0)`, or why it is unknown."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(ANSWER_TIMEOUT)
        try:
            sock.connect(b"\0" + identity.name.encode())
        except OSError as exc:
            return f"a process that no longer answers ({exc.strerror})"
        pid, _, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        try:
            answer = sock.recv(256).decode(errors="replace").strip()
        except OSError:
            answer = ""
        said, _, what = answer.partition(" ")
        if said == str(pid) and what:
            return f"pid {pid} ({what})"
        return f"pid {pid}"
    finally:
        sock.close()


def poke(identities: Iterable[Identity]) -> None:
    """Tell the holders of these identities that the namespace's claims changed (they rebuild their filters).
    A connection is the message; one that fails is a holder already gone."""
    for identity in identities:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(b"\0" + identity.name.encode())
        except OSError:
            pass
        finally:
            sock.close()


class Claims:
    """The identities one process holds: one listening abstract socket each.

    `what` and `label` make the line a holder answers with ("usertunnel up, tunnel tun0"). Once `serve` has
    given it an event loop, every accepted connection is answered and then reported through `on_poke`.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.held: dict[Identity, socket.socket] = {}
        self.labels: dict[Identity, str] = {}
        self._loop: _Loop | None = None
        self.on_poke: Callable[[], None] | None = None

    def hold(self, wanted: Iterable[Identity], label: str = "") -> None:
        """Claim every identity of `wanted`, or none of them: ConfigError naming the holder of the first
        that another process serves ("... is already served in this network namespace by pid N (...)")."""
        taken: list[Identity] = []
        try:
            for identity in wanted:
                if identity in self.held:
                    continue
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.bind(b"\0" + identity.name.encode())
                    sock.listen(16)
                    sock.setblocking(False)
                except OSError as exc:
                    sock.close()
                    if exc.errno != errno.EADDRINUSE:
                        raise ConfigError(f"cannot claim {identity.describe()}: {exc.strerror}") from None
                    raise ConfigError(
                        f"{identity.describe()} is already served in this network namespace by {holder(identity)}: "
                        "File exists"
                    ) from None
                self.held[identity] = sock
                self.labels[identity] = label
                taken.append(identity)
                if self._loop is not None:
                    self._watch(identity)
        except BaseException:
            self.release(taken)
            raise

    def relabel(self, wanted: Iterable[Identity], label: str) -> None:
        for identity in wanted:
            if identity in self.held:
                self.labels[identity] = label

    def release(self, identities: Iterable[Identity]) -> None:
        for identity in list(identities):
            sock = self.held.pop(identity, None)
            self.labels.pop(identity, None)
            if sock is not None:
                if self._loop is not None:
                    self._loop.remove_reader(sock.fileno())
                sock.close()

    def close(self) -> None:
        self.release(list(self.held))
        self._loop = None

    def serve(self, loop: _Loop, on_poke: Callable[[], None] | None = None) -> None:
        """Answer connections from now on, in `loop` (asyncio's or uvloop's)."""
        self._loop = loop
        self.on_poke = on_poke
        for identity in self.held:
            self._watch(identity)

    def stop_serving(self) -> None:
        if self._loop is not None:
            for sock in self.held.values():
                self._loop.remove_reader(sock.fileno())
        self._loop = None

    def _watch(self, identity: Identity) -> None:
        assert self._loop is not None
        sock = self.held[identity]
        self._loop.add_reader(sock.fileno(), self._answer, identity)

    def _answer(self, identity: Identity) -> None:
        sock = self.held.get(identity)
        if sock is None:
            return
        label = self.labels.get(identity, "")
        line = f"{os.getpid()} {self.what}{', tunnel ' + label if label else ''}\n".encode()
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                break
            try:
                conn.setblocking(False)
                conn.send(line)
            except OSError:
                pass
            finally:
                conn.close()
        if self.on_poke is not None:
            self.on_poke()


class _Loop(Protocol):
    """What Claims needs of an event loop (asyncio.AbstractEventLoop has it)."""

    def add_reader(self, fd: int, callback: Callable[..., object], *args: object) -> None: ...

    def remove_reader(self, fd: int) -> bool: ...
