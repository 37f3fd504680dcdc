"""What the describer says about a packet: `Layer`s of `Field`s, a `Stop` where parsing ended early, the
whole `Explanation`; and its two plain forms every rendering shares: `summary` (one line) and `to_json`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# --- the model --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Field:
    """One field of one header, where it is and what it says.

    `bits` is (first, last), counted from the most significant bit of the byte at `offset`; None for a field
    of whole bytes. `length` is how many bytes hold the field. `value` is an int, or text for addresses and
    verdicts; `shown` is how a person reads it. `problem` names what is wrong with it, if anything.
    """

    offset: int
    length: int
    name: str
    value: int | str
    shown: str
    meaning: str
    rfc: str
    bits: tuple[int, int] | None = None
    problem: str | None = None

    @property
    def bit_range(self) -> str | None:
        if self.bits is None:
            return None
        first, last = self.bits
        return str(first) if first == last else f"{first}-{last}"


@dataclass(slots=True)
class Layer:
    """One header: `kind` is stable for programs ("IPv4", "GRE", "TCP"...), `title` is for people."""

    kind: str
    title: str
    offset: int
    rfc: str
    fields: list[Field] = field(default_factory=list)

    def get(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)


@dataclass(frozen=True, slots=True)
class Stop:
    """Where parsing ended before the packet did, and why. `malformed` is False for a normal end
    (an ICMP error's quote ends; a later fragment, whose headers are in the first one)."""

    offset: int
    reason: str
    detail: str
    rfc: str
    malformed: bool = True
    layer: str = ""  # the title of the layer being parsed


@dataclass(frozen=True, slots=True)
class Explanation:
    packet: bytes
    linktype: int
    wire_length: int  # the length on the wire; more than len(packet) when a capture cut it short
    layers: tuple[Layer, ...]
    stop: Stop | None
    # What ESP carried, opened with --esp-keys: its own explanation (offsets count from the first byte of the
    # decrypted payload), and a sentence saying what it is. None without keys, or when it did not open.
    inside: Explanation | None = None
    inside_title: str = ""

    @property
    def problems(self) -> list[Field]:
        return [f for layer in self.layers for f in layer.fields if f.problem]

    @property
    def well_formed(self) -> bool:
        """True when nothing in the packet is wrong (a normal stop, such as a quote's end, is fine), nor in
        what its ESP carried, when that was opened."""
        inside = self.inside is None or self.inside.well_formed
        return (self.stop is None or not self.stop.malformed) and not self.problems and inside


# --- the plain forms ----------------------------------------------------------------------------------------


def summary(e: Explanation) -> str:
    """One line: the layers, with the fields a person looks for first."""
    parts: list[str] = []
    for layer in e.layers:
        values = {f.name: f.shown for f in layer.fields}
        if layer.kind in ("IPv4", "IPv6") and "destination address" in values:
            parts.append(f"{layer.kind} {values['source address']} > {values['destination address']}")
        elif layer.kind == "GRE" and "call ID" in values:
            words = [f"call {values['call ID']}"]
            words += [f"{w} {values[n]}" for w, n in (("seq", "sequence number"), ("ack", "acknowledgment number"))
                      if n in values]  # fmt: skip
            parts.append(f"enhanced GRE ({', '.join(words)})")
        elif layer.kind == "ERSPAN":
            parts.append(layer.title.split(" header")[0])
        elif layer.kind == "NHRP":
            if "type" in values:
                t = layer.get("type")
                parts.append(f"NHRP {t.meaning if t else ''}")
        elif layer.kind == "GRE":
            opts = [
                name if name != "key" else f"key {values['key'].split(' ')[0]}"
                for name in ("checksum", "key")
                if name in values
            ]
            if "sequence number" in values:
                opts.append(f"seq {values['sequence number'].split(' ')[0]}")
            parts.append("GRE" + (f" ({', '.join(opts)})" if opts else ""))
        elif layer.kind == "ESP":
            words = [f"{w} {values[n].split(' ')[-1].strip('()')}" if n == "SPI" else f"{w} {values[n].split(' ')[0]}"
                     for w, n in (("SPI", "SPI"), ("seq", "sequence number")) if n in values]  # fmt: skip
            parts.append("ESP" + (f" ({', '.join(words)}, encrypted)" if words else ""))
        elif layer.kind in ("TCP", "UDP") and "destination port" in values:
            parts.append(f"{layer.kind} {values['source port']} > {values['destination port']}")
        elif layer.kind == "GUE":
            proto, c = layer.get("Proto/ctype"), layer.get("C")
            if proto is None:
                parts.append("GUE variant 1" if layer.title.startswith("GUE variant 1") else "GUE")
            else:
                parts.append(f"GUE ({'control type' if c and c.value else 'proto'} {proto.value})")
        elif layer.kind in ("ICMP", "ICMPv6") and "type" in values:
            t = layer.get("type")
            parts.append(f"{layer.kind} {t.meaning if t else ''}")
        elif layer.kind not in ("IPv6 extension", "trailer", "VLAN"):
            parts.append(layer.kind)
    head = f"{len(e.packet)} bytes"
    if e.wire_length > len(e.packet):
        head += f" (of {e.wire_length} on the wire)"
    return f"{head}: {', '.join(parts) or 'nothing parsed'}"


def ending(e: Explanation) -> str:
    """How a description ends, in the words every rendering uses: all bytes explained, a normal end (a
    quote's end, an encrypted payload), or where parsing stopped and why. That last is the packet's
    refusal, which explain, the lab's view and --trace all give the same way (see `refusal`)."""
    if e.stop is None:
        return f"end: all {len(e.packet)} bytes explained"
    head = "parsing stopped at" if e.stop.malformed else "explained up to"
    return f"{head} offset {e.stop.offset}: {e.stop.reason}: {e.stop.detail}"


def refusal(e: Explanation) -> str | None:
    """Why the packet could not be read to its end (`ending`), or None when nothing in it stopped parsing."""
    return ending(e) if e.stop is not None and e.stop.malformed else None


def to_json(e: Explanation) -> list[list[dict[str, object]]]:
    """A list of layers, each a list of fields {layer, offset, length, bits, name, value, meaning, rfc, problem}.

    Where parsing stopped is a last field named "parsing stopped" (value: the reason) in the last layer.
    What ESP carried, when --esp-keys opened it, follows as more layers whose title starts with "inside ESP"
    and whose offsets count from the first byte of the decrypted payload.
    """
    out: list[list[dict[str, object]]] = [
        [
            {
                "layer": layer.title,
                "offset": f.offset,
                "length": f.length,
                "bits": f.bit_range,
                "name": f.name,
                "value": f.value,
                "meaning": f.meaning,
                "rfc": f.rfc,
                "problem": f.problem,
            }
            for f in layer.fields
        ]
        for layer in e.layers
    ]
    if e.stop is not None:
        stop = {
            "layer": e.stop.layer,
            "offset": e.stop.offset,
            "length": 0,
            "bits": None,
            "name": "parsing stopped",
            "value": e.stop.reason,
            "meaning": e.stop.detail,
            "rfc": e.stop.rfc,
            "problem": e.stop.reason if e.stop.malformed else None,
        }
        if out:
            out[-1].append(stop)
        else:
            out.append([stop])
    if e.inside is not None:
        head = e.inside_title.split(" (only")[0]
        out += [[{**f, "layer": f"{head}: {f['layer']}"} for f in layer] for layer in to_json(e.inside)]
    return out
