"""A packet drawn as RFC diagrams draw headers: 32-bit rows, one box per field, as wide as its bits.

Theory of operation: `layout` turns an `Explanation` into one `Block` per header. A field's box starts at
its first bit counted from the header's first byte (the RFC's bit numbering, which `Field.bits` keeps)
and is as wide as its bits; a box that crosses a row's end goes on in the next row. A field over the
same bits as an earlier one (RFC 6040's "ECN after decapsulation" over the ECN bits) is not boxed again
but told with it. Rows that one long field fills whole (an IPv6 address, a payload) are drawn up to four
rows high; a longer field is drawn two rows high with its size, as RFCs draw variable-length data.

`svg` renders the blocks: each header in its own colour, the field's name and value inside its box, and
its meaning and RFC section in the box's <title> (a tooltip where the pointer rests). `page` reuses the
same drawing with links from each box to the field's line in the page.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from ..describe import Explanation, Field, Layer, ending

BIT = 20  # pixels per bit: a 32-bit row is 640 pixels wide
ROW = 40  # pixels per row: the field's name above its value
LEFT = 56  # the column of byte offsets left of the rows
RULER = 36  # the bit numbers above the first row
TITLE = 28  # a header's title above its rows
GAP = 10  # between headers
WIDTH = LEFT + 32 * BIT + 8
FULL_ROWS = 4  # a field filling more whole rows than this is drawn ELIDED rows high
ELIDED = 2
PALETTE = ("#cfe3ff", "#ffdcb0", "#d3efc7", "#f1d0f2", "#fff1a8", "#c9eeee", "#f6cccc", "#ddd7ff")
MONO = "DejaVu Sans Mono, Menlo, Consolas, monospace"
CHAR = 0.6  # a monospace character's width, in font sizes


@dataclass
class Box:
    """One field's box: `number` names it in the page (ids and classes), `start` and `width` in bits from
    its header's first byte; `also` holds the fields told in the same box."""

    number: int
    field: Field
    start: int
    width: int
    also: list[tuple[int, Field]] = dataclasses.field(default_factory=list)


@dataclass
class Piece:
    """The part of a box in one row, or in a run of rows it fills whole (`rows` > 1)."""

    row: int
    col: int  # first bit in the row
    bits: int
    rows: int = 1


@dataclass
class Block:
    """One header: its boxes, and the height of each of its rows in pixels (0 for elided rows)."""

    index: int  # the header's place in the packet: its colour
    layer: Layer
    boxes: list[Box]
    heights: list[int]
    pieces: dict[int, list[Piece]]  # by box number

    @property
    def height(self) -> int:
        return TITLE + sum(self.heights)


def numbered(e: Explanation) -> list[list[tuple[int, Field]]]:
    """Every field of every header with its number in the packet (0, 1, 2... in order)."""
    out: list[list[tuple[int, Field]]] = []
    n = 0
    for layer in e.layers:
        out.append([(n + i, f) for i, f in enumerate(layer.fields)])
        n += len(layer.fields)
    return out


def _span(layer: Layer, f: Field) -> tuple[int, int]:
    """A field's first bit and width, counted from its header's first byte."""
    first = (f.offset - layer.offset) * 8
    if f.bits is None:
        return first, max(f.length * 8, 0)
    return first + f.bits[0], f.bits[1] - f.bits[0] + 1


