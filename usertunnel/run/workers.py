"""`usertunnel up --queues N`: N worker processes over one multi-queue TUN device, receive sharded by flow.

Rules for this file: it only arranges processes and descriptors around the
pieces one tunnel already uses (service.prepare, io.loop.Dataplane); it never
looks inside a packet. Everything that can be refused is refused before
anything is created.

Theory of operation. The parent prepares the tunnel as `usertunnel up` does
(checks, raw socket, netlink, addresses), except that the TUN device is
created with IFF_MULTI_QUEUE; it then attaches N-1 more queues to it and
opens N-1 more raw sockets (and path MTU listeners: each worker learns the
path MTU for itself from its own copy of every ICMP "fragmentation needed").
Every raw socket of a protocol receives a copy of every packet, so socket i
gets a classic BPF filter that keeps only the packets whose inner flow hashes
to i (io.raw.shard_filter: a symmetric hash of the inner addresses and ports
at the tunnel's fixed header offsets; what it cannot hash goes to worker 0),
so that each packet is handled by exactly one worker; the filter first keeps
only this tunnel's packets among those of other processes of the namespace
(io.raw.receive_filter: the tunnel test, then the shard). The parent claims the
tunnel's identity once (io.claim) and answers for it; when a newcomer pokes
it, it tells each worker to rebuild its filter, and each worker re-reads the
claims every few seconds too (a process that died says nothing). Then it forks N workers
before any event loop exists. Worker i runs a Dataplane over queue i and
socket i: it decapsulates its share of the flows and writes them into its
queue, and encapsulates what the kernel hands to its queue. The kernel sends
each flow out through one queue (the queue that last wrote a packet of that
flow, else one picked by the flow's hash: io.tun), so each flow is read by one
worker, in order, both ways. What is received by one worker and sent by
another needs no agreement between them: no state is shared.

What cannot be shared between processes is refused (exit 2, one line):
sequence numbers (--seq, --iseq, --oseq: one numbered stream per direction), a
hub or any other --remote any (the neighbor table is learned from received
packets and needed for sending), --trace and --pcap (one packet order), IPv6
outer modes and gretap (their shard filters are not written yet: other
header layouts), and our own --keepalive (the keepalive timer and the line
protocol would have to live in one worker; they are not wired there yet).
Peers' keepalives are reflected: they carry no TCP or UDP inside, so worker 0
receives and reflects them.

The parent supervises: it serves the control socket (`usertunnel show` /
`stats`), answering with the sum of every worker's counters, which it asks
each worker for over a socket pair at each query, and with each worker's own
counters under "workers" (index, pid, stats, unmatched); it logs the ready
line once every worker is ready. SIGINT or SIGTERM to the parent stops every
worker (SIGTERM), then the parent closes the device (removing it) and logs
each worker's final counters ("NAME worker I: stats {...}") and their sum
("NAME: stats {...}", "unmatched: stats {...}", as one process would). A
worker that ends on its own (killed, or its data path failed) makes the
parent stop the others and exit 1. A worker whose parent dies gets SIGTERM
(PR_SET_PDEATHSIG), so nothing outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import random
import signal
import socket
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

from ..core.drops import Drop
from ..core.encap import Counters, Demux
from ..core.errors import ConfigError
from ..core.gre import FLAG_CSUM, FLAG_KEY, PROTO_IPV4, PROTO_IPV6
from ..core.params import TunnelParams
from ..front.request import UpOptions
from ..io import metrics
from ..io.claim import claimed, identities
from ..io.loop import Dataplane
from ..io.privilege import drop_to
from ..io.raw import OUTER_HEADER, ClaimFilter, ShardLayout, open_icmp_listener, open_raw
from ..io.tun import Tun
from .control import ControlServer, snapshot_of
from .service import DOWN, ClaimWatch, Prepared, describe, down_handler, new_event_loop, prepare, wire

log = logging.getLogger("usertunnel")

ASK_TIMEOUT = 2.0  # seconds a worker has to answer the parent's request for its counters
STOP_TIMEOUT = 5.0  # seconds the workers have to exit after SIGTERM before SIGKILL
MESSAGE_LIMIT = 1 << 16  # bytes: a worker's counters as one JSON message
_PR_SET_PDEATHSIG = 1


def check(options: UpOptions) -> None:
    """Refuse what N processes cannot share (see the module docstring), before anything is created."""
    p = options.params
    spec = p.mode.value
    n = options.queues
    if spec.outer == 6 or spec.ethernet:
        raise ConfigError(
            f"--queues {n}: mode {spec.name} is not sharded over workers yet; --queues supports gre, ipip and sit "
            "over IPv4: use --queues 1"
        )
    if p.iseq or p.oseq:
        raise ConfigError(
            f"--queues {n}: sequence numbers (--seq, --iseq, --oseq) are one numbered stream each way, which "
            "separate workers cannot share: use --queues 1"
        )
    if p.remote is None:
        raise ConfigError(
            f"--queues {n} needs a fixed --remote: with --remote any, the addresses learned from received packets "
            "are needed for sending, by another worker: use --queues 1"
        )
    if p.keepalive is not None:
        raise ConfigError(f"--queues {n}: --keepalive runs in one process only: use --queues 1 (peers' keepalives "
                          "are reflected with --queues too)")  # fmt: skip
    if options.trace or options.pcap is not None:
        raise ConfigError(f"--queues {n}: --trace and --pcap follow packets in one process: use --queues 1")


def shard_layout(params: TunnelParams) -> ShardLayout:
    """The header layout of what the peer sends us (our input flags: the peer's output ones)."""
    spec = params.mode.value
    if not spec.is_gre:
        return ShardLayout(OUTER_HEADER, ((min(spec.families), None),))
    flags = (FLAG_CSUM if params.icsum else 0) | (FLAG_KEY if params.ikey is not None else 0)
    length = 4 + 4 * bin(flags).count("1")
    words = ((4, flags << 16 | PROTO_IPV4), (6, flags << 16 | PROTO_IPV6))
    return ShardLayout(OUTER_HEADER + length, tuple(w for w in words if w[0] in spec.families))


# --- the parent ----------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Worker:
    """The parent's view of one worker: its process and the parent's end of their socket pair."""

    index: int
    pid: int
    channel: socket.socket
    ready: bool = False
    error: str | None = None  # a ConfigError the worker met before it was ready
    final: dict[str, Any] | None = None  # its counters, sent as it exits
    ended: bool = False
    status: int | None = None  # exit status once reaped

    def messages(self) -> list[dict[str, Any]]:
        """What the worker has sent (non-blocking); `ended` once it has gone (end of file)."""
        found: list[dict[str, Any]] = []
        while not self.ended:
            try:
                data = self.channel.recv(MESSAGE_LIMIT)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                self.ended = True
                break
            found.append(self._note(json.loads(data)))
        return found

    def _note(self, message: dict[str, Any]) -> dict[str, Any]:
        if message.get("ready"):
            self.ready = True
        if "error" in message:
            self.error = str(message["error"])
        if "final" in message:
            self.final = message["final"]
        return message

    def ask(self) -> dict[str, Any]:
        """The worker's counters now (blocking, bounded by ASK_TIMEOUT)."""
        self.channel.settimeout(ASK_TIMEOUT)
        try:
            self.channel.send(b'{"cmd": "stats"}')
            while True:
                data = self.channel.recv(MESSAGE_LIMIT)
                if not data:
                    self.ended = True
                    raise ConfigError(f"worker {self.index} (pid {self.pid}) has ended")
                message = self._note(json.loads(data))
                if "stats" in message:
                    return dict(message["stats"])
        finally:
            self.channel.setblocking(False)

    def reap(self) -> int:
        if self.status is None:
            _, wait_status = os.waitpid(self.pid, 0)
            self.status = os.waitstatus_to_exitcode(wait_status)
        return self.status

    def signal(self, signum: int) -> None:
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)


