"""The benchmark suite of issues 5 and 14: usertunnel beside its baselines, all measured in the same run.

What it measures, on one lab (namespaces utb-a and utb-b joined by a veth
pair utba/utbb on 198.51.100.0/24, IPv6 off), over these paths:
- veth: no tunnel, the underlay itself;
- vxlan: the kernel's VXLAN (`ip link add ... type vxlan`) over the same veth,
  the kernel's own cost of a tunnel on this machine;
- baseline loop: benchmarks/baseline_loop.py, the minimal Python GRE loop;
- usertunnel gre; gre --key 1234 --seq --csum (and with --csum-verify
  derived); ipip; gre without coalescing, and with per-packet I/O;
- Open vSwitch userspace gre key 1234: OVS's netdev datapath on both ends
  (OVS 3.1 cannot send csum+seq correctly, hence key only). Its underlay
  address must sit on its br-phy bridge, not on the veth, so this path has a
  lab of its own: namespaces utb-ovs-a and utb-ovs-b joined by a veth pair
  utboa/utbob (no addresses, MTU 1500, IPv6 off), in each an ovsdb-server and
  an ovs-vswitchd (tests/interop/ovs_peer.py's OvsSwitch, the interop tests'
  harness), br-phy with 198.51.100.1 or .2/24 and the veth as its port, br-int
  with the inner address and a GRE port (key 1234, packet_type=legacy_l3),
  MTU 1472. Built for each measurement and removed after it (daemons stopped,
  namespaces deleted), so it never meets utb-a/utb-b; same addresses, same
  veth, same traffic. Its CPU is both ovs-vswitchd processes';
- lean prototype (perf-spike), key+seq+csum and without features: the
  throwaway yardstick ../shared/reference/perf-spike/fastgre.py, run in place
  (never copied) on both ends when that directory exists, with the flags of
  its README (--feat --csum-o1 --gro --gro-csum --mmsg; without --feat --csum-o1
  for the other); ready when it prints "ready", stopped by SIGTERM (it prints
  its counters then); its key is its own (0x01020304);
- 4 usertunnel up in one namespace: four `usertunnel up` processes in each of
  utb-a and utb-b, one gre tunnel each (keys 1 to 4, TUN devices utbm0-utbm3,
  203.0.113.0/30, .4/30, .8/30 and .12/30), four iperf3 TCP flows at once, one
  per tunnel: the aggregate TCP and each process's `unmatched` counter (packets
  its raw socket received that none of its tunnels took), which is 0 once no
  process reads another's packets.
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

    python3 benchmarks/bench.py [--rounds N] [--seconds S] [--pings N] [--quick] [--paths NAME[,NAME...]]
                                [--write benchmarks/RESULTS.md]

--paths measures only the paths whose name contains one of the NAMEs (case
ignored) or whose kind is one of them (veth, vxlan, baseline, usertunnel, ovs,
prototype, multi). --write puts a new report at the top of the file (the
previous one moves under "History") with the core scale section
(benchmarks/core_scale.py), unless --no-core-scale; a profile block
(between <!-- profile:start --> and <!-- profile:end -->, benchmarks/profile.py's)
in the current report is kept, right after the new report's ratios (where profile.py puts it).
Everything happens inside utb-a and utb-b (and utb-ovs-a, utb-ovs-b for Open
vSwitch), which are removed however the run ends (Ctrl-C and SIGTERM
included); every wait and every traffic run is bounded in time and count.

Needs root, /dev/net/tun, the vxlan kernel module, iperf3, ping, ip and ss;
Open vSwitch (Debian package openvswitch-switch) for its row, which otherwise
says "absent", as the prototype's rows do without ../shared/reference/perf-spike.
"""

from __future__ import annotations

import argparse
import ast
import atexit
import concurrent.futures
import contextlib
import datetime
import functools
import importlib.metadata
import ipaddress
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
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from usertunnel.io import netns

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
import core_scale  # noqa: E402  (benchmarks/ is not a package; core_scale.py sits beside this file)

sys.path.append(str(REPO_ROOT / "tests" / "interop"))
import ovs_peer  # noqa: E402  (the interop tests' OVS harness: OvsSwitch is one OVS end)

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

# Open vSwitch's lab: its own two namespaces and veth (OVS wants the underlay address on its br-phy bridge).
OVS_NS_A, OVS_NS_B = "utb-ovs-a", "utb-ovs-b"
OVS_VETH_A, OVS_VETH_B = "utboa", "utbob"
OVS_KEY = "1234"
OVS_MTU = 1500 - 20 - 8  # outer IPv4, GRE with a key
OVS_MACS = {  # (br-phy, br-int) of each end: both br-phy share the veth's wire, so they must differ
    OVS_NS_A: ("02:00:00:00:01:01", "02:00:00:00:00:01"),
    OVS_NS_B: ("02:00:00:00:01:02", "02:00:00:00:00:02"),
}
# The lean prototype: run in place, from the sibling checkout of the shared reference material, when present.
PROTOTYPE_DIR = REPO_ROOT.parent / "shared" / "reference" / "perf-spike"
PROTOTYPE = PROTOTYPE_DIR / "fastgre.py"
PROTOTYPE_READY = "ready {"  # what fastgre.py prints on stdout ("ready {features...}") once its TUN is up
# Four `usertunnel up` in one namespace: one gre tunnel each, keys 1..4, inner 203.0.113.4i/30.
MULTI_COUNT = 4
MULTI_DEV = "utbm{}"


class BenchmarkError(Exception):
    """A measurement could not be made; the message says which and why."""


