"""Prometheus metrics (`--metrics ADDR:PORT`, usertunnel/io/metrics.py): the collector against core objects,
the HTTP server on an event loop, and end to end in namespaces, scraped as Prometheus would."""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import INNER_A, INNER_B, UNDER_A, UNDER_B, Lab, require_netns
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from traffic import echo_request

from usertunnel.core import ipv4
from usertunnel.core.drops import Drop
from usertunnel.core.encap import Counters, Demux, Received, Tunnel
from usertunnel.core.errors import ConfigError
from usertunnel.core.keepalive import KeepaliveParams
from usertunnel.core.params import Mode, TunnelParams
from usertunnel.io import metrics, netns
from usertunnel.io.metrics import Scrape, TunnelSample, parse_listen, sample
from usertunnel.io.netns import UpProcess
from usertunnel.run.service import new_event_loop

A, B = socket.inet_aton(UNDER_A), socket.inet_aton(UNDER_B)
FROM_B = socket.inet_aton(INNER_B), socket.inet_aton(INNER_A)
INNER = ipv4.IPv4Header(0, 28, 1, ipv4.FLAG_DF, 64, 17, 0, *FROM_B).with_checksum().pack() + bytes(8)  # UDP, B to A

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Series:
    """Every sample of an exposition, by name and labels."""
    found: Series = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    return found


def value(series: Series, name: str, **labels: str) -> float | None:
    return series.get((name, frozenset(labels.items())))


def names(series: Series, prefix: str = "usertunnel_") -> set[str]:
    return {name for name, _ in series if name.startswith(prefix)}


def scrape_text(source: metrics.Source) -> Series:
    return parse(generate_latest(metrics.registry(source)).decode())


def tunnel(name: str = "gre1", **kw: object) -> Tunnel:
    return Tunnel(TunnelParams(name, Mode.GRE, A, B, **kw))  # type: ignore[arg-type]


def gre_from_b(key: int | None) -> bytes:
    """An outer IPv4 + GRE packet from B to A carrying INNER, with `key` (or none)."""
    flags = 0x2000 if key is not None else 0
    gre = struct.pack("!HH", flags, 0x0800) + (struct.pack("!I", key) if key is not None else b"")
    total = 20 + len(gre) + len(INNER)
    outer = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0x4000, 64, 47, 0, B, A)
    return outer + gre + INNER


# --- the collector ------------------------------------------------------------------------------------------


def test_counters_are_read_from_the_tunnel_at_each_scrape_not_copied_once() -> None:
    t = tunnel()
    source = metrics.registry(lambda: Scrape([sample(t, 1476)], Counters()))
    first = parse(generate_latest(source).decode())
    assert value(first, "usertunnel_tx_packets_total", tunnel="gre1") == 0
    for _ in range(3):
        assert isinstance(t.encapsulate(INNER), bytes)
    second = parse(generate_latest(source).decode())
    assert value(second, "usertunnel_tx_packets_total", tunnel="gre1") == 3
    assert value(second, "usertunnel_tx_bytes_total", tunnel="gre1") == 3 * len(INNER)
    assert value(second, "usertunnel_rx_packets_total", tunnel="gre1") == 0
    assert value(second, "usertunnel_mtu_bytes", tunnel="gre1") == 1476


