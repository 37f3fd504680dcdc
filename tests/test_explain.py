"""`usertunnel explain`: every field agrees with scapy and with tshark; malformed and truncated packets are
explained (where parsing stopped, and why), never raised; the command line reads hex, stdin and captures, and
refuses unusable input in one line with exit status 2."""

from __future__ import annotations

import argparse
import io
import ipaddress
import itertools
import json
import os
import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.contrib.erspan import ERSPAN_II, ERSPAN_III, ERSPAN_PlatformSpecific
from scapy.fields import BitField, ByteField, StrLenField, XShortField
from scapy.layers.inet import GRE, ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt, PadN
from scapy.layers.l2 import GRE_PPTP, CookedLinux, CookedLinuxV2, Dot1Q, Ether
from scapy.layers.ppp import PPP
from scapy.packet import Packet, Raw
from scapy.utils import PcapNgWriter, wrpcap

from usertunnel.core.checksum import internet_checksum
from usertunnel.core.encap import Tunnel
from usertunnel.core.params import Mode, TunnelParams
from usertunnel.teach import describe, explain
from usertunnel.teach.describe import Explanation, Layer

SETTINGS = settings(max_examples=300, deadline=None)
A, B = "198.51.100.1", "198.51.100.2"
INNER_A, INNER_B = "203.0.113.1", "203.0.113.2"
A6, B6 = "2001:db8::1", "2001:db8::2"


# --- the packets: built by scapy, every tunnel and inner protocol explain knows ------------------------------


def _inner(kind: str) -> Packet:
    ip = IP(src=INNER_A, dst=INNER_B, ttl=63, id=0x1C46, flags="DF", tos=0x2A)
    return {
        "icmp": ip / ICMP(type=8, id=7, seq=1) / b"ping",
        "tcp": ip / TCP(sport=40000, dport=443, seq=123456789, ack=987654321, flags="PA", window=501) / b"GET /",
        "tcp-options": ip / TCP(sport=5201, dport=40001, flags="S", options=[("MSS", 1460), ("WScale", 7)]),
        "udp": ip / UDP(sport=40000, dport=53) / b"\x12\x34query",
    }[kind]


def _packets() -> dict[str, Packet]:
    out: dict[str, Packet] = {}
    for c, k, s in itertools.product([0, 1], repeat=3):
        outer = IP(src=A, dst=B, flags="DF", ttl=64, id=0, tos=0x02)
        out[f"gre-c{c}k{k}s{s}"] = (
            outer
            / GRE(chksum_present=c, key_present=k, seqnum_present=s, key=1234, sequence_number=0xFFFFFFFE)
            / _inner("icmp")
        )
    for kind in ("tcp", "tcp-options", "udp"):
        out[f"gre-key-{kind}"] = IP(src=A, dst=B) / GRE(key_present=1, key=0xC0A80001) / _inner(kind)
    out["gre-ipv6-inner"] = (
        IP(src=A, dst=B)
        / GRE(proto=0x86DD, chksum_present=1)
        / IPv6(src=A6, dst=B6, tc=0xB9, fl=0x12345, hlim=9)
        / ICMPv6EchoRequest(id=3, seq=4, data=b"hello")
    )
    out["ipip-icmp"] = IP(src=A, dst=B, tos=0x03) / _inner("icmp")
    out["ipip-tcp"] = IP(src=A, dst=B) / _inner("tcp")
    out["sit-udp"] = IP(src=A, dst=B) / IPv6(src="2002:c633:6401::1", dst=B6) / UDP(sport=5353, dport=5353) / b"mdns"
    out["sit-icmpv6"] = IP(src=A, dst=B) / IPv6(src=A6, dst=B6) / ICMPv6EchoReply(id=9, seq=10)
    out["ipv6-gre"] = (
        IPv6(src=A6, dst=B6, tc=0x03, fl=7)
        / GRE(key_present=1, seqnum_present=1, key=42, sequence_number=5)
        / _inner("udp")
    )
    out["ipv6-gre-csum-ipv6"] = IPv6(src=A6, dst=B6) / GRE(proto=0x86DD, chksum_present=1) / IPv6() / UDP() / b"x"
    out["ipv6-ipip"] = IPv6(src=A6, dst=B6, nh=4) / _inner("tcp")
    out["ipv6-in-ipv6"] = IPv6(src=A6, dst=B6) / IPv6(src="fd00::1", dst="fd00::2") / ICMPv6EchoRequest()
    out["plain-udp"] = IP(src=INNER_A, dst=INNER_B) / UDP(sport=123, dport=123) / b"ntp"
    return out


PACKETS = _packets()
WIRE = {name: bytes(p) for name, p in PACKETS.items()}
EXAMPLE = bytes.fromhex("".join(explain.EXAMPLE_HEX))


def _nhrp(kind: int, flags: int, cies: list[tuple[str, str]], extensions: list[tuple[int, bytes]] | None) -> bytes:
    """An NHRP packet (RFC 2332 5) over IPv4, with its checksum: a mandatory part for `kind` (flags, request ID,
    the addresses), a client information entry per (NBMA, protocol) address pair, then `extensions`."""
    src_nbma, src_proto, dst_proto = (ipaddress.IPv4Address(a).packed for a in (A, INNER_A, INNER_B))
    # An error indication has an error code and offset where the others have flags and a request ID.
    head = struct.pack("!BBHHH", 4, 4, 0, 6, 20) if kind == 7 else struct.pack("!BBHI", 4, 4, flags, 0x1234)
    body = head + src_nbma + src_proto + dst_proto
    for nbma, proto in cies:
        body += struct.pack("!BBHHHBBBB", 0, 32, 0, 1400, 7200, 4, 0, 4, 0)
        body += ipaddress.IPv4Address(nbma).packed + ipaddress.IPv4Address(proto).packed
    if kind == 7:  # ... and ends with the packet in error
        body += _nhrp(1, 0, [], None)
    extoff = 0
    if extensions is not None:
        extoff = 20 + len(body)
        for ext, value in [*extensions, (0x8000, b"")]:
            body += struct.pack("!HH", ext, len(value)) + value
    fixed = struct.pack("!HH5sBHHHBBBB", 1, 0x0800, bytes(5), 255, 20 + len(body), 0, extoff, 1, kind, 4, 0)
    packet = fixed + body
    return packet[:12] + internet_checksum(packet).to_bytes(2, "big") + packet[14:]


def _more_packets() -> dict[str, Packet]:
    frame = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / _inner("icmp")
    outer = IP(src=A, dst=B)
    ppp_ip = _inner("icmp")
    return {
        "erspan-i": outer / GRE(proto=0x88BE) / frame,
        "erspan-ii": outer
        / GRE(proto=0x88BE, seqnum_present=1, sequence_number=7)
        / ERSPAN_II(vlan=100, cos=5, en=3, t=1, session_id=513, index=0x12345)
        / frame,
        "erspan-iii": outer
        / GRE(proto=0x22EB, seqnum_present=1, sequence_number=8)
        / ERSPAN_III(
            vlan=100, cos=3, bso=2, session_id=77, timestamp=0xDEADBEEF, sgt_other=0x1234, p=1, hw=9, d=1, gra=1
        )
        / frame,
        "erspan-iii-platform": outer
        / GRE(proto=0x22EB, seqnum_present=1, sequence_number=9)
        / ERSPAN_III(vlan=5, session_id=1023, timestamp=1, gra=3, o=1)
        / ERSPAN_PlatformSpecific(platf_id=3, info1=0x12345, info2=0xABCDEF)
        / frame,
        "pptp": outer
        / GRE_PPTP(seqnum_present=1, acknum_present=1, call_id=0x4242, sequence_number=5, ack_number=4)
        / b"\xff\x03"
        / PPP(proto=0x21)
        / ppp_ip,
        "pptp-compressed": outer / GRE_PPTP(seqnum_present=1, call_id=7, sequence_number=6) / b"\x21" / ppp_ip,
        "pptp-ack-only": outer / GRE_PPTP(acknum_present=1, call_id=7, payload_len=0, ack_number=9),
        "nhrp-registration": outer
        / GRE(proto=0x2001)
        / _nhrp(3, 0x8000, [(A, INNER_A)], [(0x8003, b""), (0x8004, b""), (0x8005, b"")]),
        "nhrp-resolution-with-key": IP(src=A, dst=B)
        / GRE(proto=0x2001, key_present=1, key=1234)
        / _nhrp(1, 0xC000, [], [(0x8003, b"")]),
        "nhrp-resolution-reply": outer / GRE(proto=0x2001) / _nhrp(2, 0xD000, [(B, INNER_B)], None),
        "nhrp-purge": outer / GRE(proto=0x2001) / _nhrp(5, 0x8000, [(B, INNER_B)], None),
        "nhrp-error": outer / GRE(proto=0x2001) / _nhrp(7, 0, [], None),
        "wccp-redirect": outer / GRE(proto=0x883E) / bytes([0x03, 0x5A, 0x12, 0x34]) / _inner("tcp"),
        "wccp-v1": outer / GRE(proto=0x883E) / _inner("udp"),
    }


MORE_WIRE = {name: bytes(p) for name, p in _more_packets().items()}


def _scapy(wire: bytes) -> Packet:
    return IPv6(wire) if wire[0] >> 4 == 6 else IP(wire)


