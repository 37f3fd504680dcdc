"""explain --svg and --html: a box per field as wide as its bits, for every mode's packets and for what else
captures hold; the SVG is well-formed XML whatever the bytes; the page lists every field with the value
explain's JSON gives, and needs nothing outside itself. (tests/test_browser.py loads the pages in Chromium.)"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether
from test_explain import MORE_WIRE, UDP_PORTS, UDP_WIRE

from usertunnel.core import esp
from usertunnel.core.encap import Demux, Tunnel
from usertunnel.core.params import VTI_OUTER, Mode, TunnelParams
from usertunnel.teach import describe, explain, trace
from usertunnel.teach.picture import network, packet, page

SVG = "{http://www.w3.org/2000/svg}"


# vti: the outer header as xfrm writes it, and keys (any: the picture shows the SPI and sequence number only).
_SA = esp.SecurityAssociation(0x1001, esp.GCM, bytes(range(20)))
VTI = dict(zip(("ttl", "tos", "pmtudisc"), VTI_OUTER, strict=True)) | {"esp": esp.EspKeys(_SA, _SA)}
VTI6 = {"flowlabel": None, "encaplimit": None}  # vti6: xfrm's IPv6 header


def mode_packet(mode: Mode) -> bytes:
    """A ping as usertunnel's core sends it through a tunnel of `mode` (GRE modes with key 1234)."""
    v6 = mode.value.outer == 6
    local, remote = ("2001:db8::1", "2001:db8::2") if v6 else ("198.51.100.1", "198.51.100.2")
    params = TunnelParams(
        name="t0",
        mode=mode,
        local=ipaddress.ip_address(local).packed,
        remote=None if mode is Mode.ISATAP else ipaddress.ip_address(remote).packed,
        ikey=1234 if mode.value.is_gre else None,
        okey=1234 if mode.value.is_gre else None,
        **(VTI | (VTI6 if v6 else {}) if mode.value.esp else {}),  # type: ignore[arg-type]
    )
    ping4 = IP(src="203.0.113.1", dst="203.0.113.2", id=7) / ICMP(id=1, seq=1) / b"ping"
    if mode.value.ethernet:
        inner = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ping4)
    elif 4 in mode.value.families:
        inner = bytes(ping4)
    else:
        destination = "fe80::5efe:c633:6402" if mode is Mode.ISATAP else "2001:db8:1::2"
        inner = bytes(IPv6(src="2001:db8:1::1", dst=destination) / ICMPv6EchoRequest(id=1, seq=1, data=b"ping"))
    wire = Tunnel(params).encapsulate(inner)
    assert isinstance(wire, bytes), wire
    return wire


MODE_WIRE = {mode.value.name: mode_packet(mode) for mode in Mode}
MALFORMED = {
    "truncated-gre": bytes.fromhex("".join(explain.EXAMPLE_HEX))[:30],
    "bad-gre-checksum": bytes.fromhex("".join(explain.EXAMPLE_HEX).replace("432d", "432e")),
    "big-payload": bytes(IP(src="198.51.100.1", dst="198.51.100.2") / ICMP() / (b"x" * 300)),
}
ALL_WIRE = {**MODE_WIRE, **MORE_WIRE, **MALFORMED}


# --- reading a page back ------------------------------------------------------------------------------------


