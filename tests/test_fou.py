"""FOU and GUE (core.fou, Tunnel._udp, Demux.decapsulate_udp): the wire format against scapy's independent
builder, the GUE header's rules, and the round trip through the receive path."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import GRE
from scapy.packet import Raw

from usertunnel.core import fou
from usertunnel.core.drops import Drop
from usertunnel.core.encap import Demux, Received, Tunnel
from usertunnel.core.errors import ConfigError
from usertunnel.core.params import Mode, TunnelParams
from usertunnel.core.values import parse_encap, parse_port, parse_sport

A, B = "198.51.100.1", "198.51.100.2"
FOU, GUE = fou.EncapKind.FOU, fou.EncapKind.GUE


def _packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def tunnel(mode: Mode = Mode.GRE, encap: fou.Encap | None = None, local: str = A, remote: str = B,
           **options: object) -> Tunnel:  # fmt: skip
    encap = encap or fou.Encap(FOU, dport=5555, sport=4000)
    params = TunnelParams(name="t0", mode=mode, local=_packed(local), remote=_packed(remote), encap=encap,
                          **options)  # type: ignore[arg-type]  # fmt: skip
    return Tunnel(params, ident=7)


def inner4(payload: bytes = b"hello", sport: int = 1234) -> bytes:
    return bytes(IP(src="203.0.113.1", dst="203.0.113.2", ttl=61, tos=0x10) / UDP(sport=sport, dport=53) / payload)


def inner6() -> bytes:
    return bytes(IPv6(src="2001:db8::1", dst="2001:db8::2", hlim=33) / ICMPv6EchoRequest() / b"x")


@pytest.mark.parametrize("csum", [False, True])
def test_gre_in_fou_is_ip_udp_then_the_gre_packet_scapy_builds(csum: bool) -> None:
    t = tunnel(encap=fou.Encap(FOU, dport=4754, sport=40000, csum=csum), ikey=1234, okey=1234, ocsum=True, oseq=True)
    inner = inner4()
    ours = t.encapsulate(inner)
    assert isinstance(ours, bytes)
    udp = UDP(sport=40000, dport=4754) if csum else UDP(sport=40000, dport=4754, chksum=0)
    theirs = IP(src=A, dst=B, ttl=61, tos=0, id=7, flags="DF") / udp  # tos 0: the default, not inherit
    theirs = theirs / GRE(chksum_present=1, key_present=1, seqnum_present=1, key=1234, sequence_number=0, proto=0x0800)
    expected = bytes(theirs / Raw(inner))
    assert ours == expected


@pytest.mark.parametrize(("mode", "proto", "make"), [(Mode.IPIP, 4, inner4), (Mode.SIT, 41, inner6)])
def test_gue_puts_its_four_bytes_naming_the_protocol_before_the_packet(mode: Mode, proto: int, make: object) -> None:
    t = tunnel(mode, fou.Encap(GUE, dport=6080, sport=5000, csum=True))
    inner = make()  # type: ignore[operator]
    ours = t.encapsulate(inner)
    assert isinstance(ours, bytes)
    outer = IP(ours)
    assert outer.proto == 17 and outer[UDP].sport == 5000 and outer[UDP].dport == 6080
    assert bytes(outer[UDP].payload)[:4] == bytes((0, proto, 0, 0))
    assert bytes(outer[UDP].payload)[4:] == inner
    rebuilt = IP(ours)
    del rebuilt.chksum, rebuilt[UDP].chksum, rebuilt[UDP].len, rebuilt.len
    assert bytes(IP(bytes(rebuilt))) == ours  # scapy recomputes both checksums and lengths: the same


def test_a_udp_checksum_that_computes_to_zero_is_sent_as_all_ones() -> None:
    inner = inner4()
    first = tunnel(encap=fou.Encap(FOU, dport=5555, sport=1, csum=True)).encapsulate(inner)
    assert isinstance(first, bytes)
    folded = ~int.from_bytes(first[26:28], "big") & 0xFFFF  # the folded sum with source port 1
    # The source port adds to the sum one for one: pick the port that makes the sum all ones (checksum 0).
    sport = (1 + 0xFFFF - folded) % 0xFFFF or 0xFFFF
    ours = tunnel(encap=fou.Encap(FOU, dport=5555, sport=sport, csum=True)).encapsulate(inner)
    assert isinstance(ours, bytes)
    assert int.from_bytes(ours[26:28], "big") == 0xFFFF  # RFC 768: a computed 0 goes out as all ones
    copy = IP(ours)
    del copy[UDP].chksum
    assert IP(bytes(copy))[UDP].chksum == 0xFFFF  # scapy applies the same rule


def test_default_mtu_counts_the_udp_header_as_linux_does() -> None:
    plain = TunnelParams(name="t0", mode=Mode.GRE, local=_packed(A), remote=_packed(B), okey=1, ikey=1)
    with_fou = tunnel(encap=fou.Encap(FOU, dport=5555), okey=1, ikey=1).params
    with_gue = tunnel(encap=fou.Encap(GUE, dport=5555), okey=1, ikey=1).params
    assert plain.default_mtu(1500) == 1472
    assert with_fou.default_mtu(1500) == 1464  # ip_tunnel: hlen = encap_hlen + tun_hlen
    assert with_gue.default_mtu(1500) == 1460


@pytest.mark.parametrize("kind", [FOU, GUE])
@pytest.mark.parametrize(("mode", "make"), [(Mode.GRE, inner4), (Mode.GRE, inner6), (Mode.IPIP, inner4),
                                            (Mode.SIT, inner6)])  # fmt: skip
def test_what_is_sent_is_received_through_the_udp_path(kind: fou.EncapKind, mode: Mode, make: object) -> None:
    sender = tunnel(mode, fou.Encap(kind, dport=5555), ikey=None)
    receiver = tunnel(mode, fou.Encap(kind, dport=5555), local=B, remote=A)
    demux = Demux()
    demux.add(receiver)
    inner = make()  # type: ignore[operator]
    packet = sender.encapsulate(inner)
    assert isinstance(packet, bytes)
    payload = packet[28:]  # what a UDP socket hands over: no IP header, no UDP header
    got = demux.decapsulate_udp(kind, mode.value.ip_protocol, _packed(A), _packed(B), packet[1], payload)
    assert isinstance(got, Received), got
    assert bytes(got.inner) == inner and got.tunnel is receiver


def test_gre_in_udp_with_the_wrong_key_is_dropped_as_over_ip() -> None:
    sender = tunnel(ikey=1, okey=1)
    receiver = tunnel(local=B, remote=A, ikey=2, okey=2)
    demux = Demux()
    demux.add(receiver)
    packet = sender.encapsulate(inner4())
    assert isinstance(packet, bytes)
    got = demux.decapsulate_udp(FOU, 47, _packed(A), _packed(B), 0, packet[28:])
    assert got is Drop.KEY_MISMATCH
    assert receiver.counters.drops == {Drop.KEY_MISMATCH: 1}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (bytes((0x00, 47, 0, 0)), (47, 4)),  # variant 0, GRE
        (bytes((0x00, 4, 0, 0)), (4, 4)),
        (bytes((0x45, 0, 0, 20)), (4, 0)),  # variant 1: an IPv4 packet itself
        (bytes((0x60, 0, 0, 0)), (41, 0)),  # variant 1: an IPv6 packet itself
        (bytes((0x80, 47, 0, 0)), Drop.GUE_VERSION),  # variant 2
        (bytes((0xC0, 47, 0, 0)), Drop.GUE_VERSION),
        (bytes((0x20, 47, 0, 0)), Drop.GUE_MALFORMED),  # C: a control message
        (bytes((0x01, 47, 0, 0)), Drop.GUE_MALFORMED),  # hlen 1: options we do not implement
        (bytes((0x00, 47, 0x80, 0)), Drop.GUE_MALFORMED),  # flags
        (bytes((0x00, 47)), Drop.GUE_MALFORMED),  # truncated
        (b"", Drop.GUE_MALFORMED),
        (bytes((0x55, 0, 0, 0)), Drop.GUE_MALFORMED),  # variant 1 with neither 4 nor 6
    ],
)
def test_gue_header_rules(header: bytes, expected: object) -> None:
    assert fou.parse_gue(header) == expected


def test_a_bad_gue_header_is_counted_as_unmatched_and_nothing_else_moves() -> None:
    receiver = tunnel(local=B, remote=A, encap=fou.Encap(GUE, dport=6080))
    demux = Demux()
    demux.add(receiver)
    got = demux.decapsulate_udp(GUE, 0, _packed(A), _packed(B), 0, bytes((0x80, 47, 0, 0)) + inner4())
    assert got is Drop.GUE_VERSION
    assert demux.unmatched.drops == {Drop.GUE_VERSION: 1} and receiver.counters.rx_packets == 0


def test_auto_source_ports_keep_a_flow_on_one_port_and_spread_flows() -> None:
    t = tunnel(encap=fou.Encap(FOU, dport=5555))
    ports = set()
    for flow in range(64):
        first = t.encapsulate(inner4(b"a", sport=1000 + flow))
        again = t.encapsulate(inner4(b"bb", sport=1000 + flow))
        assert isinstance(first, bytes) and isinstance(again, bytes)
        assert first[20:22] == again[20:22]  # the same flow, the same port
        port = int.from_bytes(first[20:22], "big")
        assert fou.EPHEMERAL_LOW <= port < fou.EPHEMERAL_HIGH
        ports.add(port)
    assert len(ports) > 48  # 64 flows over some 28,000 ports: few collisions
    t.source_ports = (41000, 41001, 41002)  # the sockets the I/O shell bound
    used = set()
    for flow in range(32):
        packet = t.encapsulate(inner4(b"a", sport=2000 + flow))
        assert isinstance(packet, bytes)
        used.add(int.from_bytes(packet[20:22], "big"))
    assert used == {41000, 41001, 41002}


def test_tcp_flow_ports_are_part_of_the_flow() -> None:
    one = bytes(IP(src="203.0.113.1", dst="203.0.113.2") / TCP(sport=1, dport=2))
    two = bytes(IP(src="203.0.113.1", dst="203.0.113.2") / TCP(sport=1, dport=3))
    assert fou.flow_hash(one) != fou.flow_hash(two)


@given(st.binary(min_size=0, max_size=1400), st.booleans(), st.sampled_from([FOU, GUE]))
@settings(max_examples=200, deadline=None)
def test_property_any_payload_round_trips_and_its_udp_checksum_is_right(
    data: bytes, csum: bool, kind: fou.EncapKind
) -> None:
    sender = tunnel(encap=fou.Encap(kind, dport=5555, sport=4242, csum=csum), ocsum=True, icsum=True)
    receiver = tunnel(encap=fou.Encap(kind, dport=5555), local=B, remote=A, ocsum=True, icsum=True)
    demux = Demux()
    demux.add(receiver)
    inner = inner4(data)
    packet = sender.encapsulate(inner)
    assert isinstance(packet, bytes)
    if csum:
        copy = IP(packet)
        del copy[UDP].chksum
        assert IP(bytes(copy))[UDP].chksum == IP(packet)[UDP].chksum
    got = demux.decapsulate_udp(kind, 47, _packed(A), _packed(B), 0, packet[28:])
    assert isinstance(got, Received) and bytes(got.inner) == inner


@pytest.mark.parametrize(
    ("mode", "options", "message"),
    [
        (Mode.IP6GRETAP, {}, "carry gre, ipip, sit, ip6gre, ipip6 and ip6ip6"),
        (Mode.GRETAP, {}, "carry gre, ipip, sit, ip6gre, ipip6 and ip6ip6"),
        (Mode.SIT, {"remote": None}, "need a fixed --remote, or a hub"),
    ],
)
def test_what_this_version_cannot_carry_in_udp_is_refused(mode: Mode, options: dict[str, object], message: str) -> None:
    outer6 = mode.value.outer == 6
    fields: dict[str, object] = {
        "local": _packed("2001:db8::1" if outer6 else A),
        "remote": _packed("2001:db8::2" if outer6 else B),
    }
    fields.update(options)
    with pytest.raises(ConfigError, match=message):
        TunnelParams(name="t0", mode=mode, encap=fou.Encap(FOU, dport=5555), **fields)  # type: ignore[arg-type]


def test_words_for_encap_ports_and_sport() -> None:
    assert parse_encap("FOU") is FOU and parse_encap("gue") is GUE and parse_encap("none") is None
    assert parse_port("4754", "encap-dport") == 4754 and parse_sport("auto") is None and parse_sport("0x10") == 16
    for bad in ("0", "65536", "x"):
        with pytest.raises(ConfigError, match="a UDP port 1..65535"):
            parse_port(bad, "encap-dport")
    with pytest.raises(ConfigError, match="fou, gue or none"):
        parse_encap("vxlan")


def test_every_drop_reason_gue_included_has_a_direction_for_ip_s_tunnel_show() -> None:
    from usertunnel.run.control import DIRECTION

    assert set(DIRECTION) == set(Drop)


def test_the_configuration_file_takes_the_same_encapsulation() -> None:
    from usertunnel.front.config import ConfigFileError, parse_config

    head = f'[tunnel.g1]\nmode = "gre"\nlocal = "{A}"\nremote = "{B}"\n'
    config = parse_config(head + 'encap = "gue"\nencap_dport = 6080\nencap_sport = 7000\nencap_csum = true\n')
    assert config.tunnels["g1"].options.params.encap == fou.Encap(GUE, dport=6080, sport=7000, csum=True)
    assert parse_config(head + 'encap = "fou"\nencap_dport = 5555\n').tunnels["g1"].options.params.encap == (
        fou.Encap(FOU, dport=5555)
    )
    for bad, message in [
        ('encap = "fou"\n', '"fou" needs encap_dport'),
        ("encap_dport = 5555\n", 'belongs to encap = "fou" or "gue"'),
        ('encap = "fou"\nencap_dport = 70000\n', "a UDP port 1..65535"),
        ('encap = "vxlan"\nencap_dport = 1\n', "fou, gue or none"),
    ]:
        with pytest.raises(ConfigFileError, match=message):
            parse_config(head + bad)


def test_a_hub_tells_two_spokes_behind_one_nat_apart_by_port_and_answers_each_at_its_own() -> None:
    from usertunnel.core.neighbors import HubParams

    hub = Tunnel(TunnelParams(name="hub", mode=Mode.GRE, local=_packed(A), remote=None, ikey=5, okey=5,
                              hub=HubParams((), ()), encap=fou.Encap(FOU, dport=5555)))  # fmt: skip
    demux = Demux()
    demux.add(hub)
    nat = _packed("198.51.100.12")
    spoke = tunnel(local="198.51.100.12", remote=A, ikey=5, okey=5, encap=fou.Encap(FOU, dport=5555, sport=6000))
    for port, host in ((40001, "203.0.113.21"), (40002, "203.0.113.22")):
        inner = bytes(IP(src=host, dst="203.0.113.1") / UDP(sport=1, dport=2) / b"x")
        packet = spoke.encapsulate(inner)
        assert isinstance(packet, bytes)
        got = demux.decapsulate_udp(FOU, 47, nat, _packed(A), 0, packet[28:], 1.0, port)
        assert isinstance(got, Received), got
    assert hub.hub is not None and {(p.outer, p.port) for p in hub.hub.peers.values()} == {(nat, 40001), (nat, 40002)}
    for port, host in ((40001, "203.0.113.21"), (40002, "203.0.113.22")):
        answer = hub.encapsulate(bytes(IP(src="203.0.113.1", dst=host) / UDP(sport=2, dport=1) / b"y"), 1.5)
        assert isinstance(answer, bytes)
        outer = IP(answer)
        assert outer.dst == "198.51.100.12" and outer[UDP].dport == port
        assert outer[UDP].sport == 5555  # from the port it receives on: what the NAT mapped the spoke's packets to


@pytest.mark.parametrize("kind", [FOU, GUE])
@pytest.mark.parametrize("csum", [False, True])
@pytest.mark.parametrize("sport", [None, 4242])
@pytest.mark.parametrize(
    ("mode", "options"),
    [(Mode.GRE, {}), (Mode.GRE, {"ikey": 9, "okey": 9, "oseq": True, "ocsum": True}),
     (Mode.GRE, {"okey": 1, "oseq": True}), (Mode.IPIP, {}), (Mode.SIT, {})],
)  # fmt: skip
def test_the_transmit_plan_of_a_udp_tunnel_is_the_specification_byte_for_byte(
    kind: fou.EncapKind, csum: bool, sport: int | None, mode: Mode, options: dict[str, object]
) -> None:
    encap = fou.Encap(kind, dport=6080, sport=sport, csum=csum)
    planned, spec = tunnel(mode, encap, **options), tunnel(mode, encap, **options)
    assert planned.tx_plan is not None
    for t in (planned, spec):
        t.source_ports = (41000, 41001, 41002)
    make = inner6 if mode is Mode.SIT else inner4
    packets = [make()] if mode is Mode.SIT else [inner4(bytes([n]) * n, sport=1000 + n) for n in range(0, 200, 37)]
    packets.append(bytes(IP(src="203.0.113.1", dst="203.0.113.2") / TCP(sport=5, dport=6) / (b"z" * 1000)))
    for inner in packets if mode is not Mode.SIT else [make(), make()]:
        got = planned.tx_plan(inner)
        assert got is not None, "an ordinary packet takes the plan"
        assert got == spec.encapsulate_header(inner)
    assert planned.counters.as_dict() == spec.counters.as_dict() and planned.ident == spec.ident


def _rx_state(t: Tunnel) -> dict[str, object]:
    return {"counters": t.counters.as_dict(), "window": t.iseq_window.as_dict()}


@given(
    kind=st.sampled_from([FOU, GUE]),
    shape=st.sampled_from([(Mode.GRE, {}), (Mode.GRE, {"ikey": 9, "okey": 9, "iseq": True, "oseq": True,
                                                        "icsum": True, "ocsum": True}),
                           (Mode.GRE, {"ikey": 9, "okey": 9, "icsum": True, "ocsum": True, "csum_verify": "derived"}),
                           (Mode.IPIP, {})]),
    data=st.data(),
)  # fmt: skip
@settings(max_examples=300, deadline=None)
def test_property_the_udp_receive_plan_then_the_specification_is_the_specification(
    kind: fou.EncapKind, shape: tuple[Mode, dict[str, object]], data: st.DataObject
) -> None:
    mode, options = shape
    encap = fou.Encap(kind, dport=6080)
    sender = tunnel(mode, encap, **options)
    planned = tunnel(mode, encap, local=B, remote=A, **options)
    spec = tunnel(mode, encap, local=B, remote=A, **options)
    assert planned.rx_plan is not None
    spec_demux = Demux()
    spec_demux.add(spec)
    for _ in range(data.draw(st.integers(1, 4))):
        inner = inner4(data.draw(st.binary(max_size=40)), sport=data.draw(st.integers(1, 3)))
        packet = sender.encapsulate(inner)
        assert isinstance(packet, bytes)
        payload = bytearray(packet[28:])
        how = data.draw(st.sampled_from(["as is", "as is", "flip", "truncate", "ce", "stranger"]))
        tos, src = 0, _packed(A)
        if how == "flip" and payload:
            at = data.draw(st.integers(0, len(payload) - 1))
            payload[at] ^= 1 << data.draw(st.integers(0, 7))
        elif how == "truncate":
            payload = payload[: data.draw(st.integers(0, len(payload)))]
        elif how == "ce":
            tos = 3
        elif how == "stranger":
            src = _packed("198.51.100.9")
        before = _rx_state(planned)
        got = planned.rx_plan(memoryview(bytes(payload)), src + _packed(B), tos)  # type: ignore[call-arg]
        expected = spec_demux.decapsulate_udp(kind, mode.value.ip_protocol, src, _packed(B), tos, bytes(payload))
        if got is None:
            assert _rx_state(planned) == before, "a plan that declines changes nothing"
            demux = Demux()
            demux.add(planned)
            got_result = demux.decapsulate_udp(kind, mode.value.ip_protocol, src, _packed(B), tos, bytes(payload))
            assert type(got_result) is type(expected) and got_result == expected or (
                isinstance(got_result, Received) and isinstance(expected, Received)
                and bytes(got_result.inner) == bytes(expected.inner)
            )  # fmt: skip
        else:
            assert isinstance(expected, Received), expected
            assert bytes(got) == bytes(expected.inner)
            if how == "as is":
                pass
        assert _rx_state(planned) == _rx_state(spec)


def test_an_ordinary_datagram_takes_the_udp_receive_plan() -> None:
    for kind in (FOU, GUE):
        encap = fou.Encap(kind, dport=6080)
        sender = tunnel(Mode.GRE, encap, ikey=3, okey=3, oseq=True, iseq=True)
        receiver = tunnel(Mode.GRE, encap, local=B, remote=A, ikey=3, okey=3, oseq=True, iseq=True)
        demux = Demux()
        demux.add(receiver)
        for n in range(3):
            inner = inner4(bytes([n]) * 30)
            packet = sender.encapsulate(inner)
            assert isinstance(packet, bytes)
            found = demux.planned_udp(memoryview(packet[28:]), _packed(A) + _packed(B), 0)
            assert found is not None and found[0] is receiver and bytes(found[1]) == inner
        assert receiver.counters.rx_packets == 3


L6, R6 = "2001:db8::1", "2001:db8::2"


@pytest.mark.parametrize("kind", [FOU, GUE])
@pytest.mark.parametrize("limit", [None, 4])
def test_ip6gre_in_udp_is_ipv6_then_the_encapsulation_limit_then_udp_as_scapy_builds_it(
    kind: fou.EncapKind, limit: int | None
) -> None:
    from scapy.layers.inet6 import IPv6ExtHdrDestOpt

    t = tunnel(Mode.IP6GRE, fou.Encap(kind, dport=5555, sport=4000, csum=True), local=L6, remote=R6, ikey=7, okey=7,
               encaplimit=limit, ttl=64)  # fmt: skip
    inner = inner4()
    ours = t.encapsulate(inner)
    assert isinstance(ours, bytes)
    packet = IPv6(ours)
    assert packet.nh == (60 if limit is not None else 17) and packet.hlim == 64
    if limit is not None:
        assert packet[IPv6ExtHdrDestOpt].nh == 17
    udp = packet[UDP]
    assert udp.sport == 4000 and udp.dport == 5555 and udp.len == len(bytes(udp))
    copy = IPv6(ours)
    del copy[UDP].chksum
    assert IPv6(bytes(copy))[UDP].chksum == udp.chksum != 0  # RFC 768 / RFC 8200 8.1, as scapy computes it
    rest = bytes(udp.payload)
    if kind is GUE:
        assert rest[:4] == bytes((0, 47, 0, 0))
        rest = rest[4:]
    assert rest[:8] == bytes.fromhex("2000080000000007") and rest[8:] == inner


@pytest.mark.parametrize("kind", [FOU, GUE])
@pytest.mark.parametrize("csum", [False, True])
@pytest.mark.parametrize(("mode", "make"), [(Mode.IP6GRE, inner4), (Mode.IPIP6, inner4), (Mode.IP6IP6, inner6)])
@pytest.mark.parametrize("limit", [None, 0, 4])
def test_ipv6_outer_udp_plans_equal_the_specification_and_round_trip(
    kind: fou.EncapKind, csum: bool, mode: Mode, make: object, limit: int | None
) -> None:
    encap = fou.Encap(kind, dport=5555, csum=csum)
    options: dict[str, object] = {"encaplimit": limit, "ttl": 64}
    planned = tunnel(mode, encap, local=L6, remote=R6, **options)
    spec = tunnel(mode, encap, local=L6, remote=R6, **options)
    receiver = tunnel(mode, encap, local=R6, remote=L6, **options)
    demux = Demux()
    demux.add(receiver)
    assert planned.tx_plan is not None
    for _ in range(3):
        inner = make()  # type: ignore[operator]
        got = planned.tx_plan(inner)
        assert got is not None and got == spec.encapsulate_header(inner)
        start = 40 + (8 if limit is not None else 0) + 8
        received = demux.decapsulate_udp(kind, mode.value.ip_protocol, _packed(L6), _packed(R6), 0,
                                         (got + inner)[start:])  # fmt: skip
        assert isinstance(received, Received) and bytes(received.inner) == inner
