"""Keepalives (Cisco format) in the core: the line protocol, the packets, reflection."""

from __future__ import annotations

import pytest
from scapy.layers.inet import GRE, IP

from usertunnel.core.encap import Demux, KeepaliveReply, Received, Reflect, Tunnel
from usertunnel.core.errors import ConfigError
from usertunnel.core.keepalive import Change, KeepaliveParams, LineProtocol, parse_keepalive
from usertunnel.core.params import Mode, TunnelParams

A, B = bytes([198, 51, 100, 1]), bytes([198, 51, 100, 2])


def pair(**kw: object) -> tuple[Tunnel, Tunnel]:
    ka = KeepaliveParams(10, 3)
    ours = Tunnel(TunnelParams("t0", Mode.GRE, A, B, keepalive=ka, **kw))  # type: ignore[arg-type]
    peer = Tunnel(TunnelParams("p0", Mode.GRE, B, A, **kw))  # type: ignore[arg-type]
    return ours, peer


def demux(*tunnels: Tunnel) -> Demux:
    d = Demux()
    for t in tunnels:
        d.add(t)
    return d


def test_line_protocol_goes_down_after_retries_unanswered_and_up_on_the_next_reply() -> None:
    line = LineProtocol(KeepaliveParams(10, 3))
    assert [line.sending() for _ in range(3)] == [None, None, None]
    assert line.up
    assert line.sending() is Change.DOWN and not line.up
    assert line.sending() is None  # stays down, no second change
    assert line.reply() is Change.UP and line.up and line.missed == 0
    assert line.as_dict()["changes"] == 2


def test_a_reply_resets_the_count_so_occasional_losses_do_not_take_the_line_down() -> None:
    line = LineProtocol(KeepaliveParams(10, 2))
    for _ in range(10):
        line.sending()
        line.sending()
        line.reply()
    assert line.up and line.changes == 0


def test_keepalive_is_gre_carrying_an_ipv4_packet_from_the_remote_back_to_us_with_a_type_0_gre_header() -> None:
    ours, _ = pair(ikey=7, okey=7)
    pkt = IP(ours.keepalive_request())
    assert (pkt.src, pkt.dst, pkt.proto) == ("198.51.100.1", "198.51.100.2", 47)
    assert pkt[GRE].proto == 0x0800 and pkt[GRE].key == 7
    inner = pkt[GRE].payload
    assert (inner.src, inner.dst, inner.proto, inner.ttl) == ("198.51.100.2", "198.51.100.1", 47, 255)
    assert inner[GRE].proto == 0 and inner[GRE].key == 7 and len(bytes(inner[GRE].payload)) == 0


@pytest.mark.parametrize(
    "options", [{}, {"ikey": 7, "okey": 7}, {"iseq": True, "oseq": True}, {"icsum": True, "ocsum": True}]
)
def test_peer_reflects_our_keepalive_and_the_reflection_is_our_reply(options: dict[str, object]) -> None:
    ours, peer = pair(**options)
    at_peer = demux(peer).decapsulate(ours.keepalive_request())
    assert isinstance(at_peer, Reflect) and peer.reflected == 1
    back = bytes(at_peer.packet)  # what the peer sends back, as it is
    assert isinstance(demux(ours).decapsulate(back), KeepaliveReply)


def test_cisco_keepalive_crafted_with_scapy_is_reflected_unchanged() -> None:
    _, peer = pair()
    inner = IP(src="198.51.100.2", dst="198.51.100.1", ttl=255) / GRE(proto=0)
    cisco = bytes(IP(src="198.51.100.1", dst="198.51.100.2") / GRE(proto=0x0800) / inner)
    result = demux(peer).decapsulate(cisco)
    assert isinstance(result, Reflect) and bytes(result.packet) == bytes(inner)


def test_with_reflection_off_a_peer_keepalive_goes_to_the_host_like_any_packet() -> None:
    ours, _ = pair()
    quiet = Tunnel(TunnelParams("p0", Mode.GRE, B, A, reflect_keepalives=False))
    assert isinstance(demux(quiet).decapsulate(ours.keepalive_request()), Received)


def test_only_packets_from_our_local_to_the_configured_remote_are_reflected() -> None:
    _, peer = pair()
    elsewhere = IP(src="198.51.100.2", dst="198.51.100.77", ttl=255) / GRE(proto=0)
    packet = bytes(IP(src="198.51.100.1", dst="198.51.100.2") / GRE(proto=0x0800) / elsewhere)
    assert isinstance(demux(peer).decapsulate(packet), Received)


@pytest.mark.parametrize(("text", "period", "retries"), [("10", 10.0, 3), ("5,2", 5.0, 2), ("0.5,10", 0.5, 10)])
def test_keepalive_option_reads_period_and_retries_like_cisco(text: str, period: float, retries: int) -> None:
    assert parse_keepalive(text) == KeepaliveParams(period, retries)


@pytest.mark.parametrize("text", ["", "x", "10,x", "0", "10,0", "10,256", "-1"])
def test_bad_keepalive_option_is_refused_with_what_is_accepted(text: str) -> None:
    with pytest.raises(ConfigError, match="keepalive"):
        parse_keepalive(text)


def test_keepalives_need_gre_and_both_endpoints() -> None:
    with pytest.raises(ConfigError, match="need mode gre with both --local and --remote"):
        TunnelParams("t0", Mode.GRE, None, B, keepalive=KeepaliveParams())
    with pytest.raises(ConfigError):
        TunnelParams("t0", Mode.IPIP, A, B, keepalive=KeepaliveParams())
