"""Receive coalescing (core.gro): merged packets checked independently with scapy, edge cases, and the kernel.

The end-to-end test writes merged packets into a TUN device opened with
IFF_VNET_HDR inside a namespace, towards a listening TCP socket whose handshake
the test drives by hand, and checks what the socket receives.
"""

from __future__ import annotations

import os
import struct
import sys
import uuid
from pathlib import Path

from conftest import require_netns
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from usertunnel.core import gro
from usertunnel.core.checksum import checksum_is_valid
from usertunnel.io import netns

SETTINGS = settings(max_examples=150, deadline=None)
SRC, DST = "203.0.113.2", "203.0.113.1"
SRC6, DST6 = "2001:db8::2", "2001:db8::1"
TS = [("NOP", None), ("NOP", None), ("Timestamp", (1000, 2000))]


def segment(
    payload: bytes,
    seq: int,
    flags: str = "A",
    ack: int = 7,
    sport: int = 40000,
    v6: bool = False,
    options: list[tuple[str, object]] | None = None,
    **ip: object,
) -> bytes:
    net = IPv6(src=SRC6, dst=DST6, **ip) if v6 else IP(src=SRC, dst=DST, flags="DF", **ip)
    return bytes(
        net
        / TCP(sport=sport, dport=80, seq=seq, ack=ack, flags=flags, window=502, options=options or [])
        / Raw(payload)
    )


def split(data: bytes, mss: int, seq: int = 1000, psh_last: bool = True, **kw: object) -> list[bytes]:
    chunks = [data[i : i + mss] for i in range(0, len(data), mss)]
    last = len(chunks) - 1
    return [
        segment(chunk, seq + i * mss, "PA" if psh_last and i == last else "A", **kw)  # type: ignore[arg-type]
        for i, chunk in enumerate(chunks)
    ]


def scapy_checks(packet: bytes, v6: bool) -> None:
    """The IPv4 header and TCP checksums as scapy computes them from scratch, and the lengths."""
    parsed = IPv6(packet) if v6 else IP(packet)
    tcp = parsed[TCP]
    theirs = tcp.chksum
    del tcp.chksum
    if not v6:
        ip_sum = parsed.chksum
        del parsed.chksum
        assert parsed.len == len(packet)
    else:
        assert parsed.plen == len(packet) - 40
    rebuilt = (IPv6 if v6 else IP)(bytes(parsed))
    assert rebuilt[TCP].chksum == theirs
    if not v6:
        assert rebuilt.chksum == ip_sum


def unpack_vnet(vnet: bytes) -> tuple[int, ...]:
    return struct.unpack("=BBHHHH", vnet[:10])


# --- properties ------------------------------------------------------------------------------------------


