"""The same inner packets through the kernel's tunnel and through the running `usertunnel up`, compared on the wire.

Each inner packet is built once by scapy and written, byte for byte, into both
tunnel devices with a packet socket (AF_PACKET, SOCK_DGRAM): into our TUN
device in the host namespace, where the running usertunnel reads it, and into
the kernel's `kt0` in the guest (guest_agent's "inject"). Neither side's IP
stack touches the inner packet on the way (no routing, no TTL decrement, no
checksum or identification filled in), so the two tunnels get the same input
and what each puts on the underlay can be compared field by field.

Inner packets carry addresses nobody owns (INNER4, INNER6, outside both /30s)
so that no receiver answers them: every tunnel packet either side counts is
one the test wrote.

Fields two correct senders may set differently, and only those, are masked
before the comparison (`masked`):
  - the outer IPv4 identification: each sender's own counter (RFC 6864); the
    kernel's comes from a keyed hash of the destination (ip_select_ident);
  - the outer IPv4 header checksum, which covers the identification: it is
    verified on each packet first, then set to zero.
And the kernel's packet is mirrored to stand for ours (`mirrored`): its outer
source and destination swapped, and for a variant whose two sides send
different keys (ikey/okey) its GRE key replaced by ours, with its GRE checksum
(verified first) computed again over the new key. The GRE sequence number is
NOT masked: both sides count from 0 over the same packets in the same order.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import sys
import time
from collections.abc import Iterable
from typing import Any

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.packet import Packet

from usertunnel.io import netns

INNER4 = ("203.0.113.9", "203.0.113.10")
INNER6 = ("2001:db8:100::9", "2001:db8:100::10")
# Inner TOS bytes: Not-ECT; DSCP 40 with ECT(0); CE (the outer becomes ECT(0), RFC 6040 4.1); DSCP 46 with ECT(1).
TOS = (0x00, 0xA2, 0x03, 0xB9)
TTL = (1, 64, 255)
GAP = 0.003  # between packets written into a tunnel device: the guest's underlay queue never overflows

ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
GRE_C, GRE_K, GRE_S = 0x8000, 0x2000, 0x1000
PROTOCOL = {"gre": 47, "ipip": 4, "sit": 41}  # the outer IPv4 protocol of each mode


def inner_packets(mode: str, mtu: int) -> list[bytes]:
    """TCP, UDP and ICMP inner packets over every inner TOS, TTL and DF value above, two of exactly the tunnel's
    MTU (DF and not), and for GRE (which carries IPv6) the same over IPv6 with the traffic class and hop limit
    varied; for sit (IPv6 only) the IPv6 ones and one of exactly the MTU. Each packet is unique (its
    identification, flow label and payload carry its index)."""
    if mode == "sit":
        packets = _inner_packets6(0)
        index = len(packets) + 1
        head6 = IPv6(src=INNER6[0], dst=INNER6[1], tc=0xA2, hlim=64, fl=index)
        head6 /= TCP(sport=40000 + index, dport=5001, flags="PA", seq=index)
        packets.append(bytes(head6 / bytes(mtu - len(head6))))
        assert len(set(packets)) == len(packets)
        return packets
    packets: list[bytes] = []
    cases = itertools.product(("tcp", "udp", "icmp"), TOS, TTL, (True, False))
    for index, (kind, tos, ttl, df) in enumerate(cases, start=1):
        head = IP(src=INNER4[0], dst=INNER4[1], tos=tos, ttl=ttl, id=index, flags="DF" if df else 0)
        packets.append(bytes(head / _transport(kind, index, 4) / _payload(index)))
    for df in (True, False):
        index = len(packets) + 1
        head = IP(src=INNER4[0], dst=INNER4[1], tos=0xA2, ttl=64, id=index, flags="DF" if df else 0)
        head /= TCP(sport=40000 + index, dport=5001, flags="PA", seq=index)
        packets.append(bytes(head / bytes(mtu - len(head))))
    if mode == "gre":
        packets += _inner_packets6(len(packets))
    assert len(set(packets)) == len(packets)
    return packets


def _inner_packets6(before: int) -> list[bytes]:
    """TCP, UDP and ICMPv6 over every traffic class and hop limit of the sets above, numbered after `before`."""
    packets: list[bytes] = []
    for kind, tos, ttl in itertools.product(("tcp", "udp", "icmp"), TOS, TTL):
        index = before + len(packets) + 1
        head6 = IPv6(src=INNER6[0], dst=INNER6[1], tc=tos, hlim=ttl, fl=index)
        packets.append(bytes(head6 / _transport(kind, index, 6) / _payload(index)))
    return packets


def _transport(kind: str, index: int, version: int) -> Packet:
    if kind == "tcp":
        return TCP(sport=40000 + index, dport=5001, flags="PA", seq=index)
    if kind == "udp":
        return UDP(sport=40000 + index, dport=5002)
    return ICMP(id=0x5575, seq=index) if version == 4 else ICMPv6EchoRequest(id=0x5575, seq=index)


def _payload(index: int) -> bytes:
    return f"usertunnel same-inner {index:04d} ".encode() * (1 + index % 5)


def describe(inner: bytes) -> str:
    """One line naming an inner packet: its scapy summary with the TOS/traffic class, TTL/hop limit and DF."""
    if inner[0] >> 4 == 6:
        v6 = IPv6(inner)
        return f"{v6.summary()} tc={v6.tc:#04x} hlim={v6.hlim}"
    v4 = IP(inner)
    return f"{v4.summary()} tos={v4.tos:#04x} ttl={v4.ttl} df={int('DF' in v4.flags)} len={len(inner)}"


# --- writing them into each tunnel --------------------------------------------------------------------------


def ethertype(packet: bytes) -> int:
    return ETH_P_IPV6 if packet[0] >> 4 == 6 else ETH_P_IP


def inject(namespace: str, ifname: str, packets: Iterable[bytes]) -> None:
    """Write each packet into device `ifname` of `namespace` (for our TUN device: usertunnel reads it)."""
    with netns.open_socket(namespace, socket.AF_PACKET, socket.SOCK_DGRAM) as sock:
        for packet in packets:
            sock.sendto(packet, (ifname, ethertype(packet)))
            time.sleep(GAP)


def inject_both(kernel: Any, packets: list[bytes], namespace: str, underlay: str) -> netns.Capture:
    """The same inner packets written into our ut0 and the kernel's kt0, and what the underlay device
    `underlay` of `namespace` carried meanwhile (the capture, stopped once one tunnel packet for each
    came each way, and a moment more: a second one for any inner packet would show up then)."""
    capture = netns.Capture(namespace, underlay)
    try:
        inject(namespace, "ut0", packets)
        kernel.inject("kt0", packets, gap=GAP)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and min(len(capture.incoming), len(capture.outgoing)) < len(packets):
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        capture.stop()
    return capture


# --- reading tunnel packets ----------------------------------------------------------------------------------


def tunnel_packets(packets: Iterable[bytes], mode: str, source: str) -> list[bytes]:
    """The IPv4 tunnel packets of `mode` (GRE, IPIP or SIT) from `source` among captured packets, in order."""
    proto = PROTOCOL[mode]
    src = socket.inet_aton(source)
    return [p for p in packets if p[0] >> 4 == 4 and p[9] == proto and p[12:16] == src]


def assert_one_each(sent: list[bytes], packets: list[bytes], who: str) -> None:
    """`sent` carries `packets`, one tunnel packet each, in order."""
    inners = [inner_of(p) for p in sent]
    if inners != packets:
        missing = sum(p not in inners for p in packets)
        raise AssertionError(
            f"{who} put {len(sent)} tunnel packets on the wire for {len(packets)} inner packets"
            f" ({missing} of these carried by none), or in another order"
        )


def _gre_flags(packet: bytes) -> int:
    flags: int = struct.unpack_from("!H", packet, (packet[0] & 0x0F) * 4)[0]
    return flags


def header_length(packet: bytes) -> int:
    """The outer IPv4 header, and the GRE header whose flags follow it (RFC 2784, RFC 2890)."""
    ihl = (packet[0] & 0x0F) * 4
    if packet[9] != 47:
        return ihl
    flags = _gre_flags(packet)
    return ihl + 4 + 4 * sum(bool(flags & bit) for bit in (GRE_C, GRE_K, GRE_S))


def inner_of(packet: bytes) -> bytes:
    return packet[header_length(packet) :]


def ones_sum(data: bytes) -> int:
    """The 16-bit ones' complement sum of RFC 1071 (this harness's own: it judges our core's)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def unwrapped(packet: bytes, protocol: int, encap_length: int) -> bytes:
    """A FOU or GUE packet as its tunnel sends it without UDP: the `encap_length` bytes after the outer IPv4
    header (UDP, and GUE's header) removed, the outer protocol set to `protocol` (what they carried), the total
    length and header checksum computed again. AssertionError if the packet's own header checksum, or its UDP
    checksum where it has one (RFC 768: zero means none), is wrong."""
    ihl = (packet[0] & 0x0F) * 4
    assert packet[9] == 17, f"not UDP: protocol {packet[9]}"
    assert ones_sum(packet[:ihl]) == 0xFFFF, f"outer header checksum wrong: {packet[:ihl].hex()}"
    udp = packet[ihl:]
    if udp[6:8] != b"\0\0":
        pseudo = packet[12:20] + struct.pack("!BBH", 0, 17, len(udp))
        assert ones_sum(pseudo + udp) == 0xFFFF, f"UDP checksum wrong: {udp[:8].hex()}"
    out = bytearray(packet[:ihl] + packet[ihl + encap_length :])
    out[2:4] = len(out).to_bytes(2, "big")
    out[9] = protocol
    out[10:12] = b"\0\0"
    out[10:12] = (~ones_sum(bytes(out[:ihl])) & 0xFFFF).to_bytes(2, "big")
    return bytes(out)


