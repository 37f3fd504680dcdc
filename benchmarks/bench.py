"""The benchmark suite of issue 5: usertunnel beside its baselines, all measured in the same run.

What it measures, on one lab (namespaces utb-a and utb-b joined by a veth
pair utba/utbb on 198.51.100.0/24, IPv6 off), over six paths:
- veth: no tunnel, the underlay itself;
- vxlan: the kernel's VXLAN (`ip link add ... type vxlan`) over the same veth,
  the kernel's own cost of a tunnel on this machine;
- baseline loop: benchmarks/baseline_loop.py, the minimal Python GRE loop;
- usertunnel gre; gre --key 1234 --seq --csum; ipip.
Tunnels carry 203.0.113.1/30 (A) - 203.0.113.2/30 (B).

For every path, in one measurement, with a fresh pair of tunnel processes
(or a fresh VXLAN device pair):
- RTT: `ping -i 0.002` (a few thousand bounded probes, the first ten dropped
  as warm-up), p50 and p99 from ping's per-reply times; "added" is the
  path's p50 minus the bare veth's;
- TCP throughput: iperf3 -t S, the receiver's Mbit/s; with the CPU time
  (utime + stime from /proc/PID/stat) of the two tunnel processes over the
  same interval, Mbit/s per tunnel core = Mbit/s / (CPU s per wall s);
- small packets: iperf3 -u -l 64 -b 0 (as fast as the sender can go, so veth
  and vxlan are sender-bound), packets per second delivered at the receiver,
  counted by the rx counter of B's receiving device (the veth, the VXLAN
  device, or the TUN device the tunnel process writes into): the iperf3
  server's socket alone tops out near the tunnels' rates on this machine;
  with the tunnel processes' CPU time over the run, CPU seconds per million
  delivered packets (both ends: one encapsulation and one decapsulation each);
- peak RSS: VmHWM from /proc/PID/status of each tunnel process, the largest.

Why this shape: the machine is small and shared, so absolute figures swing.
Paths are measured round-robin, each round starting one path later than the
previous, so a change in load falls on all of them; every figure is the median
over rounds with [min–max]; the ratios that the issue's targets are stated in
are between paths of the same run. Mbit/s per tunnel core is the steadiest
figure (it does not depend on how much CPU the tunnel happened to get).

    python3 benchmarks/bench.py [--rounds N] [--seconds S] [--pings N] [--quick] [--write benchmarks/RESULTS.md]

--write puts a new report at the top of the file (the previous one moves
under "History") with the core scale section (benchmarks/core_scale.py),
unless --no-core-scale. Everything happens inside utb-a and utb-b, which
are removed however the run ends (Ctrl-C and SIGTERM included); every wait
and every traffic run is bounded in time and count.

Needs root, /dev/net/tun, the vxlan kernel module, iperf3, ping, ip and ss.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from usertunnel import netns

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
import core_scale  # noqa: E402  (benchmarks/ is not a package; core_scale.py sits beside this file)

NS_A, NS_B = "utb-a", "utb-b"
VETH_A, VETH_B = "utba", "utbb"
VXLAN_DEV = "utbvx"
TUN_DEV = "utbt0"
UNDER_A, UNDER_B = "198.51.100.1", "198.51.100.2"
INNER_A, INNER_B = "203.0.113.1", "203.0.113.2"
INNER_PREFIX = 30
VXLAN_ID = 42
VXLAN_PORT = 4789
IPERF_PORT = 5201
UDP_PAYLOAD = 64
PING_INTERVAL = 0.002  # seconds between probes
PING_WARMUP = 10  # first replies dropped (neighbour resolution, cold caches)

READY_TIMEOUT = 10.0  # seconds for a tunnel end to log its ': up ' line
STOP_TIMEOUT = 5.0  # seconds for a process to exit after SIGTERM before SIGKILL
LISTEN_TIMEOUT = 5.0  # seconds for the iperf3 server to listen
IPERF_SLACK = 20.0  # seconds an iperf3 client may take beyond its -t
PING_SLACK = 10.0  # seconds ping may take beyond count x interval
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchmarkError(Exception):
    """A measurement could not be made; the message says which and why."""


# --- paths -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """One way for traffic to get from A to B."""

    name: str
    kind: str  # "veth", "vxlan", "baseline" or "usertunnel"
    options: tuple[str, ...] = ()  # `usertunnel up` options beyond addresses and name

    @property
    def target(self) -> str:
        return UNDER_B if self.kind == "veth" else INNER_B

    @property
    def has_processes(self) -> bool:
        return self.kind in ("baseline", "usertunnel")

    @property
    def receiving_device(self) -> str:
        """B's device that hands the path's packets to B's IP stack."""
        return {"veth": VETH_B, "vxlan": VXLAN_DEV}.get(self.kind, TUN_DEV)