def _pieces(start: int, width: int) -> list[Piece]:
    out: list[Piece] = []
    at, end = start, start + max(width, 1)
    while at < end:
        if at % 32 == 0 and end - at >= 32:
            rows = (end - at) // 32
            out.append(Piece(at // 32, 0, 32, rows))
            at += rows * 32
        else:
            stop = min(end, (at // 32 + 1) * 32)
            out.append(Piece(at // 32, at % 32, stop - at))
            at = stop
    return out


def layout(e: Explanation) -> list[Block]:
    """The packet's headers as blocks of rows, ready to draw."""
    blocks = []
    for index, (layer, fields) in enumerate(zip(e.layers, numbered(e), strict=True)):
        boxes: list[Box] = []
        for number, f in fields:
            start, width = _span(layer, f)
            owner = next((b for b in boxes if b.start <= start and start + width <= b.start + b.width), None)
            if owner is not None and width > 0:
                owner.also.append((number, f))
            else:
                boxes.append(Box(number, f, start, width))
        pieces = {b.number: _pieces(b.start, b.width) for b in boxes}
        rows = max((p.row + p.rows for ps in pieces.values() for p in ps), default=1)
        heights = [ROW] * rows
        for ps in pieces.values():
            for p in ps:
                if p.rows > FULL_ROWS:
                    for r in range(p.row + ELIDED, p.row + p.rows):
                        heights[r] = 0
        blocks.append(Block(index, layer, boxes, heights, pieces))
    return blocks


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _fit(text: str, pixels: float, size: int) -> str:
    """`text` as it fits in `pixels` at font `size`: whole, cut with an ellipsis, or nothing."""
    room = int((pixels - 6) / (size * CHAR))
    if len(text) <= room:
        return text
    return text[: room - 1] + "…" if room >= 3 else ""


def tooltip(f: Field, also: Sequence[tuple[int, Field]] = ()) -> str:
    """What a box says when the pointer rests on it: name, value, meaning, RFC section, where it is."""
    where = f"offset {f.offset}" + (f", bits {f.bit_range}" if f.bit_range else f", {f.length} bytes")
    lines = [f"{f.name} = {f.shown}", f.meaning, f"{f.rfc} ({where})" if f.rfc else where]
    if f.problem:
        lines.append(f"PROBLEM: {f.problem}")
    for _, more in also:
        lines.append(f"{more.name} = {more.shown}: {more.meaning} ({more.rfc})")
    return "\n".join(lines)


def _ruler(y: int) -> list[str]:
    """The RFC's two lines of bit numbers: tens over units."""
    out = [f'<g class="ruler" font-size="11" text-anchor="middle" font-family="{MONO}">']
    for bit in range(32):
        x = LEFT + bit * BIT + BIT / 2
        if bit % 10 == 0:
            out.append(f'<text x="{x:g}" y="{y + 12}">{bit // 10}</text>')
        out.append(f'<text x="{x:g}" y="{y + 26}">{bit % 10}</text>')
    out.append("</g>")
    return out


def _label(x: int, y: int, w: int, h: int, name: str, value: str, fallback: str) -> list[str]:
    """A box's name over its value, centred in its largest piece, each cut to fit (or the value alone)."""
    name, shown = _fit(name, w, 10), _fit(value, w, 12)
    if shown != value:
        shown = _fit(fallback, w, 12) if _fit(fallback, w, 12) == fallback else shown
    middle = y + h / 2
    anchor = f'x="{x + w / 2:g}" text-anchor="middle" font-family="{MONO}"'
    out = []
    if name:
        out.append(f'<text class="name" {anchor} y="{middle - 4:g}" font-size="10" fill="#333">{escape(name)}</text>')
    if shown:
        out.append(
            f'<text class="value" {anchor} y="{middle + (12 if name else 4):g}" font-size="12" font-weight="bold">'
            f"{escape(shown)}</text>"
        )
    return out


def _box(block: Block, box: Box, y0: int, link: str | None) -> list[str]:
    f = box.field
    numbers = " ".join(f"f{n}" for n in [box.number, *(n for n, _ in box.also)])
    problem = any(x.problem for x in [f, *(m for _, m in box.also)])
    stroke = 'stroke="#c62828" stroke-width="2.5"' if problem else 'stroke="#333" stroke-width="1"'
    tops = [y0 + sum(block.heights[:r]) for r in range(len(block.heights) + 1)]
    out = [f'<g class="box{" problem" if problem else ""}" data-field="{box.number}">']
    if link is not None:
        out[0] = f'<a href="{link}">' + out[0]
    out.append(f"<title>{escape(tooltip(f, box.also))}</title>")
    pieces = []
    for p in block.pieces[box.number]:
        x, w = LEFT + p.col * BIT, p.bits * BIT
        y, h = tops[p.row], tops[p.row + p.rows] - tops[p.row]
        out.append(
            f'<rect class="{numbers}" x="{x}" y="{y}" width="{w}" height="{h}" fill="{colour(block.index)}" {stroke}/>'
        )
        if p.rows > FULL_ROWS:
            size = f"{f.length} bytes" if f.bits is None else f"{box.width} bits"
            out.append(f'<text x="{x + w - 6}" y="{y + h - 6}" font-size="10" text-anchor="end">⋮ {size}</text>')
        pieces.append((w * h, x, y, w, h))
    largest = max(pieces)
    out += _label(*largest[1:], f.name, f.shown, str(f.value))
    for piece in pieces:  # the rest of a box that goes on in another row says whose it is
        if piece is not largest:
            out += _label(*piece[1:], f"({f.name})", "", "")
    out.append("</g></a>" if link is not None else "</g>")
    return out


def _block(block: Block, y0: int, links: str | None) -> list[str]:
    layer = block.layer
    last = max((f.offset + f.length for f in layer.fields), default=layer.offset)
    span = f"offsets {layer.offset}-{last - 1}" if last > layer.offset + 1 else f"offset {layer.offset}"
    title = f"{layer.title} · {span}" + (f" · {layer.rfc}" if layer.rfc else "")
    out = [f'<g class="header" data-layer="{escape(layer.title)}">']
    out.append(f'<rect x="{LEFT}" y="{y0 + 6}" width="14" height="14" fill="{colour(block.index)}" stroke="#333"/>')
    out.append(f'<text x="{LEFT + 20}" y="{y0 + 18}" font-size="13" font-weight="bold">{escape(title)}</text>')
    y = y0 + TITLE
    for row, height in enumerate(block.heights):
        if height:
            out.append(
                f'<text x="{LEFT - 6}" y="{y + 24}" font-size="11" text-anchor="end" fill="#555" '
                f'font-family="{MONO}">{layer.offset + row * 4}</text>'
            )
        y += height
    for box in block.boxes:
        out += _box(block, box, y0 + TITLE, None if links is None else f"#{links}-f{box.number}")
    out.append("</g>")
    return out


def stop_line(e: Explanation) -> tuple[str, bool]:
    """How the explanation ends, as explain's text says it, and whether that is a problem."""
    return ending(e), e.stop is not None and e.stop.malformed


def drawing(e: Explanation, links: str | None = None, heading: str = "") -> tuple[list[str], int]:
    """The SVG elements of one packet and their height; with `links`, each box links to #LINKS-fN."""
    out: list[str] = []
    y = 0
    if heading:
        out.append(f'<text x="0" y="18" font-size="15" font-weight="bold">{escape(_fit(heading, WIDTH, 15))}'
                   f"<title>{escape(heading)}</title></text>")  # fmt: skip
        y += 28
    out += _ruler(y)
    y += RULER
    for block in layout(e):
        out += _block(block, y, links)
        y += block.height + GAP
    text, bad = stop_line(e)
    colour_ = "#c62828" if bad else "#333"
    out.append(f'<text class="stop" x="0" y="{y + 12}" font-size="12" fill="{colour_}">{escape(_fit(text, WIDTH, 12))}'
               f"<title>{escape(text)}</title></text>")  # fmt: skip
    return out, y + 24


STYLE = ".box:hover rect,.box:focus rect{stroke:#e65100;stroke-width:3}"


def svg(explanations: list[tuple[str, Explanation]], title: str) -> str:
    """A standalone SVG document: each (heading, explanation) drawn one under the other."""
    body: list[str] = []
    y = 0
    for heading, e in explanations:
        parts, height = drawing(e, heading=heading)
        body.append(f'<g transform="translate(0 {y})">')
        body += parts
        body.append("</g>")
        y += height + 16
    return "\n".join(
        [
            '<?xml version="1.0" encoding="UTF-8"?>',
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{y}" viewBox="0 0 {WIDTH} {y}" '
            'font-family="DejaVu Sans, Helvetica, Arial, sans-serif">',
            f"<title>{escape(title)}</title>",
            f"<style>{STYLE}</style>",
            f'<rect width="{WIDTH}" height="{y}" fill="#fff"/>',
            *body,
            "</svg>",
            "",
        ]
    )
