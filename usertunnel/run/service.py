"""Bring one tunnel up, run it until told to stop, and take it down again.

Two phases. `prepare` is synchronous and does everything that can be refused
(device name, underlay lookup, privilege, netlink configuration) before the
event loop starts: pyroute2's synchronous API runs an asyncio loop of its own
and must not be called from inside ours. `serve` is the event loop, which only
moves packets. From the moment the TUN device exists, a `finally` closes it,
which removes it: a refused configuration leaves nothing behind.

Before anything is created, `prepare` claims the tunnel's identity in the
network namespace (io.claim): a second process with the same table, local,
remote and ikey exits 2 with the holder's PID, as `ip tunnel add` says "File
exists". The receiving socket's filter (io.raw.ClaimFilter) is built from the
namespace's claims before the device exists; `ClaimWatch` keeps it in step.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field, replace
from typing import Any

from ..core import ipv6, sit, tables
from ..core.encap import Demux, Tunnel
from ..core.errors import ConfigError
from ..core.esp import IPPROTO_ESP
from ..core.keepalive import Change, LineProtocol
from ..core.params import TunnelParams
from ..front.request import UpOptions
from ..io import metrics, netlink, privilege, udp
from ..io.claim import Claims, Identity, claimed, identities, poke
from ..io.loop import Dataplane, Interface
from ..io.pcap import PcapNgWriter
from ..io.privilege import drop_to, lookup_user
from ..io.raw import ClaimFilter, open_icmp_listener, open_raw, open_raw6_receiver, open_raw6_sender
from ..io.tun import Tun
from .control import ControlServer, snapshot_of
from .observe import Observer

log = logging.getLogger("usertunnel")

IPV6_MIN_MTU = 1280
CLAIMS_REFRESH = 2.0  # seconds between re-readings of the namespace's claims (a process that died leaves them)
REFRESH_DELAY = 0.02  # seconds from a newcomer's poke to our new filter: its pokes to all our claims make one


def describe(params: TunnelParams, mtu: int) -> str:
    """One line for the log, in the words of `ip tunnel show`."""
    p = params
    parts = [f"mode {p.mode.value.name}"]
    parts.append(f"local {ipaddress.ip_address(p.local).compressed if p.local else 'any'}")
    parts.append(f"remote {ipaddress.ip_address(p.remote).compressed if p.remote else 'any'}")
    if p.ikey is not None and p.ikey == p.okey:
        parts.append(f"key {p.ikey}")
    else:
        if p.ikey is not None:
            parts.append(f"ikey {p.ikey}")
        if p.okey is not None:
            parts.append(f"okey {p.okey}")
    if p.mode.value.outer == 6:
        # `ip -6 tunnel show`'s words for an IPv6 outer header.
        parts.append(f"encaplimit {'none' if p.encaplimit is None else p.encaplimit}")
        parts.append(f"hoplimit {p.ttl if p.ttl is not None else 'inherit'}")
        parts.append(f"tclass {'inherit' if p.tos is None else format(p.tos, '#04x')}")
        parts.append(f"flowlabel {'inherit' if p.flowlabel is None else format(p.flowlabel, '#07x')}")
    else:
        parts.append(f"ttl {p.ttl if p.ttl is not None else 'inherit'}")
        parts.append(f"tos {'inherit' if p.tos is None else format(p.tos, '#04x')}")
        parts.append("pmtudisc" if p.pmtudisc else "nopmtudisc")
    if p.encap is not None:
        parts.append(p.encap.words())
    if p.esp is not None:
        out, into = p.esp.outbound, p.esp.inbound
        parts.append(f"esp {out.aead} spi out {out.spi:#x} in {into.spi:#x} replay-window {into.replay_window}")
    if p.sixrd is not None:
        r = p.sixrd
        parts.append(f"6rd-prefix {ipaddress.ip_address(r.prefix)}/{r.prefixlen}")
        parts.append(f"6rd-relay_prefix {ipaddress.ip_address(r.relay_prefix)}/{r.relay_prefixlen}")
    for entry in p.prl:
        parts.append(f"prl {ipaddress.ip_address(entry.address)}{'' if entry.default else ' (nodefault)'}")
    parts.extend(flag for flag in ("iseq", "oseq", "icsum", "ocsum") if getattr(p, flag))
    if p.iseq:
        parts.append(f"seq-policy {p.seq_policy.value}")
    if p.csum_verify != "full":
        parts.append(f"csum-verify {p.csum_verify}")
    if p.keepalive is not None:
        parts.append(f"keepalive {p.keepalive.period:g},{p.keepalive.retries}")
    if p.hub is not None:
        h = p.hub
        parts.append(f"hub (neighbors {len(h.neighbors)}, spokes {len(h.spokes)}, neighbor-timeout {h.timeout:g}s)")
    parts.append(f"mtu {mtu}")
    return " ".join(parts)


@dataclass
class Prepared:
    """A configured tunnel, ready to serve: its device exists and is up."""

    tunnel: Tunnel
    tun: Tun
    sock: socket.socket
    mtu: int
    observer: Observer | None = None
    device: str | None = None
    user: str | None = None
    receiver: socket.socket | None = None  # IPv6: the socket that receives (`sock` only sends)
    forwarding: bool = False  # the host routes packets on: coalescing checks every segment first
    batch: bool = True
    icmp: socket.socket | None = None  # sees "fragmentation needed" about our packets (path MTU)
    claims: Claims | None = None  # the identities this process serves in its namespace (io.claim)
    rx_filter: ClaimFilter | None = None  # the receiving socket's filter, from the namespace's claims
    metrics: socket.socket | None = None  # --metrics: the listening socket, bound before anything was created
    # FOU / GUE (io.udp): every UDP socket by local port (all read), and those we send from by source port.
    udp: dict[int, socket.socket] = field(default_factory=dict)
    udp_senders: dict[int, socket.socket] = field(default_factory=dict)

    def close(self) -> None:
        self.tun.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.claims is not None:
            self.claims.close()
        self.sock.close()
        for sock in self.udp.values():
            sock.close()
        if self.receiver is not None:
            self.receiver.close()
        if self.icmp is not None:
            self.icmp.close()
        if self.observer is not None:
            self.observer.close()


def prepare(options: UpOptions) -> Prepared:
    """Check, open and configure everything; on any failure undo what was done and raise ConfigError."""
    params = options.params
    # One line naming what is missing, before anything is created. FOU / GUE use UDP sockets: no CAP_NET_RAW.
    privilege.require(privilege.TUNNEL if params.encap is None else (privilege.NET_ADMIN,))
    if options.user is not None:
        lookup_user(options.user)  # refuse an unknown user before anything is created
    if "%" not in params.name and netlink.link_exists(params.name):
        raise ConfigError(f"device {params.name!r} already exists: choose another --name or remove it")
    if params.local is not None and not netlink.is_local_address(params.local):
        family = socket.AF_INET if len(params.local) == 4 else socket.AF_INET6
        raise ConfigError(
            f"local {socket.inet_ntop(family, params.local)} is not an address of this host: give --local one "
            "of the addresses `ip addr` lists here (packets sent from a foreign source are dropped by most networks)"
        )
    underlay = udp_reach(params, netlink.underlay_mtu(params.remote, options.device))
    mtu = tunnel_mtu(options, underlay)
    listener = metrics.listen(options.metrics) if options.metrics is not None else None  # a port in use: refused
    claims = Claims("usertunnel up")
    try:
        claims.hold(identities(params), params.name)  # refused (File exists) before anything is created
        prepared = _open(options, params, underlay, mtu, claims)
    except BaseException:
        claims.close()
        if listener is not None:
            listener.close()
        raise
    prepared.metrics = listener
    return prepared


def udp_reach(params: TunnelParams, underlay: int) -> int:
    """The underlay MTU as the tunnel's sockets can use it (io.udp.reach: FOU / GUE over IPv6 with the
    encapsulation limit option lose 8 bytes); the underlay's own otherwise."""
    if params.encap is None:
        return underlay
    return udp.reach(underlay, params.mode.value.outer == 6, params.encaplimit is not None)


