"""A hostile peer against a protected tunnel (issue 17 item 5): crafted ESP floods A while real TCP crosses it.

Tunnel ends A and B run `--mode gre --key 7 --esp-keys FILE` (and, in a second case, `--mode vti`), with the
mirrored key files of test_esp_tunnel.py. While B sends a few megabytes to A through the tunnel, B's namespace
also sends A a few thousand packets through an IP_HDRINCL raw socket: forged ESP with the right SPI and random
ciphertext, packets sealed with a wrong key, unknown SPIs, ESP truncated at every length below the header, IV,
trailer and ICV (and a sealed packet cut at every length above it), replays of B's own packets captured on
B's veth, captured packets with one byte flipped (in the SPI, in the sequence number, after it), packets sealed
with the right key and one byte flipped, ESP from a spoofed outer source and to another address of A, outer
fragments, and the tunnel's own packets in the clear (GRE with the right key, or IPIP for vti).

Every crafted packet is tagged: outer TOS CRAFTED_TOS (B's tunnel sends TOS 0 under TCP), outer identification
its probe number; the inner packets that crafted ESP carries (when it carries any) hold MARKER. Nothing
crafted carries a valid ICV under B's key, so unlike the GRE-key case (tests/test_hostile.py, where forged
packets with the right key and a live sequence number took B's numbers and B's packets were dropped) the
outcome of every crafted packet is exact, and no genuine packet may be lost:

- both processes survive and the TCP transfer arrives intact;
- A's TUN device (watched with a packet socket in A's namespace) receives B's TCP segments and nothing else;
- A delivered exactly the ESP packets B sent (A's rx_packets = B's tx_packets = the genuine ESP packets a
  second raw socket in A's namespace read);
- each drop reason of A counts exactly the crafted packets sent to it: esp_icv, esp_replay, esp_truncated
  (on the tunnel when the SPI is its own, unmatched when there is no SPI to read), esp_no_sa (unmatched).
  Lone outer fragments never reach a raw socket (the kernel keeps them for reassembly), so outer_fragment
  stays 0; both fragments of a packet are reassembled and read whole. Packets in the clear are not ESP:
  `usertunnel up` with --esp-keys reads protocol 50 only, so A never reads them (no_tunnel stays 0; a
  daemon that also has a tunnel in the clear would count them there, see test_esp_tunnel.py).

The forged packets carry sequence numbers far ahead of B's: were the anti-replay window moved before the ICV
verified, the first forgery would push it past B's numbers, every genuine packet would then be a replay and
the transfer would stall (checked with `Opener.open` so changed in a scratch copy: the transfer times out).
"""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import INNER_A, INNER_B, UNDER_A, UNDER_B, Lab, require_netns
from scapy.layers.inet import GRE, ICMP, IP
from scapy.packet import Raw
from test_esp_tunnel import KEY_BA, KEYS_A, KEYS_B, write_keys
from traffic import tcp_transfer

from usertunnel.core import esp

CRAFTED_TOS = 0x20  # DSCP 8, Not-ECT: B's tunnel sends TOS 0 under TCP, so this marks our packets
MARKER = b"HOSTILE-ESP-MARKER"
HOSTILE_ID = 0x4853  # ICMP echo id of every crafted inner packet
SPI_IN = 0x1002  # the SA B sends with and A accepts (KEYS_A's [in])
SPI_OUT = 0x1001  # the SA A sends with: B's, never A's inbound one
SPOOFED = "198.51.100.9"
OTHER_A = "198.51.100.11"  # a second address of A: the SA is known by SPI and UNDER_A, as xfrm_state_lookup
WRONG_KEY = bytes(range(201, 221))
AHEAD = 2**31  # crafted sequence numbers start here: far past B's, so the replay check lets them reach the ICV
MIN_ESP = esp.HEADER_LEN + esp.IV_LEN + 2 + 16  # the shortest ESP A opens: header, IV, pad length, next, ICV
TRANSFER_BYTES = 48 * 1024 * 1024  # long enough that the flood (about 1 s) meets it on a quiet machine too
FLOOD_AFTER = 300  # start the flood once B has sent this many ESP packets (old replays lie below the window)
PACE_EVERY, PACE_SLEEP = 16, 0.002