def _gre_checksum_ok(packet: bytes) -> bool:
    return ones_sum(packet[(packet[0] & 0x0F) * 4 :]) == 0xFFFF


def masked(packet: bytes) -> bytes:
    """`packet` with its outer identification and header checksum zero; AssertionError if either checksum it
    carries (outer IPv4 header, GRE) is wrong."""
    ihl = (packet[0] & 0x0F) * 4
    assert ones_sum(packet[:ihl]) == 0xFFFF, f"outer header checksum wrong: {packet[:ihl].hex()}"
    if packet[9] == 47 and _gre_flags(packet) & GRE_C:
        assert _gre_checksum_ok(packet), f"GRE checksum wrong: {packet[: header_length(packet)].hex()}"
    out = bytearray(packet)
    out[4:6] = out[10:12] = b"\0\0"
    return bytes(out)


def mirrored(packet: bytes, okey: int | None) -> bytes:
    """The kernel's packet as ours would be: outer addresses swapped; with `okey`, its GRE key replaced by it and
    its GRE checksum (checked first) computed again."""
    out = bytearray(packet)
    out[12:16], out[16:20] = packet[16:20], packet[12:16]
    if okey is None or packet[9] != 47:
        return bytes(out)
    ihl = (packet[0] & 0x0F) * 4
    flags = _gre_flags(packet)
    assert flags & GRE_K, "the kernel's packet has no key to replace"
    at = ihl + 4 + (4 if flags & GRE_C else 0)
    out[at : at + 4] = okey.to_bytes(4, "big")
    if flags & GRE_C:
        assert _gre_checksum_ok(packet), "the kernel's GRE checksum is wrong"
        out[ihl + 4 : ihl + 6] = b"\0\0"
        out[ihl + 4 : ihl + 6] = (~ones_sum(bytes(out[ihl:])) & 0xFFFF).to_bytes(2, "big")
    return bytes(out)


