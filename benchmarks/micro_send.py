"""Transmit: would an AF_PACKET socket on the underlay send our GRE packets for less CPU than the raw socket?

Issue 14 asked whether Open vSwitch's technique, handing finished frames to the device (AF_PACKET,
PACKET_QDISC_BYPASS) instead of the IP layer (a raw IPv4 socket with IP_HDRINCL: route lookup, netfilter's
LOCAL_OUT, ip_output, the neighbour), would cut "send", the largest stage of benchmarks/profile.py's tables.

Two namespaces joined by a veth (198.51.100.1 -> .2). The same GRE packets (an outer IPv4 header, 4 bytes of GRE,
a zero inner payload; 92 and 1,500 bytes in all) leave A in runs of 64:
- `raw`: io.batch.SendBatch (sendmmsg) on a raw IPv4 socket for protocol 47 with IP_HDRINCL, as the tunnel sends;
- `packet`: AF_PACKET SOCK_DGRAM bound to the veth, PACKET_QDISC_BYPASS, one sendmsg per packet to the peer's
  MAC (the kernel writes the Ethernet header).
B holds a raw socket for 47 with a drop-all filter (so that nothing answers with ICMP, as in the tunnel's
namespaces). On a veth the peer's whole receive path runs in the sender's context, as in the profile's "send".
Reported: this process's CPU (getrusage: user + system) per packet, variants interleaved, median [min-max].

Usage (root): python benchmarks/micro_send.py [--rounds 3] [--count 200000]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import resource
import socket
import statistics
import struct
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from usertunnel.io import netns  # noqa: E402
from usertunnel.io.batch import SendBatch  # noqa: E402

SOL_PACKET, PACKET_QDISC_BYPASS, SO_ATTACH_FILTER = 263, 20, 26
RUN = 64
SRC, DST = "198.51.100.1", "198.51.100.2"


def gre_packet(size: int) -> tuple[bytes, bytes]:
    """(outer IPv4 header + GRE header, zero payload) of `size` bytes, its header checksum right."""
    header = bytearray(struct.pack("!BBHHHBBH4s4sHH", 0x45, 0, size, 0, 0x4000, 64, 47, 0,
                                   socket.inet_aton(SRC), socket.inet_aton(DST), 0, 0x0800))  # fmt: skip
    total = sum(struct.unpack("!10H", header[:20]))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    struct.pack_into("!H", header, 10, ~total & 0xFFFF)
    return bytes(header), bytes(size - len(header))


def drop_all(sock: socket.socket) -> None:
    """A classic BPF program of one instruction, `ret #0`: the socket keeps nothing."""
    program = (ctypes.c_uint64 * 1)(struct.unpack("=Q", struct.pack("=HBBI", 0x06, 0, 0, 0))[0])
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("@HP", 1, ctypes.addressof(program)))


def raw_sender(batch: SendBatch, header: bytes, payload: bytes, destination: bytes) -> Callable[[], None]:
    def send_run() -> None:
        for _ in range(RUN):
            batch.add(header, payload, destination)
        batch.flush()

    return send_run


def packet_sender(
    sock: socket.socket, header: bytes, payload: bytes, address: tuple[str, int, int, int, bytes]
) -> Callable[[], None]:
    def send_run() -> None:
        for _ in range(RUN):
            sock.sendmsg((header, payload), (), 0, address)

    return send_run


def cpu_per_packet(send_run: Callable[[], None], count: int) -> float:
    for _ in range(20):  # warm up (ARP, caches)
        send_run()
    runs = max(1, count // RUN)
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(runs):
        send_run()
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu / (runs * RUN) * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=200_000, help="packets per measurement")
    args = parser.parse_args(argv)
    tag = uuid.uuid4().hex[:6]
    ns_a, ns_b = f"utms-a-{tag}", f"utms-b-{tag}"
    results: dict[tuple[int, str], list[float]] = {}
    with netns.namespaces(ns_a, ns_b):
        netns.veth(ns_a, "ms0", ns_b, "ms1", SRC, DST, 24)
        link = json.loads(netns.run(ns_b, ["ip", "-j", "link", "show", "ms1"], check=True).stdout)
        peer_mac = bytes.fromhex(link[0]["address"].replace(":", ""))
        sink = netns.open_socket(ns_b, socket.AF_INET, socket.SOCK_RAW, 47)
        drop_all(sink)
        raw = netns.open_socket(ns_a, socket.AF_INET, socket.SOCK_RAW, 47)
        raw.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        packet = netns.open_socket(ns_a, socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
        packet.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        packet.bind(("ms0", 0x0800))
        batch = SendBatch(raw, RUN)
        destination = socket.inet_aton(DST)
        try:
            for round_ in range(args.rounds):
                for size in (1500, 92):
                    header, payload = gre_packet(size)
                    via_raw = raw_sender(batch, header, payload, destination)
                    via_packet = packet_sender(packet, header, payload, ("ms0", 0x0800, 0, 0, peer_mac))
                    variants = [("raw", via_raw), ("packet", via_packet)]
                    for name, send_run in variants if round_ % 2 == 0 else variants[::-1]:
                        results.setdefault((size, name), []).append(cpu_per_packet(send_run, args.count))
        finally:
            for sock in (raw, packet, sink):
                sock.close()
    print(f"`python benchmarks/micro_send.py --rounds {args.rounds} --count {args.count}`: sender CPU per packet")
    print(f"(user + system, the peer's receive path included), median [min–max] of {args.rounds} rounds.\n")
    print("| packet bytes | raw IPv4 socket, sendmmsg ×64 (as the tunnel) | AF_PACKET, qdisc bypass, sendmsg |")
    print("|---:|---:|---:|")
    for size in (1500, 92):
        cells = []
        for name in ("raw", "packet"):
            values = results[(size, name)]
            cells.append(f"{statistics.median(values):.2f} µs [{min(values):.2f}–{max(values):.2f}]")
        print(f"| {size} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
