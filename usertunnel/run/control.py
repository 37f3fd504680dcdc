"""The control socket: `usertunnel show` and `usertunnel stats` ask running tunnels what they are and count.

Rules for this file: it is part of the I/O shell and only reads what the core
already keeps (`TunnelParams`, `Counters`); it never changes a tunnel. A
query must never disturb the data path: the server answers from the event
loop the tunnel runs in, from a snapshot that costs a few dictionary copies.

Theory of operation. Every `usertunnel up` listens on a Unix stream socket
DIR/IFNAME.sock (mode 0600: root only; DIR is created 0755 if missing, and
a named namespace's DIR removed by the last instance to leave it). A
client connects, sends one JSON line `{"cmd": "show"}` or `{"cmd": "stats"}`
and reads one JSON line back: `{"tunnels": [...]}`, or `{"error": "..."}`.
`usertunnel show` / `stats` ask every socket in DIR (or the one named) and
print the answers the way iproute2's `ip tunnel show` / `ip -s tunnel show`
print a kernel tunnel. A socket file nobody listens on (the instance was
killed with SIGKILL) refuses the connection; whoever finds it, client or
server, removes it.

DIR is /run/usertunnel in a network namespace without a name, and
/run/usertunnel/netns/NAME inside a named one (`ip netns add NAME`): an
interface name is unique per namespace only, so two namespaces may each run
a `gre-lab`; and, like `ip tunnel show`, `usertunnel show` lists the tunnels
of the namespace it runs in. USERTUNNEL_RUN_DIR replaces /run/usertunnel on
both sides (the netns part stays); `--dir` names the exact directory.

The JSON tunnel object (`snapshot_of`); field names are stable:
  name, mode (a --mode name: "gre", "ipip", "sit", "isatap", "ipip6", "ip6ip6",
  "ip6gre", "gretap", "ip6gretap", "vti", "vti6"), local, remote (address text, null = any),
  dev (underlay device or null), ikey, okey (0..4294967295, null = none),
  iseq, oseq, icsum, ocsum, pmtudisc (booleans), ttl (1..255, null = inherit),
  tos (0..255, null = inherit), sixrd ({prefix, relay_prefix} text or null),
  prl ([{address, default}]), seq_policy ("kernel" | "rfc2890" | "resync"),
  mtu, pid,
  stats {rx_packets, rx_bytes, tx_packets, tx_bytes, drops {reason: count}},
  unmatched {drops {reason: count}}: packets this instance's raw socket received
    that none of its tunnels owned. Each instance has its own raw socket and so
    its own count (it also sees packets meant for other instances).
Present only where they apply (stable names too):
  encaplimit (0..255, null = none) and flowlabel (0..0xfffff, null = inherit):
    tunnels over IPv6 (ipip6, ip6ip6, ip6gre, ip6gretap, vti6), as `ip -6 tunnel` shows them;
  encap {type ("fou" | "gue"), sport (null = auto), dport, csum}: tunnels carried in UDP (--encap);
  keepalive {state, period, retries, sent, replies, unanswered, ...}: with --keepalive;
  hub {learned, moved, expired, ...} and neighbors [{outer, key, static, idle, hosts, ...}]: hubs;
  keepalives_reflected (count) and sequence {policy, next_expected, ...} (with iseq): counters;
  esp {out {spi, aead, icv, esn, seq}, in {spi, aead, icv, esn, replay_window, highest}}: with
    --esp-keys (or esp_keys): each security association's public half and its sequence numbers, never a key.
`show` answers the same objects without the counters (`COUNTERS`: stats, unmatched,
keepalives_reflected, sequence).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import ipaddress
import json
import os
import socket
import stat
import struct
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..core import options
from ..core.drops import Drop
from ..core.encap import Counters
from ..core.errors import ConfigError
from ..core.params import TunnelParams
from ..front.iptunnel import show_lines

RUN_DIR = Path("/run/usertunnel")
NETNS_DIR = Path("/run/netns")  # where `ip netns add` names namespaces
ENV_RUN_DIR = "USERTUNNEL_RUN_DIR"
TIMEOUT = 2.0  # seconds, per instance, for connecting, asking and reading the answer
REQUEST_LIMIT = 4096  # bytes: a request is one short JSON line
ANSWER_LIMIT = 16 << 20  # bytes: more than any honest answer
COMMANDS = ("show", "stats")
EXIT_ERROR = 1
EXIT_DENIED = 2  # run without the privilege it needs, as every usertunnel command

Tunnel = dict[str, Any]  # one JSON tunnel object, as documented above
Snapshot = Callable[[], list[Tunnel]]
# A command besides show/stats (the daemon's tunnel add/change/del and reload): the request in, the answer out.
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

# `usertunnel daemon` listens on DIR/usertunnel-daemon.sock: 17 characters, longer than any interface
# name (15 at most), so it can never be a tunnel's socket.
DAEMON = "usertunnel-daemon"
COMMAND_TIMEOUT = 60.0  # seconds for a command that changes tunnels (netlink work, a reload of many)

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class ControlError(Exception):
    """A control socket could not be asked; the message names the socket and says why."""


# --- the snapshot: what an instance answers ---------------------------------------------------------------


def snapshot_of(
    params: TunnelParams,
    counters: Counters,
    unmatched: Counters,
    mtu: int,
    pid: int,
    dev: str | None = None,
) -> Tunnel:
    """One tunnel as a JSON object (fields in the module docstring), from the core's own values."""

    def address(packed: bytes | None) -> str | None:
        return ipaddress.ip_address(packed).compressed if packed else None

    sixrd = params.sixrd
    as_is = {name: getattr(params, name) for name in options.SHOWN_AS_IS}  # ikey .. pmtudisc
    outer6 = {name: getattr(params, name) for name in options.SHOWN_OUTER6} if params.mode.value.outer == 6 else {}
    return {
        "name": params.name,
        "mode": params.mode.value.name,
        "local": address(params.local),
        "remote": address(params.remote),
        "dev": dev,
        **as_is,
        **outer6,  # an IPv4 header has neither: no field rather than a value that means nothing
        **({"encap": params.encap.as_dict()} if params.encap is not None else {}),  # FOU / GUE only
        "sixrd": None
        if sixrd is None
        else {
            "prefix": f"{ipaddress.ip_address(sixrd.prefix)}/{sixrd.prefixlen}",
            "relay_prefix": f"{ipaddress.ip_address(sixrd.relay_prefix)}/{sixrd.relay_prefixlen}",
        },
        "prl": [{"address": address(e.address), "default": e.default} for e in params.prl],
        "seq_policy": params.seq_policy.value,
        "mtu": mtu,
        "pid": pid,
        "stats": counters.as_dict(),
        "unmatched": {"drops": unmatched.as_dict()["drops"]},
    }