VETH = Route("veth", "veth")
VXLAN = Route("kernel vxlan", "vxlan")
BASELINE = Route("baseline loop", "baseline")
GRE = Route("usertunnel gre", "usertunnel")
GRE_KSC = Route("usertunnel gre key+seq+csum", "usertunnel", ("--key", "1234", "--seq", "--csum"))
IPIP = Route("usertunnel ipip", "usertunnel", ("--mode", "ipip"))
# What each data-path technique buys, measured beside the rest: gre without receive coalescing, and
# gre with neither coalescing nor batched system calls (one recv/send per packet).
GRE_NO_COALESCE = Route("usertunnel gre, no coalescing", "usertunnel", ("--no-coalesce",))
GRE_PER_PACKET = Route("usertunnel gre, per-packet I/O", "usertunnel", ("--no-coalesce", "--no-batch"))
# key+seq+csum verifying received checksums from the headers (--csum-verify derived): what a full sum costs.
GRE_KSC_DERIVED = Route(
    "usertunnel gre key+seq+csum, derived check", "usertunnel", (*GRE_KSC.options, "--csum-verify", "derived")
)
PATHS = (VETH, VXLAN, BASELINE, GRE, GRE_KSC, GRE_KSC_DERIVED, IPIP, GRE_NO_COALESCE, GRE_PER_PACKET)


# --- the lab -----------------------------------------------------------------------------------------------------


def build_lab() -> None:
    """utb-a and utb-b (recreated if left over), IPv6 off, joined by a veth pair on 198.51.100.0/24."""
    remove_lab()
    netns.create(NS_A, ipv6=False)
    netns.create(NS_B, ipv6=False)
    netns.veth(NS_A, VETH_A, NS_B, VETH_B, UNDER_A, UNDER_B, 24)


def remove_lab() -> None:
    for name in (NS_A, NS_B):
        netns.remove(name)


def ip(namespace: str, *args: str) -> None:
    result = netns.run(namespace, ["ip", *args], timeout=10)
    if result.returncode != 0:
        raise BenchmarkError(f"ip {' '.join(args)} in {namespace}: {result.stderr.decode(errors='replace').strip()}")


@contextlib.contextmanager
def vxlan_pair() -> Iterator[None]:
    """A VXLAN device in each namespace over the veth, with the inner addresses; deleted afterwards."""
    ends = ((NS_A, UNDER_A, UNDER_B, VETH_A, INNER_A), (NS_B, UNDER_B, UNDER_A, VETH_B, INNER_B))
    try:
        for namespace, local, remote, dev, inner in ends:
            ip(namespace, "link", "add", VXLAN_DEV, "type", "vxlan", "id", str(VXLAN_ID), "local", local,
               "remote", remote, "dstport", str(VXLAN_PORT), "dev", dev)  # fmt: skip
            ip(namespace, "addr", "add", f"{inner}/{INNER_PREFIX}", "dev", VXLAN_DEV)
            ip(namespace, "link", "set", VXLAN_DEV, "up")
        yield
    finally:
        for namespace, *_ in ends:
            netns.run(namespace, ["ip", "link", "del", VXLAN_DEV], timeout=10)