def test_drops_are_labelled_by_reason_on_their_tunnel_and_unowned_packets_have_their_own_metric() -> None:
    t = tunnel(ikey=7, okey=7)
    demux = Demux()
    demux.add(t)
    assert demux.decapsulate(gre_from_b(8)) is Drop.KEY_MISMATCH  # our addresses, another key: blamed on t
    assert demux.decapsulate(gre_from_b(8)) is Drop.KEY_MISMATCH
    assert demux.decapsulate(gre_from_b(8)[:22]) is Drop.OUTER_MALFORMED  # nobody's
    got = scrape_text(lambda: Scrape([sample(t, 1472)], demux.unmatched))
    assert value(got, "usertunnel_dropped_packets_total", tunnel="gre1", reason="key_mismatch") == 2
    assert value(got, "usertunnel_unmatched_packets_total", reason="outer_malformed") == 1
    # Only reasons that were counted appear, as in `usertunnel stats`.
    dropped = {dict(labels)["reason"] for name, labels in got if name == "usertunnel_dropped_packets_total"}
    assert dropped == {"key_mismatch"}
    assert isinstance(demux.decapsulate(gre_from_b(7)), Received)
    got = scrape_text(lambda: Scrape([sample(t, 1472)], demux.unmatched))
    assert value(got, "usertunnel_rx_packets_total", tunnel="gre1") == 1
    assert value(got, "usertunnel_rx_bytes_total", tunnel="gre1") == len(INNER)


def test_every_drop_reason_is_a_valid_label_value_and_sums_as_counted() -> None:
    counters = Counters()
    for n, reason in enumerate(Drop, start=1):
        counters.drops[reason] = n
    t = tunnel()
    t.counters = counters
    got = scrape_text(lambda: Scrape([sample(t, 1476)], counters))
    for n, reason in enumerate(Drop, start=1):
        assert value(got, "usertunnel_dropped_packets_total", tunnel="gre1", reason=reason.value) == n
        assert value(got, "usertunnel_unmatched_packets_total", reason=reason.value) == n


def test_the_metric_set_follows_the_tunnels_the_source_returns_now() -> None:
    running: dict[str, Tunnel] = {"a": tunnel("a")}
    reg = metrics.registry(lambda: Scrape([sample(t, 1476) for t in running.values()], Counters()))

    def tunnels() -> set[str]:
        series = parse(generate_latest(reg).decode())
        return {dict(labels)["tunnel"] for name, labels in series if name == "usertunnel_rx_packets_total"}

    assert tunnels() == {"a"}
    running["b"] = tunnel("b")
    assert tunnels() == {"a", "b"}
    del running["a"]
    assert tunnels() == {"b"}
    assert value(parse(generate_latest(reg).decode()), "usertunnel_tunnels") == 1


def test_info_names_the_mode_and_addresses_and_any_for_a_wildcard() -> None:
    hub = Tunnel(TunnelParams("ipip0", Mode.IPIP, A, None))
    got = scrape_text(lambda: Scrape([sample(tunnel(), 1476), sample(hub, 1480)], Counters()))
    labels = {"mode": "gre", "local": "198.51.100.1", "remote": "198.51.100.2"}
    assert value(got, "usertunnel_tunnel_info", tunnel="gre1", **labels) == 1
    labels = {"mode": "ipip", "local": "198.51.100.1", "remote": "any"}
    assert value(got, "usertunnel_tunnel_info", tunnel="ipip0", **labels) == 1


def test_keepalive_state_is_a_gauge_only_for_tunnels_with_keepalives() -> None:
    with_ka = tunnel("ka", keepalive=KeepaliveParams(10, 2))
    without = tunnel("plain")
    source = metrics.registry(lambda: Scrape([sample(with_ka, 1476), sample(without, 1476)], Counters()))
    got = parse(generate_latest(source).decode())
    assert value(got, "usertunnel_keepalive_up", tunnel="ka") == 1
    assert value(got, "usertunnel_keepalive_up", tunnel="plain") is None
    assert value(got, "usertunnel_keepalives_reflected_total", tunnel="plain") == 0
    line = with_ka.line
    assert line is not None
    for _ in range(3):
        line.sending()
    got = parse(generate_latest(source).decode())
    assert value(got, "usertunnel_keepalive_up", tunnel="ka") == 0
    assert value(got, "usertunnel_keepalive_unanswered", tunnel="ka") == 3
    assert value(got, "usertunnel_keepalives_sent_total", tunnel="ka") == 3
    line.reply()
    got = parse(generate_latest(source).decode())
    assert value(got, "usertunnel_keepalive_up", tunnel="ka") == 1
    assert value(got, "usertunnel_keepalive_replies_total", tunnel="ka") == 1