COUNTERS = ("stats", "unmatched", "keepalives_reflected", "sequence")


def without_counters(t: Tunnel) -> Tunnel:
    """A tunnel object as `show` gives it: what it is, not what it counted."""
    return {k: v for k, v in t.items() if k not in COUNTERS}


async def _answer(request: bytes, snapshot: Snapshot, commands: Mapping[str, Handler]) -> dict[str, Any]:
    """The answer to one request line."""
    try:
        message = json.loads(request)
    except (ValueError, UnicodeDecodeError):
        return {"error": f'a request is one JSON line such as {{"cmd": "show"}}; got {request[:80]!r}'}
    cmd = message.get("cmd") if isinstance(message, dict) else None
    handler = commands.get(cmd) if isinstance(cmd, str) else None
    if handler is not None:
        assert isinstance(message, dict)
        try:
            return await handler(message)
        except ConfigError as exc:
            return {"error": str(exc)}
        except Exception as exc:  # a bug in a command must not take the tunnels down
            return {"error": f"internal error: {type(exc).__name__}: {exc}"}
    if cmd not in COMMANDS:
        accepted = (*COMMANDS, *commands)
        return {"error": f"unknown cmd {cmd!r}; accepted: {', '.join(accepted)}"}
    try:
        tunnels = snapshot()
    except Exception as exc:  # a bug in a snapshot must not take the tunnel down
        return {"error": f"snapshot failed: {type(exc).__name__}: {exc}"}
    if cmd == "show":
        tunnels = [without_counters(t) for t in tunnels]
    return {"tunnels": tunnels}


# --- where the sockets live -------------------------------------------------------------------------------


def _netns_name() -> str | None:
    """The name `ip netns` gives the network namespace we run in, if it has one (the first, sorted)."""
    try:
        own = os.stat("/proc/self/ns/net")
        entries = sorted(os.listdir(NETNS_DIR))
    except OSError:
        return None
    for entry in entries:
        try:
            st = os.stat(NETNS_DIR / entry)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
            return entry
    return None


def run_directory() -> Path:
    """Where instances in our network namespace put their sockets: BASE, or BASE/netns/NAME in a named one.

    BASE is $USERTUNNEL_RUN_DIR, else /run/usertunnel. The namespace part stays
    even with the variable set, so that two namespaces can each run a tunnel of
    the same name however the base is chosen.
    """
    return _run_directory()[0]