def udp_options(params: TunnelParams, device: str | None) -> dict[str, object]:
    """How a FOU / GUE tunnel's sockets are opened (io.udp.open_udp): family, checksum, DF, device, and over
    IPv6 the encapsulation limit option every packet carries."""
    encap = params.encap
    assert encap is not None
    ipv6_outer = params.mode.value.outer == 6
    option = ipv6.encap_limit_option(params.encaplimit, 17) if ipv6_outer and params.encaplimit is not None else b""
    return {"csum": encap.csum, "pmtudisc": params.pmtudisc, "device": device, "ipv6": ipv6_outer, "option": option}


def _open_udp(options: UpOptions, params: TunnelParams) -> dict[int, socket.socket]:
    """FOU / GUE: the receive socket on encap-dport first, then the send sockets (encap-sport N, or
    AUTO_PORTS ports the kernel picks), by local port; every one is read (see io.udp)."""
    encap = params.encap
    assert encap is not None
    opened: dict[int, socket.socket] = {}
    try:
        kw = udp_options(params, options.device)
        opened[encap.dport] = udp.open_udp(encap.dport, params.local, **kw)  # type: ignore[arg-type]
        # auto: a few ports the kernel picks; a hub answers every spoke from the port it receives on.
        auto = [] if params.hub is not None else [0] * udp.AUTO_PORTS
        wanted = [encap.sport] if encap.sport is not None else auto
        for port in wanted:
            if port not in opened:
                sock = udp.open_udp(port, params.local, **kw)  # type: ignore[arg-type]
                opened[udp.port_of(sock)] = sock
    except BaseException:
        for sock in opened.values():
            sock.close()
        raise
    return opened