# --- (a) every field equals scapy's dissection of the same bytes ----------------------------------------------

Getter = Callable[[Any], Any]


def _attr(name: str) -> Getter:
    return lambda layer: getattr(layer, name)


SCAPY_FIELDS: dict[str, dict[str, Getter]] = {
    "IPv4": {
        "version": _attr("version"),
        "IHL": _attr("ihl"),
        "DSCP": lambda p: p.tos >> 2,
        "ECN": lambda p: p.tos & 3,
        "total length": _attr("len"),
        "identification": _attr("id"),
        "flags": lambda p: int(p.flags),
        "fragment offset": _attr("frag"),
        "TTL": _attr("ttl"),
        "protocol": _attr("proto"),
        "header checksum": _attr("chksum"),
        "source address": _attr("src"),
        "destination address": _attr("dst"),
    },
    "IPv6": {
        "version": _attr("version"),
        "DSCP": lambda p: p.tc >> 2,
        "ECN": lambda p: p.tc & 3,
        "flow label": _attr("fl"),
        "payload length": _attr("plen"),
        "next header": _attr("nh"),
        "hop limit": _attr("hlim"),
        "source address": _attr("src"),
        "destination address": _attr("dst"),
    },
    "GRE": {
        "C": _attr("chksum_present"),
        "R": _attr("routing_present"),
        "K": _attr("key_present"),
        "S": _attr("seqnum_present"),
        "s": _attr("strict_route_source"),
        "Recur": _attr("recursion_control"),
        "Flags": _attr("flags"),
        "Ver": _attr("version"),
        "protocol type": _attr("proto"),
        "checksum": _attr("chksum"),
        "reserved1": _attr("offset"),
        "key": _attr("key"),
        "sequence number": _attr("sequence_number"),
    },
    "ICMP": {
        "type": _attr("type"),
        "code": _attr("code"),
        "checksum": _attr("chksum"),
        "identifier": _attr("id"),
        "sequence number": _attr("seq"),
        "next-hop MTU": _attr("nexthopmtu"),
    },
    "ICMPv6": {
        "type": _attr("type"),
        "code": _attr("code"),
        "checksum": _attr("cksum"),
        "identifier": _attr("id"),
        "sequence number": _attr("seq"),
    },
    "TCP": {
        "source port": _attr("sport"),
        "destination port": _attr("dport"),
        "sequence number": _attr("seq"),
        "acknowledgment number": _attr("ack"),
        "data offset": _attr("dataofs"),
        "reserved": lambda p: (p.reserved << 1) | (int(p.flags) >> 8),  # scapy puts bit 7 (AE/NS) in flags
        "flags": lambda p: int(p.flags) & 0xFF,
        "window": _attr("window"),
        "checksum": _attr("chksum"),
        "urgent pointer": _attr("urgptr"),
        "options": lambda p: bytes(p)[20 : p.dataofs * 4].hex(),
    },
    "UDP": {
        "source port": _attr("sport"),
        "destination port": _attr("dport"),
        "length": _attr("len"),
        "checksum": _attr("chksum"),
    },
    "Ethernet": {"destination MAC": _attr("dst"), "source MAC": _attr("src"), "EtherType": _attr("type")},
    "VLAN": {"PCP": _attr("prio"), "DEI": _attr("dei"), "VID": _attr("vlan"), "EtherType": _attr("type")},
}
# Fields explain reports that scapy has no field for: derived verdicts, and bytes scapy keeps as payload.
NOT_IN_SCAPY = {"ECN after decapsulation", "data", "unused", "rest of header", "trailing bytes", "payload"}
SCAPY_KIND = {
    "IP": "IPv4",
    "IPv6": "IPv6",
    "GRE": "GRE",
    "ICMP": "ICMP",
    "ICMPv6EchoRequest": "ICMPv6",
    "ICMPv6EchoReply": "ICMPv6",
    "TCP": "TCP",
    "UDP": "UDP",
    "Ether": "Ethernet",
    "Dot1Q": "VLAN",
    "IPv6ExtHdrDestOpt": "IPv6 extension",
}


def _scapy_layers(packet: Packet) -> list[Packet]:
    layers = []
    layer = packet
    while layer and not isinstance(layer, Raw):
        if type(layer).__name__ != "Padding":
            layers.append(layer)
        layer = layer.payload
    return layers


def _headers(e: Explanation) -> list[Layer]:
    return [layer for layer in e.layers if layer.kind not in ("payload", "trailer")]


def assert_agrees_with_scapy(e: Explanation, dissected: Packet) -> int:
    """Every field explain reports equals scapy's; returns how many fields were compared."""
    ours = _headers(e)
    theirs = _scapy_layers(dissected)
    assert [layer.kind for layer in ours] == [SCAPY_KIND.get(type(t).__name__, "?") for t in theirs]
    compared = 0
    for layer, scapy_layer in zip(ours, theirs, strict=True):
        getters = SCAPY_FIELDS.get(layer.kind, {})
        for f in layer.fields:
            if f.name in NOT_IN_SCAPY or layer.kind == "IPv6 extension":
                continue
            assert f.name in getters, f"{layer.title}: no scapy counterpart for {f.name!r}"
            expected = getters[f.name](scapy_layer)
            assert f.value == expected, f"{layer.title} {f.name} at offset {f.offset}: {f.value!r} != {expected!r}"
            compared += 1
    return compared


@pytest.mark.parametrize("name", sorted(PACKETS))
def test_every_field_equals_scapys_dissection_of_the_same_bytes(name: str) -> None:
    wire = WIRE[name]
    e = explain.explain(wire)
    assert e.stop is None, e.stop
    assert not e.problems, [(f.name, f.problem) for f in e.problems]
    assert e.well_formed
    compared = assert_agrees_with_scapy(e, _scapy(wire))
    assert compared >= 15


@pytest.mark.parametrize(("c", "k", "s"), list(itertools.product([0, 1], repeat=3)))
def test_gre_flags_bits_and_options_sit_at_the_offsets_rfc_2784_and_2890_give(c: int, k: int, s: int) -> None:
    e = explain.explain(WIRE[f"gre-c{c}k{k}s{s}"])
    gre = next(layer for layer in e.layers if layer.kind == "GRE")
    bits = {f.name: (f.offset, f.bits, f.value) for f in gre.fields}
    assert bits["C"] == (20, (0, 0), c)
    assert bits["R"] == (20, (1, 1), 0)
    assert bits["K"] == (20, (2, 2), k)
    assert bits["S"] == (20, (3, 3), s)
    assert bits["Recur"][:2] == (20, (5, 7))
    assert bits["Flags"][:2] == (20, (8, 12))
    assert bits["Ver"] == (20, (13, 15), 0)
    offset = 24
    for present, name in ((c, "checksum"), (c, "reserved1"), (k, "key"), (s, "sequence number")):
        assert (name in bits) == bool(present)
        if present:
            assert bits[name][0] == offset
            offset += 2 if name in ("checksum", "reserved1") else 4
    assert gre.title.endswith(f"{4 + 4 * (c + k + s)} bytes")
    assert {f.rfc for f in gre.fields} <= {
        "RFC 2784 2.2",
        "RFC 2784 2.3",
        "RFC 2784 2.3.1",
        "RFC 2784 2.4",
        "RFC 2784 2.5",
        "RFC 2784 2.6",
        "RFC 2890 2",
        "RFC 2890 2.1",
        "RFC 2890 2.2",
    }


def test_the_key_is_also_shown_as_a_dotted_quad_and_the_checksum_verified() -> None:
    e = explain.explain(WIRE["gre-c1k1s1"])
    gre = next(layer for layer in e.layers if layer.kind == "GRE")
    key, csum = gre.get("key"), gre.get("checksum")
    assert key is not None and key.shown == "1234 = 0x000004d2 = 0.0.4.210"
    assert csum is not None and csum.meaning.startswith("valid") and csum.problem is None


def test_ethernet_with_a_vlan_tag_and_padding_agrees_with_scapy() -> None:
    frame = Ether(src="02:00:00:00:00:01", dst="ff:ff:ff:ff:ff:ff") / Dot1Q(prio=5, dei=1, vlan=100)
    frame = frame / IP(src=A, dst=B) / GRE(key_present=1, key=77) / IP() / ICMP()
    wire = bytes(frame) + bytes(8)  # link-layer padding after the IPv4 packet
    e = explain.explain(wire, describe.LINKTYPE_ETHERNET)
    assert e.stop is None and not e.problems
    assert [layer.kind for layer in e.layers][-1] == "trailer"
    assert assert_agrees_with_scapy(e, Ether(wire)) >= 30


def test_gre_carrying_ethernet_is_dissected_down_to_the_inner_udp() -> None:
    wire = bytes(IP(src=A, dst=B) / GRE(proto=0x6558) / Ether() / IP() / UDP() / b"x")
    e = explain.explain(wire)
    assert [layer.kind for layer in e.layers] == ["IPv4", "GRE", "Ethernet", "IPv4", "UDP"]
    assert e.well_formed