TUNNEL, UNMATCHED, NOT_READ = "tun0", "unmatched", "not read"


# --- what the two cases carry ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A protected tunnel mode: its command line, and its packet in the clear (what ESP carries)."""

    args: tuple[str, ...]
    clear_protocol: int  # 47 (GRE, transport mode) or 4 (vti: IPv4 in ESP tunnel mode, an ipip-shaped packet)

    def clear(self, tag: int, inner: bytes, seq: int | None = None) -> bytes:
        """The tunnel's own packet from B to A in the clear, tagged: GRE with key 7 (and `seq`), or IPIP."""
        head = IP(src=UNDER_B, dst=UNDER_A, tos=CRAFTED_TOS, id=tag, flags="DF", ttl=64)
        if self.clear_protocol == 4:
            return bytes(head / IP(inner))
        gre = GRE(proto=0x0800, key_present=1, key=7)
        if seq is not None:
            gre.seqnum_present, gre.sequence_number = 1, seq
        return bytes(head / gre / inner)


GRE_CASE = Case(("--mode", "gre", "--key", "7"), 47)
VTI_CASE = Case(("--mode", "vti", "--key", "1"), 4)


def hostile_inner(n: int) -> bytes:
    return bytes(IP(src=INNER_B, dst=INNER_A) / ICMP(id=HOSTILE_ID, seq=n & 0xFFFF) / MARKER)


def esp_packet(tag: int, body: bytes, *, src: str = UNDER_B, dst: str = UNDER_A, flags: str | int = "DF",
               frag: int = 0) -> bytes:  # fmt: skip
    """A tagged IPv4 packet of protocol 50 carrying `body`."""
    head = IP(src=src, dst=dst, tos=CRAFTED_TOS, id=tag, flags=flags, frag=frag, ttl=64, proto=50)
    return bytes(head / Raw(body)) if body else bytes(head)


def sealed(case: Case, tag: int, seq: int, key: bytes = KEY_BA, spi: int = SPI_IN) -> bytes:
    """The tunnel's packet in the clear (marker inside) sealed in ESP under `key` and `spi` with number `seq`."""
    sealer = esp.Sealer(esp.SecurityAssociation(spi, esp.GCM, key))
    sealer.seq = seq - 1
    packet = esp.protect_ipv4(sealer, case.clear(tag, hostile_inner(tag)))
    assert isinstance(packet, bytes)
    return packet


def retag(packet: bytes, tag: int, src: str | None = None, dst: str | None = None) -> bytes:
    """A captured packet with our TOS and identification (and another source or destination); the sending
    kernel recomputes the header checksum (IP_HDRINCL). Transport and tunnel mode ESP alike leave the outer
    header out of the ICV, so the ESP inside stays what B sealed."""
    out = bytearray(packet)
    out[1] = CRAFTED_TOS
    out[4:6] = tag.to_bytes(2, "big")
    out[10:12] = b"\0\0"
    if src is not None:
        out[12:16] = socket.inet_aton(src)
    if dst is not None:
        out[16:20] = socket.inet_aton(dst)
    return bytes(out)


def flip(packet: bytes, start: int, end: int, rng: random.Random) -> bytes:
    """`packet` with one byte in [start, end) XORed with a random non-zero value."""
    out = bytearray(packet)
    out[rng.randrange(start, end)] ^= rng.randrange(1, 256)
    return bytes(out)


# --- watching both ends -----------------------------------------------------------------------------------------