OUTER_FIELDS = [
    ("version/ihl", 0, 1),
    ("tos", 1, 2),
    ("total length", 2, 4),
    ("flags/fragment offset", 6, 8),
    ("ttl", 8, 9),
    ("protocol", 9, 10),
    ("source", 12, 16),
    ("destination", 16, 20),
]


def differences(ours: bytes, theirs: bytes) -> list[str]:
    """The named fields in which two (masked) tunnel packets differ, each with both values."""
    found = [
        f"{name}: ours {ours[a:b].hex()} kernel's {theirs[a:b].hex()}"
        for name, a, b in OUTER_FIELDS
        if ours[a:b] != theirs[a:b]
    ]
    ours_head, theirs_head = ours[20 : header_length(ours)], theirs[20 : header_length(theirs)]
    if ours_head != theirs_head:
        found.append(f"GRE header: ours {ours_head.hex()} kernel's {theirs_head.hex()}")
    if inner_of(ours) != inner_of(theirs):
        found.append("inner packet")
    return found or ["(other bytes)"]


# --- IPv6 outer headers and Ethernet frames (test_kernel_ipv6, test_kernel_gretap) ----------------------------
#
# The functions above read IPv4 tunnel packets; these read both outer families (IPv6: ipip6, ip6ip6, ip6gre)
# and the frames of gretap. Over IPv6 nothing is masked: there is no identification and no header checksum,
# and the IPv6 cells fix the flow label on both sides (Linux's automatic one is a hash keyed with a per-boot
# secret; README). The GRE checksum, where there is one, is verified.

