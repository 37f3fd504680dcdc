"""A lab's topology: its namespaces with their addresses, the links between them, the tunnels over them.

The lab says where each node goes (`col`, `row` of a grid: labs are small and their figure is known), so
the picture is the same every time. Links are solid lines under the nodes, tunnels dashed curves over
them, each labelled; a NAT router and the public segment's bridge are drawn apart from the hosts, and
the interface the lab captures on is marked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

NODE_W, NODE_H = 172, 78
MARGIN = 24
TOP = MARGIN + 96  # the title, and room for a tunnel's curve over the first row
MONO = "DejaVu Sans Mono, Menlo, Consolas, monospace"
FILLS = {"host": "#e3f2fd", "nat": "#fff3e0", "switch": "#eceff1"}
TUNNEL = "#e65100"


@dataclass(frozen=True)
class Node:
    """A namespace: `label` says what it plays (host A, NAT, POP...), `lines` its addresses."""

    name: str
    label: str
    lines: tuple[str, ...]
    col: float
    row: float
    kind: str = "host"  # host, nat, or switch (the public segment's bridge)


@dataclass(frozen=True)
class Link:
    a: str
    b: str
    label: str


@dataclass
class Network:
    title: str
    nodes: list[Node] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    tunnels: list[Link] = field(default_factory=list)
    capture: tuple[str, str] | None = None  # (node, what): where the lab's packet socket listens
    grid: tuple[int, int] = (210, 150)  # pixels between columns, between rows

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def corner(self, n: Node) -> tuple[float, float]:
        """The top left corner of `n`'s box."""
        return MARGIN + n.col * self.grid[0], TOP + n.row * self.grid[1]

    def centre(self, n: Node) -> tuple[float, float]:
        x, y = self.corner(n)
        return x + NODE_W / 2, y + NODE_H / 2


def _edge(net: Network, n: Node, towards: tuple[float, float]) -> tuple[float, float]:
    """Where the line from `n`'s centre towards a point leaves its box: a tunnel starts at the box's edge."""
    x, y = net.centre(n)
    dx, dy = towards[0] - x, towards[1] - y
    scale = min(NODE_W / 2 / abs(dx) if dx else float("inf"), NODE_H / 2 / abs(dy) if dy else float("inf"))
    return x + dx * min(scale, 1), y + dy * min(scale, 1)


def _label(x: float, y: float, text: str, colour: str = "#333") -> list[str]:
    width = len(text) * 6.4 + 8
    return [
        f'<rect x="{x - width / 2:g}" y="{y - 11:g}" width="{width:g}" height="15" fill="#fff" fill-opacity=".9"/>',
        f'<text x="{x:g}" y="{y:g}" font-size="11" text-anchor="middle" fill="{colour}">{escape(text)}</text>',
    ]


def drawing(net: Network) -> str:
    """The topology as an inline <svg> element."""
    width = MARGIN * 2 + max(n.col for n in net.nodes) * net.grid[0] + NODE_W
    height = TOP + MARGIN + max(n.row for n in net.nodes) * net.grid[1] + NODE_H + 10
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="topology" viewBox="0 0 {width:g} {height:g}" '
        f'width="{width:g}" height="{height:g}" role="img" aria-label="{escape(net.title)}" '
        'font-family="DejaVu Sans, Helvetica, Arial, sans-serif">',
        f'<rect width="{width:g}" height="{height:g}" fill="#fff"/>',
        f'<text x="{MARGIN}" y="{MARGIN}" font-size="14" font-weight="bold">{escape(net.title)}</text>',
    ]
    for link in net.links:
        (x1, y1), (x2, y2) = net.centre(net.node(link.a)), net.centre(net.node(link.b))
        out.append(f'<g class="link" data-a="{escape(link.a)}" data-b="{escape(link.b)}">')
        out.append(f'<line x1="{x1:g}" y1="{y1:g}" x2="{x2:g}" y2="{y2:g}" stroke="#546e7a" stroke-width="3"/>')
        out += _label((x1 + x2) / 2, (y1 + y2) / 2 + 4, link.label)
        out.append("</g>")
    labels: list[str] = []  # the tunnels go under the nodes, their labels over them
    for i, tunnel in enumerate(net.tunnels):
        (x1, y1), (x2, y2) = net.centre(net.node(tunnel.a)), net.centre(net.node(tunnel.b))
        dx, dy = x2 - x1, y2 - y1
        length = max((dx * dx + dy * dy) ** 0.5, 1)
        bow = NODE_H + 60 + 12 * (i % 3)  # sideways from the straight line: over the links, not on them
        cx, cy = (x1 + x2) / 2 + dy / length * bow, (y1 + y2) / 2 - abs(dx) / length * bow
        (x1, y1), (x2, y2) = _edge(net, net.node(tunnel.a), (cx, cy)), _edge(net, net.node(tunnel.b), (cx, cy))
        mx, my = (x1 + 2 * cx + x2) / 4, (y1 + 2 * cy + y2) / 4
        out.append(
            f'<path class="tunnel" data-a="{escape(tunnel.a)}" data-b="{escape(tunnel.b)}" '
            f'd="M{x1:g},{y1:g} Q{cx:g},{cy:g} {x2:g},{y2:g}" fill="none" stroke="{TUNNEL}" stroke-width="3" '
            'stroke-dasharray="9 5"/>'
        )
        labels += _label(mx, my + 4, tunnel.label, TUNNEL)
    for n in net.nodes:
        x, y = net.corner(n)
        rx = 18 if n.kind == "switch" else 6
        out.append(f'<g class="node" data-name="{escape(n.name)}" data-kind="{n.kind}">')
        out.append(
            f'<rect x="{x:g}" y="{y:g}" width="{NODE_W}" height="{NODE_H}" rx="{rx}" fill="{FILLS[n.kind]}" '
            'stroke="#37474f" stroke-width="1.5"/>'
        )
        out.append(
            f'<text x="{x + NODE_W / 2:g}" y="{y + 17:g}" font-size="13" font-weight="bold" '
            f'text-anchor="middle">{escape(n.label)}</text>'
        )
        for i, line in enumerate((n.name, *n.lines)):
            out.append(
                f'<text x="{x + NODE_W / 2:g}" y="{y + 33 + 14 * i:g}" font-size="10.5" text-anchor="middle" '
                f'font-family="{MONO}" fill="{"#555" if i == 0 else "#111"}">{escape(line)}</text>'
            )
        out.append("</g>")
    out += labels
    if net.capture is not None:
        name, what = net.capture
        n = net.node(name)
        x, y = net.corner(n)
        y += NODE_H
        out.append(f'<g class="capture" data-name="{escape(name)}">')
        out.append(f'<circle cx="{x + 14:g}" cy="{y:g}" r="7" fill="#c62828" stroke="#fff" stroke-width="2"/>')
        out.append(f'<text x="{x + 26:g}" y="{y + 16:g}" font-size="11" fill="#c62828">{escape(what)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)