def _how_it_ended(worker: _Worker) -> str:
    status = worker.reap()
    if status < 0:
        return f"killed by {signal.Signals(-status).name}"
    return f"exited with status {status}"


def up_queues(options: UpOptions) -> int:
    """`usertunnel up --queues N`: prepare, fork the workers, supervise until a signal; the exit status."""
    check(options)
    count = options.queues
    prepared = prepare(options)
    params = prepared.tunnel.params
    queues: list[Tun] = [prepared.tun]
    sockets: list[socket.socket] = [prepared.sock]
    icmps: list[socket.socket | None] = [prepared.icmp]
    workers: list[_Worker] = []
    try:
        for _ in range(1, count):
            queues.append(prepared.tun.queue())
            sockets.append(open_raw(params.mode.value.ip_protocol, options.device))
            icmps.append(open_icmp_listener(options.device))
        layout = shard_layout(params)
        held = frozenset(identities(params))  # the parent's claims (a worker's copy of them is closed)
        now = claimed()
        protocol = params.mode.value.ip_protocol
        filters = [ClaimFilter(sock, protocol, lambda: held, (layout, i, count)) for i, sock in enumerate(sockets)]
        for rx_filter in filters:
            rx_filter.update(now)  # race-free: this tunnel's packets (io.claim) AND this worker's share
        parent = os.getpid()
        for index in range(count):
            workers.append(_fork(index, count, prepared, queues, sockets, filters, icmps, workers, parent))
        for any_sock in [*sockets, *icmps]:  # the workers have theirs; the parent keeps the queues (the device)
            if any_sock is not None:
                any_sock.close()
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            failure = runner.run(_supervise(prepared, workers))
        _stop_all(workers)
        for queue in queues:
            queue.close()  # the last queue closed removes the device
        _log_final(params.name, workers)
        return 1 if failure or any(worker.status != 0 for worker in workers) else 0
    finally:
        _stop_all(workers)
        for any_sock in [*sockets, *icmps]:
            if any_sock is not None:
                any_sock.close()
        for queue in queues:
            queue.close()
        if prepared.observer is not None:
            prepared.observer.close()
        if prepared.claims is not None:
            prepared.claims.close()
        if prepared.metrics is not None:
            prepared.metrics.close()


