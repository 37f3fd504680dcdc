"""IPsec ESP (RFC 4303): the SPI and sequence number in the clear, and with --esp-keys what it carried."""

from __future__ import annotations

from ...core import esp
from ...core.drops import Drop
from .names import ESP_ENCRYPTED, ESP_REFUSED, ESP_SEQ_MEANING, ESP_SPI_MEANING, IP_PROTOCOLS
from .walk import Ctx, Opened, Walk, Writer, with_hex


class ESPHeader(Walk):
    """ESP's clear header; opened with --esp-keys when given."""

    # --- IPsec --------------------------------------------------------------------------------------------

    def esp(self, offset: int, ctx: Ctx) -> None:
        """ESP (RFC 4303 2): the SPI and sequence number are in the clear; everything after them is encrypted
        and authenticated, so without the key explain can say how long it is and nothing more. That is where
        the packet ends, as it should (a normal stop), not where it breaks."""
        w = self.layer("ESP", "ESP header (IPsec, RFC 4303)", offset, "RFC 4303 2", ctx)
        spi = w.uint(offset, 4, "SPI")
        meaning, problem = ESP_SPI_MEANING, None
        if spi == 0:
            meaning, problem = "0 is reserved for local use and never sent on the wire (RFC 4303 2.1)", "SPI 0"
        elif spi < esp.SPI_MIN:
            meaning = "1..255 are reserved by IANA for future use: no security association has one (RFC 4303 2.1)"
            problem = "reserved SPI"
        w.add(offset, 4, "SPI", spi, meaning, "RFC 4303 2.1", shown=with_hex(spi, 8), problem=problem)
        seq = w.uint(offset + 4, 4, "sequence number")
        meaning = ESP_SEQ_MEANING
        if seq == 0:
            meaning += (
                "; 0 is never sent without extended sequence numbers (the first packet is 1): "
                "with them, it is the low half after the count passed 2**32"
            )
        w.add(offset + 4, 4, "sequence number", seq, meaning, "RFC 4303 2.2", shown=with_hex(seq, 8))
        at = offset + esp.HEADER_LEN
        size = max(ctx.end - at, 0)
        if size < 2 and not ctx.quoted and ctx.complete:
            why = (
                f"{size} byte{'s' if size != 1 else ''} after the sequence number: ESP carries at least the "
                "encrypted pad length and next header, and with an AEAD an IV and ICV too"
            )
            if size:
                w.add(at, size, "encrypted payload", size, why, "RFC 4303 2.4", shown=f"{size} bytes")
            raise w.halt(at, "ESP without payload", why, "RFC 4303 2")
        if size == 0:
            w.raw(at, 1, "encrypted payload")  # a capture or a quote cut it here: say so
        held = "" if ctx.complete else " present (the rest is cut off)"
        meaning = f"{size} bytes{held}: {ESP_ENCRYPTED}"
        w.add(at, size, "encrypted payload", size, meaning, "RFC 4303 2.3-2.8", shown=f"{size} bytes")
        w.layer.title = f"ESP header (IPsec, RFC 4303), {esp.HEADER_LEN} bytes, then {size} encrypted"
        if self.esp_keys is not None and ctx.complete and not ctx.quoted:
            self.esp_open(w, spi, offset, ctx)
        if self.shortfall is None and not ctx.quoted:
            why = f"the {size} bytes after ESP's sequence number are encrypted; without the key nothing more "
            why += "can be read" if self.opened is None else "can be read (--esp-keys opened them: see below)"
            raise w.halt(ctx.end, "encrypted", why, "RFC 4303 2", malformed=False)

    def esp_open(self, w: Writer, spi: int, offset: int, ctx: Ctx) -> None:
        """With --esp-keys: open the ESP packet with the SA of that SPI, as its receiver would, and say so in a
        field over the encrypted bytes; what it carried is kept for `explain` to dissect on its own."""
        assert self.esp_keys is not None
        at, size = offset + esp.HEADER_LEN, ctx.end - offset - esp.HEADER_LEN
        sas = {"[in]": self.esp_keys.inbound, "[out]": self.esp_keys.outbound}
        found = [(name, sa) for name, sa in sas.items() if sa.spi == spi]
        if not found:
            have = ", ".join(f"{name} 0x{sa.spi:08x}" for name, sa in sas.items())
            meaning = f"not opened: no SA of --esp-keys has SPI 0x{spi:08x} (the file has {have})"
            w.add(at, size, "opened with --esp-keys", "no such SPI", meaning, "RFC 4303 3.4.2")
            return
        name, sa = found[0]
        cipher = f"the {name} SA ({sa.aead}, {len(sa.cipher_key) * 8}-bit key, {sa.icv_bits}-bit ICV)"
        result = esp.Opener(sa).open(self.data[offset : ctx.end])  # a fresh window: any number but 0 is new
        if isinstance(result, Drop):
            why, problem = ESP_REFUSED.get(result, (result.value, result.value))
            meaning = f"not opened with {cipher}: {why} (usertunnel counts {result.value})"
            w.add(at, size, "opened with --esp-keys", result.value, meaning, "RFC 4303 3.4", problem=problem)
            return
        next_header, payload = result
        padding = size - esp.IV_LEN - sa.icv_len - len(payload) - 2
        meaning = (
            f"opened with {cipher}: the ICV verifies; {esp.IV_LEN} bytes of IV, {len(payload)} bytes of payload, "
            f"{padding} of padding, pad length, next header {next_header} "
            f"({IP_PROTOCOLS.get(next_header, 'not one explain knows')}), {sa.icv_len} bytes of ICV; "
            "the payload is explained below, inside ESP"
        )
        w.add(at, size, "opened with --esp-keys", next_header, meaning, "RFC 4303 2.4-2.8")
        self.opened = Opened(next_header, payload, ctx, name)
