"""The dissector: every header's reader together, and `describe`, the one entry point."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from ...core import esp
from .esp import ESPHeader
from .gre import GREHeaders
from .ip import IPHeaders
from .link import LinkHeaders
from .model import Explanation, Stop
from .names import DEFAULT_UDP_PORTS, IP_PROTOCOLS, LINKTYPE_RAW
from .transport import TransportHeaders
from .udp import UDPHeaders
from .walk import Ctx, Halt, Opened


class Dissector(LinkHeaders, IPHeaders, GREHeaders, ESPHeader, TransportHeaders, UDPHeaders):
    """Every header's reader, one module each (`Walk` declares them, so that one header can hand on to
    another in a different module). One instance per packet."""


def describe(
    packet: bytes | bytearray | memoryview,
    linktype: int = LINKTYPE_RAW,
    wire_length: int | None = None,
    udp_ports: Mapping[int, str] | None = None,
    esp_keys: esp.EspKeys | None = None,
) -> Explanation:
    """Dissect `packet` (starting at the link layer `linktype` gives; raw IP by default) field by field.

    Never raises on the packet's bytes. `wire_length` is the length the packet had on the wire, when a
    capture kept fewer bytes (its snap length); truncation messages then say so. `udp_ports` says what UDP
    ports carry (a port: "fou:47", "fou:4", "fou:41", "gue" or "none", as `--udp-port`), over the
    defaults: 4754 GRE-in-UDP (RFC 8086), 6080 GUE. The packet cannot say it: `ip fou add` does.
    With `esp_keys` (a tunnel's --esp-keys), an ESP packet whose SPI is one of theirs is opened as its receiver
    would, and what it carried is explained too, as `inside` (only the two ends can see that).
    """
    data = bytes(packet)
    wire = max(wire_length or len(data), len(data))
    why = f"the packet has only {len(data)} bytes"
    if wire > len(data):
        why += f" (the capture kept {len(data)} of its {wire} bytes)"
    ports = {**DEFAULT_UDP_PORTS, **(udp_ports or {})}
    dissector = Dissector(data, ports, esp_keys)
    stop: Stop | None = None
    if not data:
        stop = Stop(0, "empty", "there are no bytes to explain", "")
    else:
        try:
            dissector.link(linktype, Ctx(end=len(data), end_why=why, complete=wire == len(data)))
        except Halt as halt:
            stop = halt.stop
    layers = tuple(layer for layer in dissector.layers if layer.fields)  # a header cut before its first field
    if stop is None and dissector.shortfall is not None:
        stop = replace(dissector.shortfall, layer=layers[-1].title if layers else "")
    inside, title = (None, "") if dissector.opened is None else _describe_inside(dissector.opened, ports)
    return Explanation(data, linktype, wire, layers, stop, inside, title)


def _describe_inside(opened: Opened, udp_ports: Mapping[int, str]) -> tuple[Explanation, str]:
    """What ESP carried, explained as what follows an IP header with protocol = ESP's next header: the GRE
    packet of a tunnel with --esp-keys (47), the inner packet of vti (4), a TCP segment of host traffic..."""
    data, nh = opened.payload, opened.next_header
    why = f"the decrypted payload has only {len(data)} bytes"
    ctx = replace(opened.ctx, end=len(data), end_why=why, complete=True)
    dissector = Dissector(data, udp_ports)
    stop: Stop | None = None
    try:
        if nh in (4, 41):  # ESP tunnel mode (vti): the inner packet itself (RFC 4303 2.6)
            via = f"ESP tunnel mode, next header {nh}, RFC 4303 2.6"
            tunneled = replace(ctx, depth=ctx.depth + 1, role="inner", via=via, expect_version=4 if nh == 4 else 6)
            dissector.ip(0, tunneled)
        else:
            dissector.ip_payload(nh, 0, ctx, ctx, ctx.outer_tos or 0, ctx.pseudo or (b"", b""))
    except Halt as halt:
        stop = halt.stop
    layers = tuple(layer for layer in dissector.layers if layer.fields)
    if stop is None and dissector.shortfall is not None:
        stop = replace(dissector.shortfall, layer=layers[-1].title if layers else "")
    name = IP_PROTOCOLS.get(nh, "not one explain knows")
    title = (
        f"inside ESP, before encryption (only the two ends can see this): opened with the {opened.sa} SA of "
        f"--esp-keys; next header {nh} ({name}); offsets count from the first byte of the decrypted payload"
    )
    return Explanation(data, LINKTYPE_RAW, len(data), layers, stop), title
