"""Does a packet cost more when more tunnels (or neighbors) exist? lookup+decapsulate at 1, 100 and 10,000.

Issue 5 part 5: per-packet cost must not grow with the number of configured
tunnels or learned point-to-multipoint neighbors; the 10,000 figure must be
within 1.2x of the 1 figure.
It also asks for the setup time and the memory of a tunnel, at 1,000 tunnels
in one process.

What is timed: the receive path the I/O shell runs (io/loop.py): `Demux.planned`
(the tunnels' compiled receive plans, core/plan.py, found by outer addresses,
then protocol and key) and, for what no plan takes (the hub), `Demux.decapsulate`
(outer checks, GRE parse, the `ip_tunnel_lookup`-order table lookup, key,
checksum, sequence and inner checks), on packets built by each tunnel's mirror image with
`Tunnel.encapsulate`: a 64-byte UDP payload in IPv4 (92-byte inner packet), so
that the lookup is a large share of the work rather than hidden behind a
checksum over 1,400 bytes. Three configurations:
- gre: tunnels told apart by their remote address (no key);
- gre key+seq+csum: one pair of addresses, tunnels told apart by their key;
  every packet carries a valid checksum and the next sequence number;
- hub, learned neighbors: one `--remote any` tunnel with key 1234 that has
  learned N spokes (each at its own outer address with its own inner address,
  heard from once before timing); each packet finds its peer and re-learns its
  inner source, as on a live hub.
The packets come from senders drawn at random (a fixed seed), so with 10,000
consecutive packets touch different objects, as a real mix of flows would. A
last row keeps 10,000 but has every packet come from one sender. No I/O: pure
core, one process.

How: `time.perf_counter_ns` around passes over a list of pre-built packets,
the garbage collector off while timing, all configurations interleaved pass by
pass (machine load then falls on all alike); reported as the median over
passes, in ns per packet, and as a ratio to 1 tunnel. Sequence windows are
reset between passes, outside the timed part, so the same packets are in
order again. Setup: TunnelParams + Tunnel + Demux.add for 1,000 tunnels,
timed; memory: tracemalloc's traced size before and after building them.

    python3 benchmarks/core_scale.py [--passes N] [--packets N] [--write benchmarks/RESULTS.md]

With --write it replaces its own section of the file (between the
core-scale markers), or adds one; benchmarks/bench.py also includes it.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import random
import shlex
import statistics
import struct
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from usertunnel.core.checksum import internet_checksum
from usertunnel.core.encap import Demux, Received, Tunnel
from usertunnel.core.neighbors import HubParams
from usertunnel.core.params import Mode, TunnelParams

TUNNEL_COUNTS = (1, 100, 10_000)
# (tunnels configured, every packet to one tunnel?): the last row tells a slower lookup apart from a larger
# working set (10,000 tunnel objects touched at random do not stay in the CPU caches).
ROWS = tuple((count, False) for count in TUNNEL_COUNTS) + ((TUNNEL_COUNTS[-1], True),)
SETUP_COUNT = 1_000
LOCAL = ipaddress.IPv4Address("198.51.100.1").packed
FIRST_REMOTE = int(ipaddress.IPv4Address("10.0.0.1"))
SAME_REMOTE = ipaddress.IPv4Address("198.51.100.2").packed
UDP_PAYLOAD = 64
SEED = 5
START_MARKER = "<!-- core-scale:start -->"
END_MARKER = "<!-- core-scale:end -->"
TARGET_RATIO = 1.2  # issue 5: 10,000 tunnels within 1.2x of 1

_UDP = struct.Struct("!HHHH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")


HUB_KEY = 1234
FIRST_SPOKE_INNER = int(ipaddress.IPv4Address("100.64.0.1"))
HUB_INNER = ipaddress.IPv4Address("100.127.255.254").packed


@dataclass(frozen=True)
class Config:
    """How the packets' senders are told apart: by remote address, by key, or as a hub's learned neighbors."""

    name: str
    kind: str  # "remote": tunnels with distinct remotes, no key; "key": one address pair, distinct keys,
    # seq and csum; "hub": one `--remote any` tunnel with key 1234 and `count` spokes it has learned

    def params(self, i: int, mirrored: bool = False) -> TunnelParams:
        """Tunnel number i, or (mirrored) the peer or spoke that sends to it."""
        spread = ipaddress.IPv4Address(FIRST_REMOTE + i).packed
        if self.kind == "hub":
            if mirrored:  # spoke i, at its own outer address
                return TunnelParams(f"s{i}", Mode.GRE, local=spread, remote=LOCAL, ikey=HUB_KEY, okey=HUB_KEY)
            hub = HubParams(max_peers=2 * TUNNEL_COUNTS[-1], max_hosts=2 * TUNNEL_COUNTS[-1])
            return TunnelParams("hub", Mode.GRE, local=LOCAL, remote=None, ikey=HUB_KEY, okey=HUB_KEY, hub=hub)
        remote = SAME_REMOTE if self.kind == "key" else spread
        local, remote = (remote, LOCAL) if mirrored else (LOCAL, remote)
        name = f"{'p' if mirrored else 't'}{i}"
        if self.kind == "remote":
            return TunnelParams(name=name, mode=Mode.GRE, local=local, remote=remote)
        key = i + 1
        return TunnelParams(
            name=name,
            mode=Mode.GRE,
            local=local,
            remote=remote,
            ikey=key,
            okey=key,
            iseq=True,
            oseq=True,
            icsum=True,
            ocsum=True,
        )


CONFIGS = (
    Config("gre", "remote"),
    Config("gre key+seq+csum", "key"),
    Config("hub, learned neighbors", "hub"),
)


def inner_udp(src: bytes, dst: bytes, payload_len: int = UDP_PAYLOAD) -> bytes:
    """An IPv4/UDP packet with a valid header checksum (decapsulate checks it); UDP checksum 0 (none)."""
    udp = _UDP.pack(40000, 9, 8 + payload_len, 0) + bytes(payload_len)
    header = _IPV4.pack(0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, src, dst)
    csum = internet_checksum(header)
    return header[:10] + struct.pack("!H", csum) + header[12:] + udp


@dataclass
class Setup:
    """A demux holding n tunnels (or a hub that has learned n neighbors), and packets in a random order."""

    config: Config
    count: int
    hot: bool  # every packet from sender 0 (the table is large, the working set is one tunnel or neighbor)
    demux: Demux
    tunnels: list[Tunnel]
    packets: list[memoryview]

    def reset_windows(self) -> None:
        """Forget the sequence numbers seen, so the same in-order packets are accepted again."""
        for tunnel in self.tunnels:
            tunnel.iseq_window = tunnel.new_window()


def build(config: Config, count: int, packets: int, hot: bool = False) -> Setup:
    demux = Demux()
    tunnels = []
    senders = []
    inner_dst = ipaddress.IPv4Address("203.0.113.1").packed
    if config.kind == "hub":
        hub = Tunnel(config.params(0))
        demux.add(hub)
        tunnels.append(hub)
        senders = [Tunnel(config.params(i, mirrored=True)) for i in range(count)]
        # Each spoke has its own inner address, so the hub learns one host per spoke.
        inners = [inner_udp(ipaddress.IPv4Address(FIRST_SPOKE_INNER + i).packed, HUB_INNER) for i in range(count)]
    else:
        for i in range(count):
            tunnel = Tunnel(config.params(i))
            demux.add(tunnel)
            tunnels.append(tunnel)
            senders.append(Tunnel(config.params(i, mirrored=True)))
        inners = [inner_udp(ipaddress.IPv4Address("203.0.113.2").packed, inner_dst)] * count
    if config.kind == "hub":
        # Every spoke heard from once, outside the timing: the hub has learned `count` neighbors.
        for i, spoke in enumerate(senders):
            demux.decapsulate(_encapsulate(spoke, inners[i]))
        assert hub.hub is not None and len(hub.hub.peers) == count, "the hub did not learn every spoke"
    rng = random.Random(SEED)
    built = []
    for _ in range(packets):
        i = 0 if hot else rng.randrange(count)
        built.append(_encapsulate(senders[i], inners[i]))
    setup = Setup(config, count, hot, demux, tunnels, [memoryview(packet) for packet in built])
    # Every packet must be accepted, or the timing would be of a drop path; and taken by a plan where the
    # tunnels have plans, or the timing would be of the specification.
    for packet in setup.packets:
        planned = demux.planned(packet)
        if planned is None and config.kind != "hub":
            raise RuntimeError(f"{config.name} with {count} senders: a test packet was not taken by a plan")
        result = demux.decapsulate(packet) if planned is None else None
        if result is not None and not isinstance(result, Received):
            raise RuntimeError(f"{config.name} with {count} senders: a test packet was dropped: {result}")
    setup.reset_windows()
    return setup


def _encapsulate(sender: Tunnel, inner: bytes) -> bytes:
    packet = sender.encapsulate(inner)
    assert isinstance(packet, bytes), packet
    return packet


def time_pass(setup: Setup) -> float:
    """One pass over the packets; ns per packet."""
    setup.reset_windows()
    decapsulate = setup.demux.decapsulate
    planned = setup.demux.planned
    packets = setup.packets
    gc.disable()
    try:
        started = time.perf_counter_ns()
        for packet in packets:
            if planned(packet) is None:
                decapsulate(packet)
        elapsed = time.perf_counter_ns() - started
    finally:
        gc.enable()
    return elapsed / len(packets)


@dataclass(frozen=True)
class ScaleResult:
    ns_per_packet: dict[tuple[str, int, bool], list[float]]  # (config, tunnels, hot) -> one figure per pass
    setup_us_per_tunnel: list[float]
    bytes_per_tunnel: float
    passes: int
    packets: int

    def median(self, config: str, count: int, hot: bool = False) -> float:
        return statistics.median(self.ns_per_packet[(config, count, hot)])


def measure_setup(count: int, repeats: int) -> list[float]:
    """µs per tunnel to build TunnelParams + Tunnel and add it to a Demux, `count` tunnels at a time."""
    config = CONFIGS[1]
    figures = []
    for _ in range(repeats):
        started = time.perf_counter_ns()
        demux = Demux()
        for i in range(count):
            demux.add(Tunnel(config.params(i)))
        figures.append((time.perf_counter_ns() - started) / count / 1000)
        del demux
    return figures


def measure_memory(count: int) -> float:
    """Bytes allocated per tunnel (params, tunnel, its counters and table entries), by tracemalloc."""
    config = CONFIGS[1]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        demux = Demux()
        for i in range(count):
            demux.add(Tunnel(config.params(i)))
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del demux
    return (after - before) / count


def run(passes: int, packets: int, progress: Callable[[str], None] | None = None) -> ScaleResult:
    setups = [build(config, count, packets, hot) for config in CONFIGS for count, hot in ROWS]
    figures: dict[tuple[str, int, bool], list[float]] = {(s.config.name, s.count, s.hot): [] for s in setups}
    for n in range(passes):
        for setup in setups:
            figures[(setup.config.name, setup.count, setup.hot)].append(time_pass(setup))
        if progress is not None and (n + 1) % 5 == 0:
            progress(f"core scale: pass {n + 1}/{passes}")
    del setups
    gc.collect()
    return ScaleResult(
        ns_per_packet=figures,
        setup_us_per_tunnel=measure_setup(SETUP_COUNT, 5),
        bytes_per_tunnel=measure_memory(SETUP_COUNT),
        passes=passes,
        packets=packets,
    )


def markdown_section(result: ScaleResult, command: str, note: str = "") -> str:
    """The section RESULTS.md carries, between its markers; `note` follows the command (e.g. who ran it)."""
    columns = " | ".join(f"{c.name}: ns/packet [min–max] | ratio to 1" for c in CONFIGS)
    header = f"| tunnels (hub: neighbors) | {columns}"
    lines = [header + " |", "|---:|" + "---:|---:|" * len(CONFIGS)]
    for count, hot in ROWS:
        cells = [f"{count:,}, every packet from one of them" if hot else f"{count:,}"]
        for config in CONFIGS:
            runs = result.ns_per_packet[(config.name, count, hot)]
            median = statistics.median(runs)
            cells.append(f"{median:,.0f} [{min(runs):,.0f}–{max(runs):,.0f}]")
            cells.append(f"{median / result.median(config.name, 1):.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    checks = []
    for config in CONFIGS:
        ratio = result.median(config.name, TUNNEL_COUNTS[-1]) / result.median(config.name, 1)
        verdict = "met" if ratio <= TARGET_RATIO else "not met"
        checks.append(f"- {config.name}: 10,000 / 1 = {ratio:.3f} (target ≤ {TARGET_RATIO}): **{verdict}**")
    setup = result.setup_us_per_tunnel
    return f"""{START_MARKER}