def test_path_mtu_is_the_one_icmp_taught_until_it_expires_then_the_underlays() -> None:
    t = tunnel()
    t.link_mtu = 1500
    assert sample(t, 1476, now=100.0).path_mtu == 1500
    assert t.update_path_mtu(1400, 100.0)
    assert sample(t, 1476, now=101.0).path_mtu == 1400
    assert sample(t, 1476, now=t.path_mtu_expires + 1).path_mtu == 1500
    got = scrape_text(lambda: Scrape([TunnelSample(t.params, t.counters, 1476, path_mtu=None)], Counters()))
    assert value(got, "usertunnel_path_mtu_bytes", tunnel="gre1") is None  # --queues: not known to the parent
    got = scrape_text(lambda: Scrape([sample(t, 1476, now=101.0)], Counters()))
    assert value(got, "usertunnel_path_mtu_bytes", tunnel="gre1") == 1400


def test_the_registry_has_the_serving_process_and_not_prometheus_clients_global_metrics() -> None:
    got = scrape_text(lambda: Scrape([], Counters()))
    assert value(got, "usertunnel_tunnels") == 0
    assert value(got, "process_cpu_seconds_total") is not None
    assert not names(got, "python_gc_")


# --- --metrics ADDR:PORT ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9477", ("127.0.0.1", 9477)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
        ("[::1]:9100", ("::1", 9100)),
        ("[::]:65535", ("::", 65535)),
        ("[2001:db8:0::1]:9477", ("2001:db8::1", 9477)),
    ],
)
def test_an_address_and_port_are_accepted_ipv6_in_brackets(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    "text",
    ["9477", ":9477", "localhost:9477", "127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536",
     "127.0.0.1:x", "::1:9477", "[::1]", "[127.0.0.1]:9477", "[fe80::1%eth0]:9477", "127.0.0.1:+80", ""],
)  # fmt: skip
def test_a_bad_address_is_one_line_naming_it_and_what_is_accepted(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_listen(text)
    message = str(info.value)
    assert repr(text) in message and "127.0.0.1:9477" in message and "[::1]:9477" in message
    assert "\n" not in message


def test_a_port_in_use_is_one_line_naming_the_port() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with pytest.raises(
            ConfigError, match=rf"^cannot serve metrics on 127\.0\.0\.1:{port}: port {port} is already "
        ):
            metrics.listen(("127.0.0.1", port))
    finally:
        taken.close()


def test_an_address_not_of_this_host_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"192\.0\.2\.1 is not an address of this host"):
        metrics.listen(("192.0.2.1", 9477))


# --- the HTTP server on the tunnel's event loop -------------------------------------------------------------


async def _get(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status, *headers = head.decode().split("\r\n")
    fields = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in headers)}
    return status, fields, body


@pytest.fixture(params=["asyncio", "uvloop"])
def loop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    made = asyncio.new_event_loop() if request.param == "asyncio" else new_event_loop()
    try:
        yield made
    finally:
        made.close()


