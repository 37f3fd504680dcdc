"""Point-to-multipoint hubs (`--remote any`): learning, routing, expiry, per-spoke keys, bounds.

Every packet a hub receives here is built by a spoke `Tunnel` (local = the
spoke, remote = the hub), and every packet the hub sends is read back by that
spoke's `Demux`, so each test is also an end-to-end check of what goes on the
wire. Time is a number passed in (`now`), never a clock.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import GRE, IP

from usertunnel.core import ipv4
from usertunnel.core.drops import Drop
from usertunnel.core.encap import Demux, KeepaliveReply, Received, Reflect, Tunnel
from usertunnel.core.errors import ConfigError
from usertunnel.core.ipv4 import IPv4Header
from usertunnel.core.ipv6 import IPv6Header
from usertunnel.core.keepalive import KeepaliveParams
from usertunnel.core.neighbors import (
    HubParams,
    NeighborTable,
    parse_neighbor,
    parse_spoke,
    parse_timeout,
)
from usertunnel.core.params import Mode, TunnelParams

HUB = bytes([198, 51, 100, 1])
SPOKE1 = bytes([198, 51, 100, 11])
SPOKE2 = bytes([198, 51, 100, 12])
NAT_PUBLIC = bytes([198, 51, 100, 99])
KEY = 1234


def ip4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def packet(src: str, dst: str, payload: bytes = b"hello") -> bytes:
    header = IPv4Header(0, 20 + len(payload), 1, ipv4.FLAG_DF, 64, 17, 0, ip4(src), ip4(dst))
    return header.with_checksum().pack() + payload


def hub_tunnel(hub: HubParams | None = None, **kw: object) -> Tunnel:
    kw.setdefault("ikey", KEY)
    kw.setdefault("okey", KEY)
    params = TunnelParams("hub0", Mode.GRE, HUB, None, hub=hub or HubParams(), **kw)  # type: ignore[arg-type]
    return Tunnel(params)


def spoke(local: bytes = SPOKE1, key: int | None = KEY, **kw: object) -> Tunnel:
    return Tunnel(TunnelParams("spoke0", Mode.GRE, local, HUB, ikey=key, okey=key, **kw))  # type: ignore[arg-type]


def demux_of(tunnel: Tunnel) -> Demux:
    demux = Demux()
    demux.add(tunnel)
    return demux


def as_seen_from(outer_src: bytes, wire: bytes) -> bytes:
    """`wire` as it arrives after a source NAT rewrote its outer source to `outer_src`."""
    ip = IP(wire)
    ip.src = ipaddress.IPv4Address(outer_src).compressed
    del ip.chksum
    return bytes(ip)


def send_from(demux: Demux, sender: Tunnel, inner: bytes, now: float = 0.0, nat: bytes | None = None) -> object:
    wire = sender.encapsulate(inner)
    assert isinstance(wire, bytes)
    if nat is not None:
        wire = as_seen_from(nat, wire)
    return demux.decapsulate(wire, now)


# --- learning and answering ------------------------------------------------------------------------


def test_hub_answers_a_spoke_it_has_never_been_told_about() -> None:
    hub = hub_tunnel()
    demux = demux_of(hub)
    one = spoke()
    got = send_from(demux, one, packet("203.0.113.11", "203.0.113.1"), now=5.0)
    assert isinstance(got, Received)
    reply = hub.encapsulate(packet("203.0.113.1", "203.0.113.11"), now=6.0)
    assert isinstance(reply, bytes)
    outer = IP(reply)
    assert outer.dst == "198.51.100.11" and outer.src == "198.51.100.1"
    assert outer[GRE].key == KEY
    back = demux_of(one).decapsulate(reply)
    assert isinstance(back, Received)
    assert hub.hub is not None and hub.hub.counters.learned == 1


def test_unknown_inner_destination_is_dropped_and_counted_as_no_neighbor() -> None:
    hub = hub_tunnel()
    assert hub.encapsulate(packet("203.0.113.1", "203.0.113.77")) is Drop.NO_NEIGHBOR
    assert hub.counters.drops == {Drop.NO_NEIGHBOR: 1}
    assert hub.counters.tx_packets == 0


def test_hub_follows_a_spoke_whose_nat_rebinds_to_a_new_outer_address() -> None:
    hub = hub_tunnel()
    demux = demux_of(hub)
    one = spoke()
    inner = packet("203.0.113.11", "203.0.113.1")
    assert isinstance(send_from(demux, one, inner, now=1.0, nat=NAT_PUBLIC), Received)
    first = hub.encapsulate(packet("203.0.113.1", "203.0.113.11"), now=2.0)
    assert isinstance(first, bytes) and IP(first).dst == "198.51.100.99"
    rebound = bytes([198, 51, 100, 98])
    assert isinstance(send_from(demux, one, inner, now=3.0, nat=rebound), Received)
    second = hub.encapsulate(packet("203.0.113.1", "203.0.113.11"), now=4.0)
    assert isinstance(second, bytes) and IP(second).dst == "198.51.100.98"
    assert hub.hub is not None and hub.hub.counters.moved == 1


def test_a_packet_with_an_unknown_key_is_dropped_and_teaches_the_hub_nothing() -> None:
    hub = hub_tunnel()
    demux = demux_of(hub)
    stranger = spoke(key=999)
    assert send_from(demux, stranger, packet("203.0.113.11", "203.0.113.1")) is Drop.KEY_MISMATCH
    assert hub.counters.drops == {Drop.KEY_MISMATCH: 1}
    assert hub.hub is not None and hub.hub.hosts == {}
    assert hub.encapsulate(packet("203.0.113.1", "203.0.113.11")) is Drop.NO_NEIGHBOR


def test_learned_entries_expire_after_the_timeout_and_come_back_with_traffic() -> None:
    hub = hub_tunnel(HubParams(timeout=30))
    demux = demux_of(hub)
    one = spoke()
    inner = packet("203.0.113.11", "203.0.113.1")
    send_from(demux, one, inner, now=100.0)
    assert isinstance(hub.encapsulate(packet("203.0.113.1", "203.0.113.11"), now=130.0), bytes)
    assert hub.encapsulate(packet("203.0.113.1", "203.0.113.11"), now=130.5) is Drop.NO_NEIGHBOR
    assert hub.hub is not None and hub.hub.counters.expired == 1 and hub.hub.peers == {}
    send_from(demux, one, inner, now=200.0)
    assert isinstance(hub.encapsulate(packet("203.0.113.1", "203.0.113.11"), now=200.0), bytes)


def test_expire_sweeps_silent_peers_without_traffic() -> None:
    hub = hub_tunnel(HubParams(timeout=10))
    demux = demux_of(hub)
    send_from(demux, spoke(SPOKE1), packet("203.0.113.11", "203.0.113.1"), now=0.0)
    send_from(demux, spoke(SPOKE2), packet("203.0.113.12", "203.0.113.1"), now=8.0)
    assert hub.hub is not None
    assert hub.hub.expire(15.0) == 1
    assert set(hub.hub.hosts) == {ip4("203.0.113.12")}


# --- static neighbors and longest prefix -------------------------------------------------------------


def test_static_neighbors_route_by_longest_prefix_first() -> None:
    hub = hub_tunnel(
        HubParams(
            neighbors=(
                parse_neighbor("203.0.113.0/24=198.51.100.20"),
                parse_neighbor("203.0.113.64/26=198.51.100.21"),
                parse_neighbor("203.0.113.70=198.51.100.22"),
            )
        )
    )

    def outer_dst(dst: str) -> str:
        wire = hub.encapsulate(packet("203.0.113.1", dst))
        assert isinstance(wire, bytes)
        return str(IP(wire).dst)

    assert outer_dst("203.0.113.5") == "198.51.100.20"
    assert outer_dst("203.0.113.65") == "198.51.100.21"
    assert outer_dst("203.0.113.70") == "198.51.100.22"
    assert hub.encapsulate(packet("203.0.113.1", "192.0.2.1")) is Drop.NO_NEIGHBOR


def test_a_learned_host_beats_a_static_prefix_but_not_a_static_host() -> None:
    hub = hub_tunnel(
        HubParams(
            neighbors=(
                parse_neighbor("203.0.113.0/24=198.51.100.20"),
                parse_neighbor("203.0.113.12/32=198.51.100.22"),
            )
        )
    )
    demux = demux_of(hub)
    send_from(demux, spoke(SPOKE1), packet("203.0.113.11", "203.0.113.1"))
    send_from(demux, spoke(SPOKE2), packet("203.0.113.12", "203.0.113.1"))
    to11 = hub.encapsulate(packet("203.0.113.1", "203.0.113.11"))
    to12 = hub.encapsulate(packet("203.0.113.1", "203.0.113.12"))
    assert isinstance(to11, bytes) and IP(to11).dst == "198.51.100.11"
    assert isinstance(to12, bytes) and IP(to12).dst == "198.51.100.22"


def test_ipv6_inner_packets_are_learned_and_routed_too() -> None:
    hub = hub_tunnel(HubParams(neighbors=(parse_neighbor("2001:db8:20::/48=198.51.100.20"),)))
    demux = demux_of(hub)

    def v6(src: str, dst: str) -> bytes:
        a, b = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
        return IPv6Header(0, 0, 4, 59, 64, a, b).pack() + b"abcd"

    assert isinstance(send_from(demux, spoke(SPOKE1), v6("2001:db8:11::1", "2001:db8::1")), Received)
    back = hub.encapsulate(v6("2001:db8::1", "2001:db8:11::1"))
    assert isinstance(back, bytes) and IP(back).dst == "198.51.100.11"
    routed = hub.encapsulate(v6("2001:db8::1", "2001:db8:20::5"))
    assert isinstance(routed, bytes) and IP(routed).dst == "198.51.100.20"


# --- per-spoke keys -------------------------------------------------------------------------------


def spoke_hub() -> Tunnel:
    return hub_tunnel(
        HubParams(spokes=(parse_spoke("1001=203.0.113.16/28"), parse_spoke("1002=203.0.113.32/28"))),
        ikey=None,
        okey=None,
    )


def test_a_spoke_key_cannot_claim_another_spokes_inner_addresses() -> None:
    hub = spoke_hub()
    demux = demux_of(hub)
    liar = spoke(SPOKE1, key=1001)
    assert send_from(demux, liar, packet("203.0.113.33", "203.0.113.1")) is Drop.SPOKE_SOURCE
    assert hub.hub is not None and ip4("203.0.113.33") not in hub.hub.hosts
    assert isinstance(send_from(demux, liar, packet("203.0.113.17", "203.0.113.1")), Received)


def test_a_spoke_prefix_routes_to_where_its_key_was_last_seen_with_its_own_key() -> None:
    hub = spoke_hub()
    demux = demux_of(hub)
    assert hub.encapsulate(packet("203.0.113.1", "203.0.113.40")) is Drop.NO_NEIGHBOR
    two = spoke(SPOKE2, key=1002)
    send_from(demux, two, packet("203.0.113.33", "203.0.113.1"))
    # A host behind spoke 1002 that never sent anything is still reached through the spoke's prefix.
    wire = hub.encapsulate(packet("203.0.113.1", "203.0.113.40"))
    assert isinstance(wire, bytes)
    assert IP(wire).dst == "198.51.100.12" and IP(wire)[GRE].key == 1002
    assert isinstance(demux_of(two).decapsulate(wire), Received)


def test_a_hub_with_only_spoke_keys_refuses_keyless_and_shared_key_packets() -> None:
    hub = spoke_hub()
    demux = demux_of(hub)
    assert send_from(demux, spoke(SPOKE1, key=None), packet("203.0.113.17", "203.0.113.1")) is Drop.KEY_MISMATCH
    assert send_from(demux, spoke(SPOKE1, key=KEY), packet("203.0.113.17", "203.0.113.1")) is Drop.KEY_MISMATCH


# --- sequence numbers per spoke -------------------------------------------------------------------


def test_spokes_sharing_a_key_have_their_own_sequence_streams_both_ways() -> None:
    hub = hub_tunnel(iseq=True, oseq=True)
    demux = demux_of(hub)
    one, two = spoke(SPOKE1, iseq=True, oseq=True), spoke(SPOKE2, iseq=True, oseq=True)
    for _ in range(3):
        assert isinstance(send_from(demux, one, packet("203.0.113.11", "203.0.113.1")), Received)
    # Spoke two starts at 0 although spoke one is at 3: a shared window would drop it as old.
    assert isinstance(send_from(demux, two, packet("203.0.113.12", "203.0.113.1")), Received)
    to_two = hub.encapsulate(packet("203.0.113.1", "203.0.113.12"))
    to_one = hub.encapsulate(packet("203.0.113.1", "203.0.113.11"))
    assert isinstance(to_two, bytes) and isinstance(to_one, bytes)
    assert IP(to_two)[GRE].sequence_number == 0 and IP(to_one)[GRE].sequence_number == 0
    assert isinstance(demux_of(two).decapsulate(to_two), Received)


# --- keepalives through NAT -------------------------------------------------------------------------


def test_a_spokes_keepalive_is_sent_back_to_its_outer_source_through_the_nat() -> None:
    hub = hub_tunnel()
    demux = demux_of(hub)
    private = bytes([10, 0, 0, 1])
    one = spoke(private, keepalive=KeepaliveParams(10, 3))
    got = demux.decapsulate(as_seen_from(NAT_PUBLIC, one.keepalive_request()), 7.0)
    assert isinstance(got, Reflect)
    reply = IP(bytes(got.packet))
    assert reply.src == "198.51.100.1" and reply.dst == "198.51.100.99" and reply[GRE].proto == 0
    assert reply[GRE].key == KEY
    # The NAT rewrites the destination back to the spoke's private address; the spoke sees its reply.
    reply.dst = "10.0.0.1"
    del reply.chksum
    assert isinstance(demux_of(one).decapsulate(bytes(reply)), KeepaliveReply)
    # A keepalive teaches the hub no inner host (its inner source is the hub itself).
    assert hub.hub is not None and hub.hub.hosts == {} and hub.reflected == 1


# --- bounds and configuration ---------------------------------------------------------------------


def test_a_full_peer_table_refuses_new_spokes_and_counts_them() -> None:
    hub = hub_tunnel(HubParams(max_peers=2))
    demux = demux_of(hub)
    for i, now in ((11, 0.0), (12, 0.0)):
        assert isinstance(
            send_from(demux, spoke(bytes([198, 51, 100, i])), packet(f"203.0.113.{i}", "203.0.113.1"), now), Received
        )
    third = spoke(bytes([198, 51, 100, 13]))
    assert send_from(demux, third, packet("203.0.113.13", "203.0.113.1"), 1.0) is Drop.HUB_FULL
    # Once the others have been silent past the timeout, the table has room again.
    assert isinstance(send_from(demux, third, packet("203.0.113.13", "203.0.113.1"), 1000.0), Received)


def test_a_full_host_table_still_delivers_but_learns_nothing_more() -> None:
    hub = hub_tunnel(HubParams(max_hosts=1))
    demux = demux_of(hub)
    one = spoke()
    assert isinstance(send_from(demux, one, packet("203.0.113.11", "203.0.113.1")), Received)
    assert isinstance(send_from(demux, one, packet("203.0.113.111", "203.0.113.1")), Received)
    assert hub.hub is not None and len(hub.hub.hosts) == 1 and hub.hub.counters.table_full == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(11, 14), st.integers(1, 254)), min_size=1, max_size=40))
def test_property_the_hub_always_answers_the_last_outer_address_a_host_was_seen_from(
    events: list[tuple[int, int]],
) -> None:
    hub = hub_tunnel()
    demux = demux_of(hub)
    last: dict[int, int] = {}
    for outer, host in events:
        sender = spoke(bytes([198, 51, 100, outer]))
        assert isinstance(send_from(demux, sender, packet(f"203.0.113.{host}", "203.0.113.1")), Received)
        last[host] = outer
    for host, outer in last.items():
        wire = hub.encapsulate(packet("203.0.113.1", f"203.0.113.{host}"))
        assert isinstance(wire, bytes) and IP(wire).dst == f"198.51.100.{outer}"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("203.0.113.0/24", "PREFIX=OUTER_ADDR"),
        ("203.0.113.1/24=198.51.100.2", "host bits set"),
        ("203.0.113.0/24=2001:db8::1", "must be an IPv4 address"),
        ("nonsense=198.51.100.2", "invalid neighbor prefix"),
    ],
)
def test_bad_neighbors_are_refused_with_what_is_accepted(text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_neighbor(text)


def test_bad_spokes_and_timeouts_are_refused() -> None:
    with pytest.raises(ConfigError, match="KEY=PREFIX"):
        parse_spoke("1001")
    with pytest.raises(ConfigError, match="invalid key"):
        parse_spoke("k=203.0.113.0/28")
    with pytest.raises(ConfigError, match="given twice"):
        HubParams(spokes=(parse_spoke("1=203.0.113.0/28"), parse_spoke("2=203.0.113.0/28")))
    with pytest.raises(ConfigError, match="two --spoke"):
        HubParams(spokes=(parse_spoke("1=203.0.113.0/28"), parse_spoke("1=203.0.113.16/28")))
    with pytest.raises(ConfigError, match="neighbor timeout"):
        parse_timeout("0")
    with pytest.raises(ConfigError, match="--remote any"):
        TunnelParams("x", Mode.GRE, HUB, SPOKE1, hub=HubParams())
    with pytest.raises(ConfigError, match="spoke keys are GRE keys"):
        TunnelParams("x", Mode.IPIP, HUB, None, hub=HubParams(spokes=(parse_spoke("1=203.0.113.0/28"),)))


def test_the_neighbor_table_lists_peers_for_show() -> None:
    table = NeighborTable(HubParams(neighbors=(parse_neighbor("203.0.113.64/26=198.51.100.20"),)), KEY)
    peer = table.peer(SPOKE1, KEY, 10.0)
    assert peer is not None
    table.learn(peer, ip4("203.0.113.11"), 10.0)
    listed = table.as_list(12.5)
    assert listed[0]["outer"] == "198.51.100.20" and listed[0]["static"] is True
    assert listed[0]["prefixes"] == ["203.0.113.64/26"]
    assert listed[1] == {
        "outer": "198.51.100.11",
        "key": KEY,
        "static": False,
        "idle": 2.5,
        "hosts": ["203.0.113.11"],
        "prefixes": [],
    }