## Core scale: lookup + decapsulate against the number of tunnels and neighbors

Command: `{command}`{note} ({result.passes} interleaved passes of {result.packets:,} packets per
configuration, Python {platform_python()}). The receive path the loop runs (`Demux.planned`, the tunnels'
compiled receive plans, then `Demux.decapsulate` for what no plan takes) on packets with a 92-byte inner
IPv4/UDP packet (64-byte payload), each from a sender drawn at random: one of N tunnels (told apart by remote, or by
key with seq and csum), or one of N spokes a `--remote any` hub has learned; median over passes [min–max].
The last row keeps 10,000 but has every packet come from one of them: it separates the cost of the lookup (a
dictionary probe, whatever the table's size) from that of touching many objects in turn, which then no
longer fit in the CPU caches.

{chr(10).join(lines)}

{chr(10).join(checks)}

At {SETUP_COUNT:,} tunnels in one process (gre key+seq+csum, told apart by key): setup (TunnelParams + Tunnel +
Demux.add) {statistics.median(setup):.1f} µs per tunnel [{min(setup):.1f}–{max(setup):.1f}], memory
{result.bytes_per_tunnel:,.0f} bytes per tunnel (tracemalloc), so {SETUP_COUNT:,} tunnels take
{result.bytes_per_tunnel * SETUP_COUNT / 1e6:.1f} MB.
{END_MARKER}
"""


def platform_python() -> str:
    return sys.version.split()[0]


def write_section(path: Path, section: str) -> None:
    """Replace the marked section of `path`'s current report, or add it at the end of that report (above History)."""
    text = path.read_text() if path.exists() else ""
    current, marker, history = text.partition("\n## History")
    start, end = current.find(START_MARKER), current.find(END_MARKER)
    if start >= 0 and end > start:
        current = current[:start] + section.rstrip("\n") + current[end + len(END_MARKER) :]
    else:
        current = current.rstrip("\n") + ("\n\n" if current else "") + section
    path.write_text(current + ("\n" if marker and not current.endswith("\n") else "") + marker + history)


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
        prog="core_scale.py", description="lookup+decapsulate cost at 1, 100 and 10,000 tunnels; setup and memory."
    )
    parser.add_argument("--passes", type=positive_int, default=21, help="timed passes per configuration (default 21)")
    parser.add_argument("--packets", type=positive_int, default=5000, help="packets per pass (default 5000)")
    parser.add_argument("--write", type=Path, metavar="FILE", help="put the section into FILE (e.g. RESULTS.md)")
    return parser.parse_args(argv)


def command_line() -> str:
    interpreter, *rest = sys.orig_argv
    return shlex.join([Path(interpreter).name, *rest])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args.passes, args.packets, progress=lambda line: print(line, file=sys.stderr, flush=True))
    section = markdown_section(result, command_line())
    print(section)
    if args.write:
        write_section(args.write, section)
        print(f"written to {args.write}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