def _run_directory() -> tuple[Path, bool]:
    """`run_directory()`, and whether it is a named namespace's own (BASE/netns/NAME): there is one for
    every namespace a usertunnel ever ran in, so the last instance to leave it removes it."""
    base = Path(os.environ.get(ENV_RUN_DIR) or RUN_DIR)
    name = _netns_name()
    return (base / "netns" / name, True) if name else (base, False)


def socket_path(directory: Path, name: str) -> Path:
    """DIR/NAME.sock, for a NAME that is an interface name (so never a path)."""
    if not name or len(name) > 15 or any(c.isspace() or c in "/:" for c in name):
        raise ControlError(f"invalid tunnel name {name!r}: an interface name, 1 to 15 characters, no '/' or ':'")
    return directory / f"{name}.sock"


def daemon_path(directory: Path) -> Path:
    """DIR/usertunnel-daemon.sock: where `usertunnel daemon` listens."""
    return directory / f"{DAEMON}.sock"


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _remove_stale(path: Path, seen: os.stat_result) -> None:
    """Remove a socket file nobody listens on, unless it was replaced since we looked (a new instance's)."""
    with contextlib.suppress(OSError):
        now = os.lstat(path)
        if _same_file(now, seen) and not stat.S_ISDIR(now.st_mode):
            os.unlink(path)


def _make_directory(directory: Path) -> None:
    """Create `directory` and any missing parents, each 0755 (root writes, everyone may list)."""
    missing = []
    for d in (directory, *directory.parents):
        if d.is_dir():
            break
        missing.append(d)
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        os.chmod(d, 0o755)


# --- the server, inside each `usertunnel up` --------------------------------------------------------------


class ControlServer:
    """The control socket of one `usertunnel up`: answers `show` and `stats` from `snapshot`."""

    def __init__(
        self,
        path: Path,
        snapshot: Snapshot,
        commands: Mapping[str, Handler] | None = None,
        remove_directory: bool = False,
    ) -> None:
        """Use `await ControlServer.start(...)`; this only holds the state."""
        self.path = path
        self._remove_directory = remove_directory  # the namespace's own directory: removed once empty
        self._snapshot = snapshot
        self._commands: Mapping[str, Handler] = commands or {}
        self._server: asyncio.AbstractServer | None = None
        self._identity: os.stat_result | None = None  # our socket file: close() never removes another's
        self._handlers: set[asyncio.Task[Any]] = set()

    @classmethod
    async def start(
        cls,
        name: str,
        snapshot: Snapshot,
        directory: Path | None = None,
        commands: Mapping[str, Handler] | None = None,
    ) -> ControlServer:
        """Listen on DIR/NAME.sock; ConfigError if an instance of that name already listens there.

        A socket file nobody listens on is a crashed instance's, and is removed.
        `directory` defaults to `run_directory()`; when that is a named network namespace's own, the
        last instance to close removes it. `commands` answers requests besides show and stats (NAME is
        then `DAEMON`).
        """
        own = False
        if directory is None:
            directory, own = _run_directory()
        try:
            path = daemon_path(directory) if name == DAEMON else socket_path(directory, name)
        except ControlError as exc:
            raise ConfigError(str(exc)) from None
        for attempt in range(3):
            try:
                _make_directory(directory)
            except OSError as exc:
                raise ConfigError(
                    f"cannot create the control directory {directory}: {exc.strerror}{_denied_hint(exc)}"
                ) from None
            pid = _live_pid(path)
            if pid is not None:
                raise ConfigError(f"a usertunnel instance named {name!r} is already running (pid {pid}, socket {path})")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(str(path))
            except OSError as exc:
                sock.close()
                if exc.errno == errno.ENOENT and attempt < 2:
                    continue  # the last instance leaving removed the directory meanwhile: make it again
                if exc.errno == errno.EADDRINUSE:
                    raise ConfigError(f"a usertunnel instance named {name!r} is starting right now ({path})") from None
                raise ConfigError(
                    f"cannot create the control socket {path}: {exc.strerror}{_denied_hint(exc)}"
                ) from None
            break
        # Not yet listening, so nobody can connect before the mode is root's only.
        self = cls(path, snapshot, commands, remove_directory=own)
        try:
            os.chmod(path, 0o600)
            self._identity = os.lstat(path)
            self._server = await asyncio.start_unix_server(self._handle, sock=sock, limit=REQUEST_LIMIT)
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(path)
            self._leave_directory()
            raise
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            line = await asyncio.wait_for(reader.readline(), TIMEOUT)
            if not line:
                return  # connected and left without asking (another instance checking the name is taken)
            answer = await _answer(line, self._snapshot, self._commands)
            writer.write(json.dumps(answer).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), TIMEOUT)
        except (TimeoutError, ValueError, ConnectionError):
            pass  # a slow, oversized or vanished client: nothing to answer
        finally:
            if task is not None:
                self._handlers.discard(task)
            writer.close()

    async def close(self) -> None:
        """Stop listening, drop any client still connected, and remove our socket file."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._handlers):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), TIMEOUT)
        with contextlib.suppress(OSError):
            if self._identity is not None and _same_file(os.lstat(self.path), self._identity):
                os.unlink(self.path)
        self._leave_directory()

    def _leave_directory(self) -> None:
        """Remove the namespace's own directory if we were the last to use it."""
        if self._remove_directory:
            with contextlib.suppress(OSError):  # ENOTEMPTY: another instance still listens there
                os.rmdir(self.path.parent)