class Sniffer:
    """Packets of one interface of a namespace, read by a background thread through a packet socket: IPv4
    packets without their link header, with whether the interface sent them (outgoing) or received them."""

    def __init__(self, lab: Lab, namespace: str, ifname: str, link_header: int,
                 keep: Callable[[bool, bytes], bool]) -> None:  # fmt: skip
        self.sock = lab.socket(namespace, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)  # SO_RCVBUFFORCE: never lose one
        self.sock.bind((ifname, 0))
        self.sock.settimeout(0.1)
        self.link_header = link_header
        self.keep = keep
        self.packets: list[bytes] = []
        self.seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame, address = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            packet = frame[self.link_header :]
            if packet[:1] and packet[0] >> 4 == 4 and self.keep(address[2] == socket.PACKET_OUTGOING, packet):
                self.seen += 1
                self.packets.append(packet)

    def stop(self) -> int:
        """Stop reading; how many frames the kernel could not queue on this socket (PACKET_STATISTICS'
        tp_drops, since it was opened)."""
        self._stop.set()
        self._thread.join(timeout=2)
        dropped = struct.unpack("II", self.sock.getsockopt(263, 6, 8))[1]  # SOL_PACKET, PACKET_STATISTICS
        self.sock.close()
        return int(dropped)


class RawReader:
    """Every packet of IP protocol `protocol` that reaches A's namespace, read by a raw socket of our own: raw
    delivery gives each raw socket of the protocol its own copy, so this one sees what the tunnel reads."""

    def __init__(self, lab: Lab, protocol: int) -> None:
        self.sock = lab.socket(lab.a, socket.AF_INET, socket.SOCK_RAW, protocol)
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)  # SO_RCVBUFFORCE
        self.sock.settimeout(0.1)
        self.genuine = 0  # from B's tunnel: not tagged
        self.crafted: Counter[int] = Counter()  # tag -> packets read
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                packet = self.sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if packet[1] == CRAFTED_TOS:
                self.crafted[int.from_bytes(packet[4:6], "big")] += 1
            elif packet[12:16] == socket.inet_aton(UNDER_B):
                self.genuine += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def raw_socket_drops(lab: Lab, protocols: set[int]) -> int:
    """Packets the kernel could not queue on any raw socket of these protocols in A's namespace (/proc/net/raw's
    last column): the tunnel's and ours. Zero, or the exact counts below could not be exact."""
    done = lab.run(lab.a, ["cat", "/proc/net/raw"])
    drops = 0
    for line in done.stdout.decode().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) in protocols:
            drops += int(fields[-1])
    return drops


# --- the crafted kinds ------------------------------------------------------------------------------------------


@dataclass
class Kind:
    """One kind of crafted packet: where A must count it (TUNNEL, UNMATCHED, or NOT_READ), under which reason,
    and how to build one from its tag (with B's captured packets at hand for replays)."""

    name: str
    side: str
    reason: str | None
    make: Callable[[int, list[bytes]], list[bytes]]
    count: int
    captured: bool = False  # built at send time from B's captured packets
    clear: bool = False  # not ESP: the tunnel's own protocol in the clear
    sent: int = 0
    tags: list[int] = field(default_factory=list)


