"""Receive path micro-benchmark: recvmmsg on the raw GRE socket against a PACKET_MMAP (TPACKET_V3) ring.

Issue 5 asks whether an AF_PACKET socket with a TPACKET_V3 receive ring would hand the same GRE
packets to Python for less CPU than io.batch.RecvBatch (recvmmsg, 64 per call). Two namespaces
joined by a veth (198.51.100.1 sends, 198.51.100.2 receives); the sender is a C-speed source (one
prebuilt GRE packet behind 256 mmsghdrs, sendmmsg in a loop, no Python per packet) sending a fixed
count; the receiver is one process per variant that polls its descriptor and drains it:

- `mmsg`:  usertunnel's RecvBatch on a raw IPv4 socket for protocol 47 (open_raw, 8 MiB buffer),
  recv() until a short batch, as loop._on_raw_batch does.
- `mmsg+wait`: the same, sleeping RETIRE_TOV_MS after each drain that found packets, so that
  packets gather into full batches as they gather into the ring's blocks (same added latency):
  this separates the cost of delivering a packet from the cost of waking up for few.
- `ring`:  AF_PACKET SOCK_DGRAM bound to the veth for ETH_P_IP, a classic BPF filter keeping IP
  protocol 47, a TPACKET_V3 ring (32 blocks of 256 KiB = 8 MiB); each retired block is walked with
  a uint32 view of the mmap, each packet's IP bytes handed on as a memoryview slice, then the block
  is given back (block_status = TP_STATUS_KERNEL). A raw socket for 47 stays open with a drop-all
  filter, as a real switch would need (without one the kernel answers every GRE packet with a
  protocol-unreachable).
- `ring+checks`: the same, plus what the IP layer did for the raw socket and a switch would have to
  do in Python: version/IHL, not a fragment, addressed to us, header checksum.
- `ring+bpf`: the ring with those checks in its classic BPF filter instead (run in the kernel, in
  softirq: the cost moves to the sender's column).
- `recv`:  recv_into per packet on the raw socket (the reference).

Every variant passes each packet through the same consumer (a list of views per batch, a length
sum). Reported per variant: packets received per CPU second of the receiving process (getrusage,
from ready to done), the sender's CPU per packet (the kernel's receive path, softirq included, runs
in the sender's context on a veth), and packets lost (sent - received). Variants are interleaved,
rounds repeated; medians [min-max].

Usage (root): python benchmarks/micro_rx.py [--rounds 3] [--count 1000000] [--sizes 92,1400]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import resource
import select
import socket
import statistics
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence

VARIANTS = ("mmsg", "mmsg+wait", "ring", "ring+checks", "ring+bpf", "recv")
EXTRA = ("ring-bare",)  # the ring without the raw socket for 47: the kernel answers with protocol-unreachables
TX_ADDR, RX_ADDR = "198.51.100.1", "198.51.100.2"
IPPROTO_GRE = 47
ETH_P_IP = 0x0800

# linux/if_packet.h
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_IGNORE_OUTGOING = 23
TPACKET_V3 = 2
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
BLOCK_SIZE = 256 * 1024
BLOCK_NR = 32
FRAME_SIZE = 2048  # V3 packs frames of any size into a block; frame_nr only has to be consistent
RETIRE_TOV_MS = 4  # a block that is not full is handed over after this long

# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1: block_status (word 2),
# num_pkts (word 3), offset_to_first_pkt (word 4), ...
_BLOCK_STATUS, _NUM_PKTS, _FIRST = 2, 3, 4
# struct tpacket3_hdr: tp_next_offset (word 0), tp_sec, tp_nsec, tp_snaplen (word 3), tp_len,
# tp_status, tp_mac (u16 at byte 24), tp_net (u16 at byte 26: high half of word 6 on little-endian)
_NEXT, _SNAPLEN, _MAC_NET = 0, 3, 6

# Classic BPF from the IPv4 header on (SOCK_DGRAM): keep protocol 47, drop the rest.
_GRE_ONLY = ((0x30, 0, 0, 9), (0x15, 0, 1, IPPROTO_GRE), (0x06, 0, 0, 0x40000), (0x06, 0, 0, 0))
_DROP_ALL = ((0x06, 0, 0, 0),)


def gre_checked_filter(local: bytes) -> list[tuple[int, int, int, int]]:
    """Classic BPF doing in the kernel what ip_checks does in Python: protocol 47, IPv4 without
    options, not a fragment, addressed to `local`, header checksum right; anything else dropped."""
    drop = -1  # a jump to the final "ret #0", resolved below
    program = [
        (0x30, 0, 0, 9),  # ldb [9]: protocol
        (0x15, 0, drop, IPPROTO_GRE),
        (0x30, 0, 0, 0),  # ldb [0]: version and IHL
        (0x15, 0, drop, 0x45),
        (0x28, 0, 0, 6),  # ldh [6]: flags and fragment offset
        (0x45, drop, 0, 0x3FFF),  # jset MF or offset: a fragment
        (0x20, 0, 0, 16),  # ld [16]: destination
        (0x15, 0, drop, int.from_bytes(local, "big")),
        (0x28, 0, 0, 0),  # ldh [0]
        (0x07, 0, 0, 0),  # tax
    ]
    for offset in range(2, 20, 2):  # X += each 16-bit word of the header
        program += [(0x28, 0, 0, offset), (0x0C, 0, 0, 0), (0x07, 0, 0, 0)]  # ldh [k]; add x; tax
    for _ in range(2):  # fold the carries: A = (A & 0xffff) + (A >> 16)
        program += [(0x02, 0, 0, 0), (0x74, 0, 0, 16), (0x07, 0, 0, 0), (0x60, 0, 0, 0), (0x54, 0, 0, 0xFFFF)]
        program += [(0x0C, 0, 0, 0)]
    program += [(0x15, 0, drop, 0xFFFF), (0x06, 0, 0, 0x40000), (0x06, 0, 0, 0)]
    last = len(program) - 1
    return [
        (code, last - i - 1 if jt == drop else jt, last - i - 1 if jf == drop else jf, k)
        for i, (code, jt, jf, k) in enumerate(program)
    ]


def gre_packet(inner_size: int) -> bytes:
    """GRE header (no options, IPv4 payload) + an inner IPv4/UDP packet of `inner_size` bytes."""
    src, dst = socket.inet_aton("203.0.113.1"), socket.inet_aton("203.0.113.2")
    inner = struct.pack("!BBHHHBBH4s4s", 0x45, 0, inner_size, 0, 0x4000, 64, 17, 0, src, dst)
    inner += struct.pack("!HHHH", 40000, 9, inner_size - 20, 0) + bytes(inner_size - 28)
    return b"\x00\x00\x08\x00" + inner


# --- the sender (in the sending namespace) ------------------------------------------------------


def send(count: int, inner_size: int, seconds: float) -> dict[str, float]:
    """sendmmsg `count` copies of one GRE packet to RX_ADDR, 256 per call, within `seconds`."""
    from usertunnel.io import batch

    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_GRE)  # the kernel builds the outer header
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    per_call = 256
    packet = ctypes.create_string_buffer(gre_packet(inner_size), inner_size + 4)
    name = ctypes.create_string_buffer(struct.pack("=HH4s8x", socket.AF_INET, 0, socket.inet_aton(RX_ADDR)), 16)
    iov = batch._IOVec(ctypes.addressof(packet), inner_size + 4)
    msgs = (batch._MMsgHdr * per_call)()
    for m in msgs:
        m.msg_hdr.msg_name = ctypes.addressof(name)
        m.msg_hdr.msg_namelen = 16
        m.msg_hdr.msg_iov = ctypes.addressof(iov)
        m.msg_hdr.msg_iovlen = 1
    address, fd = ctypes.addressof(msgs), sock.fileno()
    start, before = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
    sent = errors = calls = 0
    deadline = start + seconds
    while sent < count and errors < 1000:
        n = batch._sendmmsg(fd, address, min(per_call, count - sent), 0)
        if n > 0:
            sent += n
        else:
            errors += 1
        calls += 1
        if calls % 64 == 0 and time.monotonic() > deadline:
            break
    after, wall = resource.getrusage(resource.RUSAGE_SELF), time.monotonic() - start
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"sent": sent, "errors": errors, "wall": wall, "cpu": cpu}


# --- the receivers (in the receiving namespace) -------------------------------------------------


def attach_filter(sock: socket.socket, program: Sequence[tuple[int, int, int, int]]) -> None:
    from usertunnel.io import raw

    raw._attach_filter(sock, program)


class Ring:
    """A TPACKET_V3 receive ring on `ifname` for IPv4 protocol 47."""

    def __init__(self, ifname: str, program: Sequence[tuple[int, int, int, int]] = _GRE_ONLY) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
        attach_filter(self.sock, program)
        self.sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        self.sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        frame_nr = BLOCK_SIZE * BLOCK_NR // FRAME_SIZE
        req = struct.pack("=7I", BLOCK_SIZE, BLOCK_NR, FRAME_SIZE, frame_nr, RETIRE_TOV_MS, 0, 0)
        self.sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        self.map = mmap.mmap(
            self.sock.fileno(), BLOCK_SIZE * BLOCK_NR, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
        )
        self.sock.bind((ifname, ETH_P_IP))
        self.sock.setblocking(False)
        self.view = memoryview(self.map)
        self.u32 = self.view.cast("I")
        self.block = 0

    def blocks(self) -> list[tuple[int, list[memoryview]]]:
        """The blocks the kernel has handed over, in order: (block index, views of its IP packets)."""
        out = []
        u32, view = self.u32, self.view
        for _ in range(BLOCK_NR):
            base = self.block * BLOCK_SIZE
            word = base >> 2
            if not u32[word + _BLOCK_STATUS] & TP_STATUS_USER:
                break
            offset = base + u32[word + _FIRST]
            packets = []
            for _ in range(u32[word + _NUM_PKTS]):
                w = offset >> 2
                start = offset + (u32[w + _MAC_NET] >> 16)
                packets.append(view[start : start + u32[w + _SNAPLEN]])
                offset += u32[w + _NEXT]
            out.append((self.block, packets))
            self.block = (self.block + 1) % BLOCK_NR
        return out

    def release(self, block: int) -> None:
        """Give block `block` back to the kernel: its views must no longer be used."""
        self.u32[block * BLOCK_SIZE // 4 + _BLOCK_STATUS] = TP_STATUS_KERNEL

    def drops(self) -> int:
        _packets, drops, _frozen = struct.unpack("=3I", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12))
        return int(drops)


NAMES = {
    "mmsg": "RecvBatch (recvmmsg ×64), drained at each wakeup",
    "mmsg+wait": f"RecvBatch, {RETIRE_TOV_MS} ms between drains",
    "ring": "TPACKET_V3 ring",
    "ring+checks": "TPACKET_V3 ring + IP checks in Python",
    "recv": "recv_into per packet",
    "ring+bpf": "TPACKET_V3 ring, IP checks in its BPF filter",
    "ring-bare": "TPACKET_V3 ring, no raw socket for 47 open",
}
_HEADER = struct.Struct("!10H")


def ip_checks(packets: list[memoryview], local: bytes) -> list[memoryview]:
    """What ip_rcv / ip_local_deliver did before a raw socket saw the packet, redone in Python."""
    kept = []
    unpack = _HEADER.unpack_from
    for p in packets:
        if p[0] != 0x45:  # IPv4 without options (options, other versions: the slow path)
            continue
        words = unpack(p)
        if words[3] & 0x3FFF:  # MF or a fragment offset: would need reassembly
            continue
        if p[16:20] != local:  # not addressed to us
            continue
        total = sum(words)
        total = (total & 0xFFFF) + (total >> 16)
        total = (total & 0xFFFF) + (total >> 16)
        if total != 0xFFFF:  # header checksum
            continue
        kept.append(p)
    return kept


def consume(packets: list[memoryview]) -> int:
    """The same per-packet touch for every variant: a length each."""
    total = 0
    for p in packets:
        total += len(p)
    return total


def receive(variant: str, count: int, ifname: str, idle: float, limit: float) -> dict[str, float]:
    """Receive until `count` packets, `idle` seconds without one after the first, or `limit` seconds."""
    from usertunnel.io import raw
    from usertunnel.io.batch import RecvBatch

    local = socket.inet_aton(RX_ADDR)
    gre = raw.open_raw(IPPROTO_GRE)  # in every variant but ring-bare: the ring ones filter it to nothing
    ring = None
    if variant.startswith("ring"):
        attach_filter(gre, _DROP_ALL)
        if variant == "ring-bare":
            gre.close()
        ring = Ring(ifname, gre_checked_filter(local) if variant == "ring+bpf" else _GRE_ONLY)
        fd = ring.sock.fileno()
    else:
        fd = gre.fileno()
    batch = RecvBatch(gre, 64)
    buffer = bytearray(65536)
    bview = memoryview(buffer)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    received = nbytes = wakeups = 0
    first = last = 0.0
    unreachables = icmp_out_unreachables()
    print("ready", flush=True)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.monotonic()
    while received < count:
        now = time.monotonic()
        if now - start > limit or (received and now - last > idle):
            break
        if not poller.poll(50):
            continue
        wakeups += 1
        got = 0
        if ring is not None:
            for block, packets in ring.blocks():
                if variant == "ring+checks":
                    packets = ip_checks(packets, local)
                nbytes += consume(packets)
                got += len(packets)
                del packets
                ring.release(block)
        elif variant.startswith("mmsg"):
            for _ in range(1000):
                packets = batch.recv()
                nbytes += consume(packets)
                got += len(packets)
                if len(packets) < batch.count:
                    break
            if variant == "mmsg+wait" and got:
                time.sleep(RETIRE_TOV_MS / 1000)  # let packets gather, as the ring's block timeout does
        else:
            for _ in range(64000):
                try:
                    n = gre.recv_into(buffer)
                except BlockingIOError:
                    break
                packets = [bview[:n]]
                nbytes += consume(packets)
                got += 1
        if got:
            received += got
            last = time.monotonic()
            if not first:
                first = last
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {
        "received": received,
        "bytes": nbytes,
        "cpu": cpu,
        "user": after.ru_utime - before.ru_utime,
        "wall": last - first,
        "wakeups": wakeups,
        "ring_drops": ring.drops() if ring is not None else 0,
        "icmp_unreachables": icmp_out_unreachables() - unreachables,
    }


def icmp_out_unreachables() -> int:
    """Icmp OutDestUnreachs of this namespace (/proc/net/snmp)."""
    with open("/proc/net/snmp") as f:
        lines = [line.split() for line in f if line.startswith("Icmp:")]
    return int(lines[1][lines[0].index("OutDestUnreachs")])


# --- the driver --------------------------------------------------------------------------------


def one_run(variant: str, inner: int, count: int, tx: str, rx: str) -> dict[str, float]:
    from usertunnel.io import netns

    me = [sys.executable, os.path.abspath(__file__)]
    receiver = netns.popen(
        rx, [*me, "--role", "recv", "--variant", variant, "--count", str(count)], stdout=subprocess.PIPE
    )
    try:
        assert receiver.stdout is not None
        line = receiver.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"receiver did not start: {line!r}")
        sender = netns.run(tx, [*me, "--role", "send", "--inner", str(inner), "--count", str(count)], timeout=120)
        if sender.returncode:
            raise RuntimeError(f"sender failed: {sender.stderr.decode()}")
        out, _ = receiver.communicate(timeout=60)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    result = {f"rx_{k}": v for k, v in json.loads(out).items()}
    result.update({f"tx_{k}": v for k, v in json.loads(sender.stdout).items()})
    return result


def fmt(values: list[float], spec: str) -> str:
    return f"{statistics.median(values):{spec}} [{min(values):{spec}}–{max(values):{spec}}]"


def drive(args: argparse.Namespace) -> int:
    from usertunnel.io import netns

    if os.geteuid() != 0:
        print("needs root (namespaces, raw and packet sockets)", file=sys.stderr)
        return 1
    tag = uuid.uuid4().hex[:5]
    tx, rx = f"ut-pm-tx-{tag}", f"ut-pm-rx-{tag}"
    sizes = [int(s) for s in args.sizes.split(",")]
    variants = tuple(args.variants.split(","))
    results: dict[tuple[int, str], list[dict[str, float]]] = {}
    loads = [os.getloadavg()[0]]
    try:
        netns.create(tx, ipv6=False)
        netns.create(rx, ipv6=False)
        netns.veth(tx, "pmtx", rx, "pmrx", TX_ADDR, RX_ADDR, 24)
        for round_ in range(args.rounds):
            for inner in sizes:
                order = variants if round_ % 2 == 0 else tuple(reversed(variants))
                for variant in order:
                    r = one_run(variant, inner, args.count, tx, rx)
                    results.setdefault((inner, variant), []).append(r)
                    rate = r["rx_received"] / r["rx_cpu"] if r["rx_cpu"] else 0
                    print(
                        f"round {round_ + 1} inner {inner} {variant:12s} received {r['rx_received']:>9,} "
                        f"of {r['tx_sent']:,}  rx {rate:>10,.0f} pkt/CPU-s  rx CPU {r['rx_cpu']:.2f} s "
                        f"(wall {r['rx_wall']:.2f})  tx CPU {r['tx_cpu']:.2f} s  wakeups {r['rx_wakeups']:,}  "
                        f"ring drops {r['rx_ring_drops']:,}  ICMP unreachables sent {r['rx_icmp_unreachables']:,}",
                        flush=True,
                    )
            loads.append(os.getloadavg()[0])
    finally:
        netns.remove(tx)
        netns.remove(rx)
    print()
    print(table(results, sizes, variants))
    print(f"\nload average (1 min) during the runs: {fmt(loads, '.2f')}")
    return 0


def table(results: dict[tuple[int, str], list[dict[str, float]]], sizes: list[int], variants: Sequence[str]) -> str:
    lines = [
        "| inner bytes | receiver | packets per receiver CPU s | vs the first | µs receiver CPU per packet "
        "| µs sender CPU per packet (kernel rx path inside) | µs both | lost (sent − received) | received per wakeup |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for inner in sizes:
        base = statistics.median(r["rx_received"] / r["rx_cpu"] for r in results[(inner, variants[0])])
        for variant in variants:
            runs = results[(inner, variant)]
            rates = [r["rx_received"] / r["rx_cpu"] for r in runs]
            rx_us = [r["rx_cpu"] / r["rx_received"] * 1e6 for r in runs]
            tx_us = [r["tx_cpu"] / r["tx_sent"] * 1e6 for r in runs]
            both = [a + b for a, b in zip(rx_us, tx_us, strict=True)]
            lost = [r["tx_sent"] - r["rx_received"] for r in runs]
            per_wake = [r["rx_received"] / max(r["rx_wakeups"], 1) for r in runs]
            name = NAMES[variant]
            lines.append(
                f"| {inner} | {name} | {fmt(rates, ',.0f')} | {statistics.median(rates) / base:.2f}× "
                f"| {fmt(rx_us, '.2f')} | {fmt(tx_us, '.2f')} | {statistics.median(both):.2f} "
                f"| {fmt(lost, ',.0f')} | {statistics.median(per_wake):,.0f} |"
            )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=1_000_000, help="packets per run")
    parser.add_argument("--sizes", default="92,1400", help="inner packet sizes, comma-separated")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"of {', '.join(VARIANTS + EXTRA)}")
    parser.add_argument("--role", choices=("drive", "send", "recv"), default="drive", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS + EXTRA, help=argparse.SUPPRESS)
    parser.add_argument("--inner", type=int, default=92, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "send":
        print(json.dumps(send(args.count, args.inner, seconds=10.0)))
        return 0
    if args.role == "recv":
        print(json.dumps(receive(args.variant, args.count, "pmrx", idle=0.5, limit=30.0)))
        return 0
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
