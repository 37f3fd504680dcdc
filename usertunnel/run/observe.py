"""What `--trace` and `--pcap` see: the hooks the loop calls when (and only when) either is on.

Directions are the host's, as tcpdump on each interface would show them: a
packet read from the TUN device leaves the host into the tunnel (outbound on
"tun"), its encapsulation leaves on the underlay (outbound on "underlay"), and
the reverse for what arrives.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from ..core.drops import Drop
from ..core.encap import Demux, Received, Result, Tunnel
from ..io.pcap import INBOUND, OUTBOUND, TUN, UNDERLAY, PcapNgWriter
from ..teach import trace


class Observer:
    def __init__(self, tracer: Callable[[str], None] | None = None, pcap: PcapNgWriter | None = None) -> None:
        self.tracer = tracer
        self.pcap = pcap

    def tx(self, tunnel: Tunnel, inner: bytes, result: bytes | Drop, send_error: Drop | None) -> None:
        if self.pcap is not None:
            self.pcap.write(TUN, inner, OUTBOUND)
            if not isinstance(result, Drop) and send_error is None:
                self.pcap.write(UNDERLAY, result + inner, OUTBOUND)
        if self.tracer is not None:
            for line in trace.describe_tx(tunnel, inner, result, send_error):
                self.tracer(line)

    def sent(self, packet: bytes | bytearray | memoryview, what: str) -> None:
        """A packet the tunnel sent on the underlay by itself (a keepalive, or a peer's reflected)."""
        if self.pcap is not None:
            self.pcap.write(UNDERLAY, packet, OUTBOUND)
        if self.tracer is not None:
            self.tracer(f"tx: sent {len(packet)} bytes on the underlay: {what}")

    def released(self, inner: bytes) -> None:
        """A packet a reorder buffer released (rfc2890 policy), written into TUN after its predecessors."""
        if self.pcap is not None:
            self.pcap.write(TUN, inner, INBOUND)
        if self.tracer is not None:
            self.tracer(f"rx: released from the reorder buffer, {len(inner)} bytes to TUN")

    def rx6(self, protocol: int, src: bytes, dst: bytes, payload: memoryview, result: Result) -> None:
        """A packet read from a raw IPv6 socket (which gives no IPv6 header): pcap gets the inner packet;
        --trace one line with the addresses and the outcome."""
        if self.pcap is not None and isinstance(result, Received):
            self.pcap.write(TUN, result.inner, INBOUND)
        if self.tracer is not None:
            outcome = result.value if isinstance(result, Drop) else type(result).__name__.lower()
            self.tracer(
                f"rx: read {len(payload)} bytes (next header {protocol}) from {socket.inet_ntop(socket.AF_INET6, src)} "
                f"to {socket.inet_ntop(socket.AF_INET6, dst) if dst else '?'}: {outcome}"
            )

    def rx_context(self, demux: Demux, packet: memoryview) -> trace.RxContext | None:
        return trace.rx_context(demux, packet) if self.tracer is not None else None

    def rx(self, packet: memoryview, context: trace.RxContext | None, result: Result, write_error: Drop | None) -> None:
        if self.pcap is not None:
            self.pcap.write(UNDERLAY, packet, INBOUND)
            if isinstance(result, Received) and write_error is None:
                self.pcap.write(TUN, result.inner, INBOUND)
        if self.tracer is not None and context is not None:
            for line in trace.describe_rx(packet, context, result, write_error):
                self.tracer(line)

    def close(self) -> None:
        if self.pcap is not None:
            self.pcap.close()
