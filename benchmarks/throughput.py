"""TCP throughput through usertunnel, as a fraction of the veth it rides on, and what it costs in CPU.

What it measures: iperf3 TCP throughput between two network namespaces joined
by a veth pair, over four paths: the plain veth, and usertunnel in gre mode
(no options), gre with --key 1234 --seq --csum, and ipip. For each tunnel
measurement it also reads the CPU time the two `usertunnel up` processes used
while iperf3 ran, to report Mbit/s per tunnel core.

Why: a userspace tunnel in Python is bound by per-packet CPU work, and absolute
numbers on a shared machine drift with whatever else runs there. So the paths
are measured round-robin within one run (a drift in load hits every path
alike), each result is given as a ratio to the veth measured alongside it, and
Mbit/s per tunnel core says what the data path costs independent of how much
CPU it happened to get. Those are the numbers to compare before and after a
change to the data path; the absolute Mbit/s are not.

How: namespaces ut-bench-a and ut-bench-b (removed first if left over from an
earlier run), a veth pair 198.51.100.1/24 - 198.51.100.2/24, and for every
tunnel measurement a fresh pair of `python3 -m usertunnel up` processes
carrying 203.0.113.0/30, stopped with SIGTERM afterwards so their exit `stats`
lines can be read (drops are reported). The iperf3 server runs in B, the client
in A. Everything stays in those two namespaces; they are removed however the
run ends, Ctrl-C and SIGTERM included. Every wait is bounded.

    python3 benchmarks/throughput.py [--rounds N] [--seconds S] [--write benchmarks/RESULTS.md]

Needs root, /dev/net/tun, iperf3 and ss.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from usertunnel import netns

NS_A, NS_B = "ut-bench-a", "ut-bench-b"
VETH_A, VETH_B = "ut-bench-va", "ut-bench-vb"
UNDER_A, UNDER_B = "198.51.100.1", "198.51.100.2"
INNER_A, INNER_B = "203.0.113.1", "203.0.113.2"
TUNNEL_NAME = "bt0"
IPERF_PORT = 5201
REPO_ROOT = Path(__file__).resolve().parent.parent

READY_TIMEOUT = 10.0  # seconds for a tunnel end to print its ': up ' line
STOP_TIMEOUT = 5.0  # seconds for a process to exit after SIGTERM before it is killed
LISTEN_TIMEOUT = 5.0  # seconds for the iperf3 server to start listening
IPERF_SLACK = 30.0  # seconds an iperf3 client may take beyond its -t


@dataclass(frozen=True)
class Route:
    """One path iperf3 traffic can take from A to B."""

    name: str
    tunnel_options: tuple[str, ...] | None  # None: no tunnel, straight over the veth

    @property
    def target(self) -> str:
        return UNDER_B if self.tunnel_options is None else INNER_B


ROUTES = (
    Route("veth", None),
    Route("gre", ()),
    Route("gre key+seq+csum", ("--key", "1234", "--seq", "--csum")),
    Route("ipip", ("--mode", "ipip")),
)
BASELINE = ROUTES[0]


@dataclass(frozen=True)
class Sample:
    """One iperf3 run over one route."""

    mbit_s: float
    wall_seconds: float
    cpu_seconds: float  # both tunnel ends together, during the iperf3 run; 0 without a tunnel
    drops: Counter[str]  # the tunnel's drop counters by reason, both ends together

    @property
    def mbit_s_per_core(self) -> float | None:
        """Throughput divided by the tunnel cores busy delivering it (cpu seconds per wall second)."""
        if self.cpu_seconds <= 0:
            return None
        return self.mbit_s / (self.cpu_seconds / self.wall_seconds)


class BenchmarkError(Exception):
    """A measurement could not be made; the message says which and why."""


# --- the lab: two namespaces and a veth pair --------------------------------------------------------------------


def build_lab() -> None:
    """Namespaces A and B (recreated if left over) joined by a veth pair on 198.51.100.0/24."""
    remove_lab()
    netns.create(NS_A)
    netns.create(NS_B)
    netns.veth(NS_A, VETH_A, NS_B, VETH_B, UNDER_A, UNDER_B, 24)


def remove_lab() -> None:
    """Kill whatever runs in the namespaces and delete them (the veth pair goes with them)."""
    for name in (NS_A, NS_B):
        netns.remove(name)


# --- tunnel ends -------------------------------------------------------------------------------------------------


def terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(STOP_TIMEOUT)


def start_tunnel(options: Sequence[str]) -> list[netns.UpProcess]:
    """Both ends, A at 203.0.113.1/30 and B at 203.0.113.2/30, each pointing at the other, up and ready."""
    ends = []
    try:
        for namespace, local, remote, inner in ((NS_A, UNDER_A, UNDER_B, INNER_A), (NS_B, UNDER_B, UNDER_A, INNER_B)):
            args = ["--local", local, "--remote", remote, "--name", TUNNEL_NAME, "--address", f"{inner}/30"]
            ends.append(netns.UpProcess(namespace, [*args, *options]))
        for end in ends:
            try:
                end.wait_ready(READY_TIMEOUT)
            except RuntimeError as exc:
                raise BenchmarkError(str(exc)) from None
    except BaseException:
        for end in ends:
            end.stop(STOP_TIMEOUT)
        raise
    return ends


def tunnel_drops(ends: Sequence[netns.UpProcess]) -> Counter[str]:
    """Stop the ends and add up their tunnel's drop counters, by reason."""
    total: Counter[str] = Counter()
    for end in ends:
        stats = end.stop(STOP_TIMEOUT)
        if TUNNEL_NAME not in stats:
            raise BenchmarkError(f"tunnel end in {end.namespace} printed no stats at exit: {end.lines[-5:]}")
        drops = stats[TUNNEL_NAME].get("drops", {})
        assert isinstance(drops, dict)
        total.update(drops)
    return total


