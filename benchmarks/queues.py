"""TCP throughput through `usertunnel up --queues 1` and `--queues N` (default 2), in the same run.

The lab of bench.py (two namespaces joined by a veth pair, IPv6 off), under
the names ut-q-a / ut-q-b, and bench.py's helpers for the tunnel processes,
iperf3 and CPU time. For each configuration, in turn (the order alternating
from round to round), a fresh pair of tunnel ends (gre, no options), then
`iperf3 -P 4` (four parallel TCP flows, so that there are flows to shard) A -> B
for S seconds: the receiver's Mbit/s, and the CPU time of every tunnel process
(parents and workers, utime + stime) over the run, for Mbit/s per tunnel core
and the tunnel cores used (CPU s per wall s). Median [min-max] over rounds;
the ratios are between configurations of the same run; the machine's core
count and the 1-minute load average are printed beside them.

    python benchmarks/queues.py [--rounds 3] [--seconds 5] [--queues 2] [--write benchmarks/RESULTS.md]

--write appends the section at the end of the file. Everything stays inside
ut-q-a and ut-q-b, removed however the run ends; every run is bounded in time.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent))
import bench  # noqa: E402  (benchmarks/ is not a package; bench.py sits beside this file)

# bench.py's lab under this benchmark's names: its helpers read these at call time.
bench.NS_A, bench.NS_B = "ut-q-a", "ut-q-b"
bench.VETH_A, bench.VETH_B = "utqa", "utqb"
bench.TUN_DEV = "utqt0"
FLOWS = 4


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def measure(queues: int, seconds: int) -> tuple[float, float, float]:
    """(TCP Mbit/s, tunnel CPU s per wall s, the busiest of B's workers' share of the packets B received)
    through a fresh gre tunnel with `queues` workers per end."""
    route = bench.Route(f"gre --queues {queues}", "usertunnel", ("--queues", str(queues)))
    with bench.path_up(route) as ends:
        pids = [end.pid for end in ends]
        pids += [child for pid in pids for child in children(pid)]
        with bench.iperf3_server(bench.INNER_B), bench.CpuMeter(pids) as meter:
            report = bench.iperf3(bench.INNER_B, seconds, "-P", str(FLOWS))
    end = report["end"]
    assert isinstance(end, dict)
    shares = [int(stats["rx_packets"]) for name, stats in ends[1].exit_stats.items()  # type: ignore[index]
              if "worker" in name]  # fmt: skip
    busiest = max(shares) / sum(shares) if shares and sum(shares) else 1.0
    return float(end["sum_received"]["bits_per_second"]) / 1e6, meter.cpu / meter.wall, busiest


def section(results: dict[int, list[tuple[float, float, float]]], loads: list[float], args: argparse.Namespace) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    base = bench.med([mbit for mbit, _, _ in results[1]])
    cores = len(os.sched_getaffinity(0))
    lines = [
        f"## Multiple cores: `--queues` ({when})",
        "",
        f"`{bench.command_line()}` at commit {bench.git_head()}; **{cores} cores** (`nproc`), kernel "
        f"{platform.release()}; 1-minute load average {min(loads):.2f}–{max(loads):.2f} "
        f"({loads[0]:.2f} before the run). gre without options, iperf3 -P {FLOWS} ({FLOWS} TCP flows) A → B for "
        f"{args.seconds} s, a fresh pair of tunnel ends per measurement, the configurations interleaved, "
        f"{args.rounds} rounds; median [min–max]. Tunnel CPU: every process of both ends (parents and workers). "
        "Busiest worker: the largest share of the receiving end's packets that one of its workers decapsulated "
        "(1.00 with one process; 1/N would be an even split).",
        "",
        "| tunnel | TCP Mbit/s | ÷ --queues 1 | tunnel cores used | Mbit/s per tunnel core | busiest worker |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for queues, runs in results.items():
        mbit = [m for m, _, _ in runs]
        used = [c for _, c, _ in runs]
        per_core = [m / c for m, c, _ in runs if c]
        busiest = [b for _, _, b in runs]
        lines.append(
            f"| gre --queues {queues} | {bench.spread(mbit)} | {bench.ratio(bench.med(mbit), base)} | "
            f"{bench.spread(used, '.2f')} | {bench.spread(per_core)} | {bench.spread(busiest, '.2f')} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=bench.core_scale.positive_int, default=3)
    parser.add_argument("--seconds", type=bench.core_scale.positive_int, default=5)
    parser.add_argument("--queues", type=bench.core_scale.positive_int, default=2, help="compared with 1 (default 2)")
    parser.add_argument("--write", type=Path, help="append the section at the end of this file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = bench.missing_prerequisite()
    if missing:
        print(f"queues.py: {missing}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, bench._interrupt_on_sigterm)
    configurations = (1, args.queues)
    results: dict[int, list[tuple[float, float, float]]] = {q: [] for q in configurations}
    loads = [os.getloadavg()[0]]
    try:
        bench.build_lab()
        for r in range(args.rounds):
            for queues in configurations if r % 2 == 0 else configurations[::-1]:
                results[queues].append(measure(queues, args.seconds))
                mbit, used, busiest = results[queues][-1]
                bench.log(f"round {r + 1} --queues {queues}: {mbit:,.0f} Mbit/s, {used:.2f} tunnel cores, "
                          f"busiest worker {busiest:.2f}")  # fmt: skip
                loads.append(os.getloadavg()[0])
    except bench.BenchmarkError as exc:
        print(f"queues.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("queues.py: interrupted; removing the namespaces", file=sys.stderr)
        return 130
    finally:
        bench.remove_lab()
    text = section(results, loads, args)
    print(text)
    if args.write is not None:
        with args.write.open("a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