class PageDOM(HTMLParser):
    """What a page (as written, or as a browser dumps its DOM) holds: its fields' lines, boxes and bytes."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.fields: list[dict[str, str]] = []  # each field's data-* attributes and its <data value>
        self.boxes: list[str] = []  # the data-field of each box
        self.rect_classes: list[str] = []
        self.hex: list[tuple[str, str]] = []  # (data-offset, byte) of each byte of every dump
        self.values: list[str] = []  # the text of the values drawn in boxes
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.nodes: list[str] = []  # a topology's namespaces
        self.tunnels: list[tuple[str, str]] = []
        self.journeys: list[str] = []  # each journey's direction, and the steps of all
        self.steps: list[str] = []
        self.pre: list[str] = []
        self._field: dict[str, str] | None = None
        self._text: list[str] | None = None
        self._byte: str | None = None
        self._pre: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        classes = a.get("class", "").split()
        if "field" in classes:
            self._field = {k.removeprefix("data-"): v for k, v in a.items() if k.startswith("data-")}
        elif tag == "data" and self._field is not None:
            self._field["value"] = a.get("value", "")
        elif tag == "g" and "box" in classes:
            self.boxes.append(a["data-field"])
        elif tag == "rect" and re.search(r"\bf\d+\b", a.get("class", "")):
            self.rect_classes.append(a["class"])
        elif tag == "text" and "value" in classes:
            self._text = []
        elif tag == "span" and "b" in classes:
            self._byte = a["data-offset"]
        elif tag == "g" and "node" in classes:
            self.nodes.append(a["data-name"])
        elif "tunnel" in classes:
            self.tunnels.append((a["data-a"], a["data-b"]))
        elif tag == "svg" and "journey" in classes:
            self.journeys.append(a["data-direction"])
        elif tag == "g" and "stage" in classes:
            self.steps.append(a["data-step"])
        elif tag == "pre":
            self._pre = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("li", "p") and self._field is not None:
            self.fields.append(self._field)
            self._field = None
        elif tag == "text" and self._text is not None:
            self.values.append("".join(self._text))
            self._text = None
        elif tag == "pre" and self._pre is not None:
            self.pre.append("".join(self._pre))
            self._pre = None

    def handle_data(self, data: str) -> None:
        if self._pre is not None:
            self._pre.append(data)
        if self._text is not None:
            self._text.append(data)
        if self._byte is not None:
            self.hex.append((self._byte, data))
            self._byte = None

    def packets(self) -> list[bytes]:
        """The bytes of each packet the page dumps (each dump counts its offsets from 0)."""
        out: list[bytearray] = []
        for offset, byte in self.hex:
            if offset == "0":
                out.append(bytearray())
            out[-1].append(int(byte, 16))
        return [bytes(p) for p in out]


def json_fields(e: describe.Explanation) -> list[dict[str, str]]:
    """Every field of explain's JSON as the page's lines must give it: layer, name, offset, value."""
    return [
        {"layer": str(f["layer"]), "name": str(f["name"]), "offset": str(f["offset"]), "value": str(f["value"])}
        for layer in describe.to_json(e)
        for f in layer
    ]


def page_fields(dom: PageDOM) -> list[dict[str, str]]:
    return [{k: f.get(k, "") for k in ("layer", "name", "offset", "value")} for f in dom.fields]


def assert_page_shows(dom: PageDOM, explanations: list[describe.Explanation]) -> None:
    """The page lists every field of every packet with explain's JSON value, draws a box for every field
    that is not told in another's box, shows each value that fits in its box, and dumps every byte."""
    assert page_fields(dom) == [f for e in explanations for f in json_fields(e)]
    boxed = [str(b.number) for e in explanations for block in packet.layout(e) for b in block.boxes]
    assert dom.boxes == boxed
    told = {n for classes in dom.rect_classes for n in re.findall(r"\bf(\d+)\b", classes)}
    assert told == {str(n) for e in explanations for fields in packet.numbered(e) for n, _ in fields}
    assert "".join(byte for _, byte in dom.hex) == "".join(e.packet.hex() for e in explanations)
    for e in explanations:
        for block in packet.layout(e):
            for b in block.boxes:
                if len(b.field.shown) * 12 * packet.CHAR + 6 <= min(b.width, 32) * packet.BIT:
                    assert b.field.shown in dom.values, f"{b.field.name}: {b.field.shown!r} not drawn"


