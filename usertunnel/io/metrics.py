"""Prometheus metrics (`--metrics ADDR:PORT`): the counters `usertunnel stats` prints, served over HTTP.

Rules for this file: it is I/O shell and only reads what the core already
keeps (`Counters`, `LineProtocol`, the path MTU); it never changes a tunnel
and adds nothing to the data path. No counter is incremented for Prometheus:
the collector reads the tunnels' own counters when a scraper asks, so a
tunnel nobody scrapes pays nothing at all.

Theory of operation. `listen` binds the TCP socket before anything else is
created, so a port in use is refused in one line (exit 2) like any other
configuration mistake. `MetricsServer` then serves it on the tunnel's own
event loop (asyncio streams; uvloop's too): a GET of /metrics calls the
`source` the process gave, which returns the tunnels it runs *now* with their
live counters (`Scrape`), and prometheus_client's exposition turns them into
text. Because the scrape runs in the loop's thread, between two packet
callbacks, the numbers of one scrape agree with each other and with what
`stats` would answer at that moment; because the source is asked each time,
a daemon's tunnels appear and vanish from the metrics as they are added and
deleted, with nothing to register or unregister.

The names:
  usertunnel_tunnel_info{tunnel,mode,local,remote}     1 per tunnel
  usertunnel_tunnels                                   tunnels this process runs
  usertunnel_{rx,tx}_{packets,bytes}_total{tunnel}     what `stats` counts
  usertunnel_dropped_packets_total{tunnel,reason}      drops by reason (core.drops), from the first one
  usertunnel_unmatched_packets_total{reason}           received packets no tunnel of this process owned
  usertunnel_keepalives_reflected_total{tunnel}        peers' keepalives sent back
  usertunnel_keepalive_up{tunnel}                      with --keepalive: line protocol up 1, down 0
  usertunnel_keepalive_unanswered{tunnel}              with --keepalive: keepalives in a row unanswered
  usertunnel_keepalives_sent_total, usertunnel_keepalive_replies_total{tunnel}  with --keepalive
  usertunnel_mtu_bytes{tunnel}                         the TUN device's MTU
  usertunnel_path_mtu_bytes{tunnel}                    the outer path MTU to the remote (see `sample`)
and prometheus_client's process_* metrics of the serving process.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..core.encap import Counters, Tunnel
from ..core.errors import ConfigError
from ..core.keepalive import LineProtocol
from ..core.params import TunnelParams

if TYPE_CHECKING:  # prometheus_client is imported when metrics are served: other commands start 60 ms sooner
    from prometheus_client.core import Metric
    from prometheus_client.registry import CollectorRegistry

log = logging.getLogger("usertunnel")

REQUEST_LIMIT = 8192  # bytes: a scraper's request line and headers
REQUEST_TIMEOUT = 10.0  # seconds a client has to send its request
BACKLOG = 16
PATHS = ("/metrics", "/")

Address = tuple[str, int]


# --- what is collected: the tunnels of this process, now -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class TunnelSample:
    """One tunnel as the metrics see it: its parameters and its live counters (the same objects the data
    path counts on, never a copy, except with --queues where the parent sums its workers' reports)."""

    params: TunnelParams
    counters: Counters
    mtu: int  # the TUN device's MTU
    line: LineProtocol | None = None  # with --keepalive
    reflected: int = 0  # peers' keepalives sent back
    path_mtu: int | None = None  # None: not known to this process (--queues: each worker learns its own)


@dataclass(frozen=True, slots=True)
class Scrape:
    """Everything one scrape reports: the tunnels, and the packets none of them owned."""

    tunnels: Sequence[TunnelSample]
    unmatched: Counters


Source = Callable[[], Scrape]


def sample(tunnel: Tunnel, mtu: int, now: float | None = None) -> TunnelSample:
    """`tunnel` now. Its path MTU is the largest outer packet it sends to its remote: the one an ICMP
    "fragmentation needed" taught it while that lasts (core.encap.PMTU_EXPIRES), else the underlay device's."""
    if now is None:
        now = time.monotonic()
    learned = tunnel.path_mtu
    path_mtu = learned if learned is not None and now < tunnel.path_mtu_expires else tunnel.link_mtu
    return TunnelSample(tunnel.params, tunnel.counters, mtu, tunnel.line, tunnel.reflected, path_mtu)


def _address(packed: bytes | None) -> str:
    return ipaddress.ip_address(packed).compressed if packed else "any"


def families(scrape: Scrape) -> list[Metric]:
    """The metric families of one scrape (the module docstring lists them). Only drop reasons that were
    counted appear, as in `stats`: a tunnel's series do not multiply by every reason there is."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

    info = InfoMetricFamily("usertunnel_tunnel", "A tunnel this process runs", labels=("tunnel",))
    count = GaugeMetricFamily("usertunnel_tunnels", "Tunnels this process runs")
    labels = ("tunnel",)
    rx_packets = CounterMetricFamily("usertunnel_rx_packets", "Inner packets received and delivered", labels=labels)
    rx_bytes = CounterMetricFamily("usertunnel_rx_bytes", "Inner bytes received and delivered", labels=labels)
    tx_packets = CounterMetricFamily("usertunnel_tx_packets", "Inner packets encapsulated and sent", labels=labels)
    tx_bytes = CounterMetricFamily("usertunnel_tx_bytes", "Inner bytes encapsulated and sent", labels=labels)
    dropped = CounterMetricFamily(
        "usertunnel_dropped_packets",
        "Packets a tunnel dropped, by reason (usertunnel stats)",
        labels=("tunnel", "reason"),
    )
    unmatched = CounterMetricFamily(
        "usertunnel_unmatched_packets",
        "Packets this process received that none of its tunnels owned, by reason",
        labels=("reason",),
    )
    reflected = CounterMetricFamily(
        "usertunnel_keepalives_reflected", "Peers' GRE keepalives sent back to them", labels=labels
    )
    line_up = GaugeMetricFamily(
        "usertunnel_keepalive_up", "Line protocol (--keepalive): 1 up, 0 down after RETRIES unanswered", labels=labels
    )
    unanswered = GaugeMetricFamily(
        "usertunnel_keepalive_unanswered", "Keepalives in a row without a reply (--keepalive)", labels=labels
    )
    sent = CounterMetricFamily("usertunnel_keepalives_sent", "Keepalives sent (--keepalive)", labels=labels)
    replies = CounterMetricFamily("usertunnel_keepalive_replies", "Keepalive replies received", labels=labels)
    mtu = GaugeMetricFamily("usertunnel_mtu_bytes", "The tunnel device's MTU", labels=labels, unit="bytes")
    path_mtu = GaugeMetricFamily(
        "usertunnel_path_mtu_bytes",
        "Largest outer packet to the remote: learned from ICMP fragmentation needed, else the underlay's MTU",
        labels=labels,
        unit="bytes",
    )
    for t in scrape.tunnels:
        p = t.params
        name = [p.name]
        info.add_metric(name, {"mode": p.mode.value.name, "local": _address(p.local), "remote": _address(p.remote)})
        c = t.counters
        rx_packets.add_metric(name, c.rx_packets)
        rx_bytes.add_metric(name, c.rx_bytes)
        tx_packets.add_metric(name, c.tx_packets)
        tx_bytes.add_metric(name, c.tx_bytes)
        for reason, n in sorted(c.drops.items(), key=lambda kv: kv[0].value):
            dropped.add_metric([p.name, reason.value], n)
        reflected.add_metric(name, t.reflected)
        if t.line is not None:
            line_up.add_metric(name, 1 if t.line.up else 0)
            unanswered.add_metric(name, t.line.missed)
            sent.add_metric(name, t.line.sent)
            replies.add_metric(name, t.line.replies)
        mtu.add_metric(name, t.mtu)
        if t.path_mtu is not None:
            path_mtu.add_metric(name, t.path_mtu)
    count.add_metric([], len(scrape.tunnels))
    for reason, n in sorted(scrape.unmatched.drops.items(), key=lambda kv: kv[0].value):
        unmatched.add_metric([reason.value], n)
    return [
        info, count, rx_packets, rx_bytes, tx_packets, tx_bytes, dropped, unmatched, reflected,
        line_up, unanswered, sent, replies, mtu, path_mtu,
    ]  # fmt: skip


class TunnelCollector:
    """A prometheus_client collector that reads the live counters at each scrape (`source`)."""

    def __init__(self, source: Source) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        return iter(families(self.source()))


def registry(source: Source) -> CollectorRegistry:
    """Our own registry (not prometheus_client's global one): the tunnels, and the serving process."""
    from prometheus_client.process_collector import ProcessCollector
    from prometheus_client.registry import CollectorRegistry

    found = CollectorRegistry()
    found.register(TunnelCollector(source))
    ProcessCollector(registry=found)
    return found


# --- the address: --metrics ADDR:PORT ----------------------------------------------------------------------


def parse_listen(text: str) -> Address:
    """`--metrics`: an IPv4 address and port (127.0.0.1:9477), or an IPv6 one in brackets ([::1]:9477)."""
    accepted = "ADDRESS:PORT, such as 127.0.0.1:9477 or [::1]:9477 (0.0.0.0 or [::] for every address)"
    host, colon, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        version = 6
    else:
        version = 4
    try:
        address = ipaddress.ip_address(host)
        port = int(port_text, 10) if port_text.isdigit() else -1
    except ValueError:
        address, port = None, -1
    if not colon or address is None or address.version != version or "%" in host:
        raise ConfigError(f"invalid metrics address {text!r}: {accepted}")
    if not 1 <= port <= 65535:
        raise ConfigError(f"invalid metrics port in {text!r}: 1..65535; {accepted}")
    return address.compressed, port


def format_address(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen(address: Address) -> socket.socket:
    """The listening socket for `address`, bound now: ConfigError (one line) when the port is taken, the
    address is not this host's, or the port needs privileges."""
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    shown = format_address(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # As every HTTP server: a restart may bind while the last connections of the previous one linger.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        reasons = {
            errno.EADDRINUSE: f"port {port} is already in use (another exporter or usertunnel?): choose another",
            errno.EADDRNOTAVAIL: f"{host} is not an address of this host (of this network namespace)",
            errno.EACCES: f"port {port} is below 1024: run as root or with CAP_NET_BIND_SERVICE, or choose another",
        }
        reason = reasons.get(exc.errno or 0, exc.strerror or str(exc))
        raise ConfigError(f"cannot serve metrics on {shown}: {reason}") from None
    return sock


# --- the HTTP server, on the tunnel's event loop ------------------------------------------------------------


class MetricsServer:
    """Answers GET /metrics (and /) with the exposition of `registry`; one request per connection."""

    def __init__(self, registry: CollectorRegistry, address: str) -> None:
        self.registry = registry
        self.address = address  # ADDR:PORT as bound, for the log
        self.server: asyncio.Server | None = None

    @classmethod
    async def start(cls, sock: socket.socket, source: Source) -> MetricsServer:
        """Serve `source` on `sock`, a socket from `listen` (the server owns it from now on)."""
        host, port = sock.getsockname()[:2]
        self = cls(registry(source), format_address((host, port)))
        self.server = await asyncio.start_server(self._handle, sock=sock, limit=REQUEST_LIMIT)
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            status, content_type, body = self.answer(head)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except OSError:  # the scraper went away: nothing to tell anybody
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def answer(self, head: bytes) -> tuple[str, str, bytes]:
        """Status line, content type and body for one request (its request line and headers)."""
        lines = head.decode("latin-1").split("\r\n")
        words = lines[0].split()
        if len(words) != 3 or not words[2].startswith("HTTP/"):
            return "400 Bad Request", "text/plain", b"a request line such as GET /metrics HTTP/1.1\n"
        method, target, _ = words
        if method != "GET":
            return "405 Method Not Allowed", "text/plain", b"GET /metrics\n"
        if urlsplit(target).path not in PATHS:
            return "404 Not Found", "text/plain", b"the metrics are at /metrics\n"
        accept = ""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept)
        try:
            body = encoder(self.registry)
        except ConfigError as exc:  # --queues: a worker did not answer
            log.warning("metrics: scrape failed: %s", exc)
            return "503 Service Unavailable", "text/plain", f"{exc}\n".encode()
        except Exception as exc:  # a scrape must never stop the tunnel: the scraper sees the failure
            log.error("metrics: scrape failed: %s: %s", type(exc).__name__, exc)
            return "500 Internal Server Error", "text/plain", f"{type(exc).__name__}: {exc}\n".encode()
        return "200 OK", content_type, body

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(OSError):
                await self.server.wait_closed()


async def start(sock: socket.socket | None, source: Source, name: str) -> MetricsServer | None:
    """Serve `source` on `sock` if --metrics was given (None otherwise), and say where in the log."""
    if sock is None:
        return None
    server = await MetricsServer.start(sock, source)
    log.info("%s: metrics on http://%s/metrics", name, server.address)
    return server
