"""`usertunnel daemon`: many tunnels in one process, added, changed and removed while it runs.

Rules for this file: it is I/O shell. It decides nothing about packets (the
core does) and builds no configuration (`config` does); it opens and closes
devices and sockets, and keeps the data path moving while it does.

Theory of operation. One event loop, one `Dataplane`, one `Demux` whose
lookup is the kernel's order: every tunnel of the daemon competes for each
received packet exactly as `ip tunnel` devices do in one kernel.

- Raw sockets are shared. One receiving socket per outer protocol (GRE, IPIP,
  sit over IPv4; each next header over IPv6) is opened when the first tunnel
  needs it and closed with the last. A tunnel with `dev` sends through an
  IPPROTO_RAW socket bound to that device: such a socket never receives, so
  no packet is ever read twice. One ICMP listener serves every tunnel's path
  MTU.
- Identities are claimed (io.claim): each tunnel's (table, local, remote,
  ikey) is an abstract socket the daemon holds, so an `up` in the same
  namespace cannot serve it too, and the daemon refuses one an `up` serves
  (`add tunnel "g1" failed: ... already served ... by pid N (...): File
  exists`). add claims, change claims the new identities and releases the
  old, del releases. Each receiving socket's filter (io.raw.tunnel_filter)
  is the union of the daemon's tunnels against the other processes' claims,
  rebuilt once for changes that come in a row (DAEMON_REFRESH_DELAY) and
  when another process comes or goes.
- Changes arrive on the control socket DIR/usertunnel-daemon.sock
  (`usertunnel tunnel add|change|del|prl|6rd`, `usertunnel reload`) or as
  SIGHUP (reload). They are applied one at a time. Netlink work (device
  lookups, MTU, addresses, routes) runs in a worker thread: pyroute2's
  synchronous API runs an event loop of its own and must not run inside
  ours, and meanwhile the other tunnels' packets keep moving.
- add: the device (TUN, or TAP for gretap) is created. `tunnel add` leaves it
  down, as `ip tunnel add` does (then `ip addr add` / `ip link set up`); a
  config file's tunnel is brought up with its addresses and routes.
- change, prl, 6rd: in place. The device, and the addresses and routes on it
  whoever put them there, stay; a new core `Tunnel` with the new parameters
  takes over its descriptor. Counters carry over; sequence state starts
  afresh, as a new tunnel's does.
- del: the device is closed, which removes it with its addresses and routes.
- reload: the file is read and checked as a whole (`config.load_config`); if
  it is invalid nothing changes. Otherwise tunnels it no longer declares are
  deleted, new ones added, and those whose settings changed are deleted and
  added again; the others are not touched. Tunnels added by `tunnel add` are
  left alone, unless the file now declares one of the same name (the file
  then takes it over). Each reload, by SIGHUP or by `usertunnel reload`
  alike, is logged: what changed, or why nothing did.

Refusals read like iproute2's (`add tunnel "gre1" failed: File exists`),
followed by our reason where iproute2 would only have an errno.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import os
import random
import signal
import socket
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from ..core import sit, tables
from ..core.encap import Demux, Tunnel
from ..core.errors import ConfigError
from ..core.esp import IPPROTO_ESP
from ..core.fou import EncapKind
from ..core.params import ModeSpec, TunnelParams
from ..core.values import parse_key
from ..front import config as configuration
from ..front.config import DaemonConfig, TunnelConfig
from ..io import metrics, netlink, privilege, sdnotify, udp
from ..io.claim import Claims, Identity, identities
from ..io.loop import Dataplane, Interface
from ..io.raw import ClaimFilter, open_icmp_listener, open_raw, open_raw6_receiver, open_raw6_sender
from ..io.tun import Tun
from .control import DAEMON, ControlServer, snapshot_of
from .service import (
    ClaimWatch,
    Keepalives,
    Prepared,
    Sweeper,
    forwarding,
    keepalive_fields,
    log_stats,
    new_event_loop,
    tunnel_mtu,
    udp_options,
    udp_reach,
)
from .service import udp_interface as service_udp_interface

log = logging.getLogger("usertunnel")

T = TypeVar("T")

CONFIG = "config"  # a tunnel the config file declares (reload may change or delete it)
DAEMON_REFRESH_DELAY = 0.25  # seconds: the claims and filters are rebuilt once for changes that come in a row
COMMAND = "command"  # a tunnel `usertunnel tunnel add` made (reload leaves it alone)
ESP_KEYS_DIR = "/etc/usertunnel/esp"  # `tunnel add ... mode vti ikey K`: the keys of K are ESP_KEYS_DIR/K.toml


class Sockets:
    """The daemon's raw sockets, shared by its tunnels and counted by use."""

    def __init__(self, dataplane: Dataplane, mine: Callable[[], Collection[Identity]] = lambda: ()) -> None:
        self.dataplane = dataplane
        self.mine = mine  # the identities the daemon claims: its receivers' filters keep their packets
        self._receivers: dict[int, list[Any]] = {}  # socket's table (core.tables) -> [socket, users]
        self._filters: dict[int, ClaimFilter] = {}  # table -> the filter of that receiver
        self._senders: dict[tuple[int, str | None], list[Any]] = {}  # (outer version, device) -> [socket, users]

    @staticmethod
    def _esp_table(spec: ModeSpec) -> int:
        return tables.ESP6 if spec.outer == 6 else tables.ESP  # ESP's raw socket over IPv4, or over IPv6

    @staticmethod
    def _table(spec: ModeSpec) -> int:
        return tables.socket_table(spec.table)  # gretap shares GRE's socket: the demux tells them apart

    def acquire(self, spec: ModeSpec, device: str | None, esp: bool = False) -> socket.socket:
        """The socket a tunnel of `spec` sends through; its receiving socket is read from then on. With
        `esp` (--esp-keys, vti), ESP's (protocol 50): protected tunnels are found by SPI, not by a filter."""
        table = self._esp_table(spec) if esp else self._table(spec)
        entry = self._receivers.get(table)
        if entry is None and esp:
            if spec.outer == 4:
                receiver = open_raw(IPPROTO_ESP)
                self.dataplane.add_esp(receiver)
            else:  # vti6: the IPv6 receive path hands next header 50 to the demux's ESP
                receiver = open_raw6_receiver(IPPROTO_ESP)
                self.dataplane.add_socket(table, receiver)
            entry = self._receivers[table] = [receiver, 0]
        elif entry is None:
            receiver = open_raw(spec.ip_protocol) if spec.outer == 4 else open_raw6_receiver(spec.ip_protocol)
            try:
                rx_filter = ClaimFilter(receiver, spec.ip_protocol, self.mine, outer=spec.outer)
                rx_filter.update()
            except BaseException:
                receiver.close()
                raise
            self._filters[table] = rx_filter
            self.dataplane.add_socket(table, receiver)
            entry = self._receivers[table] = [receiver, 0]
        entry[1] += 1
        if spec.outer == 4 and device is None:
            sock: socket.socket = entry[0]  # IP_HDRINCL: it sends as well as it receives
            return sock
        key = (spec.outer, device)
        sender = self._senders.get(key)
        if sender is None:
            try:
                opened = open_raw(socket.IPPROTO_RAW, device) if spec.outer == 4 else open_raw6_sender(device)
            except BaseException:
                self.release(spec, None, esp)
                raise
            sender = self._senders[key] = [opened, 0]
        sender[1] += 1
        sock = sender[0]
        return sock

    def release(self, spec: ModeSpec, device: str | None, esp: bool = False) -> None:
        """A tunnel of `spec` (with `esp`: protected, on ESP's socket) is gone: close what nobody uses any more."""
        if not (spec.outer == 4 and device is None):
            key = (spec.outer, device)
            sender = self._senders.get(key)
            if sender is not None:
                sender[1] -= 1
                if sender[1] <= 0:
                    sender[0].close()
                    del self._senders[key]
        table = self._esp_table(spec) if esp else self._table(spec)
        entry = self._receivers.get(table)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                self.dataplane.remove_socket(table)
                entry[0].close()
                del self._receivers[table]
                self._filters.pop(table, None)

    def filters(self) -> list[ClaimFilter]:
        return list(self._filters.values())

    def close(self) -> None:
        for table, (sock, _) in list(self._receivers.items()):
            self.dataplane.remove_socket(table)
            sock.close()
        for sock, _ in self._senders.values():
            sock.close()
        self._receivers.clear()
        self._senders.clear()
        self._filters.clear()