PROTOCOL6 = {"ipip6": 4, "ip6ip6": 41, "ip6gre": 47, "ip6gretap": 47}  # the upper-layer protocol of each mode
EXTENSION_HEADERS = (0, 43, 60)  # hop-by-hop, routing, destination options (RFC 8200 4.1): stepped over
CARRIES_LIKE = {"ipip6": "ipip", "ip6ip6": "sit", "ip6gre": "gre", "gretap": "gre"}  # the inner families
MAC = ("02:00:5e:00:53:09", "02:00:5e:00:53:0a")  # inner frames' source and destination: nobody's


def inner_packets_of(mode: str, mtu: int) -> list[bytes]:
    """`inner_packets` for any mode: an IPv6-outer mode carries what its IPv4-outer counterpart carries
    (ipip6 IPv4, ip6ip6 IPv6, ip6gre both)."""
    return inner_packets(CARRIES_LIKE.get(mode, mode), mtu)


def inner_frames(mtu: int) -> list[bytes]:
    """Ethernet frames for gretap: each of GRE's inner packets (`mtu`: the device's, so the largest frames are
    mtu + 14 bytes) between two addresses nobody has, and an ARP request (a frame that is not IP)."""
    from scapy.layers.l2 import ARP, Ether

    frames = [bytes(Ether(src=MAC[0], dst=MAC[1], type=ethertype(p)) / p) for p in inner_packets("gre", mtu)]
    frames.append(bytes(Ether(src=MAC[0], dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=MAC[0], psrc=INNER4[0], pdst=INNER4[1])))
    return frames


def upper_layer6(packet: bytes) -> tuple[int, int]:
    """(offset, protocol) of an IPv6 packet's upper layer, past its extension headers (RFC 8200 4.1)."""
    offset, protocol = 40, packet[6]
    while protocol in EXTENSION_HEADERS:
        protocol, offset = packet[offset], offset + (packet[offset + 1] + 1) * 8
    return offset, protocol


def outer_length(packet: bytes) -> int:
    """The outer IP header: IPv4's IHL, or IPv6's 40 bytes and its extension headers."""
    return upper_layer6(packet)[0] if packet[0] >> 4 == 6 else (packet[0] & 0x0F) * 4


def _gre_at(packet: bytes) -> int | None:
    """Where the GRE header of a tunnel packet starts, or None if it carries no GRE."""
    if packet[0] >> 4 == 6:
        offset, protocol = upper_layer6(packet)
        return offset if protocol == 47 else None
    return (packet[0] & 0x0F) * 4 if packet[9] == 47 else None


def head_length(packet: bytes) -> int:
    """The outer IP header (either family) and the GRE header whose flags follow it (RFC 2784, RFC 2890)."""
    at = _gre_at(packet)
    if at is None:
        return outer_length(packet)
    flags = struct.unpack_from("!H", packet, at)[0]
    return at + 4 + 4 * sum(bool(flags & bit) for bit in (GRE_C, GRE_K, GRE_S))