# --- paths -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """One way for traffic to get from A to B."""

    name: str
    kind: str  # "veth", "vxlan", "baseline", "usertunnel", "ovs", "prototype" or "multi"
    options: tuple[str, ...] = ()  # `usertunnel up` (or fastgre.py) options beyond addresses and name

    @property
    def target(self) -> str:
        return UNDER_B if self.kind == "veth" else INNER_B

    @property
    def has_processes(self) -> bool:
        return self.kind in ("baseline", "usertunnel", "ovs", "prototype", "multi")

    @property
    def receiving_device(self) -> str:
        """B's device that hands the path's packets to B's IP stack."""
        devices: dict[str, str] = {"veth": VETH_B, "vxlan": VXLAN_DEV, "ovs": ovs_peer.BR_INT}
        return devices.get(self.kind, TUN_DEV)

    @property
    def namespaces(self) -> tuple[str, str]:
        """(A, B): where the traffic starts and ends (read at call time: queues.py renames bench's lab)."""
        return (OVS_NS_A, OVS_NS_B) if self.kind == "ovs" else (NS_A, NS_B)

    @property
    def full_features(self) -> bool:
        """GRE key+seq+csum (usertunnel's or the prototype's), which the prototype with --feat is compared with."""
        return "--csum" in self.options or "--feat" in self.options


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
OVS = Route(f"Open vSwitch userspace gre key {OVS_KEY}", "ovs")
# The yardstick, with the flags of its README: key+seq+csum (O(1) checksum), coalescing, recvmmsg/sendmmsg; and
# the same without GRE options.
PROTO_KSC = Route(
    "lean prototype (perf-spike), key+seq+csum", "prototype", ("--feat", "--csum-o1", "--gro", "--gro-csum", "--mmsg")
)
PROTO_PLAIN = Route("lean prototype, no features", "prototype", ("--gro", "--gro-csum", "--mmsg"))
MULTI = Route(f"{MULTI_COUNT} usertunnel up in one namespace", "multi")
# Issue 16: the same tunnel carried in UDP (FOU). With the UDP checksum the send path uses UDP_SEGMENT and the
# receive path UDP_GRO (the offloads); without it the kernel refuses segmentation: one sendmsg per packet.
_FOU = ("--encap", "fou", "--encap-dport", "5555")
GRE_FOU = Route("usertunnel gre in FOU, UDP offloads", "usertunnel", (*_FOU, "--encap-csum"))
GRE_KSC_FOU = Route(
    "usertunnel gre key+seq+csum in FOU, UDP offloads", "usertunnel", (*GRE_KSC.options, *_FOU, "--encap-csum")
)
GRE_KSC_FOU_PLAIN = Route("usertunnel gre key+seq+csum in FOU, no offloads", "usertunnel", (*GRE_KSC.options, *_FOU))
# Issue 17: IPsec. The key file is written when a run starts (ESP_KEYS stands for its path); both ends use
# one security association each way with the same key and SPI, which is fine for a measurement.
ESP_KEYS = "@esp-keys"
GRE_ESP = Route("usertunnel gre key over ESP (AES-GCM-128)", "usertunnel", ("--key", "1234", "--esp-keys", ESP_KEYS))
VTI = Route("usertunnel vti (ESP, AES-GCM-128)", "usertunnel", ("--mode", "vti", "--key", "1", "--esp-keys", ESP_KEYS))
PATHS = (
    VETH, VXLAN, BASELINE, GRE, GRE_KSC, GRE_KSC_DERIVED, IPIP, GRE_NO_COALESCE, GRE_PER_PACKET,
    OVS, PROTO_KSC, PROTO_PLAIN, MULTI, GRE_FOU, GRE_KSC_FOU, GRE_KSC_FOU_PLAIN, GRE_ESP, VTI,
)  # fmt: skip


def esp_keys_file() -> str:
    """A key file for the IPsec paths (mode 0600, random AES-GCM-128 key and salt), written once per process."""
    path = Path(tempfile.gettempdir()) / f"usertunnel-bench-esp-{os.getpid()}.toml"
    if not path.exists():
        sa = f'spi = 0x1000\naead = "rfc4106(gcm(aes))"\nkey = "0x{os.urandom(20).hex()}"\nicv = 128\n'
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"[out]\n{sa}\n[in]\n{sa}")
        atexit.register(path.unlink, missing_ok=True)
    return str(path)


def select_paths(names: str) -> tuple[Route, ...]:
    """The paths `--paths` names: comma-separated, each a substring of a path's name or a path's kind."""
    wanted = [name.strip().lower() for name in names.split(",") if name.strip()]
    chosen = [p for p in PATHS if any(w in p.name.lower() or w == p.kind for w in wanted)]
    unknown = [w for w in wanted if not any(w in p.name.lower() or w == p.kind for p in PATHS)]
    if unknown or not chosen:
        known = "; ".join(p.name for p in PATHS)
        raise argparse.ArgumentTypeError(f"no path matches {', '.join(unknown) or names!r} (paths: {known})")
    return tuple(chosen)