def test_the_server_answers_get_metrics_on_the_event_loop(loop: asyncio.AbstractEventLoop) -> None:
    t = tunnel()
    assert isinstance(t.encapsulate(INNER), bytes)

    async def run() -> list[tuple[str, dict[str, str], bytes]]:
        sock = metrics.listen(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = await metrics.MetricsServer.start(sock, lambda: Scrape([sample(t, 1476)], Counters()))
        try:
            return [
                await _get(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
                await _get(port, b"GET /?x=1 HTTP/1.0\r\n\r\n"),
                await _get(
                    port, b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n"
                ),
                await _get(port, b"GET /other HTTP/1.1\r\n\r\n"),
                await _get(port, b"POST /metrics HTTP/1.1\r\n\r\n"),
                await _get(port, b"nonsense\r\n\r\n"),
            ]
        finally:
            await server.close()

    plain, root, openmetrics, other, post, bad = loop.run_until_complete(run())
    assert plain[0] == "HTTP/1.1 200 OK" and plain[1]["content-type"].startswith("text/plain; version=0.0.4")
    assert int(plain[1]["content-length"]) == len(plain[2])
    assert value(parse(plain[2].decode()), "usertunnel_tx_packets_total", tunnel="gre1") == 1
    assert root[0] == "HTTP/1.1 200 OK"
    assert openmetrics[1]["content-type"].startswith("application/openmetrics-text")
    assert openmetrics[2].rstrip().endswith(b"# EOF")
    assert (
        other[0].startswith("HTTP/1.1 404") and post[0].startswith("HTTP/1.1 405") and bad[0].startswith("HTTP/1.1 400")
    )


def test_a_failing_source_is_a_5xx_for_the_scraper_and_the_server_goes_on(loop: asyncio.AbstractEventLoop) -> None:
    calls: list[int] = []

    def source() -> Scrape:
        calls.append(1)
        if len(calls) == 1:
            raise ConfigError("worker 1 (pid 42) has ended")
        return Scrape([], Counters())

    async def run() -> list[tuple[str, dict[str, str], bytes]]:
        sock = metrics.listen(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = await metrics.MetricsServer.start(sock, source)
        try:
            return [await _get(port, b"GET /metrics HTTP/1.1\r\n\r\n") for _ in range(2)]
        finally:
            await server.close()

    failed, served = loop.run_until_complete(run())
    assert failed[0].startswith("HTTP/1.1 503") and b"worker 1 (pid 42) has ended" in failed[2]
    assert served[0] == "HTTP/1.1 200 OK"


# --- end to end: scraped inside the tunnel's namespace ------------------------------------------------------

PORT = 9477
ECHO_ID = 0x4D54
SCRAPE = """
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as answer:
        print(answer.status)
        sys.stdout.write(answer.read().decode())
except urllib.error.HTTPError as exc:
    print(exc.code)
    sys.stdout.write(exc.read().decode())
"""


@pytest.fixture
def lab() -> Iterator[Lab]:
    """The conftest lab in namespaces of our own prefix, IPv6 off: nothing but our traffic in the tunnels."""
    require_netns()
    made = Lab(prefix="uhc", ipv6=False)
    try:
        yield made
    finally:
        made.close()


def scrape(lab: Lab, ns: str, address: str = f"127.0.0.1:{PORT}") -> Series:
    """GET /metrics with urllib from a process inside `ns` (the namespace's own loopback)."""
    out = lab.run(ns, [sys.executable, "-c", SCRAPE, f"http://{address}/metrics"], timeout=20)
    assert out.returncode == 0, out.stderr.decode()
    status, _, body = out.stdout.decode().partition("\n")
    assert status == "200", body
    return parse(body)


def wait_for_series(lab: Lab, ns: str, check: Callable[[Series], bool], timeout: float = 5.0) -> Series:
    deadline = time.monotonic() + timeout
    while True:
        got = scrape(lab, ns)
        if check(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def counted(got: Series, name: str, tunnel: str = "tun0") -> dict[str, float]:
    """A tunnel's packet counters and drops as `usertunnel up` prints them at exit."""
    drops = {
        dict(labels)["reason"]: n
        for (metric, labels), n in got.items()
        if metric == "usertunnel_dropped_packets_total" and dict(labels)["tunnel"] == tunnel
    }
    values = {k: value(got, f"usertunnel_{k}_total", tunnel=tunnel) for k in ("tx_packets", "tx_bytes", "rx_packets",
                                                                              "rx_bytes")}  # fmt: skip
    return {**{k: v for k, v in values.items() if v is not None}, **{f"drop {k}": v for k, v in drops.items()}}


def exit_counters(stats: dict[str, Any]) -> dict[str, float]:
    values = {k: float(stats[k]) for k in ("tx_packets", "tx_bytes", "rx_packets", "rx_bytes")}
    return {**values, **{f"drop {k}": float(v) for k, v in stats["drops"].items()}}


def gre_with_key(key: int, icmp_seq: int = 1) -> bytes:
    """An echo request B sends A in GRE with `key` (crafted: the peer's tunnel is not involved)."""
    return echo_request((UNDER_B, UNDER_A), (INNER_B, INNER_A), ECHO_ID, icmp_seq, key=key)


@pytest.mark.netns
def test_up_serves_the_counters_it_prints_at_exit_and_a_drop_by_its_reason(lab: Lab) -> None:
    end_a, _ = lab.pair(["--key", "7", "--metrics", f"127.0.0.1:{PORT}"], ["--key", "7"])
    assert any(f"tun0: metrics on http://127.0.0.1:{PORT}/metrics" in line for line in end_a.lines)
    first = scrape(lab, lab.a)
    assert value(first, "usertunnel_tunnels") == 1
    assert value(first, "usertunnel_tunnel_info", tunnel="tun0", mode="gre", local=UNDER_A, remote=UNDER_B) == 1
    assert value(first, "usertunnel_mtu_bytes", tunnel="tun0") == 1500 - 28
    assert value(first, "usertunnel_path_mtu_bytes", tunnel="tun0") == 1500
    assert value(first, "usertunnel_keepalive_up", tunnel="tun0") is None  # no --keepalive
    pings = 5
    assert lab.ping(lab.a, INNER_B, count=pings).returncode == 0
    got = scrape(lab, lab.a)
    assert value(got, "usertunnel_tx_packets_total", tunnel="tun0") >= pings  # type: ignore[operator]
    assert value(got, "usertunnel_rx_packets_total", tunnel="tun0") >= pings  # type: ignore[operator]
    assert not [name for name, _ in got if name == "usertunnel_dropped_packets_total"]

    raw = lab.socket(lab.b, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        raw.sendto(gre_with_key(8), (UNDER_A, 0))  # our addresses, the wrong key
    finally:
        raw.close()
    got = wait_for_series(lab, lab.a, lambda s: "drop key_mismatch" in counted(s, "tun0"))
    assert counted(got, "tun0")["drop key_mismatch"] == 1
    # Nothing moves between the last scrape and the exit: the counters printed at exit are the ones served.
    assert counted(got, "tun0") == exit_counters(end_a.stop()["tun0"])


@pytest.mark.netns
def test_the_line_protocol_state_follows_the_keepalive_replies(lab: Lab) -> None:
    end_a, end_b = lab.pair(["--keepalive", "0.1,2", "--metrics", f"127.0.0.1:{PORT}"], [])
    got = wait_for_series(
        lab, lab.a, lambda s: (value(s, "usertunnel_keepalive_replies_total", tunnel="tun0") or 0) > 0
    )
    assert value(got, "usertunnel_keepalive_up", tunnel="tun0") == 1
    end_b.kill()  # nobody reflects our keepalives any more
    got = wait_for_series(lab, lab.a, lambda s: value(s, "usertunnel_keepalive_up", tunnel="tun0") == 0)
    assert value(got, "usertunnel_keepalive_up", tunnel="tun0") == 0
    assert value(got, "usertunnel_keepalive_unanswered", tunnel="tun0") >= 3  # type: ignore[operator]
    end_a.stop()


@pytest.mark.netns
def test_a_port_in_use_is_refused_in_one_line_before_the_device_exists(lab: Lab) -> None:
    lab.start(lab.a, ["--local", UNDER_A, "--remote", UNDER_B, "--name", "tun0", "--metrics", f"127.0.0.1:{PORT}"])
    second = lab.start(
        lab.a, ["--local", UNDER_A, "--remote", UNDER_B, "--key", "2", "--name", "tun1", "--metrics",
                f"127.0.0.1:{PORT}"], wait=False,
    )  # fmt: skip
    assert second.wait_exit() == 2
    assert second.lines == [
        f"usertunnel up: error: cannot serve metrics on 127.0.0.1:{PORT}: port {PORT} is already in use "
        "(another exporter or usertunnel?): choose another"
    ]
    assert lab.run(lab.a, ["ip", "link", "show", "tun1"]).returncode != 0


@pytest.mark.netns
def test_ipv6_loopback_is_served(lab: Lab) -> None:
    lab.run(lab.a, ["sysctl", "-q", "-w", "net.ipv6.conf.lo.disable_ipv6=0"])
    lab.start(lab.a, ["--local", UNDER_A, "--remote", UNDER_B, "--name", "tun0", "--metrics", f"[::1]:{PORT}"])
    assert value(scrape(lab, lab.a, f"[::1]:{PORT}"), "usertunnel_tunnels") == 1


@pytest.mark.netns
def test_with_queues_the_parent_serves_every_workers_counters_summed(lab: Lab) -> None:
    end_a, _ = lab.pair(["--queues", "2", "--metrics", f"127.0.0.1:{PORT}"], [])
    pings = 6
    assert lab.ping(lab.a, INNER_B, count=pings).returncode == 0
    got = scrape(lab, lab.a)
    assert value(got, "usertunnel_rx_packets_total", tunnel="tun0") >= pings  # type: ignore[operator]
    assert value(got, "usertunnel_path_mtu_bytes", tunnel="tun0") is None  # each worker learns its own
    assert counted(got, "tun0") == exit_counters(end_a.stop()["tun0"])  # the sum it logs at exit


def _daemon_tunnel(ns: str, *words: str) -> None:
    out = netns.run(ns, [sys.executable, "-m", "usertunnel", "tunnel", *words], timeout=30)
    assert out.returncode == 0, out.stderr.decode()


@pytest.mark.netns
def test_the_daemons_metrics_follow_its_tunnels_as_they_are_added_and_deleted(lab: Lab) -> None:
    daemon = UpProcess(lab.a, ["--metrics", f"127.0.0.1:{PORT}"], command="daemon")
    lab.ends.append(daemon)
    daemon.wait_ready()
    assert any(f"daemon: metrics on http://127.0.0.1:{PORT}/metrics" in line for line in daemon.lines)
    assert value(scrape(lab, lab.a), "usertunnel_tunnels") == 0
    for name, key in (("g1", "1"), ("g2", "2")):
        _daemon_tunnel(lab.a, "add", name, "mode", "gre", "local", UNDER_A, "remote", UNDER_B, "key", key)
    got = scrape(lab, lab.a)
    assert value(got, "usertunnel_tunnels") == 2
    assert {dict(labels)["tunnel"] for name, labels in got if name == "usertunnel_tunnel_info"} == {"g1", "g2"}
    _daemon_tunnel(lab.a, "del", "g1")
    raw = lab.socket(lab.b, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        raw.sendto(gre_with_key(9), (UNDER_A, 0))  # g2's addresses, no tunnel's key: blamed on g2
        bad_version = bytearray(gre_with_key(2))
        bad_version[21] |= 1  # GRE version 1: no tunnel's packet (RFC 2784 2.3.1)
        raw.sendto(bytes(bad_version), (UNDER_A, 0))
    finally:
        raw.close()
    got = wait_for_series(
        lab, lab.a, lambda s: value(s, "usertunnel_unmatched_packets_total", reason="gre_version") == 1
    )
    assert {dict(labels)["tunnel"] for name, labels in got if name == "usertunnel_tunnel_info"} == {"g2"}
    assert value(got, "usertunnel_dropped_packets_total", tunnel="g2", reason="key_mismatch") == 1
    assert value(got, "usertunnel_unmatched_packets_total", reason="gre_version") == 1
    assert value(got, "usertunnel_tunnels") == 1
    daemon.stop()