def kinds(case: Case, rng: random.Random) -> list[Kind]:
    """Every crafted kind of the flood, with how many of each."""

    def seq_ahead() -> int:
        return AHEAD + rng.randrange(2**30)

    def random_body(spi: int, length: int) -> bytes:
        return struct.pack("!II", spi, seq_ahead()) + rng.randbytes(length - 8)

    def one(build: Callable[[int], bytes]) -> Callable[[int, list[bytes]], list[bytes]]:
        return lambda tag, _captured: [build(tag)]

    def recent(captured: list[bytes]) -> bytes:
        return captured[-rng.randrange(5, min(60, len(captured)))]  # within A's window (64), not the newest

    def old(captured: list[bytes]) -> bytes:
        return captured[rng.randrange(0, len(captured) - 100)]  # well below A's window

    out = [
        Kind("right SPI, random ciphertext", TUNNEL, "esp_icv",
             one(lambda tag: esp_packet(tag, random_body(SPI_IN, rng.randrange(MIN_ESP, 1400)))), 600),
        Kind("sealed with a wrong key", TUNNEL, "esp_icv",
             one(lambda tag: sealed(case, tag, seq_ahead(), key=WRONG_KEY)), 300),
        Kind("sealed with the right key, one byte flipped after the sequence number", TUNNEL, "esp_icv",
             one(lambda tag: flip(p := sealed(case, tag, seq_ahead()), 28, len(p), rng)), 300),
        Kind("unknown SPI, sealed with the right key", UNMATCHED, "esp_no_sa",
             one(lambda tag: sealed(case, tag, seq_ahead(), spi=rng.choice([SPI_OUT, 0x1003, 0xFFFFFFFF]))), 150),
        Kind("unknown SPI, random", UNMATCHED, "esp_no_sa",
             one(lambda tag: esp_packet(tag, random_body(rng.randrange(256, 2**32) | 0x10000, 200))), 150),
        Kind("right SPI, spoofed outer source", TUNNEL, "esp_icv",
             one(lambda tag: esp_packet(tag, random_body(SPI_IN, 300), src=SPOOFED)), 150),
        Kind("unknown SPI, spoofed outer source", UNMATCHED, "esp_no_sa",
             one(lambda tag: esp_packet(tag, random_body(0x7777, 300), src=SPOOFED)), 100),
        Kind("replay of B's packet (within the window)", TUNNEL, "esp_replay",
             lambda tag, cap: [retag(recent(cap), tag)], 300, captured=True),
        Kind("replay of B's packet (below the window)", TUNNEL, "esp_replay",
             lambda tag, cap: [retag(old(cap), tag)], 300, captured=True),
        Kind("replay of B's packet from a spoofed source", TUNNEL, "esp_replay",
             lambda tag, cap: [retag(recent(cap), tag, src=SPOOFED)], 100, captured=True),
        Kind("B's packet sent to another address of A", UNMATCHED, "esp_no_sa",
             lambda tag, cap: [retag(recent(cap), tag, dst=OTHER_A)], 100, captured=True),
        Kind("B's packet, one byte flipped in the SPI", UNMATCHED, "esp_no_sa",
             lambda tag, cap: [flip(retag(recent(cap), tag), 20, 24, rng)], 100, captured=True),
        # The top bit of the sequence number: a number never seen, so the ICV (which covers it) decides.
        Kind("B's packet, top bit of the sequence number flipped", TUNNEL, "esp_icv",
             lambda tag, cap: [_xor(retag(recent(cap), tag), 24, 0x80)], 100, captured=True),
        # Anywhere after the sequence number: the replay check comes first (RFC 4303 3.4.3), so it is a replay.
        Kind("B's packet, one byte flipped after the sequence number", TUNNEL, "esp_replay",
             lambda tag, cap: [flip(retag(c := recent(cap), tag), 28, len(c), rng)], 200, captured=True),
        # Outer fragments: alone, the kernel keeps them for reassembly (a raw socket never sees them); both
        # halves are reassembled into one forged packet.
        Kind("outer fragment alone (MF, offset 0)", NOT_READ, None,
             one(lambda tag: esp_packet(tag, random_body(SPI_IN, 200)[:96], flags="MF")), 50),
        Kind("outer fragment alone (offset 96)", NOT_READ, None,
             one(lambda tag: esp_packet(tag, random_body(SPI_IN, 200)[96:], flags=0, frag=12)), 50),
        Kind("outer fragments, both halves", TUNNEL, "esp_icv",
             lambda tag, _cap: _fragments(tag, random_body(SPI_IN, 200)), 100),
        Kind("tunnel packet in the clear", NOT_READ, None,
             one(lambda tag: case.clear(tag, hostile_inner(tag))), 150, clear=True),
    ]  # fmt: skip
    if case.clear_protocol == 47:
        out.append(
            Kind("GRE in the clear with the right key and a sequence number", NOT_READ, None,
                 one(lambda tag: case.clear(tag, hostile_inner(tag), seq=rng.randrange(2**32))), 100, clear=True)
        )  # fmt: skip
    # Truncated: shorter than the SPI (nothing to look up), than header + IV + trailer + ICV with our SPI or
    # another, and a sealed packet cut at every length above that.
    for length in range(0, 4):
        out.append(Kind("shorter than the SPI", UNMATCHED, "esp_truncated",
                        one(lambda tag, n=length: esp_packet(tag, struct.pack("!I", SPI_IN)[:n])), 8))  # fmt: skip
    for length in range(4, MIN_ESP):
        out.append(Kind("right SPI, shorter than header + IV + trailer + ICV", TUNNEL, "esp_truncated",
                        one(lambda tag, n=length: esp_packet(tag, random_body(SPI_IN, 64)[:n])), 8))  # fmt: skip
        out.append(Kind("unknown SPI, shorter than header + IV + trailer + ICV", UNMATCHED, "esp_no_sa",
                        one(lambda tag, n=length: esp_packet(tag, random_body(0x7777, 64)[:n])), 2))  # fmt: skip
    full = len(sealed(case, 0, 1)) - 20
    for length in range(MIN_ESP, full):
        out.append(Kind("sealed with the right key, cut short", TUNNEL, "esp_icv",
                        one(lambda tag, n=length: sealed(case, tag, seq_ahead())[: 20 + n]), 3))  # fmt: skip
    return out


