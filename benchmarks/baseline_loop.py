"""The baseline: the smallest Python GRE loop there is, for usertunnel to be measured against.

Issue 5 asks usertunnel to beat, by stated ratios, "a minimal Python loop": TUN
-> a fixed 4-byte GRE header -> raw socket, and raw socket -> strip the outer
IPv4 header and the 4-byte GRE header -> TUN, with plain epoll and no parsing.
This is that loop, so that the comparison is made in the same run, on the same
machine, by the same suite (benchmarks/bench.py), instead of against a figure
remembered from elsewhere.

What it does, and deliberately nothing more:
- a TUN device (IFF_TUN | IFF_NO_PI, opened with the TUNSETIFF ioctl), its
  address and MTU set, up;
- one raw IPv4 socket for protocol 47 *without* IP_HDRINCL: the kernel builds
  the outer IPv4 header. Never connect()ed (a connected raw socket fails its
  reads after an ICMP error from the peer); sendto() the remote instead. Send
  and receive buffers of 8 MB, as usertunnel.io.raw asks for (the default
  ~212 KB overflows under TCP load);
- TUN -> sendto(b"\\x00\\x00\\x08\\x00" + packet): GRE version 0, no options,
  protocol type IPv4. Nothing is checked; run it with IPv6 off;
- raw socket -> write(tun, packet[24:]): a fixed 20-byte outer IPv4 header (no
  options, which is what the peer's kernel sends) and 4 bytes of GRE. No
  source filter, no GRE check: the lab has no other GRE sender;
- level-triggered select.epoll, one packet per ready descriptor per wakeup:
  reading several packets per wakeup is one of the techniques the issue
  measures usertunnel's gain from, so the baseline does not do it
  (`--drain N` reads up to N, for experiments; the suite does not use it).

Like `usertunnel up` it logs one line `baseline: NAME: up ...` on stderr when
ready, stops on SIGTERM or SIGINT, and prints its counters as
`baseline: NAME: stats {json}` on the way out. The TUN device is not
persistent, so it goes away with the process, however it ends.

    python3 benchmarks/baseline_loop.py --local A --remote B --address CIDR [--name NAME] [--mtu N]

Needs root (or CAP_NET_ADMIN + CAP_NET_RAW) and /dev/net/tun.
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import json
import os
import select
import signal
import socket
import struct
import sys
from collections.abc import Sequence
from types import FrameType

from pyroute2 import IPRoute

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
GRE_PROTO = 47
GRE_HEADER = b"\x00\x00\x08\x00"  # C=K=S=0, version 0, protocol type 0x0800 (IPv4)
OUTER_LEN = 20 + len(GRE_HEADER)  # fixed: the peer's kernel sends no IPv4 options
SOCKET_BUFFER = 8 * 1024 * 1024  # as usertunnel.io.raw.SOCKET_BUFFER
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
MAX_PACKET = 65535


class Stop(Exception):
    """Raised by the signal handler to leave the loop at once."""


def open_tun(name: str) -> tuple[int, str]:
    """A non-persistent TUN device; its descriptor (non-blocking) and the name the kernel gave it."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        answer = fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd, answer[:16].rstrip(b"\x00").decode()


def configure(name: str, address: str, mtu: int) -> None:
    """Address, MTU and state up, through netlink in the namespace this process runs in."""
    interface = ipaddress.IPv4Interface(address)
    with IPRoute() as ip:
        index = ip.link_lookup(ifname=name)[0]
        ip.link("set", index=index, mtu=mtu)
        ip.addr("add", index=index, address=str(interface.ip), prefixlen=interface.network.prefixlen)
        ip.link("set", index=index, state="up")


def open_raw() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, GRE_PROTO)
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
    sock.setblocking(False)
    return sock


def run(tun_fd: int, sock: socket.socket, remote: str, drain: int, counters: dict[str, int]) -> None:
    """Move packets both ways until a signal raises Stop; `counters` is updated as it goes."""
    epoll = select.epoll()
    epoll.register(tun_fd, select.EPOLLIN)
    epoll.register(sock.fileno(), select.EPOLLIN)
    sock_fd = sock.fileno()
    destination = (remote, 0)
    buffer = bytearray(MAX_PACKET)
    view = memoryview(buffer)
    read, write, sendto, recv_into = os.read, os.write, sock.sendto, sock.recv_into
    header = GRE_HEADER
    tx = rx = tx_errors = rx_errors = 0
    try:
        while True:
            for fd, _ in epoll.poll():
                if fd == tun_fd:
                    for _ in range(drain):
                        try:
                            packet = read(tun_fd, MAX_PACKET)
                        except BlockingIOError:
                            break
                        try:
                            sendto(header + packet, destination)
                            tx += 1
                        except OSError:
                            tx_errors += 1
                elif fd == sock_fd:
                    for _ in range(drain):
                        try:
                            n = recv_into(buffer)
                        except BlockingIOError:
                            break
                        except OSError:
                            rx_errors += 1
                            continue
                        try:
                            write(tun_fd, view[OUTER_LEN:n])
                            rx += 1
                        except OSError:
                            rx_errors += 1
    except Stop:
        pass
    finally:
        epoll.close()
        counters.update(tx_packets=tx, rx_packets=rx, tx_errors=tx_errors, rx_errors=rx_errors)


def _stop(signum: int, frame: FrameType | None) -> None:
    raise Stop


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="baseline_loop.py", description="The minimal Python GRE loop of issue 5.")
    parser.add_argument("--local", required=True, help="our underlay address (for the log line only)")
    parser.add_argument("--remote", required=True, help="the peer's underlay address: where packets are sent")
    parser.add_argument("--address", required=True, help="inner address of the TUN device, CIDR")
    parser.add_argument("--name", default="gre%d", help="TUN device name (default gre%%d)")
    parser.add_argument("--mtu", type=int, default=1476, help="TUN MTU (default 1476: 1500 - 20 - 4)")
    parser.add_argument("--drain", type=int, default=1, help="packets read per ready descriptor (default 1)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    tun_fd, name = open_tun(args.name)
    counters: dict[str, int] = {}
    try:
        sock = open_raw()
        configure(name, args.address, args.mtu)
        print(
            f"baseline: {name}: up gre local {args.local} remote {args.remote} mtu {args.mtu} drain {args.drain}",
            file=sys.stderr,
            flush=True,
        )
        run(tun_fd, sock, args.remote, max(1, args.drain), counters)
        sock.close()
    except Stop:
        pass
    finally:
        os.close(tun_fd)
    print(f"baseline: {name}: stats {json.dumps(counters)}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
