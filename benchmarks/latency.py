"""Latency through the tunnel (issue 5): the RTT a ping gains through usertunnel, beside the minimal Python loop.

A ping through a tunnel between namespaces A and B crosses four tunnel hops
(A encapsulates, B decapsulates, B encapsulates the reply, A decapsulates it),
so the RTT it gains over the bare veth is four hops' worth of wake-up, Python
and system calls. This script measures that gain, and what each hop costs in
CPU, for:
- veth: no tunnel (the reference that "added" is counted from);
- the baseline loop (benchmarks/baseline_loop.py: epoll, one packet per wakeup);
- usertunnel gre, and gre key+seq+csum (the issue's target path);
and, with `--tree NAME=PATH`, the same usertunnel paths run from another
checkout (e.g. the commit before a change), so that before and after are
measured in one run, interleaved, under the same load. `--decompose` adds
two ends built to split usertunnel's time from the rest (`latency.py end`,
below): the minimal loop of baseline_loop.py run by uvloop's add_reader, as
usertunnel is, instead of select.epoll (the event loop's share), and the same
with usertunnel's protocol core called on every packet (`--core`:
Tunnel.encapsulate_header on the way out, Demux.decapsulate on the way in, a
plain gre tunnel; the core's share). What usertunnel adds beyond the second
is its I/O shell (io/loop.py and the rest).

Every measurement starts a fresh pair of tunnel processes and runs, for each
ping train of `--train INTERVAL:COUNT` (default: 0.02 s x 200, a tunnel idle
between probes; 0.002 s x 1000, the interval bench.py uses; 0.0002 s x 2000,
a tunnel kept busy), `ping -i INTERVAL` (ten warm-up probes dropped) and
reports p50 and p99 of ping's reply times; "added" is a path's p50 minus the
veth's p50 in the same round. CPU µs per hop: the CPU time of both tunnel
processes over the train (/proc/PID/task/TID/schedstat, in ns: user and
system time, the kernel's work done in their system calls included) divided
by 4 x the replies. With `--tcp-seconds S` (default 4; 0
skips it) an iperf3 TCP run through each tunnel path follows, to show that
what makes a lone packet faster does not cost throughput, with its Mbit/s per
tunnel core (throughput over the CPU seconds per wall second both tunnel
processes used during it: steadier than raw throughput on a shared machine).

Paths are measured round-robin, each round starting one path later, and every
figure is the median over rounds with [min-max]: on a small shared machine
compare the paths of one run with each other, not with another run.

    python3 benchmarks/latency.py [--rounds N] [--train 0.002:1000 ...] [--tcp-seconds S]
                                  [--tree before=/path/to/other/checkout] [--namespace-prefix ut-lat]

Everything happens inside two namespaces, PREFIX-a and PREFIX-b (default
ut-lat-a, ut-lat-b), created for the run and removed however it ends (Ctrl-C
and SIGTERM included); every traffic run is bounded in count and time. Needs
root, /dev/net/tun, ping, iperf3 and ss. The tunnel processes run the
usertunnel of the checkout this script sits in (or of each `--tree`), started
from it with PYTHONPATH pointing at it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
import bench  # noqa: E402  (benchmarks/ is not a package; bench.py sits beside this file)
import core_scale  # noqa: E402

from usertunnel.io import netns  # noqa: E402

UNDER_A, UNDER_B = bench.UNDER_A, bench.UNDER_B
INNER_A, INNER_B = bench.INNER_A, bench.INNER_B
PING_WARMUP = 10
PING_SLACK = 10.0  # seconds ping may take beyond count x interval
HOPS = 4  # tunnel hops per round trip: A encapsulates, B decapsulates, B encapsulates, A decapsulates
DEFAULT_TRAINS = ((0.02, 200), (0.002, 1000), (0.0002, 2000))
_PING_TIME = re.compile(rb"time=([0-9.]+) ms")


class LatencyError(Exception):
    """A measurement could not be made; the message says which and why."""


@dataclass(frozen=True)
class Route:
    """One way from A to B: veth, the baseline loop, or usertunnel (with options) from a checkout."""

    name: str
    kind: str  # "veth", "baseline", "end" (`latency.py end`) or "usertunnel"
    options: tuple[str, ...] = ()
    tree: Path = REPO_ROOT

    @property
    def target(self) -> str:
        return UNDER_B if self.kind == "veth" else INNER_B


@dataclass
class Train:
    """One ping train through one path: ping's reply times and the tunnel processes' CPU over it."""

    interval: float
    rtts: list[float]
    cpu_s: float | None

    @property
    def p50(self) -> float:
        return bench.percentile(self.rtts, 0.5)

    @property
    def p99(self) -> float:
        return bench.percentile(self.rtts, 0.99)

    @property
    def cpu_us_per_hop(self) -> float | None:
        return None if self.cpu_s is None else self.cpu_s * 1e6 / (HOPS * len(self.rtts))


@dataclass
class Sample:
    trains: dict[float, Train] = field(default_factory=dict)
    tcp: float | None = None
    tcp_cores: float | None = None  # CPU seconds of both tunnel processes per wall second of the TCP run

    @property
    def per_core(self) -> float | None:
        return self.tcp / self.tcp_cores if self.tcp is not None and self.tcp_cores else None


End = bench.TunnelProcess  # a tunnel end from a given checkout, ready once it logs ': up '


def argv_of(path: Route, local: str, remote: str, inner: str) -> list[str]:
    common = ["--local", local, "--remote", remote, "--name", bench.TUN_DEV, "--address", f"{inner}/30"]
    if path.kind == "baseline":
        return [sys.executable, str(BENCH_DIR / "baseline_loop.py"), *common]
    if path.kind == "end":
        return [sys.executable, str(Path(__file__).resolve()), "end", *common, *path.options]
    return [sys.executable, "-m", "usertunnel", "up", *common, *path.options]


def path_up(path: Route) -> contextlib.AbstractContextManager[list[End]]:
    """bench.path_up with this file's ends (the minimal `end` loop too), from the path's checkout."""
    if path.kind == "veth":
        return contextlib.nullcontext([])
    return bench.path_up(path, functools.partial(argv_of, path), path.tree)  # type: ignore[arg-type]


def cpu_seconds(pids: Sequence[int]) -> float:
    """CPU time of these processes, every thread, in ns from /proc/PID/task/TID/schedstat (its first field):
    finer than the 10 ms ticks of /proc/PID/stat, which a train of a few thousand hops needs."""
    total = 0
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    return total / 1e9


def ping_train(path: Route, interval: float, count: int, pids: Sequence[int]) -> Train:
    argv = ["ping", "-n", "-i", f"{interval:g}", "-c", str(count + PING_WARMUP), "-W", "1", path.target]
    timeout = (count + PING_WARMUP) * interval + PING_SLACK
    cpu0 = cpu_seconds(pids) if pids else None
    try:
        result = netns.run(bench.NS_A, argv, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LatencyError(f"ping to {path.target} did not finish within {timeout:.0f} s") from None
    cpu = None if cpu0 is None else cpu_seconds(pids) - cpu0
    rtts = [float(m) * 1000 for m in _PING_TIME.findall(result.stdout)][PING_WARMUP:]
    if len(rtts) < count // 2:
        raise LatencyError(f"ping -i {interval:g} to {path.target} through {path.name}: {len(rtts)} of {count} replies")
    return Train(interval, rtts, cpu)


def measure(path: Route, trains: Sequence[tuple[float, int]], tcp_seconds: int) -> Sample:
    sample = Sample()
    with path_up(path) as ends:
        pids = [end.proc.pid for end in ends]
        for interval, count in trains:
            sample.trains[interval] = ping_train(path, interval, count, pids)
        if tcp_seconds and path.kind != "veth":
            with bench.iperf3_server(path.target):
                cpu0, wall0 = cpu_seconds(pids), time.monotonic()
                sample.tcp = bench.tcp_mbit_s(path.target, tcp_seconds)
                sample.tcp_cores = (cpu_seconds(pids) - cpu0) / (time.monotonic() - wall0)
    return sample


def run_rounds(
    paths: Sequence[Route], rounds: int, trains: Sequence[tuple[float, int]], tcp_seconds: int
) -> dict[Route, list[Sample]]:
    samples: dict[Route, list[Sample]] = {path: [] for path in paths}
    for r in range(rounds):
        order = [paths[(r + i) % len(paths)] for i in range(len(paths))]
        for path in order:
            sample = measure(path, trains, tcp_seconds)
            samples[path].append(sample)
            summary = ", ".join(
                f"-i {t.interval:g}: p50 {t.p50:.0f} µs, {t.cpu_us_per_hop or 0:.0f} µs CPU/hop"
                for t in sample.trains.values()
            )
            tcp = f", TCP {sample.tcp:,.0f} Mbit/s" if sample.tcp else ""
            log(f"round {r + 1}/{rounds} {path.name}: {summary}{tcp}")
    return samples


# --- the report --------------------------------------------------------------------------------------------------


def table(samples: dict[Route, list[Sample]], trains: Sequence[tuple[float, int]]) -> str:
    veth = next(p for p in samples if p.kind == "veth")
    head = "| path |"
    rule = "|---|"
    for interval, _count in trains:
        head += f" -i {interval:g}: p50 added µs | p99 µs | CPU µs per hop |"
        rule += "---:|---:|---:|"
    head += " TCP Mbit/s | Mbit/s per tunnel core |"
    rule += "---:|---:|"
    rows = [head, rule]
    for path, runs in samples.items():
        row = f"| {path.name} |"
        for interval, _count in trains:
            added = [s.trains[interval].p50 - v.trains[interval].p50 for s, v in zip(runs, samples[veth], strict=False)]
            if path.kind == "veth":
                row += f" (p50 {bench.spread([s.trains[interval].p50 for s in runs])}) |"
            else:
                row += f" {bench.spread(added)} |"
            row += f" {bench.spread([s.trains[interval].p99 for s in runs])} |"
            row += f" {bench.spread([s.trains[interval].cpu_us_per_hop for s in runs], ',.1f')} |"
        row += f" {bench.spread([s.tcp for s in runs])} | {bench.spread([s.per_core for s in runs])} |"
        rows.append(row)
    return "\n".join(rows)


def head_of(tree: Path) -> str:
    """The checkout's commit, "+ changes" when tracked files differ from it (what the processes run)."""
    git = ["git", "-C", str(tree)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
    dirty = subprocess.run([*git, "status", "--porcelain", "-uno"], capture_output=True, text=True, timeout=10)
    return (head.stdout.strip() or "unknown") + (" + changes" if dirty.stdout.strip() else "")


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --- command line ------------------------------------------------------------------------------------------------


def train_spec(text: str) -> tuple[float, int]:
    interval, _, count = text.partition(":")
    try:
        value = (float(interval), int(count))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected INTERVAL:COUNT such as 0.002:1000, got {text!r}") from None
    if value[0] <= 0 or value[1] <= 0:
        raise argparse.ArgumentTypeError(f"interval and count must be positive, got {text!r}")
    return value


def tree_spec(text: str) -> tuple[str, Path]:
    name, sep, where = text.partition("=")
    tree = Path(where).resolve()
    if not sep or not name or not (tree / "usertunnel" / "__init__.py").is_file():
        raise argparse.ArgumentTypeError(f"expected NAME=PATH to a usertunnel checkout, got {text!r}")
    return name, tree


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="latency.py", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=core_scale.positive_int, default=3, help="rounds (default 3)")
    parser.add_argument(
        "--train", type=train_spec, action="append", metavar="INTERVAL:COUNT",
        help="a ping train (repeatable; default 0.02:200, 0.002:1000 and 0.0002:2000)",
    )  # fmt: skip
    parser.add_argument("--tcp-seconds", type=int, default=4, help="iperf3 TCP seconds per tunnel path (0: none)")
    parser.add_argument(
        "--tree", type=tree_spec, action="append", default=[], metavar="NAME=PATH",
        help="also run the usertunnel paths from this checkout, labelled NAME (repeatable)",
    )  # fmt: skip
    parser.add_argument("--no-baseline", action="store_true", help="leave out the baseline loop")
    parser.add_argument(
        "--decompose", action="store_true",
        help="add the minimal loop under uvloop, and with usertunnel's core (see `latency.py end --help`)",
    )  # fmt: skip
    parser.add_argument("--no-ksc", action="store_true", help="leave out gre key+seq+csum")
    parser.add_argument("--namespace-prefix", default="ut-lat", help="namespaces PREFIX-a and PREFIX-b")
    args = parser.parse_args(argv)
    args.train = args.train or list(DEFAULT_TRAINS)
    return args