class UdpSockets:
    """The daemon's FOU / GUE sockets (io.udp), one per local port, shared by the tunnels that use it.

    Tunnels share a port when they agree on what it is: FOU of one protocol, or GUE; the UDP checksum,
    DF, the local address and the device. A tunnel's source port is its `encap_sport`, or (auto) the port
    it receives on: in the daemon, flows are not spread over several source ports.
    """

    def __init__(self, dataplane: Dataplane) -> None:
        self.dataplane = dataplane
        self._ports: dict[int, list[Any]] = {}  # port -> [socket, users, what it is]

    @staticmethod
    def _what(params: TunnelParams, device: str | None) -> tuple[object, ...]:
        encap = params.encap
        assert encap is not None
        protocol = params.mode.value.ip_protocol if encap.kind is EncapKind.FOU else None
        return (encap.kind, protocol, encap.csum, params.pmtudisc, params.local, device, params.encaplimit)

    def acquire(self, params: TunnelParams, device: str | None) -> dict[int, socket.socket]:
        """The sockets of a FOU / GUE tunnel by local port: its receive port and its source port."""
        encap = params.encap
        assert encap is not None
        what = self._what(params, device)
        wanted = [encap.dport] + ([encap.sport] if encap.sport is not None and encap.sport != encap.dport else [])
        taken: dict[int, socket.socket] = {}
        try:
            for port in wanted:
                entry = self._ports.get(port)
                if entry is not None and entry[2] != what:
                    kind, protocol = entry[2][0], entry[2][1]
                    said = f"{kind.value} ipproto {protocol}" if protocol is not None else kind.value
                    raise ConfigError(
                        f"UDP port {port} is another tunnel's, as {said} with other settings (checksum, DF, local, "
                        "device): tunnels share a port only when they agree; give this one another encap_dport"
                    )
                if entry is None:
                    sock = udp.open_udp(port, params.local, **udp_options(params, device))  # type: ignore[arg-type]
                    self.dataplane.add_udp(sock, encap.kind, params.mode.value.ip_protocol)
                    entry = self._ports[port] = [sock, 0, what]
                entry[1] += 1
                taken[port] = entry[0]
        except BaseException:
            self.release_ports(list(taken))
            raise
        return taken

    def release(self, params: TunnelParams) -> None:
        """A FOU / GUE tunnel is gone: close the ports nobody uses any more."""
        encap = params.encap
        assert encap is not None
        self.release_ports([encap.dport] + ([encap.sport] if encap.sport not in (None, encap.dport) else []))

    def release_ports(self, ports: Sequence[int | None]) -> None:
        for port in ports:
            if port is None or port not in self._ports:
                continue
            entry = self._ports[port]
            entry[1] -= 1
            if entry[1] <= 0:
                self.dataplane.remove_udp(entry[0])
                del self._ports[port]

    def close(self) -> None:
        for sock, _, _ in self._ports.values():
            self.dataplane.remove_udp(sock)
        self._ports.clear()