@SETTINGS
@given(
    data=st.binary(min_size=2, max_size=20000),
    mss=st.integers(min_value=1, max_value=1460),
    v6=st.booleans(),
    timestamps=st.booleans(),
    seq=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_split_then_coalesced_is_one_packet_with_the_whole_payload_and_valid_checksums(
    data: bytes, mss: int, v6: bool, timestamps: bool, seq: int
) -> None:
    mss = min(mss, len(data) - 1)  # at least two segments
    segments = [
        segment(chunk, (seq + i * mss) & 0xFFFFFFFF, "A", v6=v6, options=TS if timestamps else None)
        for i, chunk in enumerate(data[i : i + mss] for i in range(0, len(data), mss))
    ]
    items = gro.coalesce(segments)
    assert len(items) == 1
    item = items[0]
    assert item.segments == len(segments)
    packet = bytes(item.packet)
    parsed = IPv6(packet) if v6 else IP(packet)
    assert bytes(parsed[TCP].payload) == data
    assert parsed[TCP].seq == seq
    scapy_checks(packet, v6)
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = unpack_vnet(item.vnet)
    assert flags == 0
    assert gso_type == (gro.VIRTIO_NET_HDR_GSO_TCPV6 if v6 else gro.VIRTIO_NET_HDR_GSO_TCPV4)
    assert gso_size == mss
    assert hdr_len == (40 if v6 else 20) + (32 if timestamps else 20)
    assert (csum_start, csum_offset) == (40 if v6 else 20, 16)


def _flow_packet(draw: st.DrawFn, index: int, next_seq: dict[int, int]) -> tuple[int | None, bytes]:
    """A packet of one of three TCP flows (mostly mergeable, sometimes not) or something else."""
    kind = draw(st.sampled_from(["tcp", "tcp", "tcp", "tcp", "udp", "junk"]))
    payload = index.to_bytes(2, "big") * draw(st.integers(min_value=1, max_value=4))
    if kind == "udp":
        return None, bytes(IP(src=SRC, dst=DST) / UDP(sport=5, dport=6) / Raw(payload))
    if kind == "junk":
        return None, draw(st.binary(max_size=60))
    flow = draw(st.integers(min_value=0, max_value=2))
    seq = next_seq.get(flow, 0)
    if draw(st.integers(0, 9)) == 0:
        seq += draw(st.sampled_from([-8, 1, 100]))  # a retransmission or a gap
    flags = draw(st.sampled_from(["A", "A", "A", "PA", "FA", "SA", "RA", "UA"]))
    ack = draw(st.sampled_from([7, 7, 7, 8]))
    next_seq[flow] = seq + len(payload)
    return flow, segment(payload, seq & 0xFFFFFFFF, flags, ack=ack, sport=40000 + flow)


@st.composite
def mixes(draw: st.DrawFn) -> list[tuple[int | None, bytes]]:
    next_seq: dict[int, int] = {}
    return [_flow_packet(draw, i, next_seq) for i in range(draw(st.integers(min_value=0, max_value=40)))]


@SETTINGS
@given(mixes())
def test_every_input_comes_out_exactly_once_and_each_flow_keeps_its_order(mix: list[tuple[int | None, bytes]]) -> None:
    packets = [p for _, p in mix]
    items = gro.coalesce(packets)
    assert sum(item.segments for item in items) == len(packets)
    # Which inputs each item carries: unchanged ones by identity, merged ones by their payload chunks.
    by_payload = {bytes(IP(p)[TCP].payload): i for i, (flow, p) in enumerate(mix) if flow is not None}
    order: list[int] = []
    used: list[int] = []
    for item in items:
        if item.segments == 1:
            matches = [i for i, p in enumerate(packets) if p is item.packet and i not in used]
            assert matches, "an unmerged packet must be one of the inputs, unchanged"
            assert item.vnet == bytes(10)
            carried = [matches[0]]
        else:
            scapy_checks(bytes(item.packet), False)
            gso_size = unpack_vnet(item.vnet)[3]
            payload = bytes(IP(bytes(item.packet))[TCP].payload)
            carried = [by_payload[payload[i : i + gso_size]] for i in range(0, len(payload), gso_size)]
            flows = {mix[i][0] for i in carried}
            assert len(flows) == 1
            flow_indices = [i for i, (f, _) in enumerate(mix) if f in flows]
            start = flow_indices.index(carried[0])
            assert flow_indices[start : start + len(carried)] == carried, "merged segments are consecutive"
        used.extend(carried)
        order.extend(carried)
    assert sorted(used) == list(range(len(packets)))
    for flow in {f for f, _ in mix if f is not None}:
        positions = [i for i in order if mix[i][0] == flow]
        assert positions == sorted(positions)


@SETTINGS
@given(st.lists(st.integers(min_value=0, max_value=5), max_size=30))
def test_packets_that_cannot_merge_come_out_unchanged_and_in_order(kinds: list[int]) -> None:
    packets = []
    for i, kind in enumerate(kinds):
        payload = b"x" * (i + 1)
        packets.append(
            [
                segment(payload, 0, "A", sport=1000 + i),  # a new flow each time
                segment(payload, 0, "S"),
                segment(payload, 0, "FA"),
                bytes(IP(src=SRC, dst=DST) / UDP() / Raw(payload)),
                bytes(IP(src=SRC, dst=DST, options=b"\x01\x01\x01\x00") / TCP(flags="A") / Raw(payload)),
                os.urandom(i),
            ][kind]
        )
    items = gro.coalesce(packets)
    assert [item.packet for item in items] == packets
    assert all(item.vnet == bytes(10) and item.segments == 1 for item in items)


# --- edge cases ------------------------------------------------------------------------------------------


def payloads(items: list[gro.Item]) -> list[bytes]:
    return [bytes(IP(bytes(item.packet))[TCP].payload) for item in items]


def test_psh_in_the_middle_ends_the_merged_packet() -> None:
    a, b, c, d = (bytes([n]) * 100 for n in range(4))
    items = gro.coalesce([segment(a, 0), segment(b, 100, "PA"), segment(c, 200), segment(d, 300)])
    assert payloads(items) == [a + b, c + d]
    assert IP(bytes(items[0].packet))[TCP].flags == "PA"
    assert IP(bytes(items[1].packet))[TCP].flags == "A"


def test_different_ack_numbers_are_not_merged() -> None:
    items = gro.coalesce([segment(b"a" * 10, 0, ack=1), segment(b"b" * 10, 10, ack=2)])
    assert [item.segments for item in items] == [1, 1]


def test_a_gap_or_a_retransmission_starts_a_new_packet() -> None:
    gap = gro.coalesce([segment(b"a" * 10, 0), segment(b"b" * 10, 20), segment(b"c" * 10, 30)])
    assert payloads(gap) == [b"a" * 10, b"b" * 10 + b"c" * 10]
    again = gro.coalesce([segment(b"a" * 10, 0), segment(b"b" * 10, 10), segment(b"a" * 10, 0)])
    assert payloads(again) == [b"a" * 10 + b"b" * 10, b"a" * 10]


def test_a_fin_passes_unchanged_and_nothing_after_it_joins_what_came_before() -> None:
    fin = segment(b"f" * 10, 20, "FA")
    items = gro.coalesce([segment(b"a" * 10, 0), segment(b"b" * 10, 10), fin, segment(b"c" * 10, 30)])
    assert [item.segments for item in items] == [2, 1, 1]
    assert items[1].packet is fin


def test_differing_options_or_ip_fields_are_not_merged() -> None:
    other_ts = [("NOP", None), ("NOP", None), ("Timestamp", (1001, 2000))]
    assert len(gro.coalesce([segment(b"a" * 8, 0, options=TS), segment(b"b" * 8, 8, options=other_ts)])) == 2
    assert len(gro.coalesce([segment(b"a" * 8, 0, ttl=64), segment(b"b" * 8, 8, ttl=63)])) == 2
    assert len(gro.coalesce([segment(b"a" * 8, 0, tos=0), segment(b"b" * 8, 8, tos=4)])) == 2
    sack = [("SAck", (1, 2))]
    assert [
        i.segments for i in gro.coalesce([segment(b"a" * 8, 0, options=sack), segment(b"b" * 8, 8, options=sack)])
    ] == [1, 1]


def test_a_shorter_segment_ends_the_packet_and_a_longer_one_is_not_appended() -> None:
    items = gro.coalesce([segment(b"a" * 10, 0), segment(b"b" * 5, 10), segment(b"c" * 10, 15)])
    assert payloads(items) == [b"a" * 10 + b"b" * 5, b"c" * 10]
    items = gro.coalesce([segment(b"a" * 5, 0), segment(b"b" * 10, 5)])
    assert [item.segments for item in items] == [1, 1]


def test_merged_packets_stay_within_65535_bytes() -> None:
    data = os.urandom(1448 * 60)
    items = gro.coalesce(split(data, 1448))
    assert sum(item.segments for item in items) == 60
    assert all(len(item.packet) <= 65535 for item in items)
    assert items[0].segments == (65535 - 40) // 1448
    assert b"".join(payloads(items)) == data


def test_interleaved_flows_are_merged_separately() -> None:
    a = split(b"A" * 300, 100, sport=1, psh_last=False)
    b = split(b"B" * 300, 100, sport=2, psh_last=False)
    items = gro.coalesce([a[0], b[0], a[1], b[1], a[2], b[2]])
    assert payloads(items) == [b"A" * 300, b"B" * 300]


def test_malformed_packets_pass_unchanged() -> None:
    good = segment(b"a" * 10, 0)
    truncated = good[:45]
    lying = bytearray(good)
    lying[2:4] = (len(good) + 4).to_bytes(2, "big")
    bad_offset = bytearray(good)
    bad_offset[32] = 0x30  # TCP data offset 3 words
    fragment = bytes(IP(src=SRC, dst=DST, flags="MF") / TCP(flags="A") / Raw(b"x" * 16))
    packets = [b"", b"\x45", truncated, bytes(lying), bytes(bad_offset), fragment, b"\x60" + bytes(30)]
    assert [item.packet for item in gro.coalesce(packets)] == packets


def test_a_corrupted_segment_makes_the_merged_checksum_wrong_unless_verify_passes_it_alone() -> None:
    segments = split(os.urandom(400), 100)
    corrupt = bytearray(segments[1])
    corrupt[-1] ^= 0x40
    segments[1] = bytes(corrupt)
    merged = gro.coalesce(segments)
    assert len(merged) == 1
    packet = bytes(merged[0].packet)
    pseudo = packet[12:20] + b"\x00\x06" + (len(packet) - 20).to_bytes(2, "big")
    assert not checksum_is_valid(pseudo + packet[20:])
    verified = gro.coalesce(segments, verify=True)
    assert [item.segments for item in verified] == [1, 1, 2]
    assert verified[1].packet == segments[1]


def test_a_twelve_byte_vnet_header_has_two_zero_bytes_more() -> None:
    items = gro.coalesce(split(b"z" * 300, 100), vnet_size=12)
    assert len(items[0].vnet) == 12 and items[0].vnet[10:] == b"\x00\x00"
    assert gro.coalesce([b"junk"], vnet_size=12)[0].vnet == bytes(12)


# --- the kernel accepts it (TUN with IFF_VNET_HDR in a namespace) ----------------------------------------


def test_the_kernel_delivers_a_merged_packet_to_a_tcp_socket_and_drops_a_corrupted_one() -> None:
    require_netns()
    name = f"utg-gro-{uuid.uuid4().hex[:8]}"
    netns.create(name, ipv6=False)
    try:
        script = _E2E.replace("__REPO__", str(Path(__file__).resolve().parent.parent))
        result = netns.run(name, [sys.executable, "-c", script], timeout=60)
    finally:
        netns.remove(name)
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output
    lines = dict(line.split("=", 1) for line in result.stdout.decode().splitlines() if "=" in line)
    assert lines["merged_received"] == lines["merged_sent"], output
    assert lines["corrupt_received"] == "0", output
    assert int(lines["csum_errors_delta"]) >= 2, output  # flags 0 and DATA_VALID: both verified, both dropped


# Runs inside the namespace: a TUN with IFF_VNET_HDR at 203.0.113.1/24, a listening socket, a handshake driven
# by hand from 203.0.113.2, then merged packets written with their vnet headers.
_E2E = r"""
import fcntl, os, select, socket, struct, sys, time
sys.path.insert(0, "__REPO__")
from scapy.layers.inet import IP, TCP
from scapy.packet import Raw
from usertunnel.core import gro

TUNSETIFF, TUNSETVNETHDRSZ = 0x400454CA, 0x400454D8
IFF_TUN, IFF_NO_PI, IFF_VNET_HDR = 0x0001, 0x1000, 0x4000
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", b"utg0", IFF_TUN | IFF_NO_PI | IFF_VNET_HDR))
fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", 10))
os.system("ip addr add 203.0.113.1/24 dev utg0 && ip link set utg0 up")

def snmp_csum_errors():
    lines = [l.split() for l in open("/proc/net/snmp") if l.startswith("Tcp:")]
    return int(lines[1][lines[0].index("InCsumErrors")])

listener = socket.socket()
listener.bind(("203.0.113.1", 8080))
listener.listen(4)
listener.settimeout(3)

def read_synack(sport, timeout=3.0):
    end = time.time() + timeout
    while time.time() < end:
        if not select.select([fd], [], [], 0.2)[0]:
            continue
        packet = IP(os.read(fd, 70000)[10:])
        if TCP in packet and packet[TCP].dport == sport and packet[TCP].flags == "SA":
            return packet
    raise SystemExit("no SYN-ACK from the listener")


def write(vnet, packet):
    os.writev(fd, [vnet, bytes(packet)])

def conn(sport):
    base = IP(src="203.0.113.2", dst="203.0.113.1", flags="DF")
    write(bytes(10), base / TCP(sport=sport, dport=8080, seq=1000, flags="S", window=65535, options=[("MSS", 1448)]))
    synack = read_synack(sport)
    ack = synack[TCP].seq + 1
    write(bytes(10), base / TCP(sport=sport, dport=8080, seq=1001, ack=ack, flags="A", window=65535))
    server, _ = listener.accept()
    server.setblocking(False)
    return base, ack, server

def segments(base, sport, ack, data, mss=1448):
    tcp = lambda i: TCP(sport=sport, dport=8080, seq=1001 + i, ack=ack, flags="A", window=65535)
    return [bytes(base / tcp(i) / Raw(data[i:i + mss])) for i in range(0, len(data), mss)]

def drain(server, want, timeout=3.0):
    got = b""
    end = time.time() + timeout
    while len(got) < want and time.time() < end:
        select.select([server], [], [], 0.2)
        try:
            chunk = server.recv(1 << 20)
        except BlockingIOError:
            continue
        if not chunk:
            break
        got += chunk
    return got

data = os.urandom(1448 * 20 + 100)
base, ack, server = conn(40001)
items = gro.coalesce(segments(base, 40001, ack, data))
assert len(items) == 1 and items[0].segments == 21, [i.segments for i in items]
before = snmp_csum_errors()
write(items[0].vnet, items[0].packet)
got = drain(server, len(data))
print(f"merged_sent={len(data)}")
print(f"merged_received={len(got) if got == data else 'mismatch:' + str(len(got))}")

# A corrupted segment: the derived checksum of the merged packet is wrong, with flags 0 and with DATA_VALID.
base2, ack2, server2 = conn(40002)
segs = segments(base2, 40002, ack2, data)
bad = bytearray(segs[3]); bad[-1] ^= 1; segs[3] = bytes(bad)
item = gro.coalesce(segs)[0]
write(item.vnet, item.packet)
valid = bytearray(item.vnet); valid[0] = gro.VIRTIO_NET_HDR_F_DATA_VALID
write(bytes(valid), item.packet)
got2 = drain(server2, len(data), timeout=1.0)
print(f"corrupt_received={len(got2)}")
print(f"csum_errors_delta={snmp_csum_errors() - before}")
"""


def _items(items: list[gro.Item]) -> list[tuple[bytes, bytes, int]]:
    return [(item.vnet, bytes(item.packet), item.segments) for item in items]


@st.composite
def bulk_with_damage(draw: st.DrawFn) -> list[bytes]:
    """A bulk transfer's full-sized segments (what the quick test is for), some headers changed at random
    offsets (a byte that must agree, or one that may differ), some packets dropped, duplicated or emptied."""
    mss = draw(st.integers(min_value=1, max_value=64))
    count = draw(st.integers(min_value=2, max_value=30))
    packets = split(bytes(range(256)) * (mss * count // 256 + 1), mss, psh_last=draw(st.booleans()),
                    options=TS if draw(st.booleans()) else None)[:count]  # fmt: skip
    out = []
    for packet in packets:
        how = draw(st.sampled_from(["keep"] * 6 + ["flip", "drop", "twice", "empty"]))
        if how == "flip":
            data = bytearray(packet)
            data[draw(st.integers(0, min(len(data), 60) - 1))] ^= draw(st.integers(1, 255))
            out.append(bytes(data))
        elif how == "twice":
            out += [packet, packet]
        elif how == "empty":
            out.append(b"")
        elif how == "keep":
            out.append(packet)
    return out


@SETTINGS
@given(st.one_of(bulk_with_damage(), mixes().map(lambda mix: [p for _, p in mix])))
def test_the_quick_test_changes_nothing_in_what_comes_out(packets: list[bytes]) -> None:
    assert _items(gro.coalesce(packets, quick=True)) == _items(gro.coalesce(packets, quick=False))