def test_ipv6_destination_options_with_the_tunnel_encapsulation_limit_are_explained() -> None:
    # Linux's ip6tnl puts this option (RFC 2473 4.1.1) in front of the inner packet by default.
    opts = IPv6ExtHdrDestOpt(options=[PadN(otype=4, optlen=1, optdata=b"\x04"), PadN(optdata=b"\x00")])
    wire = bytes(IPv6(src=A6, dst=B6) / opts / IPv6() / ICMPv6EchoRequest())
    e = explain.explain(wire)
    assert [layer.kind for layer in e.layers] == ["IPv6", "IPv6 extension", "IPv6", "ICMPv6"]
    limit = e.layers[1].get("tunnel encapsulation limit")
    assert limit is not None and (limit.offset, limit.value, limit.rfc) == (42, 4, "RFC 2473 4.1.1")
    assert e.well_formed
    assert assert_agrees_with_scapy(e, IPv6(wire)) > 15


def test_an_icmp_error_is_explained_with_the_packet_it_quotes() -> None:
    original = bytes(IP(src=A, dst=B, flags="DF") / GRE(key_present=1, key=5) / _inner("icmp"))
    wire = bytes(IP(src="192.0.2.1", dst=A) / ICMP(type=3, code=4, nexthopmtu=1400) / original[:28])
    e = explain.explain(wire)
    assert [layer.kind for layer in e.layers] == ["IPv4", "ICMP", "IPv4", "GRE"]
    mtu = e.layers[1].get("next-hop MTU")
    assert mtu is not None and mtu.value == 1400
    assert e.layers[2].title.startswith("quoted IPv4 header")
    assert e.stop is not None and not e.stop.malformed and e.stop.reason == "end of quote"
    assert e.well_formed


def test_a_later_fragment_stops_without_blame_and_scapy_agrees_on_its_header() -> None:
    wire = bytes(IP(src=A, dst=B, frag=185, proto=47) / b"continued bytes")
    e = explain.explain(wire)
    assert e.stop is not None and e.stop.reason == "later fragment" and not e.stop.malformed
    assert e.layers[0].get("fragment offset") is not None
    assert assert_agrees_with_scapy(e, IP(wire)) == 13  # the IPv4 header; scapy leaves a fragment's payload raw


@pytest.mark.parametrize(
    ("outer_ecn", "inner_ecn", "action", "problem"),
    [(0, 0, "keep", None), (3, 2, "set_ce", None), (3, 0, "drop", "dropped at decapsulation"), (1, 1, "keep", None)],
)
def test_rfc_6040_decapsulation_is_what_the_core_decides(
    outer_ecn: int, inner_ecn: int, action: str, problem: str | None
) -> None:
    wire = bytes(IP(src=A, dst=B, tos=outer_ecn) / GRE() / IP(tos=inner_ecn) / ICMP())
    inner = explain.explain(wire).layers[2]
    derived = inner.get("ECN after decapsulation")
    assert derived is not None and (derived.value, derived.problem) == (action, problem)
    assert derived.rfc == "RFC 6040 4.2"


@pytest.mark.parametrize(
    ("layer_index", "scapy_layer", "field", "name"),
    [
        (0, IP, "chksum", "header checksum"),
        (1, GRE, "chksum", "checksum"),
        (3, ICMP, "chksum", "checksum"),
    ],
)
def test_a_wrong_checksum_is_flagged_with_the_value_scapy_computes(
    layer_index: int, scapy_layer: type[Packet], field: str, name: str
) -> None:
    wrong = _scapy(WIRE["gre-c1k1s1"])
    correct = wrong[scapy_layer].getfieldval(field)
    wrong[scapy_layer].setfieldval(field, correct ^ 0x0101)
    e = explain.explain(bytes(wrong))
    f = e.layers[layer_index].get(name)
    assert f is not None and f.problem is not None
    assert f"0x{correct:04x}" in f.meaning
    assert e.stop is None  # a bad checksum is flagged, and the rest is still explained


# --- (b) the same against tshark -------------------------------------------------------------------------------

TSHARK_PROTO = {
    "IPv4": "ip",
    "IPv6": "ipv6",
    "GRE": "gre",
    "ICMP": "icmp",
    "ICMPv6": "icmpv6",
    "TCP": "tcp",
    "UDP": "udp",
}


def _n(text: str) -> int:
    return int(text, 16) if text.startswith("0x") else int(text)


TSHARK_FIELDS: dict[str, dict[str, Callable[[dict[str, str]], Any]]] = {
    "IPv4": {
        "version": lambda t: _n(t["ip.version"]),
        "IHL": lambda t: _n(t["ip.hdr_len"]) // 4,
        "DSCP": lambda t: _n(t["ip.dsfield.dscp"]),
        "ECN": lambda t: _n(t["ip.dsfield.ecn"]),
        "total length": lambda t: _n(t["ip.len"]),
        "identification": lambda t: _n(t["ip.id"]),
        "flags": lambda t: _n(t["ip.flags.rb"]) << 2 | _n(t["ip.flags.df"]) << 1 | _n(t["ip.flags.mf"]),
        "fragment offset": lambda t: _n(t["ip.frag_offset"]),
        "TTL": lambda t: _n(t["ip.ttl"]),
        "protocol": lambda t: _n(t["ip.proto"]),
        "header checksum": lambda t: _n(t["ip.checksum"]),
        "source address": lambda t: t["ip.src"],
        "destination address": lambda t: t["ip.dst"],
    },
    "IPv6": {
        "version": lambda t: _n(t["ipv6.version"]),
        "DSCP": lambda t: _n(t["ipv6.tclass.dscp"]),
        "ECN": lambda t: _n(t["ipv6.tclass.ecn"]),
        "flow label": lambda t: _n(t["ipv6.flow"]),
        "payload length": lambda t: _n(t["ipv6.plen"]),
        "next header": lambda t: _n(t["ipv6.nxt"]),
        "hop limit": lambda t: _n(t["ipv6.hlim"]),
        "source address": lambda t: t["ipv6.src"],
        "destination address": lambda t: t["ipv6.dst"],
    },
    "GRE": {
        "C": lambda t: _n(t["gre.flags.checksum"]),
        "R": lambda t: _n(t["gre.flags.routing"]),
        "K": lambda t: _n(t["gre.flags.key"]),
        "S": lambda t: _n(t["gre.flags.sequence_number"]),
        "s": lambda t: _n(t["gre.flags.strict_source_route"]),
        "Recur": lambda t: _n(t["gre.flags.recursion_control"]),
        "Flags": lambda t: _n(t["gre.flags.reserved"]),
        "Ver": lambda t: _n(t["gre.flags.version"]),
        "protocol type": lambda t: _n(t["gre.proto"]),
        "checksum": lambda t: _n(t["gre.checksum"]),
        "reserved1": lambda t: _n(t["gre.offset"]),
        "key": lambda t: _n(t["gre.key"]),
        "sequence number": lambda t: _n(t["gre.sequence_number"]),
    },
    "ICMP": {
        "type": lambda t: _n(t["icmp.type"]),
        "code": lambda t: _n(t["icmp.code"]),
        "checksum": lambda t: _n(t["icmp.checksum"]),
        "identifier": lambda t: _n(t["icmp.ident"]),
        "sequence number": lambda t: _n(t["icmp.seq"]),
    },
    "ICMPv6": {
        "type": lambda t: _n(t["icmpv6.type"]),
        "code": lambda t: _n(t["icmpv6.code"]),
        "checksum": lambda t: _n(t["icmpv6.checksum"]),
        "identifier": lambda t: _n(t["icmpv6.echo.identifier"]),
        "sequence number": lambda t: _n(t["icmpv6.echo.sequence_number"]),
    },
    "TCP": {
        "source port": lambda t: _n(t["tcp.srcport"]),
        "destination port": lambda t: _n(t["tcp.dstport"]),
        "sequence number": lambda t: _n(t["tcp.seq_raw"]),
        "acknowledgment number": lambda t: _n(t["tcp.ack_raw"]),
        "data offset": lambda t: _n(t["tcp.hdr_len"]) // 4,
        "flags": lambda t: _n(t["tcp.flags"]) & 0xFF,
        "reserved": lambda t: _n(t["tcp.flags"]) >> 8,
        "window": lambda t: _n(t["tcp.window_size_value"]),
        "checksum": lambda t: _n(t["tcp.checksum"]),
        "urgent pointer": lambda t: _n(t["tcp.urgent_pointer"]),
        "options": lambda t: t["tcp.options"].replace(":", ""),
    },
    "UDP": {
        "source port": lambda t: _n(t["udp.srcport"]),
        "destination port": lambda t: _n(t["udp.dstport"]),
        "length": lambda t: _n(t["udp.length"]),
        "checksum": lambda t: _n(t["udp.checksum"]),
    },
}
# tshark's checksum status values (epan/proto.h): 0 bad, 1 good.
TSHARK_CHECKSUM_STATUS = {
    ("IPv4", "header checksum"): "ip.checksum.status",
    ("GRE", "checksum"): "gre.checksum.status",
    ("ICMP", "checksum"): "icmp.checksum.status",
    ("ICMPv6", "checksum"): "icmpv6.checksum.status",
    ("TCP", "checksum"): "tcp.checksum.status",
    ("UDP", "checksum"): "udp.checksum.status",
}


def _bad_checksum_packets() -> dict[str, bytes]:
    out = {}
    for name, layer, field in (("bad-gre-csum", GRE, "chksum"), ("bad-ip-csum", IP, "chksum")):
        p = _scapy(WIRE["gre-c1k1s1"])
        p[layer].setfieldval(field, p[layer].getfieldval(field) ^ 0x00F0)
        out[name] = bytes(p)
    p = _scapy(WIRE["gre-key-tcp"])
    p[TCP].chksum ^= 0x1111
    out["bad-tcp-csum"] = bytes(p)
    return out