def udp_interface(
    tunnel: Tunnel, tun: Tun, sockets: dict[int, socket.socket], forwarding: bool, batch: bool
) -> Interface:
    """The interface of a daemon's FOU / GUE tunnel: it sends from its source port (auto: its receive port)."""
    encap = tunnel.params.encap
    assert encap is not None
    sport = encap.sport if encap.sport is not None else encap.dport
    tunnel.source_ports = (sport,) if encap.sport is None else ()
    return service_udp_interface(tunnel, tun, sockets[encap.dport], {sport: sockets[sport]}, forwarding, batch)


@dataclass(eq=False)
class Member:
    """One of the daemon's tunnels: its configuration, its device, what runs for it."""

    config: TunnelConfig
    origin: str  # CONFIG or COMMAND
    prepared: Prepared  # the tunnel, its device, its sending socket (shared: never closed through this)
    keepalives: Keepalives | None = None
    sweeper: Sweeper | None = None

    @property
    def name(self) -> str:
        return self.prepared.tun.name

    def stop_timers(self) -> None:
        if self.keepalives is not None:
            self.keepalives.cancel()
        if self.sweeper is not None:
            self.sweeper.cancel()


def _failed(action: str, name: str, reason: str) -> ConfigError:
    """iproute2's words for a refused tunnel command (`add tunnel "gre1" failed: File exists`)."""
    return ConfigError(f'{action} tunnel "{name}" failed: {reason}')


