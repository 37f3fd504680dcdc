"""Raw sockets: IPv4 ones per outer protocol (47 GRE, 4 IPIP, 41 sit), and IPv6 ones.

IPv6 (ipip6, ip6ip6, ip6gre): one IPPROTO_RAW socket sends (it implies
IPV6_HDRINCL: we write the whole IPv6 header and the encapsulation limit
option, as ip6_tnl_xmit does), and one socket per next header receives. A raw
IPv6 socket delivers no IPv6 header: IPV6_RECVPKTINFO gives the destination
address (for the lookup by local address), IPV6_RECVTCLASS the traffic class
(for RFC 6040), and the source comes as the sender's address.

- IP_HDRINCL: we write the whole outer IPv4 header, so TTL, TOS and DF are
  per packet, as the kernel's ip_tunnel_xmit sets them. The kernel still fills
  in the header checksum (and the identification when we give 0 without DF).
- Never connect(): after a peer's ICMP protocol-unreachable a connected raw
  socket fails recv() with ENOPROTOOPT, and under uvloop the reader is then
  dropped for good. We sendto() the remote and let the lookup filter senders.
- Never IP_RECVERR either: an ICMP error about one of our packets would then
  set the socket's error (POLLERR), and libuv stops watching a socket on
  POLLERR. The path MTU comes from a separate ICMP socket (`open_icmp_listener`).
- The default receive buffer (~212 KB) overflows under TCP load: ask for
  several megabytes (SO_RCVBUFFORCE as root, SO_RCVBUF otherwise).

Every raw socket of a protocol gets its own copy of every packet of that
protocol. `usertunnel up --queues N` runs N workers, each with its own
socket, so each socket carries a classic BPF filter (`shard_filter`) that
keeps one worker's share: the packets whose inner flow hashes to it. The hash
is over the inner addresses and ports, read at fixed offsets for the tunnel's
header layout (`ShardLayout`), and is symmetric (a flow and its reverse go to
the same worker). Whatever the filter cannot hash at those offsets (outer or
inner IPv4 options, fragments, inner protocols other than TCP and UDP, IPv6
extension headers, a GRE header other than the tunnel's, a truncated packet)
goes to worker 0: each packet is kept by exactly one of the N filters.

Processes that share a network namespace (several `usertunnel up`, the
daemon) would each read every packet of the protocol: N processes, N times
the receive cost, and each counting the others' packets as its own drops. So
every receiving socket, IPv4 and IPv6, carries a filter built from the
identities claimed in the namespace (io.claim; `tunnel_filter`, `ClaimFilter`),
and rebuilt when they change. What it keeps, and why:

- The namespace is treated as one kernel: core.lookup's order (exact, remote
  only, local only, wildcard, the key matching exactly at each step) runs over
  every claimed identity, and a packet goes to the process whose identity wins.
  So the key is in the filter: two processes with the same addresses and
  different keys each read only their own key. A wrong key from our remote is
  the kernel's key mismatch only when no identity of the namespace has that
  key; then every process holding the first address pattern that matches
  (core.lookup.address_match's) keeps it and counts `key_mismatch`, as before.
- A GRE header that cannot be read (truncated, version, routing bit) is kept
  by the holders of the first matching address pattern, who count it
  (`gre_truncated`, `gre_version`, `gre_routing`). An outer IPv4 header with
  options or a fragment is kept by all (the filter reads fixed offsets).
- A packet no identity's addresses match is nobody's: dropped, as the kernel
  drops it without counting it on a tunnel. But a process alone on its socket
  (no other process claims an identity of that protocol and family) gets no
  filter at all, so a single `up` still counts misaddressed packets as
  `no_tunnel`, which is how a wrong --remote shows.
- A daemon whose program would pass the kernel's 4,096 instructions (several
  hundred tunnels sharing a socket with another process's) reads every packet
  of the protocol, as before, rather than refuse.
- --queues: the tunnel test comes first and its "keep" jumps into the
  worker's shard program (`receive_filter`): a worker keeps its tunnel's
  packets AND its share of the flows.
- A raw IPv6 socket's filter runs from the payload on (the GRE header at
  offset 0: the kernel has stepped over the IPv6 header and its extension
  headers); the addresses are read through SKF_NET_OFF (`IPV6_OFFSETS`).

A socket's first filter is attached race-free (`attach_race_free`: drop all,
drain, then the program); later ones replace it atomically.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from ..core.errors import ConfigError
from ..core.tables import ETHERNET, table_of
from .claim import Identity, claimed

SOCKET_BUFFER = 8 * 1024 * 1024
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)

# Linux values missing from Python's socket module on some builds.
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)


def _set_buffer(sock: socket.socket, force: int, plain: int, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)


def open_raw(protocol: int, device: str | None = None, buffer: int = SOCKET_BUFFER) -> socket.socket:
    """A non-blocking raw IPv4 socket for `protocol`, with IP_HDRINCL and large buffers."""
    sock = _raw(socket.AF_INET, protocol)
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    except BaseException:
        sock.close()
        raise
    return configure(sock, device, buffer)


def open_raw6_sender(device: str | None = None, buffer: int = SOCKET_BUFFER) -> socket.socket:
    """A non-blocking IPv6 IPPROTO_RAW socket: every packet written carries its own IPv6 header."""
    return configure(_raw(socket.AF_INET6, socket.IPPROTO_RAW), device, buffer)


def open_raw6_receiver(protocol: int, device: str | None = None, buffer: int = SOCKET_BUFFER) -> socket.socket:
    """A non-blocking raw IPv6 socket receiving next header `protocol`, with the destination address and
    traffic class of each packet as ancillary data."""
    sock = _raw(socket.AF_INET6, protocol)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVTCLASS, 1)
    except BaseException:
        sock.close()
        raise
    return configure(sock, device, buffer)


def _raw(family: int, protocol: int) -> socket.socket:
    try:
        return socket.socket(family, socket.SOCK_RAW, protocol)
    except PermissionError:
        version = 4 if family == socket.AF_INET else 6
        raise ConfigError(
            f"cannot open a raw IPv{version} socket for protocol {protocol}: permission denied; "
            "run as root or with CAP_NET_RAW"
        ) from None


def configure(sock: socket.socket, device: str | None, buffer: int) -> socket.socket:
    """Large buffers, SO_BINDTODEVICE to `device` (if any), non-blocking; closed on failure (UDP sockets too)."""
    try:
        _set_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, buffer)
        _set_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, buffer)
        if device is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
            except OSError as exc:
                raise ConfigError(f"cannot bind to device {device!r}: {exc.strerror}") from None
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


# Classic BPF, run on each ICMP packet from its IPv4 header on: keep type 3 code 4 (destination
# unreachable, fragmentation needed), drop the rest before it reaches us.
_FRAG_NEEDED_FILTER = (
    (0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf): X = IPv4 header length
    (0x50, 0, 0, 0),  # ldb [x+0]: ICMP type
    (0x15, 0, 3, 3),  # jeq #3 (destination unreachable), else drop
    (0x50, 0, 0, 1),  # ldb [x+1]: ICMP code
    (0x15, 0, 1, 4),  # jeq #4 (fragmentation needed), else drop
    (0x06, 0, 0, 0xFFFF),  # ret #65535: keep
    (0x06, 0, 0, 0),  # ret #0: drop
)


def open_icmp_listener(device: str | None = None) -> socket.socket:
    """A non-blocking raw ICMP socket that sees only "fragmentation needed" (a copy; the kernel handles
    them too): how a tunnel learns the path MTU to its remote without IP_RECVERR on its own socket."""
    sock = _raw(socket.AF_INET, socket.IPPROTO_ICMP)
    try:
        _attach_filter(sock, _FRAG_NEEDED_FILTER)
    except BaseException:
        sock.close()
        raise
    return configure(sock, device, 256 * 1024)


Instruction = tuple[int, int, int, int]  # struct sock_filter: code, jt, jf, k


def _attach_filter(sock: socket.socket, program: Sequence[Instruction]) -> None:
    """SO_ATTACH_FILTER: the kernel copies the program, replacing any filter the socket had."""
    buffer = (ctypes.c_uint8 * (8 * len(program)))()
    for i, (code, jt, jf, k) in enumerate(program):
        struct.pack_into("=HBBI", buffer, 8 * i, code, jt, jf, k)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("@HP", len(program), ctypes.addressof(buffer)))


# --- sharding received packets over worker processes (usertunnel up --queues N) ---------------------------

OUTER_HEADER = 20  # an outer IPv4 header without options: anything longer goes to worker 0
_HASH_MULTIPLIER = 0x9E3779B1  # Knuth's multiplicative hash (2^32 / golden ratio); the high half is kept
_KEEP = 0xFFFFFFFF  # a filter's "keep the whole packet"

# Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
_LD_W, _LD_H, _LD_B, _LD_LEN = 0x20, 0x28, 0x30, 0x80  # A = word / half / byte at [k]; A = packet length
_TAX, _ADD_X = 0x07, 0x0C  # X = A; A += X
_AND, _MUL, _RSH, _MOD = 0x54, 0x24, 0x74, 0x94  # A &= k, A *= k, A >>= k, A %= k
_JA, _JEQ, _JGE, _JSET = 0x05, 0x15, 0x35, 0x45  # jump always; if A == k / A >= k / A & k
_RET = 0x06


@dataclass(frozen=True)
class ShardLayout:
    """Where the inner IP header sits in the packets of one tunnel's raw socket (seen from the outer IPv4
    header on), and how to recognise the packets whose inner flow can be read there.

    `families` pairs each inner IP version the tunnel carries with the first 4 bytes its GRE header must
    have (flags, version and protocol type, RFC 2784), or None for a mode without GRE (ipip, sit), which
    carries a single family; `inner_offset` is 20 plus that GRE header's length.
    """

    inner_offset: int
    families: tuple[tuple[int, int | None], ...]


def shard_filter(layout: ShardLayout, index: int, count: int) -> list[Instruction]:
    """The classic BPF program of worker `index` of `count`: keep the packets whose inner flow hash % count
    is `index`, and (worker 0 only) every packet the hash cannot be read from (see the module docstring).

    hash = ((src + dst + sport + dport) * 0x9E3779B1 mod 2^32) >> 16, with src and dst the inner IPv4
    addresses or the last 32 bits of the inner IPv6 ones: a sum, so the same for a flow and its reverse.
    """
    return _resolve(_shard_code(layout, index, count))


Code = list[tuple[int, int | str, int | str, int | str] | str]  # a str alone is a label; jumps name them


def _shard_code(layout: ShardLayout, index: int, count: int) -> Code:
    if not 0 <= index < count:
        raise ValueError(f"worker {index} of {count}")
    inner = layout.inner_offset
    code: Code = []

    def need(length: int) -> None:  # shorter packets go to worker 0 (a load past the end would drop them)
        code.extend([(_LD_LEN, 0, 0, 0), (_JGE, 0, "other", length)])

    need(OUTER_HEADER)
    code.extend([(_LD_B, 0, 0, 0), (_JEQ, 0, "other", 0x45)])  # version 4, no options
    code.extend([(_LD_H, 0, 0, 6), (_JSET, "other", 0, 0x3FFF)])  # not a fragment (MF or an offset)
    gre = [(version, word) for version, word in layout.families if word is not None]
    if gre:
        need(OUTER_HEADER + 4)
        code.append((_LD_W, 0, 0, OUTER_HEADER))
        code.extend((_JEQ, f"inner{version}", 0, word) for version, word in gre)
        code.append((_JA, 0, 0, "other"))
    for version, _ in layout.families:
        code.append(f"inner{version}")
        if version == 4:
            need(inner + 24)
            code.extend([(_LD_B, 0, 0, inner), (_JEQ, 0, "other", 0x45)])
            code.extend([(_LD_H, 0, 0, inner + 6), (_JSET, "other", 0, 0x3FFF)])
            code.extend([(_LD_B, 0, 0, inner + 9), (_JEQ, "ports4", 0, 6), (_JEQ, "ports4", "other", 17)])
            code.append("ports4")
            addresses, ports = (inner + 12, inner + 16), inner + 20
        else:
            need(inner + 44)
            code.extend([(_LD_B, 0, 0, inner), (_AND, 0, 0, 0xF0), (_JEQ, 0, "other", 0x60)])
            code.extend([(_LD_B, 0, 0, inner + 6), (_JEQ, "ports6", 0, 6), (_JEQ, "ports6", "other", 17)])
            code.append("ports6")
            addresses, ports = (inner + 20, inner + 36), inner + 40
        code.extend([(_LD_W, 0, 0, addresses[0]), (_TAX, 0, 0, 0), (_LD_W, 0, 0, addresses[1]), (_ADD_X, 0, 0, 0)])
        code.extend([(_TAX, 0, 0, 0), (_LD_H, 0, 0, ports), (_ADD_X, 0, 0, 0)])
        code.extend([(_TAX, 0, 0, 0), (_LD_H, 0, 0, ports + 2), (_ADD_X, 0, 0, 0)])
        code.append((_JA, 0, 0, "hash"))
    code.append("hash")
    code.extend([(_MUL, 0, 0, _HASH_MULTIPLIER), (_RSH, 0, 0, 16), (_MOD, 0, 0, count)])
    code.extend([(_JEQ, 0, 1, index), (_RET, 0, 0, _KEEP), (_RET, 0, 0, 0)])
    code.extend(["other", (_RET, 0, 0, _KEEP if index == 0 else 0)])
    return code


def _resolve(code: Sequence[tuple[int, int | str, int | str, int | str] | str]) -> list[Instruction]:
    """Replace label names in jumps by offsets (classic BPF jumps forward only, relative to the next
    instruction; a conditional jump's offsets are a byte each)."""
    where: dict[str, int] = {}
    position = 0
    for item in code:
        if isinstance(item, str):
            where[item] = position
        else:
            position += 1
    program: list[Instruction] = []
    for item in code:
        if isinstance(item, str):
            continue
        op, jt, jf, k = item
        here = len(program) + 1
        if op == _JA:
            k = where[k] - here if isinstance(k, str) else k
        jt = where[jt] - here if isinstance(jt, str) else jt
        jf = where[jf] - here if isinstance(jf, str) else jf
        assert isinstance(k, int) and 0 <= jt <= 255 and 0 <= jf <= 255
        program.append((op, jt, jf, k))
    return program


def attach_shard_filter(sock: socket.socket, layout: ShardLayout, index: int, count: int) -> None:
    """Make `sock` keep worker `index`'s share only (see `attach_race_free`)."""
    attach_race_free(sock, shard_filter(layout, index, count))


def attach_race_free(sock: socket.socket, program: Sequence[Instruction]) -> None:
    """Give a fresh socket its first filter. Packets it queued before are discarded: a filter applies to
    what arrives after it, so the socket drops everything, is drained, then takes the program."""
    _attach_filter(sock, [(_RET, 0, 0, 0)])
    blocking = sock.getblocking()
    sock.setblocking(False)
    try:
        while True:
            sock.recv(1)
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(blocking)
    _attach_filter(sock, program)


# --- keeping a process's own tunnels' packets (processes that share a network namespace) --------------------

BPF_MAXINSNS = 4096  # the kernel's limit on a classic BPF program's length
SKF_NET_OFF = -0x100000  # linux/filter.h: loads from here on are relative to the network (IPv6) header


@dataclass(frozen=True)
class FilterOffsets:
    """Where a socket filter finds the outer source and destination addresses and the GRE header.

    A raw IPv4 socket's filter runs from the outer IPv4 header on. A raw IPv6 socket's runs from the payload on
    (the GRE header, or the inner packet: the kernel has stepped over the IPv6 header and the extension
    headers, the encapsulation limit option included; tests/test_claim.py shows it), so the addresses are read
    relative to the IPv6 header through SKF_NET_OFF.
    """

    src: int
    dst: int
    gre: int
    ipv4: bool  # the outer IPv4 header is there to check (no options, not a fragment)


IPV4_OFFSETS = FilterOffsets(12, 16, OUTER_HEADER, True)
IPV6_OFFSETS = FilterOffsets((SKF_NET_OFF + 8) & 0xFFFFFFFF, (SKF_NET_OFF + 24) & 0xFFFFFFFF, 0, False)
_FLAG_C, _FLAG_K, _FLAG_S, _ROUTING_OR_VERSION = 0x8000, 0x2000, 0x1000, 0x4007
_TEB = 0x6558  # GRE protocol type of Ethernet frames (gretap)
_LOOKUP_ORDER = ("exact", "remote only", "local only", "wildcard")


def _step(identity: Identity) -> int:
    """Where an identity's address pattern comes in the kernel's lookup order (core.lookup)."""
    if identity.local is not None and identity.remote is not None:
        return 0
    if identity.remote is not None:
        return 1
    return 2 if identity.local is not None else 3


def socket_tables(protocol: int, outer: int = 4) -> tuple[int, ...]:
    """The tables (core.tables) a raw socket of `protocol` over IPv`outer` serves (GRE's also serves gretap's)."""
    table = table_of(protocol, outer)
    return (table, table | ETHERNET) if protocol == 47 else (table,)


def tunnel_filter(
    protocol: int,
    claims: Collection[Identity],
    mine: Collection[Identity],
    outer: int = 4,
    at: FilterOffsets | None = None,
) -> list[Instruction] | None:
    """The classic BPF program that keeps, on a raw socket of `protocol` (over IPv`outer`), the packets this
    process should read given every identity claimed in the namespace (`claims`, io.claim) and those it
    claims (`mine`). `at`: other offsets than the socket's (the tests run the program over whole packets).

    None when every packet should be kept: no other process claims an identity of this socket's tables (a
    process alone keeps everything, and goes on counting misaddressed packets as `no_tunnel`), or the
    program would exceed the kernel's BPF_MAXINSNS (a daemon with thousands of tunnels: it then reads
    every packet of the protocol, as before). The rule is in `_tunnel_code`.
    """
    code = _tunnel_code(protocol, claims, mine, outer, at)
    if code is None:
        return None
    program = _resolve([*code, "t:accept", (_RET, 0, 0, _KEEP)])
    return program if len(program) <= BPF_MAXINSNS else None


def receive_filter(
    protocol: int,
    claims: Collection[Identity],
    mine: Collection[Identity],
    shard: tuple[ShardLayout, int, int] | None = None,
    outer: int = 4,
) -> list[Instruction] | None:
    """The tunnel filter followed by a --queues worker's shard filter: a packet is kept when this process's
    tunnels should read it AND its flow hashes to this worker. None: keep everything."""
    if shard is None:
        return tunnel_filter(protocol, claims, mine, outer)
    code = _tunnel_code(protocol, claims, mine, outer, None)
    shard_code = _shard_code(*shard)
    if code is not None:
        program = _resolve([*code, "t:accept", *shard_code])
        if len(program) <= BPF_MAXINSNS:
            return program
    return _resolve(shard_code)


def _tunnel_code(
    protocol: int, claims: Collection[Identity], mine: Collection[Identity], outer: int, at: FilterOffsets | None
) -> Code | None:
    """Keep a packet unless the namespace's lookup gives it to another process's tunnel, or to nobody.

    The lookup is core.lookup's (the kernel's ip_tunnel_lookup) run over every claimed identity of the
    socket's tables, as if all the namespace's processes were one kernel: the first identity, in the order
    exact / remote only / local only / wildcard, whose addresses and key match owns the packet. A GRE packet
    whose key no identity has is the key mismatch of the first address pattern that matches it (the tunnel
    core.lookup would count `key_mismatch` on): every process holding an identity of that pattern keeps it,
    so each goes on counting a peer's wrong key. So does a GRE header that cannot be read (truncated, a
    version or routing bit: `gre_truncated`, `gre_version`, `gre_routing`). A packet no identity's addresses
    match is nobody's: dropped here, as the kernel drops it without counting it on any tunnel. An outer
    header the filter does not read at fixed offsets (IPv4 options, a fragment, a short packet) is kept.
    """
    tables = socket_tables(protocol, outer)
    if at is None:
        at = IPV4_OFFSETS if outer == 4 else IPV6_OFFSETS
    gre_at = at.gre
    relevant = sorted((c for c in claims if c.table in tables), key=lambda c: (_step(c), c.order))
    if all(c in mine for c in relevant):
        return None
    code: Code = []
    label = iter(range(1 << 30))

    def keep() -> tuple[int, int, int, str]:
        return (_JA, 0, 0, "t:accept")

    def outcome(owners: Collection[Identity]) -> tuple[int, int, int | str, int | str]:
        return keep() if any(c in mine for c in owners) else (_RET, 0, 0, 0)

    def test(identity: Identity, key_at: int | None, owners: Collection[Identity]) -> None:
        """If the packet matches `identity`'s addresses (and its key, at offset `key_at`): the owners decide."""
        end = f"t:{next(label)}"
        for offset, address in ((at.src, identity.remote), (at.dst, identity.local)):
            for word in range(0, len(address or b""), 4):
                assert address is not None
                value = int.from_bytes(address[word : word + 4], "big")
                code.extend([(_LD_W, 0, 0, offset + word), (_JEQ, 0, end, value)])
        if key_at is not None:
            assert identity.key is not None
            code.extend([(_LD_W, 0, 0, key_at), (_JEQ, 0, end, identity.key)])
        code.extend([outcome(owners), end])

    def blame(candidates: list[Identity]) -> None:
        """The first address pattern that matches: kept by whoever holds an identity of that pattern."""
        patterns: dict[tuple[bytes | None, bytes | None], list[Identity]] = {}
        for c in candidates:
            patterns.setdefault((c.local, c.remote), []).append(c)
        for same in patterns.values():
            test(same[0], None, same)
        code.append((_RET, 0, 0, 0))  # nobody's

    if at.ipv4:  # the outer IPv4 header: anything but 20 bytes without options, not a fragment, is kept
        code.extend([(_LD_LEN, 0, 0, 0), (_JGE, 1, 0, OUTER_HEADER), keep()])
        code.extend([(_LD_B, 0, 0, 0), (_JEQ, 1, 0, 0x45), keep()])
        code.extend([(_LD_H, 0, 0, 6), (_JSET, 0, 1, 0x3FFF), keep()])
    if protocol != 47:
        for c in relevant:
            test(c, None, [c])
        code.append((_RET, 0, 0, 0))
        return code
    # GRE: readable flags (no routing, version 0) and the whole header its C, K and S bits announce.
    code.extend([(_LD_LEN, 0, 0, 0), (_JGE, 1, 0, gre_at + 4), (_JA, 0, 0, "t:malformed")])
    code.extend([(_LD_H, 0, 0, gre_at), (_JSET, 0, 1, _ROUTING_OR_VERSION), (_JA, 0, 0, "t:malformed")])
    code.append((_AND, 0, 0, _FLAG_C | _FLAG_K | _FLAG_S))
    combos = [c | k | s for c in (0, _FLAG_C) for k in (0, _FLAG_K) for s in (0, _FLAG_S)]
    code.extend((_JEQ, f"t:flags{flags}", 0, flags) for flags in combos)
    code.append((_JA, 0, 0, "t:malformed"))
    gre_table, tap_table = tables
    taps = any(c.table == tap_table for c in relevant)
    for flags in combos:
        length = 4 + 4 * bin(flags).count("1")
        key_at = None if not flags & _FLAG_K else gre_at + (8 if flags & _FLAG_C else 4)
        code.extend([f"t:flags{flags}", (_LD_LEN, 0, 0, 0), (_JGE, 1, 0, gre_at + length)])
        code.append((_JA, 0, 0, "t:malformed"))
        if taps:
            code.extend([(_LD_H, 0, 0, gre_at + 2), (_JEQ, 0, 1, _TEB), (_JA, 0, 0, f"t:{tap_table}/{key_at}")])
        code.append((_JA, 0, 0, f"t:{gre_table}/{key_at}"))
    for table in tables:
        in_table = [c for c in relevant if c.table == table]
        for key_at in (None, gre_at + 4, gre_at + 8):
            code.append(f"t:{table}/{key_at}")
            for c in in_table:
                if (c.key is None) == (key_at is None):
                    test(c, key_at, [c])
            code.append((_JA, 0, 0, f"t:blame{table}"))
        code.append(f"t:blame{table}")
        blame(in_table)
    code.append("t:malformed")
    blame(relevant)
    return code


class ClaimFilter:
    """A raw socket's filter, kept in step with the namespace's claims (`update` after each change).

    `mine` gives the identities this process serves; `shard` a --queues worker's share. The first filter is
    attached race-free (`attach_race_free`); later ones replace it, which the kernel does atomically.
    """

    def __init__(
        self,
        sock: socket.socket,
        protocol: int,
        mine: Callable[[], Collection[Identity]],
        shard: tuple[ShardLayout, int, int] | None = None,
        outer: int = 4,
    ) -> None:
        self.sock = sock
        self.outer = outer
        self.protocol = protocol
        self.mine = mine
        self.shard = shard
        self.program: list[Instruction] | None = None
        self._attached = False

    def update(self, claims: Collection[Identity] | None = None) -> None:
        """Build the filter from `claims` (default: read them now) and attach it if it changed."""
        if claims is None:
            claims = claimed()
        program = receive_filter(self.protocol, claims, set(self.mine()), self.shard, self.outer)
        if program == self.program and (self._attached or program is None):
            return
        if not self._attached:
            if program is not None:
                attach_race_free(self.sock, program)
                self._attached = True
        else:
            _attach_filter(self.sock, program if program is not None else [(_RET, 0, 0, _KEEP)])
        self.program = program