def absent_reason(path: Route) -> str | None:
    """Why this path cannot be measured on this machine (its row then says so), or None."""
    if path.kind == "prototype" and not PROTOTYPE.is_file():
        return f"absent ({PROTOTYPE_DIR} not found)"
    if path.kind == "ovs":
        problem = ovs_peer.missing()
        if problem is not None:
            return f"absent ({problem})"
    return None


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
    """A tunnel end (`usertunnel up`, the baseline loop or the prototype) in a namespace; its output read by a thread.

    Like usertunnel.io.netns.UpProcess, which only starts `usertunnel up`: ready
    when a line contains ': up ' (`ready_marker`), counters from the ': stats '
    lines at exit (and from the prototype's "stats[0] {...}" line).
    """

    def __init__(
        self,
        namespace: str,
        argv: Sequence[str],
        tree: Path = REPO_ROOT,
        ready_marker: str = ": up ",
        with_stdout: bool = False,
    ) -> None:
        """`tree`: the checkout whose code runs (benchmarks/latency.py compares two); `with_stdout`: read stdout
        too (merged with stderr), for a process that says it is ready there (the prototype)."""
        self.namespace = namespace
        self.ready_marker = ready_marker
        env = dict(os.environ, PYTHONPATH=str(tree))
        out = (subprocess.PIPE, subprocess.STDOUT) if with_stdout else (subprocess.DEVNULL, subprocess.PIPE)
        self.proc = netns.popen(namespace, argv, stdout=out[0], stderr=out[1], cwd=tree, env=env)
        self._stream = self.proc.stdout if with_stdout else self.proc.stderr
        self.lines: list[str] = []
        self.exit_stats: dict[str, object] = {}  # the ': stats ' lines printed at exit, by name
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self._stream is not None
        for raw in self._stream:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            if self.ready_marker in line:
                self._ready.set()
        self._ready.set()

    def wait_ready(self) -> None:
        self._ready.wait(READY_TIMEOUT)
        if not any(self.ready_marker in line for line in self.lines):
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
            elif line.startswith("stats[") and "] {" in line:  # the prototype's counters (a Python dict)
                with contextlib.suppress(ValueError, SyntaxError):
                    counts = ast.literal_eval(line.partition("] ")[2])
                    # What it failed to deliver or send; rx_ooo only counts (it delivers those).
                    failed = {k: counts.get(k, 0) for k in ("rx_bad", "werr", "serr")}
                    self.exit_stats["prototype"] = {**counts, "drops": failed}


def tunnel_argv(path: Route, local: str, remote: str, inner: str) -> list[str]:
    if path.kind == "prototype":  # run in place: a yardstick, never copied here
        where = ["--local", local, "--remote", remote, "--addr", f"{inner}/{INNER_PREFIX}", "--dev", TUN_DEV]
        return [sys.executable, str(PROTOTYPE), *path.options, *where]
    common = ["--local", local, "--remote", remote, "--name", TUN_DEV, "--address", f"{inner}/{INNER_PREFIX}"]
    if path.kind == "baseline":
        return [sys.executable, str(BENCH_DIR / "baseline_loop.py"), *common]
    options = [esp_keys_file() if option == ESP_KEYS else option for option in path.options]
    return [sys.executable, "-m", "usertunnel", "up", *common, *options]


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

    def start(namespace: str, local: str, remote: str, inner: str) -> TunnelProcess:
        command = tunnel_argv(path, local, remote, inner) if argv is None else argv(local, remote, inner)
        if path.kind == "prototype":
            return TunnelProcess(namespace, command, tree, PROTOTYPE_READY, with_stdout=True)
        return TunnelProcess(namespace, command, tree)

    ends = ((NS_A, UNDER_A, UNDER_B, INNER_A), (NS_B, UNDER_B, UNDER_A, INNER_B))
    with ends_ready(functools.partial(start, *end) for end in ends) as processes:
        yield processes


@contextlib.contextmanager
def ends_ready(starts: Iterable[Callable[[], TunnelProcess]]) -> Iterator[list[TunnelProcess]]:
    """Start each end in turn, wait until every one is ready, and yield them; afterwards (or when a start or a
    wait fails) stop every end that was started."""
    ends: list[TunnelProcess] = []
    try:
        for start in starts:
            ends.append(start())
        for end in ends:
            end.wait_ready()
        yield ends
    finally:
        for end in ends:
            end.stop()


class End(Protocol):
    """What a measurement needs of a tunnel end: its process, and the counters it printed at exit."""

    @property
    def pid(self) -> int: ...

    @property
    def exit_stats(self) -> dict[str, object]: ...


@dataclass
class DaemonEnd:
    """An end that is a daemon we measure but do not read counters from (ovs-vswitchd)."""

    pid: int
    exit_stats: dict[str, object] = field(default_factory=dict)


def remove_ovs_lab() -> None:
    for name in (OVS_NS_A, OVS_NS_B):
        netns.remove(name)  # kills what runs there (OVS daemons of an interrupted run included)


@contextlib.contextmanager
def ovs_pair() -> Iterator[list[DaemonEnd]]:
    """Open vSwitch's userspace GRE on both ends of a veth of its own (utb-ovs-a, utb-ovs-b), ready to carry
    traffic between 203.0.113.1 and .2; yields the two ovs-vswitchd processes. The daemons are stopped and the
    namespaces removed however the block ends."""
    switches: list[ovs_peer.OvsSwitch] = []
    try:
        try:
            remove_ovs_lab()
            for name in (OVS_NS_A, OVS_NS_B):
                netns.create(name, ipv6=False)
            netns.veth(OVS_NS_A, OVS_VETH_A, OVS_NS_B, OVS_VETH_B, None, None, 24)  # addresses go on br-phy
            ends = (
                (OVS_NS_A, OVS_VETH_A, UNDER_A, INNER_A, UNDER_B, INNER_B, OVS_NS_B),
                (OVS_NS_B, OVS_VETH_B, UNDER_B, INNER_B, UNDER_A, INNER_A, OVS_NS_A),
            )
            for namespace, uplink, underlay, inner, remote, remote_inner, other in ends:
                phy_mac, int_mac = OVS_MACS[namespace]
                switch = ovs_peer.OvsSwitch(
                    namespace, uplink, underlay, inner, remote, remote_inner, phy_mac, int_mac, OVS_MACS[other][1]
                )
                switches.append(switch)
                switch.start()
            for switch in switches:  # both daemons up first: each learns the other's MAC through it
                switch.gre({"key": OVS_KEY}, OVS_MTU)
            pids = [switch.vswitchd_pid for switch in switches]
        except ovs_peer.PeerError as exc:
            raise BenchmarkError(f"Open vSwitch: {exc}") from None
        yield [DaemonEnd(pid) for pid in pids if pid is not None]
    finally:
        try:
            for switch in switches:
                switch.close()  # SIGTERM, SIGKILL after 5 s; its work directory removed
        finally:
            remove_ovs_lab()  # and whatever still runs in the namespaces is killed with them


