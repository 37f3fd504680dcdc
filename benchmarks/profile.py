"""Where a packet's microseconds go (issue 14, item 1): py-spy on both tunnel ends under iperf3, per stage.

For each path (default: usertunnel gre and gre key+seq+csum under TCP, and
gre key+seq+csum under 64-byte UDP), on bench.py's lab (namespaces utb-a and
utb-b, its helpers, fresh tunnel processes per path):
- iperf3 runs from A to B for SECONDS + 3 s; after 1 s of warm-up,
  `py-spy record --nonblocking --format raw` samples BOTH tunnel processes
  for SECONDS at RATE Hz (nonblocking: the target is never paused; without
  --idle py-spy keeps only samples of a thread that is not asleep, so a
  process waiting in epoll adds nothing);
- inside that window, the tunnels' own counters (tx_packets, rx_packets,
  asked over their control sockets; the veths' counters if that fails) and
  the processes' CPU time from /proc (utime + stime, bench.CpuMeter) give
  packets per second and CPU seconds per second;
- each sample is given to one STAGE of the per-packet path by the innermost
  frame that a rule of RULES recognises (below): a C call such as os.read or
  a ctypes sendmmsg has no Python frame, so a line's source text names it;
  frames no rule knows (checksum helpers, enum properties, struct) count for
  the stage of their caller;
- µs per packet of a stage = (its samples / RATE / SECONDS: CPU seconds per
  wall second, both processes) / (packets per second in its direction) x 1e6.
  TX stages are divided by the packets both ends encapsulated, RX stages by
  the packets both ends decapsulated (for TCP, A's data and B's ACKs alike);
  "per packet through" divides by the packets decapsulated, so one such
  packet costs one encapsulation and one decapsulation, as in bench.py's "CPU
  s per million packets". The /proc line is the same figure from the kernel's
  accounting: it shows what the samples cover (a thread that is runnable but
  waiting for a CPU is sampled as busy; a system call's kernel time is
  sampled on the line that made it).

    python3 benchmarks/profile.py [--tree PATH] [--label before|after|...] [--seconds 6] [--rate 200]
                                  [--paths gre,ksc,ksc-udp] [--raw-dir DIR] [--write benchmarks/RESULTS.md]

`--tree PATH` runs the tunnel processes from another checkout (e.g.
`git worktree add /tmp/ut-before HEAD`), so "before" can be measured while the
working tree holds "after"; `--label` names the run. `--write FILE` replaces
this label's part of the profile block of FILE (between `<!-- profile:start -->`
and `<!-- profile:end -->`; other labels' parts are kept) and leaves the rest of
the file as it was. The raw collapsed stacks stay in --raw-dir (default
benchmarks/profiles/LABEL/, ignored by git): `flamegraph.pl` draws them.

Needs root, /dev/net/tun, iperf3, ss and py-spy (a test extra: `pip install -e '.[test]'`).
All traffic stays inside utb-a and utb-b, which are removed however the run ends; while another run
(bench.py, another profile.py) holds them, it waits (--wait-lab) instead of removing them under it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
import bench  # noqa: E402  (benchmarks/ is not a package; bench.py sits beside this file)

from usertunnel.io import netns  # noqa: E402

START, END = "<!-- profile:start -->", "<!-- profile:end -->"
WARMUP = 1.0  # seconds of iperf3 before sampling starts
TAIL = 2.0  # seconds iperf3 runs on after sampling ends
SETTLE = 0.5  # seconds after py-spy starts (attaching) before the counting window opens; as much before it ends
PYSPY_SLACK = 30.0  # seconds py-spy may take beyond its -d (writing its file)
LAB_QUIET = 5.0  # seconds the lab must stay free before we take it
ATTEMPTS = 3  # tries per path when the lab is taken from under us (another run removing utb-a/utb-b)
UDP_PAYLOAD = bench.UDP_PAYLOAD

# --- stages and the rules that find them ---------------------------------------------------------------------------

TX, RX = "TX", "RX"
# (stage, direction): the per-packet path in order; direction None is neither (the event loop, timers, control).
STAGES: tuple[tuple[str, str | None], ...] = (
    ("TUN read", TX),
    ("encapsulate", TX),
    ("ESP seal", TX),
    ("AEAD encrypt", TX),
    ("send", TX),
    ("TX loop", TX),
    ("recv", RX),
    ("AEAD decrypt", RX),
    ("ESP open", RX),
    ("decapsulate", RX),
    ("coalesce", RX),
    ("TUN write", RX),
    ("RX loop", RX),
    ("event loop, other", None),
)
OTHER = "event loop, other"
DIRECTION = dict(STAGES)


@dataclass(frozen=True)
class Rule:
    """A frame belongs to `stage` when every pattern given matches (re.search): its function name as py-spy
    prints it (`Class.method`), its file as py-spy prints it (`usertunnel/io/loop.py`, `<plan gre0 tx>`),
    and the source text of its line (read from the checkout that ran)."""

    stage: str
    function: str | None = None
    file: str | None = None
    line: str | None = None

    def matches(self, frame: Frame, text: str | None) -> bool:
        if self.function is not None and not re.search(self.function, frame.function):
            return False
        if self.file is not None and not re.search(self.file, frame.file):
            return False
        return self.line is None or (text is not None and re.search(self.line, text) is not None)


# First match wins, innermost frame first. Extend here when the data path gains functions.
RULES: tuple[Rule, ...] = (
    # A line calling into C (a builtin or a ctypes function) has no frame of its own: its text says what it is.
    Rule("TUN read", line=r"\bos\.readv?\(|(?<![\w.])readv\(|\breadinto\("),
    Rule("send", line=r"\b_?sendmmsg\(|\.sendmsg\(|\.sendto\("),
    Rule("recv", line=r"\b_?recvmmsg\(|\.recv_into\(|\.recvmsg(_into)?\(|\.recvfrom(_into)?\("),
    Rule("TUN write", line=r"\bos\.writev?\("),
    # IPsec (core/esp.py): the cryptography package's AEAD call (C, no frame of its own: its line says), then
    # the Python around it.
    Rule("AEAD encrypt", file=r"core/esp\.py", line=r"\.encrypt\("),
    Rule("AEAD decrypt", file=r"core/esp\.py", line=r"\.decrypt\(|\.finalize\(|decryptor\.update\("),
    Rule("ESP seal", file=r"core/esp\.py", function=r"^(Sealer\.\w+|protect_ipv\d|_rewrite|_padding)$"),
    Rule("ESP open", file=r"core/esp\.py"),
    # Compiled per-tunnel plans (core/plan.py, or source compiled under a name like "<plan gre0 tx>").
    Rule("encapsulate", file=r"plan", function=r"(^|[._ ])tx"),
    Rule("decapsulate", file=r"plan", function=r"(^|[._ ])rx"),
    Rule("encapsulate", file=r"<plan[^>]*\btx\b"),
    Rule("decapsulate", file=r"<plan[^>]*\brx\b"),
    # io/: the shell around the core.
    Rule("TUN read", function=r"^complete_checksum$", file=r"io/tun\.py"),
    Rule("TUN write", function=r"^(Tun\.write|Interface\.write|Interface\.write_many)$"),
    Rule("send", function=r"^(SendBatch\.\w+|_buffer_address)$"),
    Rule("recv", function=r"^RecvBatch\.\w+$"),
    Rule("TX loop", function=r"^Dataplane\._(on_tun_readable|tun_batch|tun_one|send_fragments|too_big|tun_failed)$"),
    Rule("RX loop", function=r"^Dataplane\._(on_raw\w*|on_esp_readable|received|hand_over|deliver|keepalive)$"),
    # core/: the protocol.
    Rule("coalesce", file=r"core/gro\.py"),
    Rule("encapsulate", function=r"^Tunnel\.(encapsulate\w*|_outer6|_sit_destination|_gre_headers)$"),
    Rule("decapsulate", function=r"^(Demux\.\w+|_count_rx|parse_gre|parse_ipv4|header_checksum_ok)$"),
    # inner_sum serves both directions (the transmit checksum, the derived receive check): its caller's stage.
    Rule("decapsulate", function=r"^csum_derived_is_valid$", file=r"core/checksum\.py"),
)


@dataclass(frozen=True)
class Frame:
    function: str
    file: str
    line: int


_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>.*):(?P<line>\d+)\)$")


def parse_frame(text: str) -> Frame:
    match = _FRAME.match(text)
    if match is None:
        return Frame(text, "", 0)
    return Frame(match["function"], match["file"], int(match["line"]))


def parse_collapsed(text: str) -> list[tuple[list[Frame], int]]:
    """py-spy's raw format (Brendan Gregg's collapsed stacks): one `outer;...;innermost COUNT` per line."""
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stacks.append(([parse_frame(part) for part in stack.split(";")], int(count)))
    return stacks


SourceLine = Callable[[str, int], "str | None"]


def no_source(file: str, line: int) -> str | None:
    return None


class TreeSource:
    """Source lines of the checkout the tunnel processes ran (py-spy prints `usertunnel/io/loop.py:272`)."""

    def __init__(self, tree: Path) -> None:
        self.tree = tree
        self._files: dict[str, list[str] | None] = {}

    def __call__(self, file: str, line: int) -> str | None:
        if file not in self._files:
            path = self.tree / file
            try:
                self._files[file] = path.read_text().splitlines() if file.startswith("usertunnel/") else None
            except (OSError, UnicodeDecodeError):
                self._files[file] = None
        lines = self._files[file]
        return lines[line - 1] if lines is not None and 0 < line <= len(lines) else None


def stage_of(frames: Sequence[Frame], source: SourceLine = no_source, rules: Sequence[Rule] = RULES) -> str:
    """The stage of a sample: the first rule matching the innermost frame that any rule matches."""
    for frame in reversed(frames):
        text = source(frame.file, frame.line) if frame.line else None
        for rule in rules:
            if rule.matches(frame, text):
                return rule.stage
    return OTHER


def stage_samples(stacks: Iterable[tuple[Sequence[Frame], int]], source: SourceLine = no_source) -> dict[str, int]:
    counts = {stage: 0 for stage, _ in STAGES}
    for frames, n in stacks:
        counts[stage_of(frames, source)] += n
    return counts


def hottest_lines(
    stacks: Iterable[tuple[Sequence[Frame], int]], top: int = 6, source: SourceLine = no_source
) -> list[tuple[str, int]]:
    """The innermost usertunnel (or plan) line of each sample, the most frequent first: where to look next."""
    counts: dict[str, int] = {}
    for frames, n in stacks:
        for frame in reversed(frames):
            if frame.file.startswith("usertunnel/") or "plan" in frame.file:
                text = source(frame.file, frame.line)
                key = f"`{frame.function}` {frame.file}:{frame.line}"
                if text:
                    key += f" `{text.strip()[:70]}`"
                counts[key] = counts.get(key, 0) + n
                break
    return sorted(counts.items(), key=lambda kv: -kv[1])[:top]


# --- per-packet arithmetic -------------------------------------------------------------------------------------------


@dataclass
class ProcessProfile:
    """One tunnel process's samples per stage, and its CPU seconds per wall second from /proc (None: unknown)."""

    samples: dict[str, int]
    proc_cpu: float | None = None

    @property
    def total(self) -> int:
        return sum(self.samples.values())