def inner_of_any(packet: bytes) -> bytes:
    """The inner packet (or frame) of a tunnel packet of either outer family."""
    return packet[head_length(packet) :]


def tunnel_packets_of(packets: Iterable[bytes], mode: str, source: str) -> list[bytes]:
    """The tunnel packets of `mode` (any mode, either outer family) from `source` among captured packets, in
    order; gretap's are GRE packets of type 0x6558 (Transparent Ethernet Bridging)."""
    if ":" not in source:
        found = tunnel_packets(packets, "gre" if mode == "gretap" else mode, source)
        if mode == "gretap":
            found = [p for p in found if p[(p[0] & 0x0F) * 4 + 2 : (p[0] & 0x0F) * 4 + 4] == b"\x65\x58"]
        return found
    src = socket.inet_pton(socket.AF_INET6, source)
    return [p for p in packets if p[0] >> 4 == 6 and p[8:24] == src and upper_layer6(p)[1] == PROTOCOL6[mode]]


def assert_one_each_of(sent: list[bytes], packets: list[bytes], who: str) -> None:
    """`assert_one_each` for tunnel packets of either outer family."""
    inners = [inner_of_any(p) for p in sent]
    if inners != packets:
        missing = sum(p not in inners for p in packets)
        raise AssertionError(
            f"{who} put {len(sent)} tunnel packets on the wire for {len(packets)} inner packets"
            f" ({missing} of these carried by none), or in another order"
        )


def masked_any(packet: bytes) -> bytes:
    """`masked` for either outer family: over IPv6 nothing is masked; the GRE checksum is verified (over the GRE
    header and its payload, RFC 2784 2.5), AssertionError if it is wrong."""
    if packet[0] >> 4 == 4:
        return masked(packet)
    at = _gre_at(packet)
    if at is not None and struct.unpack_from("!H", packet, at)[0] & GRE_C:
        assert ones_sum(packet[at:]) == 0xFFFF, f"GRE checksum wrong: {packet[at : head_length(packet)].hex()}"
    return packet


def mirrored_any(packet: bytes, okey: int | None) -> bytes:
    """`mirrored` for either outer family: outer addresses swapped; with `okey`, the GRE key replaced by it and
    the GRE checksum (checked first) computed again."""
    if packet[0] >> 4 == 4:
        return mirrored(packet, okey)
    out = bytearray(packet)
    out[8:24], out[24:40] = packet[24:40], packet[8:24]
    at = _gre_at(packet)
    if okey is None or at is None:
        return bytes(out)
    flags = struct.unpack_from("!H", packet, at)[0]
    assert flags & GRE_K, "the kernel's packet has no key to replace"
    key_at = at + 4 + (4 if flags & GRE_C else 0)
    out[key_at : key_at + 4] = okey.to_bytes(4, "big")
    if flags & GRE_C:
        assert ones_sum(packet[at:]) == 0xFFFF, "the kernel's GRE checksum is wrong"
        out[at + 4 : at + 6] = b"\0\0"
        out[at + 4 : at + 6] = (~ones_sum(bytes(out[at:])) & 0xFFFF).to_bytes(2, "big")
    return bytes(out)


OUTER_FIELDS6 = [
    ("version/traffic class/flow label", 0, 4),
    ("payload length", 4, 6),
    ("next header", 6, 7),
    ("hop limit", 7, 8),
    ("source", 8, 24),
    ("destination", 24, 40),
]


def differences_any(ours: bytes, theirs: bytes) -> list[str]:
    """`differences` for either outer family: the named fields in which two (masked) tunnel packets differ."""
    if ours[0] >> 4 == 4 and theirs[0] >> 4 == 4:
        return differences(ours, theirs)
    found = [
        f"{name}: ours {ours[a:b].hex()} kernel's {theirs[a:b].hex()}"
        for name, a, b in OUTER_FIELDS6
        if ours[a:b] != theirs[a:b]
    ]
    ours_head, theirs_head = ours[40 : head_length(ours)], theirs[40 : head_length(theirs)]
    if ours_head != theirs_head:
        found.append(f"extension and GRE headers: ours {ours_head.hex()} kernel's {theirs_head.hex()}")
    if inner_of_any(ours) != inner_of_any(theirs):
        found.append("inner packet")
    return found or ["(other bytes)"]