def multi_tunnels() -> list[tuple[str, str, str, str]]:
    """(TUN device, A's inner address, B's inner address, GRE key) of the one-namespace tunnels."""
    base = ipaddress.IPv4Address("203.0.113.0")
    return [(MULTI_DEV.format(i), str(base + 4 * i + 1), str(base + 4 * i + 2), str(i + 1)) for i in range(MULTI_COUNT)]


@contextlib.contextmanager
def multi_up() -> Iterator[list[TunnelProcess]]:
    """MULTI_COUNT `usertunnel up` in A and as many in B, one gre tunnel each; A's ends first, then B's."""
    starts = []
    for namespace, local, remote in ((NS_A, UNDER_A, UNDER_B), (NS_B, UNDER_B, UNDER_A)):
        for device, inner_a, inner_b, key in multi_tunnels():
            inner = inner_a if namespace == NS_A else inner_b
            argv = [sys.executable, "-m", "usertunnel", "up", "--local", local, "--remote", remote,
                    "--name", device, "--address", f"{inner}/{INNER_PREFIX}", "--key", key]  # fmt: skip
            starts.append(functools.partial(TunnelProcess, namespace, argv))
    with ends_ready(starts) as ends:
        yield ends


@contextlib.contextmanager
def ends_up(path: Route) -> Iterator[Sequence[End]]:
    """The path ready to carry traffic (its own lab for Open vSwitch): the ends whose CPU is measured."""
    if path.kind == "ovs":
        with ovs_pair() as daemons:
            yield daemons
    else:
        with path_up(path) as ends:
            yield ends


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
def iperf3_server(address: str, namespace: str | None = None, port: int = IPERF_PORT) -> Iterator[None]:
    """An iperf3 server in B (or `namespace`) bound to `address` and `port` (serving test after test), listening
    when the block starts."""
    where = NS_B if namespace is None else namespace
    argv = ["iperf3", "-s", "-B", address, "-p", str(port)]
    server = netns.popen(where, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + LISTEN_TIMEOUT
        while True:
            if server.poll() is not None:
                raise BenchmarkError(f"iperf3 server in {where} exited with status {server.returncode}")
            # Polled with ss rather than by connecting, which iperf3 would take for a test.
            if netns.run(where, ["ss", "-Hltn", f"sport = :{port}"], timeout=5).stdout.strip():
                break
            if time.monotonic() > deadline:
                raise BenchmarkError(f"iperf3 server in {where} not listening after {LISTEN_TIMEOUT} s")
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


def iperf3(
    address: str, seconds: int, *extra: str, namespace: str | None = None, port: int = IPERF_PORT
) -> dict[str, object]:
    """Run an iperf3 client in A (or `namespace`); its JSON report."""
    argv = ["iperf3", "-c", address, "-p", str(port), "-t", str(seconds), "-J", *extra]
    try:
        result = netns.run(NS_A if namespace is None else namespace, argv, timeout=seconds + IPERF_SLACK)
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


def tcp_mbit_s(address: str, seconds: int, namespace: str | None = None, port: int = IPERF_PORT) -> float:
    end = iperf3(address, seconds, namespace=namespace, port=port)["end"]
    assert isinstance(end, dict)
    return float(end["sum_received"]["bits_per_second"]) / 1e6


def rx_packets(device: str, namespace: str | None = None) -> int:
    """Packets `device` in B (or `namespace`) has handed to its IP stack (rx counter, over netlink by `ip -s -j`)."""
    where = NS_B if namespace is None else namespace
    result = netns.run(where, ["ip", "-s", "-j", "link", "show", "dev", device], timeout=10)
    try:
        return int(json.loads(result.stdout)[0]["stats64"]["rx"]["packets"])
    except (ValueError, LookupError, TypeError):
        said = result.stderr.decode(errors="replace").strip()
        raise BenchmarkError(f"no rx counter for {device} in {where}: {said}") from None


def udp_delivered(route: Route, seconds: int) -> tuple[int, float]:
    """64-byte UDP payloads sent as fast as iperf3 can: (packets the path delivered to B's stack, seconds sent).

    Counted on B's receiving device, not by the iperf3 server: a single receiving
    socket tops out near the tunnels' rates here and would be measured instead.
    """
    client, server = route.namespaces
    before = rx_packets(route.receiving_device, server)
    end = iperf3(route.target, seconds, "-u", "-l", str(UDP_PAYLOAD), "-b", "0", namespace=client)["end"]
    delivered = rx_packets(route.receiving_device, server) - before
    assert isinstance(end, dict)
    return delivered, float(end["sum"]["seconds"])


_PING_TIME = re.compile(r"time=([0-9.]+) ms")


def rtts_us(address: str, count: int, namespace: str | None = None) -> list[float]:
    """Round-trip times in µs of `count` pings at PING_INTERVAL from A (or `namespace`), warm-up replies dropped."""
    argv = ["ping", "-n", "-i", str(PING_INTERVAL), "-c", str(count + PING_WARMUP), "-W", "1", address]
    timeout = (count + PING_WARMUP) * PING_INTERVAL + PING_SLACK
    try:
        result = netns.run(NS_A if namespace is None else namespace, argv, timeout=timeout)
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


@dataclass
class MultiSample:
    """The one-namespace path, measured once: MULTI_COUNT tunnels, a TCP flow through each at once."""

    tcp_each: list[float]  # Mbit/s of each tunnel's flow
    cpu: CpuMeter  # every tunnel process, over the flows
    unmatched: list[int | None]  # each process's unmatched drops (A's, then B's); None if it printed none
    key_mismatch: list[int]  # each process's tunnel's key_mismatch drops: another tunnel's key, same addresses
    rss_mb: float | None
    load: float
    errors: dict[str, int] = field(default_factory=dict)  # the tunnels' other drops

    @property
    def tcp_mbit_s(self) -> float:
        return sum(self.tcp_each)

    @property
    def foreign(self) -> list[int | None]:
        """Packets each process read that were another's: its unmatched drops and its tunnel's key_mismatch (all
        tunnels share the outer addresses, so another's packet matches them and is blamed on the wrong key)."""
        return [None if u is None else u + k for u, k in zip(self.unmatched, self.key_mismatch, strict=True)]

    @property
    def mbit_s_per_core(self) -> float | None:
        return self.tcp_mbit_s / (self.cpu.cpu / self.cpu.wall) if self.cpu.cpu > 0 else None


def unmatched_count(stats: dict[str, object]) -> int | None:
    """Packets a process's raw socket received that none of its tunnels took (its 'unmatched' drops), or None."""
    unmatched = stats.get("unmatched")
    if not isinstance(unmatched, dict):
        return None
    drops = unmatched.get("drops", {})
    return sum(n for n in drops.values() if isinstance(n, int)) if isinstance(drops, dict) else None


def tunnel_errors(stats: dict[str, object], skip: Sequence[str] = ()) -> dict[str, int]:
    """Drop and error counters a tunnel end printed at exit, by reason (every kind of process); `skip`: names of
    stats lines to leave out."""
    found: dict[str, int] = {}
    for name, values in stats.items():
        if not isinstance(values, dict) or name in skip:
            continue
        drops = values.get("drops", {})
        items = list(drops.items()) if isinstance(drops, dict) else []
        items += [(k, v) for k, v in values.items() if k.endswith("_errors")]
        for reason, n in items:
            if isinstance(n, int) and n:
                found[reason] = found.get(reason, 0) + n
    return found


def measure(path: Route, seconds: int, pings: int) -> Sample:
    client, server = path.namespaces
    with ends_up(path) as ends, iperf3_server(path.target, server):
        pids = [end.pid for end in ends]
        rtt = rtts_us(path.target, pings, client)
        with CpuMeter(pids) as tcp_cpu:
            mbit_s = tcp_mbit_s(path.target, seconds, client)
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


def measure_multi(seconds: int) -> MultiSample:
    """MULTI_COUNT tunnels by as many processes per namespace, an iperf3 TCP flow through each, all at once."""
    tunnels = multi_tunnels()
    with multi_up() as ends, contextlib.ExitStack() as servers:
        for i, (_, _, inner_b, _) in enumerate(tunnels):
            servers.enter_context(iperf3_server(inner_b, port=IPERF_PORT + i))
        pids = [end.pid for end in ends]
        with CpuMeter(pids) as cpu, concurrent.futures.ThreadPoolExecutor(len(tunnels)) as pool:
            flows = [pool.submit(tcp_mbit_s, inner_b, seconds, None, IPERF_PORT + i)
                     for i, (_, _, inner_b, _) in enumerate(tunnels)]  # fmt: skip
            each = [flow.result() for flow in flows]  # each bounded by iperf3's own timeout
        rss = peak_rss_mb(pids)
    errors: dict[str, int] = {}
    key_mismatch = []
    for end in ends:
        own = tunnel_errors(end.exit_stats, skip=("unmatched",))
        key_mismatch.append(own.pop("key_mismatch", 0))
        for reason, n in own.items():
            errors[reason] = errors.get(reason, 0) + n
    return MultiSample(
        tcp_each=each,
        cpu=cpu,
        unmatched=[unmatched_count(end.exit_stats) for end in ends],
        key_mismatch=key_mismatch,
        rss_mb=rss,
        load=os.getloadavg()[0],
        errors=errors,
    )


def describe_multi(s: MultiSample) -> str:
    flows = " + ".join(f"{m:.0f}" for m in s.tcp_each)
    unmatched = ", ".join("?" if n is None else f"{n:,}" for n in s.unmatched)
    keys = ", ".join(f"{n:,}" for n in s.key_mismatch)
    text = (
        f"{MULTI.name}: TCP {s.tcp_mbit_s:.0f} Mbit/s ({flows}), another's packets read per process: "
        f"unmatched {unmatched}; key_mismatch {keys}"
    )
    if s.mbit_s_per_core is not None:
        text += f", {s.mbit_s_per_core:.0f} Mbit/s per core"
    if s.errors:
        text += ", drops: " + ", ".join(f"{k} {v}" for k, v in sorted(s.errors.items()))
    return text


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


@dataclass
class Results:
    """What a run measured: samples per path, the one-namespace path's, and the paths that could not run."""

    paths: tuple[Route, ...] = PATHS  # the paths the run was asked for
    samples: dict[Route, list[Sample]] = field(default_factory=dict)
    multi: list[MultiSample] = field(default_factory=list)
    absent: dict[Route, str] = field(default_factory=dict)  # path -> why (its row says so)

    @property
    def loads(self) -> list[float]:
        return [s.load for runs in self.samples.values() for s in runs] + [s.load for s in self.multi]


def run_rounds(
    rounds: int, seconds: int, pings: int, log: Callable[[str], None], paths: Sequence[Route] = PATHS
) -> Results:
    """Every path once per round; round r starts at path r (mod the number of paths) so no path always follows
    the same one."""
    results = Results(paths=tuple(paths))
    present = []
    for path in paths:
        reason = absent_reason(path)
        if reason is None:
            present.append(path)
        else:
            results.absent[path] = reason
            log(f"{path.name}: {reason}")
        if path.kind != "multi":
            results.samples[path] = []
    for r in range(rounds):
        order = present[r % len(present) :] + present[: r % len(present)] if present else []
        for path in order:
            if path.kind == "multi":
                multi = measure_multi(seconds)
                results.multi.append(multi)
                log(f"round {r + 1}/{rounds} {describe_multi(multi)} (load {multi.load:.2f})")
                continue
            sample = measure(path, seconds, pings)
            results.samples[path].append(sample)
            log(f"round {r + 1}/{rounds} {describe(path, sample)} (load {sample.load:.2f})")
    return results


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


def absolute_table(results: Results) -> str:
    veth = results.samples.get(VETH)
    veth_p50 = Summary.of(veth).p50 if veth else None
    head = (
        "| path | TCP Mbit/s | Mbit/s per tunnel core | 64-byte UDP packets/s delivered | CPU s per million packets "
        "| RTT p50 µs | RTT p99 µs | RTT p50 added µs | peak RSS MB | tunnel drops |"
    )
    lines = [head, "|---|" + "---:|" * 9]
    for path, runs in results.samples.items():
        if not runs:
            why = results.absent.get(path, "not measured")
            lines.append(f"| {path.name} | {why} |" + " — |" * 8)
            continue
        added = [s.rtt_p50 - veth_p50 for s in runs] if veth_p50 is not None else []
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
            str(drops) if path.has_processes and path.kind != "ovs" else "—",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def multi_table(results: Results) -> str:
    """The one-namespace path: aggregate TCP, and each process's count of another's packets (every round); an
    empty string when the run did not ask for it."""
    if MULTI not in results.paths:
        return ""
    head = (
        f"| path | aggregate TCP Mbit/s | each tunnel's TCP Mbit/s (median) | Mbit/s per tunnel core "
        f"| another's packets read, per process: unmatched + key_mismatch, {MULTI_COUNT} in A / {MULTI_COUNT} in B "
        "| tunnel drops | peak RSS MB |"
    )
    lines = [f"### {MULTI.name}, median [min–max]", "", head, "|---|" + "---:|" * 6]
    runs = results.multi
    if not runs:
        lines.append(f"| {MULTI.name} | {results.absent.get(MULTI, 'not measured')} |" + " — |" * 5)
        return "\n".join(lines) + "\n"
    each = [med([s.tcp_each[i] for s in runs]) or 0.0 for i in range(MULTI_COUNT)]
    rounds = []
    for s in runs:
        counts = ["?" if n is None else f"{n:,}" for n in s.foreign]
        rounds.append(" ".join(counts[:MULTI_COUNT]) + " / " + " ".join(counts[MULTI_COUNT:]))
    rss = [s.rss_mb for s in runs if s.rss_mb is not None]
    cells = [
        MULTI.name,
        spread([s.tcp_mbit_s for s in runs]),
        " / ".join(f"{m:,.0f}" for m in each),
        spread([s.mbit_s_per_core for s in runs]),
        "; ".join(rounds),
        str(sum(sum(s.errors.values()) for s in runs)),
        f"{max(rss):.1f}" if rss else "—",
    ]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure_of(s: Summary | None, name: str) -> float | None:
    """A path's median figure by name (tcp, per_core, pps, cpu_per_mpkt), None if the path was not measured."""
    if s is None:
        return None
    value: float | None = getattr(s, name)
    return value


def ratio_table(summaries: dict[Route, Summary]) -> str:
    base, vx, veth, ovs = (summaries.get(p) for p in (BASELINE, VXLAN, VETH, OVS))

    def added(s: Summary | None) -> float | None:
        return None if s is None or veth is None else s.p50 - veth.p50

    head = (
        "| path | TCP ÷ baseline | TCP ÷ vxlan | TCP ÷ OVS | per core ÷ baseline | per core ÷ OVS "
        "| per core ÷ prototype | packets/s ÷ baseline | packets/s ÷ vxlan | packets/s ÷ OVS "
        "| CPU per packet ÷ baseline | RTT added ÷ baseline | RTT added ÷ vxlan |"
    )
    lines = [head, "|---|" + "---:|" * 12]
    for path, s in summaries.items():
        if path is VETH:
            continue
        # The prototype with the same GRE options: key+seq+csum rows against its --feat run, the others without.
        proto = summaries.get(PROTO_KSC if path.full_features else PROTO_PLAIN)
        cells = [
            path.name,
            ratio(s.tcp, figure_of(base, "tcp")),
            ratio(s.tcp, figure_of(vx, "tcp")),
            ratio(s.tcp, figure_of(ovs, "tcp")),
            ratio(s.per_core, figure_of(base, "per_core")),
            ratio(s.per_core, figure_of(ovs, "per_core")),
            "—" if path.kind == "prototype" else ratio(s.per_core, figure_of(proto, "per_core")),
            ratio(s.pps, figure_of(base, "pps")),
            ratio(s.pps, figure_of(vx, "pps")),
            ratio(s.pps, figure_of(ovs, "pps")),
            ratio(s.cpu_per_mpkt, figure_of(base, "cpu_per_mpkt")),
            ratio(added(s), added(base)),
            ratio(added(s), added(vx)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(summaries: dict[Route, Summary], results: Results) -> list[str]:
    """Issue 14's targets, each with the numbers and met / not met (not measured when a path is missing)."""
    ksc, gre, base, veth = (summaries.get(p) for p in (GRE_KSC, GRE, BASELINE, VETH))
    ovs, proto = summaries.get(OVS), summaries.get(PROTO_KSC)
    checks: list[tuple[str, bool | None, str]] = []

    def fraction(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    def missing(*paths: tuple[Route, Summary | None]) -> str:
        names = [f"{p.name} {results.absent.get(p, 'not measured')}" for p, s in paths if s is None]
        return "; ".join(names)

    def check(text: str, a: tuple[Route, Summary | None], b: tuple[Route, Summary | None],
              figure: str, unit: str, at_least: float) -> None:  # fmt: skip
        (_, sa), (_, sb) = a, b
        x, y = (None if s is None else getattr(s, figure) for s in (sa, sb))
        f = fraction(x, y)
        if f is None:
            checks.append((text, None, missing(a, b) or f"no {unit} figure"))
            return
        checks.append((text, f >= at_least, f"{x:,.0f} vs {y:,.0f} {unit} = {f:.2f}×"))

    per_core = "Mbit/s per core"
    check("gre key+seq+csum ≥ 1.7× the baseline loop in Mbit/s per tunnel core",
          (GRE_KSC, ksc), (BASELINE, base), "per_core", per_core, 1.7)  # fmt: skip
    check("gre key+seq+csum ≥ the lean prototype's key+seq+csum in Mbit/s per tunnel core",
          (GRE_KSC, ksc), (PROTO_KSC, proto), "per_core", per_core, 1.0)  # fmt: skip
    check("gre key+seq+csum ≥ 2× the baseline loop in TCP throughput",
          (GRE_KSC, ksc), (BASELINE, base), "tcp", "Mbit/s", 2.0)  # fmt: skip
    check(f"gre key+seq+csum ≥ Open vSwitch userspace gre key {OVS_KEY} in TCP throughput",
          (GRE_KSC, ksc), (OVS, ovs), "tcp", "Mbit/s", 1.0)  # fmt: skip
    check("gre key+seq+csum ≥ 1.2× the baseline loop in 64-byte packets/s delivered",
          (GRE_KSC, ksc), (BASELINE, base), "pps", "packets/s", 1.2)  # fmt: skip
    features = fraction(figure_of(ksc, "per_core"), figure_of(gre, "per_core"))
    if ksc is None or gre is None or features is None:
        checks.append(("gre key+seq+csum within 5% of plain gre (Mbit/s per tunnel core)", None,
                       missing((GRE_KSC, ksc), (GRE, gre)) or "no per-core figure"))  # fmt: skip
    else:
        checks.append((
            "gre key+seq+csum within 5% of plain gre (Mbit/s per tunnel core)",
            features >= 0.95,
            f"{ksc.per_core or 0:,.0f} vs {gre.per_core or 0:,.0f} Mbit/s per core = {features:.2f}× "
            f"(TCP: {ksc.tcp:,.0f} vs {gre.tcp:,.0f} Mbit/s = {ksc.tcp / gre.tcp:.2f}×)",
        ))  # fmt: skip
    derived = summaries.get(GRE_KSC_DERIVED)
    if derived is not None and gre is not None:
        share = fraction(derived.per_core, gre.per_core)
        checks.append((
            "… the same with --csum-verify derived (received checksums checked from the headers)",
            None if share is None else share >= 0.95,
            f"{derived.per_core or 0:,.0f} vs {gre.per_core or 0:,.0f} Mbit/s per core = {share or 0:.2f}× "
            f"(TCP: {derived.tcp:,.0f} vs {gre.tcp:,.0f} Mbit/s = {derived.tcp / gre.tcp:.2f}×)",
        ))  # fmt: skip
    if ksc is None or base is None or veth is None:
        checks.append(("latency added by the tunnel p50 ≤ the baseline loop's (gre key+seq+csum)", None,
                       missing((GRE_KSC, ksc), (BASELINE, base), (VETH, veth))))  # fmt: skip
    else:
        added, base_added = ksc.p50 - veth.p50, base.p50 - veth.p50
        checks.append((
            "latency added by the tunnel p50 ≤ the baseline loop's (gre key+seq+csum)",
            added <= base_added,
            f"{added:.0f} µs added (p50 {ksc.p50:.0f} µs − veth {veth.p50:.0f} µs); baseline loop adds "
            f"{base_added:.0f} µs",
        ))  # fmt: skip
    rss = [s.rss for p, s in summaries.items() if p.kind == "usertunnel" and s.rss is not None]
    rss += [s.rss_mb for s in results.multi if s.rss_mb is not None]
    checks.append((
        "peak RSS ≤ 60 MB for one tunnel (largest usertunnel process of the run)",
        max(rss) <= 60 if rss else None,
        f"{max(rss):.1f} MB" if rss else "not measured",
    ))  # fmt: skip
    multi_text = f"{MULTI.name}: no process reads another's packets (unmatched, key_mismatch included, stays 0)"
    counts = [n for s in results.multi for n in s.foreign]
    if not counts:
        checks.append((multi_text, None, results.absent.get(MULTI, "not measured")))
    else:
        known = [n for n in counts if n is not None]
        unmatched = sum(n for s in results.multi for n in s.unmatched if n is not None)
        keyed = sum(n for s in results.multi for n in s.key_mismatch)
        gave = f"{len(known)} of {len(counts)} process runs printed their counters"
        checks.append((
            multi_text,
            None if not known else len(known) == len(counts) and max(known) == 0,
            f"up to {max(known, default=0):,} per process, {sum(known):,} in all (unmatched {unmatched:,}, "
            f"key_mismatch {keyed:,}; {gave}); aggregate TCP {med([s.tcp_mbit_s for s in results.multi]) or 0:,.0f} "
            "Mbit/s",
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
    results: Results,
    loads: list[float],
    args: argparse.Namespace,
    started: datetime.datetime,
    heads: tuple[str, str],
) -> str:
    summaries = {path: Summary.of(runs) for path, runs in results.samples.items() if runs}
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

{absolute_table(results)}

{multi_table(results)}
## Ratios of medians

{ratio_table(summaries)}

"÷ prototype" divides by the lean prototype run with the same GRE options: key+seq+csum rows by its
key+seq+csum run, the others by its run without features. "÷ OVS": Open vSwitch's userspace GRE with a key.

{TARGETS_HEADING}

{chr(10).join(targets(summaries, results))}

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

Open vSwitch {ovs_version()}: the userspace (netdev) datapath on both ends, in a lab of its own built for each
measurement and removed after it, because OVS wants the underlay address on its br-phy bridge rather than on the
veth: namespaces {OVS_NS_A} and {OVS_NS_B} joined by a veth pair (no addresses, MTU 1500, IPv6 off), in each an
ovsdb-server and an ovs-vswitchd (the interop tests' harness, tests/interop/ovs_peer.py), br-phy holding
198.51.100.1 or .2/24 with the veth as its port, br-int holding 203.0.113.1 or .2/30 (MTU {OVS_MTU}) with a GRE
port `key={OVS_KEY}, packet_type=legacy_l3` (OVS 3.1 cannot send csum+seq correctly, so key only); traffic runs
between the br-int addresses as between the tunnel devices of the other paths, and packets delivered are br-int's
rx counter in {OVS_NS_B}. Its tunnel CPU is both ovs-vswitchd processes' (every thread), its peak RSS the larger
one's; it has no drop counters here. The lean prototype is ../shared/reference/perf-spike/fastgre.py run in place
(a yardstick, not part of usertunnel) with its README's flags, `--feat --csum-o1 --gro --gro-csum --mmsg`
(key+seq+csum, its own key 0x01020304, MTU 1464) or `--gro --gro-csum --mmsg` (no GRE options, MTU 1476); it
accepts any source, does not drop old sequence numbers and keeps one tunnel, which the product must not; its drops
are the counters it prints at exit (rx_bad, werr, serr). "{MULTI.name}": {MULTI_COUNT} `usertunnel up` processes
in each of utb-a and utb-b, one gre tunnel each (keys 1–{MULTI_COUNT}, TUN devices
{MULTI_DEV.format(0)}–{MULTI_DEV.format(MULTI_COUNT - 1)}, inner 203.0.113.0/30, .4/30, .8/30, .12/30), one
iperf3 TCP flow through each at once for {args.seconds} s: aggregate = the sum of the receivers' rates, per core
over the CPU of all {2 * MULTI_COUNT} processes. Another's packets read: what each process counted at exit,
per round, A's processes then B's, as its "unmatched" drops (its raw socket received a packet none of its
tunnels took) plus its tunnel's key_mismatch drops (all {MULTI_COUNT} tunnels share the outer addresses, so a
packet of another process's tunnel matches them and is blamed on the key); 0 when each process's socket only
receives its own tunnels' packets.
"""


def ovs_version() -> str:
    tool = shutil.which("ovs-vswitchd") or shutil.which("ovs-vswitchd", path="/usr/local/sbin:/usr/sbin:/sbin")
    if tool is None:
        return "(not installed)"
    try:
        out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "(version unknown)"
    found = re.search(r"\d+\.\d+\.\d+", out)
    return found.group(0) if found else "(version unknown)"


HISTORY = "## History"
HISTORY_NOTE = "Earlier runs, newest first, as they were written (headings moved down two levels)."


PROFILE_START, PROFILE_END = "<!-- profile:start -->", "<!-- profile:end -->"  # benchmarks/profile.py's block
TARGETS_HEADING = "## Issue 14 targets"
# The profile block goes right after the ratios, above the targets: where benchmarks/profile.py puts a new one.
PROFILE_BEFORE = "\n" + TARGETS_HEADING


def find_profile(text: str) -> str | None:
    """The profile block with its markers, or None."""
    start = text.find(PROFILE_START)
    end = text.find(PROFILE_END, start + 1)
    return text[start : end + len(PROFILE_END)] if start >= 0 and end >= 0 else None


def with_profile(new: str, block: str | None) -> str:
    """`new` with the profile block right after its ratios (above its targets), or at its end."""
    if block is None:
        return new
    at = new.find(PROFILE_BEFORE)
    if at < 0:
        return new.rstrip("\n") + "\n\n" + block + "\n"
    return new[:at].rstrip("\n") + "\n\n" + block + "\n" + new[at:]


def with_history(new: str, old: str) -> str:
    """`new` on top; the previous report (from `old`) moves under History, above the older history. A profile
    block (benchmarks/profile.py's) in the previous report is kept in the new one, right after the ratios, and
    stays as written in the previous report under History (profile.py edits only the current report's)."""
    current, marker, history = old.partition("\n" + HISTORY)
    history = history.split("\n", 1)[1] if marker else ""
    history = history.strip("\n").removeprefix(HISTORY_NOTE).strip("\n")
    new = with_profile(new, find_profile(current))
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
    parser.add_argument(
        "--paths",
        type=select_paths,
        default=PATHS,
        metavar="NAME[,NAME...]",
        help="only the paths whose name contains a NAME (case ignored) or whose kind is one: veth, vxlan, "
        "baseline, usertunnel, ovs, prototype, multi (default: all)",
    )
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


_MAIN_PID = os.getpid()


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    # Only in this process: a child pyroute2 forks to work in a namespace inherits this handler and is ended by
    # SIGTERM; raising there would run this process's clean-up (namespaces removed under the run) in the child.
    if os.getpid() == _MAIN_PID:
        raise KeyboardInterrupt
    os._exit(0)


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
        results = run_rounds(args.rounds, args.seconds, args.pings, log, args.paths)
    except BenchmarkError as exc:
        print(f"bench.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench.py: interrupted; removing the namespaces", file=sys.stderr)
        return 130
    finally:
        remove_lab()
        remove_ovs_lab()
    loads += results.loads + [os.getloadavg()[0]]
    text = report(results, loads, args, started, (head_at_start, git_head()))
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
