"""A packet's journey through usertunnel, as a sequence picture of the stages --trace reports.

Three lanes, left to right: the TUN device (the host's side of the tunnel), usertunnel, and the raw
socket on the underlay. Each stage is a numbered row: an arrow when the packet moves from one lane to
another (read from TUN, sent, read from the raw socket, written to TUN), a mark on usertunnel's lane for
a step taken inside it (build the GRE header, find the tunnel...). Under it, the step, the code that
takes it, and the trace line with the values behind the decision.
"""

from __future__ import annotations

import textwrap
from html import escape

from ..trace import LANES, OUR_LANE, Stage

WIDTH = 760
LANE_X = {lane: x for lane, x in zip(LANES, (110, 380, 650), strict=True)}
HEAD = 58  # the lanes' names
WRAP = 96  # characters of a trace line per picture line
LINE = 15
MONO = "DejaVu Sans Mono, Menlo, Consolas, monospace"
COLOURS = {"tx": "#1565c0", "rx": "#2e7d32"}


def _arrow(x1: float, x2: float, y: float, colour: str) -> list[str]:
    head = 9 if x2 > x1 else -9
    return [
        f'<line x1="{x1:g}" y1="{y:g}" x2="{x2 - head:g}" y2="{y:g}" stroke="{colour}" stroke-width="2.5"/>',
        f'<polygon points="{x2:g},{y:g} {x2 - head:g},{y - 5:g} {x2 - head:g},{y + 5:g}" fill="{colour}"/>',
    ]


def drawing(direction: str, stages: list[Stage], title: str) -> str:
    """One journey as an inline <svg> element: `direction` is "tx" (sent) or "rx" (received)."""
    colour = COLOURS.get(direction, "#333")
    rows: list[str] = []
    y = HEAD + 14
    for number, stage in enumerate(stages, 1):
        x1, x2 = LANE_X[stage.source], LANE_X[stage.target]
        rows.append(f'<g class="stage" data-step="{escape(stage.step)}">')
        if x1 == x2:
            rows.append(
                f'<rect x="{x1 - 7}" y="{y - 7}" width="14" height="14" rx="3" fill="{colour}" '
                f'stroke="#fff" stroke-width="1.5"/>'
            )
        else:
            rows += _arrow(x1, x2, y, colour)
        label_x = min(x1, x2) + 12 if x1 != x2 else x1 + 14
        anchor = "start"
        if x1 == x2 and x1 > WIDTH / 2:
            label_x, anchor = x1 - 14, "end"
        rows.append(
            f'<text x="{label_x}" y="{y - 6}" font-size="13" font-weight="bold" text-anchor="{anchor}">'
            f"{number}. {escape(stage.step)}</text>"
        )
        lines = [f"where: {stage.where}"] if stage.where else []
        lines += textwrap.wrap(stage.text, WRAP, subsequent_indent="  ") or [""]
        top = y + 10
        height = len(lines) * LINE + 6
        rows.append(f'<rect x="14" y="{top}" width="{WIDTH - 28}" height="{height}" fill="#fff" fill-opacity=".9"/>')
        for i, text in enumerate(lines):
            fill = "#555" if i == 0 and stage.where else "#111"
            rows.append(
                f'<text x="20" y="{top + 12 + i * LINE}" font-size="11.5" font-family="{MONO}" fill="{fill}">'
                f"{escape(text)}</text>"
            )
        rows.append("</g>")
        y = top + height + 30
    height = y - 8
    lanes = []
    for lane, x in LANE_X.items():
        weight = "bold" if lane == OUR_LANE else "normal"
        lanes += [
            f'<rect x="{x - 95}" y="28" width="190" height="26" rx="5" fill="#eceff1" stroke="#455a64"/>',
            f'<text x="{x}" y="46" font-size="13" text-anchor="middle" font-weight="{weight}">{escape(lane)}</text>',
            f'<line x1="{x}" y1="54" x2="{x}" y2="{height}" stroke="#90a4ae" stroke-width="1.5" '
            'stroke-dasharray="5 4"/>',
        ]
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" class="journey" data-direction="{direction}" '
            f'viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img" '
            f'aria-label="{escape(title)}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">',
            f'<rect width="{WIDTH}" height="{height}" fill="#fff"/>',
            f'<text x="8" y="18" font-size="14" font-weight="bold" fill="{colour}">{escape(title)}</text>',
            *lanes,
            *rows,
            "</svg>",
        ]
    )
