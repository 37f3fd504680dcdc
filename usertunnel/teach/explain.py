"""`usertunnel explain`: one packet, byte by byte, every field with its meaning and its RFC section.

Rules of this file: it renders, it does not dissect. The one dissector is teach/describe/ (`describe`,
which this command's users and tests know as `explain.explain`); here are its full text rendering
(`render_text`), the input it reads (`parse_hex`, `parse_udp_port`) and the command (`add_parser`, `run`,
the only functions that read files or stdin and print). Its JSON (`to_json`) and one-line `summary` are
the describer's own plain forms; --svg and --html are teach/picture/'s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
import sys
import textwrap

from .describe import (
    LINKTYPE_RAW,
    LINKTYPES,
    UDP_CARRIERS,
    Explanation,
    Field,
    ending,
    summary,
    to_json,
)
from .describe import describe as explain

__all__ = [  # the command and its text rendering; `explain` is the describer under the name its users know
    "EXAMPLE_HEX",
    "InputError",
    "add_parser",
    "explain",
    "parse_hex",
    "parse_udp_port",
    "render_text",
    "run",
]


# --- rendering --------------------------------------------------------------------------------------------


_COLUMNS = ("offset", "bits", "bytes", "field", "value", "source", "meaning")


def render_text(e: Explanation, width: int | None = None) -> str:
    """The explanation as a person reads it: a table per layer, then where parsing stopped and what is wrong.

    With `width`, meanings wrap so that lines fit in it (continuation lines start under the meaning column).
    """
    lines = [summary(e)]
    rows = [_row(e.packet, f) for layer in e.layers for f in layer.fields]
    widths = [max(len(r[i]) for r in [_COLUMNS, *rows]) for i in range(len(_COLUMNS) - 1)]
    widths[3] = min(widths[3], 24)  # a longer field name or value pushes its line, not the whole table
    widths[4] = min(widths[4], 30)
    indent = 2 + sum(w + 2 for w in widths)

    def fmt(cells: tuple[str, ...]) -> list[str]:
        head = "  " + "  ".join(c.ljust(w) for c, w in zip(cells[:-1], widths, strict=True)) + "  "
        room = (width or 0) - len(head)
        if room < 30 or len(cells[-1]) <= room:
            return [(head + cells[-1]).rstrip()]
        first, *rest = textwrap.wrap(cells[-1], room) or [""]
        return [head + first, *(" " * indent + more for more in rest)]

    for layer in e.layers:
        last = max(f.offset + f.length for f in layer.fields)
        span = f"offsets {layer.offset}-{last - 1}" if last > layer.offset + 1 else f"offset {layer.offset}"
        lines += ["", f"{layer.title}: {span}" + (f" [{layer.rfc}]" if layer.rfc else ""), *fmt(_COLUMNS)]
        for f in layer.fields:
            lines += fmt(_row(e.packet, f))
    lines.append("")
    lines.append(ending(e) + (f" [{e.stop.rfc}]" if e.stop is not None and e.stop.rfc else ""))
    lines += [f"problem at offset {f.offset} ({f.name}): {f.problem}" for f in e.problems]
    if e.inside is not None:
        lines += ["", f"{e.inside_title}:", render_text(e.inside, width)]
    return "\n".join(lines)


def _row(packet: bytes, f: Field) -> tuple[str, ...]:
    raw = packet[f.offset : f.offset + min(f.length, 4)].hex()
    if f.length > 4:
        raw += ".."
    return (str(f.offset), f.bit_range or "", raw, f.name, f.shown, f.rfc, f.meaning)


# --- input ------------------------------------------------------------------------------------------------


class InputError(ValueError):
    """Input explain cannot use (not a packet explanation: the packet never got that far)."""


_SEPARATORS = frozenset(" \t\r\n:-")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_PREFIX = re.compile(r"(?<![0-9A-Fa-f])0[xX]")  # 0x before a word, not the x of a digit pair


def parse_hex(text: str) -> bytes:
    """Bytes from hex digits; whitespace, colons and dashes between them and 0x before a word are allowed."""
    cleaned = _PREFIX.sub("  ", text)  # same length: positions in errors stay those of the input
    digits = []
    for i, ch in enumerate(cleaned):
        if ch in _HEX_DIGITS:
            digits.append(ch)
        elif ch not in _SEPARATORS:
            what = f"byte 0x{ord(ch) - 0xDC00:02x}" if "\udc80" <= ch <= "\udcff" else repr(ch)  # undecodable input
            raise InputError(
                f"not hex: {what} at character {i + 1}; give the packet as hex digits (spaces, colons and dashes "
                "between bytes allowed), or a capture file with --pcap FILE"
            )
    if not digits:
        raise InputError("no hex digits: give the packet as hex, e.g. 45000044... (spaces and colons allowed)")
    if len(digits) % 2:
        raise InputError(f"odd number of hex digits ({len(digits)}): every byte needs two")
    return bytes.fromhex("".join(digits))


def parse_udp_port(text: str) -> tuple[int, str]:
    """`--udp-port PORT=WHAT`: that UDP port carries WHAT (fou:47, fou:4, fou:41, gue; none: plain UDP)."""
    port, sep, what = text.partition("=")
    accepted = ", ".join(UDP_CARRIERS)
    if not sep or not port.strip().isdigit() or not 1 <= int(port) <= 65535:
        raise InputError(f"--udp-port {text!r}: give PORT=WHAT with PORT 1..65535 and WHAT one of {accepted}")
    if what not in UDP_CARRIERS:
        raise InputError(f"--udp-port {text!r}: {what!r} is not something explain reads in UDP; give one of {accepted}")
    return int(port), what


# --- command line -----------------------------------------------------------------------------------------

EXAMPLE_HEX = (
    "4500004400004000402fe620c6336401c6336402",
    "b0000800432d0000000004d200000000",
    "450000201c4640004001a692cb007101cb007102",
    "080019270007000170696e67",
)

DESCRIPTION = """\
Explain a packet byte by byte. For every field of every header: its byte offset,
its bits where it is not whole bytes (counted from the most significant bit, as
RFC diagrams do), the raw bytes, the value, the RFC section that defines it and
what it means. Headers: Ethernet or Linux cooked (from captures); the outer IPv4
or IPv6 header; GRE with every option (the checksum verified, the key also as a
dotted quad, the sequence number); IPIP (protocol 4), SIT (protocol 41) and
IPv6-in-IPv6; the inner IPv4/IPv6 header with what RFC 6040 makes of its ECN;
and its ICMP, ICMPv6, TCP or UDP header. What else GRE carries in real
captures: ERSPAN types I, II and III (protocol types 0x88be, 0x22eb) with the
mirrored frame, NHRP (0x2001: fixed header, mandatory part, client information
entries, extensions), PPTP's enhanced GRE (version 1: payload length, call ID,
sequence and acknowledgment numbers) with its PPP frame, and WCCP's redirect
header (0x883e).

