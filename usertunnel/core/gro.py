"""Receive coalescing (GRO): merge a batch's in-order TCP segments into one large packet for the TUN.

Rules for this file: pure functions over bytes. No socket, no file descriptor;
the I/O shell writes what `coalesce` returns into a TUN device opened with
IFF_VNET_HDR, each packet preceded by its `Item.vnet` header. Every input
packet comes out exactly once, merged or unchanged; nothing here raises on
malformed input (a packet this file does not understand passes through as is).

Theory of operation (the kernel's tcp_gro_receive, wireguard-go's tcpGRO):
a batch of decapsulated inner packets is walked in arrival order. A TCP
segment is a *candidate* when it is IPv4 without options (not a fragment) or
IPv6 with TCP as next header, carries data, its flags are exactly ACK or
ACK|PSH, and its TCP options are none or a timestamp alone. Each flow
(addresses and ports) has at most one open *run*. A candidate joins its flow's
run when the IP fields that survive merging agree (TOS, DF, TTL; IPv6's first
word and hop limit), the TCP fields agree (ACK number, window, data offset,
urgent pointer, options bytes), its sequence number is the next expected one,
the run's segments so far are all `gso_size` long and without PSH, it is not
longer than `gso_size`, and the total stays within 65535. Any other packet of
the flow closes the run, so a flow's packets keep their order; a run is output
at the position of its first segment.

A merged packet is the first segment's headers and every segment's payload,
with the IPv4 total length (and header checksum, RFC 1624 incremental update)
or the IPv6 payload length rewritten, PSH carried from the last segment, and a
complete TCP checksum. That checksum is derived without summing a payload byte:
a segment whose checksum is valid has payload sum = -(pseudo-header + TCP
header, checksum field included), so the merged sum is the merged headers'
sums plus those negatives (a payload at an odd offset counts multiplied by
256, a byte swap, RFC 1071 section 2(B)). A corrupt segment therefore makes
the merged checksum wrong, and the kernel drops the merged packet: detection
is kept, the cost is O(1) per segment. `verify=True` checks each segment's
full checksum first (a bad one is passed through alone), for tunnels whose
inner traffic is forwarded, where the kernel re-segments without verifying.

The vnet header (include/uapi/linux/virtio_net.h; tun.c's tun_get_user hands
it to virtio_net_hdr_to_skb): merged packets carry gso_type TCPV4/TCPV6,
gso_size (the MSS), hdr_len (IP + TCP headers) and flags 0. Flags 0 leaves the
skb CHECKSUM_NONE: the receiving TCP verifies the whole merged checksum, and a
forwarded packet is re-segmented with fresh checksums (tcp4_gso_segment).
VIRTIO_NET_HDR_F_NEEDS_CSUM (wireguard-go's choice) would make it
CHECKSUM_PARTIAL, "to be computed", so nobody verifies the payload;
VIRTIO_NET_HDR_F_DATA_VALID is not read on the TUN write path at all
(virtio_net_hdr_to_skb ignores it; only the virtio_net driver's receive path
turns it into CHECKSUM_UNNECESSARY), so it would be a promise without effect.
Unmerged packets carry an all-zero header (GSO_NONE). csum_start and
csum_offset are filled in for readers but unused by the kernel with flags 0.
The header's 16-bit fields are in the legacy virtio byte order, the host's
(tun_vnet_is_little_endian without TUNSETVNETLE/BE).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Iterable
from typing import NamedTuple

from .checksum import fold, ones_complement_sum

Buffer = bytes | bytearray | memoryview

# include/uapi/linux/virtio_net.h
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VNET_HDR_LEN = 10  # struct virtio_net_hdr
VNET_HDR_LEN_MRG = 12  # struct virtio_net_hdr_mrg_rxbuf: num_buffers follows, skipped on write

MAX_LENGTH = 0xFFFF  # IPv4 total length, IPv6 payload length
_MAX_PARTS = 1000  # buffers of one Item, the vnet header's iovec aside: under IOV_MAX (1024)
TCP_CSUM_OFFSET = 16  # offsetof(struct tcphdr, check)

_FIN, _SYN, _RST, _PSH, _ACK, _URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_TIMESTAMP_PREFIX = b"\x01\x01\x08\x0a"  # NOP, NOP, kind 8 length 10 (RFC 7323 appendix A layout)

_VNET = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
_V4_TCP = struct.Struct("!BBHHHBBH4s4sHHIIBBHHH")  # IPv4 without options, then the fixed TCP header
_V6_TCP = struct.Struct("!IHBB16s16sHHIIBBHHH")  # IPv6 fixed header, then the fixed TCP header
_U16 = struct.Struct("!H")


def vnet_header(
    gso_type: int = VIRTIO_NET_HDR_GSO_NONE,
    hdr_len: int = 0,
    gso_size: int = 0,
    csum_start: int = 0,
    csum_offset: int = 0,
    flags: int = 0,
    size: int = VNET_HDR_LEN,
) -> bytes:
    """A virtio_net_hdr of `size` bytes (10, or 12 with TUNSETVNETHDRSZ 12: the rest is zero)."""
    return _VNET.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) + bytes(size - VNET_HDR_LEN)


class Item(NamedTuple):
    """One write into the TUN device: `vnet` then the packet, which carries `segments` input packets.

    The packet is kept as `parts` in order (one buffer when nothing merged; else the rewritten IP and TCP
    headers, then each segment's payload, views of the input) for a gathering write, writev(2): the kernel
    copies the payloads once, into its buffer, and nothing here copies them before."""

    vnet: bytes
    parts: tuple[Buffer, ...]
    segments: int

    @property
    def packet(self) -> Buffer:
        """The packet as one buffer (joined from `parts` when it merged segments)."""
        return self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)

    @property
    def length(self) -> int:
        return sum(len(part) for part in self.parts)


class _Run:
    """Consecutive segments of one flow being merged (the first one's headers are kept)."""

    __slots__ = (
        "original",
        "segments",
        "v6",
        "ip_len",
        "hdr_len",
        "gso_size",
        "next_seq",
        "payload",
        "match",
        "psh",
        "acc",
        "length",
        "quick",
        "fields",
        "h_base",
    )

    def __init__(
        self, original: Buffer, packet: memoryview, v6: bool, ip_len: int, hdr_len: int, seq: int, size: int, h: int
    ) -> None:
        self.original = original  # returned as is if nothing joins it
        self.segments = [packet]
        self.v6 = v6
        self.ip_len = ip_len
        self.hdr_len = hdr_len
        self.gso_size = size
        self.next_seq = (seq + size) & 0xFFFFFFFF
        self.payload = size
        self.match: object = None
        self.psh = False
        # Pseudo-header + TCP header sums of the segments, by parity of the payload's offset.
        self.acc = [h, 0]
        # The quick test (`coalesce`): an IPv4 segment of the same length whose headers equal this one's but for
        # identification, checksums and sequence number joins without being parsed. -1: no quick test (IPv6).
        self.length = -1
        self.h_base = 0
        self.quick: Callable[[Buffer], tuple[object, ...]] = _no_quick
        self.fields: tuple[object, ...] = ()
        if not v6:
            self.length = len(packet)
            self.quick = _quick_struct(hdr_len).unpack_from
            self.fields = self.quick(packet)
            seq_, csum = _SEQ_CSUM.unpack_from(packet, 24)
            self.h_base = h - (seq_ >> 16) - (seq_ & 0xFFFF) - csum


_SEQ_CSUM = struct.Struct("!I8xH")  # from the TCP sequence number (IPv4 without options: offset 24) to the checksum


@functools.lru_cache(maxsize=64)
def _quick_struct(hdr_len: int) -> struct.Struct:
    """Unpacks the bytes of an IPv4 + TCP header (`hdr_len` bytes, at least 40) that must agree between the
    segments of one run: all but the IP identification (bytes 4-5) and checksum (10-11) and the TCP sequence
    number (24-27) and checksum (36-37). One unpack into five byte strings, compared as a tuple: about half
    the time of masking the header read as one integer."""
    return struct.Struct(f"4s2x4s2x12s4x8s2x{hdr_len - 38}s")


def _no_quick(packet: Buffer) -> tuple[object, ...]:
    raise AssertionError("an IPv6 run has no quick test")  # its `length` is -1: never called


def _address_sum(packet: memoryview, v6: bool) -> int:
    """One's-complement sum of the source and destination addresses plus the protocol (6)."""
    return ones_complement_sum(packet[8:40] if v6 else packet[12:20]) + 6


def coalesce(
    packets: Iterable[Buffer], vnet_size: int = VNET_HDR_LEN, verify: bool = False, quick: bool = True
) -> list[Item]:
    """Merge the batch's in-order TCP segments per flow; every packet comes out exactly once.

    `packets` are inner IP packets in arrival order. Each returned `Item` is
    written as `vnet` + `packet` into a TUN with IFF_VNET_HDR and a vnet header
    size of `vnet_size`. With `verify`, a segment joins a run only when its own
    TCP checksum is valid. `quick=False` turns the quick test off (tests prove it changes nothing).
    """
    none = vnet_header(size=vnet_size)
    out: list[Item | _Run] = []
    runs: dict[bytes, _Run] = {}
    # The open run the previous packet joined or opened (None when the previous packet went anywhere else). The
    # next full-sized segment of its flow, as a bulk transfer sends them, joins it on the quick test: the bytes
    # that must agree compared at once, only the sequence number and checksum read. It is exactly what the
    # full path below would do with that segment (a candidate, its flow's open run, fields that agree, the
    # next sequence number, no PSH, gso_size long); whatever fails the test takes the full path.
    last: _Run | None = None
    fast = quick and not verify
    items = packets if isinstance(packets, (list, tuple)) else list(packets)
    count = len(items)
    i = 0
    while i < count:
        raw = items[i]
        i += 1
        packet = raw if isinstance(raw, memoryview) else memoryview(raw)
        n = len(packet)
        if last is not None and n == last.length and fast:
            # The quick run: the run's state in locals while segment after segment joins it (a bulk
            # transfer's batch is mostly one such stretch), written back when one does not.
            hdr_len, quick_test, fields, h_base = last.hdr_len, last.quick, last.fields, last.h_base
            next_seq, payload, acc, segments = last.next_seq, last.payload, last.acc, last.segments
            size = n - hdr_len
            room = MAX_LENGTH - hdr_len - size  # the run's payload may be at most this before a segment joins
            odd = last.gso_size & 1  # an odd size puts every other segment's payload at an odd offset
            done = False  # the batch ended inside the run
            while True:
                if quick_test(packet) != fields:
                    break
                seq, csum = _SEQ_CSUM.unpack_from(packet, 24)
                if seq != next_seq or payload > room:
                    break
                acc[payload & 1 if odd else 0] += h_base + (seq >> 16) + (seq & 0xFFFF) + csum
                segments.append(packet)
                payload += size
                next_seq = (seq + size) & 0xFFFFFFFF
                if i == count:
                    done = True
                    break
                raw = items[i]
                i += 1
                packet = raw if isinstance(raw, memoryview) else memoryview(raw)
                if len(packet) != n:
                    break
            last.payload, last.next_seq = payload, next_seq
            if done:
                break
            n = len(packet)  # `packet` (from `raw`) did not join: the full path takes it
        last = None
        parsed = _candidate(packet, n)
        if parsed is None:
            out.append(Item(none, (raw,), 1))
            continue
        if isinstance(parsed, bytes):  # TCP of a known flow, but not mergeable: closes the flow's run
            runs.pop(parsed, None)
            out.append(Item(none, (raw,), 1))
            continue
        key, v6, ip_len, hdr_len, seq, flags, match = parsed
        size = n - hdr_len
        h = ones_complement_sum(packet[ip_len:hdr_len]) + (n - ip_len)
        if verify and fold(ones_complement_sum(packet[hdr_len:]) + h + _address_sum(packet, v6)) != 0xFFFF:
            runs.pop(key, None)
            out.append(Item(none, (raw,), 1))
            continue
        run = runs.get(key)
        if run is not None:
            # The merged IPv4 total length, or IPv6 payload length, must fit in 16 bits.
            length = hdr_len - ip_len * v6 + run.payload + size
            if seq == run.next_seq and match == run.match and size <= run.gso_size and length <= MAX_LENGTH:
                parity = (run.payload & 1) if run.gso_size & 1 else 0
                run.acc[parity] += h
                run.segments.append(packet)
                run.payload += size
                run.next_seq = (seq + size) & 0xFFFFFFFF
                if flags & _PSH or size < run.gso_size:
                    run.psh = bool(flags & _PSH)
                    del runs[key]
                else:
                    last = run
                continue
            del runs[key]
        run = _Run(raw, packet, v6, ip_len, hdr_len, seq, size, h)
        run.match = match
        out.append(run)
        if not flags & _PSH:
            runs[key] = run
            last = run
    return [item if isinstance(item, Item) else _finish(item, none, vnet_size) for item in out]


_Candidate = tuple[bytes, bool, int, int, int, int, object]


def _candidate(packet: memoryview, n: int) -> _Candidate | bytes | None:
    """(flow key, v6, IP header length, IP+TCP header length, seq, flags, fields that must agree)
    for a mergeable segment; the flow key alone for other TCP packets; None for the rest."""
    if n < 40:
        return None
    version = packet[0] >> 4
    if version == 4:
        if packet[0] != 0x45:
            # IP options (the kernel's inet_gro_receive also refuses them): a flow we do not key.
            return None
        _vihl, tos, total, _ident, frag, ttl, proto, _csum, _src, _dst, _sp, _dp, seq, ack, off, flags, win, _c, urg = (
            _V4_TCP.unpack_from(packet)
        )
        if proto != 6:
            return None
        key = bytes(packet[12:24])
        if total != n or frag & 0x3FFF:  # length lies, or a fragment (MF or an offset)
            return key
        ip_len = 20
        fields: tuple[int, ...] = (tos, frag, ttl, ack, off, win, urg)
    elif version == 6:
        if n < 60:
            return None
        word, plen, nexthdr, hop, _src6, _dst6, _sp, _dp, seq, ack, off, flags, win, _c, urg = _V6_TCP.unpack_from(
            packet
        )
        if nexthdr != 6:
            return None
        key = bytes(packet[8:44])
        if plen != n - 40:
            return key
        ip_len = 40
        fields = (word, hop, ack, off, win, urg)
    else:
        return None
    hdr_len = ip_len + (off >> 4) * 4
    if hdr_len < ip_len + 20 or hdr_len >= n or flags & ~_PSH != _ACK:
        # Malformed data offset, no payload, or a flag other than ACK and PSH (SYN, FIN, RST, URG, ECE, CWR).
        return key
    options = b""
    if hdr_len > ip_len + 20:
        options = bytes(packet[ip_len + 20 : hdr_len])
        if not (options.startswith(_TIMESTAMP_PREFIX) and len(options) == 12) and not _timestamp_only(options):
            return key
    return key, version == 6, ip_len, hdr_len, seq, flags, (fields, options)


def _timestamp_only(options: bytes) -> bool:
    """True when the TCP options are one timestamp (RFC 7323), NOPs and end-of-list padding."""
    i, n, seen = 0, len(options), False
    while i < n:
        kind = options[i]
        if kind == 0:
            return seen and not any(options[i:])
        if kind == 1:
            i += 1
        elif kind == 8 and not seen and i + 10 <= n and options[i + 1] == 10:
            seen = True
            i += 10
        else:
            return False
    return seen


def _finish(run: _Run, none: bytes, vnet_size: int) -> Item:
    """The run as one Item: unchanged if it holds one segment, else the merged packet and its GSO header."""
    first = run.segments[0]
    count = len(run.segments)
    if count == 1:
        return Item(none, (run.original,), 1)
    ip_len, hdr_len = run.ip_len, run.hdr_len
    ip = bytearray(first[:ip_len])
    tcp = bytearray(first[ip_len:hdr_len])
    tcp_length = hdr_len - ip_len + run.payload
    if run.v6:
        _U16.pack_into(ip, 4, tcp_length)
        gso_type = VIRTIO_NET_HDR_GSO_TCPV6
    else:
        total = ip_len + tcp_length
        old_total, old_csum = _U16.unpack_from(ip, 2)[0], _U16.unpack_from(ip, 10)[0]
        # RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')
        new_csum = ~fold((~old_csum & 0xFFFF) + (~old_total & 0xFFFF) + total) & 0xFFFF
        _U16.pack_into(ip, 2, total)
        _U16.pack_into(ip, 10, new_csum)
        gso_type = VIRTIO_NET_HDR_GSO_TCPV4
    if run.psh:
        tcp[13] |= _PSH
    tcp[16] = tcp[17] = 0
    addresses = _address_sum(first, run.v6)
    # Each segment's payload sum is -(its pseudo-header + TCP header); odd offsets count times 256.
    even = count if not run.gso_size & 1 else (count + 1) // 2
    odd = count - even
    payloads = -(run.acc[0] + even * addresses + 256 * (run.acc[1] + odd * addresses))
    total_sum = (addresses + tcp_length + ones_complement_sum(tcp) + payloads) % 0xFFFF
    _U16.pack_into(tcp, TCP_CSUM_OFFSET, ~(total_sum or 0xFFFF) & 0xFFFF)
    parts: tuple[Buffer, ...] = (ip, tcp, *[segment[hdr_len:] for segment in run.segments])
    if len(parts) >= _MAX_PARTS:  # tiny segments: more than writev takes (IOV_MAX, 1024), so one buffer
        parts = (b"".join(parts),)
    vnet = vnet_header(gso_type, hdr_len, run.gso_size, ip_len, TCP_CSUM_OFFSET, 0, vnet_size)
    return Item(vnet, parts, count)
