"""The event loop's error handling, with fake sockets: one packet's failure never stops the tunnel."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import time
from collections.abc import Iterator

import pytest

from usertunnel.core.drops import Drop
from usertunnel.core.encap import Demux, Tunnel
from usertunnel.core.params import Mode, TunnelParams
from usertunnel.io.loop import BUSY_GAP, Dataplane, Interface

A, B = bytes([198, 51, 100, 1]), bytes([198, 51, 100, 2])


def inner_packet(n: int) -> bytes:
    from scapy.layers.inet import ICMP, IP

    return bytes(IP(src="203.0.113.1", dst="203.0.113.2") / ICMP(seq=n))


class FakeTun:
    """A TUN stand-in: one end of a datagram socketpair, so each read is one packet."""

    def __init__(self) -> None:
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.ours.setblocking(False)
        self.theirs.setblocking(False)
        self.fd = self.ours.fileno()
        self.name = "fake0"
        self.vnet_hdr = False

    def write(self, packet: bytes | bytearray | memoryview) -> None:
        os.write(self.fd, packet)

    def close(self) -> None:
        self.ours.close()
        self.theirs.close()


class FailingRawSocket:
    """Raises the given errors from sendmsg / recv_into in turn, then behaves."""

    def __init__(self, send_errors: list[int], recv_script: list[int | bytes]) -> None:
        self.send_errors = list(send_errors)
        self.recv_script = list(recv_script)
        self.sent: list[bytes] = []
        self.r, self.w = socket.socketpair()

    def fileno(self) -> int:
        return self.r.fileno()

    def sendmsg(self, buffers: tuple[bytes, ...], *args: object) -> int:
        if self.send_errors:
            raise OSError(self.send_errors.pop(0), os.strerror(errno.ENOBUFS))
        data = b"".join(buffers)
        self.sent.append(data)
        return len(data)

    def recv_into(self, buffer: bytearray) -> int:
        if not self.recv_script:
            raise BlockingIOError
        item = self.recv_script.pop(0)
        if isinstance(item, int):
            raise OSError(item, os.strerror(item))
        buffer[: len(item)] = item
        return len(item)

    def close(self) -> None:
        self.r.close()
        self.w.close()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_send_errors_are_counted_by_errno_and_later_packets_still_go_out(loop: asyncio.AbstractEventLoop) -> None:
    tunnel = Tunnel(TunnelParams("fake0", Mode.GRE, A, B))
    tun = FakeTun()
    sock = FailingRawSocket([errno.ENOBUFS, errno.EMSGSIZE, errno.ECONNREFUSED, errno.EPERM], [])
    dp = Dataplane(loop, Demux(), batched=False)
    dp.interfaces[tunnel] = Interface(tunnel, tun, sock)  # type: ignore[arg-type]
    for n in range(6):
        tun.theirs.send(inner_packet(n))
    dp.interfaces[tunnel].left = time.monotonic()  # busy: this wakeup drains the queue
    dp._on_tun_readable(dp.interfaces[tunnel])
    c = tunnel.counters
    assert c.drops == {Drop.SEND_NOBUFS: 1, Drop.SEND_MSGSIZE: 1, Drop.ICMP_ERROR: 1, Drop.SEND_ERROR: 1}
    assert c.tx_packets == 2 and len(sock.sent) == 2
    tun.close()
    sock.close()


def test_icmp_errors_on_the_raw_socket_do_not_stop_receiving(loop: asyncio.AbstractEventLoop) -> None:
    """ENOPROTOOPT / ECONNREFUSED from recv (a peer's protocol-unreachable) is counted, then we read on."""
    params = TunnelParams("fake0", Mode.IPIP, B, A)
    tunnel = Tunnel(params)
    peer = Tunnel(TunnelParams("peer0", Mode.IPIP, A, B))
    packet = peer.encapsulate(inner_packet(1))
    assert isinstance(packet, bytes)
    tun = FakeTun()
    sock = FailingRawSocket([], [errno.ENOPROTOOPT, errno.ECONNREFUSED, packet])
    demux = Demux()
    dp = Dataplane(loop, demux, batched=False)
    demux.add(tunnel)
    dp.interfaces[tunnel] = Interface(tunnel, tun, sock)  # type: ignore[arg-type]
    dp._on_raw_readable(sock)  # type: ignore[arg-type]
    assert demux.unmatched.drops == {Drop.ICMP_ERROR: 2}
    assert tun.theirs.recv(65535) == inner_packet(1)
    assert tunnel.counters.rx_packets == 1
    tun.close()
    sock.close()


def test_a_quiet_tun_wakeup_sends_one_packet_and_a_busy_one_drains_the_queue(loop: asyncio.AbstractEventLoop) -> None:
    """Quiet (the last wakeup ended over BUSY_GAP ago): one packet, sent at once; the loop, level-triggered,
    calls back for the rest, and a wakeup that soon drains them all, in order."""
    tunnel = Tunnel(TunnelParams("fake0", Mode.GRE, A, B))
    tun = FakeTun()
    sock = FailingRawSocket([], [])
    dp = Dataplane(loop, Demux(), batched=False)
    iface = dp.interfaces[tunnel] = Interface(tunnel, tun, sock)  # type: ignore[arg-type]
    for n in range(5):
        tun.theirs.send(inner_packet(n))
    iface.left = time.monotonic() - 10 * BUSY_GAP
    dp._on_tun_readable(iface)
    assert len(sock.sent) == 1 and tunnel.counters.tx_packets == 1
    iface.left = time.monotonic()
    dp._on_tun_readable(iface)
    assert [packet[24:] for packet in sock.sent] == [inner_packet(n) for n in range(5)]
    assert tunnel.counters.tx_packets == 5
    tun.close()
    sock.close()


@pytest.fixture
def udp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """Stand-ins for a raw socket: a UDP datagram carries a whole outer packet, which recvmmsg and
    recv_into hand over as a raw socket would."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.connect(receiver.getsockname())
    yield sender, receiver
    sender.close()
    receiver.close()


def test_a_quiet_raw_wakeup_writes_one_packet_and_a_busy_one_drains_the_socket(
    loop: asyncio.AbstractEventLoop, udp_pair: tuple[socket.socket, socket.socket]
) -> None:
    sender, receiver = udp_pair
    tunnel = Tunnel(TunnelParams("fake0", Mode.GRE, B, A))
    peer = Tunnel(TunnelParams("peer0", Mode.GRE, A, B))
    demux = Demux()
    dp = Dataplane(loop, demux, batched=True)
    demux.add(tunnel)
    tun = FakeTun()
    dp.interfaces[tunnel] = Interface(tunnel, tun, receiver)  # type: ignore[arg-type]
    inners = [inner_packet(n) for n in range(5)]
    for packet in inners:
        outer = peer.encapsulate(packet)
        assert isinstance(outer, bytes)
        sender.send(outer)
    dp._on_raw_readable(receiver)  # the first wakeup of a socket is quiet
    assert tun.theirs.recv(65535) == inners[0]
    with pytest.raises(BlockingIOError):
        tun.theirs.recv(65535)
    dp._left[receiver] = time.monotonic()
    dp._on_raw_readable(receiver)
    assert [tun.theirs.recv(65535) for _ in range(4)] == inners[1:]
    assert tunnel.counters.rx_packets == 5
    with pytest.raises(BlockingIOError):
        receiver.recv(65535)
    tun.close()


def test_a_batch_without_tcp_goes_into_a_vnet_tun_packet_by_packet_behind_an_empty_header() -> None:
    """Only TCP segments can be coalesced: a batch of ICMP/UDP skips the coalescing pass, and each packet
    still gets its own all-zero virtio_net_hdr (GSO_NONE), in order."""
    from scapy.layers.inet import IP, TCP

    from usertunnel.io.tun import VNET_NONE

    tun = FakeTun()
    tun.vnet_hdr = True
    iface = Interface(
        Tunnel(TunnelParams("fake0", Mode.GRE, A, B)), tun, socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    )  # type: ignore[arg-type]
    try:
        batch = [inner_packet(n) for n in range(5)]
        iface.write_many(list(batch))
        got = [tun.theirs.recv(2048) for _ in range(5)]
        assert got == [VNET_NONE + p for p in batch]
        tcp = bytes(IP(src="203.0.113.1", dst="203.0.113.2") / TCP(flags="A", seq=1) / (b"x" * 100))
        iface.write_many([batch[0], tcp])  # a TCP packet in the batch: the coalescing pass runs, order kept
        assert [tun.theirs.recv(2048) for _ in range(2)] == [VNET_NONE + batch[0], VNET_NONE + tcp]
    finally:
        iface.sock.close()
        tun.close()


def test_a_partial_checksum_read_from_tun_is_completed_in_place() -> None:
    """Should the kernel hand over a packet with VIRTIO_NET_HDR_F_NEEDS_CSUM (no offloads are enabled, so it
    should not), the transport checksum field holds the pseudo-header sum and the rest is summed in."""
    import struct

    from scapy.layers.inet import IP, UDP

    from usertunnel.core.checksum import fold, ones_complement_sum
    from usertunnel.io.tun import VIRTIO_NET_HDR_F_NEEDS_CSUM, complete_checksum

    right = bytes(IP(src="203.0.113.1", dst="203.0.113.2") / UDP(sport=1, dport=2) / (b"payload" * 9))
    packet = bytearray(right)
    pseudo = fold(ones_complement_sum(packet[12:20]) + 17 + len(packet) - 20)
    packet[26:28] = pseudo.to_bytes(2, "big")  # what a partial checksum leaves in the field
    vnet = struct.pack("=BBHHHH", VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 20, 6)
    complete_checksum(vnet, memoryview(packet))
    assert bytes(packet) == right