# --- the drawing ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALL_WIRE))
def test_every_field_has_a_box_as_wide_as_its_bits_starting_at_its_first_bit(name: str) -> None:
    e = explain.explain(ALL_WIRE[name])
    blocks = packet.layout(e)
    assert [block.layer for block in blocks] == list(e.layers)
    for block in blocks:
        for b in block.boxes:
            f = b.field
            bits = f.length * 8 if f.bits is None else f.bits[1] - f.bits[0] + 1
            assert b.width == bits
            first = (f.offset - block.layer.offset) * 8 + (f.bits[0] if f.bits else 0)
            assert b.start == first
            pieces = block.pieces[b.number]
            assert pieces[0].row == first // 32 and pieces[0].col == first % 32
            assert sum(p.bits * p.rows for p in pieces) == max(bits, 1)
            assert all(p.col + p.bits <= 32 for p in pieces)
        # Boxes of one header never overlap: each bit is drawn once.
        drawn = [bit for b in block.boxes for bit in range(b.start, b.start + b.width)]
        assert len(drawn) == len(set(drawn))


def test_a_verdict_over_the_same_bits_is_told_in_that_fields_box() -> None:
    e = explain.explain(MODE_WIRE["gre"])
    inner = next(block for block in packet.layout(e) if block.layer.title.startswith("inner IPv4"))
    ecn = next(b for b in inner.boxes if b.field.name == "ECN")
    assert [f.name for _, f in ecn.also] == ["ECN after decapsulation"]
    assert "ECN after decapsulation = keep" in packet.tooltip(ecn.field, ecn.also)


def test_the_rfc_bit_layout_of_the_gre_header_is_drawn_at_rfc_2784s_columns() -> None:
    e = explain.explain(bytes.fromhex("".join(explain.EXAMPLE_HEX)))
    gre = next(block for block in packet.layout(e) if block.layer.kind == "GRE")
    columns = {b.field.name: (b.start, b.width) for b in gre.boxes}
    assert columns["C"] == (0, 1) and columns["Recur"] == (5, 3) and columns["Flags"] == (8, 5)
    assert columns["Ver"] == (13, 3) and columns["protocol type"] == (16, 16)
    assert columns["checksum"] == (32, 16) and columns["reserved1"] == (48, 16) and columns["key"] == (64, 32)


@pytest.mark.parametrize("name", sorted(UDP_WIRE))
def test_the_udp_and_gue_headers_are_drawn_at_their_rfc_columns(name: str) -> None:
    e = explain.explain(UDP_WIRE[name], udp_ports=UDP_PORTS[name])
    blocks = packet.layout(e)
    udp = next(block for block in blocks if block.layer.kind == "UDP")
    assert udp.layer.title.startswith("UDP header (")  # drawn as the tunnel's header: FOU or GUE
    columns = {b.field.name: (b.start, b.width) for b in udp.boxes}
    assert columns == {"source port": (0, 16), "destination port": (16, 16), "length": (32, 16), "checksum": (48, 16)}
    assert len(udp.heights) == 2  # RFC 768's two rows
    gue = [block for block in blocks if block.layer.kind == "GUE"]
    if name.startswith("gue-variant1"):
        # Variant 1 is no header: two bits of the IP header's first byte, drawn where they are.
        assert [(b.field.name, b.start, b.width) for b in gue[0].boxes] == [("Ver", 0, 2)]
        assert gue[0].layer.offset == blocks[blocks.index(gue[0]) + 1].layer.offset
    elif gue:
        columns = {b.field.name: (b.start, b.width) for b in gue[0].boxes}
        expected = {"Ver": (0, 2), "C": (2, 1), "Hlen": (3, 5), "Proto/ctype": (8, 8), "Flags": (16, 16)}
        assert columns == expected and len(gue[0].heights) == 1  # draft-ietf-intarea-gue-09 3.1: one row
    root = ET.fromstring(packet.svg([(name, e)], name))
    layers = [g.get("data-layer") for g in root.iter(f"{SVG}g") if g.get("class") == "header"]
    assert layers == [layer.title for layer in e.layers]
    assert_page_shows(PageDOM(page.explain_page([(describe.summary(e), e)], name)), [e])