def _open(options: UpOptions, params: TunnelParams, underlay: int, mtu: int, claims: Claims) -> Prepared:
    if params.encap is not None:
        return _open_encap(options, params, underlay, mtu, claims)
    observer = _observer(options)
    receiver = None
    if params.mode.value.outer == 6:
        sock = open_raw6_sender(options.device)
        try:
            # vti6: what arrives is ESP (next header 50); the SPI finds the tunnel.
            protocol = IPPROTO_ESP if params.esp is not None else params.mode.value.ip_protocol
            receiver = open_raw6_receiver(protocol, options.device)
        except BaseException:
            sock.close()
            raise
    elif params.esp is not None:
        # IPsec: every packet of this tunnel, both ways, is ESP (IP protocol 50); the SPI finds the tunnel.
        sock = open_raw(IPPROTO_ESP, options.device)
    else:
        sock = open_raw(params.mode.value.ip_protocol, options.device)
    spec = params.mode.value
    try:
        rx_filter = None
        if params.esp is None:
            rx_filter = ClaimFilter(receiver or sock, spec.ip_protocol, lambda: claims.held, outer=spec.outer)
            rx_filter.update()
    except BaseException:
        sock.close()
        if receiver is not None:
            receiver.close()
        raise
    icmp = None
    if params.mode.value.outer == 4:
        try:
            icmp = open_icmp_listener(options.device)
        except BaseException:
            sock.close()
            raise
    try:
        tun, params = _device(options, params, mtu, claims)
    except BaseException:
        sock.close()
        if receiver is not None:
            receiver.close()
        if icmp is not None:
            icmp.close()
        if observer is not None:
            observer.close()
        raise
    tunnel = Tunnel(params, ident=random.getrandbits(16))
    tunnel.link_mtu = underlay
    tunnel.device_addresses = tuple(sit.DeviceAddress(a.ip.packed, a.network.prefixlen) for a in options.addresses
                                    if a.version == 6)  # fmt: skip
    poke(competitors(claims.held))
    return Prepared(
        tunnel, tun, sock, mtu, observer, options.device, options.user, receiver, forwarding(), options.batch, icmp,
        claims, rx_filter,
    )  # fmt: skip


def _device(options: UpOptions, params: TunnelParams, mtu: int, claims: Claims) -> tuple[Tun, TunnelParams]:
    """The TUN (TAP for gretap) device, configured (MTU, addresses, routes, up); the params with the name the
    kernel gave it. Closed again if configuring it fails."""
    ethernet = params.mode.value.ethernet
    tun = Tun(params.name, vnet_hdr=options.coalesce and not ethernet, tap=ethernet, multi_queue=options.queues > 1)
    try:
        if tun.name != params.name:  # a name pattern such as gre%d, resolved by the kernel
            params = replace(params, name=tun.name)
            claims.relabel(identities(params), tun.name)
        netlink.configure(
            tun.name, mtu, options.addresses, 6 in params.mode.value.families, options.routes, options.link_up
        )
    except BaseException:
        tun.close()
        raise
    return tun, params


