"""HTML pages: each packet drawn beside its hex dump, then every field with its value, meaning and RFC.

A page is one file that needs nothing else: the drawing is inline SVG, the style a <style> element, and
there is no script. What JavaScript would do, CSS does, and only as a help: resting the pointer on a box
(or on a byte, or on a field's line) highlights the box, its bytes in the hex dump and its line, through
`:has(.fN:hover)`; clicking a box follows its link to the field's line, which `:target` highlights with
its bytes. Without any of that the page still reads: the drawing, the dump, the list.

Every field's line carries what a program checks (the browser test does): `data-layer`, `data-name`,
`data-offset`, and the value as explain's JSON gives it in a `<data value=...>` element, whose text is
the value as a person reads it.
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape

from ..describe import Explanation, Field, describe, to_json
from ..trace import Stage
from . import journey, network, packet

BYTES_PER_ROW = 8  # narrow enough for a phone; the dump's rows are two of the drawing's

CSS = """
:root{color-scheme:light}
body{font:15px/1.45 system-ui,-apple-system,"DejaVu Sans",Helvetica,Arial,sans-serif;margin:0 auto;
  max-width:1180px;padding:12px 16px;color:#111;background:#fff}
h1{font-size:1.35em;margin:.3em 0} h2{font-size:1.15em;margin:1.4em 0 .4em}
h3{font-size:1em;margin:.8em 0 .2em}
code,pre,data,.hex{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace}
pre{white-space:pre-wrap;overflow-wrap:anywhere;font-size:12.5px;background:#f6f6f6;padding:8px}
details.packet{border-top:1px solid #bbb;padding:.3em 0}
details.packet>summary{font-weight:bold;cursor:pointer;overflow-wrap:anywhere}
.view{display:flex;flex-wrap:wrap;gap:12px 20px;align-items:flex-start;margin:.5em 0}
.view>svg{flex:1 1 440px;width:100%;max-width:704px;height:auto}
.picture svg{width:100%;height:auto}
.picture svg.journey{max-width:760px}
.picture svg.topology{max-width:900px}
.hex{flex:0 0 auto;font-size:13px;line-height:1.55;white-space:pre}
.hex .off{color:#777}
.hex .b{padding:0 .12em;border-radius:3px}
.fields ul{list-style:none;padding:0;margin:0}
.fields li{margin:2px 0;padding:.2em .5em;border-left:8px solid #ddd;overflow-wrap:anywhere}
.fields .name{font-weight:bold}
.fields data{margin-left:.5em;font-weight:bold}
.fields .meaning{display:block;color:#333}
.fields cite{font-style:normal;color:#555;font-size:.9em}
.problem,.stop.bad{color:#b71c1c}
.fields li.problem{border-left-color:#c62828}
.swatch{display:inline-block;width:.9em;height:.9em;border:1px solid #333;vertical-align:-.1em;margin-right:.4em}
.box:hover rect{stroke:#e65100;stroke-width:3}
.box a,a .box{cursor:pointer}
svg text{pointer-events:none}
@media (max-width:640px){body{font-size:14px;padding:8px}.hex{font-size:12px}}
"""


def _layer_classes() -> str:
    """A class per header colour: the background of its bytes, the left border of its fields' lines."""
    rules = []
    for i in range(len(packet.PALETTE)):
        rules.append(f".L{i}{{background:{packet.colour(i)}}}")
        rules.append(f".fields li.L{i}{{border-left-color:{packet.colour(i)};background:none}}")
    return "\n".join(rules)


def hover_rules(count: int) -> str:
    """For fields 0..count-1 of any packet: pointing at one of its parts, or following a link to its line,
    highlights all its parts in that packet."""
    selectors = [
        f".packet:has(.f{n}:hover) .f{n},.packet:has(.f{n}:target) .f{n}" for n in range(count)
    ]  # fmt: skip
    if not selectors:
        return ""
    return ",\n".join(selectors) + "{background:#ffd54f;fill:#ffd54f;outline:2px solid #e65100}"


def hex_dump(e: Explanation) -> str:
    """The packet's bytes, BYTES_PER_ROW a line, each in its header's colour and classed by its fields."""
    owners: list[list[int]] = [[] for _ in e.packet]
    colours: list[int | None] = [None] * len(e.packet)
    for index, fields in enumerate(packet.numbered(e)):
        for number, f in fields:
            for at in range(f.offset, min(f.offset + f.length, len(e.packet))):
                owners[at].append(number)
                colours[at] = index % len(packet.PALETTE)
    lines = []
    for row in range(0, len(e.packet), BYTES_PER_ROW):
        cells = []
        for at in range(row, min(row + BYTES_PER_ROW, len(e.packet))):
            classes = ["b", *(f"f{n}" for n in owners[at])]
            if colours[at] is not None:
                classes.append(f"L{colours[at]}")
            cells.append(f'<span class="{" ".join(classes)}" data-offset="{at}">{e.packet[at]:02x}</span>')
        lines.append(f'<span class="off">{row:04x}</span>  ' + " ".join(cells))
    return '<div class="hex" aria-label="the packet in hex">' + "\n".join(lines) + "</div>"


def _field_line(f: Field, number: int, layer: str, index: int, anchor: str, value: object) -> str:
    where = f"offset {f.offset}" + (f", bits {f.bit_range}" if f.bit_range else f", {f.length} byte(s)")
    classes = f"field f{number} L{index % len(packet.PALETTE)}" + (" problem" if f.problem else "")
    problem = f' <span class="problem">problem: {escape(f.problem)}</span>' if f.problem else ""
    return (
        f'<li id="{anchor}-f{number}" class="{classes}" data-layer="{escape(layer)}" data-name="{escape(f.name)}" '
        f'data-offset="{f.offset}" data-length="{f.length}">'
        f'<span class="name">{escape(f.name)}</span><data value="{escape(str(value))}">{escape(f.shown)}</data>'
        f' <cite>{escape(f.rfc)} · {where}</cite>{problem}<span class="meaning">{escape(f.meaning)}</span></li>'
    )


def field_list(e: Explanation, anchor: str) -> str:
    """Every header with its fields, in the order and words of explain's table; the stop at the end."""
    out = ['<div class="fields">']
    doc = to_json(e)
    for index, (layer, fields) in enumerate(zip(e.layers, packet.numbered(e), strict=True)):
        swatch = f'<span class="swatch L{index % len(packet.PALETTE)}"></span>'
        rfc = f" <cite>{escape(layer.rfc)}</cite>" if layer.rfc else ""
        out.append(
            f'<section class="layer" data-layer="{escape(layer.title)}"><h3>{swatch}{escape(layer.title)}{rfc}</h3><ul>'
        )
        values = [entry["value"] for entry in doc[index] if entry["name"] != "parsing stopped"]
        for (number, f), value in zip(fields, values, strict=True):
            out.append(_field_line(f, number, layer.title, index, anchor, value))
        out.append("</ul></section>")
    text, bad = packet.stop_line(e)
    if e.stop is not None:
        out.append(
            f'<p class="stop field{" bad" if bad else ""}" data-layer="{escape(e.stop.layer)}" '
            f'data-name="parsing stopped" data-offset="{e.stop.offset}" data-length="0">'
            f'<data value="{escape(e.stop.reason)}">{escape(text)}</data></p>'
        )
    else:
        out.append(f'<p class="stop">{escape(text)}</p>')
    out.append("</div>")
    return "\n".join(out)


def packet_section(e: Explanation, heading: str, anchor: str, opened: bool = True) -> str:
    """One packet: a <details> with the heading as its summary, the drawing beside the hex dump, the list."""
    parts, height = packet.drawing(e, links=anchor)
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {packet.WIDTH} {height}" width="{packet.WIDTH}" '
        f'height="{height}" role="img" aria-label="{escape(heading)}">' + "\n".join(parts) + "</svg>"
    )
    return (
        f'<details class="packet" id="{anchor}"{" open" if opened else ""}><summary>{escape(heading)}</summary>'
        f'<div class="view">{svg}\n{hex_dump(e)}</div>\n{field_list(e, anchor)}</details>'
    )


def document(title: str, body: Iterable[str], fields: int) -> str:
    """A whole page: `body`'s parts under `title`; `fields` is the most fields any packet on it has."""
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{escape(title)}</title>",
            f"<style>{CSS}\n{_layer_classes()}\n{hover_rules(fields)}</style>",
            "</head><body>",
            *body,
            "</body></html>",
            "",
        ]
    )


def count_fields(explanations: Iterable[Explanation]) -> int:
    return max((sum(len(layer.fields) for layer in e.layers) for e in explanations), default=0)


def explain_page(items: list[tuple[str, Explanation]], title: str) -> str:
    """`usertunnel explain --html`: each (heading, explanation) as a packet section."""
    body = [f"<h1>{escape(title)}</h1>"]
    body.append(
        "<p>Each header is drawn as RFC diagrams draw it: 32-bit rows, one box per field, as wide as its bits. "
        "Rest the pointer on a box for its meaning and RFC section (its bytes light up in the hex dump); "
        "click it to go to its line below.</p>"
    )
    body += [packet_section(e, heading, f"p{i}") for i, (heading, e) in enumerate(items)]
    return document(title, body, count_fields(e for _, e in items))


def _pick(journeys: list[tuple[str, list[Stage]]], direction: str, last: str) -> list[Stage] | None:
    """The first journey in `direction` that went all the way (its last step is `last`), else the first."""
    mine = [stages for d, stages in journeys if d == direction]
    whole = [stages for stages in mine if stages[-1].text.startswith(last) and " ICMP " in stages[0].text]
    found = whole or [s for s in mine if s[-1].text.startswith(last)] or mine
    return found[0] if found else None


def lab_report(
    title: str,
    verdict: str,
    net: network.Network,
    traced: str,
    journeys: list[tuple[str, list[Stage]]],
    packets: list[tuple[str, bytes]],
    transcript: str,
) -> str:
    """`usertunnel lab --html`: the topology, one packet's journey out and one's in (as `traced`'s --trace
    told them), every packet captured on the wire drawn and listed, and what the lab printed."""
    body = [f"<h1>{escape(title)}</h1>", f'<p class="verdict">{escape(verdict)}</p>']
    body += ["<h2>The topology</h2>", f'<div class="picture">{network.drawing(net)}</div>']
    body.append("<h2>A packet's journey through usertunnel</h2>")
    if traced:
        body.append(
            f"<p>The stages {escape(traced)}'s <code>--trace</code> reported for the first packet it sent into the "
            "tunnel and the first it took out of it: each step, the code that takes it, and the values behind it.</p>"
        )
    shown = 0
    for direction, last, what in (("tx", "sent ", "sent"), ("rx", "stripped ", "received")):
        stages = _pick(journeys, direction, last)
        if stages is not None:
            label = f"{traced}: a packet {what} ({len(stages)} stages)"
            body.append(f'<div class="picture">{journey.drawing(direction, stages, label)}</div>')
            shown += 1
    if not shown:
        why = "" if traced else ": no end of this lab runs with <code>--trace</code> (it follows no FOU or GUE yet)"
        body.append(f"<p>No journey was traced{why}.</p>")
    body.append(f"<h2>The packets on the wire ({len(packets)})</h2>")
    body.append(
        "<p>Every tunnel packet the lab captured, in order, drawn as RFC diagrams draw headers; open one to "
        "see it. Rest the pointer on a box for its meaning and RFC section; click it for its line.</p>"
    )
    explanations = [describe(wire) for _, wire in packets]
    body += [
        packet_section(e, heading, f"p{i}", opened=i < 2)
        for i, ((heading, _), e) in enumerate(zip(packets, explanations, strict=True))
    ]
    body += ["<h2>What the lab printed</h2>", f"<pre>{escape(transcript)}</pre>"]
    return document(title, body, count_fields(explanations))
