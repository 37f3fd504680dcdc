"""Micro-benchmark of the two data-path building blocks, ratios within one run.

1. core.gro.coalesce: microseconds per packet to merge a batch of 44 x 1448-byte
   TCP segments (one flow), with the derived checksum and with `verify=True`;
   beside it, the cost of summing each segment's payload (what `verify` adds).
2. io.batch.RecvBatch (recvmmsg) against a loop of sock.recv_into for 64 GRE
   packets of 1500 bytes waiting on a raw socket, in a namespace of its own
   (needs root; skipped otherwise), and SendBatch (sendmmsg) against a loop of
   sendmsg for the same 64 packets.

Usage: python benchmarks/micro_gro.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import struct
import sys
import time
import uuid
from collections.abc import Callable

from usertunnel.core import gro
from usertunnel.core.checksum import ones_complement_sum
from usertunnel.io import netns
from usertunnel.io.batch import RecvBatch, SendBatch

_IP = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")


def tcp_segments(count: int = 44, mss: int = 1448) -> list[bytes]:
    """`count` in-order segments of one flow with valid checksums (timestamps option, as Linux sends)."""
    src, dst = socket.inet_aton("203.0.113.2"), socket.inet_aton("203.0.113.1")
    options = b"\x01\x01\x08\x0a" + struct.pack("!II", 1000, 2000)
    out = []
    for i in range(count):
        payload = os.urandom(mss)
        tcp = bytearray(_TCP.pack(40000, 5201, 1000 + i * mss, 7, 8 << 4, 0x10, 502, 0, 0) + options)
        pseudo = src + dst + struct.pack("!HH", 6, len(tcp) + mss)
        struct.pack_into("!H", tcp, 16, ~ones_complement_sum(pseudo + tcp + payload) & 0xFFFF)
        ip = bytearray(_IP.pack(0x45, 0, 20 + len(tcp) + mss, i, 0x4000, 64, 6, 0, src, dst))
        struct.pack_into("!H", ip, 10, ~ones_complement_sum(ip) & 0xFFFF)
        out.append(bytes(ip + tcp) + payload)
    return out


def median_time(fn: Callable[[], object], rounds: int) -> float:
    """Median seconds per call over `rounds` timed calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_gro(rounds: int) -> None:
    segments = tcp_segments()
    assert len(gro.coalesce(segments)) == 1
    n = len(segments)
    derived = median_time(lambda: gro.coalesce(segments), rounds) / n * 1e6
    verified = median_time(lambda: gro.coalesce(segments, verify=True), rounds) / n * 1e6
    payload_sum = median_time(lambda: [ones_complement_sum(s[52:]) for s in segments], rounds) / n * 1e6
    print(f"gro.coalesce, {n} x 1448-byte segments of one flow (median of {rounds} batches):")
    print(f"  derived checksum (default): {derived:6.2f} us/packet")
    print(f"  verify=True:                {verified:6.2f} us/packet  ({verified / derived:.2f}x)")
    print(f"  payload sum alone:          {payload_sum:6.2f} us/packet")


def bench_batch(rounds: int) -> None:
    if os.geteuid() != 0:
        print("recvmmsg / sendmmsg: skipped (needs root for a namespace and raw sockets)")
        return
    name = f"utg-mb-{uuid.uuid4().hex[:6]}"
    netns.create(name, ipv6=False)
    try:
        sender = netns.open_socket(name, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # send only
        receiver = netns.open_socket(name, socket.AF_INET, socket.SOCK_RAW, 47)
        receiver.setblocking(False)
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        count, dest = 64, socket.inet_aton("127.0.0.1")
        inner = os.urandom(1476)
        header = _IP.pack(0x45, 0, 1500, 0, 0x4000, 64, 47, 0, dest, dest) + b"\x00\x00\x08\x00"
        send, recv = SendBatch(sender, count), RecvBatch(receiver, count)
        buffer = bytearray(65536)

        def fill() -> None:
            for _ in range(count):
                send.add(header, inner, dest)
            sent, errors = send.flush()
            assert (sent, errors) == (count, 0), (sent, errors)

        def drain_mmsg() -> int:
            return len(recv.recv())

        def drain_loop() -> int:
            got = 0
            for _ in range(count):
                try:
                    receiver.recv_into(buffer)
                except BlockingIOError:
                    break
                got += 1
            return got

        def timed_drain(drain: Callable[[], int]) -> float:
            times = []
            for _ in range(rounds):
                fill()
                time.sleep(0.001)
                start = time.perf_counter()
                got = drain()
                times.append(time.perf_counter() - start)
                assert got == count, got
            return statistics.median(times) / count * 1e6

        def send_loop() -> None:
            for _ in range(count):
                sender.sendmsg((header, inner), (), 0, ("127.0.0.1", 0))

        def timed_send(fn: Callable[[], None]) -> float:
            times = []
            for _ in range(rounds):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
                time.sleep(0.001)
                drain_mmsg()
            return statistics.median(times) / count * 1e6

        loop, mmsg = timed_drain(drain_loop), timed_drain(drain_mmsg)
        sendmsg, sendmmsg = timed_send(send_loop), timed_send(fill)
        print(f"raw socket, {count} GRE packets of 1500 bytes on loopback (median of {rounds} batches):")
        print(f"  receive: recv_into loop {loop:6.2f} us/packet, recvmmsg {mmsg:6.2f} us/packet ({loop / mmsg:.2f}x)")
        print(f"  send:    sendmsg loop   {sendmsg:6.2f} us/packet, sendmmsg {sendmmsg:6.2f} us/packet", end="")
        print(f" ({sendmsg / sendmmsg:.2f}x; both include the kernel's loopback delivery)")
        sender.close()
        receiver.close()
    finally:
        netns.remove(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200, help="timed batches per figure (default 200)")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f}")
    bench_gro(args.rounds)
    bench_batch(args.rounds)


if __name__ == "__main__":
    main()