@dataclass
class Breakdown:
    """One path's profile: both processes' samples, taken over `seconds` at `rate` Hz, and what moved.

    With `scale` (the default) a process's samples are shares of the CPU /proc says it used: py-spy counts a
    thread that is runnable but waiting for a core as busy, so on a loaded machine samples x 1/rate exceed the
    CPU actually used (see `coverage`). Without it (or without /proc figures) each sample is 1/rate seconds.
    """

    processes: list[ProcessProfile]
    rate: float  # samples per second per process
    seconds: float  # sampling duration
    tx_pps: float  # packets encapsulated per second, both ends
    rx_pps: float  # packets decapsulated per second, both ends
    scale: bool = True
    note: str = ""
    hot: list[tuple[str, int]] = field(default_factory=list)

    def cpu(self, stage: str) -> float:
        """CPU seconds per wall second in `stage`, both processes."""
        total = 0.0
        for p in self.processes:
            n = p.samples.get(stage, 0)
            if self.scale and p.proc_cpu is not None:
                total += n / p.total * p.proc_cpu if p.total else 0.0
            else:
                total += n / self.rate / self.seconds
        return total

    @property
    def total_cpu(self) -> float:
        return sum(self.cpu(stage) for stage, _ in STAGES)

    @property
    def sampled_cpu(self) -> float:
        """CPU seconds per wall second the samples alone stand for (1/rate s each), both processes."""
        return sum(p.total for p in self.processes) / self.rate / self.seconds

    @property
    def proc_cpu(self) -> float | None:
        figures = [p.proc_cpu for p in self.processes]
        return None if any(f is None for f in figures) else sum(f for f in figures if f is not None)

    @property
    def coverage(self) -> float | None:
        """Samples x 1/rate over the CPU /proc counted: above 1, threads were sampled waiting for a core."""
        proc = self.proc_cpu
        return self.sampled_cpu / proc if proc else None

    def us_per_packet(self, stage: str) -> float | None:
        """µs per packet of its direction (None for the event loop, or when nothing moved that way)."""
        pps = {TX: self.tx_pps, RX: self.rx_pps}.get(DIRECTION.get(stage) or "", 0.0)
        return self.cpu(stage) / pps * 1e6 if pps > 0 else None

    def us_per_packet_through(self, cpu: float | None) -> float | None:
        return cpu / self.rx_pps * 1e6 if cpu is not None and self.rx_pps > 0 else None

    def direction_total(self, direction: str) -> float | None:
        values = [self.us_per_packet(stage) for stage, d in STAGES if d == direction]
        present = [v for v in values if v is not None]
        return sum(present) if present else None

    def share(self, stage: str) -> float:
        total = self.total_cpu
        return self.cpu(stage) / total if total > 0 else 0.0


