"""`usertunnel lab`: the seed's GRE example, running, with every packet shown.

Two hosts (network namespaces ut-lab-a and ut-lab-b) share an underlay link
(a veth pair, 198.51.100.1/24 and 198.51.100.2/24). Each runs `usertunnel up`
with the other as remote and key 1234, with inner addresses 203.0.113.1/30 and
203.0.113.2/30. Host A pings host B's inner address; a packet socket on B's
underlay interface captures what crossed the wire, and each packet is
dissected field by field. Everything is removed at the end, Ctrl-C included.

With --html FILE (here and in `lab nat` and `lab p2mp`) the lab also writes a
page that shows it: the topology drawn, one packet's journey through
usertunnel out and one's in (an end runs with --trace for it), every captured
packet drawn as explain --html draws it, and what the lab printed.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, TextIO

from ..core.errors import ConfigError
from ..io import netns, privilege
from . import compact
from .describe import describe
from .picture import network, page
from .trace import journeys

NS_A, NS_B = "ut-lab-a", "ut-lab-b"
VETH_A, VETH_B = "ut-veth-a", "ut-veth-b"
UNDER_A, UNDER_B = "198.51.100.1", "198.51.100.2"
INNER_A, INNER_B = "203.0.113.1", "203.0.113.2"
READY_TIMEOUT = 10.0


def _start_end(
    namespace: str, local: str, remote: str, inner: str, mode: str, key: int, extra: Sequence[str]
) -> netns.UpProcess:
    args = ["--mode", mode, "--local", local, "--remote", remote]
    if mode == "gre":
        args += ["--key", str(key)]
    return netns.UpProcess(namespace, [*args, "--name", f"{mode}-lab", "--address", f"{inner}/30", *extra])


class _Interrupted(Exception):
    """Ctrl-C, SIGTERM or SIGHUP arrived: stop at the next safe point and clean up."""


class _Stop:
    """SIGINT, SIGTERM and SIGHUP set a flag that the lab checks between its steps.

    The handler raises nothing itself: an exception raised from a signal handler can
    land anywhere (inside fork handlers, inside pyroute2), where it is swallowed or
    turned into another error, and the cleanup would not run. The handlers are set
    explicitly because a process started in the background by a shell inherits SIGINT
    ignored, and Python then installs no handler of its own.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        self._previous = {sig: signal.signal(sig, self._handler) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise _Interrupted

    def run(self, namespace: str, argv: list[str], timeout: float) -> tuple[int, str]:
        """Run `argv` in `namespace`, ending it early if a stop is requested; (status, stdout)."""
        proc = netns.popen(namespace, argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if self.requested or time.monotonic() > deadline:
                proc.terminate()
            time.sleep(0.05)
        assert proc.stdout is not None
        out = proc.stdout.read().decode(errors="replace")
        proc.stdout.close()
        self.check()
        return proc.returncode, out


class Transcript(io.StringIO):
    """What the lab prints, printed as it goes and kept for its report."""

    def __init__(self, out: TextIO) -> None:
        super().__init__()
        self.out = out

    def write(self, text: str) -> int:
        self.out.write(text)
        self.out.flush()
        return super().write(text)


def check_report(html: str | None) -> None:
    """Refuse a report file that cannot be written, before the lab builds anything (exit 2)."""
    if html is None:
        return
    folder = os.path.dirname(os.path.abspath(html))
    why = None
    if os.path.isdir(html):
        why = "it is a directory"
    elif not os.path.isdir(folder):
        why = f"there is no directory {folder}"
    elif not os.access(folder, os.W_OK) or (os.path.exists(html) and not os.access(html, os.W_OK)):
        why = "it is not writable"
    if why is not None:
        raise ConfigError(f"--html {html!r}: cannot write the report there: {why} (give a file name to write)")


def write_report(
    html: str,
    title: str,
    verdict: str,
    net: network.Network,
    traced: str,
    lines: Sequence[str],
    packets: list[tuple[str, bytes]],
    out: Transcript,
) -> None:
    """Write the lab's page (picture.page.lab_report) and say where it is."""
    text = page.lab_report(title, verdict, net, traced, journeys(lines), packets, out.getvalue())
    with open(html, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"== report: {html} (open it in a browser)", file=out)


def run_lab(
    mode: str = "gre",
    count: int = 3,
    key: int = 1234,
    options: Sequence[str] = (),
    trace: bool = False,
    html: str | None = None,
) -> int:
    """Build the lab, ping through it, show the packets; `options` go to both ends' `usertunnel up`,
    and with `trace` host A's tunnel runs with --trace and its lines are shown. With `html`, a page
    that draws it all is written there."""
    check_report(html)
    privilege.require(privilege.LAB)  # before anything is created (or "removed")
    out: TextIO = sys.stdout if html is None else Transcript(sys.stdout)
    procs: list[netns.UpProcess] = []
    captures: list[netns.Capture] = []

    def cleanup() -> None:
        for capture in captures:
            capture.stop()
        for proc in procs:
            proc.kill()
        for name in (NS_A, NS_B):
            netns.remove(name)
        print(f"== removed {NS_A} and {NS_B}", file=out)

    return guarded(lambda stop: _basic_lab(stop, procs, captures, out, mode, count, key, options, trace, html), cleanup)


def guarded(body: Callable[[_Stop], int], cleanup: Callable[[], None]) -> int:
    """Run a lab's steps under `_Stop`: Ctrl-C, SIGTERM and SIGHUP end it with status 130, a step that
    fails (RuntimeError) with 1; `cleanup` runs however it ends."""
    with _Stop() as stop:
        try:
            return body(stop)
        except (_Interrupted, KeyboardInterrupt):
            print("\n== interrupted", file=sys.stdout)
            return 130
        except RuntimeError as exc:
            print(f"usertunnel lab: error: {exc}", file=sys.stderr)
            return 1
        finally:
            cleanup()


def _basic_lab(
    stop: _Stop,
    procs: list[netns.UpProcess],
    captures: list[netns.Capture],
    out: TextIO,
    mode: str,
    count: int,
    key: int,
    options: Sequence[str],
    trace: bool,
    html: str | None,
) -> int:
    print(f"== building the lab: namespaces {NS_A}, {NS_B}; underlay {UNDER_A} <-> {UNDER_B}", file=out)
    for name in (NS_A, NS_B):
        # IPv4 only: the kernel's IPv6 router solicitations would add noise to what is shown.
        netns.create(name, ipv6=False)
    netns.veth(NS_A, VETH_A, NS_B, VETH_B, UNDER_A, UNDER_B, 24)
    capture = netns.Capture(NS_B, VETH_B)
    captures.append(capture)
    stop.check()
    words = " ".join([mode, *([f"key {key}"] if mode == "gre" else []), *options])
    print(f"== starting both ends of the tunnel ({words})", file=out)
    traced = [*options, "--trace"] if trace or html else list(options)
    procs.append(_start_end(NS_A, UNDER_A, UNDER_B, INNER_A, mode, key, traced))
    procs.append(_start_end(NS_B, UNDER_B, UNDER_A, INNER_B, mode, key, options))
    for label, proc in zip((NS_A, NS_B), procs, strict=True):
        print(f"   {label}: {proc.wait_ready(READY_TIMEOUT).removeprefix('usertunnel: ')}", file=out)
        stop.check()
    start = time.monotonic()
    print(f"== {NS_A}: ping -c {count} {INNER_B} (through the tunnel)", file=out)
    status, ping_out = stop.run(NS_A, ["ping", "-c", str(count), "-i", "0.2", "-W", "2", INNER_B], 30 + count)
    for line in ping_out.splitlines():
        print(f"   {line}", file=out)
    time.sleep(0.2)
    capture.stop()
    packets = [p for p in capture.packets if p[0] >= start and p[2][9] in (4, 47)]
    _show_packets(packets, out)
    print("== counters of each end (usertunnel's own view)", file=out)
    for label, proc in zip((NS_A, NS_B), procs, strict=True):
        for name, stats in proc.stop().items():
            print(f"   {label}: {name}: {json.dumps(stats, sort_keys=True)}", file=out)
    if trace:
        print(f"== {NS_A}'s --trace: each packet's journey through its tunnel", file=out)
        for line in procs[0].lines:
            if line.startswith("trace: "):
                print(f"   {line.removeprefix('trace: ')}", file=out)
    verdict = _summary(packets, status == 0, out)
    if html is not None and isinstance(out, Transcript):
        net = network.Network(
            f"usertunnel lab: {words}",
            [
                network.Node(NS_A, "host A", (f"{VETH_A} {UNDER_A}/24", f"{mode}-lab {INNER_A}/30"), 0, 0),
                network.Node(NS_B, "host B", (f"{VETH_B} {UNDER_B}/24", f"{mode}-lab {INNER_B}/30"), 2, 0),
            ],
            [network.Link(NS_A, NS_B, "veth: underlay 198.51.100.0/24")],
            [network.Link(NS_A, NS_B, f"{words}: inner 203.0.113.0/30")],
            capture=(NS_B, f"packets captured on {VETH_B}"),
        )
        shown = [(_heading(n, outgoing, pkt), pkt) for n, (_, outgoing, pkt) in enumerate(packets, 1)]
        write_report(html, f"usertunnel lab ({words})", verdict, net, NS_A, procs[0].lines, shown, out)
    return 0 if status == 0 and packets else 1


def _heading(number: int, outgoing: bool, pkt: bytes) -> str:
    return f"{number}. {'sent by B' if outgoing else 'received by B'}: {compact.summary(describe(pkt))}"


def _show_packets(packets: list[tuple[float, bool, bytes]], out: TextIO) -> None:
    print(f"== {len(packets)} tunnel packets seen on {NS_B}'s underlay interface {VETH_B}", file=out)
    shown: set[int] = set()
    for _, outgoing, pkt in packets:
        direction = "sent by B" if outgoing else "received by B"
        e = describe(pkt)
        parts = compact.sections(e)
        print(f"-- {direction}: {compact.summary(e)}", file=out)
        # Show the first echo request and the first echo reply in full, the rest as one line each.
        icmp_type = _inner_icmp_type(parts)
        if icmp_type is not None and icmp_type not in shown:
            shown.add(icmp_type)
            print(compact.render(parts), file=out)


def _inner_icmp_type(parts: list[compact.Section | str]) -> int | None:
    for s in parts:
        if isinstance(s, compact.Section) and s.title == "inner ICMP":
            return int(s.rows[0].value.split(" / ")[0])
    return None


def _summary(packets: list[tuple[float, bool, bytes]], ok: bool, out: TextIO) -> str:
    sent = sum(1 for p in packets if not p[1])
    back = sum(1 for p in packets if p[1])
    verdict = "the tunnel works" if ok else "PINGS FAILED"
    line = (
        f"summary: {verdict}; {sent} packets A->B and {back} B->A crossed the underlay, "
        "each an IPv4 packet inside an outer header"
    )
    print(f"== {line}", file=out)
    return line