class TunnelProcess:
    """A tunnel end (`usertunnel up` or the baseline loop) in a namespace; stderr read by a thread.

    Like usertunnel.netns.UpProcess, which only starts `usertunnel up`: ready
    when a line contains ': up ', counters from the ': stats ' lines at exit.
    """

    def __init__(self, namespace: str, argv: Sequence[str], tree: Path = REPO_ROOT) -> None:
        """`tree`: the checkout whose code runs (benchmarks/latency.py compares two)."""
        self.namespace = namespace
        env = dict(os.environ, PYTHONPATH=str(tree))
        self.proc = netns.popen(namespace, argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tree, env=env)
        self.lines: list[str] = []
        self.exit_stats: dict[str, object] = {}  # the ': stats ' lines printed at exit, by name
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            if ": up " in line:
                self._ready.set()
        self._ready.set()

    def wait_ready(self) -> None:
        self._ready.wait(READY_TIMEOUT)
        if not any(": up " in line for line in self.lines):
            self.stop()
            said = " / ".join(self.lines[-5:]) or "nothing"
            raise BenchmarkError(f"tunnel end in {self.namespace} did not come up within {READY_TIMEOUT} s: {said}")

    def stop(self) -> None:
        """SIGTERM, SIGKILL after STOP_TIMEOUT; then `exit_stats` holds what it printed at exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)
        self._reader.join(STOP_TIMEOUT)
        for line in self.lines:
            if ": stats " in line:
                before, _, payload = line.partition(": stats ")
                self.exit_stats[before.rsplit(": ", 1)[-1]] = json.loads(payload)


def tunnel_argv(path: Route, local: str, remote: str, inner: str) -> list[str]:
    common = ["--local", local, "--remote", remote, "--name", TUN_DEV, "--address", f"{inner}/{INNER_PREFIX}"]
    if path.kind == "baseline":
        return [sys.executable, str(BENCH_DIR / "baseline_loop.py"), *common]
    return [sys.executable, "-m", "usertunnel", "up", *common, *path.options]


@contextlib.contextmanager
def path_up(
    path: Route, argv: Callable[[str, str, str], list[str]] | None = None, tree: Path = REPO_ROOT
) -> Iterator[list[TunnelProcess]]:
    """The path ready to carry traffic; its tunnel processes (none for veth and vxlan). `argv(local, remote,
    inner)` starts an end (default `tunnel_argv`), from checkout `tree`."""
    if path.kind == "veth":
        yield []
        return
    if path.kind == "vxlan":
        with vxlan_pair():
            yield []
        return
    ends: list[TunnelProcess] = []
    try:
        for namespace, local, remote, inner in ((NS_A, UNDER_A, UNDER_B, INNER_A), (NS_B, UNDER_B, UNDER_A, INNER_B)):
            command = tunnel_argv(path, local, remote, inner) if argv is None else argv(local, remote, inner)
            ends.append(TunnelProcess(namespace, command, tree))
        for end in ends:
            end.wait_ready()
        yield ends
    finally:
        for end in ends:
            end.stop()


# --- /proc -------------------------------------------------------------------------------------------------------


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of these processes, all threads, from /proc/PID/stat."""
    ticks = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()  # fields from 3 (state) on; utime, stime are 14, 15
        ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def peak_rss_mb(pids: Sequence[int]) -> float | None:
    """The largest VmHWM (peak resident set) among these processes, in MB (10^6 bytes)."""
    peaks = []
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) * 1024 / 1e6)
    return max(peaks) if peaks else None


