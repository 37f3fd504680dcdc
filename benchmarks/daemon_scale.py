"""Scale in tunnels, one process: `usertunnel daemon` with N tunnels added over its control socket.

Measures, in one network namespace (utd-a, created and removed here): the time of each `tunnel add`
as the daemon answers it (TUN device, netlink, lookup), the daemon's resident memory per tunnel, the
time of a `reload` of an N-tunnel config file that changes nothing and of one that changes one tunnel,
and the time of each `tunnel del`. Prints a Markdown section for benchmarks/RESULTS.md.

    python benchmarks/daemon_scale.py --tunnels 1000
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from usertunnel.io import netns  # noqa: E402
from usertunnel.io.netns import UpProcess  # noqa: E402

NS = "utd-a"
LOCAL, REMOTE = "198.51.100.1", "198.51.100.2"

# Runs inside the namespace: N adds (or dels) over the control socket, each timed; JSON on stdout.
CLIENT = """
import json, sys, time
from usertunnel.run import control
action, count, local, remote = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
times = []
for i in range(count):
    table = {"mode": "gre", "local": local, "remote": remote, "ikey": i, "okey": i}
    message = {"cmd": "tunnel", "action": action, "name": f"t{i}", "table": table if action == "add" else {}}
    start = time.perf_counter()
    control.ask_daemon(message)
    times.append(time.perf_counter() - start)
print(json.dumps(times))
"""

RELOAD = """
import json, time
from usertunnel.run import control
start = time.perf_counter()
answer = control.ask_daemon({"cmd": "reload"})
print(json.dumps({"seconds": time.perf_counter() - start, "answer": {k: len(v) for k, v in answer.items()}}))
"""


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def in_ns(script: str, *args: str, timeout: float = 600) -> str:
    out = netns.run(NS, [sys.executable, "-c", script, *args], timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.decode())
    return out.stdout.decode()


def config_text(count: int, changed: int | None = None) -> str:
    parts = []
    for i in range(count):
        key = i + 100000 if i == changed else i
        parts.append(f'[tunnel.c{i}]\nmode = "gre"\nlocal = "{LOCAL}"\nremote = "{REMOTE}"\nkey = {key}\n')
    return "\n".join(parts)


def ms(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"{statistics.median(values) * 1e3:.2f} ms (p99 {p99 * 1e3:.2f} ms)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tunnels", type=int, default=1000, help="how many tunnels (default 1000)")
    args = parser.parse_args()
    count = args.tunnels
    if netns.exists(NS):
        netns.remove(NS)
    netns.create(NS, ipv6=False)
    daemon = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "usertunnel.toml"
            path.write_text("")
            daemon = UpProcess(NS, ["--config", str(path)], command="daemon")
            daemon.wait_ready(timeout=60)
            rss_none = rss_kb(daemon.pid)  # a daemon that never had a tunnel: the baseline for memory
            daemon.stop(timeout=60)
            path.write_text(config_text(count))
            started = time.perf_counter()
            daemon = UpProcess(NS, ["--config", str(path)], command="daemon")
            daemon.wait_ready(timeout=600)
            boot = time.perf_counter() - started
            rss_config = rss_kb(daemon.pid)
            unchanged = json.loads(in_ns(RELOAD))
            path.write_text(config_text(count, changed=count // 2))
            one = json.loads(in_ns(RELOAD))
            path.write_text("")
            emptied = json.loads(in_ns(RELOAD))
            rss_empty = rss_kb(daemon.pid)
            adds = json.loads(in_ns(CLIENT, "add", str(count), LOCAL, REMOTE))
            rss_full = rss_kb(daemon.pid)
            listed = netns.run(NS, [sys.executable, "-m", "usertunnel", "-j", "tunnel", "show"], timeout=120)
            shown = len(json.loads(listed.stdout))
            dels = json.loads(in_ns(CLIENT, "del", str(count), LOCAL, REMOTE))
            links = netns.run(NS, ["ip", "-j", "link", "show"]).stdout
            left = len(json.loads(links)) - 1  # lo
    finally:
        if daemon is not None:
            daemon.stop(timeout=120)
        netns.remove(NS)
    kernel = subprocess.run(["uname", "-r"], capture_output=True, text=True).stdout.strip()
    print(f"## Tunnels in one daemon: {count}\n")
    print(f"- command: `python benchmarks/daemon_scale.py --tunnels {count}`; kernel {kernel}; 2 CPUs")
    print(f"- start with a {count}-tunnel config file until ready (Type=notify point): {boot:.1f} s")
    print(f"- `tunnel add` over the control socket, each (TUN device, netlink, lookup): {ms(adds)}")
    print(f"- `tunnel del`, each: {ms(dels)}; devices left afterwards: {left}")
    print(f"- daemon RSS: {rss_none / 1024:.1f} MB with no tunnel, {rss_config / 1024:.1f} MB after starting "
          f"with {count}: {(rss_config - rss_none) * 1024 / count:,.0f} bytes per tunnel; after the file was "
          f"emptied {rss_empty / 1024:.1f} MB (the allocator keeps what it had), and {rss_full / 1024:.1f} MB "
          f"with {count} added again by `tunnel add` (`tunnel show` listed {shown})")  # fmt: skip
    print(f"- reload of the unchanged {count}-tunnel file: {unchanged['seconds'] * 1e3:.0f} ms "
          f"({unchanged['answer']}); with one tunnel's key changed: {one['seconds'] * 1e3:.0f} ms "
          f"({one['answer']}); to an empty file: {emptied['seconds']:.1f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