def _stop_all(workers: list[_Worker]) -> None:
    """SIGTERM every worker still running, SIGKILL what is left after STOP_TIMEOUT; reap them all."""
    for worker in workers:
        worker.signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for worker in workers:
        while worker.status is None:
            pid, wait_status = os.waitpid(worker.pid, os.WNOHANG)
            if pid:
                worker.status = os.waitstatus_to_exitcode(wait_status)
            elif time.monotonic() > deadline:
                worker.signal(signal.SIGKILL)
                worker.reap()
            else:
                time.sleep(0.01)
        worker.channel.close()


async def _supervise(prepared: Prepared, workers: list[_Worker]) -> str | None:
    """Serve the control socket and watch the workers until a signal (None) or until one ends (the reason)."""
    loop = asyncio.get_running_loop()
    name = prepared.tun.name
    stop = asyncio.Event()
    ready = asyncio.Event()
    failure: list[str] = []
    stopping = False

    def on_message(worker: _Worker) -> None:
        worker.messages()
        if worker.ended:
            loop.remove_reader(worker.channel.fileno())
            if not stopping and not failure:
                if worker.error is not None:
                    failure.append(worker.error)
                else:
                    failure.append(f"worker {worker.index} (pid {worker.pid}) {_how_it_ended(worker)}")
                stop.set()
        if all(w.ready for w in workers):
            ready.set()
        if all(w.ended for w in workers):
            ended.set()

    ended = asyncio.Event()
    for worker in workers:
        worker.channel.setblocking(False)
        loop.add_reader(worker.channel.fileno(), on_message, worker)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    control = None
    exporter = None

    def on_poke() -> None:  # a newcomer claimed an identity: each worker rebuilds its filter (it holds the socket)
        for worker in workers:
            if not worker.ended:
                _send(worker.channel, {"cmd": "claims"})

    if prepared.claims is not None:
        prepared.claims.serve(loop, on_poke)
    try:
        control = await ControlServer.start(
            name, lambda: [_summed_snapshot(prepared, workers)], commands={DOWN: down_handler(name, stop)}
        )
        exporter = await metrics.start(prepared.metrics, lambda: _summed_scrape(prepared, workers), name)
        prepared.metrics = None  # the exporter closes it
        if prepared.user is not None:
            log.info("%s: %s", name, drop_to(prepared.user))
        waiting = asyncio.ensure_future(ready.wait())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait((waiting, stopped), return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if ready.is_set() and not stop.is_set():
            log.info("%s: up %s queues %d", name, describe(prepared.tunnel.params, prepared.mtu), len(workers))
        await stopped
        stopping = True
        if failure and all(w.error is None for w in workers):
            log.error("%s: %s; stopping every worker", name, failure[0])
        elif not failure:
            log.info("%s: stopping", name)
        for worker in workers:
            if not worker.ended:
                worker.signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ended.wait(), STOP_TIMEOUT)
    finally:
        if prepared.claims is not None:
            prepared.claims.stop_serving()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        for worker in workers:
            if not worker.ended:
                loop.remove_reader(worker.channel.fileno())
        if control is not None:
            await control.close()
        if exporter is not None:
            await exporter.close()
    errors = [w.error for w in workers if w.error is not None]
    if errors:
        raise ConfigError(errors[0])
    return failure[0] if failure else None


