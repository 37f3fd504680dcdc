"""The walk's machinery: the `Ctx` a header is read in, the `Writer` that reads its fields and records
them, the `Halt` that ends the walk, and `Walk`, the base of the dissector: where each header's reader
is declared (the modules beside this one define them) and what is not a header (data, payload, trailer).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from ...core import esp
from ...core.checksum import checksum_is_valid, internet_checksum
from .model import Field, Layer, Stop
from .names import DEFAULT_UDP_PORTS


@dataclass(frozen=True, slots=True)
class Opened:
    """What an ESP packet carried, opened with --esp-keys: its next header and payload, the context of the
    ESP layer (its IP addresses and TOS, for the payload's checksums and ECN), and the SA's table name."""

    next_header: int
    payload: bytes
    ctx: Ctx
    sa: str


class Halt(Exception):
    """Raised inside the dissector to end parsing; `explain` turns it into `Explanation.stop`."""

    def __init__(self, stop: Stop) -> None:
        super().__init__(stop.detail)
        self.stop = stop


@dataclass(frozen=True, slots=True)
class Ctx:
    """What a layer knows from the layers around it."""

    end: int  # exclusive end of the bytes this layer may use
    end_why: str  # what sets `end`, for a truncation message
    complete: bool  # the bytes up to `end` are all of this layer's message (checksums can be verified)
    depth: int = 0  # IP headers crossed so far
    role: str = ""  # "", "outer", "inner", "quoted": how to title the next IP header
    via: str = ""  # the tunnel that carries the next IP header, for its title
    expect_version: int | None = None  # the IP version the enclosing header announced
    outer_tos: int | None = None  # the tunnel's outer TOS / traffic class (RFC 6040)
    pseudo: tuple[bytes, bytes] | None = None  # source and destination of the enclosing IP header
    quoted: bool = False  # inside an ICMP error's quote: running out of bytes is expected


def with_hex(value: int, digits: int) -> str:
    return f"{value} (0x{value:0{digits}x})"


def preview(data: bytes) -> str:
    head = data[:16]
    text = "".join(chr(b) if 32 <= b < 127 else "." for b in head)
    more = "..." if len(data) > 16 else ""
    return f"{head.hex()}{more} |{text}{more}|"


def pseudo_header(pseudo: tuple[bytes, bytes], protocol: int, length: int) -> bytes:
    """The pseudo-header a transport checksum covers (RFC 9293 3.1 / RFC 768 for IPv4, RFC 8200 8.1 for IPv6)."""
    src, dst = pseudo
    if len(src) == 4:
        return src + dst + bytes([0, protocol]) + length.to_bytes(2, "big")
    return src + dst + length.to_bytes(4, "big") + bytes([0, 0, 0, protocol])


class Writer:
    """Reads the bytes of one layer within its context and records its fields."""

    __slots__ = ("d", "layer", "ctx")

    def __init__(self, d: Walk, layer: Layer, ctx: Ctx) -> None:
        self.d, self.layer, self.ctx = d, layer, ctx

    def raw(self, offset: int, length: int, what: str) -> bytes:
        """The bytes of one field, or a halt naming the field, its offsets and what ends the bytes."""
        ctx, layer = self.ctx, self.layer
        if offset + length <= ctx.end:
            return self.d.data[offset : offset + length]
        span = f"offset {offset}" if length == 1 else f"offsets {offset}-{offset + length - 1}"
        if ctx.quoted:
            detail = (
                f"the ICMP error quotes only part of the original packet, ending before the {layer.title} {what} at "
                f"{span} (ICMP quotes the IP header and at least 8 bytes after it; ICMPv6 as much as fits)"
            )
            raise Halt(Stop(offset, "end of quote", detail, layer.rfc, False, layer.title))
        plural = "s" if length > 1 else ""
        detail = f"{layer.title}: cut short at the {what} ({length} byte{plural} at {span}): {ctx.end_why}"
        raise Halt(Stop(offset, "truncated", detail, layer.rfc, True, layer.title))

    def uint(self, offset: int, length: int, what: str) -> int:
        return int.from_bytes(self.raw(offset, length, what), "big")

    def add(
        self,
        offset: int,
        length: int,
        name: str,
        value: int | str,
        meaning: str,
        rfc: str = "",
        *,
        bits: tuple[int, int] | None = None,
        shown: str | None = None,
        problem: str | None = None,
    ) -> None:
        text = str(value) if shown is None else shown
        self.layer.fields.append(
            Field(offset, length, name, value, text, meaning, rfc or self.layer.rfc, bits, problem)
        )

    def bits(
        self,
        base: int,
        first: int,
        last: int,
        name: str,
        meaning: str | Callable[[int], str],
        rfc: str = "",
        *,
        shown: Callable[[int], str] | None = None,
        problem: Callable[[int], str | None] | str | None = None,
    ) -> int:
        """Read and record the field at bits `first`..`last` counted from the most significant bit of the byte
        at `base`, as an RFC diagram numbers a header's bits; return its value. The field is recorded at the
        bytes that hold it, with its bits counted from the first of them."""
        start, end = first // 8, last // 8
        length = end - start + 1
        word = self.uint(base + start, length, name)
        low, high = first - 8 * start, last - 8 * start
        value = (word >> (8 * length - 1 - high)) & ((1 << (high - low + 1)) - 1)
        text = meaning(value) if callable(meaning) else meaning
        whole = low == 0 and high == 8 * length - 1
        self.add(
            base + start,
            length,
            name,
            value,
            text,
            rfc,
            bits=None if whole else (low, high),
            shown=shown(value) if shown else None,
            problem=problem(value) if callable(problem) else problem,
        )
        return value

    def field(self, offset: int, length: int, name: str, meaning: str, rfc: str = "", hexed: bool = False) -> int:
        """Read an unsigned field of whole bytes and record it (`hexed`: shown in hex too); return its value."""
        value = self.uint(offset, length, name)
        self.add(offset, length, name, value, meaning, rfc, shown=with_hex(value, 2 * length) if hexed else None)
        return value

    def halt(self, offset: int, reason: str, why: str, rfc: str = "", malformed: bool = True) -> Halt:
        title = self.layer.title
        return Halt(Stop(offset, reason, f"{title}: {why}", rfc or self.layer.rfc, malformed, title))

    def checksum(self, at: int, covered: bytes | None, prefix: bytes = b"", rfc: str = "") -> None:
        """The 16-bit checksum at `at`, verified with the core over `prefix` + `covered` (which starts at the
        layer's offset and holds the field), or said unverifiable when `covered` is None."""
        csum = self.uint(at, 2, "checksum")
        shown = f"0x{csum:04x}"
        if covered is None:
            self.add(at, 2, "checksum", csum, "not verified: the message is cut short", rfc, shown=shown)
        elif checksum_is_valid(prefix + covered):
            what = "the pseudo-header, header and data" if prefix else "the whole message"
            self.add(at, 2, "checksum", csum, f"valid, over {what}", rfc, shown=shown)
        else:
            rel = at - self.layer.offset
            good = internet_checksum(prefix + covered[:rel] + b"\0\0" + covered[rel + 2 :])
            why = f"WRONG: should be 0x{good:04x}"
            self.add(at, 2, "checksum", csum, why, rfc, shown=shown, problem="bad checksum")


class Walk(ABC):
    """Walks one packet from the link layer inwards and collects its layers. One instance per packet."""

    MAX_DEPTH = 8  # IP headers inside IP headers; no real packet nests deeper

    def __init__(
        self, data: bytes, udp_ports: Mapping[int, str] | None = None, esp_keys: esp.EspKeys | None = None
    ) -> None:
        self.data = data
        self.udp_ports = DEFAULT_UDP_PORTS if udp_ports is None else udp_ports
        self.esp_keys = esp_keys
        self.layers: list[Layer] = []
        self.shortfall: Stop | None = None  # the outermost length field that promises more than is present
        self.opened: Opened | None = None  # what an ESP layer carried, when --esp-keys opened it

    def layer(self, kind: str, title: str, offset: int, rfc: str, ctx: Ctx) -> Writer:
        layer = Layer(kind, title, offset, rfc)
        self.layers.append(layer)
        return Writer(self, layer, ctx)

    def sub_ctx(self, ctx: Ctx, offset: int, promised_end: int, what: str) -> Ctx:
        """The context for the bytes that a length field at `offset` says end at `promised_end`."""
        ctx = replace(ctx, via="", expect_version=None)
        if promised_end <= ctx.end:
            return replace(ctx, end=promised_end, end_why=f"the {what} (offset {offset}) ends it at {promised_end}")
        if self.shortfall is None and not ctx.quoted:
            missing = promised_end - ctx.end
            why = f"the {what} (offset {offset}) promises bytes up to {promised_end}, but {ctx.end_why}"
            plural = "s are" if missing > 1 else " is"
            self.shortfall = Stop(ctx.end, "truncated", f"{why}: {missing} byte{plural} missing", "")
        return replace(ctx, complete=False)

    # --- the readers one header hands on to, each defined in its own module -------------------------------

    @abstractmethod
    def ethernet(self, offset: int, ctx: Ctx) -> None:
        """An Ethernet frame (link.py)."""

    @abstractmethod
    def ip(self, offset: int, ctx: Ctx) -> None:
        """An IPv4 or IPv6 header, by its version (ip.py)."""

    @abstractmethod
    def gre(self, offset: int, ctx: Ctx) -> None:
        """A GRE header and what it carries (gre.py)."""

    @abstractmethod
    def esp(self, offset: int, ctx: Ctx) -> None:
        """An ESP header (esp.py)."""

    @abstractmethod
    def icmp(self, offset: int, ctx: Ctx) -> None:
        """An ICMP message (transport.py)."""

    @abstractmethod
    def icmpv6(self, offset: int, ctx: Ctx) -> None:
        """An ICMPv6 message (transport.py)."""

    @abstractmethod
    def tcp(self, offset: int, ctx: Ctx) -> None:
        """A TCP header (transport.py)."""

    @abstractmethod
    def udp(self, offset: int, ctx: Ctx) -> None:
        """A UDP header, and the tunnel in it when a port says so (udp.py)."""

    @abstractmethod
    def transport(self, kind: str, offset: int, rfc: str, ctx: Ctx) -> Writer:
        """The layer of a transport header, titled for where it is (transport.py)."""

    @abstractmethod
    def covered(self, w: Writer, protocol: int | None, length: int | None = None) -> tuple[bytes | None, bytes]:
        """The bytes a transport checksum covers, and its pseudo-header (transport.py)."""

    @abstractmethod
    def ports(self, w: Writer, offset: int, carried: tuple[str, str] | None = None) -> None:
        """A transport header's two ports (transport.py)."""

    # --- what is not a header -----------------------------------------------------------------------------

    def data_field(self, w: Writer, offset: int) -> None:
        if offset < w.ctx.end:
            data = self.data[offset : w.ctx.end]
            w.add(offset, len(data), "data", len(data), preview(data), shown=f"{len(data)} bytes")

    def payload(self, offset: int, ctx: Ctx, what: str) -> None:
        w = self.layer("payload", "payload", offset, "", ctx)
        data = self.data[offset : ctx.end]
        meaning = f"{what}, not dissected: {preview(data)}"
        w.add(offset, len(data), "payload", len(data), meaning, shown=f"{len(data)} bytes")

    def trailer(self, offset: int, ctx: Ctx, what: str = "after the end the length field gives") -> None:
        if offset < ctx.end:
            w = self.layer("trailer", "trailing bytes", offset, "", ctx)
            data = self.data[offset : ctx.end]
            meaning = f"{what}: link-layer padding, or bytes that are not part of the packet: {preview(data)}"
            w.add(offset, len(data), "trailing bytes", len(data), meaning, shown=f"{len(data)} bytes")
