"""The protocol core: bytes and decisions only.

Rules for this package:
- No sockets, no file descriptors, no clock, no logging handlers. Bytes come in,
  bytes (or a `Drop` reason) go out.
- Everything that decides what goes on the wire, or whether a received packet
  is accepted, lives here, so that it can be tested with plain bytes and
  fuzzed with hypothesis.

Theory of operation: `params.TunnelParams` describes one tunnel the way
`ip tunnel add` does. `encap.Tunnel` holds that tunnel's moving parts (output
sequence number, input sequence window, counters) and turns an inner packet
into an encapsulation header. `lookup.TunnelTable` picks the tunnel that owns a
received packet in the order of the kernel's `ip_tunnel_lookup`, and
`encap.decapsulate` strips the outer headers after checking key, checksum,
sequence number and ECN.
"""