def paths_of(args: argparse.Namespace) -> list[Route]:
    paths = [Route("veth", "veth")]
    if not args.no_baseline:
        paths.append(Route("baseline loop", "baseline"))
    if args.decompose:
        paths.append(Route("minimal loop, uvloop", "end"))
        paths.append(Route("minimal loop, uvloop + usertunnel core", "end", ("--core",)))
    trees = [("", REPO_ROOT), *args.tree]
    for label, tree in trees:
        suffix = f" ({label} {head_of(tree)})" if label else (f" (this checkout, {head_of(tree)})" if args.tree else "")
        paths.append(Route(f"usertunnel gre{suffix}", "usertunnel", (), tree))
        if not args.no_ksc:
            ksc = ("--key", "1234", "--seq", "--csum")
            paths.append(Route(f"usertunnel gre key+seq+csum{suffix}", "usertunnel", ksc, tree))
    return paths


_MAIN_PID = os.getpid()


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    # Only here: a child forked to create a namespace (pyroute2) inherits this handler, and is ended by SIGTERM.
    if os.getpid() == _MAIN_PID:
        raise KeyboardInterrupt
    os._exit(0)


# --- `latency.py end`: the minimal loop under uvloop, with or without usertunnel's core ---------------------------


def end(argv: Sequence[str]) -> int:
    """One end of the decomposition: baseline_loop.py's TUN, raw socket and one packet per wakeup, but run by
    uvloop's add_reader (as usertunnel is) and, with --core, usertunnel's core called on every packet."""
    import asyncio

    import baseline_loop
    import uvloop

    from usertunnel.core.encap import Demux, Received, Tunnel
    from usertunnel.core.params import Mode, TunnelParams

    parser = argparse.ArgumentParser(prog="latency.py end", description=end.__doc__)
    for option in ("--local", "--remote", "--address"):
        parser.add_argument(option, required=True)
    parser.add_argument("--name", default="gre%d")
    parser.add_argument("--mtu", type=int, default=1476)
    parser.add_argument("--core", action="store_true", help="encapsulate_header / decapsulate every packet")
    args = parser.parse_args(argv)
    tun_fd, name = baseline_loop.open_tun(args.name)
    sock = baseline_loop.open_raw()
    baseline_loop.configure(name, args.address, args.mtu)
    tunnel = Tunnel(TunnelParams(name, Mode.GRE, socket.inet_aton(args.local), socket.inet_aton(args.remote)))
    demux = Demux()
    demux.add(tunnel)
    destination = (args.remote, 0)
    buffer = bytearray(baseline_loop.MAX_PACKET)
    view = memoryview(buffer)

    def on_tun() -> None:
        try:
            packet = os.read(tun_fd, baseline_loop.MAX_PACKET)
        except BlockingIOError:
            return
        if args.core:  # the socket lets the kernel build the outer IPv4 header: only the GRE header is sent
            header = tunnel.encapsulate_header(packet, time.monotonic())
            data = header[20:] + packet if isinstance(header, bytes) else b""
        else:
            data = baseline_loop.GRE_HEADER + packet
        with contextlib.suppress(OSError):
            sock.sendto(data, destination)

    def on_sock() -> None:
        try:
            n = sock.recv_into(buffer)
        except OSError:
            return
        if args.core:
            received = demux.decapsulate(view[:n], time.monotonic())
            inner = received.inner if isinstance(received, Received) else b""
        else:
            inner = view[baseline_loop.OUTER_LEN : n]
        with contextlib.suppress(OSError):
            os.write(tun_fd, inner)

    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    loop.add_reader(tun_fd, on_tun)
    loop.add_reader(sock.fileno(), on_sock)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loop.stop)
    print(f"latency end: {name}: up uvloop{' + core' if args.core else ''}", file=sys.stderr, flush=True)
    try:
        loop.run_forever()
    finally:
        loop.close()
        sock.close()
        os.close(tun_fd)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["end"]:
        return end(argv[1:])
    args = parse_args(argv)
    problem = bench.missing_prerequisite()
    if problem:
        print(f"latency.py: {problem}", file=sys.stderr)
        return 2
    prefix = args.namespace_prefix
    bench.NS_A, bench.NS_B = f"{prefix}-a", f"{prefix}-b"
    bench.VETH_A, bench.VETH_B = (f"{prefix.replace('-', '')}a")[:15], (f"{prefix.replace('-', '')}b")[:15]
    bench.TUN_DEV = f"{prefix.replace('-', '')}t0"[:15]
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    paths = paths_of(args)
    loads = [os.getloadavg()[0]]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        bench.build_lab()
        samples = run_rounds(paths, args.rounds, args.train, args.tcp_seconds)
    except (LatencyError, bench.BenchmarkError) as exc:
        print(f"latency.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("latency.py: interrupted; removing the namespaces", file=sys.stderr)
        return 130
    finally:
        bench.remove_lab()
    loads.append(os.getloadavg()[0])
    interpreter, *rest = sys.orig_argv
    print(f"`{shlex.join([Path(interpreter).name, *rest])}` ({started}; {len(os.sched_getaffinity(0))} CPUs; "
          f"kernel {platform.release()}; 1-minute load average {loads[0]:.2f} before, {loads[-1]:.2f} after; "
          f"{args.rounds} rounds, median [min–max])")  # fmt: skip
    print()
    print(table(samples, args.train))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
