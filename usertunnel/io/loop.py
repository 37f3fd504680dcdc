"""The event loop: TUN -> encapsulate -> raw socket, and raw socket -> decapsulate -> TUN.

Theory of operation: each file descriptor is watched by the asyncio loop
(uvloop when installed). When one becomes readable we drain up to `BATCH`
packets in one callback, so a busy tunnel pays the loop's wake-up cost once
per batch, not once per packet. Every failure of a single packet (a send
error, an ICMP error surfacing on the raw socket, a full TUN queue) is counted
and the loop goes on; nothing here may stop the tunnel.

Latency: a quiet tunnel (a ping, a request and its answer) gets one packet
per wakeup, and everything done between that packet's wakeup and its send is
latency, the more so as a process that slept starts with cold caches. So a
wakeup that comes more than `BUSY_GAP` after the descriptor's previous one
ended is taken as quiet: it moves one packet with the plainest calls there
are (os.read and sendmsg, recv_into and write) and returns, without the
batch machinery, a coalescing attempt, or a read that finds the queue empty.
Nothing is lost by stopping after one packet: the loop watches descriptors
level-triggered (uvloop's add_reader, like asyncio's), so if more is queued
it calls back at once, and a wakeup that comes that soon after the previous
one is taken as busy: it drains the queue in batches (recvmmsg, sendmmsg,
coalescing) as a loaded tunnel needs. benchmarks/latency.py measures it;
benchmarks/RESULTS.md says where a hop's time goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..core import ipv4
from ..core.drops import Drop
from ..core.encap import Demux, Held, KeepaliveReply, Received, Reflect, Result, Tunnel
from ..core.fou import EncapKind, gue_header
from ..core.gro import coalesce
from ..core.tables import ESP, over_ipv6, protocol_of
from .batch import RecvBatch, SendBatch, Slots
from .tun import VIRTIO_NET_HDR_F_NEEDS_CSUM, VNET_HDR_LEN, VNET_NONE, Tun, complete_checksum
from .udp import ANCILLARY as UDP_ANCILLARY
from .udp import outer_ancillary, parse_ancillary

log = logging.getLogger("usertunnel")

BATCH = 64
# A wakeup that comes within this many seconds of the end of the previous one for the same descriptor finds
# a queue (the level-triggered loop called back at once) and drains it in batches; a later one moves one
# packet (see the module's docstring). Well above a loop iteration (a few µs), well below the gaps of
# request-response traffic (a ping answered through two tunnel ends: 100 µs and more).
BUSY_GAP = 50e-6
RECV_ROUNDS = 4  # recvmmsg calls per wakeup at most (BATCH packets each), so TUN reads get their turn
RECV_BUFFER = 65536
# Room for IPV6_PKTINFO (struct in6_pktinfo, 20 bytes) and IPV6_TCLASS (an int), with their headers.
_ANCILLARY6 = socket.CMSG_SPACE(20) + socket.CMSG_SPACE(4)

UDP_SEGMENT = 103  # SOL_UDP: the size of each datagram a larger send is cut into (linux/udp.h)
_GSO_SEGMENTS = 64  # datagrams per UDP_SEGMENT send (the kernel's UDP_MAX_SEGMENTS is 64 or more)
_GSO_BYTES = 65000  # and their bytes, under the 64 KiB a UDP send can hold

_SEND_ERRORS = {
    errno.ENOBUFS: Drop.SEND_NOBUFS,
    errno.EAGAIN: Drop.SEND_NOBUFS,
    errno.EMSGSIZE: Drop.SEND_MSGSIZE,
    errno.ECONNREFUSED: Drop.ICMP_ERROR,
    errno.ENOPROTOOPT: Drop.ICMP_ERROR,
    errno.EHOSTUNREACH: Drop.ICMP_ERROR,
    errno.ENETUNREACH: Drop.ICMP_ERROR,
}


class Observer(Protocol):
    """What `--trace` and `--pcap` are told, when (and only when) either is on: `run.observe.Observer` is the
    one implementation; the loop knows only these calls (io imports nothing above io)."""

    def tx(self, tunnel: Tunnel, inner: bytes, result: bytes | Drop, send_error: Drop | None) -> None: ...
    def sent(self, packet: bytes | bytearray | memoryview, what: str) -> None: ...
    def released(self, inner: bytes) -> None: ...
    def rx6(self, protocol: int, src: bytes, dst: bytes, payload: memoryview, result: Result) -> None: ...
    def rx_context(self, demux: Demux, packet: memoryview) -> object | None: ...
    def rx(self, packet: memoryview, context: Any, result: Result, write_error: Drop | None) -> None: ...
    def close(self) -> None: ...


@dataclass(eq=False)
class Interface:
    """A tunnel bound to its TUN device and the raw socket of its protocol."""

    tunnel: Tunnel
    tun: Tun
    sock: socket.socket
    destination: tuple[str, int] = field(init=False)
    # IPv4 outer: packets read in one wakeup leave in one sendmmsg call.
    batch: SendBatch | None = field(init=False, default=None)
    # Receive coalescing (core.gro) when the TUN has a vnet header; `verify` checks each segment's own
    # TCP checksum first, needed when the host forwards what it receives (see `Dataplane`).
    verify_segments: bool = False
    # When the last wakeup of the TUN device ended (time.monotonic()): see BUSY_GAP.
    left: float = 0.0
    # A read from the TUN device into a buffer, one read(2) and no object made (None when nothing is queued).
    readinto: Callable[[memoryview], int | None] = field(init=False)
    # FOU / GUE (io.udp): the send sockets by source port, and where the peer listens; empty: raw IP.
    udp: dict[int, socket.socket] = field(default_factory=dict)
    udp_destination: tuple[str, int] = ("0.0.0.0", 0)
    # FOU / GUE with the UDP checksum on: a busy wakeup sends runs of equal-sized datagrams with UDP_SEGMENT
    # (the kernel cuts them; it refuses to for sockets without checksums). Off: one sendmsg per packet.
    gso: bool = False
    udp_v6: bool = False  # the outer header is IPv6
    udp_at: int = 20  # where the UDP header starts in what the core built (after the outer IP header)

    def __post_init__(self) -> None:
        self.readinto = io.FileIO(self.tun.fd, closefd=False).readinto
        params = self.tunnel.params
        encap = params.encap
        if encap is not None:
            self.udp_v6 = params.mode.value.outer == 6
            family = socket.AF_INET6 if self.udp_v6 else socket.AF_INET
            if params.remote is not None:
                self.udp_destination = (socket.inet_ntop(family, params.remote), encap.dport)
            if self.udp_v6:  # the UDP header follows the IPv6 header and the encapsulation limit option
                self.udp_at = 40 + (8 if params.encaplimit is not None else 0)
        remote = self.tunnel.params.remote
        if self.tunnel.params.mode.value.outer == 6:
            self.destination = (socket.inet_ntop(socket.AF_INET6, remote) if remote else "::", 0)
        else:
            self.destination = (socket.inet_ntoa(remote) if remote else "0.0.0.0", 0)

    def write(self, packet: bytes | bytearray | memoryview) -> None:
        """Write one received inner packet into TUN, as it is; a failure is counted."""
        try:
            self.tun.write(packet)
        except OSError as exc:
            self.tunnel.counters.rx_failed(len(packet), tun_write_drop(exc))

    def write_many(self, packets: list[bytes | bytearray | memoryview]) -> None:
        """Write received inner packets into TUN: coalesced TCP segments go in as one GSO packet each."""
        if len(packets) == 1:  # nothing to coalesce
            self.write(packets[0])
            return
        fd = self.tun.fd
        if not self.tun.vnet_hdr:
            for packet in packets:
                try:
                    os.write(fd, packet)
                except OSError as exc:
                    self.tunnel.counters.rx_failed(len(packet), tun_write_drop(exc))
            return
        for packet in packets:  # only TCP segments merge: a batch without one skips the coalescing pass
            if (packet[9] if packet[0] >> 4 == 4 else packet[6]) == 6:
                break
        else:
            for packet in packets:
                try:
                    os.writev(fd, (VNET_NONE, packet))
                except OSError as exc:
                    self.tunnel.counters.rx_failed(len(packet), tun_write_drop(exc))
            return
        for item in coalesce(packets, VNET_HDR_LEN, self.verify_segments):
            try:
                os.writev(fd, (item.vnet, *item.parts))
            except OSError as exc:
                self.tunnel.counters.rx_failed(item.length, tun_write_drop(exc), item.segments)


def _udp_key(iface: Interface, header: bytes) -> tuple[int, bytes, int, int]:
    """What a FOU / GUE datagram is sent with, from the header the core built: its source port, where it
    goes when that changes per packet (a hub: address and port, else empty), its outer TOS and TTL."""
    at = iface.udp_at
    sport = (header[at] << 8) | header[at + 1]
    if iface.udp_v6:
        return sport, b"", ((header[0] & 0x0F) << 4) | (header[1] >> 4), header[7]
    where = header[16:20] + header[22:24] if iface.tunnel.dynamic_destination else b""
    return sport, where, header[1], header[8]


def tun_write_drop(exc: OSError) -> Drop:
    """Why writing into TUN failed: EIO is a device that is down (not yet `ip link set up`, or set down)."""
    return Drop.TUN_DOWN if exc.errno == errno.EIO else Drop.TUN_WRITE_ERROR


def _tun_packet(slot: memoryview, n: int, skip: int) -> memoryview | None:
    """The IP packet of a TUN read of `n` bytes into `slot`: after the virtio_net_hdr (`skip` bytes, 0 without
    one), a partial checksum completed should the header ask for it; None for a read shorter than the header."""
    if skip:
        if n < skip:
            return None
        if slot[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM:
            complete_checksum(slot, slot[skip:n])
    return slot[skip:n]


class Dataplane:
    """Wires interfaces and raw sockets to an event loop."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, demux: Demux, observer: Observer | None = None, batched: bool = True
    ) -> None:
        self.loop = loop
        # recvmmsg / sendmmsg on raw IPv4 sockets (io.batch); off, one system call per packet.
        self.batched = batched
        self.demux = demux
        # --trace / --pcap. Without them the per-packet cost is one `is None` test on a local.
        self.observer = observer
        # Called with the tunnel when one of our keepalives comes back (set by the service).
        self.on_keepalive_reply: Callable[[Tunnel], None] | None = None
        # Called with a sentence when the data path cannot go on (the TUN device vanished).
        self.on_fatal: Callable[[str], None] | None = None
        # If set, called instead of `on_fatal` with the interface whose TUN device vanished: a daemon
        # with many tunnels removes that one and goes on.
        self.on_tun_gone: Callable[[Interface, str], None] | None = None
        self.interfaces: dict[Tunnel, Interface] = {}
        # The raw sockets that receive, by table (core.tables): a mode's table, or the one gretap shares with
        # gre, or ESP's (which every --esp-keys tunnel reads).
        self.sockets: dict[int, socket.socket] = {}
        # The raw ICMP socket that hears "fragmentation needed" (add_icmp), when there is one.
        self.icmp: socket.socket | None = None
        self._buffer = bytearray(RECV_BUFFER)
        self._view = memoryview(self._buffer)
        self._expiry: asyncio.TimerHandle | None = None  # rfc2890 policy: the OUTOFORDER_TIMER
        self._senders: list[socket.socket] = []
        self._udp: list[socket.socket] = []  # FOU / GUE sockets (io.udp), read and closed with the rest
        self._recv_batches: dict[socket.socket, RecvBatch] = {}
        # When the last wakeup of each raw socket (IPv4, batched) ended: see BUSY_GAP.
        self._left: dict[socket.socket, float] = {}
        self._buffers6: list[bytearray] | None = None  # the IPv6 receive path's, one per packet of a wakeup
        # What a busy TUN wakeup reads into, vnet header and packet (one slot per packet of the batch, shared by
        # every interface: a wakeup sends its batch before it returns).
        self._tx_slots: Slots | None = None
        self._one_slot = memoryview(bytearray(RECV_BUFFER))  # what a quiet TUN wakeup reads its packet into
        self._exhausted_said: set[Tunnel] = set()  # tunnels whose ESP sequence numbers ran out (said once)

    def add_socket(self, table: int, sock: socket.socket) -> None:
        """Read the outer packets of table `table` (core.tables: a `ModeSpec.table`, or `tables.ESP6`) from
        `sock`, a raw IPv4 or IPv6 socket (as the table says)."""
        self.sockets[table] = sock
        if over_ipv6(table):
            self.loop.add_reader(sock.fileno(), self._on_raw6_readable, sock, protocol_of(table))
        else:
            self.loop.add_reader(sock.fileno(), self._on_raw_readable, sock)

    def remove_socket(self, table: int) -> None:
        """Stop reading the raw socket of `table` (the caller closes it)."""
        sock = self.sockets.pop(table, None)
        if sock is not None:
            self.loop.remove_reader(sock.fileno())
            self._recv_batches.pop(sock, None)
            self._left.pop(sock, None)

    def add_udp(self, sock: socket.socket, kind: EncapKind, protocol: int) -> None:
        """Read FOU or GUE datagrams from `sock` (io.udp); with FOU, they carry `protocol` (47, 4, 41)."""
        self._udp.append(sock)
        self.loop.add_reader(sock.fileno(), self._on_udp_readable, sock, kind, protocol)

    def remove_udp(self, sock: socket.socket) -> None:
        """Stop reading a FOU / GUE socket and close it (a daemon's port nobody uses any more)."""
        if sock in self._udp:
            self._udp.remove(sock)
            self.loop.remove_reader(sock.fileno())
        sock.close()

    def add_sender(self, sock: socket.socket) -> None:
        """A socket that only sends (IPv6's IPPROTO_RAW): closed with the rest."""
        self._senders.append(sock)

    def add_esp(self, sock: socket.socket) -> None:
        """Read ESP packets (IPv4, protocol 50) from `sock`, a raw socket, for the tunnels with --esp-keys."""
        self.sockets[ESP] = sock
        self.loop.add_reader(sock.fileno(), self._on_esp_readable, sock)

    def _on_esp_readable(self, sock: socket.socket) -> None:
        """ESP packets: opened and decided by the core, written into TUN. Batched (recvmmsg, then one
        coalesced write per run, core.gro) as the other IPv4 raw sockets are, or one at a time."""
        demux = self.demux
        now = time.monotonic()
        if self.batched:
            batch = self._recv_batches.get(sock)
            if batch is None:
                batch = self._recv_batches[sock] = RecvBatch(sock, BATCH, RECV_BUFFER)
            self._on_raw_batch(sock, batch, now, esp=True)
            return
        for _ in range(BATCH):
            try:
                n = sock.recv_into(self._buffer)
            except BlockingIOError:
                break
            except OSError:  # as in _on_raw_readable: never let an ICMP error stop the socket
                demux.unmatched.drop(Drop.ICMP_ERROR)
                continue
            received = demux.decapsulate_esp(self._view[:n], now)
            if isinstance(received, (KeepaliveReply, Reflect)):
                self._keepalive(sock, received)
            else:
                self._hand_over(sock, received)
        if demux.holding:
            self._arm_expiry()

    def _exhausted(self, tunnel: Tunnel) -> None:
        """The outbound security association has sent its last sequence number (RFC 4303 3.3.3): said once;
        every packet after it is counted as esp_seq_exhausted."""
        if tunnel not in self._exhausted_said:
            self._exhausted_said.add(tunnel)
            log.error(
                "%s: ESP sequence numbers exhausted: nothing more can be sent with these keys (manual keys cannot "
                "be rekeyed by the protocol); give new keys (a daemon: reload) or restart both ends",
                tunnel.name,
            )

    def add_interface(self, iface: Interface) -> None:
        # FOU/GUE: one sendmsg per packet (with its TOS and TTL) for now.
        if self.batched and not iface.udp:
            iface.batch = SendBatch(iface.sock, BATCH)
        self.demux.add(iface.tunnel)
        self.interfaces[iface.tunnel] = iface
        self.loop.add_reader(iface.tun.fd, self._on_tun_readable, iface)

    def remove_interface(self, tunnel: Tunnel) -> Interface | None:
        """Stop moving `tunnel`'s packets; the others' go on. Its TUN device stays open (the caller closes
        it, or gives it to the tunnel's next version); packets its reorder buffer held are dropped."""
        iface = self.interfaces.pop(tunnel, None)
        if iface is None:
            return None
        if iface.tun.fd >= 0:
            self.loop.remove_reader(iface.tun.fd)
        self.demux.remove(tunnel)
        for window, owner in list(self.demux.holding.items()):
            if owner is tunnel:
                del self.demux.holding[window]
        return iface

    def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        for iface in self.interfaces.values():
            if iface.tun.fd >= 0:
                self.loop.remove_reader(iface.tun.fd)
            iface.tun.close()
        for sock in [*self.sockets.values(), *([self.icmp] if self.icmp is not None else [])]:
            self.loop.remove_reader(sock.fileno())
            sock.close()
        for sock in self._senders:
            sock.close()
        for sock in self._udp:
            self.loop.remove_reader(sock.fileno())
            sock.close()
        self._udp.clear()
        self.interfaces.clear()
        self.sockets.clear()
        self.icmp = None
        self._senders.clear()

    def _on_tun_readable(self, iface: Interface) -> None:
        now = time.monotonic()
        if now - iface.left > BUSY_GAP:  # quiet: one packet, sent at once
            self._tun_one(iface, now)
        elif iface.gso:  # FOU / GUE with UDP checksums: equal-sized datagrams leave in one sendmsg each run
            self._tun_batch_udp(iface, now)
        elif iface.batch is None or self.observer is not None:  # per-packet I/O; --trace/--pcap see each send
            for _ in range(BATCH):
                if not self._tun_one(iface, now):
                    break
        else:
            self._tun_batch(iface, iface.batch, now)
        iface.left = time.monotonic()

    def _tun_one(self, iface: Interface, now: float) -> bool:
        """Read one packet from TUN, encapsulate it and send it by itself (sendmsg); False if there was none."""
        slot = self._one_slot
        try:
            n = iface.readinto(slot)
        except OSError as exc:
            self._tun_failed(iface, exc)
            return False
        if n is None:  # nothing queued (EAGAIN)
            return False
        inner = _tun_packet(slot, n, VNET_HDR_LEN if iface.tun.vnet_hdr else 0)
        if inner is None:
            return True
        tunnel = iface.tunnel
        seen = inner
        if tunnel.sealer is not None:  # IPsec: the whole packet sealed in ESP (core.esp), sent as one piece
            header = tunnel.encapsulate(inner, now)
            inner = memoryview(b"")
        else:
            plan = tunnel.tx_plan  # core.plan: this tunnel's own code for the ordinary packet; None: the specification
            planned = plan(inner) if plan is not None else None
            header = planned if planned is not None else tunnel.encapsulate_header(inner, now)
        error = None
        if header is Drop.FRAG_NEEDED:
            self._too_big(iface, seen)
        elif header is Drop.ESP_SEQ_EXHAUSTED:
            self._exhausted(tunnel)
        elif not isinstance(header, Drop):
            if iface.udp:
                error = self._send_udp(iface, header, inner)
            elif len(header) + len(inner) > tunnel.link_mtu:
                self._send_fragments(iface, header + bytes(inner))  # no DF (--nopmtudisc): cut it, as the kernel
                return True
            else:
                # A hub (--remote any) sends each packet to the spoke its neighbor table picks, sit any to the
                # address in the IPv6 destination: the outer destination is then per packet, bytes 16..20.
                dynamic = tunnel.dynamic_destination
                destination = (socket.inet_ntoa(header[16:20]), 0) if dynamic else iface.destination
                try:
                    iface.sock.sendmsg((header, inner), (), 0, destination)
                except OSError as exc:
                    error = _SEND_ERRORS.get(exc.errno or 0, Drop.SEND_ERROR)
                    tunnel.counters.tx_failed(len(seen), error)
        if self.observer is not None:
            self.observer.tx(tunnel, bytes(seen), header, error)
        return True

    def _tun_batch(self, iface: Interface, batch: SendBatch, now: float) -> None:
        """Drain TUN (up to BATCH packets) into the preallocated slots, encapsulate, send all in one sendmmsg."""
        tunnel = iface.tunnel
        dynamic = tunnel.dynamic_destination  # a hub, or sit --remote any (6to4, 6rd, ISATAP): see _tun_one
        remote = tunnel.params.remote or bytes(4 if tunnel.params.mode.value.outer == 4 else 16)
        link_mtu = tunnel.link_mtu
        plan = tunnel.tx_plan  # see _tun_one
        sealed = tunnel.sealer is not None  # IPsec: each packet whole, sealed in ESP (no plan)
        add_at = batch.add_at
        slots = self._tx_slots
        if slots is None:
            slots = self._tx_slots = Slots(BATCH, RECV_BUFFER)
        views, addresses = slots.views, slots.addresses
        readinto = iface.readinto
        skip = VNET_HDR_LEN if iface.tun.vnet_hdr else 0  # the virtio_net_hdr in front of each packet read
        lengths: list[int] = []
        for _ in range(BATCH):
            i = batch.pending
            slot = views[i]
            try:
                n = readinto(slot)
            except OSError as exc:
                self._tun_failed(iface, exc)
                break
            if n is None:  # the queue is empty (EAGAIN)
                break
            inner = _tun_packet(slot, n, skip)
            if inner is None:
                continue
            n -= skip
            if sealed:
                packet = tunnel.encapsulate(inner, now)
                if isinstance(packet, Drop):
                    if packet is Drop.FRAG_NEEDED:
                        self._too_big(iface, inner)
                    elif packet is Drop.ESP_SEQ_EXHAUSTED:
                        self._exhausted(tunnel)
                elif len(packet) > link_mtu:
                    self._send_fragments(iface, packet)  # no DF (vti copies the inner one): cut it, as the kernel
                else:
                    add_at(packet, 0, 0, remote)  # the whole packet is the "header"; nothing from the slot
                    lengths.append(n)
                continue
            if plan is not None:
                planned = plan(inner)
                if planned is not None:  # it fits: no fragments, no ICMP
                    add_at(planned, addresses[i] + skip, n, remote)
                    lengths.append(n)
                    continue
            header = tunnel.encapsulate_header(inner, now)
            if isinstance(header, Drop):
                if header is Drop.FRAG_NEEDED:
                    self._too_big(iface, inner)
            elif len(header) + n > link_mtu:
                self._send_fragments(iface, header + bytes(inner))  # no DF (--nopmtudisc): cut it, as the kernel
            else:
                add_at(header, addresses[i] + skip, n, header[16:20] if dynamic else remote)
                lengths.append(n)
        if batch.pending:
            try:
                batch.flush()
            except OSError:
                batch.failed = [(i, 0) for i in range(len(lengths))]
            for index, code in batch.failed:
                tunnel.counters.tx_failed(lengths[index], _SEND_ERRORS.get(code, Drop.SEND_ERROR))

    def _tun_batch_udp(self, iface: Interface, now: float) -> None:
        """FOU / GUE, busy: drain TUN (up to BATCH packets), encapsulate each, and send each run of datagrams
        that share a source port, TOS and TTL and have the size of the run's first (the last may be shorter)
        in one sendmsg with UDP_SEGMENT: one trip through the kernel's UDP and IP layers per run."""
        tunnel = iface.tunnel
        plan = tunnel.tx_plan
        slots = self._tx_slots
        if slots is None:
            slots = self._tx_slots = Slots(BATCH, RECV_BUFFER)
        views = slots.views
        readinto = iface.readinto
        skip = VNET_HDR_LEN if iface.tun.vnet_hdr else 0
        run: list[bytes | memoryview] = []  # header, inner, header, inner, ...
        run_key: tuple[int, bytes, int, int] | None = None
        run_size = run_bytes = 0
        run_open = False  # the run may take more (its last datagram is not shorter than the first)
        for i in range(BATCH):
            slot = views[i]
            try:
                n = readinto(slot)
            except OSError as exc:
                self._tun_failed(iface, exc)
                break
            if n is None:
                break
            inner = _tun_packet(slot, n, skip)
            if inner is None:
                continue
            planned = plan(inner) if plan is not None else None  # core.plan, else the specification
            header = planned if planned is not None else tunnel.encapsulate_header(inner, now)
            if isinstance(header, Drop):
                if header is Drop.FRAG_NEEDED:
                    self._too_big(iface, inner)
                continue
            at = iface.udp_at
            payload = header[at + 8 :]
            size = len(payload) + len(inner)
            key = _udp_key(iface, header)
            if run and (not run_open or key != run_key or size > run_size or run_bytes + size > _GSO_BYTES
                        or len(run) >= 2 * _GSO_SEGMENTS):  # fmt: skip
                self._send_run(iface, run, run_key, run_size)
                run = []
            if not run:
                run_key, run_size, run_bytes, run_open = key, size, 0, True
            run.append(payload)
            run.append(inner)
            run_bytes += size
            run_open = size == run_size
        if run:
            self._send_run(iface, run, run_key, run_size)

    def _send_run(
        self, iface: Interface, run: list[bytes | memoryview], key: tuple[int, bytes, int, int] | None, size: int
    ) -> None:
        """One sendmsg for a run of datagrams (`_tun_batch_udp`): with UDP_SEGMENT when there are several."""
        assert key is not None
        sport, where, tos, ttl = key
        count = len(run) // 2
        sock = iface.udp.get(sport)
        destination = iface.udp_destination
        if where:  # a hub: the spoke's address and port, as the core chose them
            destination = (socket.inet_ntoa(where[:4]), (where[4] << 8) | where[5])
        ancillary = outer_ancillary(tos, ttl, iface.udp_v6)
        if count > 1:
            ancillary.append((socket.SOL_UDP, UDP_SEGMENT, size.to_bytes(2, sys.byteorder)))
        error = None
        if sock is None:
            error = Drop.SEND_ERROR
        else:
            try:
                sock.sendmsg(run, ancillary, 0, destination)
            except OSError as exc:
                error = _SEND_ERRORS.get(exc.errno or 0, Drop.SEND_ERROR)
        if error is not None:
            counters = iface.tunnel.counters
            for inner in run[1::2]:
                counters.tx_failed(len(inner), error)

    def _send_udp(self, iface: Interface, header: bytes, inner: bytes | bytearray | memoryview) -> Drop | None:
        """FOU / GUE: what follows the outer IPv4 and UDP headers the core built, sent from the socket of the
        source port it chose, with its TOS and TTL; the kernel builds those two headers the same way."""
        sport, where, tos, ttl = _udp_key(iface, header)
        sock = iface.udp.get(sport)
        if sock is None:  # a port the shell did not bind: cannot happen while source_ports is kept
            iface.tunnel.counters.tx_failed(len(inner), Drop.SEND_ERROR)
            return Drop.SEND_ERROR
        destination = iface.udp_destination
        if where:  # a hub: the spoke's address and port, as the core chose them
            destination = (socket.inet_ntoa(where[:4]), (where[4] << 8) | where[5])
        try:
            payload = header[iface.udp_at + 8 :]
            sock.sendmsg((payload, inner), outer_ancillary(tos, ttl, iface.udp_v6), 0, destination)
        except OSError as exc:
            error = _SEND_ERRORS.get(exc.errno or 0, Drop.SEND_ERROR)
            iface.tunnel.counters.tx_failed(len(inner), error)
            return error
        return None

    def _collect(self, out: dict[Interface, list[bytes | bytearray | memoryview]], received: Received) -> None:
        """An accepted packet (and any a reorder buffer released after it) for its interface's write at the end."""
        iface = self.interfaces.get(received.tunnel)
        if iface is not None:
            out.setdefault(iface, []).append(received.inner)
            if received.then:
                out[iface].extend(received.then)

    def _datagrams(self, sock: socket.socket, room: int) -> Iterator[tuple[memoryview, Any, Any]]:
        """What a wakeup finds on a datagram socket (IPv6 raw, FOU / GUE), up to BATCH, each in its own buffer
        (what the core accepts is written once at the end), with its ancillary data and sender. An error on
        the socket (ICMP it reports) is counted and skipped: the socket stays watched."""
        if self._buffers6 is None:
            self._buffers6 = [bytearray(RECV_BUFFER) for _ in range(BATCH)]
        for buffer in self._buffers6:
            try:
                n, ancillary, _flags, address = sock.recvmsg_into((buffer,), room)
            except BlockingIOError:
                return
            except OSError:
                self.demux.unmatched.drop(Drop.ICMP_ERROR)
                continue
            yield memoryview(buffer)[:n], ancillary, address

    def _on_udp_readable(self, sock: socket.socket, kind: EncapKind, protocol: int) -> None:
        """FOU / GUE datagrams: the UDP payload, with the outer destination and TOS as ancillary data and
        the source as the sender's address; decided as the IPv6 path decides, coalesced into TUN at the end."""
        demux = self.demux
        now = time.monotonic()
        out: dict[Interface, list[bytes | bytearray | memoryview]] = {}
        for view, ancillary, address in self._datagrams(sock, UDP_ANCILLARY):
            n = len(view)
            dst, tos, segment = parse_ancillary(ancillary)
            if len(address) == 4:  # an IPv6 sender (address, port, flow info, scope)
                src = socket.inet_pton(socket.AF_INET6, address[0].partition("%")[0])
            else:
                src = socket.inet_aton(address[0])
            # UDP_GRO: the kernel joined datagrams of one flow, each `segment` bytes (the last may be shorter).
            addresses = src + dst
            for start in range(0, n, segment or n or 1):
                datagram = view[start : start + segment] if segment else view
                planned = demux.planned_udp(datagram, addresses, tos) if demux.udp_fast else None
                if planned is not None:  # core.plan: the tunnel's own code took it
                    iface = self.interfaces.get(planned[0])
                    if iface is not None:
                        out.setdefault(iface, []).append(planned[1])
                    continue
                received = demux.decapsulate_udp(kind, protocol, src, dst, tos, datagram, now, address[1])
                if isinstance(received, Reflect):
                    # A peer's keepalive: its inner GRE packet goes back in UDP, from the port it came to, to the
                    # address and port it came from (what the peer's NAT maps), as the peer would route it.
                    packet = received.packet
                    payload = bytes(packet[(packet[0] & 0x0F) << 2 :])
                    if kind is EncapKind.GUE:
                        payload = gue_header(47) + payload
                    try:
                        sock.sendto(payload, address)
                    except OSError as exc:
                        received.tunnel.counters.drop(_SEND_ERRORS.get(exc.errno or 0, Drop.SEND_ERROR))
                    continue
                if isinstance(received, KeepaliveReply):  # one of ours, come back
                    self._keepalive(sock, received)
                    continue
                if isinstance(received, Received):
                    self._collect(out, received)
                else:
                    self._hand_over(sock, received)  # --trace and --pcap are refused with --encap (for now)
        for iface, inners in out.items():
            iface.write_many(inners)
        if demux.holding:
            self._arm_expiry()

    def _send_fragments(self, iface: Interface, packet: bytes) -> None:
        """An outer IPv4 packet without DF, larger than the underlay link: send it as fragments (RFC 791),
        which a raw socket will not make for us."""
        tunnel = iface.tunnel
        destination = (socket.inet_ntoa(packet[16:20]), 0)
        try:
            for piece in ipv4.fragment(packet, tunnel.link_mtu):
                iface.sock.sendto(piece, destination)
        except (OSError, ValueError) as exc:
            code = exc.errno if isinstance(exc, OSError) else None
            tunnel.counters.tx_failed(len(packet), _SEND_ERRORS.get(code or 0, Drop.SEND_ERROR))

    def _too_big(self, iface: Interface, inner: bytes | bytearray | memoryview) -> None:
        """Tell the inner sender the path MTU (ICMP fragmentation needed / packet too big, into TUN)."""
        reply = iface.tunnel.too_big(inner)
        if reply is not None:
            with contextlib.suppress(OSError):
                iface.tun.write(reply)

    def add_icmp(self, sock: socket.socket) -> None:
        """Watch a raw ICMP socket that sees "fragmentation needed" errors (io.raw.open_icmp_listener)."""
        self.icmp = sock
        self.loop.add_reader(sock.fileno(), self._on_icmp_readable, sock)

    def _on_icmp_readable(self, sock: socket.socket) -> None:
        """An ICMP "fragmentation needed" quoting one of our outer packets sets its tunnel's path MTU
        (RFC 1191, the kernel's ipgre_err / ipip_err); the tunnel then answers inner packets that no
        longer fit (`_too_big`)."""
        now = time.monotonic()
        for _ in range(BATCH):
            try:
                data = sock.recv(1024)
            except OSError:
                return
            ihl = (data[0] & 0x0F) << 2 if data else 0
            if len(data) < ihl + 8 + 20 or data[ihl] != 3 or data[ihl + 1] != 4:
                continue
            quoted = data[ihl + 8 :]
            if quoted[9] in (4, 41, 47):
                mtu = (data[ihl + 6] << 8) | data[ihl + 7]
                self._path_mtu(bytes(quoted[16:20]), mtu, now)

    def _path_mtu(self, remote: bytes, mtu: int, now: float) -> None:
        for tunnel in self.interfaces:
            if tunnel.params.remote == remote and tunnel.update_path_mtu(mtu, now):
                inner_mtu = mtu - tunnel.params.header_length
                log.info(
                    "%s: path MTU to %s is %d (ICMP fragmentation needed); inner packets over %d get ICMP back",
                    tunnel.name, socket.inet_ntoa(remote), tunnel.path_mtu, inner_mtu,
                )  # fmt: skip

    def _tun_failed(self, iface: Interface, exc: OSError) -> None:
        """A read from the TUN device failed. EBADFD: the device was deleted (ip link del) under us;
        the descriptor is dead for good, so stop watching it and say so."""
        if exc.errno in (errno.EBADFD, errno.ENODEV, errno.EIO):
            self.loop.remove_reader(iface.tun.fd)
            reason = f"the TUN device {iface.tun.name} was removed from outside ({exc.strerror})"
            if self.on_tun_gone is not None:
                self.on_tun_gone(iface, reason)
            elif self.on_fatal is not None:
                self.on_fatal(reason)
        else:
            iface.tunnel.counters.drop(Drop.TUN_READ_ERROR)

    def _on_raw_batch(self, sock: socket.socket, batch: RecvBatch, now: float, esp: bool = False) -> None:
        """The IPv4 receive path of a busy socket without --trace/--pcap: recvmmsg, decapsulate, then one
        write per tunnel and coalesced run (core.gro) instead of one per packet. `esp`: ESP's socket, whose
        packets are opened first (Demux.decapsulate_esp, which runs the tunnels' plans itself)."""
        demux = self.demux
        interfaces = self.interfaces
        decapsulate = demux.decapsulate_esp if esp else demux.decapsulate
        for _ in range(RECV_ROUNDS):
            packets = batch.recv()
            if batch.errors:  # errors queued on the socket (none are expected: no IP_RECVERR, not connected)
                demux.unmatched.drops[Drop.ICMP_ERROR] = demux.unmatched.drops.get(Drop.ICMP_ERROR, 0) + batch.errors
                batch.errors = 0
            if not packets:
                break
            out: dict[Interface, list[bytes | bytearray | memoryview]] = {}
            single = demux.single if not esp else None
            if single is not None:
                # One tunnel with a receive plan (core.plan): tried on every packet, then the specification.
                rx = single.rx_plan
                assert rx is not None
                iface = interfaces.get(single)
                if iface is not None:
                    inners = out[iface] = []
                    for packet in packets:
                        inner = rx(packet)
                        if inner is not None:
                            inners.append(inner)
                        else:
                            self._received(sock, decapsulate(packet, now), out)
                    for iface, inners in out.items():
                        iface.write_many(inners)
                    if len(packets) < batch.count:
                        break
                    continue
            planned = demux.planned if demux.fast and not esp else None
            for packet in packets:
                if planned is not None:
                    hit = planned(packet)
                    if hit is not None:
                        iface = interfaces.get(hit[0])
                        if iface is not None:
                            found = out.get(iface)
                            if found is None:
                                found = out[iface] = []
                            found.append(hit[1])
                        continue
                self._received(sock, decapsulate(packet, now), out)
            for iface, inners in out.items():
                iface.write_many(inners)
            if len(packets) < batch.count:
                break
        if demux.holding:
            self._arm_expiry()

    def _received(
        self, sock: socket.socket, received: Result, out: dict[Interface, list[bytes | bytearray | memoryview]]
    ) -> None:
        """What the specification made of a packet of a batch: inner packets to `out`, keepalives answered."""
        if isinstance(received, Received):
            iface = self.interfaces.get(received.tunnel)
            if iface is not None:
                inners = out.get(iface)
                if inners is None:
                    inners = out[iface] = []
                inners.append(received.inner)
                if received.then:
                    inners.extend(received.then)
        elif isinstance(received, Held):
            iface = self.interfaces.get(received.tunnel)
            if iface is not None and received.released:
                out.setdefault(iface, []).extend(received.released)
        elif isinstance(received, (KeepaliveReply, Reflect)):
            self._keepalive(sock, received)

    def _on_raw_one(self, sock: socket.socket, now: float) -> None:
        """One packet of a quiet raw socket (see BUSY_GAP): recv_into, decapsulate, written into TUN as it is."""
        demux = self.demux
        try:
            n = sock.recv_into(self._buffer)
        except BlockingIOError:
            return
        except OSError:  # as RecvBatch.errors
            demux.unmatched.drop(Drop.ICMP_ERROR)
            return
        packet = self._view[:n]
        single = demux.single  # one tunnel with a receive plan: called at once, as in `_on_raw_batch`
        if single is not None:
            inner = single.rx_plan(packet)  # type: ignore[misc]  # the single one has a plan
            if inner is not None:
                iface = self.interfaces.get(single)
                if iface is not None:
                    iface.write(inner)
                return
        elif demux.fast:
            hit = demux.planned(packet)
            if hit is not None:
                iface = self.interfaces.get(hit[0])
                if iface is not None:
                    iface.write(hit[1])
                return
        received = demux.decapsulate(packet, now)
        if isinstance(received, Received):
            iface = self.interfaces.get(received.tunnel)
            if iface is not None:
                iface.write(received.inner)
                if received.then:
                    self._deliver(received.tunnel, received.then)
        elif isinstance(received, Held):
            if received.released:
                self._deliver(received.tunnel, received.released)
        elif isinstance(received, (KeepaliveReply, Reflect)):
            self._keepalive(sock, received)
        if demux.holding:
            self._arm_expiry()

    def _on_raw_readable(self, sock: socket.socket) -> None:
        if self.observer is None and self.batched:
            now = time.monotonic()
            if now - self._left.get(sock, 0.0) > BUSY_GAP:
                self._on_raw_one(sock, now)
            else:
                batch = self._recv_batches.get(sock)
                if batch is None:
                    batch = self._recv_batches[sock] = RecvBatch(sock, BATCH, RECV_BUFFER)
                self._on_raw_batch(sock, batch, now)
            self._left[sock] = time.monotonic()
            return
        view = self._view
        demux = self.demux
        interfaces = self.interfaces
        observer = self.observer
        context = None
        now = time.monotonic()
        for _ in range(BATCH):
            try:
                n = sock.recv_into(self._buffer)
            except BlockingIOError:
                break
            except OSError:
                # An ICMP error from the underlay (only queued with IP_RECVERR or a
                # connected socket, neither of which we use, but never let it stop us).
                demux.unmatched.drop(Drop.ICMP_ERROR)
                continue
            packet = view[:n]
            if observer is not None:
                context = observer.rx_context(demux, packet)
            received = demux.decapsulate(packet, now)
            error = None
            if isinstance(received, Received):
                iface = interfaces.get(received.tunnel)
                if iface is not None:
                    try:
                        iface.tun.write(received.inner)
                    except OSError as exc:
                        error = tun_write_drop(exc)
                        received.tunnel.counters.rx_failed(len(received.inner), error)
            elif isinstance(received, (KeepaliveReply, Reflect)):
                self._keepalive(sock, received)
            if observer is not None:
                observer.rx(packet, context, received, error)
            # rfc2890 policy: packets a reorder buffer released go in after the one that freed them.
            if isinstance(received, Received):
                if received.then:
                    self._deliver(received.tunnel, received.then)
            elif isinstance(received, Held) and received.released:
                self._deliver(received.tunnel, received.released)
        if demux.holding:
            self._arm_expiry()

    def _on_raw6_readable(self, sock: socket.socket, protocol: int) -> None:
        """The receive path over IPv6: the payload comes without its IPv6 header; the destination and
        traffic class come as ancillary data, the source as the sender's address. Each packet of a wakeup
        gets its own buffer, so what the core accepted is written once at the end, coalesced (core.gro)."""
        demux = self.demux
        observer = self.observer
        now = time.monotonic()
        out: dict[Interface, list[bytes | bytearray | memoryview]] = {}
        for payload, ancillary, address in self._datagrams(sock, _ANCILLARY6):
            dst = b""
            tclass = 0
            for level, kind, data in ancillary:
                if level == socket.IPPROTO_IPV6:
                    if kind == socket.IPV6_PKTINFO:
                        dst = data[:16]
                    elif kind == socket.IPV6_TCLASS:
                        tclass = int.from_bytes(data[:4], sys.byteorder)
            src = socket.inet_pton(socket.AF_INET6, address[0].partition("%")[0])
            received = demux.decapsulate6(protocol, src, dst, tclass, payload, now)
            if observer is not None:
                self._hand_over(sock, received)
                observer.rx6(protocol, src, dst, payload, received)
            elif isinstance(received, Received):
                self._collect(out, received)
            else:
                self._hand_over(sock, received)
        for iface, inners in out.items():
            iface.write_many(inners)
        if demux.holding:
            self._arm_expiry()

    def _hand_over(self, sock: socket.socket, received: Result) -> None:
        """Write what the core accepted into TUN (IPv6 path; the IPv4 path inlines this for speed)."""
        if isinstance(received, Received):
            iface = self.interfaces.get(received.tunnel)
            if iface is not None:
                try:
                    iface.tun.write(received.inner)
                except OSError as exc:
                    received.tunnel.counters.rx_failed(len(received.inner), tun_write_drop(exc))
            if received.then:
                self._deliver(received.tunnel, received.then)
        elif isinstance(received, Held) and received.released:
            self._deliver(received.tunnel, received.released)

    def _deliver(self, tunnel: Tunnel, packets: Sequence[bytes]) -> None:
        """Write packets a reorder buffer released (rfc2890 policy) into the tunnel's TUN device."""
        iface = self.interfaces.get(tunnel)
        if iface is None:
            return
        for inner in packets:
            try:
                iface.tun.write(inner)
            except OSError as exc:
                tunnel.counters.rx_failed(len(inner), tun_write_drop(exc))
            if self.observer is not None:
                self.observer.released(inner)

    def _arm_expiry(self) -> None:
        """Run `_expire` when the earliest reorder-buffer deadline comes (once; re-armed as needed)."""
        deadline = self.demux.deadline()
        if deadline is None or self._expiry is not None:
            return
        self._expiry = self.loop.call_later(max(0.0, deadline - time.monotonic()), self._expire)

    def _expire(self) -> None:
        self._expiry = None
        for tunnel, packets in self.demux.expire(time.monotonic()):
            self._deliver(tunnel, packets)
        if self.demux.holding:
            self._arm_expiry()

    def _keepalive(self, sock: socket.socket, result: KeepaliveReply | Reflect) -> None:
        if isinstance(result, Reflect):
            # A peer's keepalive: its inner packet goes straight back, as a Cisco router would route it.
            destination = socket.inet_ntoa(bytes(result.packet[16:20]))
            try:
                sock.sendto(result.packet, (destination, 0))
            except OSError as exc:
                result.tunnel.counters.drop(_SEND_ERRORS.get(exc.errno or 0, Drop.SEND_ERROR))
            else:
                if self.observer is not None:
                    self.observer.sent(result.packet, f"reflected a keepalive back to {destination}")
        elif self.on_keepalive_reply is not None:
            self.on_keepalive_reply(result.tunnel)
