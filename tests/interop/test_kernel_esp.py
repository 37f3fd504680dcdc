"""ESP (IPsec, RFC 4303) against a real Linux 6.1 kernel booted in user-mode-linux (issue 17 item 4).

Two shapes, each with AES-GCM-128, AES-GCM-256 and ChaCha20-Poly1305:
  - vti: the kernel's ip_vti device `vti1` (ikey 1 okey 1) with ESP tunnel-mode states and policies whose
    mark is the vti's key: inner IPv4 in ESP, next header 4;
  - gre: a GRE tunnel `gre1` with key 1234 and xfrm transport-mode policies for proto gre: the outer GRE
    packet in ESP, next header 47 ("GRE over IPsec").
`linux_commands` writes the kernel's configuration once; it is what a Linux peer of usertunnel needs.

First our sans-I/O core against the kernel, with no usertunnel process: the
kernel's ESP packets, captured on the underlay, are opened by our `Opener` and
sealed again by our `Sealer` byte for byte; what our `Sealer` builds, written
onto the underlay, is accepted by the kernel, which answers. Replayed and
tampered packets are refused by both sides and counted alike: the kernel in
its state's statistics (`ip -s xfrm state`: replay, replay-window, failed) and
in /proc/net/xfrm_stat, our core as Drop reasons.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import same_inner
from kernel_peer import GUEST_ADDR, HOST_ADDR, NS_HOST, VETH_HOST, KernelPeer
from scapy.layers.inet import ICMP, IP
from test_kernel import (
    TRANSFER,
    assert_nothing_lost_unseen,
    ping_from_us,
    send_from_kernel,
    send_from_us,
    settled_counters,
    up_without_ipv6,
    usertunnel_stats,
)

from usertunnel.core import esp
from usertunnel.core.drops import Drop
from usertunnel.core.encap import Tunnel
from usertunnel.core.params import Mode, TunnelParams
from usertunnel.io import netns

OURS, THEIRS = "203.0.113.1", "203.0.113.2"
GRE_KEY = 1234
VTI_KEY = 1  # ikey = okey = the xfrm mark of the vti's states and policies
REPLAY_WINDOW = 64  # ours by default (RFC 4303 3.4.3); Linux's `ip xfrm state add` defaults to 0: no check
ESP_HEADER = 8  # SPI, sequence number


@dataclass(frozen=True)
class Aead:
    name: str
    aead: str  # the kernel's name
    key_bytes: int  # of the cipher key, without the 4-byte salt


AEADS = [
    Aead("gcm128", esp.GCM, 16),
    Aead("gcm256", esp.GCM, 32),
    Aead("chacha20poly1305", esp.CHACHA, 32),
]


@dataclass(frozen=True)
class Cell:
    shape: str  # "vti" or "gre"
    aead: Aead

    @property
    def name(self) -> str:
        return f"{self.shape}-{self.aead.name}"

    @property
    def device(self) -> str:
        return {"vti": "vti1", "gre": "gre1"}[self.shape]

    @property
    def next_header(self) -> int:
        """ESP's next header on this cell's packets: IPIP (tunnel mode) or GRE."""
        return {"vti": 4, "gre": 47}[self.shape]


CELLS = [Cell(shape, aead) for shape in ("vti", "gre") for aead in AEADS]


def make_keys(cell: Cell, seed: int) -> esp.EspKeys:
    """Fresh keys for a cell, seen from our side: `outbound` is what we send with (the kernel's inbound state),
    `inbound` what we accept (the kernel's outbound state). Two directions, two keys, two SPIs."""
    rng = random.Random(f"{cell.name}-{seed}")
    length = cell.aead.key_bytes + 4

    def sa(spi: int) -> esp.SecurityAssociation:
        return esp.SecurityAssociation(spi, cell.aead.aead, rng.randbytes(length), 128, REPLAY_WINDOW)

    return esp.EspKeys(outbound=sa(0x1000 + seed), inbound=sa(0x2000 + seed))


def linux_commands(cell: Cell, keys: esp.EspKeys, local: str = GUEST_ADDR, remote: str = HOST_ADDR) -> list[str]:
    """What the Linux peer runs: its tunnel device, its two ESP states, its two policies.

    `keys` are usertunnel's: our outbound SA is the kernel's inbound state (src remote dst local), our
    inbound SA its outbound one. vti: the states and policies carry the vti's key as their mark, which is how
    ip_vti finds them (its okey marks what it sends for the out policy, its ikey what it received for the
    inbound state and policy); the policies select everything, the mark alone ties them to the device.
    gre: plain transport-mode states, and policies for proto gre between the two addresses; the in policy
    also makes the kernel refuse GRE that did not come in ESP.
    """

    def state(sa: esp.SecurityAssociation, src: str, dst: str, mode: str, extra: str) -> str:
        return (
            f"ip xfrm state add src {src} dst {dst} proto esp spi 0x{sa.spi:08x} reqid {reqid} mode {mode}"
            f" replay-window {sa.replay_window}{extra} aead '{sa.aead}' 0x{sa.key.hex()} {sa.icv_bits}"
        )

    if cell.shape == "vti":
        reqid, mark = 1, f" mark {VTI_KEY}"
        return [
            f"ip tunnel add vti1 mode vti local {local} remote {remote} ikey {VTI_KEY} okey {VTI_KEY}",
            state(keys.outbound, remote, local, "tunnel", mark),
            state(keys.inbound, local, remote, "tunnel", mark),
            f"ip xfrm policy add dir out{mark} tmpl src {local} dst {remote} proto esp reqid {reqid} mode tunnel",
            f"ip xfrm policy add dir in{mark} tmpl src {remote} dst {local} proto esp reqid {reqid} mode tunnel",
        ]
    reqid = 2
    return [
        f"ip tunnel add gre1 mode gre local {local} remote {remote} key {GRE_KEY}",
        state(keys.outbound, remote, local, "transport", ""),
        state(keys.inbound, local, remote, "transport", ""),
        f"ip xfrm policy add src {local} dst {remote} proto gre dir out tmpl proto esp reqid {reqid} mode transport",
        f"ip xfrm policy add src {remote} dst {local} proto gre dir in tmpl proto esp reqid {reqid} mode transport",
    ]


class KernelEsp:
    """One cell's tunnel in the guest, with its states and policies, and our core's two SAs for it.

    The device has no IPv6 (no router solicitations, no MLD reports: every packet it counts is one a test
    sent) and no TSO/GSO (Linux counts one packet per skb).
    """

    def __init__(self, kernel: KernelPeer, cell: Cell, seed: int) -> None:
        self.kernel = kernel
        self.cell = cell
        self.keys = make_keys(cell, seed)
        self.device = cell.device
        commands = linux_commands(cell, self.keys)
        kernel.check(
            f"{commands[0]} && sysctl -q -w net.ipv6.conf.{self.device}.disable_ipv6=1"
            f" && ethtool -K {self.device} tso off gso off"
            f" && ip link set {self.device} up && ip addr add {THEIRS}/30 dev {self.device}"
        )
        for command in commands[1:]:
            kernel.check(command)
        self.sealer = esp.Sealer(self.keys.outbound)
        self.opener = esp.Opener(self.keys.inbound)
        mode = "ipip" if cell.shape == "vti" else "gre"
        key = GRE_KEY if cell.shape == "gre" else None
        params = TunnelParams(
            "ours", Mode.from_name(mode), socket.inet_aton(HOST_ADDR), socket.inet_aton(GUEST_ADDR), key, key, ttl=64
        )
        self.tunnel = Tunnel(params)

    def close(self) -> None:
        self.kernel.sh(f"ip xfrm policy flush; ip xfrm state flush; ip link del {self.device}")

    # --- our side: the core alone -------------------------------------------------------------------------

    def wrap(self, inner: bytes) -> bytes:
        """`inner` as our core encapsulates it before ESP: ipip-shaped for vti (protect_ipv4 of it is ESP tunnel
        mode), a GRE packet with the key for gre."""
        outer = self.tunnel.encapsulate(inner)
        assert isinstance(outer, bytes), outer
        return outer

    def seal(self, inner: bytes) -> bytes:
        protected = esp.protect_ipv4(self.sealer, self.wrap(inner))
        assert isinstance(protected, bytes), protected
        return protected

    def open(self, packet: bytes) -> bytes | Drop:
        """The inner packet of the kernel's ESP packet `packet` (outer IPv4 header on), or why our core refuses
        it; the tunnel header under ESP is checked (an IPv4 header, the GRE key) and removed."""
        opened = esp.unprotect_ipv4(self.opener, packet)
        if isinstance(opened, Drop):
            return opened
        assert opened[9] == self.cell.next_header, f"ESP's next header {opened[9]}"
        ihl = (opened[0] & 0x0F) * 4
        if self.cell.shape == "gre":
            flags, protocol, key = struct.unpack_from("!HHI", opened, ihl)
            assert (flags, protocol, key) == (0x2000, 0x0800, GRE_KEY), opened[ihl : ihl + 8].hex()
            return opened[ihl + 8 :]
        return opened[ihl:]

    # --- the kernel's counters ------------------------------------------------------------------------------

    def state_stats(self, sa: esp.SecurityAssociation) -> dict[str, int]:
        """The kernel's state for `sa`: packets and bytes it carried, and what it refused ("replay": seen
        before, "replay-window": below the window, "failed": integrity check)."""
        src, dst = (HOST_ADDR, GUEST_ADDR) if sa is self.keys.outbound else (GUEST_ADDR, HOST_ADDR)
        mark = f" mark {VTI_KEY}" if self.cell.shape == "vti" else ""
        shown = self.kernel.check(f"ip -s xfrm state get src {src} dst {dst} proto esp spi 0x{sa.spi:08x}{mark}")
        current = re.search(r"lifetime current:\s+(\d+)\(bytes\), (\d+)\(packets\)", shown)
        stats = re.search(r"stats:\s+replay-window (\d+) replay (\d+) failed (\d+)", shown)
        assert current and stats, shown
        return {
            "bytes": int(current.group(1)),
            "packets": int(current.group(2)),
            "replay-window": int(stats.group(1)),
            "replay": int(stats.group(2)),
            "failed": int(stats.group(3)),
        }

    def device_rx(self) -> int:
        return self.kernel.link_stats(self.device)["packets"]


def xfrm_stat(kernel: KernelPeer) -> dict[str, int]:
    """The guest's /proc/net/xfrm_stat (CONFIG_XFRM_STATISTICS): XfrmInStateSeqError, XfrmInStateProtoError..."""
    return {
        name: int(value)
        for name, value in (line.split() for line in kernel.check("cat /proc/net/xfrm_stat").splitlines())
    }


def grew(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The counters that changed, by how much."""
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


@pytest.fixture
def esp_cell(kernel: KernelPeer) -> Iterator[Callable[[Cell], KernelEsp]]:
    """`esp_cell(cell)`: the cell's tunnel, states and policies in the guest, removed at the end of the test."""
    made: list[KernelEsp] = []

    def make(cell: Cell) -> KernelEsp:
        made.append(KernelEsp(kernel, cell, seed=len(made) + 1))
        return made[-1]

    yield make
    for cell in made:
        cell.close()


# --- the underlay --------------------------------------------------------------------------------------------


def send_underlay(packets: list[bytes], gap: float = 0.002) -> None:
    """Write whole IPv4 packets (ours, outer header on) onto the underlay, from the host's side to the guest."""
    sock = netns.open_socket(NS_HOST, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    with sock:
        for packet in packets:
            sock.sendto(packet, (GUEST_ADDR, 0))
            time.sleep(gap)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class EspCapture:
    """The ESP packets the kernel sends to the host, captured on the underlay while the block runs."""

    def __init__(self) -> None:
        self.capture = netns.Capture(NS_HOST, VETH_HOST)

    @property
    def packets(self) -> list[bytes]:
        src = socket.inet_aton(GUEST_ADDR)
        return [p for p in self.capture.incoming if p[9] == esp.IPPROTO_ESP and p[12:16] == src]

    def wait(self, count: int, timeout: float = 5.0) -> list[bytes]:
        """At least `count` of them (or what came within `timeout` s); the capture goes on."""
        wait_until(lambda: len(self.packets) >= count, timeout)
        return self.packets

    def stop(self) -> list[bytes]:
        self.capture.stop()
        return self.packets


def echo_requests(count: int, src: str = OURS, dst: str = THEIRS, first: int = 1) -> list[bytes]:
    return [
        bytes(IP(src=src, dst=dst, id=n) / ICMP(id=0x5E5, seq=n) / f"esp interop {n:04d}".encode())
        for n in range(first, first + count)
    ]


def esp_fields(packet: bytes) -> tuple[int, int, bytes]:
    """(SPI, sequence number, IV) of an ESP packet with its outer IPv4 header."""
    ihl = (packet[0] & 0x0F) * 4
    spi, seq = struct.unpack_from("!II", packet, ihl)
    return spi, seq, packet[ihl + ESP_HEADER : ihl + ESP_HEADER + esp.IV_LEN]


# --- the kernel's packets, our core --------------------------------------------------------------------------


@pytest.mark.netns
@pytest.mark.parametrize("cell", CELLS, ids=[c.name for c in CELLS])
@pytest.mark.matrix("kernel's ESP opened by our core, sealed again byte for byte")
def test_kernel_esp_is_opened_by_our_core_and_sealed_again_byte_for_byte(esp_cell, cell: Cell) -> None:
    tunnel = esp_cell(cell)
    capture = EspCapture()
    try:
        # Inner TOS 0xa2 (a DSCP with ECT(0)) and TTL 33, then a ping without DF: the outer header's rules.
        assert tunnel.kernel.sh(f"ping -c 2 -i 0.2 -W 0.2 -Q 0xa2 -t 33 {OURS}")["rc"] != 2
        assert tunnel.kernel.sh(f"ping -c 1 -W 0.2 -M dont -s 3 {OURS}")["rc"] != 2
        packets = capture.wait(3)
    finally:
        capture.stop()
    assert len(packets) == 3, f"{len(packets)} ESP packets from the kernel, expected 3 (one per ping)"
    for number, packet in enumerate(packets, start=1):
        spi, seq, iv = esp_fields(packet)
        assert (spi, seq) == (tunnel.keys.inbound.spi, number)
        inner = tunnel.open(packet)
        assert isinstance(inner, bytes), f"our core refused the kernel's ESP packet {number}: {inner}"
        echo = IP(inner)
        assert (echo.src, echo.dst, echo[ICMP].type) == (THEIRS, OURS, 8), echo.summary()
        # Sealed again by our core with the kernel's IV (Linux's seqiv: the sequence number XOR a random
        # 64-bit value per state, which our Sealer draws the same way): the same bytes, padding and all.
        unprotected = esp.unprotect_ipv4(esp.Opener(tunnel.keys.inbound), packet)
        assert isinstance(unprotected, bytes)
        sealer = esp.Sealer(tunnel.keys.inbound, iv_salt=(int.from_bytes(iv, "big") ^ seq).to_bytes(8, "big"))
        sealer.seq = seq - 1
        assert esp.protect_ipv4(sealer, unprotected) == packet
        if cell.shape == "vti":
            # ESP tunnel mode's outer header (xfrm4_tunnel_encap_add): the inner TOS byte whole, ECN
            # included; the inner DF; TTL the route's default (64), not the inner's; identification 0 with DF.
            ihl = (packet[0] & 0x0F) * 4
            outer_df = bool(packet[6] & 0x40)
            assert packet[1] == inner[1] and outer_df == bool(inner[6] & 0x40), (packet[:ihl].hex(), inner[:20].hex())
            assert packet[8] == 64 and (not outer_df or packet[4:6] == b"\x00\x00"), packet[:ihl].hex()
    assert [esp_fields(p)[0] for p in packets] == [tunnel.keys.inbound.spi] * 3


# --- our core's packets, the kernel --------------------------------------------------------------------------


@pytest.mark.netns
@pytest.mark.parametrize("cell", CELLS, ids=[c.name for c in CELLS])
@pytest.mark.matrix("our core's ESP accepted by the kernel, which answers")
def test_kernel_accepts_what_our_core_seals_and_answers_in_esp(esp_cell, cell: Cell) -> None:
    tunnel = esp_cell(cell)
    requests = echo_requests(3)
    capture = EspCapture()
    try:
        send_underlay([tunnel.seal(request) for request in requests], gap=0.05)
        answers = capture.wait(3)
    finally:
        capture.stop()
    assert len(answers) == 3, f"the kernel answered {len(answers)} of 3 echo requests sent in ESP"
    for request, answer in zip(requests, answers, strict=True):
        inner = tunnel.open(answer)
        assert isinstance(inner, bytes), inner
        reply, asked = IP(inner), IP(request)
        assert (reply.src, reply.dst, reply[ICMP].type, reply[ICMP].seq) == (THEIRS, OURS, 0, asked[ICMP].seq)
    assert tunnel.device_rx() == 3
    assert tunnel.state_stats(tunnel.keys.outbound)["packets"] == 3
    assert tunnel.state_stats(tunnel.keys.inbound)["packets"] == 3


GRE_CELLS = [c for c in CELLS if c.shape == "gre"]


@pytest.mark.netns
@pytest.mark.parametrize("cell", GRE_CELLS, ids=[c.name for c in GRE_CELLS])
@pytest.mark.matrix("GRE with the right key but without ESP refused by the kernel's policy")
def test_kernel_refuses_gre_with_the_right_key_that_did_not_come_in_esp(esp_cell, cell: Cell) -> None:
    tunnel = esp_cell(cell)
    before = xfrm_stat(tunnel.kernel)
    send_underlay([tunnel.wrap(request) for request in echo_requests(2)])
    assert wait_until(lambda: grew(before, xfrm_stat(tunnel.kernel)).get("XfrmInTmplMismatch") == 2)
    assert tunnel.device_rx() == 0
    send_underlay([tunnel.seal(request) for request in echo_requests(1)])  # the same with ESP passes
    assert wait_until(lambda: tunnel.device_rx() == 1)


# --- replay and tampering, both sides -----------------------------------------------------------------------


@pytest.mark.netns
@pytest.mark.parametrize("cell", CELLS, ids=[c.name for c in CELLS])
@pytest.mark.matrix("replayed ESP refused and counted alike by the kernel and our core")
def test_replayed_esp_is_refused_and_counted_alike_by_the_kernel_and_our_core(esp_cell, cell: Cell) -> None:
    """70 packets each way, then number 70 again (seen) and number 5 again (65 below the highest: outside the
    window of 64). The kernel counts them apart (replay, replay-window); our core says ESP_REPLAY for both."""
    tunnel = esp_cell(cell)
    kernel = tunnel.kernel
    count, replays = 70, (70, 5)
    # The kernel's packets: 70 inner packets written into its tunnel device, sent in ESP.
    capture = EspCapture()
    try:
        kernel.inject(tunnel.device, echo_requests(count, src=THEIRS, dst="203.0.113.9"), gap=0.002)
        theirs = capture.wait(count)
    finally:
        capture.stop()
    assert len(theirs) == count
    opened = [tunnel.open(p) for p in theirs]
    assert not [r for r in opened if isinstance(r, Drop)], opened
    ours_refused = [tunnel.open(theirs[n - 1]) for n in replays]
    assert ours_refused == [Drop.ESP_REPLAY] * len(replays)
    # Ours, replayed to the kernel: the same numbers.
    sealed = [tunnel.seal(request) for request in echo_requests(count)]
    before = xfrm_stat(kernel)
    send_underlay(sealed)
    assert wait_until(lambda: tunnel.state_stats(tunnel.keys.outbound)["packets"] == count)
    send_underlay([sealed[n - 1] for n in replays])
    assert wait_until(lambda: grew(before, xfrm_stat(kernel)).get("XfrmInStateSeqError") == len(replays))
    stats = tunnel.state_stats(tunnel.keys.outbound)
    assert (stats["packets"], stats["replay"], stats["replay-window"], stats["failed"]) == (count, 1, 1, 0), stats
    assert stats["replay"] + stats["replay-window"] == ours_refused.count(Drop.ESP_REPLAY)
    assert tunnel.device_rx() == count


FLIPS = {  # where one byte is flipped, as an offset into ESP (from its header on); what the kernel counts
    "spi": (3, "XfrmInNoStates"),
    "sequence": (7, "XfrmInStateProtoError"),
    "iv": (ESP_HEADER + 2, "XfrmInStateProtoError"),
    "ciphertext": (ESP_HEADER + esp.IV_LEN + 5, "XfrmInStateProtoError"),
    "icv": (-1, "XfrmInStateProtoError"),
}


def flipped(packet: bytes, where: str) -> bytes:
    ihl = (packet[0] & 0x0F) * 4
    offset = FLIPS[where][0]
    position = ihl + offset if offset >= 0 else len(packet) + offset
    changed = bytearray(packet)
    changed[position] ^= 0x80
    return bytes(changed)


@pytest.mark.netns
@pytest.mark.parametrize("cell", CELLS, ids=[c.name for c in CELLS])
@pytest.mark.matrix("one byte flipped (SPI, sequence, IV, ciphertext, ICV) refused by both")
def test_esp_with_one_byte_flipped_is_refused_by_the_kernel_and_our_core(esp_cell, cell: Cell) -> None:
    """Each tampered packet takes a fresh sequence number and comes before the genuine one: a refused
    forgery must not move either side's window, so the genuine packet is accepted after it."""
    tunnel = esp_cell(cell)
    kernel = tunnel.kernel
    capture = EspCapture()
    try:
        kernel.inject(tunnel.device, echo_requests(len(FLIPS), src=THEIRS, dst="203.0.113.9"), gap=0.002)
        theirs = capture.wait(len(FLIPS))
    finally:
        capture.stop()
    assert len(theirs) == len(FLIPS)
    expected_ours = {"spi": Drop.ESP_NO_SA}
    for where, packet in zip(FLIPS, theirs, strict=True):
        assert tunnel.open(flipped(packet, where)) == expected_ours.get(where, Drop.ESP_ICV), where
        assert isinstance(tunnel.open(packet), bytes), f"the genuine packet after a forged {where}"
    sealed = [tunnel.seal(request) for request in echo_requests(len(FLIPS))]
    for where, packet in zip(FLIPS, sealed, strict=True):
        counter = FLIPS[where][1]
        before, before_state = xfrm_stat(kernel), tunnel.state_stats(tunnel.keys.outbound)
        send_underlay([flipped(packet, where), packet])
        accepted = before_state["packets"] + 1
        assert wait_until(lambda n=accepted: tunnel.state_stats(tunnel.keys.outbound)["packets"] == n)
        changed = grew(before, xfrm_stat(kernel))
        assert changed == {counter: 1}, f"{where}: the kernel's xfrm_stat changed {changed}, expected {counter} + 1"
        failed = tunnel.state_stats(tunnel.keys.outbound)["failed"] - before_state["failed"]
        assert failed == (0 if where == "spi" else 1), f"{where}: the state's failed count grew by {failed}"
    assert tunnel.device_rx() == len(FLIPS)


# --- the running usertunnel against the kernel ---------------------------------------------------------------


def esp_keys_file(directory: Path, keys: esp.EspKeys) -> Path:
    """`keys` as an --esp-keys file (TOML, mode 0600): [out] what we send with, [in] what we accept."""

    def table(name: str, sa: esp.SecurityAssociation) -> str:
        return (
            f'[{name}]\nspi = 0x{sa.spi:08x}\naead = "{sa.aead}"\nkey = "0x{sa.key.hex()}"\nicv = {sa.icv_bits}\n'
            f"replay_window = {sa.replay_window}\n"
        )

    path = directory / "esp-keys.toml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(table("out", keys.outbound) + "\n" + table("in", keys.inbound))
    return path


class EspPair:
    """A cell's kernel tunnel (KernelEsp) and `usertunnel up` in NS_HOST with the same keys, pointing at each
    other: vti with ikey/okey 1, or gre with key 1234, both with --esp-keys."""

    def __init__(self, kernel: KernelPeer, cell: Cell) -> None:
        self.kernel = kernel
        self.cell = cell
        self.theirs = KernelEsp(kernel, cell, seed=0x77)
        self.device = self.theirs.device
        self.directory = Path(tempfile.mkdtemp(prefix="ut-esp-"))
        keyfile = esp_keys_file(self.directory, self.theirs.keys)
        options = ("--ikey", str(VTI_KEY), "--okey", str(VTI_KEY)) if cell.shape == "vti" else ("--key", str(GRE_KEY))
        self.ours = up_without_ipv6(
            ["--mode", cell.shape, "--local", HOST_ADDR, "--remote", GUEST_ADDR, "--name", "ut0",
             "--address", f"{OURS}/30", *options, "--esp-keys", str(keyfile)],
        )  # fmt: skip

    def counters(self, timeout: float = 5.0) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
        """Our counters and the kernel device's, once each side's sent packets are the other's received ones
        (or after `timeout` s: the caller's assertion then says what differs)."""
        return settled_counters(self.kernel, lambda: usertunnel_stats("ut0"), self.device, timeout)

    def close(self) -> dict[str, dict[str, Any]]:
        try:
            return self.ours.stop() if self.ours.returncode is None else {}
        finally:
            self.theirs.close()
            shutil.rmtree(self.directory, ignore_errors=True)


@pytest.mark.netns
@pytest.mark.parametrize("cell", CELLS, ids=[c.name for c in CELLS])
@pytest.mark.matrix("usertunnel up: ping + 5 MB TCP, both directions; tx = peer's rx")
def test_running_usertunnel_and_the_kernel_carry_ping_and_5mb_tcp_in_esp_and_count_alike(
    pair_factory, cell: Cell
) -> None:
    pair = pair_factory(EspPair, cell)
    kernel = pair.kernel
    assert ping_from_us(), "ping from usertunnel's side to the kernel's inner address failed"
    assert kernel.sh(f"ping -c 3 -i 0.2 -W 2 {OURS}")["rc"] == 0, "ping from the kernel's side failed"
    sent, received = send_from_us(kernel, 5201)
    assert sent == received
    sent, received = send_from_kernel(kernel, 5202)
    assert sent == received
    ours, theirs = pair.counters()
    assert_nothing_lost_unseen(ours, theirs, kernel)
    assert theirs["rx"]["bytes"] >= TRANSFER and ours["rx_bytes"] >= TRANSFER
    # Every ESP packet each side sent was opened by the other: the kernel's states carried as many packets
    # as the devices counted, and refused none.
    inbound, outbound = (pair.theirs.state_stats(sa) for sa in (pair.theirs.keys.outbound, pair.theirs.keys.inbound))
    assert inbound["packets"] == ours["tx_packets"] and outbound["packets"] == ours["rx_packets"], (inbound, outbound)
    assert (inbound["replay"], inbound["replay-window"], inbound["failed"]) == (0, 0, 0), inbound
    assert pair.close()["ut0"]["drops"] == {}


@pytest.mark.netns
@pytest.mark.parametrize("cell", CELLS, ids=[c.name for c in CELLS])
@pytest.mark.matrix("usertunnel up: captured ESP replayed, and one byte flipped, refused and counted alike")
def test_running_usertunnel_and_the_kernel_refuse_a_replayed_and_a_tampered_packet_alike(
    pair_factory, cell: Cell
) -> None:
    """A ping's ESP packets are captured on the underlay; each side then gets the other's packet 2 again (a
    replay) and packet 3 with the top byte of its sequence number flipped (a number far ahead, so the window
    lets it through to the integrity check, which must refuse it and leave the window where it was). The
    kernel counts them in its inbound state (replay, failed) and in /proc/net/xfrm_stat, usertunnel as the
    drops esp_replay and esp_icv; neither device counts them as received, and the tunnel still carries."""
    pair = pair_factory(EspPair, cell)
    kernel = pair.kernel
    capture = netns.Capture(NS_HOST, VETH_HOST)
    try:
        assert ping_from_us(), "ping from usertunnel's side to the kernel's inner address failed"
        time.sleep(0.2)
    finally:
        capture.stop()
    ours_sent = [p for p in capture.outgoing if p[9] == esp.IPPROTO_ESP]
    theirs_sent = [p for p in capture.incoming if p[9] == esp.IPPROTO_ESP]
    assert len(ours_sent) == len(theirs_sent) == 3, (len(ours_sent), len(theirs_sent))
    ours_before, theirs_before = pair.counters()
    state_before, stat_before = pair.theirs.state_stats(pair.theirs.keys.outbound), xfrm_stat(kernel)

    def far_ahead(packet: bytes) -> bytes:
        changed = bytearray(packet)
        changed[(packet[0] & 0x0F) * 4 + 4] ^= 0x80  # the sequence number's top byte: + 2**31
        return bytes(changed)

    send_underlay([ours_sent[1], far_ahead(ours_sent[2])], gap=0.05)  # to the kernel
    kernel.send_ip([theirs_sent[1], far_ahead(theirs_sent[2])], gap=0.05)  # to usertunnel
    assert wait_until(lambda: len(grew(stat_before, xfrm_stat(kernel))) == 2)
    assert wait_until(lambda: sum(usertunnel_stats("ut0")["drops"].values()) == 2)
    state = pair.theirs.state_stats(pair.theirs.keys.outbound)
    assert grew(state_before, state) == {"replay": 1, "failed": 1}, state
    assert grew(stat_before, xfrm_stat(kernel)) == {"XfrmInStateSeqError": 1, "XfrmInStateProtoError": 1}
    ours_after, theirs_after = pair.counters()
    assert ours_after["drops"] == {"esp_icv": 1, "esp_replay": 1}, ours_after["drops"]
    assert (ours_after["rx_packets"], theirs_after["rx"]["packets"]) == (
        ours_before["rx_packets"],
        theirs_before["rx"]["packets"],
    ), "a refused packet was counted as received"
    # ip_vti counts what its states refuse as receive errors and drops of its device (vti_rcv_cb); ip_gre
    # never sees the packet (the ESP layer below it refused it).
    refused = 2 if cell.shape == "vti" else 0
    assert theirs_after["rx"]["errors"] - theirs_before["rx"]["errors"] == refused, theirs_after["rx"]
    # Neither window moved for the forgery far ahead: the next genuine packets pass both ways.
    assert ping_from_us(), "ping after the replay and the forgery failed"
    assert kernel.sh(f"ping -c 3 -i 0.2 -W 2 {OURS}")["rc"] == 0, "ping from the kernel's side failed after them"
    ours_end, theirs_end = pair.counters()
    assert (
        ours_end["tx_packets"] == theirs_end["rx"]["packets"] and theirs_end["tx"]["packets"] == ours_end["rx_packets"]
    )
    assert pair.close()["ut0"]["drops"] == {"esp_icv": 1, "esp_replay": 1}


@pytest.mark.netns
@pytest.mark.parametrize("cell", CELLS, ids=[c.name for c in CELLS])
@pytest.mark.matrix("usertunnel up's ESP = kernel's for the same inner packets (opened; IV, ICV, ID masked)")
def test_running_usertunnel_seals_what_the_kernel_seals_for_the_same_inner_packets(pair_factory, cell: Cell) -> None:
    """The same inner packets (TCP, UDP, ICMP over several TOS, TTL and DF values, two of the full MTU; for gre
    IPv6 ones too) written into our ut0 and the kernel's device: each side puts one ESP packet per inner packet
    on the wire, of the same length (the same padding and ICV), with the same outer header but for the
    identification and checksum; opened with each side's keys, the packets under ESP (ipip-shaped for vti, GRE
    for gre) are the same field for field but for the identification (same_inner.masked)."""
    pair = pair_factory(EspPair, cell)
    mtu = json.loads(netns.run(NS_HOST, ["ip", "-j", "link", "show", "dev", "ut0"], check=True).stdout)[0]["mtu"]
    packets = same_inner.inner_packets("ipip" if cell.shape == "vti" else "gre", mtu)
    capture = netns.Capture(NS_HOST, VETH_HOST)
    try:
        same_inner.inject(NS_HOST, "ut0", packets)
        pair.kernel.inject(pair.device, packets, gap=same_inner.GAP)
        wait_until(lambda: min(len(capture.incoming), len(capture.outgoing)) >= len(packets))
        time.sleep(0.3)  # a second packet for any inner one would show up now
    finally:
        capture.stop()
    ours = [p for p in capture.outgoing if p[9] == esp.IPPROTO_ESP]
    theirs = [p for p in capture.incoming if p[9] == esp.IPPROTO_ESP]
    assert (len(ours), len(theirs)) == (len(packets), len(packets)), (len(ours), len(theirs), len(packets))
    keys = pair.theirs.keys
    assert [esp_fields(p)[:2] for p in ours] == [(keys.outbound.spi, n) for n in range(1, len(packets) + 1)]
    assert [esp_fields(p)[:2] for p in theirs] == [(keys.inbound.spi, n) for n in range(1, len(packets) + 1)]
    our_opener, their_opener = esp.Opener(keys.outbound), esp.Opener(keys.inbound)
    differ = []
    for inner, sent_by_us, sent_by_kernel in zip(packets, ours, theirs, strict=True):
        a, b = same_inner.masked(sent_by_us), same_inner.masked(same_inner.mirrored(sent_by_kernel, None))
        found = [] if len(a) == len(b) else [f"ESP packet length: ours {len(a)}, the kernel's {len(b)}"]
        if a[:20] != b[:20]:
            found += [f"ESP packet {d}" for d in same_inner.differences(a[:20], b[:20])]
        opened_ours, opened_theirs = (
            esp.unprotect_ipv4(our_opener, sent_by_us),
            esp.unprotect_ipv4(their_opener, sent_by_kernel),
        )
        assert isinstance(opened_ours, bytes) and isinstance(opened_theirs, bytes), (opened_ours, opened_theirs)
        assert same_inner.inner_of(opened_ours) == inner, "our ESP does not carry the inner packet"
        a, b = same_inner.masked(opened_ours), same_inner.masked(same_inner.mirrored(opened_theirs, None))
        if a != b:
            found += same_inner.differences(a, b)
        if found:
            differ.append(f"{same_inner.describe(inner)}: {'; '.join(found)}")
    assert not differ, f"{len(differ)} of {len(packets)} packets differ:\n" + "\n".join(differ[:12])
    counted, theirs_counted = pair.counters()
    assert counted["tx_packets"] == counted["rx_packets"] == len(packets), counted
    assert_nothing_lost_unseen(counted, theirs_counted, pair.kernel)
    assert pair.close()["ut0"]["drops"] == {}


VTI_CELLS = [c for c in CELLS if c.shape == "vti"]


@pytest.mark.netns
@pytest.mark.parametrize("cell", VTI_CELLS, ids=[c.name for c in VTI_CELLS])
@pytest.mark.matrix("kernel's ESP fragmented outside (inner without DF above the ESP path MTU) reaches usertunnel")
def test_kernel_vti_fragments_esp_of_a_large_inner_packet_without_df_and_usertunnel_takes_it(
    pair_factory, cell: Cell
) -> None:
    """vti1 keeps the MTU of a plain tunnel (1480) and does not count ESP's overhead in it. An inner packet
    of 1480 bytes without DF is sealed whole and the ESP packet (1536 bytes) fragmented on the underlay;
    the host reassembles it before usertunnel's socket reads it. (The kernel then learns the path MTU and
    fragments the next inner packets of that size before sealing them.)"""
    pair = pair_factory(EspPair, cell)
    kernel = pair.kernel
    assert kernel.link_mtu(pair.device) == 1480
    capture = netns.Capture(NS_HOST, VETH_HOST)
    try:
        answer = kernel.sh(f"ping -c 2 -i 0.3 -W 2 -M dont -s {1480 - 28} {OURS}")
        time.sleep(0.2)
    finally:
        capture.stop()
    assert answer["rc"] == 0, f"ping of 1480 bytes without DF from the kernel through vti1: {answer['out']}"
    fragments = [p for p in capture.incoming if p[9] == esp.IPPROTO_ESP and struct.unpack_from("!H", p, 6)[0] & 0x3FFF]
    assert fragments, "the kernel sent no fragmented ESP packet: this test did not exercise reassembly"
    ours, theirs = pair.counters()
    assert_nothing_lost_unseen(ours, theirs, kernel)
    assert pair.close()["ut0"]["drops"] == {}


# The largest inner packet the kernel sends with DF through each shape (esp4_get_mtu: the room left on a 1500-byte
# underlay after the headers and the ICV, rounded down to ESP's 4-byte alignment, less pad length and next header):
# vti (outer 20, ESP 8, IV 8, ICV 16): ((1500 - 52) & ~3) - 2 = 1446; gre with key (the ESP transport packet
# holds IPv4 20 + GRE 8 + inner, and the IPv4 header is not padded): ((1500 - 20 - 32) & ~3) - 2 - 8 = 1438.
# usertunnel's device MTU counts 3 bytes of padding always, so a Linux peer sends up to 3 bytes more than ours.
KERNEL_ESP_MTU = {"vti": 1446, "gre": 1438}


@pytest.mark.netns
@pytest.mark.parametrize("cell", CELLS, ids=[c.name for c in CELLS])
@pytest.mark.matrix("usertunnel takes the kernel's largest ESP packets (its exact ESP path MTU, above ours)")
def test_running_usertunnel_takes_the_largest_packets_the_kernel_sends_in_esp(pair_factory, cell: Cell) -> None:
    pair = pair_factory(EspPair, cell)
    kernel = pair.kernel
    largest = KERNEL_ESP_MTU[cell.shape]
    ours = json.loads(netns.run(NS_HOST, ["ip", "-j", "link", "show", "dev", "ut0"], check=True).stdout)[0]["mtu"]
    assert ours <= largest, f"our MTU {ours} above the kernel's ESP path MTU {largest}: Linux would not send that"
    answer = kernel.sh(f"ping -c 2 -i 0.3 -W 2 -M do -s {largest - 28} {OURS}")
    assert answer["rc"] == 0, f"the kernel's {largest}-byte packets with DF did not come back: {answer['out']}"
    too_big = kernel.sh(f"ping -c 1 -W 1 -M do -s {largest - 27} {OURS}")
    # one byte more is refused by the sender itself (a local error, or its own "Frag needed" the first time)
    assert too_big["rc"] != 0 and "0 received" in too_big["out"], too_big["out"]
    ours_counted, theirs = pair.counters()
    assert ours_counted["rx_packets"] == theirs["tx"]["packets"] and ours_counted["drops"] == {}, ours_counted
    pair.close()