def test_explain_svg_with_udp_port_draws_the_tunnel_the_port_carries(capsys: pytest.CaptureFixture[str]) -> None:
    assert explain.run(parse("--svg", "--udp-port", "5556=fou:4", UDP_WIRE["fou-ipip"].hex())) == 0
    root = ET.fromstring(capsys.readouterr().out)
    layers = [g.get("data-layer") for g in root.iter(f"{SVG}g") if g.get("class") == "header"]
    assert layers[:3] == [
        "outer IPv4 header",
        "UDP header (FOU: IPIP in UDP)",
        "inner IPv4 header (FOU payload, IPIP in UDP)",
    ]  # noqa: E501
    assert explain.run(parse("--html", UDP_WIRE["gue-gre"].hex())) == 0
    dom = PageDOM(capsys.readouterr().out)
    assert_page_shows(dom, [explain.explain(UDP_WIRE["gue-gre"])])
    assert {f["name"] for f in page_fields(dom) if f["layer"].startswith("GUE header")} == {
        "Ver", "C", "Hlen", "Proto/ctype", "Flags"}  # fmt: skip


def test_a_long_payload_is_drawn_two_rows_high_with_its_size() -> None:
    e = explain.explain(MALFORMED["big-payload"])
    block = next(block for block in packet.layout(e) if block.layer.kind == "ICMP")
    data = next(b for b in block.boxes if b.field.name == "data")
    (piece,) = [p for p in block.pieces[data.number] if p.rows > 1]
    assert sum(block.heights[piece.row : piece.row + piece.rows]) == packet.ELIDED * packet.ROW
    assert "⋮ 300 bytes" in packet.svg([("", e)], "t")


@pytest.mark.parametrize("name", sorted(ALL_WIRE))
def test_the_svg_is_well_formed_xml_with_a_box_and_a_tooltip_per_field(name: str) -> None:
    e = explain.explain(ALL_WIRE[name])
    root = ET.fromstring(packet.svg([(name, e)], f"usertunnel explain: {name}"))
    assert root.tag == f"{SVG}svg"
    boxes = [g for g in root.iter(f"{SVG}g") if "box" in g.get("class", "").split()]
    assert len(boxes) == sum(len(block.boxes) for block in packet.layout(e))
    for g in boxes:
        title = g.find(f"{SVG}title")
        assert title is not None and title.text and (" = " in title.text)
    tooltips = "\n".join(g.findtext(f"{SVG}title", "") for g in boxes)
    for layer in e.layers:
        for f in layer.fields:
            assert f"{f.name} = {f.shown}" in tooltips and f.meaning in tooltips


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=120), st.sampled_from(sorted(describe.LINKTYPES)))
def test_any_bytes_draw_well_formed_svg_and_a_page_listing_every_field(data: bytes, linktype: int) -> None:
    e = explain.explain(data, linktype)
    ET.fromstring(packet.svg([("any", e)], "any"))
    assert_page_shows(PageDOM(page.explain_page([("any", e)], "any")), [e])


# --- the page -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("group", ["modes", "captures", "malformed"])
def test_the_page_lists_every_field_with_explains_json_value_and_its_bytes(group: str) -> None:
    wires = {"modes": MODE_WIRE, "captures": MORE_WIRE, "malformed": MALFORMED}[group]
    explanations = [explain.explain(w) for _, w in sorted(wires.items())]
    text = page.explain_page([(describe.summary(e), e) for e in explanations], group)
    assert_page_shows(PageDOM(text), explanations)


def test_a_page_needs_nothing_outside_itself() -> None:
    e = explain.explain(MODE_WIRE["ip6gretap"])
    text = page.explain_page([("p", e)], "p")
    dom = PageDOM(text)
    assert not [tag for tag, _ in dom.tags if tag in ("script", "link", "img", "iframe", "object")]
    refs = [a[k] for _, a in dom.tags for k in ("href", "src") if k in a]
    assert refs and all(ref.startswith("#") for ref in refs)
    assert "url(" not in text and "@import" not in text and "javascript:" not in text
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in text


