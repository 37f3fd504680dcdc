"""Soak: one tunnel at full rate for a bounded time; its memory and open files must not grow.

Two namespaces (uts-a, uts-b) on a veth pair, a gre tunnel with key, sequence
numbers and checksums between them, and back-to-back iperf3 TCP tests from A to
B for `--minutes` (default 10). The resident set (VmRSS) and the number of open
file descriptors of both tunnel processes are read from /proc after a warm-up
minute and at the end; the run fails (exit 1) if either grows by 5% or more.
Every loop is bounded in time; the namespaces are removed however it ends.

    python3 benchmarks/soak.py [--minutes 10] [--warm-up 60] [--write benchmarks/RESULTS.md]

CI runs it for one minute (tests/test_soak.py); the full ten-minute run is recorded in RESULTS.md.

Needs root, /dev/net/tun and iperf3.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from usertunnel.io import netns  # noqa: E402
from usertunnel.io.netns import UpProcess  # noqa: E402

NS = ("uts-a", "uts-b")
UNDER = ("198.51.100.1", "198.51.100.2")
INNER = ("203.0.113.1", "203.0.113.2")
OPTIONS = ("--key", "1234", "--seq", "--csum")
GROWTH_LIMIT = 0.05
WARM_UP = 60.0


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def snapshot(ends: list[UpProcess]) -> list[tuple[int, int]]:
    return [(rss_kb(end.pid), open_fds(end.pid)) for end in ends]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warm-up", type=float, default=WARM_UP, help="seconds before the first reading (60)")
    parser.add_argument("--write", type=Path, help="append the result to this file (e.g. benchmarks/RESULTS.md)")
    args = parser.parse_args(argv)
    ends: list[UpProcess] = []
    transferred = 0.0
    tests = 0
    started = time.monotonic()
    try:
        for name in NS:
            netns.create(name, ipv6=False)
        netns.veth(NS[0], "utsa", NS[1], "utsb", UNDER[0], UNDER[1], 24)
        for i, name in enumerate(NS):
            args_up = ["--local", UNDER[i], "--remote", UNDER[1 - i], "--name", "tun0", *OPTIONS]
            ends.append(UpProcess(name, [*args_up, "--address", f"{INNER[i]}/30"]))
        for end in ends:
            end.wait_ready()
        server = netns.popen(NS[1], ["iperf3", "-s", "-B", INNER[1]], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            time.sleep(0.5)
            deadline = started + args.minutes * 60
            first: list[tuple[int, int]] | None = None
            while time.monotonic() < deadline:
                seconds = max(1, min(30, int(deadline - time.monotonic())))
                if first is None:  # end the first test at the warm-up, so the first reading is on time
                    seconds = max(1, min(seconds, int(started + args.warm_up - time.monotonic()) + 1))
                done = netns.run(NS[0], ["iperf3", "-c", INNER[1], "-t", str(seconds), "-J"], timeout=seconds + 30)
                try:
                    end_report = json.loads(done.stdout)["end"]
                    transferred += end_report["sum_received"]["bytes"]
                    tests += 1
                except (ValueError, KeyError):
                    time.sleep(1)
                if first is None and time.monotonic() - started >= args.warm_up:
                    first = snapshot(ends)
                    print(f"soak: after warm-up {first}", file=sys.stderr, flush=True)
            last = snapshot(ends)
            first = first or last
        finally:
            server.kill()
            server.wait()
        alive = all(end.proc.poll() is None for end in ends)
        stats = [end.stop() for end in ends]
    finally:
        for end in ends:
            end.kill()
        for name in NS:
            netns.remove(name)
    elapsed = time.monotonic() - started
    growth = [(b[0] / a[0] - 1, b[1] / a[1] - 1) for a, b in zip(first, last, strict=True)]
    worst = max(max(g) for g in growth)
    drops = {k: v for s in stats for t in s.values() for k, v in t.get("drops", {}).items()}
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## Soak ({when})",
        "",
        f"`python3 benchmarks/soak.py --minutes {args.minutes:g}`: gre key+seq+csum between two namespaces, "
        f"{tests} back-to-back iperf3 TCP tests over {elapsed / 60:.1f} min, {transferred / 1e9:.1f} GB through the "
        f"tunnel; both tunnel processes {'alive' if alive else 'NOT alive'} at the end; drops: {drops or 'none'}.",
        "",
        "| end | RSS after warm-up (kB) | RSS at the end (kB) | growth | open fds after warm-up | at the end |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, a, b, g in zip("AB", first, last, growth, strict=True):
        lines.append(f"| {label} | {a[0]:,} | {b[0]:,} | {g[0]:+.1%} | {a[1]} | {b[1]} |")
    verdict = "met" if worst < GROWTH_LIMIT and alive else "NOT met"
    lines += ["", f"Target: growth under {GROWTH_LIMIT:.0%} — {verdict} (largest {worst:+.1%}).", ""]
    text = "\n".join(lines)
    print(text)
    if args.write:
        with args.write.open("a") as f:
            f.write("\n" + text)
    return 0 if verdict == "met" else 1


if __name__ == "__main__":
    raise SystemExit(main())
