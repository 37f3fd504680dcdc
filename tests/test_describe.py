"""One describer (issue 15 item 3): explain, the lab's compact view and --trace's inner summary are three
renderings of teach/describe/'s `Explanation`; none of them reads a packet's bytes itself.

Before, the lab (teach/dissect.py) and --trace (trace.inner_summary) parsed packets on their own, next to
explain's dissector: these tests fail on that code, whose values did not come from explain's fields and
whose refusals were their own words.
"""

from __future__ import annotations

import ast
import ipaddress
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from usertunnel.core import gre, ipv4
from usertunnel.core.checksum import internet_checksum
from usertunnel.teach import compact, explain, trace
from usertunnel.teach.describe import Explanation, Layer, describe, refusal

TEACH = Path(__file__).resolve().parent.parent / "usertunnel" / "teach"
SETTINGS = settings(max_examples=200, deadline=None)


def _ipv4(src: str, dst: str, proto: int, payload: bytes, tos: int, ttl: int, ident: int, df: bool) -> bytes:
    header = ipv4.IPv4Header(
        tos, 20 + len(payload), ident, ipv4.FLAG_DF if df else 0, ttl, proto, 0,
        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
    )  # fmt: skip
    raw = header.pack()
    return raw[:10] + internet_checksum(raw).to_bytes(2, "big") + raw[12:] + payload


@st.composite
def tunnel_packets(draw: st.DrawFn) -> bytes:
    """What the lab captures: IPv4 in GRE (any of checksum, key, sequence number) or in IPIP, carrying ICMP
    echo, UDP or TCP, with random TOS, TTL, identification and DF."""
    transport = draw(st.sampled_from([1, 6, 17]))
    if transport == 1:
        kind = draw(st.sampled_from([0, 8]))
        body = bytes([kind, 0, 0, 0]) + draw(st.binary(min_size=4, max_size=24))
    else:
        body = draw(st.binary(min_size=20, max_size=40))
    word = dict(tos=draw(st.integers(0, 255)), ttl=draw(st.integers(1, 255)), ident=draw(st.integers(0, 65535)))
    inner = _ipv4("203.0.113.1", "203.0.113.2", transport, body, df=draw(st.booleans()), **word)
    if draw(st.booleans()):
        return _ipv4("198.51.100.1", "198.51.100.2", 4, inner, df=True, **word)
    header = gre.GREHeader(
        gre.PROTO_IPV4,
        checksum=0 if draw(st.booleans()) else None,
        key=draw(st.none() | st.integers(0, 2**32 - 1)),
        sequence=draw(st.none() | st.integers(0, 2**32 - 1)),
    )
    carried = header.pack() + inner
    if header.checksum is not None:  # RFC 2784 2.5: over the GRE header and payload
        carried = carried[:4] + internet_checksum(carried).to_bytes(2, "big") + carried[6:]
    return _ipv4("198.51.100.1", "198.51.100.2", 47, carried, df=True, **word)


def _fields(e: Explanation) -> dict[tuple[int, str], int | str]:
    return {(f.offset, f.name): f.value for layer in e.layers for f in layer.fields}


def _ip_layers(e: Explanation) -> list[Layer]:
    return [layer for layer in e.layers if layer.kind == "IPv4"]


@SETTINGS
@given(tunnel_packets())
def test_the_lab_views_values_are_explains_fields_of_the_same_packet(packet: bytes) -> None:
    e = explain.explain(packet)
    fields = _fields(e)
    parts = compact.sections(e)
    sections = [s for s in parts if isinstance(s, compact.Section)]
    assert sections and not [s for s in parts if isinstance(s, str)], parts
    for section, layer in zip([s for s in sections if s.title.endswith("IPv4 header")], _ip_layers(e)[:2], strict=True):
        rows = {r.field: r for r in section.rows}
        assert rows["source"].value == fields[(layer.offset + 12, "source address")]
        assert rows["destination"].value == fields[(layer.offset + 16, "destination address")]
        assert rows["TTL"].value == str(fields[(layer.offset + 8, "TTL")])
        assert rows["total length"].value == str(fields[(layer.offset + 2, "total length")])
        assert int(rows["identification"].value, 16) == fields[(layer.offset + 4, "identification")]
        tos = int(rows["TOS"].value, 16)
        assert (tos >> 2, tos & 3) == (fields[(layer.offset + 1, "DSCP")], fields[(layer.offset + 1, "ECN")])
    for section in sections:
        for row in section.rows:  # every row sits at the offset of a field explain read there
            assert any(offset == row.offset for offset, _ in fields), (section.title, row)
    if packet[9] == 47:
        rows = {r.field: r for r in sections[1].rows}
        for name in ("key", "sequence number"):
            got = next((f.value for f in e.layers[1].fields if f.name == name), None)
            assert (rows[name].value.split(" ")[0] if name in rows else None) == (None if got is None else str(got))


@SETTINGS
@given(tunnel_packets())
def test_the_summaries_of_lab_and_trace_name_explains_addresses(packet: bytes) -> None:
    e = describe(packet)
    outer, inner = _ip_layers(e)[:2]
    line = compact.summary(e)
    assert line.startswith(f"{outer.get('source address').value} > {outer.get('destination address').value}")  # type: ignore[union-attr]
    assert f"| {inner.get('source address').value} > {inner.get('destination address').value}" in line  # type: ignore[union-attr]
    phrase = trace.inner_summary(packet[inner.offset :])
    assert phrase.startswith(f"IPv4 {inner.get('source address').value} > ")  # type: ignore[union-attr]
    assert f" ttl {inner.get('TTL').value} " in phrase  # type: ignore[union-attr]


REFUSED = {
    "empty": b"",
    "not IP": bytes(24),
    "IHL < 5": bytes([0x44]) + bytes(23),
    "cut in the addresses": bytes.fromhex("4500001400004000402f0000c6336401"),
    "IPv4 version, IPv6 length": bytes([0x60]) + bytes(10),
}


def test_a_packet_explain_cannot_parse_gets_the_same_refusal_in_all_three() -> None:
    for what, packet in REFUSED.items():
        e = explain.explain(packet)
        why = refusal(e)
        assert why is not None and why in explain.render_text(e), what
        assert why in compact.render(compact.sections(e)), what
        assert compact.summary(e) == f"unparseable ({why})", what
        assert trace.inner_summary(packet) == f"{len(packet)} bytes that are not an IP packet ({why})", what


def test_no_rendering_reads_packet_bytes_or_parses_headers_itself() -> None:
    """The lab's view and --trace's phrases come from the describer: neither module calls a core parser
    on a packet to describe it (trace's tx/rx lines read the core's own results, not a description)."""
    tree = ast.parse((TEACH / "compact.py").read_text())
    called = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    assert not called & {"parse_ipv4", "parse_gre", "unpack_from", "from_bytes"}
    source = (TEACH / "trace.py").read_text()
    body = source[source.index("def inner_summary") : source.index("def _gre_words")]
    assert "describe(packet)" in body and "data[" not in body
    assert not (TEACH / "dissect.py").exists()