def _denied_hint(exc: OSError) -> str:
    """What to do when the control directory may not be written (a user with capabilities but not root)."""
    if exc.errno not in (errno.EACCES, errno.EPERM):
        return ""
    return f" (it is root's: run as root, or set {ENV_RUN_DIR} to a directory you may write)"


def _live_pid(path: Path) -> int | None:
    """The pid listening on `path`, or None if nobody does (a stale socket file is then removed)."""
    try:
        seen = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot check the control socket {path}: {exc.strerror}") from None
    if stat.S_ISDIR(seen.st_mode):
        raise ConfigError(f"{path} is a directory, where the control socket goes: remove it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(TIMEOUT)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            _remove_stale(path, seen)
            if os.path.lexists(path) and _same_file(os.lstat(path), seen):
                raise ConfigError(f"cannot remove the stale control socket {path}") from None
            return None
        except OSError as exc:
            raise ConfigError(f"cannot check the control socket {path}: {exc.strerror or exc}") from None
        # For a listening socket, SO_PEERCRED holds the listener's credentials (unix(7)).
        pid, _, _ = _PEERCRED.unpack(probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        return int(pid)


# --- the client: `usertunnel show` and `usertunnel stats` -------------------------------------------------


class _Stale(Exception):
    """Nobody listens on this socket: there is none, or it was a dead instance's (then removed)."""

    def __init__(self, removed: bool) -> None:
        super().__init__()
        self.removed = removed


class Denied(ControlError):
    """Not root: true of every socket, so not worth a line per instance (exit 2, as any missing privilege)."""


def _ask(path: Path, cmd: str, timeout: float) -> list[Tunnel]:
    """One show/stats request to one socket, bounded by `timeout` in all; the tunnels it answered."""
    answer = request(path, {"cmd": cmd}, timeout)
    tunnels = answer.get("tunnels")
    if not isinstance(tunnels, list) or not all(isinstance(t, dict) for t in tunnels):
        raise ControlError(f"{path}: not a usertunnel answer: {json.dumps(answer)[:80]!r}")
    return tunnels


def request(path: Path, message: dict[str, Any], timeout: float = TIMEOUT) -> dict[str, Any]:
    """Send one request to one socket and return its answer, bounded by `timeout` in all.
    ControlError if it cannot be asked or refused (its "error"); _Stale if nobody listens."""
    try:
        seen = os.lstat(path)
    except FileNotFoundError:
        raise _Stale(removed=False) from None
    deadline = time.monotonic() + timeout
    data = bytearray()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            _remove_stale(path, seen)
            raise _Stale(removed=True) from None
        except PermissionError:
            raise Denied(
                f"{path}: permission denied: control sockets are root's only (mode 0600): run it with sudo"
            ) from None
        except (TimeoutError, BlockingIOError):
            raise ControlError(f"{path}: no answer within {timeout:g} s") from None
        except OSError as exc:
            raise ControlError(f"{path}: {exc.strerror or exc}") from None
        try:
            sock.sendall(json.dumps(message).encode() + b"\n")
            while not data.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
                if len(data) > ANSWER_LIMIT:
                    raise ControlError(f"{path}: answer larger than {ANSWER_LIMIT} bytes")
        except TimeoutError:
            raise ControlError(f"{path}: no answer within {timeout:g} s") from None
        except OSError as exc:
            raise ControlError(f"{path}: connection lost: {exc.strerror or exc}") from None
    try:
        answer = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ControlError(f"{path}: not a usertunnel answer: {bytes(data[:80])!r}") from None
    if not isinstance(answer, dict):
        raise ControlError(f"{path}: not a usertunnel answer: {bytes(data[:80])!r}")
    if isinstance(answer.get("error"), str):
        raise Refused(path, answer["error"], answer)
    return answer


class Refused(ControlError):
    """The instance answered with an error: `reason` is its own words."""

    def __init__(self, path: Path, reason: str, answer: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{path}: the instance refused: {reason}")
        self.reason = reason
        self.answer: Mapping[str, Any] = answer or {}  # the whole answer: what else it says of the refusal

    @property
    def bad_configuration(self) -> bool:
        """The daemon refused a reload because of its configuration file (exit 2, as any bad configuration)."""
        return self.answer.get("refused") == "configuration"


def query(
    directory: Path,
    name: str | None = None,
    cmd: str = "stats",
    timeout: float = TIMEOUT,
    problems: list[str] | None = None,
) -> list[Tunnel]:
    """Ask the instance `name`, or every instance with a socket in `directory`; their tunnels, by name.

    Stale sockets are removed and skipped. With `name`, an instance that is
    not running or does not answer is a ControlError. Without, no socket at
    all is an empty list, and an instance that does not answer is skipped
    and described in `problems` (a ControlError if `problems` is None).
    """
    if cmd not in COMMANDS:
        raise ControlError(f"unknown command {cmd!r}; accepted: {', '.join(COMMANDS)}")
    if name is not None:
        path = socket_path(directory, name)
        try:
            return _ask(path, cmd, timeout)
        except _Stale as stale:
            why = f"removed its stale socket {path}" if stale.removed else f"no socket {path}"
        try:  # not a `usertunnel up` of its own: perhaps one of the daemon's tunnels
            found = [t for t in _ask(daemon_path(directory), cmd, timeout) if t.get("name") == name]
        except _Stale:
            found = []
        if not found:
            raise ControlError(f"no usertunnel instance named {name!r} is running ({why}; no daemon tunnel either)")
        return found
    try:
        paths = sorted(p for p in directory.iterdir() if p.name.endswith(".sock"))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ControlError(f"cannot list {directory}: {exc.strerror}") from None
    tunnels: list[Tunnel] = []
    for path in paths:
        try:
            tunnels.extend(_ask(path, cmd, timeout))
        except _Stale:
            continue
        except ControlError as exc:
            if problems is None or isinstance(exc, Denied):
                raise
            problems.append(str(exc))
    return sorted(tunnels, key=lambda t: str(t.get("name")))


# --- printing, in iproute2's words -------------------------------------------------------------------------

# Which way each drop reason's packet was going. The core counts inner_malformed and family in
# one counter for both directions; they are shown as receive errors, where a peer's bad packets
# land (the local stack hands the TUN device well-formed packets of its own family).
RX, TX = "rx", "tx"
DIRECTION: dict[Drop, str] = {
    Drop.OUTER_MALFORMED: RX,
    Drop.OUTER_FRAGMENT: RX,
    Drop.GRE_TRUNCATED: RX,
    Drop.GRE_VERSION: RX,
    Drop.GRE_ROUTING: RX,
    Drop.GRE_PROTOCOL: RX,
    Drop.GUE_VERSION: RX,
    Drop.GUE_MALFORMED: RX,
    Drop.NO_TUNNEL: RX,
    Drop.KEY_MISMATCH: RX,
    Drop.CSUM_MISSING: RX,
    Drop.CSUM_BAD: RX,
    Drop.CSUM_UNEXPECTED: RX,
    Drop.SEQ_MISSING: RX,
    Drop.SEQ_OLD: RX,
    Drop.ECN_CE_NOT_ECT: RX,
    Drop.INNER_MALFORMED: RX,
    Drop.FAMILY: RX,
    Drop.TUN_WRITE_ERROR: RX,
    Drop.TUN_DOWN: RX,
    Drop.SPOKE_SOURCE: RX,
    Drop.HUB_FULL: RX,
    Drop.SIT_SPOOFED: RX,
    Drop.ESP_TRUNCATED: RX,
    Drop.ESP_NO_SA: RX,
    Drop.ESP_REPLAY: RX,
    Drop.ESP_ICV: RX,
    Drop.ESP_PADDING: RX,
    Drop.ESP_DUMMY: RX,
    Drop.ESP_NEXT_HEADER: RX,
    Drop.OVERSIZE: TX,
    Drop.FRAG_NEEDED: TX,
    Drop.NO_NEIGHBOR: TX,
    Drop.NO_IPV4_DESTINATION: TX,
    Drop.ENCAP_LIMIT: TX,
    Drop.SEND_ERROR: TX,
    Drop.SEND_NOBUFS: TX,
    Drop.SEND_MSGSIZE: TX,
    Drop.ICMP_ERROR: TX,
    Drop.TUN_READ_ERROR: TX,
    Drop.ESP_SEQ_EXHAUSTED: TX,
}

# The columns of `ip -s tunnel show` (iproute2's tnl_print_stats) that usertunnel has reasons for.
# Errors are every drop of that direction; the kernel also counts csum and seq drops in rx_errors.
RX_CSUM_ERRS = (Drop.CSUM_BAD, Drop.CSUM_MISSING, Drop.CSUM_UNEXPECTED)
RX_OUT_OF_SEQ = (Drop.SEQ_OLD, Drop.SEQ_MISSING)
TX_NO_ROUTE = (Drop.ICMP_ERROR, Drop.NO_NEIGHBOR)  # the remote is unreachable, or a hub knows no spoke for it
TX_NO_BUFS = (Drop.SEND_NOBUFS,)

_RX_HEADER = "RX: Packets    Bytes        Errors CsumErrs OutOfSeq Mcasts"
_TX_HEADER = "TX: Packets    Bytes        Errors DeadLoop NoRoute  NoBufs"


def iproute2_columns(stats: dict[str, Any]) -> dict[str, int]:
    """The twelve numbers of `ip -s tunnel show`, from a snapshot's `stats` (see `DIRECTION`)."""
    drops: dict[str, int] = stats.get("drops", {})

    def total(reasons: Iterable[Drop]) -> int:
        return sum(drops.get(reason.value, 0) for reason in reasons)

    return {
        "rx_packets": stats.get("rx_packets", 0),
        "rx_bytes": stats.get("rx_bytes", 0),
        "rx_errors": total(r for r, d in DIRECTION.items() if d == RX),
        "rx_csum_errs": total(RX_CSUM_ERRS),
        "rx_out_of_seq": total(RX_OUT_OF_SEQ),
        "rx_mcasts": 0,  # no multicast remote in usertunnel
        "tx_packets": stats.get("tx_packets", 0),
        "tx_bytes": stats.get("tx_bytes", 0),
        "tx_errors": total(r for r, d in DIRECTION.items() if d == TX),
        "tx_dead_loop": 0,  # the kernel counts a packet routed back into its own tunnel; we cannot see one
        "tx_no_route": total(TX_NO_ROUTE),
        "tx_no_bufs": total(TX_NO_BUFS),
    }


def _extras_line(t: Tunnel) -> str:
    line = f"  usertunnel: pid {t['pid']} mtu {t['mtu']}"
    keepalive = t.get("keepalive")
    if keepalive:
        line += (
            f"\n  keepalive {keepalive['period']:g},{keepalive['retries']}: line protocol {keepalive['state']}"
            f" (sent {keepalive['sent']}, replies {keepalive['replies']}, unanswered {keepalive['unanswered']})"
        )
    neighbors = t.get("neighbors")
    if neighbors is not None:
        hub = t.get("hub") or {}
        line += f"\n  hub: {len(neighbors)} neighbor(s)"
        if hub:
            line += f" (learned {hub['learned']}, moved {hub['moved']}, expired {hub['expired']})"
        for n in neighbors:
            how = "static" if n["static"] else f"learned, idle {n['idle']:g}s"
            key = "" if n["key"] is None else f" key {n['key']}"
            hosts = " ".join(n.get("prefixes", []) + n["hosts"]) or "-"
            port = f" port {n['port']}" if n.get("port") else ""  # FOU / GUE: spokes behind one NAT differ by it
            line += f"\n    {n['outer']}{port}{key} ({how}): {hosts}"
    return line


def _drop_lines(drops: dict[str, int]) -> list[str]:
    """Every non-zero drop reason: name, count, and what it means."""
    lines = []
    for reason, count in sorted(drops.items()):
        if not count:
            continue
        try:
            description = Drop(reason).description
        except ValueError:
            description = "(a reason this version of usertunnel does not know)"
        lines.append(f"    {reason:<16}{count:>10}  {description}")
    return lines


def format_show(tunnels: list[Tunnel]) -> str:
    """`ip tunnel show`'s lines for each tunnel, then usertunnel's own line (pid, mtu)."""
    lines: list[str] = []
    for t in tunnels:
        lines += show_lines(t)
        lines.append(_extras_line(t))
    return "".join(f"{line}\n" for line in lines)


def format_stats(tunnels: list[Tunnel]) -> str:
    """`ip -s tunnel show`'s block for each tunnel, then usertunnel's line, drop reasons and unmatched packets."""
    lines: list[str] = []
    unmatched_shown: set[object] = set()
    for t in tunnels:
        c = iproute2_columns(t.get("stats", {}))
        lines += show_lines(t)
        # tnl_print_stats(): the same widths, so the columns line up as iproute2's do.
        lines.append(_RX_HEADER)
        lines.append(
            f"    {c['rx_packets']:<10} {c['rx_bytes']:<12} {c['rx_errors']:<6} "
            f"{c['rx_csum_errs']:<8} {c['rx_out_of_seq']:<8} {c['rx_mcasts']:<8}"
        )
        lines.append(_TX_HEADER)
        lines.append(
            f"    {c['tx_packets']:<10} {c['tx_bytes']:<12} {c['tx_errors']:<6} "
            f"{c['tx_dead_loop']:<8} {c['tx_no_route']:<8} {c['tx_no_bufs']:<6}"
        )
        lines.append(_extras_line(t))
        drops = _drop_lines(t.get("stats", {}).get("drops", {}))
        if drops:
            lines.append("  drops:")
            lines += drops
        # One instance, one raw socket, one unmatched count: shown once, with its first tunnel.
        unmatched = _drop_lines(t.get("unmatched", {}).get("drops", {}))
        if unmatched and t["pid"] not in unmatched_shown:
            unmatched_shown.add(t["pid"])
            lines.append(f"  unmatched: received by pid {t['pid']}, owned by none of its tunnels:")
            lines += unmatched
    return "".join(f"{line}\n" for line in lines)


# --- the command line ---------------------------------------------------------------------------------------

_WHERE = f"""\
where the answers come from:
  every running `usertunnel up` listens on DIR/IFNAME.sock, a Unix socket of
  mode 0600: only root may ask. DIR is {RUN_DIR} (created 0755 by the first
  instance), or {RUN_DIR}/netns/NAME inside the network namespace NAME (as
  with `ip tunnel show`, you see the tunnels of the namespace you run in:
  `ip netns exec NAME usertunnel show`; the last instance there to stop
  removes that directory). ${ENV_RUN_DIR} replaces {RUN_DIR}
  in both (for instances and clients alike); --dir names the exact directory.
  A socket left by a killed instance is removed and skipped.
"""

SHOW_DESCRIPTION = """\
Print every running tunnel (or the one named) the way `ip tunnel show`
(IPv4 outer) or `ip -6 tunnel show` (IPv6 outer) prints a kernel tunnel:

  NAME: PROTO/ip remote ADDR|any local ADDR|any [dev DEV] ttl N|inherit
        [tos 0xNN|inherit] [nopmtudisc] [6rd-prefix P [6rd-relay_prefix R]]
        [key K | ikey K okey K]
  NAME: PROTO/ipv6 remote ADDR local ADDR [dev DEV] encaplimit N|none
        hoplimit N|inherit tclass 0xNN|inherit flowlabel 0xNNNNN|inherit
        (flowinfo 0xNNNNNNNN) [key K | ikey K okey K]

PROTO/ip and PROTO/ipv6 are iproute2's words for the mode: gre/ip (gre,
gretap), ip/ip (ipip, vti), ipv6/ip (sit, isatap, with its routers: pdr|pr ADDR),
ip/ipv6 (ipip6), ipv6/ipv6 (ip6ip6, vti6), gre/ipv6 (ip6gre, ip6gretap); -j gives
the mode itself. ttl inherit copies the inner TTL; tos is printed only when
not 0; nopmtudisc means DF is copied from the inner packet instead of always
set. Then one line per GRE option:
  "Drop packets out of sequence."            iseq
  "Checksum in received packet is required." icsum
  "Sequence packets on output."              oseq
  "Checksum output packets."                 ocsum
and usertunnel's own line: the process (pid) and the TUN device's mtu.
Nothing running: nothing printed, exit 0. NAME not running: exit 1.
"""

STATS_DESCRIPTION = """\
What `usertunnel show` prints, with the counters of `ip -s tunnel show`
under each tunnel, then every drop reason that counted a packet.
"""


def _stats_epilog() -> str:
    def reasons(label: str, direction: str) -> str:
        names = ", ".join(r.value for r, d in DIRECTION.items() if d == direction)
        return textwrap.fill(names, 78, initial_indent=f"  {label}: ", subsequent_indent=" " * 15)

    rx, tx = reasons("rx reasons", RX), reasons("tx reasons", TX)
    return f"""\
the columns, in iproute2's order, from usertunnel's drop reasons:
  RX Packets, Bytes  inner packets written into the TUN device, and their bytes
  RX Errors          every packet of this tunnel dropped on the way in (the rx reasons below)
  RX CsumErrs        {" + ".join(r.value for r in RX_CSUM_ERRS)}
  RX OutOfSeq        {" + ".join(r.value for r in RX_OUT_OF_SEQ)}
  RX Mcasts          always 0: usertunnel has no multicast remote
  TX Packets, Bytes  inner packets read from the TUN device and sent, and their bytes
  TX Errors          every packet dropped on the way out (the tx reasons below)
  TX DeadLoop        always 0: Linux counts packets routed back into their own tunnel
  TX NoRoute         {" + ".join(r.value for r in TX_NO_ROUTE)}: remote unreachable, or no hub neighbor for it
  TX NoBufs          {" + ".join(r.value for r in TX_NO_BUFS)}: the raw socket's send buffer was full
{rx}
{tx}
  (inner_malformed and family are counted once for both directions and shown as rx)
Then "drops:", each reason with its count and meaning, and "unmatched:",
packets the instance received that none of its tunnels owned: every
instance's raw socket sees every GRE (or IPIP) packet, so this includes
packets for other instances and other hosts' tunnels.

-j prints a JSON list, one object per tunnel, with these stable fields:
  name, mode ("gre"|"ipip"|"sit"|"isatap"|"ipip6"|"ip6ip6"|"ip6gre"|"gretap"|"ip6gretap"|"vti"|"vti6"),
  local, remote (null = any), dev (null = none),
  ikey, okey (null = no key), iseq, oseq, icsum, ocsum, pmtudisc (booleans),
  ttl (null = inherit), tos (null = inherit),
  encaplimit (null = none) and flowlabel (null = inherit): over IPv6 only,
  sixrd ({{prefix, relay_prefix}} or null), prl ([{{address, default}}]),
  seq_policy, mtu, pid,
  stats {{rx_packets, rx_bytes, tx_packets, tx_bytes, drops {{reason: count}}}},
  unmatched {{drops {{reason: count}}}} (this instance's, as above)

{_WHERE}"""


def add_parsers(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `show` and `stats` to the `usertunnel` command line."""
    formatter = argparse.RawDescriptionHelpFormatter
    show = subparsers.add_parser(
        "show",
        help="list running tunnels, as `ip tunnel show` does",
        description=SHOW_DESCRIPTION,
        epilog=_WHERE,
        formatter_class=formatter,
    )
    stats = subparsers.add_parser(
        "stats",
        help="list running tunnels with their counters and drops, as `ip -s tunnel show` does",
        description=STATS_DESCRIPTION,
        epilog=_stats_epilog(),
        formatter_class=formatter,
    )
    for sub in (show, stats):
        sub.add_argument("name", nargs="?", metavar="NAME", help="only this tunnel (its TUN device name)")
        sub.add_argument("-j", "--json", action="store_true", help="print JSON (the fields are listed under stats -h)")
        sub.add_argument(
            "--dir",
            type=Path,
            metavar="DIR",
            help=f"the exact directory of the control sockets (default: {RUN_DIR}, or {RUN_DIR}/netns/NAME "
            f"in network namespace NAME; ${ENV_RUN_DIR} replaces {RUN_DIR})",
        )


def run(args: argparse.Namespace) -> int:
    """`usertunnel show` / `usertunnel stats`: the exit status (0, or 1 with one line per error on stderr;
    2 when not root)."""
    command: str = args.command
    directory: Path = args.dir if args.dir is not None else run_directory()
    problems: list[str] = []
    try:
        tunnels = query(directory, args.name, cmd=command, problems=problems)
        if args.json:
            text = json.dumps(tunnels, indent=2) + "\n"
        else:
            text = format_show(tunnels) if command == "show" else format_stats(tunnels)
    except ControlError as exc:
        print(f"usertunnel {command}: error: {exc}", file=sys.stderr)
        return EXIT_DENIED if isinstance(exc, Denied) else EXIT_ERROR
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # an answer from another version
        print(f"usertunnel {command}: error: unexpected answer ({type(exc).__name__}: {exc})", file=sys.stderr)
        return EXIT_ERROR
    sys.stdout.write(text)
    sys.stdout.flush()
    for problem in problems:
        print(f"usertunnel {command}: error: {problem}", file=sys.stderr)
    return EXIT_ERROR if problems else 0


def ask_daemon(
    message: dict[str, Any], directory: Path | None = None, timeout: float = COMMAND_TIMEOUT
) -> dict[str, Any]:
    """Send one command to `usertunnel daemon` in this network namespace; its answer.
    Refused when the daemon says no; ControlError when there is no daemon or it cannot be asked."""
    directory = run_directory() if directory is None else directory
    path = daemon_path(directory)
    try:
        return request(path, message, timeout)
    except _Stale:
        raise ControlError(
            f"no usertunnel daemon is running in this network namespace (no {path}): start one with `usertunnel daemon`"
        ) from None