class Daemon:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        config_path: str | None = None,
        coalesce: bool = True,
        batch: bool = True,
        esp_dir: str = ESP_KEYS_DIR,
    ) -> None:
        self.loop = loop
        self.config_path = config_path
        self.esp_dir = esp_dir  # `tunnel add ... mode vti ikey K`: its keys file is ESP_DIR/K.toml
        self.coalesce = coalesce
        self.demux = Demux()
        self.dataplane = Dataplane(loop, self.demux, None, batched=batch)
        self.dataplane.on_keepalive_reply = self._keepalive_reply
        self.dataplane.on_tun_gone = self._tun_gone
        self.claims = Claims("usertunnel daemon")
        self.sockets = Sockets(self.dataplane, lambda: self.claims.held)
        self.udp = UdpSockets(self.dataplane)
        self.watch: ClaimWatch | None = None
        self.members: dict[str, Member] = {}
        self.forwarding = forwarding()
        self.pid = os.getpid()
        self.lock = asyncio.Lock()  # one change at a time
        self.stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- running ----------------------------------------------------------------------------------------

    async def serve(self, initial: DaemonConfig | None, listener: socket.socket | None = None) -> int:
        """Listen, bring the config file's tunnels up, run until SIGINT/SIGTERM; the exit status. `listener`:
        --metrics' socket (io.metrics), served from now on."""
        control = await ControlServer.start(
            DAEMON,
            self.snapshot,
            commands={"tunnel": self._cmd_tunnel, "reload": self._cmd_reload},
        )
        exporter = await metrics.start(listener, self.scrape, "daemon")
        status = 0
        self.watch = ClaimWatch(self.loop, self.claims, self.sockets.filters, DAEMON_REFRESH_DELAY)
        try:
            try:
                icmp = open_icmp_listener()
            except (OSError, ConfigError) as exc:
                log.warning("daemon: no path MTU discovery: %s", exc)
            else:
                self.dataplane.add_icmp(icmp)
            if initial is not None:
                async with self.lock:
                    for cfg in initial.tunnels.values():
                        await self._add(cfg, CONFIG)
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.loop.add_signal_handler(sig, self.stop.set)
            self.loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
            log.info("daemon: up with %d tunnel(s); control socket %s", len(self.members), control.path)
            sdnotify.notify(f"READY=1\nSTATUS={self._status()}")
            await self.stop.wait()
            log.info("daemon: stopping")
        except ConfigError as exc:
            log.error("daemon: %s; stopping", exc)
            status = 1
        finally:
            sdnotify.notify("STOPPING=1")
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                self.loop.remove_signal_handler(sig)
            for task in list(self._tasks):
                task.cancel()
            log_stats(self.demux)
            await asyncio.gather(*(self._remove(name) for name in list(self.members)))
            self.watch.cancel()
            self.claims.close()
            await control.close()
            if exporter is not None:
                await exporter.close()
            self.sockets.close()
            self.udp.close()
            self.dataplane.close()
        return status

    def _status(self) -> str:
        return f"{len(self.members)} tunnel(s): {' '.join(sorted(self.members)) or '-'}"

    def _on_sighup(self) -> None:
        task = self.loop.create_task(self._reload_logged())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload_logged(self) -> None:
        with contextlib.suppress(ConfigError):  # logged by _reload
            await self._reload("SIGHUP")

    async def _thread(self, call: Callable[..., T], *args: Any) -> T:
        """Run blocking netlink work in a worker thread (never pyroute2 inside our loop)."""
        return await self.loop.run_in_executor(None, functools.partial(call, *args))

    def scrape(self) -> metrics.Scrape:
        """What --metrics serves: the tunnels running now, with their live counters."""
        now = time.monotonic()
        tunnels = [metrics.sample(m.prepared.tunnel, m.prepared.mtu, now) for m in self.members.values()]
        return metrics.Scrape(tunnels, self.demux.unmatched)

    # --- the control socket's commands --------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        out = []
        for member in self.members.values():
            p = member.prepared
            tunnel = p.tunnel
            snap = snapshot_of(tunnel.params, tunnel.counters, self.demux.unmatched, p.mtu, self.pid, p.device)
            snap |= keepalive_fields(tunnel)
            if tunnel.hub is not None:
                snap["neighbors"] = tunnel.hub.as_list(time.monotonic())
            out.append(snap)
        return out

    async def _cmd_tunnel(self, message: dict[str, Any]) -> dict[str, Any]:
        """`usertunnel tunnel ACTION NAME ...`: {"action", "name", "table"} in the config vocabulary."""
        action = message.get("action")
        name = message.get("name")
        table = message.get("table") or {}
        if not isinstance(table, dict) or not (name is None or isinstance(name, str)):
            raise ConfigError("a tunnel command is {action, name, table}")
        async with self.lock:
            if action == "add":
                cfg = self._build(name or _pattern(table), {"up": False, **self._esp_keys_for(table)})
                member = await self._add(cfg, COMMAND, action="add")
                return {"tunnels": [member.name]}
            if name is None:
                raise ConfigError(f"{action}: which tunnel? give its NAME")
            if action in ("del", "delete"):
                self._member(name, "delete")
                await self._remove(name)
                return {"tunnels": [name]}
            if action == "change":
                member = self._member(name, "change")
                await self._change(member, configuration.merge(member.config.table, table))
                return {"tunnels": [name]}
            if action == "prl":
                member = self._member(name, "change")
                await self._change(member, _prl_table(member.config.table, table))
                return {"tunnels": [name]}
            if action == "6rd":
                member = self._member(name, "change")
                await self._change(member, _sixrd_table(member.config.table, table))
                return {"tunnels": [name]}
        raise ConfigError(f"unknown tunnel action {action!r}: add, change, del, prl or 6rd")

    def _esp_keys_for(self, table: Mapping[str, Any]) -> Mapping[str, Any]:
        """`ip tunnel add NAME mode vti ... ikey K okey K` has no words for keys: as the kernel's mark selects
        xfrm states, the key selects a keys file, ESP_DIR/K.toml (`daemon --esp-keys-dir`)."""
        mode = table.get("mode")
        if mode not in ("vti", "vti6") or "esp_keys" in table:
            return table
        key = table.get("ikey", table.get("key"))
        if key is None:
            raise ConfigError(
                f"mode {mode}: give ikey and okey (or key): the key selects the tunnel's keys file, "
                f"{self.esp_dir}/KEY.toml, as the kernel's mark selects its xfrm states"
            )
        return {**table, "esp_keys": str(Path(self.esp_dir) / f"{parse_key(str(key))}.toml")}

    async def _cmd_reload(self, message: dict[str, Any]) -> dict[str, Any]:
        """`usertunnel reload`: as SIGHUP. A refusal answers {"error", "refused": "configuration"}: the file
        (or its absence) is at fault, which the command reports with exit status 2 as any bad configuration."""
        try:
            return await self._reload("usertunnel reload")
        except ConfigError as exc:
            return {"error": str(exc), "refused": "configuration"}

    async def _reload(self, how: str) -> dict[str, Any]:
        """Re-read the config file: all of it applies, or (invalid: ConfigError) none of it. Logged either
        way, with `how` it was asked for (SIGHUP, usertunnel reload)."""
        try:
            answer = await self._reload_file()
        except ConfigError as exc:
            log.error("daemon: reload (%s) refused, nothing changed: %s", how, exc)
            raise
        log.info("daemon: reloaded (%s): %s", how, _summary(answer))
        return answer

    async def _reload_file(self) -> dict[str, Any]:
        """Read and check the whole file, then apply it under the lock; what was added, removed, ..."""
        if self.config_path is None:
            raise ConfigError("this daemon was started without --config: there is no file to reload")
        wanted = await self._thread(configuration.load_config, self.config_path)
        async with self.lock:
            sdnotify.reloading()
            try:
                return await self._apply(wanted)
            finally:
                sdnotify.notify(f"READY=1\nSTATUS={self._status()}")

    async def _apply(self, wanted: DaemonConfig) -> dict[str, Any]:
        running = {n: m.config for n, m in self.members.items() if m.origin == CONFIG}
        plan = configuration.plan(running, wanted)
        errors: list[str] = []
        for name in plan.remove:
            await self._remove(name)
        rekeyed = []
        for name in plan.restart:
            member = self.members.get(name)
            if member is not None and _only_keys_differ(member.config, wanted.tunnels[name]):
                # New ESP keys (the file's content, or another file): the same device, no packet dropped.
                try:
                    await self._change_to(member, wanted.tunnels[name], "reload")
                    rekeyed.append(name)
                except ConfigError as exc:
                    errors.append(str(exc))
                    log.error("daemon: %s", exc)
        for name in (*plan.restart, *plan.add):
            if name in rekeyed:
                continue
            if name in self.members:
                await self._remove(name)  # changed, or a `tunnel add` one the file now declares
            try:
                await self._add(wanted.tunnels[name], CONFIG)
            except ConfigError as exc:
                errors.append(str(exc))
                log.error("daemon: %s", exc)
        return {
            "added": list(plan.add),
            "removed": list(plan.remove),
            "restarted": [name for name in plan.restart if name not in rekeyed],
            "rekeyed": rekeyed,
            "unchanged": list(plan.unchanged),
            "errors": errors,
        }

    def _build(self, name: str, table: Mapping[str, Any]) -> TunnelConfig:
        return configuration.tunnel_from_table(name, table, coalesce=self.coalesce, batch=self.dataplane.batched)

    def _member(self, name: str, action: str) -> Member:
        member = self.members.get(name)
        if member is None:
            raise _failed(action, name, "No such device (not one of this daemon's tunnels)")
        return member

    # --- add, change, remove ------------------------------------------------------------------------------

    async def _add(self, cfg: TunnelConfig, origin: str, action: str = "add") -> Member:
        options = cfg.options
        params = options.params
        spec = params.mode.value
        name = params.name
        if name in self.members:
            raise _failed(action, name, "File exists")
        if "%" not in name and await self._thread(netlink.link_exists, name):
            raise _failed(action, name, "File exists (a device of that name is not ours)")
        try:
            underlay = udp_reach(params, await self._thread(netlink.underlay_mtu, params.remote, options.device))
            mtu = tunnel_mtu(options, underlay)
        except ConfigError as exc:
            raise _failed(action, name, str(exc)) from None
        if params.local is not None and not await self._thread(netlink.is_local_address, params.local):
            # `up` refuses this; a daemon's tunnel may be declared before its address is configured (as
            # `ip tunnel add` allows), so it is warned about instead, on every add and restart.
            log.warning(
                "%s: local %s is not an address of this host (yet?): what it sends has a foreign source",
                name, ipaddress.ip_address(params.local),
            )  # fmt: skip
        tunnel = Tunnel(params, ident=random.getrandbits(16))
        tunnel.link_mtu = underlay
        tunnel.device_addresses = tuple(
            sit.DeviceAddress(a.ip.packed, a.network.prefixlen) for a in options.addresses if a.version == 6
        )
        self._check_lookup(tunnel, action)
        claimed = identities(params)
        self._claim(claimed, action, name)
        udp_sockets: dict[int, socket.socket] = {}
        try:
            if params.encap is not None:
                try:
                    udp_sockets = self.udp.acquire(params, options.device)
                except ConfigError as exc:
                    raise _failed(action, name, str(exc)) from None
                sock = udp_sockets[params.encap.dport]
            else:
                sock = self.sockets.acquire(spec, options.device, params.esp is not None)
        except BaseException:
            self.claims.release(claimed)
            raise
        tun: Tun | None = None
        try:
            # Creating a device takes the kernel a while too: a worker thread, as for netlink.
            tun = await self._thread(Tun, name, self.coalesce and not spec.ethernet, spec.ethernet)
            await self._thread(
                netlink.configure, tun.name, mtu, list(options.addresses), 6 in spec.families, cfg.routes, cfg.up
            )
            if tun.name != name:  # a pattern such as gre%d, resolved by the kernel
                tunnel = Tunnel(replace(params, name=tun.name), ident=tunnel.ident)
                tunnel.link_mtu = underlay
            if udp_sockets:
                iface = udp_interface(tunnel, tun, udp_sockets, self.forwarding, self.dataplane.batched)
            else:
                iface = Interface(tunnel, tun, sock, verify_segments=self.forwarding)
            self.dataplane.add_interface(iface)
        except ConfigError as exc:
            if tun is not None:
                tun.close()
            self._release_sockets(params, options.device)
            self.claims.release(claimed)
            raise _failed(action, name, str(exc)) from None
        except BaseException:
            if tun is not None:
                tun.close()
            self._release_sockets(params, options.device)
            self.claims.release(claimed)
            raise
        self.claims.relabel(claimed, tun.name)
        self._claims_changed(claimed)
        prepared = Prepared(tunnel, tun, sock, mtu, None, options.device, None, None, self.forwarding)
        prepared.udp_senders = iface.udp
        member = Member(cfg, origin, prepared)
        self._start_timers(member)
        self.members[tun.name] = member
        log.info("daemon: %s: added (%s)", tun.name, origin)
        return member

    def _release_sockets(self, params: TunnelParams, device: str | None) -> None:
        """What a tunnel's `acquire` took: its raw sockets' share, or its UDP ports' (FOU / GUE)."""
        if params.encap is not None:
            self.udp.release(params)
        else:
            self.sockets.release(params.mode.value, device, params.esp is not None)

    def _check_lookup(self, tunnel: Tunnel, action: str, instead_of: Tunnel | None = None) -> None:
        """Refuse a tunnel whose local, remote and ikey another tunnel of its table already has."""
        if instead_of is not None:
            self.demux.remove(instead_of)
        try:
            self.demux.add(tunnel)
        except ConfigError as exc:
            raise _failed(action, tunnel.params.name, str(exc)) from None
        else:
            self.demux.remove(tunnel)
        finally:
            if instead_of is not None:
                self.demux.add(instead_of)

    def _claim(self, wanted: list[Identity], action: str, name: str) -> None:
        """Claim identities for one of our tunnels (io.claim): refused when another process serves one."""
        try:
            self.claims.hold(wanted, name)
        except ConfigError as exc:
            raise _failed(action, name, str(exc)) from None

    def _claims_changed(self, taken: list[Identity]) -> None:
        """Our claims changed: our filters soon, and the other processes' on our sockets when we took some."""
        if self.watch is not None:
            self.watch.changed(taken)

    def _start_timers(self, member: Member) -> None:
        line = member.prepared.tunnel.line
        if line is not None:
            member.keepalives = Keepalives(self.loop, member.prepared, line)
        if member.prepared.tunnel.hub is not None:
            member.sweeper = Sweeper(self.loop, member.prepared)

    async def _change(self, member: Member, table: Mapping[str, Any]) -> None:
        """`ip tunnel change`: new parameters on the same device."""
        cfg = self._build(member.name, table)
        if cfg.table == member.config.table:
            return
        await self._change_to(member, cfg, "change")

    async def _change_to(self, member: Member, cfg: TunnelConfig, action: str) -> None:
        """The tunnel of `cfg` on `member`'s device, which stays: its counters go on, its packets keep flowing."""
        name = member.name
        old = member.prepared
        old_spec = old.tunnel.params.mode.value
        params = cfg.options.params
        spec = params.mode.value
        if spec.ethernet != old_spec.ethernet:
            raise _failed(action, name, f"mode {old_spec.name} cannot become {spec.name} (delete and add)")
        try:
            underlay = udp_reach(params, await self._thread(netlink.underlay_mtu, params.remote, cfg.options.device))
            mtu = (
                tunnel_mtu(cfg.options, underlay)
                if cfg.options.mtu is not None or _overhead_changed(old, cfg)
                else old.mtu
            )
            if mtu != old.mtu:
                await self._thread(netlink.set_mtu, name, mtu)
        except ConfigError as exc:
            raise _failed(action, name, str(exc)) from None
        tunnel = Tunnel(params, ident=old.tunnel.ident)
        tunnel.link_mtu = underlay
        tunnel.device_addresses = old.tunnel.device_addresses
        tunnel.counters = old.tunnel.counters
        before_keys, after_keys = old.tunnel.params.esp, params.esp
        if before_keys is not None and after_keys is not None:
            # A security association that stays keeps its state: the sequence numbers sent go on (a peer's
            # replay window would refuse them from 1 again) and so does the replay window of what came in.
            if before_keys.outbound == after_keys.outbound:
                tunnel.sealer = old.tunnel.sealer
            if before_keys.inbound == after_keys.inbound:
                tunnel.opener = old.tunnel.opener
        self._check_lookup(tunnel, action, instead_of=old.tunnel)
        before, after = identities(old.tunnel.params), identities(params)
        taken = [i for i in after if i not in before]
        self._claim(taken, action, name)
        udp_sockets: dict[int, socket.socket] = {}
        try:
            if params.encap is not None:
                try:
                    udp_sockets = self.udp.acquire(params, cfg.options.device)
                except ConfigError as exc:
                    raise _failed(action, name, str(exc)) from None
                sock = udp_sockets[params.encap.dport]
            else:
                sock = self.sockets.acquire(spec, cfg.options.device, params.esp is not None)
        except BaseException:
            self.claims.release(taken)
            raise
        member.stop_timers()
        self.dataplane.remove_interface(old.tunnel)
        if udp_sockets:
            iface = udp_interface(tunnel, old.tun, udp_sockets, self.forwarding, self.dataplane.batched)
        else:
            iface = Interface(tunnel, old.tun, sock, verify_segments=self.forwarding)
        self.dataplane.add_interface(iface)
        self._release_sockets(old.tunnel.params, old.device)
        self.claims.release(i for i in before if i not in after)
        self._claims_changed(taken)
        member.config = cfg
        member.prepared = Prepared(tunnel, old.tun, sock, mtu, None, cfg.options.device, None, None, self.forwarding)
        member.prepared.udp_senders = iface.udp
        self._start_timers(member)
        log.info("daemon: %s: %s", name, "changed" if action == "change" else f"changed ({action})")

    def _remove(self, name: str) -> asyncio.Future[None]:
        """Take a tunnel out of the data path at once; its device is closed in a worker thread (the
        kernel takes milliseconds to unregister a device, which the other tunnels should not wait for).
        Await the result to know the device is gone."""
        member = self.members.pop(name)
        member.stop_timers()
        p = member.prepared
        self.dataplane.remove_interface(p.tunnel)
        self._release_sockets(p.tunnel.params, p.device)
        self.claims.release(identities(p.tunnel.params))
        self._claims_changed([])
        log.info("daemon: %s: removed", name)
        return self.loop.run_in_executor(None, p.tun.close)

    # --- the data path's news -----------------------------------------------------------------------------

    def _keepalive_reply(self, tunnel: Tunnel) -> None:
        for member in self.members.values():
            if member.prepared.tunnel is tunnel and member.keepalives is not None:
                member.keepalives.reply(tunnel)

    def _tun_gone(self, iface: Interface, reason: str) -> None:
        """Someone ran `ip link del` on one of our devices: that tunnel is gone, the others go on."""
        for name, member in list(self.members.items()):
            if member.prepared.tunnel is iface.tunnel:
                log.warning("daemon: %s: %s; tunnel removed", name, reason)
                self._remove(name)