def _open_encap(options: UpOptions, params: TunnelParams, underlay: int, mtu: int, claims: Claims) -> Prepared:
    """A FOU / GUE tunnel: UDP sockets instead of raw ones (no CAP_NET_RAW), then the device as for any."""
    encap = params.encap
    assert encap is not None
    sockets = _open_udp(options, params)
    try:
        tun, params = _device(options, params, mtu, claims)
    except BaseException:
        for sock in sockets.values():
            sock.close()
        raise
    tunnel = Tunnel(params, ident=random.getrandbits(16))
    tunnel.link_mtu = underlay
    if encap.sport is not None:
        senders = {encap.sport: sockets[encap.sport]}
    elif params.hub is not None:
        senders = {encap.dport: sockets[encap.dport]}
    else:
        senders = {port: sock for port, sock in sockets.items() if port != encap.dport}
    tunnel.source_ports = tuple(senders) if encap.sport is None and params.hub is None else ()
    return Prepared(tunnel, tun, sockets[encap.dport], mtu, None, options.device, options.user,
                    forwarding=forwarding(), batch=options.batch, claims=claims, udp=sockets,
                    udp_senders=senders)  # fmt: skip


def competitors(mine: Collection[Identity], claims: Collection[Identity] | None = None) -> list[Identity]:
    """The identities other processes claim on the raw sockets ours use: their holders rebuild their filters
    when we come (io.claim.poke); one that was alone there starts filtering at all."""
    if claims is None:
        claims = claimed()
    return [c for c in claims if c not in mine and any(_same_socket(c, m) for m in mine)]


def _same_socket(a: Identity, b: Identity) -> bool:
    """One raw socket per outer family and protocol: gretap's table shares gre's socket (core.tables)."""
    return tables.socket_table(a.table) == tables.socket_table(b.table)