def test_each_box_links_to_its_fields_line_and_hovering_lights_up_its_bytes() -> None:
    e = explain.explain(MODE_WIRE["gre"])
    text = page.explain_page([("p", e)], "p")
    dom = PageDOM(text)
    ids = {a["id"] for _, a in dom.tags if "id" in a}
    links = [a["href"] for tag, a in dom.tags if tag == "a"]
    assert len(links) == sum(len(block.boxes) for block in packet.layout(e))
    assert all(link[1:] in ids for link in links)
    total = sum(len(layer.fields) for layer in e.layers)
    assert f".packet:has(.f{total - 1}:hover) .f{total - 1}" in text
    # The key's four bytes carry the key field's class, so pointing at its box lights them up.
    key = next((n, f) for fields in packet.numbered(e) for n, f in fields if f.name == "key")
    lit = [int(offset) for offset, _ in dom.hex if f"f{key[0]} " in _byte_classes(text, int(offset)) + " "]
    assert lit == list(range(key[1].offset, key[1].offset + 4))


def _byte_classes(text: str, offset: int) -> str:
    m = re.search(rf'<span class="([^"]*)" data-offset="{offset}">', text)
    assert m is not None
    return m.group(1)


def test_the_same_packet_draws_the_same_bytes() -> None:
    e = explain.explain(MORE_WIRE["nhrp-registration"])
    assert page.explain_page([("p", e)], "p") == page.explain_page([("p", explain.explain(e.packet))], "p")


# --- the command line -----------------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    explain.add_parser(sub)
    return parser.parse_args(["explain", *argv])


def test_explain_svg_and_html_print_the_drawing_and_the_page(capsys: pytest.CaptureFixture[str]) -> None:
    hex_text = "".join(explain.EXAMPLE_HEX)
    assert explain.run(parse("--svg", hex_text)) == 0
    svg = capsys.readouterr().out
    root = ET.fromstring(svg)
    assert root.findtext(f"{SVG}title") == "usertunnel explain: a packet"
    assert explain.run(parse("--html", hex_text)) == 0
    html = capsys.readouterr().out
    assert html.startswith("<!DOCTYPE html>") and "1234 = 0x000004d2 = 0.0.4.210" in html
    e = explain.explain(bytes.fromhex(hex_text))
    assert_page_shows(PageDOM(html), [e])


def test_explain_html_with_all_draws_every_packet_of_a_capture(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from scapy.packet import Raw
    from scapy.utils import wrpcap

    path = f"{tmp_path}/more.pcap"
    names = sorted(MORE_WIRE)
    wrpcap(path, [Raw(MORE_WIRE[n]) for n in names], linktype=describe.LINKTYPE_RAW)
    assert explain.run(parse("--html", "--pcap", path, "--all")) == 0
    dom = PageDOM(capsys.readouterr().out)
    assert_page_shows(dom, [explain.explain(MORE_WIRE[n]) for n in names])
    assert explain.run(parse("--svg", "--pcap", path, "--all")) == 0
    root = ET.fromstring(capsys.readouterr().out)
    headings = [t.findtext(f"{SVG}title") for t in root.iter(f"{SVG}text") if t.findtext(f"{SVG}title")]
    assert sum(1 for h in headings if h and h.startswith("packet ")) == len(names)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--svg", "-j", "4500"], "give one of -j, --svg and --html, not -j and --svg"),
        (["--svg", "--html", "4500"], "give one of -j, --svg and --html, not --svg and --html"),
    ],
)
def test_two_output_forms_at_once_are_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert explain.run(parse(*argv)) == 2
    err = capsys.readouterr().err
    assert err == f"usertunnel explain: error: {message}\n"