def cpu_seconds(pids: Sequence[int]) -> float:
    """User plus system CPU time of these processes (all their threads), from /proc/PID/stat."""
    total_ticks = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            # Fields after the parenthesised command name start at field 3 (state); utime and stime are 14 and 15.
            fields = f.read().rpartition(")")[2].split()
        total_ticks += int(fields[11]) + int(fields[12])
    return total_ticks / os.sysconf("SC_CLK_TCK")


# --- iperf3 ------------------------------------------------------------------------------------------------------


@contextmanager
def iperf3_server(address: str) -> Iterator[None]:
    """A one-shot iperf3 server in B bound to `address`, listening when the block starts."""
    server = netns.popen(
        NS_B, ["iperf3", "-s", "-1", "-B", address], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_listening(server)
        yield
    finally:
        terminate(server)


def wait_listening(server: subprocess.Popen[bytes]) -> None:
    # Polled with ss rather than by connecting: a probe connection would be taken for the one test `-1` serves.
    deadline = time.monotonic() + LISTEN_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise BenchmarkError(f"iperf3 server in {NS_B} exited with status {server.returncode} before listening")
        listening = netns.run(NS_B, ["ss", "-Hltn", f"sport = :{IPERF_PORT}"], timeout=5).stdout
        if listening.strip():
            return
        time.sleep(0.05)
    raise BenchmarkError(f"iperf3 server in {NS_B} was not listening on port {IPERF_PORT} after {LISTEN_TIMEOUT} s")


def iperf3_client(address: str, seconds: int) -> float:
    """Run the client in A for `seconds`; the receiver's average throughput in Mbit/s."""
    argv = ["iperf3", "-c", address, "-t", str(seconds), "-J"]
    try:
        result = netns.run(NS_A, argv, timeout=seconds + IPERF_SLACK)
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"iperf3 -c {address} did not finish within {seconds + IPERF_SLACK:.0f} s") from None
    try:
        report = json.loads(result.stdout)
    except ValueError:
        report = {}
    try:
        return float(report["end"]["sum_received"]["bits_per_second"]) / 1e6
    except (KeyError, TypeError):
        reason = report.get("error") or result.stderr.decode(errors="replace").strip()  # -J puts failures in "error"
        raise BenchmarkError(f"iperf3 -c {address} (status {result.returncode}) gave no throughput: {reason}") from None


# --- measurements ------------------------------------------------------------------------------------------------


def measure(route: Route, seconds: int) -> Sample:
    """One iperf3 run over `route`, with fresh tunnel processes if it has a tunnel."""
    ends = [] if route.tunnel_options is None else start_tunnel(route.tunnel_options)
    pids = [end.pid for end in ends]
    try:
        with iperf3_server(route.target):
            cpu_before = cpu_seconds(pids)
            started = time.monotonic()
            mbit_s = iperf3_client(route.target, seconds)
            wall = time.monotonic() - started
            cpu = cpu_seconds(pids) - cpu_before
    except BaseException:
        for end in ends:
            end.stop(STOP_TIMEOUT)
        raise
    return Sample(mbit_s=mbit_s, wall_seconds=wall, cpu_seconds=cpu, drops=tunnel_drops(ends))


def run_rounds(rounds: int, seconds: int) -> dict[Route, list[Sample]]:
    """Every route once per round, in the same order, so slow drifts in machine load hit all routes alike."""
    samples: dict[Route, list[Sample]] = {route: [] for route in ROUTES}
    for n in range(1, rounds + 1):
        for route in ROUTES:
            sample = measure(route, seconds)
            samples[route].append(sample)
            print(f"round {n}/{rounds} {route.name}: {describe(sample)}", file=sys.stderr, flush=True)
    return samples