def _us(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def table(b: Breakdown) -> str:
    lines = [
        "| stage | TX µs/packet | RX µs/packet | µs per packet through | share |",
        "|---|---:|---:|---:|---:|",
    ]
    for stage, direction in STAGES:
        per = b.us_per_packet(stage)
        cells = [
            stage,
            _us(per) if direction == TX else "",
            _us(per) if direction == RX else "",
            _us(b.us_per_packet_through(b.cpu(stage))),
            f"{b.share(stage):.0%}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    tx_share = sum(b.share(s) for s, d in STAGES if d == TX)
    rx_share = sum(b.share(s) for s, d in STAGES if d == RX)
    lines.append(
        f"| **TX / RX stages** | **{_us(b.direction_total(TX))}** | **{_us(b.direction_total(RX))}** | "
        f"| {tx_share:.0%} / {rx_share:.0%} |"
    )
    scaled = b.scale and b.proc_cpu is not None
    label = "all stages = CPU from /proc (utime + stime)" if scaled else "all stages (samples x 1/rate)"
    lines.append(f"| **{label}** | | | **{_us(b.us_per_packet_through(b.total_cpu))}** | 100% |")
    if scaled:
        cover = b.coverage
        lines.append(
            f"| samples x 1/rate, unscaled | | | {_us(b.us_per_packet_through(b.sampled_cpu))} | "
            f"{'' if cover is None else f'{cover:.0%} of /proc'} |"
        )
    elif b.proc_cpu is not None:
        lines.append(f"| CPU from /proc (utime + stime) | | | {_us(b.us_per_packet_through(b.proc_cpu))} | |")
    return "\n".join(lines)


# --- measuring -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    key: str
    route: bench.Route
    traffic: str  # "tcp" or "udp64"

    @property
    def title(self) -> str:
        return f"{self.route.name}, " + ("TCP" if self.traffic == "tcp" else f"{UDP_PAYLOAD}-byte UDP")

    def iperf_args(self) -> tuple[str, ...]:
        return () if self.traffic == "tcp" else ("-u", "-l", str(UDP_PAYLOAD), "-b", "0")


CASES = (
    Case("gre", bench.GRE, "tcp"),
    Case("ksc", bench.GRE_KSC, "tcp"),
    Case("ksc-udp", bench.GRE_KSC, "udp64"),
    Case("gre-udp", bench.GRE, "udp64"),
    Case("ipip", bench.IPIP, "tcp"),
    Case("esp", bench.GRE_ESP, "tcp"),  # issue 17: gre key over ESP (AES-GCM-128)
    # The lean prototype (a yardstick, run in place): its frames match no rule, so read its total per packet
    # (packets counted on the veths) and its raw stacks.
    Case("proto", bench.PROTO_PLAIN, "tcp"),
    Case("proto-ksc", bench.PROTO_KSC, "tcp"),
)
DEFAULT_CASES = "gre,ksc,ksc-udp"


def run_dir() -> Path:
    return Path(os.environ.get("USERTUNNEL_RUN_DIR") or "/run/usertunnel")


def tunnel_counters(namespace: str) -> tuple[int, int]:
    """(tx_packets, rx_packets) of the tunnel in `namespace`, asked over its control socket."""
    path = run_dir() / "netns" / namespace / f"{bench.TUN_DEV}.sock"
    data = bytearray()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        sock.connect(str(path))
        sock.sendall(b'{"cmd": "stats"}\n')
        while not data.endswith(b"\n"):
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    tx = rx = 0
    for tunnel in json.loads(data)["tunnels"]:
        tx += int(tunnel["stats"]["tx_packets"])
        rx += int(tunnel["stats"]["rx_packets"])
    return tx, rx


def veth_counters(namespace: str, device: str) -> tuple[int, int]:
    """(tx, rx) packets of the underlay veth: what the tunnel sent and what reached its raw socket."""
    result = netns.run(namespace, ["ip", "-s", "-j", "link", "show", "dev", device], timeout=10)
    stats = json.loads(result.stdout)[0]["stats64"]
    return int(stats["tx"]["packets"]), int(stats["rx"]["packets"])


def counters(use_control: bool) -> tuple[int, int]:
    """(packets encapsulated, packets decapsulated) so far, both ends."""
    ends = ((bench.NS_A, bench.VETH_A), (bench.NS_B, bench.VETH_B))
    pairs = [tunnel_counters(ns) if use_control else veth_counters(ns, dev) for ns, dev in ends]
    return sum(p[0] for p in pairs), sum(p[1] for p in pairs)


def pyspy_binary() -> str:
    here = Path(sys.executable).parent / "py-spy"
    found = str(here) if here.exists() else shutil.which("py-spy")
    if found is None:
        raise bench.BenchmarkError("py-spy not found: pip install py-spy (it is in the test extras)")
    return found


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def measure(case: Case, args: argparse.Namespace, log: Callable[[str], None]) -> tuple[Breakdown, list[Path]]:
    """One path, fresh tunnel processes: iperf3 through it while py-spy samples both ends."""
    tree: Path = args.tree
    raw_dir: Path = args.raw_dir
    raw_dir.mkdir(parents=True, exist_ok=True)
    files = [raw_dir / f"{slug(case.key)}-{end}.txt" for end in ("a", "b")]
    iperf_seconds = int(WARMUP + args.seconds + TAIL + 0.999)
    report: dict[str, object] = {}
    failure: list[BaseException] = []

    def traffic() -> None:
        try:
            report.update(bench.iperf3(bench.INNER_B, iperf_seconds, *case.iperf_args()))
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)

    with bench.path_up(case.route, tree=tree) as ends, bench.iperf3_server(bench.INNER_B):
        pids = [end.pid for end in ends]
        try:
            use_control = True
            counters(True)
        except (OSError, ValueError, KeyError):
            use_control = False
            log("profile.py: control sockets not answering: counting packets on the veths")
        client = threading.Thread(target=traffic, daemon=True)
        client.start()
        time.sleep(WARMUP)
        record = [pyspy_binary(), "record", "--nonblocking", "--rate", str(args.rate), "--format", "raw"]
        spies = [
            subprocess.Popen(
                [*record, "-o", str(path), "--pid", str(pid), "-d", str(args.seconds)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for pid, path in zip(pids, files, strict=True)
        ]
        try:
            time.sleep(SETTLE)
            window = max(0.5, args.seconds - 2 * SETTLE)
            c0 = counters(use_control)
            meters = [bench.CpuMeter([pid]) for pid in pids]
            spy_meter = bench.CpuMeter([spy.pid for spy in spies])
            with contextlib.ExitStack() as stack:
                for meter in [*meters, spy_meter]:
                    stack.enter_context(meter)
                time.sleep(window)
                c1 = counters(use_control)
            for spy in spies:
                _, err = spy.communicate(timeout=args.seconds + PYSPY_SLACK)
                if spy.returncode != 0:
                    said = err.decode(errors="replace").strip().splitlines()[-1:] or ["nothing"]
                    raise bench.BenchmarkError(f"py-spy exited with status {spy.returncode}: {said[0]}")
        finally:
            for spy in spies:
                if spy.poll() is None:
                    spy.kill()
                    spy.wait(5)
        client.join(iperf_seconds + bench.IPERF_SLACK)
        if failure:
            raise bench.BenchmarkError(f"iperf3: {failure[0]}")
    wall = meters[0].wall
    tx_pps, rx_pps = (c1[0] - c0[0]) / wall, (c1[1] - c0[1]) / wall
    per_file = [parse_collapsed(path.read_text()) for path in files]
    source = TreeSource(tree)
    processes = [
        ProcessProfile(stage_samples(stacks, source), meter.cpu / meter.wall)
        for stacks, meter in zip(per_file, meters, strict=True)
    ]
    note = ""
    end = report.get("end")
    if isinstance(end, dict):
        if case.traffic == "tcp":
            note = f"{float(end['sum_received']['bits_per_second']) / 1e6:,.0f} Mbit/s"
        else:
            note = f"sent at {float(end['sum']['bits_per_second']) / 1e6:,.1f} Mbit/s of {UDP_PAYLOAD}-byte payloads"
    if not use_control:
        note += "; packets counted on the veths"
    note += f"; py-spy itself used {spy_meter.cpu / spy_meter.wall:.2f} CPU s per second"
    breakdown = Breakdown(
        processes=processes,
        rate=args.rate,
        seconds=args.seconds,
        tx_pps=tx_pps,
        rx_pps=rx_pps,
        scale=not args.unscaled,
        note=note,
        hot=hottest_lines([stack for stacks in per_file for stack in stacks], source=source),
    )
    return breakdown, files


# --- the report -------------------------------------------------------------------------------------------------------


def git(tree: Path, *argv: str) -> str:
    try:
        result = subprocess.run(["git", "-C", str(tree), *argv], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip()


def code_line(tree: Path) -> str:
    head = git(tree, "rev-parse", "--short", "HEAD") or "unknown"
    dirty = git(tree, "status", "--porcelain", "--untracked-files=no")
    where = "this checkout" if tree.resolve() == REPO_ROOT else f"a checkout at {tree}"
    return f"commit {head}{' with uncommitted changes' if dirty else ''} ({where})"


def command_line() -> str:
    interpreter, *rest = sys.orig_argv
    return shlex.join([Path(interpreter).name, *rest])


def section(
    label: str, results: Sequence[tuple[Case, Breakdown]], args: argparse.Namespace, started: datetime.datetime
) -> str:
    head = git(args.tree, "rev-parse", "--short", "HEAD") or "unknown commit"
    parts = [
        f"### {label}: {head}",
        "",
        f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `{command_line()}`",
        f"- code: {code_line(args.tree)}",
        f"- sampling: py-spy {args.rate} Hz, {args.seconds} s per end, nonblocking; 1-minute load average "
        f"{os.getloadavg()[0]:.2f} at the end",
    ]
    for case, b in results:
        samples = sum(p.total for p in b.processes)
        cpu = ", ".join(f"{p.proc_cpu:.2f}" for p in b.processes if p.proc_cpu is not None)
        parts += [
            "",
            f"#### {case.title}",
            "",
            f"{b.note}; {b.tx_pps / 1000:,.1f} k packets/s encapsulated and {b.rx_pps / 1000:,.1f} k decapsulated "
            f"(both ends); {samples:,} samples; CPU s per second of A and B (/proc): {cpu}.",
            "",
            table(b),
        ]
        if b.hot:
            total = samples or 1
            parts += ["", "Hottest lines (innermost usertunnel frame, share of samples):", ""]
            parts += [f"- {n / total:.0%} {where}" for where, n in b.hot]
    return "\n".join(parts)


INTRO = """## Profile: where a packet's microseconds go

`benchmarks/profile.py` (issue 14): py-spy samples both tunnel processes while iperf3 runs through the path; each
sample goes to the stage of the innermost frame a rule recognises (TX: TUN read, encapsulate, send, the TX loop's
own lines; RX: recv, decapsulate, coalesce, TUN write, the RX loop's own lines; then the event loop and the rest).
A stage's CPU = its share of a process's samples x the CPU that process used by /proc (utime + stime), summed over
both processes; µs per packet = that CPU per second ÷ the packets per second its direction moved (the tunnels' own
tx/rx counters, both ends: for TCP, data and ACKs alike). "Per packet through" divides by the packets
decapsulated, so it sums one encapsulation and one decapsulation, like bench.py's CPU per packet. Why scale to
/proc: py-spy samples a thread that is runnable but waiting for a core as busy, so samples x 1/rate overstate the
CPU on a loaded machine (the "unscaled" row: 100% would mean no waiting). A system call's kernel time counts for
the line that made it: "send" (sendmmsg on the raw socket) includes, on this veth, the peer's whole receive path up
to its raw socket, which the kernel runs in the sender's context; "TUN write" includes the inner packet's way up
the stack to its TCP or UDP socket. Figures are noisy on this shared 2-core machine (absolute µs move with load and
batch sizes); read the proportions, and compare labels of similar load."""


def _label_markers(label: str) -> tuple[str, str]:
    return f"<!-- profile:{label}:start -->", f"<!-- profile:{label}:end -->"


_SUB = re.compile(r"<!-- profile:(?P<label>[\w.-]+):start -->\n.*?<!-- profile:(?P=label):end -->", re.S)


def _promote(text: str) -> str:
    """Undo bench.py's demotion (two more #) of a part carried over from the history."""
    return "\n".join(line[2:] if line.startswith("###") else line for line in text.splitlines())


def with_profile(old: str, label: str, part: str) -> str:
    """`old` with `part` as label `label`'s part of the current report's profile block (other labels kept).

    The current report is what comes before "## History" (bench.py moves older reports under it). The block is
    rebuilt with the current introduction and its labels' parts in their order, this label's replaced (or added
    last). Without a block there, one is made after the first report's "Ratios" section (or at the top),
    carrying over the other labels' parts of the newest block in the history, which is left as it was.
    """
    start_marker, end_marker = _label_markers(label)
    wrapped = f"{start_marker}\n{part.strip()}\n{end_marker}"
    history_at = old.find("\n" + bench.HISTORY)
    current, history = (old, "") if history_at < 0 else (old[:history_at], old[history_at:])
    start, end = current.find(START), current.find(END)
    found = start >= 0 and end > start
    if found:
        parts = [(m["label"], m.group(0)) for m in _SUB.finditer(current[start:end])]
    else:
        old_start, old_end = history.find(START), history.find(END)
        block = history[old_start:old_end] if old_start >= 0 and old_end > old_start else ""
        parts = [(m["label"], _promote(m.group(0))) for m in _SUB.finditer(block)]
    if any(name == label for name, _ in parts):
        parts = [(name, wrapped if name == label else text) for name, text in parts]
    else:
        parts.append((label, wrapped))
    block = START + "\n" + INTRO + "\n\n" + "\n\n".join(text for _, text in parts) + "\n" + END
    if found:
        return current[:start] + block + current[end + len(END) :] + history
    ratios = re.search(r"^## Ratios.*$", current, re.M)
    if ratios is None:
        return block + "\n\n" + current + history
    following = re.search(r"^## ", current[ratios.end() :], re.M)
    at = ratios.end() + following.start() if following else len(current)
    return current[:at].rstrip("\n") + "\n\n" + block + "\n\n" + current[at:].lstrip("\n") + history


# --- command line ----------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="profile.py", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tree", type=Path, default=REPO_ROOT, help="checkout whose usertunnel runs (default: this)")
    parser.add_argument("--label", default="current", help="name of this run in the report (e.g. before, after)")
    parser.add_argument("--seconds", type=int, default=6, help="seconds py-spy samples each path (default 6)")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second (default 200)")
    keys = ",".join(case.key for case in CASES)
    parser.add_argument("--paths", default=DEFAULT_CASES, help=f"comma-separated, of {keys} (default {DEFAULT_CASES})")
    parser.add_argument(
        "--raw-dir", type=Path, help="where the collapsed stacks go (default benchmarks/profiles/LABEL)"
    )
    parser.add_argument(
        "--unscaled", action="store_true", help="count each sample as 1/rate s instead of a share of /proc's CPU"
    )
    parser.add_argument(
        "--wait-lab", type=float, default=900, help="seconds to wait for another run to free utb-a/utb-b (default 900)"
    )
    parser.add_argument("--write", type=Path, metavar="FILE", help="put the tables in FILE's profile block")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[\w.-]+", args.label):
        parser.error("--label: letters, digits, '.', '_' and '-' only")
    if args.seconds < 2 or args.rate < 1:
        parser.error("--seconds must be at least 2 and --rate at least 1")
    by_key = {case.key: case for case in CASES}
    unknown = [k for k in args.paths.split(",") if k not in by_key]
    if unknown:
        parser.error(f"--paths: unknown {', '.join(unknown)} (known: {keys})")
    args.cases = [by_key[k] for k in args.paths.split(",")]
    args.tree = args.tree.resolve()
    if not (args.tree / "usertunnel" / "__init__.py").exists():
        parser.error(f"--tree {args.tree}: no usertunnel package there")
    if args.raw_dir is None:
        args.raw_dir = BENCH_DIR / "profiles" / args.label
    return args


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


_MAIN_PID = os.getpid()


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM ends the run through `finally` (the namespaces removed), in this process only: pyroute2 forks
    helpers that it stops with SIGTERM, and a helper must not unwind our stack (and remove the lab) itself."""
    if os.getpid() != _MAIN_PID:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise KeyboardInterrupt


def lab_users() -> dict[str, list[int]]:
    """The lab's namespaces that exist now, with the processes in them (bench.py and its kin use the same names)."""
    found = {}
    for name in (bench.NS_A, bench.NS_B):
        if Path("/run/netns", name).exists():
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, timeout=10).stdout
            found[name] = [int(pid) for pid in pids.split()]
    return found


def wait_for_lab(timeout: float, log: Callable[[str], None]) -> None:
    """Wait until no other run (bench.py, latency.py's lab, another profile.py) holds utb-a/utb-b: building the
    lab removes them first. Namespaces left over with nothing inside after `timeout` are taken as debris."""
    deadline = time.monotonic() + timeout
    said = False
    while True:
        users = lab_users()
        if not users:
            time.sleep(LAB_QUIET)  # a run of several steps frees the lab between them: make sure it has ended
            if not lab_users():
                return
            continue
        if time.monotonic() > deadline:
            busy = {name: pids for name, pids in users.items() if pids}
            if busy:
                raise bench.BenchmarkError(f"the lab's namespaces are still in use after {timeout:.0f} s: {busy}")
            return
        if not said:
            log(f"profile.py: {', '.join(users)} exist (another benchmark running?); waiting up to {timeout:.0f} s")
            said = True
        time.sleep(2)


@contextlib.contextmanager
def lab(wait: float, log: Callable[[str], None]) -> Iterator[None]:
    wait_for_lab(wait, log)
    try:
        bench.build_lab()
        yield
    finally:
        bench.remove_lab()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    problem = bench.missing_prerequisite()
    if problem:
        print(f"profile.py: {problem}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    started = datetime.datetime.now(datetime.UTC)
    results: list[tuple[Case, Breakdown]] = []
    try:
        pyspy_binary()
        for case in args.cases:
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    with lab(args.wait_lab, log):
                        breakdown, files = measure(case, args, log)
                    break
                except (bench.BenchmarkError, OSError, subprocess.SubprocessError) as exc:
                    if attempt == ATTEMPTS:
                        raise bench.BenchmarkError(f"{case.title}: {exc}") from exc
                    log(f"profile.py: {case.title}: {exc}; trying again ({attempt}/{ATTEMPTS})")
            results.append((case, breakdown))
            log(f"profile.py: {case.title}: {breakdown.note}; raw stacks in {', '.join(map(str, files))}")
    except bench.BenchmarkError as exc:
        print(f"profile.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("profile.py: interrupted; the namespaces are removed", file=sys.stderr)
        return 130
    part = section(args.label, results, args, started)
    print(part)
    if args.write:
        old = args.write.read_text() if args.write.exists() else ""
        args.write.write_text(with_profile(old, args.label, part))
        log(f"profile.py: written to {args.write} (label {args.label})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
