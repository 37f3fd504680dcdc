"""User and kernel CPU of each tunnel end under TCP: how much of a packet's cost Python could still win back.

For each path (usertunnel gre and gre key+seq+csum, the lean prototype without and with features), the same lab
as bench.py (namespaces utb-a and utb-b, built and removed here), fresh tunnel processes, iperf3 TCP from A to
B; after a warm-up, utime and stime of each end from /proc/PID/stat over a window. A sends the data and receives
the ACKs, B the reverse. System time is the kernel working in the process's context: its own system calls
(TUN reads and writes, sendmmsg, recvmmsg, epoll) and, on a veth, the peer's receive path, which runs in the
sender's softirq. Figures per path: CPU seconds per second of each end, split, and the Mbit/s.

Usage (root): python benchmarks/cpu_split.py [--seconds 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench  # noqa: E402

from usertunnel.io import netns  # noqa: E402

ROUTES = (bench.GRE, bench.GRE_KSC, bench.PROTO_PLAIN, bench.PROTO_KSC)
WARMUP = 2.0
TICK = os.sysconf("SC_CLK_TCK")


def ticks(pid: int) -> tuple[int, int]:
    """(utime, stime) of a process, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def measure(route: bench.Route, seconds: float) -> tuple[list[tuple[float, float]], float]:
    """[(user, system) CPU s per s of A, of B], and the TCP Mbit/s, of one run of `route`."""
    report: dict[str, object] = {}
    total = int(WARMUP + seconds + 2)
    with bench.path_up(route) as ends, bench.iperf3_server(bench.INNER_B):
        client = threading.Thread(target=lambda: report.update(bench.iperf3(bench.INNER_B, total)), daemon=True)
        client.start()
        time.sleep(WARMUP)
        before = [ticks(end.pid) for end in ends]
        t0 = time.monotonic()
        time.sleep(seconds)
        after = [ticks(end.pid) for end in ends]
        wall = time.monotonic() - t0
        client.join(total + bench.IPERF_SLACK)
    split = [((a[0] - b[0]) / TICK / wall, (a[1] - b[1]) / TICK / wall) for b, a in zip(before, after, strict=True)]
    end = report.get("end")
    mbit = float(end["sum_received"]["bits_per_second"]) / 1e6 if isinstance(end, dict) else 0.0
    return split, mbit


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    routes = [r for r in ROUTES if r.kind != "prototype" or bench.PROTOTYPE.is_file()]
    results: dict[str, list[tuple[list[tuple[float, float]], float]]] = {r.name: [] for r in routes}
    if netns.exists(bench.NS_A) or netns.exists(bench.NS_B):
        print(f"cpu_split.py: {bench.NS_A} or {bench.NS_B} exists: another benchmark is running", file=sys.stderr)
        return 1
    bench.build_lab()
    try:
        for _ in range(args.rounds):
            for route in routes:
                results[route.name].append(measure(route, args.seconds))
    finally:
        bench.remove_lab()
    print(f"`python benchmarks/cpu_split.py --seconds {args.seconds:g} --rounds {args.rounds}`: CPU s per s of each")
    print("tunnel end under iperf3 TCP (A sends the data), user + system, median of the rounds.\n")
    print("| path | TCP Mbit/s | A user | A system | B user | B system | system share, both |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, runs in results.items():
        med = [[statistics.median(run[0][end][part] for run in runs) for part in (0, 1)] for end in (0, 1)]
        mbit = statistics.median(run[1] for run in runs)
        system = med[0][1] + med[1][1]
        share = system / (system + med[0][0] + med[1][0])
        print(f"| {name} | {mbit:,.0f} | {med[0][0]:.2f} | {med[0][1]:.2f} | {med[1][0]:.2f} | {med[1][1]:.2f} | "
              f"{share:.0%} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