TSHARK_WIRE = {**WIRE, **_bad_checksum_packets()}


def _pairs(pairs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return pairs  # keep tshark's duplicate keys (two "ip" layers) and their order


def _flatten(node: Any, out: dict[str, str]) -> dict[str, str]:
    for key, value in node:
        if isinstance(value, list) and value and isinstance(value[0], tuple):
            _flatten(value, out)
        elif isinstance(value, str):
            out.setdefault(key, value)
    return out


def tshark_json(wires: dict[str, bytes], directory: Path, *options: str) -> dict[str, list[tuple[str, dict[str, str]]]]:
    """Each packet as tshark dissects it (with `options`, such as -d decode-as rules): its protocols in order,
    each a flat {field: value}. Fails under USERTUNNEL_REQUIRE_NETNS=1 without tshark, else skips."""
    if shutil.which("tshark") is None:
        reason = "tshark is not installed (Debian package tshark): the Wireshark cross-check needs it"
        if os.environ.get("USERTUNNEL_REQUIRE_NETNS") == "1":
            pytest.fail(f"USERTUNNEL_REQUIRE_NETNS=1 but {reason}")
        pytest.skip(reason)
    names = sorted(wires)
    path = directory / "packets.pcap"
    wrpcap(str(path), [Raw(wires[name]) for name in names], linktype=describe.LINKTYPE_RAW)
    prefs = ["-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE"]
    done = subprocess.run(
        ["tshark", "-n", "-r", str(path), "-T", "json", *prefs, *options],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    frames = json.loads(done.stdout, object_pairs_hook=_pairs)
    out = {}
    for name, frame in zip(names, frames, strict=True):
        layers = dict(dict(frame)["_source"])["layers"]
        out[name] = [(proto, _flatten(fields, {})) for proto, fields in layers if isinstance(fields, list)]
    return out


@pytest.fixture(scope="module")
def tshark_dissections(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[str, dict[str, str]]]]:
    """Each packet as tshark dissects it: its protocols in order, each a flat {field: value}."""
    return tshark_json(TSHARK_WIRE, tmp_path_factory.mktemp("tshark"))


def assert_equals_tshark(name: str, e: Explanation, dissection: list[tuple[str, dict[str, str]]]) -> tuple[int, int]:
    """Every header tshark also dissects, in the same order, with every field and checksum verdict equal;
    returns how many fields and verdicts were compared."""
    ours = [layer for layer in e.layers if layer.kind in TSHARK_PROTO]
    theirs = [(proto, fields) for proto, fields in dissection if proto in TSHARK_PROTO.values()]
    assert [TSHARK_PROTO[layer.kind] for layer in ours] == [proto for proto, _ in theirs]
    compared = verdicts = 0
    for layer, (_, fields) in zip(ours, theirs, strict=True):
        getters = TSHARK_FIELDS[layer.kind]
        for f in layer.fields:
            if f.name in getters:
                expected = getters[f.name](fields)
                assert f.value == expected, f"{name}: {layer.title} {f.name}: {f.value!r} != tshark's {expected!r}"
                compared += 1
            status = TSHARK_CHECKSUM_STATUS.get((layer.kind, f.name))
            if status is not None and status in fields and fields[status] in ("0", "1"):
                assert (f.problem is None) == (fields[status] == "1"), f"{name}: {layer.title} {f.name} verdict"
                verdicts += 1
    return compared, verdicts


@pytest.mark.parametrize("name", sorted(TSHARK_WIRE))
def test_every_field_and_checksum_verdict_equals_tsharks(
    name: str, tshark_dissections: dict[str, list[tuple[str, dict[str, str]]]]
) -> None:
    compared, verdicts = assert_equals_tshark(name, explain.explain(TSHARK_WIRE[name]), tshark_dissections[name])
    assert compared >= 15
    assert verdicts >= 1


# --- (c) malformed and truncated packets: explained, never raised ------------------------------------------------


def _stop_is_named(e: Explanation) -> None:
    assert e.stop is not None
    text = explain.render_text(e)
    assert f"offset {e.stop.offset}" in text
    doc = describe.to_json(e)
    assert doc[-1][-1]["name"] == "parsing stopped" and doc[-1][-1]["offset"] == e.stop.offset


@pytest.mark.parametrize("name", [*sorted(PACKETS), *sorted(MORE_WIRE)])
def test_truncation_at_every_offset_names_the_offset_where_parsing_stopped(name: str) -> None:
    wire = {**WIRE, **MORE_WIRE}[name]
    whole = {(f.offset, f.name): f.value for layer in explain.explain(wire).layers for f in layer.fields}
    for cut in range(len(wire)):
        e = explain.explain(wire[:cut])
        assert e.stop is not None and e.stop.malformed, f"cut at {cut}: {e.stop}"
        # The field that could not be read starts at most 40 bytes (the longest field: options) before the cut.
        assert cut - 40 <= e.stop.offset <= cut, f"cut at {cut}: stopped at {e.stop.offset}"
        _stop_is_named(e)
        for layer in e.layers:
            for f in layer.fields:
                if f.name not in ("data", "payload"):
                    assert whole[f.offset, f.name] == f.value, f"cut at {cut}: {f.name} at {f.offset}"


def test_a_header_cut_inside_a_field_names_that_field_and_its_offsets() -> None:
    e = explain.explain(EXAMPLE[:30])
    assert e.stop is not None
    assert (e.stop.offset, e.stop.reason) == (28, "truncated")
    assert "key (4 bytes at offsets 28-31)" in e.stop.detail and "only 30 bytes" in e.stop.detail
    assert [f.name for f in e.layers[-1].fields][-1] == "reserved1"


def test_a_payload_cut_short_is_blamed_on_the_length_that_promised_it() -> None:
    e = explain.explain(EXAMPLE[:66])
    assert e.stop is not None and e.stop.offset == 66
    assert "IPv4 total length (offset 2) promises bytes up to 68" in e.stop.detail
    total = e.layers[0].get("total length")
    assert total is not None and total.problem == "total length beyond the data"


def test_a_capture_cut_at_its_snap_length_says_so() -> None:
    e = explain.explain(EXAMPLE[:40], wire_length=len(EXAMPLE))
    assert e.stop is not None and "the capture kept 40 of its 68 bytes" in e.stop.detail
    assert "of 68 on the wire" in describe.summary(e)


def _mutate(offset: int, value: int) -> bytes:
    wire = bytearray(EXAMPLE)
    wire[offset] = value
    return bytes(wire)


@pytest.mark.parametrize(
    ("wire", "reason", "offset", "problem"),
    [
        (b"", "empty", 0, None),
        (_mutate(0, 0x75), "wrong version", 0, "wrong version"),
        (_mutate(0, 0x43), "IHL < 5", 0, "IHL < 5"),
        (_mutate(3, 0x04), "total length < header", 2, "total length < header length"),
        (_mutate(3, 0x50), "truncated", 68, "total length beyond the data"),
        (_mutate(21, 0x01), "not enhanced GRE", 20, "C bit set in enhanced GRE"),
        (_mutate(21, 0x02), "GRE version != 0", 20, "GRE version != 0"),
        (_mutate(20, 0xF0), "routing bit", 20, "routing bit set"),
        (_mutate(36, 0x65), "wrong version", 36, "wrong version"),
        (_mutate(36, 0x44), "IHL < 5", 36, "IHL < 5"),
        (_mutate(39, 0x10), "total length < header", 38, "total length < header length"),
    ],
)
def test_a_malformed_packet_is_explained_up_to_where_and_why_parsing_stopped(
    wire: bytes, reason: str, offset: int, problem: str | None
) -> None:
    e = explain.explain(wire)
    assert e.stop is not None
    assert (e.stop.reason, e.stop.offset) == (reason, offset), e.stop
    if problem is not None:
        assert problem in {f.problem for f in e.problems}
    _stop_is_named(e)


def test_a_bad_gre_checksum_is_the_cores_csum_bad_verdict_and_parsing_goes_on() -> None:
    e = explain.explain(_mutate(25, 0x00))
    csum = e.layers[1].get("checksum")
    assert csum is not None and csum.problem == "bad GRE checksum" and "csum_bad" in csum.meaning
    assert e.stop is None and e.layers[-1].kind == "ICMP"
    assert "problem at offset 24 (checksum): bad GRE checksum" in explain.render_text(e)


@SETTINGS
@given(st.binary(max_size=160), st.sampled_from(sorted(describe.LINKTYPES)))
def test_arbitrary_bytes_never_raise_and_always_render(data: bytes, linktype: int) -> None:
    e = explain.explain(data, linktype)
    assert e.stop is None or 0 <= e.stop.offset <= len(data)
    for layer in e.layers:
        assert all(f.offset >= 0 and f.offset + f.length <= len(data) for f in layer.fields)
    explain.render_text(e, width=80)
    json.dumps(describe.to_json(e))


@SETTINGS
@given(
    st.sampled_from(sorted({**WIRE, **MORE_WIRE})),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(0, 200),
)
def test_valid_packets_with_bytes_changed_and_cut_never_raise(
    name: str, changes: list[tuple[int, int]], cut: int
) -> None:
    wire = bytearray({**WIRE, **MORE_WIRE}[name])
    for offset, value in changes:
        wire[offset % len(wire)] = value
    e = explain.explain(bytes(wire[: max(cut, 1)]))
    explain.render_text(e)
    json.dumps(describe.to_json(e))
    if e.stop is not None:
        _stop_is_named(e)


# --- (d) the command line -------------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="usertunnel")
    sub = parser.add_subparsers(dest="command")
    explain.add_parser(sub)
    return parser.parse_args(["explain", *argv])


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = explain.run(parse(*argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_hex_on_the_command_line_in_several_words_is_explained(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, *explain.EXAMPLE_HEX)
    assert (status, err) == (0, "")
    assert out.startswith("68 bytes: IPv4 198.51.100.1 > 198.51.100.2, GRE (checksum, key 1234, seq 0)")
    assert "1234 = 0x000004d2 = 0.0.4.210" in out
    assert "valid, over the GRE header and payload (48 bytes)" in out
    assert "end: all 68 bytes explained" in out


def test_hex_with_colons_spaces_and_0x_is_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    spaced = "0x" + ":".join(f"{b:02x}" for b in EXAMPLE[:34]) + " " + EXAMPLE[34:].hex(" ")
    status, out, _ = run(capsys, spaced)
    assert status == 0 and "end: all 68 bytes explained" in out


def test_hex_on_stdin_is_explained(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(EXAMPLE[:30].hex() + "\n" + EXAMPLE[30:].hex() + "\n"))
    status, out, _ = run(capsys)
    assert status == 0 and "end: all 68 bytes explained" in out


def test_json_is_a_list_of_layers_each_a_list_of_fields(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "-j", EXAMPLE.hex())
    assert status == 0
    doc = json.loads(out)
    assert [layer[0]["layer"].split(" (")[0] for layer in doc] == [
        "outer IPv4 header",
        "GRE header",
        "inner IPv4 header",
        "inner ICMP header",
    ]
    for layer in doc:
        for f in layer:
            assert {"offset", "bits", "name", "value", "meaning", "rfc"} <= set(f)
    ver = next(f for f in doc[1] if f["name"] == "Ver")
    assert (ver["offset"], ver["bits"], ver["value"], ver["rfc"]) == (20, "13-15", 0, "RFC 2784 2.3.1")
    key = next(f for f in doc[1] if f["name"] == "key")
    assert (key["offset"], key["value"]) == (28, 1234)


def test_json_of_a_truncated_packet_ends_with_where_parsing_stopped(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--json", EXAMPLE[:30].hex())
    assert status == 0
    last = json.loads(out)[-1][-1]
    assert (last["name"], last["offset"], last["value"]) == ("parsing stopped", 28, "truncated")


def _capture(tmp_path: Path, linktype: int, frames: list[bytes], name: str = "c.pcap") -> Path:
    path = tmp_path / name
    wrpcap(str(path), [Raw(f) for f in frames], linktype=linktype)
    return path


FRAMES = [
    bytes(Ether() / IP(src=A, dst=B) / GRE(key_present=1, key=1) / _inner("icmp")),
    bytes(Ether() / IP(src=A, dst=B) / _inner("tcp")),
    bytes(Ether() / IPv6(src=A6, dst=B6) / GRE(seqnum_present=1, sequence_number=9) / _inner("udp")),
]


def test_pcap_index_picks_the_packet_counting_from_zero(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = _capture(tmp_path, describe.LINKTYPE_ETHERNET, FRAMES)
    status, out, _ = run(capsys, "--pcap", str(path), "--index", "2")
    assert status == 0
    assert out.startswith("packet 2 (Ethernet): ")
    assert "GRE (seq 9)" in out.splitlines()[0] and "UDP 40000 > 53" in out.splitlines()[0]
    status, out, _ = run(capsys, "--pcap", str(path))
    assert out.startswith("packet 0 (Ethernet): ") and "GRE (key 1)" in out.splitlines()[0]


def test_pcap_all_explains_every_packet(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = _capture(tmp_path, describe.LINKTYPE_ETHERNET, FRAMES)
    status, out, _ = run(capsys, "--pcap", str(path), "--all")
    assert status == 0 and [line[:8] for line in out.splitlines() if line.startswith("packet ")] == [
        "packet 0",
        "packet 1",
        "packet 2",
    ]
    status, out, _ = run(capsys, "--pcap", str(path), "--all", "-j")
    assert status == 0 and len(json.loads(out)) == 3


@pytest.mark.parametrize(
    ("linktype", "frame"),
    [
        (describe.LINKTYPE_RAW, bytes(IP(src=A, dst=B) / GRE() / IP() / ICMP())),
        (describe.LINKTYPE_IPV4, bytes(IP(src=A, dst=B) / GRE() / IP() / ICMP())),
        (describe.LINKTYPE_IPV6, bytes(IPv6(src=A6, dst=B6) / GRE() / IP() / ICMP())),
        (
            describe.LINKTYPE_LINUX_SLL,
            bytes(CookedLinux(pkttype=4, lladdrtype=1, lladdrlen=6, proto=0x800) / IP() / GRE() / IP() / ICMP()),
        ),
        (
            describe.LINKTYPE_LINUX_SLL2,
            bytes(CookedLinuxV2(proto=0x800, ifindex=3, lladdrtype=778) / IP() / GRE() / IP() / ICMP()),
        ),
    ],
)
def test_raw_ip_and_linux_cooked_captures_are_read(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, linktype: int, frame: bytes
) -> None:
    path = _capture(tmp_path, linktype, [frame])
    status, out, err = run(capsys, "--pcap", str(path), "-j")
    assert (status, err) == (0, "")
    names = [layer[0]["layer"] for layer in json.loads(out)]
    assert names[-1] == "inner ICMP header"
    assert not any(f["problem"] for layer in json.loads(out) for f in layer)


def test_pcapng_is_read(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "c.pcapng"
    writer = PcapNgWriter(str(path))
    for frame in FRAMES:
        writer.write(Ether(frame))
    writer.close()
    status, out, _ = run(capsys, "--pcap", str(path), "--index", "1")
    assert status == 0 and out.startswith("packet 1 (Ethernet): ") and "TCP 40000 > 443" in out


def test_the_help_teaches_the_input_forms_with_a_real_gre_packet(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--help")
    out = capsys.readouterr().out
    for text in ("HEX", "standard input", "--pcap FILE", "--index N", "--all", *explain.EXAMPLE_HEX):
        assert text in out


def test_the_help_example_is_the_packet_usertunnel_sends_with_key_seq_and_csum() -> None:
    params = TunnelParams(
        name="gre0",
        mode=Mode.GRE,
        local=ipaddress.IPv4Address(A).packed,
        remote=ipaddress.IPv4Address(B).packed,
        ikey=1234,
        okey=1234,
        iseq=True,
        oseq=True,
        icsum=True,
        ocsum=True,
    )
    assert Tunnel(params).encapsulate(EXAMPLE[36:]) == EXAMPLE
    e = explain.explain(EXAMPLE)
    assert e.stop is None and e.well_formed


def _stdin(monkeypatch: pytest.MonkeyPatch, text: str, tty: bool = False) -> None:
    stream = io.StringIO(text)
    monkeypatch.setattr(stream, "isatty", lambda: tty)
    monkeypatch.setattr("sys.stdin", stream)


@pytest.mark.parametrize(
    ("argv", "stdin", "expected"),
    [
        (["zz"], None, "not hex: 'z' at character 1"),
        (["--pcap", "DIR"], None, "a directory"),
        (["4500 0g"], None, "not hex: 'g' at character 7"),
        (["450"], None, "odd number of hex digits (3)"),
        (["capture.pcap"], None, "--pcap FILE"),
        ([":"], None, "no hex digits"),
        ([], "", "no hex digits"),
        ([], "nonsense\n", "not hex"),
        ([], None, "no packet: give it as HEX"),
        (["--pcap", "/nonexistent/x.pcap"], None, "no such file"),
        (["--pcap", "NOTAPCAP"], None, "as a capture"),
        (["--pcap", "PCAP", "--index", "3"], None, "--index 3 is out of range: "),
        (["--pcap", "PCAP", "--index", "-1"], None, "is not a packet number"),
        (["--pcap", "PCAP", "--index", "one"], None, "is not a packet number"),
        (["--pcap", "WIFI"], None, "link type 105"),
        (["--pcap", "PCAP", "4500"], None, "either HEX or --pcap FILE"),
        (["--index", "1", "4500"], None, "--index and --all need --pcap FILE"),
        (["--pcap", "PCAP", "--index", "1", "--all"], None, "either --index N or --all"),
    ],
)
def test_unusable_input_is_one_line_on_stderr_and_exit_status_2(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    argv: list[str],
    stdin: str | None,
    expected: str,
) -> None:
    files = {
        "PCAP": _capture(tmp_path, describe.LINKTYPE_ETHERNET, FRAMES, "ok.pcap"),
        "WIFI": _capture(tmp_path, 105, [b"\x08\x00" + bytes(30)], "wifi.pcap"),
        "NOTAPCAP": tmp_path / "not.pcap",
        "DIR": tmp_path,
    }
    files["NOTAPCAP"].write_bytes(b"this is not a capture file at all")
    argv = [str(files.get(a, a)) for a in argv]
    _stdin(monkeypatch, stdin or "", tty=stdin is None)
    status, out, err = run(capsys, *argv)
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("usertunnel explain: error: "), err
    assert expected in err
    assert "Traceback" not in err


def test_a_malformed_packet_is_not_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "4500ffff")
    assert (status, err) == (0, "")
    assert "parsing stopped at offset 4: truncated" in out


# --- (e) what real captures hold besides tunnels: ERSPAN, NHRP, PPTP's enhanced GRE, WCCP -----------------------


# (our layer kind, our field name) -> (tshark's field, how to read tshark's value: "show" or "raw" bytes)
TSHARK_NEW_FIELDS: dict[str, dict[str, tuple[str, str]]] = {
    "GRE": {
        "C": ("gre.flags.checksum", "show"),
        "R": ("gre.flags.routing", "show"),
        "K": ("gre.flags.key", "show"),
        "S": ("gre.flags.sequence_number", "show"),
        "s": ("gre.flags.strict_source_route", "show"),
        "Recur": ("gre.flags.recursion_control", "show"),
        "A": ("gre.flags.ack", "show"),
        "Flags": ("gre.flags.reserved", "show"),
        "Ver": ("gre.flags.version", "show"),
        "protocol type": ("gre.proto", "show"),
        "key": ("gre.key", "show"),
        "sequence number": ("gre.sequence_number", "show"),
        "payload length": ("gre.key.payload_length", "show"),
        "call ID": ("gre.key.call_id", "show"),
        "acknowledgment number": ("gre.ack_number", "show"),
    },
    "ERSPAN": {
        "Ver": ("erspan.version", "show"),
        "VLAN": ("erspan.vlan", "show"),
        "COS": ("erspan.cos", "show"),
        "En": ("erspan.encap", "show"),
        "BSO": ("erspan.bso", "show"),
        "T": ("erspan.truncated", "show"),
        "Session ID": ("erspan.spanid", "show"),
        "Reserved": ("erspan.reserved", "show"),
        "Index": ("erspan.index", "show"),
        "timestamp": ("erspan.timestamp", "show"),
        "SGT": ("erspan.sgt", "show"),
        "P": ("erspan.p", "show"),
        "FT": ("erspan.ft", "show"),
        "Hw ID": ("erspan.hw", "show"),
        "D": ("erspan.direction", "show"),
        "Gra": ("erspan.gra", "show"),
        "O": ("erspan.o", "show"),
        "Platf ID": ("erspan.platid", "show"),
    },
    "PPP": {
        "address": ("ppp.address", "show"),
        "control": ("ppp.control", "show"),
        "protocol": ("ppp.protocol", "show"),
    },
    "WCCP": {
        "U": ("gre.wccp.redirect_header_valid", "show"),
        "A": ("gre.wccp.alternative_bucket_used", "show"),
        "D": ("gre.wccp.dynamic_service", "show"),
        "service ID": ("gre.wccp.service_id", "show"),
        "alternate bucket": ("gre.wccp.alternative_bucket", "show"),
        "primary bucket": ("gre.wccp.primary_bucket", "show"),
    },
    "NHRP": {
        "address family": ("nhrp.hdr.afn", "show"),
        "protocol type": ("nhrp.hdr.pro.type", "show"),
        "protocol SNAP": ("nhrp.protocol_type", "raw"),
        "hop count": ("nhrp.hdr.hopcnt", "show"),
        "packet size": ("nhrp.hdr.pktsz", "show"),
        "checksum": ("nhrp.hdr.chksum", "show"),
        "extension offset": ("nhrp.hdr.extoff", "show"),
        "version": ("nhrp.hdr.version", "show"),
        "type": ("nhrp.hdr.op.type", "show"),
        "source NBMA type/length": ("nhrp.hdr.shtl", "raw"),
        "source NBMA subaddress type/length": ("nhrp.hdr.sstl", "raw"),
        "source protocol length": ("nhrp.src.prot.len", "show"),
        "destination protocol length": ("nhrp.dst.prot.len", "show"),
        "flags": ("nhrp.flags", "show"),
        "request ID": ("nhrp.reqid", "show"),
        "error code": ("nhrp.err.code", "show"),
        "error offset": ("nhrp.err.offset", "show"),
        "source NBMA address": ("nhrp.src.nbma.addr", "show"),
        "source protocol address": ("nhrp.src.prot.addr", "show"),
        "destination protocol address": ("nhrp.dst.prot.addr", "show"),
        "code": ("nhrp.code", "show"),
        "prefix length": ("nhrp.prefix", "show"),
        "MTU": ("nhrp.mtu", "show"),
        "holding time": ("nhrp.htime", "show"),
        "unused": ("nhrp.unused", "show"),
        "client NBMA type/length": ("nhrp.cli.addr_tl", "raw"),
        "client NBMA subaddress type/length": ("nhrp.cli.saddr_tl", "raw"),
        "client protocol length": ("nhrp.prot.len", "show"),
        "preference": ("nhrp.pref", "show"),
        "client NBMA address": ("nhrp.client.nbma.addr", "show"),
        "client protocol address": ("nhrp.client.prot.addr", "show"),
        "C": ("nhrp.ext.c", "show"),
        "extension type": ("nhrp.ext.type", "show"),
        "extension length": ("nhrp.ext.len", "show"),
    },
}
NOT_IN_TSHARK = {("NHRP mandatory part (error indication)", "unused")}


def _pdml_value(node: ET.Element, how: str) -> int | str:
    if how == "raw":
        raw = node.get("value", "")
        return int(raw, 16) if len(raw) <= 2 else raw
    show = node.get("show", "")
    if re.fullmatch(r"0x[0-9a-fA-F]+|\d+", show):
        return _n(show)
    return show


@pytest.fixture(scope="module")
def tshark_pdml(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[ET.Element]]:
    """Each new packet as tshark dissects it: every field element of its PDML, in order."""
    if shutil.which("tshark") is None:
        reason = "tshark is not installed (Debian package tshark): the Wireshark cross-check needs it"
        if os.environ.get("USERTUNNEL_REQUIRE_NETNS") == "1":
            pytest.fail(f"USERTUNNEL_REQUIRE_NETNS=1 but {reason}")
        pytest.skip(reason)
    names = sorted(MORE_WIRE)
    path = tmp_path_factory.mktemp("tshark-more") / "packets.pcap"
    wrpcap(str(path), [Raw(MORE_WIRE[name]) for name in names], linktype=describe.LINKTYPE_RAW)
    done = subprocess.run(["tshark", "-n", "-r", str(path), "-T", "pdml"], capture_output=True, timeout=60, check=True)
    packets = ET.fromstring(done.stdout).findall("packet")
    return {name: list(packet.iter("field")) for name, packet in zip(names, packets, strict=True)}


@pytest.mark.parametrize("name", sorted(MORE_WIRE))
def test_erspan_nhrp_pptp_and_wccp_fields_equal_tsharks_field_by_field(
    name: str, tshark_pdml: dict[str, list[ET.Element]]
) -> None:
    e = explain.explain(MORE_WIRE[name])
    assert e.well_formed and e.stop is None, explain.render_text(e)
    theirs: dict[str, list[ET.Element]] = {}
    for node in tshark_pdml[name]:
        theirs.setdefault(node.get("name", ""), []).append(node)
    seen: dict[str, int] = {}
    compared = 0
    for layer in e.layers:
        fields = TSHARK_NEW_FIELDS.get(layer.kind, {})
        for f in layer.fields:
            if f.name not in fields:
                continue
            if (layer.title, f.name) in NOT_IN_TSHARK:
                continue
            tshark_name, how = fields[f.name]
            k = seen.get(tshark_name, 0)
            seen[tshark_name] = k + 1
            nodes = theirs.get(tshark_name, [])
            assert k < len(nodes), f"{name}: tshark has no {tshark_name} #{k} for our {layer.title} {f.name}"
            node = nodes[k]
            pos, size = int(node.get("pos", "-1")), int(node.get("size", "0"))
            assert pos <= f.offset < pos + size, f"{name}: {f.name} at {f.offset}, tshark's at {pos}+{size}"
            expected = _pdml_value(node, how)
            assert f.value == expected, f"{name}: {layer.title} {f.name}: {f.value!r} != tshark's {expected!r}"
            compared += 1
    assert compared >= 9, compared
    kinds = {layer.kind for layer in e.layers}
    wanted = {"erspan-i": "Ethernet", "erspan": "ERSPAN", "pptp-ack": "GRE", "pptp": "PPP", "nhrp": "NHRP"}
    wanted |= {"wccp-v1": "UDP", "wccp": "WCCP"}
    kind = next(kind for prefix, kind in wanted.items() if name.startswith(prefix))
    assert kind in kinds, f"{name}: no {kind} layer in {sorted(kinds)}"


# --- (f) tunnels in UDP: FOU (GRE-in-UDP, IPIP and SIT in UDP) and GUE --------------------------------------------


class GUE(Packet):
    """GUE as draft-ietf-intarea-gue-09 3.1 draws it (scapy has no GUE): variant 0's header with its extension
    fields, or variant 1, which is the IP packet itself (scapy dissects that as IP or IPv6)."""

    name = "GUE"
    fields_desc = [
        BitField("ver", 0, 2),
        BitField("c", 0, 1),
        BitField("hlen", 0, 5),
        ByteField("proto", 47),
        XShortField("flags", 0),
        StrLenField("ext", b"", length_from=lambda p: 4 * p.hlen),
    ]

    @classmethod
    def dispatch_hook(cls, _pkt: bytes | None = None, *args: Any, **kargs: Any) -> type[Packet]:
        if _pkt and _pkt[0] >> 6 == 1:
            return IP if _pkt[0] >> 4 == 4 else IPv6
        return cls

    def guess_payload_class(self, payload: bytes) -> type[Packet]:
        return Raw if self.c else {47: GRE, 4: IP, 41: IPv6}.get(self.proto, Raw)


OUTER = IP(src=A, dst=B, id=0x4242, flags="DF", ttl=64, tos=0x01)
PING6 = IPv6(src=A6, dst=B6, tc=0x02) / ICMPv6EchoRequest(id=5, seq=6, data=b"ping6")
# name: (scapy packet, what its UDP ports carry beyond the defaults)
UDP_TUNNELS: dict[str, tuple[Packet, dict[int, str]]] = {
    "gre-in-udp": (OUTER / UDP(sport=49152, dport=4754) / GRE(key_present=1, key=1234) / _inner("icmp"), {}),
    "gre-in-udp-csk": (
        OUTER
        / UDP(sport=4754, dport=4754)
        / GRE(chksum_present=1, key_present=1, seqnum_present=1, key=7, sequence_number=3)
        / _inner("tcp"),
        {},
    ),
    "gre-in-udp-no-csum": (OUTER / UDP(sport=40000, dport=4754, chksum=0) / GRE() / _inner("udp"), {}),
    "gre-in-udp-reply": (
        IP(src=B, dst=A) / UDP(sport=4754, dport=6000) / GRE(key_present=1, key=1) / _inner("icmp"),
        {},
    ),
    "fou-gre-5555": (
        OUTER / UDP(sport=6000, dport=5555) / GRE(key_present=1, key=1234) / _inner("icmp"),
        {5555: "fou:47"},
    ),
    "fou-ipip": (OUTER / UDP(sport=33000, dport=5556) / _inner("tcp"), {5556: "fou:4"}),
    "fou-sit": (OUTER / UDP(sport=33000, dport=5557, chksum=0) / PING6, {5557: "fou:41"}),
    "gue-gre": (OUTER / UDP(sport=7000, dport=6080) / GUE(proto=47) / GRE(key_present=1, key=9) / _inner("icmp"), {}),
    "gue-ipip": (OUTER / UDP(sport=7000, dport=6080) / GUE(proto=4) / _inner("udp"), {}),
    "gue-sit": (OUTER / UDP(sport=7000, dport=6090) / GUE(proto=41) / PING6, {6090: "gue"}),
    "gue-variant1-ipv4": (OUTER / UDP(sport=7000, dport=7080) / _inner("icmp"), {7080: "gue"}),
    "gue-variant1-ipv6": (OUTER / UDP(sport=7000, dport=7080) / PING6, {7080: "gue"}),
    "gre-in-udp-over-ipv6": (IPv6(src=A6, dst=B6) / UDP(sport=50000, dport=4754) / GRE() / _inner("icmp"), {}),
    "gue-over-ipv6": (IPv6(src=A6, dst=B6) / UDP(sport=50000, dport=6080) / GUE(proto=41) / PING6, {}),
}
UDP_WIRE = {name: bytes(p) for name, (p, _) in UDP_TUNNELS.items()}
UDP_PORTS = {name: ports for name, (_, ports) in UDP_TUNNELS.items()}
SCAPY_FIELDS["GUE"] = {
    "Ver": _attr("ver"),
    "C": _attr("c"),
    "Hlen": _attr("hlen"),
    "Proto/ctype": _attr("proto"),
    "Flags": _attr("flags"),
    "extension fields": lambda p: p.ext.hex(),
}


def _scapy_tunnel(wire: bytes, ports: dict[int, str]) -> list[Packet]:
    """scapy's layers of a tunnel in UDP: the outer IP and UDP headers, then what the port carries."""
    outer = _scapy(wire)
    udp = outer[UDP]
    what = {**describe.DEFAULT_UDP_PORTS, **ports}.get(udp.dport) or {**describe.DEFAULT_UDP_PORTS, **ports}[udp.sport]
    payload = bytes(udp.payload)
    inner = {"fou:47": GRE, "fou:4": IP, "fou:41": IPv6, "gue": GUE}[what](payload)
    return [outer, udp, *_scapy_layers(inner)]


@pytest.mark.parametrize("name", sorted(UDP_TUNNELS))
def test_fou_and_gue_fields_equal_scapys_and_the_ip_around_them_is_the_outer_header(name: str) -> None:
    e = explain.explain(UDP_WIRE[name], udp_ports=UDP_PORTS[name])
    assert e.well_formed and e.stop is None, explain.render_text(e)
    assert e.layers[0].title == f"outer {e.layers[0].kind} header"
    assert e.layers[1].title.startswith("UDP header (GUE)" if name.startswith("gue") else "UDP header (FOU: ")
    ours = [layer for layer in _headers(e) if not layer.title.startswith("GUE variant 1")]
    theirs = _scapy_tunnel(UDP_WIRE[name], UDP_PORTS[name])
    assert [layer.kind for layer in ours] == [SCAPY_KIND.get(type(t).__name__, type(t).__name__) for t in theirs]
    for layer, scapy_layer in zip(ours, theirs, strict=True):
        getters = SCAPY_FIELDS.get(layer.kind, {})
        for f in layer.fields:
            if f.name in NOT_IN_SCAPY or layer.kind == "IPv6 extension":
                continue
            expected = getters[f.name](scapy_layer)
            assert f.value == expected, f"{name}: {layer.title} {f.name}: {f.value!r} != scapy's {expected!r}"
    inner = next(layer for layer in e.layers[2:] if layer.kind in ("IPv4", "IPv6"))
    assert inner.title.startswith("inner ")
    ecn_after = inner.get("ECN after decapsulation")  # RFC 6040 with the outer ECN, as over IP
    assert ecn_after is not None and ecn_after.value == "keep"


def test_gue_fields_sit_where_the_draft_draws_them_and_its_variant_1_is_two_bits() -> None:
    e = explain.explain(UDP_WIRE["gue-ipip"])
    gue = e.layers[2]
    assert gue.kind == "GUE" and gue.offset == 28 and gue.title == "GUE header (draft-ietf-intarea-gue), 4 bytes"
    where = {f.name: (f.offset, f.length, f.bits) for f in gue.fields}
    assert where == {
        "Ver": (28, 1, (0, 1)),
        "C": (28, 1, (2, 2)),
        "Hlen": (28, 1, (3, 7)),
        "Proto/ctype": (29, 1, None),
        "Flags": (30, 2, None),
    }
    assert describe.summary(e) == (
        "67 bytes: IPv4 198.51.100.1 > 198.51.100.2, UDP 7000 > 6080, GUE (proto 4), IPv4 203.0.113.1 > "
        "203.0.113.2, UDP 40000 > 53"
    )
    v1 = explain.explain(UDP_WIRE["gue-variant1-ipv6"], udp_ports={7080: "gue"})
    assert [(f.name, f.value, f.offset, f.bits) for f in v1.layers[2].fields] == [("Ver", 1, 28, (0, 1))]
    assert v1.layers[3].kind == "IPv6" and v1.layers[3].offset == 28
    assert "GUE variant 1" in describe.summary(v1)


def _gue(first: int, proto: int = 4, flags: int = 0, ext: bytes = b"", port: int = 6080) -> bytes:
    return bytes(OUTER / UDP(sport=7000, dport=port) / bytes((first, proto)) / flags.to_bytes(2, "big") / ext
                 / _inner("icmp"))  # fmt: skip


@pytest.mark.parametrize(
    ("first", "flags", "ext", "stop", "kind_after"),
    [
        (0x00, 0, b"", None, "IPv4"),  # Linux's own: usertunnel takes it
        (0x20, 0, b"", None, "payload"),  # a control message: its type, not dissected
        (0x02, 0x8000, bytes(8), None, "IPv4"),  # flags and 8 bytes of extension fields, then the packet
        (0x00, 0x0001, b"", None, "IPv4"),  # Linux's private-flags bit
        (0x80, 0, b"", "unknown GUE variant", None),  # variant 2
        (0xC0, 0, b"", "unknown GUE variant", None),  # variant 3
    ],
)
def test_each_gue_header_is_explained_with_the_verdict_of_usertunnels_receiver(
    first: int, flags: int, ext: bytes, stop: str | None, kind_after: str | None
) -> None:
    from usertunnel.core import fou

    wire = _gue(first, flags=flags, ext=ext)
    e = explain.explain(wire)
    gue = next(layer for layer in e.layers if layer.kind == "GUE")
    verdict = fou.parse_gue(wire[28:])
    said = " ".join(f.meaning for f in gue.fields)
    if isinstance(verdict, tuple):
        assert verdict == (4, 4) and "usertunnel drops" not in said
    else:
        assert f"usertunnel drops it ({verdict.value})" in said, said
    if stop is None:
        assert e.stop is None and e.well_formed
        assert e.layers[e.layers.index(gue) + 1].kind == kind_after
        if ext:
            assert gue.get("extension fields") is not None and gue.get("Hlen").value == len(ext) // 4  # type: ignore[union-attr]
    else:
        assert e.stop is not None and e.stop.reason == stop and e.stop.offset == 28
        assert "unknown GUE variant" in {f.problem for f in e.problems}


def test_gue_variant_1_that_is_not_ip_is_a_problem_and_usertunnel_drops_it() -> None:
    wire = bytearray(UDP_WIRE["gue-variant1-ipv4"])
    wire[28] = 0x55  # variant 1, IP version 5
    e = explain.explain(bytes(wire), udp_ports={7080: "gue"})
    assert e.stop is not None and e.stop.reason == "GUE variant 1 not IP"
    assert "gue_malformed" in e.stop.detail and "GUE variant 1 with IP version 5" in {f.problem for f in e.problems}


def test_a_port_is_read_as_a_tunnel_only_as_the_defaults_or_udp_port_say() -> None:
    plain = explain.explain(UDP_WIRE["fou-gre-5555"])  # nothing says what 5555 carries
    assert [layer.kind for layer in plain.layers] == ["IPv4", "UDP"] and plain.layers[0].title == "IPv4 header"
    assert plain.layers[1].get("data") is not None
    off = explain.explain(UDP_WIRE["gre-in-udp"], udp_ports={4754: "none"})
    assert [layer.kind for layer in off.layers] == ["IPv4", "UDP"]
    dport = explain.explain(UDP_WIRE["gre-in-udp"]).layers[1].get("destination port")
    assert dport is not None and dport.meaning.startswith("the tunnel's port: FOU carrying GRE")
    assert "the port RFC 8086 3.2 gives GRE-in-UDP" in dport.meaning
    said = explain.explain(UDP_WIRE["fou-ipip"], udp_ports={5556: "fou:4"}).layers[1].get("destination port")
    assert said is not None and said.meaning.endswith("as --udp-port 5556=fou:4 says")
    reply = explain.explain(UDP_WIRE["gre-in-udp-reply"])  # a hub's answer: from 4754 to the NAT's port
    assert [layer.kind for layer in reply.layers] == ["IPv4", "UDP", "GRE", "IPv4", "ICMP"]
    sport = reply.layers[1].get("source port")
    assert sport is not None and sport.meaning.startswith("the tunnel's port")


# tshark knows GRE-in-UDP on 4754 (RFC 8086) itself; the rest is told with decode-as, as --udp-port tells explain.
# Wireshark 4.0 has no GUE dissector: GUE's variant 0 header is checked against scapy above; variant 1 is IP.
TSHARK_DECODE = ["-d", "udp.port==5555,gre", "-d", "udp.port==5556,ip", "-d", "udp.port==5557,ipv6"]
TSHARK_DECODE += ["-d", "udp.port==7080,ip"]
TSHARK_UDP = [n for n in sorted(UDP_TUNNELS) if not n.startswith("gue-") or n.startswith("gue-variant1")]


@pytest.fixture(scope="module")
def tshark_udp(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[str, dict[str, str]]]]:
    wires = {name: UDP_WIRE[name] for name in TSHARK_UDP}
    return tshark_json(wires, tmp_path_factory.mktemp("tshark-udp"), *TSHARK_DECODE)


@pytest.mark.parametrize("name", TSHARK_UDP)
def test_fou_fields_and_checksum_verdicts_equal_tsharks(
    name: str, tshark_udp: dict[str, list[tuple[str, dict[str, str]]]]
) -> None:
    e = explain.explain(UDP_WIRE[name], udp_ports=UDP_PORTS[name])
    compared, verdicts = assert_equals_tshark(name, e, tshark_udp[name])
    assert compared >= 20
    udp = e.layers[1].get("checksum")
    assert udp is not None and (udp.value == 0 or verdicts >= 2)  # the UDP checksum over the whole tunnel packet


@pytest.mark.parametrize("name", sorted(UDP_TUNNELS))
def test_a_tunnel_in_udp_cut_at_every_offset_says_where_it_stopped(name: str) -> None:
    wire, ports = UDP_WIRE[name], UDP_PORTS[name]
    whole = {
        (f.offset, f.name): f.value for layer in explain.explain(wire, udp_ports=ports).layers for f in layer.fields
    }
    for cut in range(len(wire)):
        e = explain.explain(wire[:cut], udp_ports=ports)
        assert e.stop is not None and e.stop.malformed, f"cut at {cut}: {e.stop}"
        assert cut - 40 <= e.stop.offset <= cut, f"cut at {cut}: stopped at {e.stop.offset}"
        _stop_is_named(e)
        for layer in e.layers:
            for f in layer.fields:
                if f.name not in ("data", "payload"):
                    assert whole[f.offset, f.name] == f.value, f"cut at {cut}: {f.name} at {f.offset}"


@SETTINGS
@given(
    st.sampled_from([4754, 6080, 5555]),
    st.sampled_from(sorted(describe.UDP_CARRIERS)),
    st.binary(max_size=120),
    st.booleans(),
)
def test_any_payload_of_a_tunnel_port_never_raises(port: int, what: str, payload: bytes, reply: bool) -> None:
    sport, dport = (port, 40000) if reply else (40000, port)
    e = explain.explain(bytes(OUTER / UDP(sport=sport, dport=dport) / payload), udp_ports={5555: what})
    explain.render_text(e, width=80)
    json.dumps(describe.to_json(e))
    if e.stop is not None:
        _stop_is_named(e)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--udp-port", "5555"], "give PORT=WHAT with PORT 1..65535"),
        (["--udp-port", "0=gue"], "give PORT=WHAT with PORT 1..65535"),
        (["--udp-port", "70000=gue"], "give PORT=WHAT with PORT 1..65535"),
        (["--udp-port", "5555=vxlan"], "'vxlan' is not something explain reads in UDP; give one of fou:47, fou:4"),
    ],
)
def test_a_bad_udp_port_is_one_line_naming_what_is_accepted_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    status, out, err = run(capsys, *argv, UDP_WIRE["fou-ipip"].hex())
    assert (status, out) == (2, "")
    assert err.count("\n") == 1 and err.startswith(f"usertunnel explain: error: --udp-port {argv[1]!r}: ")
    assert expected in err


def test_udp_port_on_the_command_line_says_what_ports_carry(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    wires = [UDP_WIRE["fou-ipip"], UDP_WIRE["gue-variant1-ipv4"]]
    path = _capture(tmp_path, describe.LINKTYPE_RAW, wires, "udp.pcap")
    status, out, err = run(capsys, "--pcap", str(path), "--all", "-j", "--udp-port", "5556=fou:4",
                           "--udp-port", "7080=gue")  # fmt: skip
    assert (status, err) == (0, "")
    first, second = json.loads(out)
    titles = [layer[0]["layer"] for layer in first][:3]
    assert titles == [
        "outer IPv4 header",
        "UDP header (FOU: IPIP in UDP)",
        "inner IPv4 header (FOU payload, IPIP in UDP)",
    ]
    assert second[2][0]["layer"].startswith("GUE variant 1") and second[2][0]["value"] == 1
    status, out, _ = run(capsys, UDP_WIRE["gre-in-udp"].hex(), "--udp-port", "4754=none")
    assert status == 0 and "GRE" not in out.splitlines()[0]


@pytest.mark.parametrize(
    ("mode", "kind", "dport"),
    [(Mode.GRE, "fou", 4754), (Mode.GRE, "gue", 6080), (Mode.IPIP, "gue", 6080), (Mode.SIT, "gue", 6080),
     (Mode.IPIP, "fou", 5555), (Mode.SIT, "fou", 5556)],
)  # fmt: skip
def test_what_usertunnel_sends_in_udp_is_explained_with_its_options(mode: Mode, kind: str, dport: int) -> None:
    from usertunnel.core import fou

    encap = fou.Encap(fou.EncapKind(kind), dport=dport, sport=None, csum=True)
    key = 1234 if mode is Mode.GRE else None
    params = TunnelParams(name="t0", mode=mode, local=ipaddress.ip_address(A).packed,
                          remote=ipaddress.ip_address(B).packed, ikey=key, okey=key, encap=encap)  # fmt: skip
    inner = bytes(PING6 if mode is Mode.SIT else _inner("tcp"))
    wire = Tunnel(params).encapsulate(inner)
    assert isinstance(wire, bytes)
    carried = "gue" if kind == "gue" else f"fou:{mode.value.ip_protocol}"
    e = explain.explain(wire, udp_ports={dport: carried})
    assert e.well_formed and e.stop is None, explain.render_text(e)
    udp = e.layers[1]
    assert udp.get("destination port").value == dport  # type: ignore[union-attr]
    assert 32768 <= udp.get("source port").value <= 60999  # type: ignore[union-attr, operator]  # auto: a flow hash
    assert "valid" in udp.get("checksum").meaning  # type: ignore[union-attr]
    if kind == "gue":
        gue = e.layers[2]
        assert [f.value for f in gue.fields] == [0, 0, 0, mode.value.ip_protocol, 0]
    if key is not None:
        gre = next(layer for layer in e.layers if layer.kind == "GRE")
        assert gre.get("key").value == 1234  # type: ignore[union-attr]
    tail = next(i for i, layer in enumerate(e.layers) if layer.title.startswith("inner "))
    assert e.packet[e.layers[tail].offset :] == inner