def describe(sample: Sample) -> str:
    text = f"{sample.mbit_s:.1f} Mbit/s"
    if sample.mbit_s_per_core is not None:
        drops = ", ".join(f"{reason} {n}" for reason, n in sorted(sample.drops.items())) or "none"
        text += f", tunnel CPU {sample.cpu_seconds:.2f} s in {sample.wall_seconds:.2f} s, drops: {drops}"
    return text


# --- the table ---------------------------------------------------------------------------------------------------

HEADERS = ("path", "Mbit/s median [min–max]", "ratio to veth", "Mbit/s per tunnel core", "tunnel drops")


def table_rows(samples: dict[Route, list[Sample]]) -> list[tuple[str, ...]]:
    baseline = statistics.median(s.mbit_s for s in samples[BASELINE])
    rows: list[tuple[str, ...]] = []
    for route, runs in samples.items():
        rates = [s.mbit_s for s in runs]
        median = statistics.median(rates)
        per_core = [s.mbit_s_per_core for s in runs if s.mbit_s_per_core is not None]
        rows.append(
            (
                route.name,
                f"{median:.1f} [{min(rates):.1f}–{max(rates):.1f}]",
                f"{median / baseline:.3f}" if baseline > 0 else "n/a",
                f"{statistics.median(per_core):.1f}" if per_core else "—",
                "—" if route.tunnel_options is None else str(sum(s.drops.total() for s in runs)),
            )
        )
    return rows


def text_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in (HEADERS, *rows)) for i in range(len(HEADERS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in (HEADERS, *rows)]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join("---" for _ in HEADERS) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def command_line() -> str:
    """The command as typed: a launcher such as a pyenv shim hands Python its full path, so keep only the name."""
    interpreter, *rest = sys.orig_argv
    return shlex.join([Path(interpreter).name, *rest])


def markdown_report(rows: Sequence[Sequence[str]], load: tuple[float, float], rounds: int, seconds: int) -> str:
    nproc = len(os.sched_getaffinity(0))
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""# usertunnel throughput

- date: {date}
- kernel (`uname -r`): {platform.release()}
- CPUs (`nproc`): {nproc}
- command: `{command_line()}`
- 1-minute load average: {load[0]:.2f} at start, {load[1]:.2f} at end

{markdown_table(rows)}

These are ratios within one run on a noisy shared {nproc}-core machine, not absolute figures to quote: the four
paths were measured round-robin ({rounds} rounds of {seconds} s TCP with iperf3 each, a fresh pair of tunnel processes
for every tunnel measurement) so that changes in the machine's load fall on all of them alike, and the spread
[min–max] shows how much that load moved them. Compare the ratio to veth and the Mbit/s per tunnel core (throughput
divided by the CPU seconds per wall second the two `usertunnel up` processes used during the iperf3 run) against
another run of this script on the same machine, not the Mbit/s against another machine.
"""


# --- command line ------------------------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: a whole number of at least 1")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="throughput.py",
        description="iperf3 TCP throughput over veth and usertunnel gre, gre key+seq+csum, ipip, "
        "in namespaces ut-bench-a/ut-bench-b.",
    )
    parser.add_argument("--rounds", type=positive_int, default=3, help="round-robin rounds over all paths (default 3)")
    parser.add_argument("--seconds", type=positive_int, default=5, help="iperf3 -t for each measurement (default 5)")
    parser.add_argument("--write", type=Path, metavar="FILE", help="also write the table as Markdown to FILE")
    return parser.parse_args(argv)


def missing_prerequisite() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, TUN, raw sockets)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    for tool in ("iperf3", "ss"):
        if shutil.which(tool) is None:
            return f"needs {tool} on PATH"
    return None


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    problem = missing_prerequisite()
    if problem:
        print(f"throughput.py: {problem}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)  # so `finally` removes the namespaces on SIGTERM too
    load_start = os.getloadavg()[0]
    try:
        build_lab()
        samples = run_rounds(args.rounds, args.seconds)
    except BenchmarkError as exc:
        print(f"throughput.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("throughput.py: interrupted; removing the namespaces", file=sys.stderr)
        return 130
    finally:
        remove_lab()
    load = (load_start, os.getloadavg()[0])
    rows = table_rows(samples)
    print(text_table(rows))
    print(f"1-minute load average: {load[0]:.2f} at start, {load[1]:.2f} at end")
    if args.write:
        args.write.write_text(markdown_report(rows, load, args.rounds, args.seconds))
        print(f"written to {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
