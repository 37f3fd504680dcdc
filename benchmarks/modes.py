"""TCP throughput of every tunnel mode, gre beside each, measured in the same run.

Two namespaces (utm-a, utm-b) on a veth pair carrying both 198.51.100.0/24 and
2001:db8:1::/64; for each mode a fresh pair of `usertunnel up` processes, an
iperf3 TCP test from A to B through the tunnel (IPv4 inner 203.0.113.0/30
where the mode carries IPv4, else IPv6 inner 2001:db8:100::/64), and the CPU
the two tunnel processes used, for Mbit/s per tunnel core. Modes are measured
round-robin, `--rounds` times, and reported as median [min-max]. Everything
stays in the two namespaces, removed however the run ends.

    python3 benchmarks/modes.py [--rounds 3] [--seconds 4]

Needs root, /dev/net/tun and iperf3.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyroute2 import NetNS  # noqa: E402

from usertunnel.io import netns  # noqa: E402
from usertunnel.io.netns import UpProcess  # noqa: E402

NS = ("utm-a", "utm-b")
UNDER4 = ("198.51.100.1", "198.51.100.2")
UNDER6 = ("2001:db8:1::1", "2001:db8:1::2")
INNER4 = ("203.0.113.1", "203.0.113.2")
INNER6 = ("2001:db8:100::1", "2001:db8:100::2")
CLK_TCK = os.sysconf("SC_CLK_TCK")
MODES = ("gre", "ipip", "sit", "ipip6", "ip6ip6", "ip6gre")


def build() -> None:
    remove()
    for name in NS:
        netns.create(name)
        netns.run(name, ["sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0",
                         "net.ipv6.conf.default.accept_dad=0"], check=True)  # fmt: skip
    netns.veth(NS[0], "utma", NS[1], "utmb", UNDER4[0], UNDER4[1], 24)
    for name, ifname, address in ((NS[0], "utma", UNDER6[0]), (NS[1], "utmb", UNDER6[1])):
        with NetNS(name) as ns:
            ns.addr("add", index=ns.link_lookup(ifname=ifname)[0], address=address, prefixlen=64)


def remove() -> None:
    for name in NS:
        netns.remove(name)


def cpu_seconds(pids: Sequence[int]) -> float:
    ticks = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def measure(mode: str, seconds: int) -> tuple[float, float]:
    """(TCP Mbit/s, Mbit/s per tunnel core) through one fresh tunnel of `mode`."""
    outer = UNDER6 if mode in ("ipip6", "ip6ip6", "ip6gre") else UNDER4
    inner, plen = (INNER6, 64) if mode in ("sit", "ip6ip6") else (INNER4, 30)
    ends = []
    try:
        for i, name in enumerate(NS):
            args = ["--mode", mode, "--local", outer[i], "--remote", outer[1 - i], "--name", "tun0"]
            end = UpProcess(name, [*args, "--address", f"{inner[i]}/{plen}"])
            ends.append(end)
        for end in ends:
            end.wait_ready()
        server = netns.popen(NS[1], ["iperf3", "-s", "-1", "-B", inner[1]], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            time.sleep(0.5)
            pids = [end.pid for end in ends]
            cpu0, t0 = cpu_seconds(pids), time.monotonic()
            done = netns.run(NS[0], ["iperf3", "-c", inner[1], "-t", str(seconds), "-J"], timeout=seconds + 20)
            cpu, wall = cpu_seconds(pids) - cpu0, time.monotonic() - t0
        finally:
            server.kill()
            server.wait()
        mbit = json.loads(done.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
        return mbit, mbit / (cpu / wall) if cpu else 0.0
    finally:
        for end in ends:
            end.kill()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4)
    args = parser.parse_args(argv)
    results: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    load = [os.getloadavg()[0]]
    try:
        build()
        for r in range(args.rounds):
            order = MODES[r % len(MODES) :] + MODES[: r % len(MODES)]
            for mode in order:
                results[mode].append(measure(mode, args.seconds))
                print(f"round {r + 1} {mode}: {results[mode][-1][0]:.0f} Mbit/s", file=sys.stderr, flush=True)
                load.append(os.getloadavg()[0])
    finally:
        remove()

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):,.0f} [{min(values):,.0f}–{max(values):,.0f}]"

    gre = statistics.median(v[0] for v in results["gre"])
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"## Every mode's TCP throughput ({when})\n")
    print(f"`python3 benchmarks/modes.py --rounds {args.rounds} --seconds {args.seconds}`; {os.cpu_count()} cores; "
          f"load average {min(load):.2f}–{max(load):.2f}.\n")  # fmt: skip
    print("| mode | inner | outer | TCP Mbit/s | ÷ gre | Mbit/s per tunnel core |")
    print("|---|---|---|---:|---:|---:|")
    for mode in MODES:
        tcp = [v[0] for v in results[mode]]
        per_core = [v[1] for v in results[mode]]
        inner = "IPv6" if mode in ("sit", "ip6ip6") else "IPv4"
        outer = "IPv6" if mode in ("ipip6", "ip6ip6", "ip6gre") else "IPv4"
        ratio = statistics.median(tcp) / gre
        print(f"| {mode} | {inner} | {outer} | {cell(tcp)} | {ratio:.2f} | {cell(per_core)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