class ClaimWatch:
    """Keeps receive filters in step with the namespace's claims: soon after a newcomer connects to one of our
    claims (io.claim.poke) or we claim or release one ourselves (`changed`), and every CLAIMS_REFRESH seconds
    (a process that died says nothing). Each refresh reads the claims once (/proc/net/unix: a daemon with
    thousands of tunnels makes it long, hence `delay`, which gathers changes in a row into one refresh)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        claims: Claims | None,
        filters: Callable[[], list[ClaimFilter]],
        delay: float = REFRESH_DELAY,
    ) -> None:
        self.loop = loop
        self.claims = claims
        self.filters = filters
        self.delay = delay
        self._taken: list[Identity] = []  # claimed since the last refresh: their competitors are poked then
        self._soon: asyncio.TimerHandle | None = None
        if claims is not None:
            claims.serve(loop, self.refresh)
        self.handle = loop.call_later(CLAIMS_REFRESH, self._tick)

    def changed(self, taken: Collection[Identity] = ()) -> None:
        """Our claims changed (`taken`: the new ones, whose competitors must hear of them)."""
        self._taken.extend(taken)
        self.refresh()

    def refresh(self) -> None:
        """Soon (once for any number of calls in a row): read the claims and rebuild the filters."""
        if self._soon is None:
            self._soon = self.loop.call_later(self.delay, self.refresh_now)

    def refresh_now(self) -> None:
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None
        found = self.filters()
        if not found and not self._taken:
            return
        now = claimed()
        for rx_filter in found:
            try:
                rx_filter.update(now)
            except OSError as exc:  # the socket is being closed: nothing to filter any more
                log.debug("receive filter not updated: %s", exc.strerror)
        if self._taken:
            poke(competitors(self._taken, now))
            self._taken.clear()

    def _tick(self) -> None:
        self.refresh_now()
        self.handle = self.loop.call_later(CLAIMS_REFRESH, self._tick)

    def cancel(self) -> None:
        self.handle.cancel()
        if self._soon is not None:
            self._soon.cancel()
        if self.claims is not None:
            self.claims.stop_serving()


def tunnel_mtu(options: UpOptions, underlay: int) -> int:
    """The device's MTU: --mtu, else the underlay's minus the overhead; ConfigError if out of range."""
    params = options.params
    fits = params.default_mtu(underlay)
    mtu = options.mtu if options.mtu is not None else fits
    if not 68 <= mtu <= 65535 - params.header_length:
        raise ConfigError(f"mtu {mtu} out of range: 68..{65535 - params.header_length}")
    carries_ipv6 = params.mode.value.families == {6} or any(a.version == 6 for a in options.addresses)
    if carries_ipv6 and mtu < IPV6_MIN_MTU:
        # RFC 8200 section 5: every IPv6 link carries 1280 bytes; Linux turns IPv6 off on a smaller device.
        raise ConfigError(
            f"mtu {mtu} is below IPv6's minimum of {IPV6_MIN_MTU}, and this tunnel carries IPv6: give --mtu "
            f"{IPV6_MIN_MTU} or more (the underlay then needs {IPV6_MIN_MTU + params.header_length}), or no IPv6"
        )
    if mtu > fits:
        log.warning(
            "%s: mtu %d does not fit the underlay (mtu %d less %d bytes of outer headers): larger packets will be "
            "fragmented or refused; the largest MTU that fits is %d",
            params.name, mtu, underlay, underlay - fits, fits,
        )  # fmt: skip
    return mtu


def forwarding() -> bool:
    """Does this host (network namespace) forward IPv4 or IPv6? Then received TCP segments may be routed on,
    and the kernel would give a coalesced packet fresh checksums when it splits it again: coalescing must
    check each segment's own checksum first (core.gro's `verify`)."""
    for path in ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"):
        try:
            with open(path) as f:
                if f.read().strip() != "0":
                    return True
        except OSError:
            return True
    return False


def _observer(options: UpOptions) -> Observer | None:
    """The --trace / --pcap observer, or None (the loop's fast path) when neither is asked for."""
    if not options.trace and options.pcap is None:
        return None
    pcap = None
    if options.pcap is not None:
        try:
            pcap = PcapNgWriter(options.pcap)
        except OSError as exc:
            raise ConfigError(f"cannot write pcap file {options.pcap!r}: {exc.strerror}") from None
    return Observer(_trace_line if options.trace else None, pcap)


def _trace_line(line: str) -> None:
    sys.stderr.write(f"trace: {line}\n")


def wire(dataplane: Dataplane, prepared: Prepared) -> None:
    """Hand a prepared tunnel's sockets and device to the data path (closed with it)."""
    encap = prepared.tunnel.params.encap
    if encap is not None:
        for sock in prepared.udp.values():
            dataplane.add_udp(sock, encap.kind, prepared.tunnel.params.mode.value.ip_protocol)
        dataplane.add_interface(
            udp_interface(prepared.tunnel, prepared.tun, prepared.sock, prepared.udp_senders, prepared.forwarding,
                          prepared.batch)
        )  # fmt: skip
        return
    if prepared.receiver is not None:
        table = tables.ESP6 if prepared.tunnel.params.esp is not None else prepared.tunnel.params.mode.value.table
        dataplane.add_socket(table, prepared.receiver)
        dataplane.add_sender(prepared.sock)
    elif prepared.tunnel.params.esp is not None:
        dataplane.add_esp(prepared.sock)
    else:
        dataplane.add_socket(prepared.tunnel.params.mode.value.table, prepared.sock)
    if prepared.icmp is not None:
        dataplane.add_icmp(prepared.icmp)
    iface = Interface(prepared.tunnel, prepared.tun, prepared.sock, verify_segments=prepared.forwarding)
    dataplane.add_interface(iface)


def udp_interface(
    tunnel: Tunnel, tun: Tun, receiver: socket.socket, senders: dict[int, socket.socket], forwarding: bool, batch: bool
) -> Interface:
    """The interface of a FOU / GUE tunnel (`up` and the daemon): it sends from `senders` (by source port)."""
    encap = tunnel.params.encap
    assert encap is not None
    iface = Interface(tunnel, tun, receiver, verify_segments=forwarding)
    iface.udp = dict(senders)
    iface.gso = batch and encap.csum  # UDP_SEGMENT needs the UDP checksum (the kernel refuses it off)
    return iface


DOWN = "down"  # the control request `usertunnel down NAME` sends


def down_handler(name: str, stop: asyncio.Event) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
    """The answer to `usertunnel down NAME`: stop as SIGTERM would (counters printed, device removed)."""

    async def down(message: dict[str, Any]) -> dict[str, Any]:
        log.info("%s: asked to stop (usertunnel down)", name)
        stop.set()
        return {"stopping": name, "pid": os.getpid()}

    return down


async def serve(prepared: Prepared) -> tuple[Demux, str | None]:
    """Move packets until SIGINT or SIGTERM (reason None) or until the data path cannot go on
    (the reason); return the demux with its counters and that reason."""
    loop = asyncio.get_running_loop()
    demux = Demux()
    dataplane = Dataplane(loop, demux, prepared.observer, batched=prepared.batch)
    stop = asyncio.Event()
    fatal: list[str] = []

    def on_fatal(reason: str) -> None:
        fatal.append(reason)
        stop.set()

    dataplane.on_fatal = on_fatal
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        wire(dataplane, prepared)
        tunnel, pid = prepared.tunnel, os.getpid()
        keepalives = _start_keepalives(loop, dataplane, prepared)
        sweeper = _start_sweeper(loop, prepared)
        watch = ClaimWatch(loop, prepared.claims, lambda: [f for f in (prepared.rx_filter,) if f is not None])
        # Started before the readiness line, so whoever waits for "up" can query at once.
        control = await ControlServer.start(
            prepared.tun.name,
            lambda: [_snapshot(tunnel, demux, prepared, pid)],
            commands={DOWN: down_handler(prepared.tun.name, stop)},
        )
        exporter = await metrics.start(
            prepared.metrics, lambda: metrics.Scrape([metrics.sample(tunnel, prepared.mtu)], demux.unmatched),
            prepared.tun.name,
        )  # fmt: skip
        prepared.metrics = None  # the exporter closes it
        try:
            if prepared.user is not None:
                # Everything privileged is done: TUN, raw socket, netlink, control socket.
                log.info("%s: %s", prepared.tun.name, drop_to(prepared.user))
            log.info("%s: up %s", prepared.tun.name, describe(prepared.tunnel.params, prepared.mtu))
            await stop.wait()
            if fatal:
                log.error("%s: %s; stopping", prepared.tun.name, fatal[0])
            else:
                log.info("%s: stopping", prepared.tun.name)
        finally:
            if keepalives is not None:
                keepalives.cancel()
            if sweeper is not None:
                sweeper.cancel()
            watch.cancel()
            await control.close()
            if exporter is not None:
                await exporter.close()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        dataplane.close()
    return demux, (fatal[0] if fatal else None)


def keepalive_fields(tunnel: Tunnel) -> dict[str, Any]:
    """What a tunnel counts besides its Counters: peers' keepalives reflected (read from the raw socket
    and sent back) and, with --keepalive, the line protocol (whose replies were read from it too);
    a hub's neighbor counters."""
    fields: dict[str, Any] = {"keepalives_reflected": tunnel.reflected}
    if tunnel.line is not None:
        fields["keepalive"] = tunnel.line.as_dict()
    if tunnel.hub is not None:
        fields["hub"] = tunnel.hub.counters.as_dict()
    if tunnel.params.iseq and tunnel.hub is None:
        fields["sequence"] = tunnel.iseq_window.as_dict()
    keys = tunnel.params.esp
    if keys is not None and tunnel.sealer is not None and tunnel.opener is not None:
        # IPsec: each security association's public half (never its key) and where its sequence numbers are.
        out, into = keys.outbound, keys.inbound
        fields["esp"] = {
            "out": {"spi": out.spi, "aead": out.aead, "icv": out.icv_bits, "esn": out.esn, "seq": tunnel.sealer.seq},
            "in": {
                "spi": into.spi,
                "aead": into.aead,
                "icv": into.icv_bits,
                "esn": into.esn,
                "replay_window": into.replay_window,
                "highest": tunnel.opener.highest,
            },
        }
    return fields


def _snapshot(tunnel: Tunnel, demux: Demux, prepared: Prepared, pid: int) -> dict[str, Any]:
    snap = snapshot_of(tunnel.params, tunnel.counters, demux.unmatched, prepared.mtu, pid, prepared.device)
    snap |= keepalive_fields(tunnel)
    if tunnel.hub is not None:
        snap["neighbors"] = tunnel.hub.as_list(time.monotonic())
    return snap


class Keepalives:
    """Sends a keepalive every PERIOD and follows the line protocol (core.keepalive) on the TUN carrier."""

    def __init__(self, loop: asyncio.AbstractEventLoop, prepared: Prepared, line: LineProtocol) -> None:
        self.loop = loop
        self.prepared = prepared
        self.line = line
        remote = prepared.tunnel.params.remote
        assert remote is not None
        self.destination = (socket.inet_ntoa(remote), 0)
        self.handle = loop.call_soon(self.send)

    def send(self) -> None:
        p = self.prepared
        packet = p.tunnel.keepalive_request()
        encap = p.tunnel.params.encap
        try:
            if encap is None:
                p.sock.sendto(packet, self.destination)
            else:  # FOU / GUE: what follows the outer IPv4 and UDP headers, from the source port the core chose
                sock = p.udp_senders.get((packet[20] << 8) | packet[21], p.sock)
                ancillary = udp.outer_ancillary(packet[1], packet[8])
                sock.sendmsg([packet[28:]], ancillary, 0, (self.destination[0], encap.dport))
        except OSError as exc:
            log.debug("%s: keepalive not sent: %s", p.tun.name, exc.strerror)
        else:
            if p.observer is not None:
                state = "up" if self.line.up else "down"
                p.observer.sent(packet, f"keepalive to {self.destination[0]} (line protocol {state})")
        if self.line.sending() is Change.DOWN:
            p.tun.set_carrier(False)
            log.warning(
                "%s: line protocol down: %d keepalives unanswered (period %gs, retries %d); carrier off",
                p.tun.name, self.line.missed, self.line.params.period, self.line.params.retries,
            )  # fmt: skip
        self.handle = self.loop.call_later(self.line.params.period, self.send)

    def reply(self, tunnel: Tunnel) -> None:
        if tunnel is self.prepared.tunnel and self.line.reply() is Change.UP:
            # The peer may have restarted while the line was down: --seq-policy resync starts afresh.
            tunnel.iseq_window.restart()
            self.prepared.tun.set_carrier(True)
            log.warning("%s: line protocol up: keepalive reply received; carrier on", self.prepared.tun.name)

    def cancel(self) -> None:
        self.handle.cancel()


def _start_keepalives(loop: asyncio.AbstractEventLoop, dataplane: Dataplane, prepared: Prepared) -> Keepalives | None:
    line = prepared.tunnel.line
    if line is None:
        return None
    keepalives = Keepalives(loop, prepared, line)
    dataplane.on_keepalive_reply = keepalives.reply
    return keepalives


class Sweeper:
    """A hub forgets spokes silent past --neighbor-timeout even when nobody sends to them (bounded memory)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, prepared: Prepared) -> None:
        assert prepared.tunnel.hub is not None
        self.loop = loop
        self.name = prepared.tun.name
        self.table = prepared.tunnel.hub
        self.interval = min(self.table.params.timeout / 4, 30.0)
        self.handle = loop.call_later(self.interval, self.sweep)

    def sweep(self) -> None:
        forgotten = self.table.expire(time.monotonic())
        if forgotten:
            log.info("%s: forgot %d spoke(s) silent for over %gs", self.name, forgotten, self.table.params.timeout)
        self.handle = self.loop.call_later(self.interval, self.sweep)

    def cancel(self) -> None:
        self.handle.cancel()


def _start_sweeper(loop: asyncio.AbstractEventLoop, prepared: Prepared) -> Sweeper | None:
    return Sweeper(loop, prepared) if prepared.tunnel.hub is not None else None


def log_stats(demux: Demux) -> None:
    """The counters, one JSON object per tunnel (and one for packets no tunnel owns)."""
    for tunnel in demux.tunnels():
        stats = tunnel.counters.as_dict() | keepalive_fields(tunnel)
        log.info("%s: stats %s", tunnel.name, json.dumps(stats, sort_keys=True))
    log.info("unmatched: stats %s", json.dumps(demux.unmatched.as_dict(), sort_keys=True))


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed, asyncio's own loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def up(options: UpOptions) -> int:
    """`usertunnel up` with one queue: prepare, serve until a signal, clean up. Returns the exit status.
    (`--queues N` is `run.workers.up_queues`, which builds on this module.)"""
    prepared = prepare(options)
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            demux, fatal = runner.run(serve(prepared))
        log_stats(demux)
    finally:
        prepared.close()
    return 1 if fatal else 0