class CpuMeter:
    """CPU seconds the tunnel processes use over a block of wall time."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self.cpu = self.wall = 0.0

    def __enter__(self) -> CpuMeter:
        self._cpu0 = cpu_seconds(self.pids)
        self._t0 = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self._t0
        self.cpu = cpu_seconds(self.pids) - self._cpu0


# --- traffic -----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def iperf3_server(address: str) -> Iterator[None]:
    """An iperf3 server in B bound to `address` (serving test after test), listening when the block starts."""
    server = netns.popen(NS_B, ["iperf3", "-s", "-B", address], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + LISTEN_TIMEOUT
        while True:
            if server.poll() is not None:
                raise BenchmarkError(f"iperf3 server in {NS_B} exited with status {server.returncode}")
            # Polled with ss rather than by connecting, which iperf3 would take for a test.
            if netns.run(NS_B, ["ss", "-Hltn", f"sport = :{IPERF_PORT}"], timeout=5).stdout.strip():
                break
            if time.monotonic() > deadline:
                raise BenchmarkError(f"iperf3 server in {NS_B} not listening after {LISTEN_TIMEOUT} s")
            time.sleep(0.05)
        yield
    finally:
        if server.poll() is None:
            server.terminate()
        try:
            server.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(STOP_TIMEOUT)


def iperf3(address: str, seconds: int, *extra: str) -> dict[str, object]:
    """Run an iperf3 client in A; its JSON report."""
    argv = ["iperf3", "-c", address, "-t", str(seconds), "-J", *extra]
    try:
        result = netns.run(NS_A, argv, timeout=seconds + IPERF_SLACK)
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"{' '.join(argv)} did not finish within {seconds + IPERF_SLACK:.0f} s") from None
    try:
        report: dict[str, object] = json.loads(result.stdout)
    except ValueError:
        report = {}
    if "end" not in report or report.get("error"):
        reason = report.get("error") or result.stderr.decode(errors="replace").strip()
        raise BenchmarkError(f"{' '.join(argv)} (status {result.returncode}) failed: {reason}")
    return report


def tcp_mbit_s(address: str, seconds: int) -> float:
    end = iperf3(address, seconds)["end"]
    assert isinstance(end, dict)
    return float(end["sum_received"]["bits_per_second"]) / 1e6


def rx_packets(device: str) -> int:
    """Packets `device` in B has handed to B's IP stack (its rx counter, read over netlink by `ip -s -j`)."""
    result = netns.run(NS_B, ["ip", "-s", "-j", "link", "show", "dev", device], timeout=10)
    try:
        return int(json.loads(result.stdout)[0]["stats64"]["rx"]["packets"])
    except (ValueError, LookupError, TypeError):
        said = result.stderr.decode(errors="replace").strip()
        raise BenchmarkError(f"no rx counter for {device} in {NS_B}: {said}") from None


def udp_delivered(route: Route, seconds: int) -> tuple[int, float]:
    """64-byte UDP payloads sent as fast as iperf3 can: (packets the path delivered to B's stack, seconds sent).

    Counted on B's receiving device, not by the iperf3 server: a single receiving
    socket tops out near the tunnels' rates here and would be measured instead.
    """
    before = rx_packets(route.receiving_device)
    end = iperf3(route.target, seconds, "-u", "-l", str(UDP_PAYLOAD), "-b", "0")["end"]
    delivered = rx_packets(route.receiving_device) - before
    assert isinstance(end, dict)
    return delivered, float(end["sum"]["seconds"])


_PING_TIME = re.compile(r"time=([0-9.]+) ms")