def test_json_and_the_page_agree_on_every_value_of_every_mode() -> None:
    for wire in MODE_WIRE.values():
        e = explain.explain(wire)
        dom = PageDOM(page.explain_page([("p", e)], "p"))
        assert [f["value"] for f in page_fields(dom)] == [
            str(f["value"]) for layer in json.loads(json.dumps(describe.to_json(e))) for f in layer
        ]


# --- the journey and the lab's report -------------------------------------------------------------------------


def _tunnel(mode: Mode, local: str, remote: str, **options: object) -> Tunnel:
    params = TunnelParams(
        name=f"{mode.value.name}-lab",
        mode=mode,
        local=ipaddress.IPv4Address(local).packed,
        remote=ipaddress.IPv4Address(remote).packed,
        **options,
    )
    return Tunnel(params)


def traced_lines() -> list[str]:
    """What --trace writes on host A of the lab for a GRE ping out and its reply in (with key, sequence
    numbers and checksums), a packet with the wrong key, and an IPIP ping out."""
    options = {"ikey": 1234, "okey": 1234, "iseq": True, "oseq": True, "icsum": True, "ocsum": True}
    a = _tunnel(Mode.GRE, "198.51.100.1", "198.51.100.2", **options)
    b = _tunnel(Mode.GRE, "198.51.100.2", "198.51.100.1", **options)
    request = bytes(IP(src="203.0.113.1", dst="203.0.113.2") / ICMP(type=8) / b"ping")
    reply = bytes(IP(src="203.0.113.2", dst="203.0.113.1") / ICMP(type=0) / b"ping")
    lines = trace.describe_tx(a, request, a.encapsulate_header(request))
    demux = Demux()
    demux.add(a)
    for wire in (b.encapsulate(reply), _tunnel(Mode.GRE, "198.51.100.2", "198.51.100.1", okey=9).encapsulate(reply)):
        assert isinstance(wire, bytes)
        context = trace.rx_context(demux, wire)
        lines += trace.describe_rx(wire, context, demux.decapsulate(wire))
    ipip = _tunnel(Mode.IPIP, "198.51.100.1", "198.51.100.2")
    lines += trace.describe_tx(ipip, request, ipip.encapsulate_header(request))
    return [f"trace: {line}" for line in lines]


def test_every_line_trace_writes_is_a_known_stage_between_the_right_lanes() -> None:
    journeys = trace.journeys(traced_lines())
    assert [d for d, _ in journeys] == ["tx", "rx", "rx", "tx"]
    for _, stages in journeys:
        assert all(s.step != "(a step this picture does not know)" for s in stages), stages
    (_, sent), (_, received), (_, refused), (_, ipip) = journeys
    assert [(s.source, s.target) for s in (sent[0], sent[-1])] == [
        (trace.TUN_LANE, trace.OUR_LANE),
        (trace.OUR_LANE, trace.WIRE_LANE),
    ]
    assert [s.step.split(" (")[0] for s in sent] == [
        "read a packet from the TUN device",
        "build the GRE header",
        "build the outer IPv4 header",
        "send it on the raw socket",
    ]
    steps = [s.step.split(" (")[0] for s in received]
    assert steps[0] == "read a packet from the raw socket" and "find the tunnel" in steps
    assert {"match the key", "verify the checksum", "check the sequence number"} <= set(steps)
    assert (received[-1].source, received[-1].target) == (trace.OUR_LANE, trace.TUN_LANE)
    assert refused[-1].step == "drop it and count why" and "key_mismatch" in refused[-1].text
    assert ipip[1].step.startswith("no tunnel header")


def _report(packets: list[tuple[str, bytes]]) -> str:
    net = network.Network(
        "usertunnel lab: gre key 1234",
        [
            network.Node("ut-lab-a", "host A", ("ut-veth-a 198.51.100.1/24",), 0, 0),
            network.Node("ut-lab-b", "host B", ("ut-veth-b 198.51.100.2/24",), 2, 0),
        ],
        [network.Link("ut-lab-a", "ut-lab-b", "veth: underlay 198.51.100.0/24")],
        [network.Link("ut-lab-a", "ut-lab-b", "gre key 1234")],
        capture=("ut-lab-b", "packets captured on ut-veth-b"),
    )
    journeys = trace.journeys(traced_lines())
    return page.lab_report(
        "usertunnel lab", "summary: works", net, "ut-lab-a", journeys, packets, "== a <lab> & more\n"
    )


