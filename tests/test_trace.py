"""--trace: the lines describe each decision the core took, with the values that caused it."""

from __future__ import annotations

import pytest
from traffic import corrupt_last_byte, echo_request

from usertunnel.core.drops import Drop
from usertunnel.core.encap import Demux, Received, Tunnel
from usertunnel.core.params import Mode, TunnelParams
from usertunnel.teach import trace

A, B = bytes([198, 51, 100, 1]), bytes([198, 51, 100, 2])
OUTER = ("198.51.100.2", "198.51.100.1")  # from the peer B to us A
INNER = ("203.0.113.2", "203.0.113.1")


def ours(**kw: object) -> tuple[Tunnel, Demux]:
    tunnel = Tunnel(TunnelParams("t0", Mode.GRE, A, B, **kw))  # type: ignore[arg-type]
    demux = Demux()
    demux.add(tunnel)
    return tunnel, demux


def receive(demux: Demux, packet: bytes) -> list[str]:
    context = trace.rx_context(demux, packet)
    return trace.describe_rx(packet, context, demux.decapsulate(packet))


def test_send_lines_name_each_header_field_and_why_ttl_tos_df_were_chosen() -> None:
    tunnel, _ = ours(okey=1234, oseq=True, ocsum=True, ttl=None, tos=None)
    inner = echo_request(OUTER, ("203.0.113.1", "203.0.113.2"), 1, 1, inner_tos=0xA2)[24:]  # after IPv4 + GRE
    lines = trace.describe_tx(tunnel, inner, tunnel.encapsulate_header(inner))
    text = "\n".join(lines)
    assert lines[0].startswith(f"tx t0: read {len(inner)} bytes from TUN: IPv4 203.0.113.1 > 203.0.113.2 ICMP")
    assert "GRE header (16 bytes): C=1 K=1 S=1, ver 0, proto 0x0800" in text and "key 1234, seq 0" in text
    assert "ttl 64 (inherited from the inner packet)" in text
    assert "tos 0xa2 (DSCP inherited; ECN ECT(0) copied" in text
    assert "DF set (always, pmtudisc)" in text
    assert lines[-1].startswith(f"  sent {len(inner) + 36} bytes (36 of headers) to 198.51.100.2")


def test_send_drop_is_a_line_with_its_reason() -> None:
    tunnel = Tunnel(TunnelParams("t0", Mode.IPIP, A, B))
    v6 = bytes([0x60]) + bytes(39)
    lines = trace.describe_tx(tunnel, v6, tunnel.encapsulate_header(v6))
    assert lines[-1] == f"  dropped: family: {Drop.FAMILY.description}"


def test_receive_lines_follow_lookup_key_checksum_sequence_and_strip() -> None:
    _, demux = ours(ikey=7, iseq=True, icsum=True)
    lines = receive(demux, echo_request(OUTER, INNER, 1, 1, key=7, seq=41, csum=True))
    text = "\n".join(lines)
    assert "lookup: tunnel t0, rule 'exact local+remote'" in text
    assert "key: packet has key 7, tunnel expects key 7: match" in text
    assert "checksum: present, valid" in text
    assert "sequence: 41, last accepted none yet: accepted" in text
    assert lines[-1].startswith("  stripped 36 bytes of outer headers; wrote")
    assert "IPv4 203.0.113.2 > 203.0.113.1" in text
    lines = receive(demux, echo_request(OUTER, INNER, 1, 2, key=7, seq=42, csum=True))
    assert "  sequence: 42, last accepted 41: accepted" in lines


STRANGER = ("198.51.100.9", "198.51.100.1")
DROP_CASES = [
    ({"ikey": 7}, echo_request(OUTER, INNER, 1, 1, key=8), Drop.KEY_MISMATCH, "addresses but expects key 7"),
    ({"ikey": 7}, echo_request(STRANGER, INNER, 1, 1, key=7), Drop.NO_TUNNEL, "remote 198.51.100.9 key 7"),
    ({"icsum": True}, echo_request(OUTER, INNER, 1, 1), Drop.CSUM_MISSING, "checksum: absent (required by icsum)"),
    ({"icsum": True}, corrupt_last_byte(echo_request(OUTER, INNER, 1, 1, csum=True)), Drop.CSUM_BAD, "WRONG"),
    ({}, echo_request(OUTER, INNER, 1, 1, csum=True), Drop.CSUM_UNEXPECTED, "checksum: present, valid"),
    ({"iseq": True}, echo_request(OUTER, INNER, 1, 1), Drop.SEQ_MISSING, "sequence: none, last accepted none yet"),
    ({}, echo_request(OUTER, INNER, 1, 1, tos=0x03), Drop.ECN_CE_NOT_ECT, "ttl 64 tos 0x03 (CE)"),
    ({}, echo_request(OUTER, INNER, 1, 1)[:22], Drop.OUTER_MALFORMED, "rx: read 22 bytes"),
]


@pytest.mark.parametrize(("options", "packet", "reason", "detail"), DROP_CASES, ids=[c[2].value for c in DROP_CASES])
def test_each_receive_drop_names_its_reason_and_the_values_behind_it(
    options: dict[str, object], packet: bytes, reason: Drop, detail: str
) -> None:
    _, demux = ours(**options)
    lines = receive(demux, packet)
    assert lines[-1] == f"  dropped: {reason.value}: {reason.description}"
    assert any(detail in line for line in lines), lines


def test_replayed_sequence_number_line_shows_the_last_accepted_value() -> None:
    _, demux = ours(iseq=True)
    assert isinstance(demux.decapsulate(echo_request(OUTER, INNER, 1, 1, seq=100)), Received)
    lines = receive(demux, echo_request(OUTER, INNER, 1, 2, seq=100))
    assert "  sequence: 100, last accepted 100: refused" in lines
    assert lines[-1].startswith("  dropped: seq_old")


def test_outer_ce_over_ect_inner_is_reported_as_marked() -> None:
    _, demux = ours()
    lines = receive(demux, echo_request(OUTER, INNER, 1, 1, tos=0x03, inner_tos=0x02))
    assert "marked CE: the outer header was CE, RFC 6040" in lines[-1]