def rtts_us(address: str, count: int) -> list[float]:
    """Round-trip times in µs of `count` pings at PING_INTERVAL, warm-up replies dropped."""
    argv = ["ping", "-n", "-i", str(PING_INTERVAL), "-c", str(count + PING_WARMUP), "-W", "1", address]
    timeout = (count + PING_WARMUP) * PING_INTERVAL + PING_SLACK
    try:
        result = netns.run(NS_A, argv, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"ping to {address} did not finish within {timeout:.0f} s") from None
    times = [float(m) * 1000 for m in _PING_TIME.findall(result.stdout.decode(errors="replace"))][PING_WARMUP:]
    if len(times) < count // 2:
        raise BenchmarkError(f"ping to {address}: only {len(times)} of {count} replies")
    return times


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- one measurement ---------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One path, measured once with fresh tunnel processes."""

    rtt_p50: float
    rtt_p99: float
    tcp_mbit_s: float
    tcp_cpu: CpuMeter
    udp_pps: float
    udp_packets: int
    udp_cpu: CpuMeter
    rss_mb: float | None
    load: float
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def mbit_s_per_core(self) -> float | None:
        if self.tcp_cpu.cpu <= 0:
            return None
        return self.tcp_mbit_s / (self.tcp_cpu.cpu / self.tcp_cpu.wall)

    @property
    def cpu_s_per_mpkt(self) -> float | None:
        if self.udp_cpu.cpu <= 0 or self.udp_packets <= 0:
            return None
        return self.udp_cpu.cpu / (self.udp_packets / 1e6)


def tunnel_errors(stats: dict[str, object]) -> dict[str, int]:
    """Drop and error counters a tunnel end printed at exit, by reason (both kinds of process)."""
    found: dict[str, int] = {}
    for values in stats.values():
        if not isinstance(values, dict):
            continue
        drops = values.get("drops", {})
        items = list(drops.items()) if isinstance(drops, dict) else []
        items += [(k, v) for k, v in values.items() if k.endswith("_errors")]
        for reason, n in items:
            if isinstance(n, int) and n:
                found[reason] = found.get(reason, 0) + n
    return found


def measure(path: Route, seconds: int, pings: int) -> Sample:
    with path_up(path) as ends, iperf3_server(path.target):
        pids = [end.pid for end in ends]
        rtt = rtts_us(path.target, pings)
        with CpuMeter(pids) as tcp_cpu:
            mbit_s = tcp_mbit_s(path.target, seconds)
        with CpuMeter(pids) as udp_cpu:
            packets, udp_seconds = udp_delivered(path, seconds)
        rss = peak_rss_mb(pids)
    errors: dict[str, int] = {}
    for end in ends:
        for reason, n in tunnel_errors(end.exit_stats).items():
            errors[reason] = errors.get(reason, 0) + n
    return Sample(
        rtt_p50=percentile(rtt, 0.50),
        rtt_p99=percentile(rtt, 0.99),
        tcp_mbit_s=mbit_s,
        tcp_cpu=tcp_cpu,
        udp_pps=packets / udp_seconds,
        udp_packets=packets,
        udp_cpu=udp_cpu,
        rss_mb=rss,
        load=os.getloadavg()[0],
        errors=errors,
    )


def describe(path: Route, s: Sample) -> str:
    text = (
        f"{path.name}: TCP {s.tcp_mbit_s:.0f} Mbit/s, UDP-64 {s.udp_pps / 1000:.1f} kpps, "
        f"RTT p50 {s.rtt_p50:.0f} µs p99 {s.rtt_p99:.0f} µs"
    )
    if s.mbit_s_per_core is not None:
        text += f", {s.mbit_s_per_core:.0f} Mbit/s per core"
    if s.cpu_s_per_mpkt is not None:
        text += f", {s.cpu_s_per_mpkt:.1f} CPU s/Mpkt"
    if s.rss_mb is not None:
        text += f", RSS {s.rss_mb:.1f} MB"
    if s.errors:
        text += ", drops: " + ", ".join(f"{k} {v}" for k, v in sorted(s.errors.items()))
    return text


def run_rounds(rounds: int, seconds: int, pings: int, log: Callable[[str], None]) -> dict[Route, list[Sample]]:
    """Every path once per round; round r starts at path r (mod 6) so no path always follows the same one."""
    samples: dict[Route, list[Sample]] = {path: [] for path in PATHS}
    for r in range(rounds):
        order = PATHS[r % len(PATHS) :] + PATHS[: r % len(PATHS)]
        for path in order:
            sample = measure(path, seconds, pings)
            samples[path].append(sample)
            log(f"round {r + 1}/{rounds} {describe(path, sample)} (load {sample.load:.2f})")
    return samples


# --- the report --------------------------------------------------------------------------------------------------


def med(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def spread(values: Sequence[float | None], fmt: str = ",.0f") -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "—"
    return f"{statistics.median(present):{fmt}} [{min(present):{fmt}}–{max(present):{fmt}}]"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a is not None and b else "—"


@dataclass(frozen=True)
class Summary:
    """Medians per path, the numbers the ratios and targets are computed from."""

    tcp: float
    pps: float
    per_core: float | None
    cpu_per_mpkt: float | None
    p50: float
    p99: float
    rss: float | None

    @staticmethod
    def of(runs: Sequence[Sample]) -> Summary:
        tcp, pps = med([s.tcp_mbit_s for s in runs]), med([s.udp_pps for s in runs])
        p50, p99 = med([s.rtt_p50 for s in runs]), med([s.rtt_p99 for s in runs])
        assert tcp is not None and pps is not None and p50 is not None and p99 is not None
        rss = [s.rss_mb for s in runs if s.rss_mb is not None]
        return Summary(
            tcp=tcp,
            pps=pps,
            per_core=med([s.mbit_s_per_core for s in runs]),
            cpu_per_mpkt=med([s.cpu_s_per_mpkt for s in runs]),
            p50=p50,
            p99=p99,
            rss=max(rss) if rss else None,
        )


def absolute_table(samples: dict[Route, list[Sample]]) -> str:
    veth_p50 = Summary.of(samples[VETH]).p50
    head = (
        "| path | TCP Mbit/s | Mbit/s per tunnel core | 64-byte UDP packets/s delivered | CPU s per million packets "
        "| RTT p50 µs | RTT p99 µs | RTT p50 added µs | peak RSS MB | tunnel drops |"
    )
    lines = [head, "|---|" + "---:|" * 9]
    for path, runs in samples.items():
        added = [s.rtt_p50 - veth_p50 for s in runs]
        rss = [s.rss_mb for s in runs if s.rss_mb is not None]
        drops = sum(sum(s.errors.values()) for s in runs)
        cells = [
            path.name,
            spread([s.tcp_mbit_s for s in runs]),
            spread([s.mbit_s_per_core for s in runs]),
            spread([s.udp_pps for s in runs]),
            spread([s.cpu_s_per_mpkt for s in runs], ".1f"),
            spread([s.rtt_p50 for s in runs]),
            spread([s.rtt_p99 for s in runs]),
            "—" if path is VETH else spread(added),
            f"{max(rss):.1f}" if rss else "—",
            str(drops) if path.has_processes else "—",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratio_table(summaries: dict[Route, Summary]) -> str:
    base, vx, veth = summaries[BASELINE], summaries[VXLAN], summaries[VETH]
    head = (
        "| path | TCP ÷ baseline | TCP ÷ vxlan | per core ÷ baseline | packets/s ÷ baseline | packets/s ÷ vxlan "
        "| CPU per packet ÷ baseline | RTT added ÷ baseline | RTT added ÷ vxlan |"
    )
    lines = [head, "|---|" + "---:|" * 8]
    for path, s in summaries.items():
        if path is VETH:
            continue
        cells = [
            path.name,
            ratio(s.tcp, base.tcp),
            ratio(s.tcp, vx.tcp),
            ratio(s.per_core, base.per_core),
            ratio(s.pps, base.pps),
            ratio(s.pps, vx.pps),
            ratio(s.cpu_per_mpkt, base.cpu_per_mpkt),
            ratio(s.p50 - veth.p50, base.p50 - veth.p50),
            ratio(s.p50 - veth.p50, vx.p50 - veth.p50),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(summaries: dict[Route, Summary]) -> list[str]:
    """Issue 5's targets, each with the numbers and met / not met."""
    ksc, gre, base, veth = summaries[GRE_KSC], summaries[GRE], summaries[BASELINE], summaries[VETH]
    checks: list[tuple[str, bool | None, str]] = []

    def fraction(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    per_core = fraction(ksc.per_core, base.per_core)
    checks.append((
        "gre key+seq+csum ≥ 1.7× the baseline loop in Mbit/s per tunnel core",
        None if per_core is None else per_core >= 1.7,
        f"{ksc.per_core or 0:,.0f} vs {base.per_core or 0:,.0f} Mbit/s per core = {per_core or 0:.2f}×",
    ))  # fmt: skip
    tcp = ksc.tcp / base.tcp
    checks.append((
        "gre key+seq+csum ≥ 2× the baseline loop in TCP throughput",
        tcp >= 2.0,
        f"{ksc.tcp:,.0f} vs {base.tcp:,.0f} Mbit/s = {tcp:.2f}×",
    ))  # fmt: skip
    pps = ksc.pps / base.pps
    checks.append((
        "gre key+seq+csum ≥ 1.2× the baseline loop in 64-byte packets/s delivered",
        pps >= 1.2,
        f"{ksc.pps:,.0f} vs {base.pps:,.0f} packets/s = {pps:.2f}×",
    ))  # fmt: skip
    features = fraction(ksc.per_core, gre.per_core)
    features_tcp = ksc.tcp / gre.tcp
    checks.append((
        "gre key+seq+csum within 5% of plain gre (Mbit/s per tunnel core)",
        None if features is None else features >= 0.95,
        f"{ksc.per_core or 0:,.0f} vs {gre.per_core or 0:,.0f} Mbit/s per core = {features or 0:.2f}× "
        f"(TCP: {ksc.tcp:,.0f} vs {gre.tcp:,.0f} Mbit/s = {features_tcp:.2f}×)",
    ))  # fmt: skip
    derived = summaries.get(GRE_KSC_DERIVED)
    if derived is not None:
        ratio = fraction(derived.per_core, gre.per_core)
        checks.append((
            "… the same with --csum-verify derived (received checksums checked from the headers)",
            None if ratio is None else ratio >= 0.95,
            f"{derived.per_core or 0:,.0f} vs {gre.per_core or 0:,.0f} Mbit/s per core = {ratio or 0:.2f}× "
            f"(TCP: {derived.tcp:,.0f} vs {gre.tcp:,.0f} Mbit/s = {derived.tcp / gre.tcp:.2f}×)",
        ))  # fmt: skip
    added, base_added = ksc.p50 - veth.p50, base.p50 - veth.p50
    checks.append((
        "latency added by the tunnel p50 ≤ 60 µs and below the baseline loop's (gre key+seq+csum)",
        added <= 60 and added < base_added,
        f"{added:.0f} µs added (p50 {ksc.p50:.0f} µs − veth {veth.p50:.0f} µs); baseline loop adds {base_added:.0f} µs",
    ))  # fmt: skip
    rss = [s.rss for p, s in summaries.items() if p.kind == "usertunnel" and s.rss is not None]
    checks.append((
        "peak RSS ≤ 60 MB for one tunnel (largest usertunnel process of the run)",
        bool(rss) and max(rss) <= 60,
        f"{max(rss):.1f} MB" if rss else "not measured",
    ))  # fmt: skip
    verdict = {True: "**met**", False: "**not met**", None: "not measured"}
    return [f"- {text}: {verdict[ok]} — {numbers}" for text, ok, numbers in checks]


def machine() -> list[str]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        uvloop = importlib.metadata.version("uvloop")
    except importlib.metadata.PackageNotFoundError:
        uvloop = "not installed (asyncio's loop)"
    iperf = subprocess.run(["iperf3", "--version"], capture_output=True, text=True, timeout=10).stdout.split("\n")[0]
    return [
        f"CPUs (`nproc`): {len(os.sched_getaffinity(0))}, {model}",
        f"kernel: {platform.release()}",
        f"Python {platform.python_version()}, uvloop {uvloop}, {iperf.strip()}",
    ]


def command_line() -> str:
    """The command as typed (a pyenv shim hands Python its full path: keep only the name)."""
    interpreter, *rest = sys.orig_argv
    return shlex.join([Path(interpreter).name, *rest])


def git_head() -> str:
    """The checkout's commit (read-only: other people commit in this checkout while we run)."""
    try:
        result = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() or "unknown"


def code_line(heads: tuple[str, str]) -> str:
    if heads[0] == heads[1]:
        return f"commit {heads[0]} (tunnel processes start from the working tree, uncommitted changes included)"
    return (
        f"commit {heads[0]} at the start, {heads[1]} at the end: the checkout changed during the run, and each "
        "tunnel process ran the working tree as it was when it started"
    )


def report(
    samples: dict[Route, list[Sample]],
    loads: list[float],
    args: argparse.Namespace,
    started: datetime.datetime,
    heads: tuple[str, str],
) -> str:
    summaries = {path: Summary.of(runs) for path, runs in samples.items()}
    date = started.strftime("%Y-%m-%d %H:%M UTC")
    facts = "\n".join(f"- {line}" for line in machine())
    load = f"{loads[0]:.2f} before the run, {min(loads):.2f}–{max(loads):.2f} during it, {loads[-1]:.2f} at the end"
    return f"""# usertunnel benchmarks

- date: {date}
- command: `{command_line()}`
- code: {code_line(heads)}
{facts}
- 1-minute load average: {load}

## Absolute figures, median [min–max] over {args.rounds} round(s)

{absolute_table(samples)}

## Ratios of medians

{ratio_table(summaries)}

## Issue 5 targets

{chr(10).join(targets(summaries))}

## How these were measured

Namespaces utb-a and utb-b joined by a veth pair (198.51.100.0/24, MTU 1500, IPv6 off); every tunnel carries
203.0.113.0/30. Paths were measured round-robin, {args.rounds} round(s), each round starting one path later,
with fresh tunnel processes (or fresh VXLAN devices) for every measurement. In each measurement:
`ping -i {PING_INTERVAL}` ×{args.pings} (after {PING_WARMUP} warm-up probes), p50/p99 of ping's reply times;
iperf3 TCP for {args.seconds} s (receiver's rate); iperf3 UDP `-l {UDP_PAYLOAD} -b 0` for {args.seconds} s
(packets delivered: the rx counter of B's receiving device — the veth, the VXLAN device or the TUN device into
which the tunnel process writes — over the run, per second of sending; veth and vxlan are bound by the sender).
Mbit/s per tunnel core = TCP Mbit/s ÷ (CPU seconds of both tunnel processes, utime + stime from /proc/PID/stat,
per wall second of the TCP run). CPU s per million packets: both tunnel processes' CPU during the UDP run per
million packets delivered (one encapsulation and one decapsulation each). Peak RSS: VmHWM of the larger tunnel
process. "RTT added" is a path's p50 minus the bare veth's. Tunnel MTUs: vxlan 1450, baseline loop and
usertunnel gre 1476, gre key+seq+csum 1464, ipip 1480. The baseline loop (benchmarks/baseline_loop.py) reads
one packet per ready descriptor per `epoll.poll()`, lets the kernel build the outer IPv4 header and checks
nothing. The kernel VXLAN's CPU time is spent in softirq context and cannot be attributed to a process, hence
no per-core figure for it. The traffic runs keep every core busy, so much of the load average during the run is
the run's own. On this shared {len(os.sched_getaffinity(0))}-core machine compare ratios within a run, not
absolute figures across runs.
"""


HISTORY = "## History"
HISTORY_NOTE = "Earlier runs, newest first, as they were written (headings moved down two levels)."


def with_history(new: str, old: str) -> str:
    """`new` on top; the previous report (from `old`) moves under History, above the older history."""
    current, marker, history = old.partition("\n" + HISTORY)
    history = history.split("\n", 1)[1] if marker else ""
    history = history.strip("\n").removeprefix(HISTORY_NOTE).strip("\n")
    markers = (core_scale.START_MARKER, core_scale.END_MARKER)  # only the current report's section is marked
    lines = [line for line in current.strip("\n").splitlines() if line not in markers]
    demoted = "\n".join("##" + line if line.startswith("#") else line for line in lines)
    parts = [new.rstrip("\n"), "", HISTORY, "", HISTORY_NOTE, ""]
    if demoted:
        parts += [demoted, ""]
    if history:
        parts += [history, ""]
    return "\n".join(parts)


# --- command line ------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench.py",
        description="usertunnel against veth, kernel VXLAN and a minimal Python GRE loop, in namespaces utb-a/utb-b.",
    )
    parser.add_argument(
        "--rounds", type=core_scale.positive_int, default=5, help="round-robin rounds over all paths (default 5)"
    )
    parser.add_argument(
        "--seconds", type=core_scale.positive_int, default=4, help="seconds of TCP and of UDP (default 4)"
    )
    parser.add_argument(
        "--pings", type=core_scale.positive_int, default=2000, help="RTT probes per measurement (default 2000)"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round, 2 s, 300 probes, short core scale")
    parser.add_argument("--write", type=Path, metavar="FILE", help="write the report to FILE (e.g. RESULTS.md)")
    parser.add_argument("--no-core-scale", action="store_true", help="skip benchmarks/core_scale.py")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.pings = 1, 2, 300
    return args


def missing_prerequisite() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, TUN, raw sockets)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    for tool in ("iperf3", "ss", "ip", "ping"):
        if shutil.which(tool) is None:
            return f"needs {tool} on PATH"
    return None


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    problem = missing_prerequisite()
    if problem:
        print(f"bench.py: {problem}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)  # so `finally` removes the namespaces on SIGTERM too
    started = datetime.datetime.now(datetime.UTC)
    head_at_start = git_head()
    loads = [os.getloadavg()[0]]
    log(f"bench.py: 1-minute load average {loads[0]:.2f}")
    try:
        build_lab()
        samples = run_rounds(args.rounds, args.seconds, args.pings, log)
    except BenchmarkError as exc:
        print(f"bench.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench.py: interrupted; removing the namespaces", file=sys.stderr)
        return 130
    finally:
        remove_lab()
    loads += [s.load for runs in samples.values() for s in runs] + [os.getloadavg()[0]]
    text = report(samples, loads, args, started, (head_at_start, git_head()))
    if not args.no_core_scale:
        passes, packets = (3, 1000) if args.quick else (21, 5000)
        scale = core_scale.run(passes, packets, progress=log)
        text += "\n" + core_scale.markdown_section(scale, command_line(), ", its core scale step")
    print(text)
    if args.write:
        old = args.write.read_text() if args.write.exists() else ""
        args.write.write_text(with_history(text, old))
        log(f"written to {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
