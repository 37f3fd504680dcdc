"""Traffic for the end-to-end and interop tests: TCP transfers and crafted tunnel packets.

Every socket is created inside the namespace it belongs to (netns.open_socket)
and used from the test process; every wait is bounded.
"""

from __future__ import annotations

import hashlib
import random
import socket
import threading

from scapy.layers.inet import GRE, ICMP, IP

from usertunnel.io import netns


def tcp_transfer(
    sender: str, receiver: str, address: str, port: int, size: int, timeout: float = 60
) -> tuple[str, str]:
    """`size` pseudo-random bytes from namespace `sender` to `address`:`port` in `receiver` (IPv4 or IPv6);
    both SHA-256."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    server = netns.open_socket(receiver, family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((address, port))
    server.listen(1)
    server.settimeout(timeout)
    received = hashlib.sha256()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            conn, _ = server.accept()
            conn.settimeout(timeout)
            with conn:
                while chunk := conn.recv(1 << 16):
                    received.update(chunk)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    data = random.Random(size).randbytes(size)
    client = netns.open_socket(sender, family, socket.SOCK_STREAM)
    client.settimeout(timeout)
    try:
        client.connect((address, port))
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        thread.join(timeout)
    finally:
        client.close()
        server.close()
    assert not errors, errors
    return hashlib.sha256(data).hexdigest(), received.hexdigest()


def echo_request(
    outer: tuple[str, str],
    inner: tuple[str, str],
    echo_id: int,
    echo_seq: int,
    *,
    mode: str = "gre",
    key: int | None = None,
    seq: int | None = None,
    csum: bool = False,
    tos: int = 0,
    inner_tos: int = 0,
) -> bytes:
    """An ICMP echo request from inner[0] to inner[1], tunnelled from outer[0] to outer[1] (built by scapy)."""
    payload = IP(src=inner[0], dst=inner[1], tos=inner_tos) / ICMP(id=echo_id, seq=echo_seq) / b"usertunnel-crafted"
    outer_ip = IP(src=outer[0], dst=outer[1], tos=tos, flags="DF")
    if mode == "ipip":
        return bytes(outer_ip / payload)
    header = GRE(proto=0x0800)
    if key is not None:
        header.key_present, header.key = 1, key
    if seq is not None:
        header.seqnum_present, header.sequence_number = 1, seq
    if csum:
        header.chksum_present = 1
    return bytes(outer_ip / header / payload)


def fix_total_length(packet: bytes) -> bytes:
    """The outer IPv4 total length set to the packet's length (after truncating a crafted packet), so that
    the receiving kernel delivers it; with IP_HDRINCL the sending kernel fills in the header checksum."""
    out = bytearray(packet)
    out[2:4] = len(out).to_bytes(2, "big")
    return bytes(out)


def corrupt_last_byte(packet: bytes) -> bytes:
    out = bytearray(packet)
    out[-1] ^= 0x55
    return bytes(out)


def echo_replies_seen(sock: socket.socket, echo_id: int, quiet: float = 1.0, in_order: bool = False) -> list[int]:
    """Sequence numbers of the echo replies with `echo_id` read from raw socket `sock` until `quiet` s of
    silence: sorted, or with `in_order` as they arrived."""
    seqs = []
    sock.settimeout(quiet)
    while True:
        try:
            data = sock.recv(65535)
        except TimeoutError:
            return seqs if in_order else sorted(seqs)
        pkt = IP(data)
        if ICMP in pkt and pkt[ICMP].type == 0 and pkt[ICMP].id == echo_id:
            seqs.append(pkt[ICMP].seq)