LAB_PACKETS = [(f"{n}. {name}", MODE_WIRE[name]) for n, name in enumerate(("gre", "ipip", "gretap"), 1)]


def assert_lab_report(dom: PageDOM, namespaces: list[str], transcript: str) -> list[describe.Explanation]:
    """A lab's page: its topology's namespaces and tunnel, a journey out and one in, every packet with
    every field as explain gives it, and what the lab printed. Returns the packets' explanations."""
    assert sorted(dom.nodes) == sorted(namespaces)
    assert dom.tunnels and all(a in namespaces and b in namespaces for a, b in dom.tunnels)
    assert dom.journeys == ["tx", "rx"]
    assert any(s.startswith("send it on the raw socket") for s in dom.steps)
    assert any(s.startswith("find the tunnel") for s in dom.steps)
    explanations = [explain.explain(wire) for wire in dom.packets()]
    assert explanations
    assert_page_shows(dom, explanations)
    assert dom.pre and transcript in dom.pre[-1]
    return explanations


def test_the_lab_report_draws_the_topology_the_journey_out_and_in_and_every_packet() -> None:
    dom = PageDOM(_report(LAB_PACKETS))
    explanations = assert_lab_report(dom, ["ut-lab-a", "ut-lab-b"], "== a <lab> & more")
    assert [e.packet for e in explanations] == [wire for _, wire in LAB_PACKETS]
    # The journey out is the one that was sent whole, the journey in the one written to TUN, not the refused.
    assert "build the GRE header (gre_build_header)" in dom.steps
    assert "strip the outer headers, write the inner packet to TUN" in dom.steps
    assert "drop it and count why" not in dom.steps
    ET.fromstring(network.drawing(network.Network("t", [network.Node("a", "a", (), 0, 0)])))


# --- the tutorial's pictures ------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
PICTURE = re.compile(r"<!-- picture: (\S+): (.*?) -->")


def _tutorial_script() -> Any:
    spec = importlib.util.spec_from_file_location("tutorial_script", ROOT / "scripts" / "tutorial.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tutorial_shows_every_picture_and_each_is_what_usertunnel_draws_today() -> None:
    """docs/pictures holds what scripts/tutorial.py drew: explain's drawing and the example's journey are
    drawn again here and must be the same bytes; a lab's topology names the namespaces the lab removed."""
    source = (ROOT / "docs" / "tutorial.src.md").read_text()
    tutorial = (ROOT / "docs" / "tutorial.md").read_text()
    script = _tutorial_script()
    journeys = script.example_journeys()
    pictures = PICTURE.findall(source)
    assert len(pictures) >= 6
    for name, origin in pictures:
        committed = (ROOT / "docs" / "pictures" / name).read_text()
        root = ET.fromstring(committed)
        assert f"](pictures/{name})" in tutorial, name
        if origin.startswith("usertunnel explain --svg "):
            argv = [sys.executable, "-m", "usertunnel", *origin.split()[1:]]
            drawn = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
            assert committed == script._standalone(drawn), f"{name} is stale: run scripts/tutorial.py"
        elif origin in journeys:
            assert committed == script._standalone(journeys[origin]), f"{name} is stale: run scripts/tutorial.py"
        else:
            report = origin.removeprefix("topology of {tmp}/")
            after = tutorial[tutorial.index(f"== report: /tmp/{report}") :]
            removed = after[after.index("== removed ") :].splitlines()[0].removeprefix("== removed ")
            namespaces = set(re.split(r", | and ", removed))
            nodes = {g.get("data-name") for g in root.iter(f"{SVG}g") if g.get("class") == "node"}
            assert nodes == namespaces, name
