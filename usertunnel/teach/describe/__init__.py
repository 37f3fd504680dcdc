"""The one packet describer: bytes in, the layers and fields of every header out.

`explain` renders what it says in full (a table, JSON, SVG and HTML through teach/picture/), the lab's
compact view (teach/compact.py) in a few rows per header, and --trace (teach/trace.py) in one phrase per
inner packet. None of them reads a packet's bytes itself: they all read this package's `Explanation`.

Rules of this package:
- Pure: bytes in, values out. Nothing here reads a file, prints or looks at the clock.
- Packet bytes never make `describe` raise. A malformed packet is a result, not an error: every field that
  could be read, then a `Stop` saying at which offset and why parsing ended (`refusal` words it once for
  every rendering).
- Field values are read straight from the bytes, so that a header cut short still shows every field it
  holds. Verdicts come from the core, so that the describer says what usertunnel itself believes: GRE
  header lengths and checksums (`core.gre`), IPv4 header checksums (`core.ipv4`), the Internet checksum
  (`core.checksum`), what a decapsulator does with ECN (`core.ecn`), drop reasons (`core.drops`).

Theory of operation: a `Dissector` walks the packet from the link layer inwards. Each header is a `Layer`
of `Field`s; each field knows its byte offset in the whole packet, its bit range where it is not whole
bytes (bits counted from the most significant bit of the byte at `offset`, as RFC diagrams count them:
GRE's version is bits 13-15 of the GRE header), its value, a sentence, and its RFC section. A `Ctx` tells
each layer where its bytes end and why (the packet's end, or an enclosing length field), so a truncation
is blamed on the right thing. Reading past that end raises `Halt`, which `describe` turns into the `Stop`.

The modules, in the order a packet is read:
  model.py      the data types (Field, Layer, Stop, Explanation) and their plain forms (summary, to_json)
  names.py      what numbers mean: protocols, EtherTypes, ports, ICMP types, each tunnel's tables
  walk.py       the machinery: Ctx, Writer (reads and records fields), Halt, and Walk, the dissector's base
  link.py       Ethernet, 802.1Q, Linux cooked captures
  ip.py         IPv4, IPv6 and its extension headers, RFC 6040's ECN
  gre.py        GRE, PPTP's enhanced GRE and PPP, ERSPAN, WCCP, NHRP
  esp.py        IPsec ESP, opened with --esp-keys when given
  transport.py  ICMP, ICMPv6, TCP
  udp.py        UDP, FOU and GUE
  dissector.py  Dissector (all of the above) and `describe`, the entry point
"""

from .dissector import describe
from .model import Explanation, Field, Layer, Stop, ending, refusal, summary, to_json
from .names import (
    DEFAULT_UDP_PORTS,
    ECN_SHORT,
    ICMP_TYPES,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
    LINKTYPES,
    UDP_CARRIERS,
)

__all__ = [
    "DEFAULT_UDP_PORTS",
    "ECN_SHORT",
    "ICMP_TYPES",
    "LINKTYPE_ETHERNET",
    "LINKTYPE_IPV4",
    "LINKTYPE_IPV6",
    "LINKTYPE_LINUX_SLL",
    "LINKTYPE_LINUX_SLL2",
    "LINKTYPE_RAW",
    "LINKTYPES",
    "UDP_CARRIERS",
    "Explanation",
    "Field",
    "Layer",
    "Stop",
    "describe",
    "ending",
    "refusal",
    "summary",
    "to_json",
]