def _only_keys_differ(old: TunnelConfig, new: TunnelConfig) -> bool:
    """Whether `new` is `old` with other ESP keys (a reload after the key file changed, or names another)."""
    before, after = old.options.params, new.options.params
    if before.esp is None or after.esp is None or before.esp == after.esp:
        return False
    same = replace(new.options, params=replace(after, esp=before.esp))
    return same == old.options and new.routes == old.routes and new.up == old.up


def _overhead_changed(old: Prepared, cfg: TunnelConfig) -> bool:
    return old.tunnel.params.header_length != cfg.options.params.header_length or old.device != cfg.options.device


def _pattern(table: Mapping[str, Any]) -> str:
    """The kernel's name for a tunnel added without one: MODE%d."""
    return f"{table.get('mode', 'gre')}%d"


def _prl_table(table: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """`ip tunnel prl NAME prl-default A prl-nodefault B prl-delete C`: the new potential router list."""
    entries: dict[str, str] = {}
    for text in table.get("prl", []):
        address, _, flag = str(text).partition("=")
        entries[address] = flag
    for address in given.get("prl_delete", []):
        entries.pop(str(address), None)
    for address in given.get("prl_default", []):
        entries[str(address)] = ""
    for address in given.get("prl_nodefault", []):
        entries[str(address)] = "nodefault"
    out = dict(table)
    out["prl"] = [f"{a}={f}" if f else a for a, f in entries.items()]
    return out


def _sixrd_table(table: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """`ip tunnel 6rd dev NAME 6rd-prefix P 6rd-relay_prefix R | 6rd-reset`."""
    out = dict(table)
    if given.get("6rd_reset"):
        out.pop("6rd_prefix", None)
        out.pop("6rd_relay_prefix", None)
    for key in ("6rd_prefix", "6rd_relay_prefix"):
        if key in given:
            out[key] = given[key]
    return out


def _summary(answer: Mapping[str, Any]) -> str:
    parts = [f"{what} {' '.join(answer[what]) or '-'}" for what in ("added", "removed", "restarted", "unchanged")]
    errors = answer.get("errors") or []
    return "; ".join(parts) + (f"; {len(errors)} error(s)" if errors else "")


def daemon(
    config_path: str | None,
    coalesce: bool = True,
    batch: bool = True,
    metrics_address: tuple[str, int] | None = None,
    esp_dir: str = ESP_KEYS_DIR,
) -> int:
    """`usertunnel daemon`: check the privileges and the config file (exit 2 through ConfigError if either
    falls short), then serve."""
    privilege.require(privilege.TUNNEL)
    initial = None
    if config_path is not None:
        initial = configuration.load_config(config_path)
        coalesce = coalesce and initial.coalesce
        batch = batch and initial.batch
        config_path = str(Path(config_path).resolve())
    listener = metrics.listen(metrics_address) if metrics_address is not None else None  # a port in use: exit 2
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            loop = runner.get_loop()
            return runner.run(Daemon(loop, config_path, coalesce, batch, esp_dir).serve(initial, listener))
    finally:
        if listener is not None:
            listener.close()  # a no-op once the exporter has closed it