def _xor(packet: bytes, offset: int, value: int) -> bytes:
    out = bytearray(packet)
    out[offset] ^= value
    return bytes(out)


def _fragments(tag: int, body: bytes) -> list[bytes]:
    return [esp_packet(tag, body[:96], flags="MF"), esp_packet(tag, body[96:], flags=0, frag=12)]


# --- the test ---------------------------------------------------------------------------------------------------


@pytest.fixture
def he_lab() -> Any:
    require_netns()
    made = Lab(prefix="he", ipv6=False)  # IPv4 only: nothing but the transfer crosses the tunnel
    try:
        yield made
    finally:
        made.close()


@pytest.mark.netns
@pytest.mark.parametrize("case", [GRE_CASE, VTI_CASE], ids=["gre-key-esp", "vti"])
def test_hostile_esp_flood_never_reaches_tun_loses_no_genuine_packet_and_counts_every_drop(
    he_lab: Lab, tmp_path: Path, case: Case
) -> None:
    lab = he_lab
    started = time.monotonic()
    rng = random.Random(4303)
    lab.run(lab.a, ["ip", "addr", "add", f"{OTHER_A}/24", "dev", lab.veth_a])
    keys_a = write_keys(tmp_path / "a.toml", KEYS_A)
    keys_b = write_keys(tmp_path / "b.toml", KEYS_B)
    # --no-coalesce on A: each packet it accepts is one write into tun0, so the sniffer there counts exactly
    # A's rx_packets (coalesced TCP segments would reach it as one GSO packet).
    end_a, end_b = lab.pair([*case.args, "--esp-keys", keys_a, "--no-coalesce"], [*case.args, "--esp-keys", keys_b])

    # B's genuine ESP, as it leaves B's veth (Ethernet header: 14 bytes); what A's TUN device receives.
    under_b = socket.inet_aton(UNDER_B)
    genuine = Sniffer(lab, lab.b, lab.veth_b, 14,
                      lambda out, p: out and p[9] == 50 and p[12:16] == under_b and p[1] != CRAFTED_TOS)  # fmt: skip
    tun = Sniffer(lab, lab.a, "tun0", 0, lambda out, p: not out)
    readers = {50: RawReader(lab, 50), case.clear_protocol: RawReader(lab, case.clear_protocol)}

    all_kinds = kinds(case, rng)
    plan: list[Kind] = [kind for kind in all_kinds for _ in range(kind.count)]
    rng.shuffle(plan)
    prebuilt: list[list[bytes] | None] = []
    for tag, kind in enumerate(plan, start=1):  # built now (scapy is slow), except the replays of B's packets
        kind.tags.append(tag)
        prebuilt.append(None if kind.captured else kind.make(tag, []))
    assert len(plan) < 0xFFFF

    transfer: dict[str, Any] = {}

    def run_transfer() -> None:
        t0 = time.monotonic()
        try:
            transfer["hashes"] = tcp_transfer(lab.b, lab.a, INNER_A, 5001, TRANSFER_BYTES, timeout=45)
        except BaseException as exc:  # reported below
            transfer["error"] = exc
        transfer["seconds"] = time.monotonic() - t0

    sender = lab.socket(lab.b, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    failures: Counter[str] = Counter()
    mover = threading.Thread(target=run_transfer)
    mover.start()
    try:
        deadline = time.monotonic() + 20
        while genuine.seen < FLOOD_AFTER and time.monotonic() < deadline and mover.is_alive():
            time.sleep(0.01)
        assert genuine.seen >= FLOOD_AFTER, f"B sent only {genuine.seen} ESP packets: {end_b.lines[-5:]}"
        flood_started = time.monotonic()
        during_transfer = 0
        for index, (kind, packets) in enumerate(zip(plan, prebuilt, strict=True)):
            if packets is None:
                packets = kind.make(index + 1, genuine.packets[:-2])
            for packet in packets:
                try:
                    sender.sendto(packet, (UNDER_A, 0))
                except OSError as exc:
                    failures[f"{kind.name}: {exc.strerror}"] += 1
            kind.sent += 1
            during_transfer += mover.is_alive()
            if index % PACE_EVERY == PACE_EVERY - 1:
                time.sleep(PACE_SLEEP)
        flood_seconds = time.monotonic() - flood_started
        # The flood must meet B's traffic, or "no genuine packet lost" would say nothing.
        assert during_transfer >= len(plan) // 2, f"only {during_transfer} probes sent while the transfer ran"
        mover.join(50)
        assert not mover.is_alive(), "the TCP transfer did not finish"
        assert "error" not in transfer, transfer.get("error")
        sent_hash, received_hash = transfer["hashes"]
        assert sent_hash == received_hash, "the transfer arrived corrupted or incomplete"
        time.sleep(0.5)  # the last crafted packets read and counted
        assert end_a.proc.poll() is None, f"tunnel A died: {end_a.lines[-5:]}"
        assert end_b.proc.poll() is None, f"tunnel B died: {end_b.lines[-5:]}"
    finally:
        sender.close()
        mover.join(60)
    kernel_drops = raw_socket_drops(lab, {50, case.clear_protocol})
    stats_a, stats_b = end_a.stop(), end_b.stop()
    for reader in readers.values():
        reader.stop()
    sniffer_drops = genuine.stop() + tun.stop()
    assert end_a.returncode == 0 and end_b.returncode == 0, (end_a.lines[-5:], end_b.lines[-5:])
    assert not failures, f"crafted packets the kernel refused to send: {dict(failures)}"
    assert (kernel_drops, sniffer_drops) == (0, 0), "a socket overflowed: not exact"

    # Nothing crafted reached A's TUN device: only B's TCP segments, and as many as A delivered.
    strangers = [p[:48].hex() for p in tun.packets if MARKER in p or p[9] != 6 or p[12:20] != _addresses()]
    assert not strangers, f"{len(strangers)} packets that are not B's TCP reached A's TUN, e.g. {strangers[:3]}"
    tunnel, unmatched = stats_a["tun0"], stats_a["unmatched"]
    assert tunnel["rx_packets"] == tun.seen

    # No genuine packet lost: A delivered every ESP packet B sent, and read nothing else of B's.
    esp_reader = readers[50]
    tx_b = stats_b["tun0"]["tx_packets"]
    assert tunnel["rx_packets"] == tx_b == esp_reader.genuine == genuine.seen, (
        tunnel["rx_packets"], tx_b, esp_reader.genuine, genuine.seen,
    )  # fmt: skip
    assert stats_a["tun0"]["tx_packets"] == stats_b["tun0"]["rx_packets"]

    # Every crafted packet where it belongs: each one the kernel delivered, under its reason, exactly.
    expected: dict[str, Counter[str]] = {TUNNEL: Counter(), UNMATCHED: Counter()}
    for kind in all_kinds:
        if kind.side != NOT_READ:
            assert kind.reason is not None
            expected[kind.side][kind.reason] += _read(kind, readers, case)
    summary = _report(all_kinds, readers, case, tunnel, unmatched, transfer, flood_seconds, during_transfer,
                      len(plan), started)  # fmt: skip
    print("\n" + summary)
    if path := os.environ.get("USERTUNNEL_HOSTILE_ESP_REPORT"):
        Path(path).write_text(summary + "\n")
    for kind in all_kinds:  # the kernel delivered what was sent, but the lone fragments it keeps
        read = _read(kind, readers, case)
        wanted = 0 if kind.name.startswith("outer fragment alone") else kind.sent
        assert read == wanted, (kind.name, kind.sent, read)
    assert dict(tunnel["drops"]) == dict(+expected[TUNNEL]), (tunnel["drops"], expected[TUNNEL])
    assert dict(unmatched["drops"]) == dict(+expected[UNMATCHED]), (unmatched["drops"], expected[UNMATCHED])


def _read(kind: Kind, readers: dict[int, RawReader], case: Case) -> int:
    """How many packets of `kind` our raw socket in A's namespace read (of ESP, or of the protocol in the clear)."""
    reader = readers[case.clear_protocol if kind.clear else 50]
    return sum(reader.crafted[tag] for tag in kind.tags)


def _addresses() -> bytes:
    return socket.inet_aton(INNER_B) + socket.inet_aton(INNER_A)


def _report(all_kinds: list[Kind], readers: dict[int, RawReader], case: Case, tunnel: dict[str, Any],
            unmatched: dict[str, Any], transfer: dict[str, Any], flood_seconds: float, during: int, total: int,
            started: float) -> str:  # fmt: skip
    """What was sent and counted, as markdown tables."""
    rows: dict[str, list[Any]] = {}
    for kind in all_kinds:
        row = rows.setdefault(kind.name, [0, 0, f"{kind.side}: {kind.reason}" if kind.reason else kind.side])
        row[0] += kind.sent
        row[1] += _read(kind, readers, case)
    lines = [
        f"{' '.join(case.args)} --esp-keys: {TRANSFER_BYTES >> 20} MB B->A in {transfer['seconds']:.1f} s, SHA-256 "
        f"equal; {total} crafted probes in {flood_seconds:.1f} s ({during} while the transfer ran); "
        f"A delivered {tunnel['rx_packets']} packets (= B's tx_packets); test ran {time.monotonic() - started:.1f} s",
        "",
        "| crafted kind | probes sent | read by a raw socket in A | where A counts it |",
        "|---|---:|---:|---|",
    ]
    lines += [f"| {name} | {sent} | {read} | {where} |" for name, (sent, read, where) in rows.items()]
    lines += ["", "| A's counter | count |", "|---|---:|", f"| tun0 rx_packets | {tunnel['rx_packets']} |"]
    lines += [f"| tun0 {reason} | {n} |" for reason, n in sorted(tunnel["drops"].items())]
    lines += [f"| unmatched {reason} | {n} |" for reason, n in sorted(unmatched["drops"].items())]
    return "\n".join(lines)