def describe_any(inner: bytes) -> str:
    """`describe` for an inner packet or (gretap) Ethernet frame (whose first byte, a MAC address's, is no IP
    version here: MAC's and the broadcast address)."""
    if inner[0] >> 4 in (4, 6):
        return describe(inner)
    from scapy.layers.l2 import Ether

    frame = Ether(inner)
    if frame.type in (ETH_P_IP, ETH_P_IPV6):
        return f"{frame.src} > {frame.dst} {describe(inner[14:])}"
    return str(frame.summary())


# --- writing them into each tunnel, either outer family, packets or frames -------------------------------------


def inject_frames(namespace: str, ifname: str, frames: Iterable[bytes]) -> None:
    """Write each Ethernet frame, its own header and all, into device `ifname` of `namespace` (a packet socket
    of type SOCK_RAW: for our TAP device, usertunnel reads it)."""
    with netns.open_socket(namespace, socket.AF_PACKET, socket.SOCK_RAW) as sock:
        for frame in frames:
            sock.sendto(frame, (ifname, int.from_bytes(frame[12:14], "big")))
            time.sleep(GAP)


# Run by the guest's Python: one packet or frame per input line, its protocol the IP version's (argv[3] "ip") or
# the frame's EtherType ("eth").
_GUEST_RAW = (
    "import socket,sys,time\n"
    "s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\n"
    "n=0\n"
    "for line in sys.stdin.read().split():\n"
    " f=bytes.fromhex(line)\n"
    ' p=(0x86DD if f[0]>>4==6 else 0x800) if sys.argv[3]=="ip" else int.from_bytes(f[12:14],"big")\n'
    " s.sendto(f,(sys.argv[1],p))\n"
    " n+=1\n"
    " time.sleep(float(sys.argv[2]))\n"
    "print(n)\n"
)


def inject_raw_into_kernel(kernel: Any, ifname: str, packets: list[bytes], frames: bool) -> None:
    """Write each IP packet (or, with `frames`, Ethernet frame) as it is into the guest's device `ifname`: a
    SOCK_RAW packet socket in the guest's Python, the packets given on its standard input. guest_agent's
    "inject" writes with SOCK_DGRAM, which Linux refuses (EINVAL) for a device whose hardware address is longer
    than a sockaddr_ll holds: ip6_tunnel's and ip6_gre's (16 bytes, their IPv6 address)."""
    python = os.path.realpath(sys.executable)
    hexed = "\n".join(p.hex() for p in packets)
    kind = "eth" if frames else "ip"
    command = f"{python} -I -S -c '{_GUEST_RAW}' {ifname} {GAP} {kind} <<'HEX'\n{hexed}\nHEX"
    sent = kernel.check(command, timeout=60)
    assert int(sent) == len(packets), f"the guest wrote {sent.strip()} of {len(packets)} packets into {ifname}"


def inject_both_of(
    kernel: Any, packets: list[bytes], namespace: str, underlay: str, mode: str, sources: tuple[str, str]
) -> netns.Capture:
    """`inject_both` for any mode: the same inner packets (gretap: Ethernet frames) written into our ut0 and
    the kernel's kt0, and what the underlay carried meanwhile, IPv6 too (stopped once one tunnel packet of
    `mode` for each came from each of `sources`, ours and the kernel's outer address, and a moment more)."""
    capture = netns.Capture(namespace, underlay, ipv6=True)
    try:
        if mode == "gretap":
            inject_frames(namespace, "ut0", packets)
        else:
            inject(namespace, "ut0", packets)
        if mode == "gretap" or ":" in sources[1]:
            inject_raw_into_kernel(kernel, "kt0", packets, frames=mode == "gretap")
        else:
            kernel.inject("kt0", packets, gap=GAP)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            ours = tunnel_packets_of(capture.outgoing, mode, sources[0])
            theirs = tunnel_packets_of(capture.incoming, mode, sources[1])
            if min(len(ours), len(theirs)) >= len(packets):
                break
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        capture.stop()
    return capture