def _sum(reports: list[dict[str, Any]]) -> Counters:
    """One Counters holding the sum of several `Counters.as_dict()`."""
    total = Counters()
    for report in reports:
        total.tx_packets += report["tx_packets"]
        total.tx_bytes += report["tx_bytes"]
        total.rx_packets += report["rx_packets"]
        total.rx_bytes += report["rx_bytes"]
        for reason, n in report["drops"].items():
            drop = Drop(reason)
            total.drops[drop] = total.drops.get(drop, 0) + n
    return total


def _fill_counts(counters: dict[str, Any]) -> dict[str, Any]:
    """A worker's unmatched counts, which carry drops only, with zero packets and bytes for `_sum`."""
    return {"tx_packets": 0, "tx_bytes": 0, "rx_packets": 0, "rx_bytes": 0} | counters


def _summed_snapshot(prepared: Prepared, workers: list[_Worker]) -> dict[str, Any]:
    """The control socket's answer: the tunnel with every worker's counters summed, and each worker's own."""
    reports = [worker.ask() for worker in workers]
    return _summed(prepared, reports, os.getpid())


def _summed_scrape(prepared: Prepared, workers: list[_Worker]) -> metrics.Scrape:
    """What --metrics serves: the tunnel with every worker's counters summed, as `stats` answers (each
    worker learns the path MTU for itself, so none is reported)."""
    reports = [worker.ask() for worker in workers]
    counters = _sum([r["stats"] for r in reports])
    unmatched = _sum([_fill_counts(r["unmatched"]) for r in reports])
    reflected = sum(r["keepalives_reflected"] for r in reports)
    sample = metrics.TunnelSample(prepared.tunnel.params, counters, prepared.mtu, None, reflected)
    return metrics.Scrape([sample], unmatched)


def _summed(prepared: Prepared, reports: list[dict[str, Any]], pid: int) -> dict[str, Any]:
    counters = _sum([r["stats"] for r in reports])
    unmatched = _sum([_fill_counts(r["unmatched"]) for r in reports])
    snap = snapshot_of(prepared.tunnel.params, counters, unmatched, prepared.mtu, pid, prepared.device)
    snap["keepalives_reflected"] = sum(r["keepalives_reflected"] for r in reports)
    snap["workers"] = reports
    return snap


def _log_final(name: str, workers: list[_Worker]) -> None:
    """Each worker's counters at exit, then their sum in the lines one process logs (service.log_stats)."""
    reports = [w.final for w in workers if w.final is not None]
    for report in reports:
        line = report["stats"] | {"pid": report["pid"], "keepalives_reflected": report["keepalives_reflected"]}
        log.info("%s worker %d: stats %s", name, report["index"], json.dumps(line, sort_keys=True))
    for worker in workers:
        if worker.final is None:
            log.warning("%s worker %d (pid %d): no counters (it did not exit cleanly)", name, worker.index, worker.pid)
    total = _sum([r["stats"] for r in reports]).as_dict()
    total["keepalives_reflected"] = sum(r["keepalives_reflected"] for r in reports)
    log.info("%s: stats %s", name, json.dumps(total, sort_keys=True))
    unmatched = _sum([_fill_counts(r["unmatched"]) for r in reports]).as_dict()
    log.info("unmatched: stats %s", json.dumps(unmatched, sort_keys=True))


# --- a worker ------------------------------------------------------------------------------------------------


