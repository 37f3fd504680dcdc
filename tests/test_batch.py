"""Batched raw-socket I/O (io.batch): GRE packets through sendmmsg and recvmmsg between two namespaces."""

from __future__ import annotations

import select
import socket
import time
import uuid
from collections.abc import Iterator

import pytest
from conftest import require_netns

from usertunnel.core import gre, ipv4
from usertunnel.io import netns
from usertunnel.io.batch import RecvBatch, SendBatch

A, B = "198.51.100.1", "198.51.100.2"
IPPROTO_GRE = 47


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A raw GRE sender (IP_HDRINCL) in one namespace and a raw GRE receiver in the other, joined by veth."""
    require_netns()
    tag = uuid.uuid4().hex[:6]
    ns_a, ns_b = f"utg-b{tag}-a", f"utg-b{tag}-b"
    try:
        netns.create(ns_a, ipv6=False)
        netns.create(ns_b, ipv6=False)
        netns.veth(ns_a, f"utg{tag}a", ns_b, f"utg{tag}b", A, B, 24)
        sender = netns.open_socket(ns_a, socket.AF_INET, socket.SOCK_RAW, IPPROTO_GRE)
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        receiver = netns.open_socket(ns_b, socket.AF_INET, socket.SOCK_RAW, IPPROTO_GRE)
        receiver.setblocking(False)
        yield sender, receiver
        sender.close()
        receiver.close()
    finally:
        netns.remove(ns_a)
        netns.remove(ns_b)


def outer_header(inner_length: int, dst: str = B) -> bytes:
    gre_header = gre.GREHeader(gre.PROTO_IPV4, key=1234).pack()
    total = ipv4.MIN_HEADER_LEN + len(gre_header) + inner_length
    ip = ipv4.IPv4Header(0, total, 0, ipv4.FLAG_DF, 64, IPPROTO_GRE, 0, socket.inet_aton(A), socket.inet_aton(dst))
    return ip.with_checksum().pack() + gre_header


def inner(n: int) -> bytes:
    """A distinct inner payload per packet (its index repeated), of varying length."""
    return n.to_bytes(2, "big") * (10 + 7 * n)


def receive(batch: RecvBatch, want: int, timeout: float = 3.0) -> list[bytes]:
    got: list[bytes] = []
    end = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < end:
        select.select([batch.sock], [], [], 0.1)
        got.extend(bytes(view) for view in batch.recv())
    return got


def test_packets_sent_with_sendmmsg_arrive_through_recvmmsg_equal_and_in_order(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    sender, receiver = pair
    send, recv = SendBatch(sender, count=16), RecvBatch(receiver, count=8, size=2048)
    headers = [outer_header(len(inner(i))) for i in range(40)]
    sent_total = 0
    for i in range(40):
        if not send.add(headers[i], inner(i), socket.inet_aton(B)):
            assert send.flush() == (16, 0)
            sent_total += 16
            assert send.add(headers[i], inner(i), socket.inet_aton(B))
    assert send.flush() == (40 - sent_total, 0)
    got = receive(recv, 40)
    assert len(got) == 40
    for i, packet in enumerate(got):
        # The kernel fills in the identification (DF with id 0 stays 0) and the header checksum.
        assert packet[20:] == headers[i][20:] + inner(i)
        assert packet[:4] == headers[i][:4] and packet[6:10] == headers[i][6:10] and packet[12:20] == headers[i][12:20]
    assert bytes(got[0][12:16]) == socket.inet_aton(A)  # the sender, from the IP header (no msg_name asked for)
    assert recv.errors == 0


def test_recv_with_nothing_waiting_returns_an_empty_list(pair: tuple[socket.socket, socket.socket]) -> None:
    _, receiver = pair
    assert RecvBatch(receiver, count=4, size=2048).recv() == []


def test_an_unreachable_destination_is_counted_not_raised(pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = pair
    send = SendBatch(sender, count=8)
    nowhere = "192.0.2.1"  # no route in the namespace
    payload = bytearray(b"mutable payload")
    send.add(outer_header(len(payload)), payload, socket.inet_aton(B))
    send.add(outer_header(4, dst=nowhere), b"lost", socket.inet_aton(nowhere))
    send.add(outer_header(5), memoryview(b"third"), socket.inet_aton(B))
    sent, errors = send.flush()
    assert (sent, errors) == (2, 1)
    assert [index for index, _ in send.failed] == [1]
    got = receive(RecvBatch(receiver, count=4, size=2048), 2)
    assert [packet[24 + 4 :] for packet in got] == [bytes(payload), b"third"]