IPsec ESP (protocol 50, RFC 4303), as vti and --esp-keys tunnels send it: the
SPI (which security association) and the sequence number (anti-replay); the
rest is encrypted, and explain says how long it is and stops there. With
--esp-keys FILE (the tunnel's key file) it opens the packet as the receiver
would and explains what ESP carried before encryption too (the GRE packet of
gre with --esp-keys, the inner packet of vti); the keys are never shown.

Tunnels in UDP: FOU (GRE, IPv4 or IPv6 right after the UDP header) and GUE
(its header: variant, C bit, Hlen, Proto/ctype, flags; or variant 1, a bare
IPv4 or IPv6 packet). A packet cannot say what its UDP port carries (on Linux,
`ip fou add` says it): explain reads port 4754 as GRE-in-UDP (RFC 8086) and
6080 as GUE, as the destination port or else the source port (a hub answers
from its own port), and --udp-port PORT=WHAT names any other.

A malformed packet is explained as far as it goes, then explain says at which
offset parsing stopped and why (truncated header, wrong version, IHL < 5,
lying total length, an unknown GRE version, routing bit...), and lists bad
checksums.
That is not an error: the exit status is 0.

The packet, in one of three forms:
  HEX            on the command line, starting at the IP header. Spaces,
                 colons and dashes between bytes are allowed (one argument
                 or several), and 0x before a word.
  (nothing)      the same hex read from standard input, e.g.
                 xxd -p packet.bin | usertunnel explain
  --pcap FILE    a packet from a capture (pcap or pcapng; Ethernet, raw IP or
                 Linux cooked). --index N picks packet N (0-based, default 0);
                 --all explains every packet.
"""

EPILOG = f"""\
example: a GRE packet as usertunnel sends it with --key 1234 --seq --csum
(outer IPv4 198.51.100.1 > 198.51.100.2, GRE with checksum, key and sequence
number 0, inner IPv4 203.0.113.1 > 203.0.113.2, ICMP echo request "ping"):
  usertunnel explain {EXAMPLE_HEX[0]} \\
      {EXAMPLE_HEX[1]} \\
      {EXAMPLE_HEX[2]} \\
      {EXAMPLE_HEX[3]}

the other forms:
  usertunnel explain -j 45:00:00:44:00:00:40:00:40:2f:...   colons between bytes; JSON out
  xxd -p packet.bin | usertunnel explain                     hex on standard input
  usertunnel explain --pcap gre.pcapng --index 3             the 4th packet of a capture
  tcpdump -ni eth0 -w gre.pcap ip proto gre                  capture GRE, then explain
  usertunnel explain --pcap gre.pcap --all                   every packet of it
  usertunnel explain --pcap fou.pcap --udp-port 5555=fou:47  UDP port 5555 carries GRE (FOU)

--udp-port PORT=WHAT (again for each port): fou:47 (FOU carrying GRE, as `ip fou
add port PORT ipproto 47`), fou:4 (IPv4: ipip), fou:41 (IPv6: sit), gue (`ip fou
add port PORT gue`), none (plain UDP, also to turn off 4754 or 6080).

-j prints a list of layers, each a list of fields {{layer, offset, length, bits,
name, value, meaning, rfc, problem}}; where parsing stopped is a last field named
"parsing stopped". With --all, a list of those, one per packet. What ESP
carried, opened with --esp-keys, follows as layers titled "inside ESP, ...",
their offsets counted from the first byte of the decrypted payload:
  usertunnel explain --esp-keys /etc/usertunnel/esp.toml --pcap esp.pcap --all

--svg draws the packet as RFCs draw headers (32-bit rows, a box per field, as
wide as its bits, a colour per header, the value inside); --html makes a page
of it that needs nothing else (no script, font or network) and reads on a
phone: the drawing beside the hex dump, where pointing at a box lights up its
bytes, then every field with its meaning and RFC section. With --all, every
packet, one under the other:
  usertunnel explain --html --pcap gre.pcap --all > gre.html
Exit status: 0 when the packet was explained (even a malformed one); 2 when the
input is unusable (not hex, no such file, not a capture, index out of range,
an --esp-keys file that is unreadable, wrong or readable by others).
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `explain` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "explain",
        help="explain a packet byte by byte: every GRE/FOU/GUE/IPIP/IP/ICMP/TCP/UDP field with its RFC section",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("hex", nargs="*", metavar="HEX", help="the packet as hex (read from stdin when absent)")
    p.add_argument("--pcap", metavar="FILE", help="read the packet from a pcap or pcapng capture file")
    p.add_argument("--index", metavar="N", help="with --pcap: the packet to explain, 0-based (default 0)")
    p.add_argument("--all", action="store_true", help="with --pcap: explain every packet")
    p.add_argument("-j", "--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--udp-port",
        action="append",
        default=[],
        metavar="PORT=fou:47|fou:4|fou:41|gue|none",
        help="what UDP port PORT carries (repeatable): FOU with GRE, IPv4 or IPv6 (ip fou add port PORT ipproto "
        "47|4|41), GUE (ip fou add port PORT gue), or nothing to dissect; 4754 is GRE-in-UDP and 6080 GUE unless "
        "said otherwise",
    )
    p.add_argument(
        "--esp-keys",
        metavar="FILE",
        help="open ESP packets with a tunnel's key file (the one usertunnel up --esp-keys reads; private to its "
        "owner) and explain what they carried before encryption too; the keys themselves are never shown",
    )
    p.add_argument(
        "--svg",
        action="store_true",
        help="print an SVG drawing instead: RFC-style 32-bit rows, a box per field as wide as its bits, each "
        "header its own colour, the value inside the box (its meaning and RFC section as its tooltip)",
    )
    p.add_argument(
        "--html",
        action="store_true",
        help="print a self-contained HTML page instead: the drawing beside the hex dump (pointing at a box "
        "highlights its bytes), then every field with its meaning and RFC section; no script, no network",
    )


def _index(args: argparse.Namespace) -> int | None:
    """The packet --index asks for (None: every packet), after checking the options go together."""
    chosen = [flag for flag, on in (("-j", args.json), ("--svg", args.svg), ("--html", args.html)) if on]
    if len(chosen) > 1:
        raise InputError(f"give one of -j, --svg and --html, not {' and '.join(chosen)}")
    if args.pcap is None:
        if args.index is not None or args.all:
            raise InputError("--index and --all need --pcap FILE")
        return 0
    if args.hex:
        raise InputError("give either HEX or --pcap FILE, not both")
    if args.all:
        if args.index is not None:
            raise InputError("give either --index N or --all, not both")
        return None
    if args.index is None:
        return 0
    text = str(args.index)
    if not text.isdigit():
        raise InputError(f"--index {text!r} is not a packet number: give 0, 1, 2, ... (0-based)")
    return int(text)


def _record(
    path: str, count: int, data: bytes, meta: object, default_linktype: int | None
) -> tuple[int, bytes, int, int]:
    """One packet of a capture as (index, bytes, link type, length on the wire), if explain reads its link type."""
    linktype = int(getattr(meta, "linktype", None) or default_linktype or LINKTYPE_RAW)  # pcapng: per interface
    if linktype not in LINKTYPES:
        accepted = ", ".join(f"{k} ({v})" for k, v in sorted(LINKTYPES.items()))
        why = f"packet {count} of {path!r} has link type {linktype}, which explain does not read"
        raise InputError(f"{why}; accepted: {accepted}")
    return count, bytes(data), linktype, int(getattr(meta, "wirelen", 0) or len(data))


def run(args: argparse.Namespace) -> int:
    """Run `usertunnel explain` with parsed `args`: 0 when explained, 2 when the input is unusable.

    The only function here that reads (stdin, a capture file) and prints. Captures are read with scapy's
    raw reader, which gives the bytes exactly as captured and detects pcapng by itself.
    """
    packets: list[tuple[int, bytes, int, int]] = []
    try:
        index = _index(args)
        udp_ports = dict(parse_udp_port(text) for text in args.udp_port)
        keys = None
        if args.esp_keys is not None:
            from ..core.errors import ConfigError
            from ..io.keyfile import read_esp_keys

            try:
                keys = read_esp_keys(args.esp_keys)
            except ConfigError as exc:
                raise InputError(str(exc).replace("\n", "; ")) from None
        if args.pcap is None:
            if args.hex:
                text = " ".join(args.hex)
            elif sys.stdin is None or sys.stdin.isatty():
                raise InputError("no packet: give it as HEX, pipe hex into standard input, or use --pcap FILE")
            else:
                text = sys.stdin.read()
            packets.append((0, parse_hex(text), LINKTYPE_RAW, 0))
        else:
            from scapy.error import Scapy_Exception
            from scapy.utils import RawPcapReader

            path: str = args.pcap
            if not os.path.isfile(path):
                what = "a directory" if os.path.isdir(path) else "no such file"
                raise InputError(f"cannot read {path!r}: {what} (give a pcap or pcapng capture file)")
            count = 0
            try:
                with RawPcapReader(path) as reader:
                    for data, meta in reader:
                        if index is None or count == index:
                            packets.append(_record(path, count, data, meta, getattr(reader, "linktype", None)))
                        count += 1
                        if index is not None and count > index:
                            break
            except (Scapy_Exception, EOFError, ValueError, struct.error) as exc:
                where = f"past packet {count}" if count else "as a capture"
                raise InputError(f"cannot read {path!r} {where}: {exc} (give a pcap or pcapng file)") from None
            if index is not None and not packets:
                have = f"indexes 0..{count - 1}" if count else "no packets"
                raise InputError(f"--index {index} is out of range: {path!r} holds {count} packet(s) ({have})")
    except InputError as exc:
        print(f"usertunnel explain: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, UnicodeDecodeError) as exc:
        print(f"usertunnel explain: error: cannot read the input: {exc}", file=sys.stderr)
        return 2

    explanations = [(i, explain(data, linktype, wire or None, udp_ports, keys)) for i, data, linktype, wire in packets]
    if args.svg or args.html:
        from .picture import packet, page

        source = f"{args.pcap}" if args.pcap else "a packet"
        items = [
            (f"packet {i} ({LINKTYPES[e.linktype]}): {summary(e)}" if args.pcap else summary(e), e)
            for i, e in explanations
        ]
        items = [
            drawn
            for title, e in items
            for drawn in [(title, e)] + ([(f"{e.inside_title}: {summary(e.inside)}", e.inside)] if e.inside else [])
        ]
        title = f"usertunnel explain: {source}"
        text = packet.svg(items, title) if args.svg else page.explain_page(items, title)
        text = text.rstrip("\n")
    elif args.json:
        docs = [to_json(e) for _, e in explanations]
        text = json.dumps(docs if index is None else docs[0], indent=1)
    else:
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
        heads = [f"packet {i} ({LINKTYPES[e.linktype]}): " if args.pcap else "" for i, e in explanations]
        text = "\n\n".join(head + render_text(e, width) for head, (_, e) in zip(heads, explanations, strict=True))
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `usertunnel explain ... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