def _fork(
    index: int,
    count: int,
    prepared: Prepared,
    queues: list[Tun],
    sockets: list[socket.socket],
    filters: list[ClaimFilter],
    icmps: list[socket.socket | None],
    earlier: list[_Worker],
    parent: int,
) -> _Worker:
    """Start worker `index`; in the child, never return: run the worker and exit."""
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid:
        child_end.close()
        return _Worker(index, pid, parent_end)
    status = 1
    try:
        # Only this worker's descriptors stay open: a worker holding another's end of a socket pair would
        # hide that worker's end from the parent.
        parent_end.close()
        for worker in earlier:
            worker.channel.close()
        for i in range(count):
            if i != index:
                queues[i].close()
                sockets[i].close()
                icmp = icmps[i]
                if icmp is not None:
                    icmp.close()
        if prepared.metrics is not None:  # the parent serves them
            prepared.metrics.close()
        if prepared.claims is not None:  # the parent holds them (and answers for them); this copy closes
            prepared.claims.close()
        mine = replace(
            prepared, tun=queues[index], sock=sockets[index], icmp=icmps[index], observer=None, claims=None,
            rx_filter=filters[index], metrics=None,
        )  # fmt: skip
        status = _worker_main(index, count, mine, child_end, parent)
    except BaseException as exc:  # nothing may leave a forked child but os._exit
        with contextlib.suppress(BaseException):
            log.error("worker %d: %s: %s", index, type(exc).__name__, exc)
    finally:
        with contextlib.suppress(BaseException):
            sys.stderr.flush()
        os._exit(status)


def _parent_death_signal(signum: int) -> None:
    """Have the kernel send `signum` to this process when its parent dies (cleared by setuid: set again)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)


def _worker_main(index: int, count: int, prepared: Prepared, channel: socket.socket, parent: int) -> int:
    _parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the line above
        return 1
    for handler in logging.getLogger().handlers:  # the parent's lines (timestamps or not), labelled
        handler.addFilter(_Labelled(f"worker {index}: "))
    tunnel = prepared.tunnel
    # Outer IPv4 identifications: each worker starts in its own part of the 16-bit space.
    tunnel.ident = (random.getrandbits(16) + index * (0x10000 // count)) & 0xFFFF
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            demux, fatal = runner.run(_serve(index, prepared, channel))
    except ConfigError as exc:
        _send(channel, {"error": str(exc)})
        return 2
    _send(channel, {"final": _report(index, prepared, demux)})
    return 1 if fatal else 0


class _Labelled(logging.Filter):
    """Puts a label in front of each message, whatever the line around it (cli.LogFormatter's)."""

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = f"{self.label}{record.msg}"
        return True


def _send(channel: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        channel.send(json.dumps(message).encode())


def _report(index: int, prepared: Prepared, demux: Demux) -> dict[str, Any]:
    """One worker's counters, as the parent sums them."""
    return {
        "index": index,
        "pid": os.getpid(),
        "stats": prepared.tunnel.counters.as_dict(),
        "unmatched": {"drops": demux.unmatched.as_dict()["drops"]},
        "keepalives_reflected": prepared.tunnel.reflected,
    }


async def _serve(index: int, prepared: Prepared, channel: socket.socket) -> tuple[Demux, str | None]:
    """Move this worker's share of packets until SIGINT/SIGTERM or the parent's end of the channel closes
    (reason None), or until the data path cannot go on (the reason). As service.serve, without the control
    socket (the parent's) and the keepalive timer (refused)."""
    loop = asyncio.get_running_loop()
    demux = Demux()
    dataplane = Dataplane(loop, demux, None, batched=prepared.batch)
    stop = asyncio.Event()
    fatal: list[str] = []

    def on_fatal(reason: str) -> None:
        fatal.append(reason)
        stop.set()

    def on_request() -> None:
        try:
            data = channel.recv(MESSAGE_LIMIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the parent is gone
            loop.remove_reader(channel.fileno())
            stop.set()
        elif json.loads(data).get("cmd") == "claims":
            watch.refresh()
        else:
            _send(channel, {"stats": _report(index, prepared, demux)})

    dataplane.on_fatal = on_fatal
    watch = ClaimWatch(loop, None, lambda: [f for f in (prepared.rx_filter,) if f is not None])
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    channel.setblocking(False)
    loop.add_reader(channel.fileno(), on_request)
    try:
        wire(dataplane, prepared)  # IPv4 outer only (checked): no separate receiver
        if prepared.user is not None:
            log.debug("%s: %s", prepared.tun.name, drop_to(prepared.user))
            _parent_death_signal(signal.SIGTERM)  # changing credentials cleared it
        _send(channel, {"ready": True})
        await stop.wait()
        if fatal:
            log.error("%s: %s; stopping", prepared.tun.name, fatal[0])
    finally:
        watch.cancel()
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(channel.fileno())
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        dataplane.close()
    return demux, (fatal[0] if fatal else None)
