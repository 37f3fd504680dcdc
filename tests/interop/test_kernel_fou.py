"""usertunnel's FOU and GUE (issue 16) against a real Linux 6.1 kernel in user-mode-linux: the kernel receives.

The guest kernel has fou.ko but was built without CONFIG_NET_FOU_IP_TUNNELS:
`ip fou add port N ipproto 47|4|41` (FOU) and `ip fou add port N gue` (GUE)
hand what a UDP datagram carries to its gre, ipip and sit devices, but those
devices cannot send FOU or GUE (`ip link add ... encap fou` is refused with
EINVAL). So in every cell our packets go to the kernel in UDP and its answers
come back as plain GRE, IPIP or SIT, which a FOU tunnel's UDP socket never sees.

The return path is a second usertunnel, in the same namespace:

    ut0  198.51.100.1  usertunnel up --encap fou|gue   our inner address  ->  kt0 (ip fou add's port)
    ut1  198.51.100.3  usertunnel up (plain, raw)      no address         <-  kt1 (the kernel's answers)

ut1 has an outer address of its own because a tunnel in UDP and a plain one
between the same two addresses (and key) are one tunnel to Linux and to
usertunnel alike: the second is refused ("File exists"). So the kernel has two
devices of the same mode and options, kt0 receiving ours and kt1 sending its
answers (its route to our inner address, from its own inner address). ut1
writes what it decapsulates into its TUN device and the host's stack takes it
(the inner destination is ut0's address; reverse-path filtering is off in that
namespace while a pair runs). So every packet of a ping or a TCP transfer
passes through a usertunnel and a kernel tunnel, and both directions are
counted: ut0's tx_packets = kt0's rx packets, kt1's tx packets = ut1's
rx_packets; ut0 and kt1 receive nothing, ut1 sends nothing (asserted).

The checks, per configuration (a row of the matrix):
  - ping and 5 MB of TCP both ways, every packet counted alike;
  - our UDP, GUE and GRE headers decoded by tshark and each field compared with
    what RFC 8086 (GRE-in-UDP) and draft-ietf-intarea-gue (variant 0) say;
    tshark has no GUE dissector, so `gue.lua` (written from the draft) decodes
    those 4 bytes and hands the rest to tshark's own dissectors;
  - the same inner packets written into ut0 and into the kernel's device: with
    our UDP (and GUE) header taken off, what we send equals what the kernel's
    plain tunnel sends, field by field (same_inner.py says what is masked).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import same_inner
from conftest import require_peer
from kernel_peer import GUEST_ADDR, HOST_ADDR, NS_HOST, VETH_HOST, KernelPeer
from test_kernel import TRANSFER, send_from_kernel, send_from_us, usertunnel_stats

from usertunnel.io import netns
from usertunnel.io.netns import UpProcess

PROTOCOL = same_inner.PROTOCOL
PORT = {"fou": 5555, "gue": 6080}  # GUE's IANA port is 6080; FOU has none (RFC 8086's GRE-in-UDP has 4754)
GRE_IN_UDP_PORT = 4754
INNER = {4: ("203.0.113.1", "203.0.113.2", 30), 6: ("2001:db8:100::1", "2001:db8:100::2", 64)}  # ours, theirs
GUE_LUA = Path(__file__).with_name("gue.lua")
RETURN_ADDR = "198.51.100.3"  # ut1's outer address, added to usertunnel's end of the veth while a pair runs
UDP_FLOWS = 6  # inner UDP flows sent to see the source port follow the flow (encap-sport auto)


@dataclass(frozen=True)
class Cell:
    """One configuration: our tunnel in UDP, the kernel's plain device of the same mode receiving it."""

    mode: str  # gre, ipip, sit
    encap: str  # fou, gue
    csum: bool = False  # --encap-csum: the UDP checksum
    port: int | None = None  # --encap-dport (default PORT[encap])
    sport: int | None = None  # --encap-sport (None: auto)
    options: tuple[str, ...] = ()  # tunnel options (GRE's, TTL, TOS) for both of our ends
    kernel_options: str = ""  # the same in `ip tunnel` words, for the kernel's devices

    @property
    def name(self) -> str:
        parts = [self.mode, self.encap]
        if self.port is not None:
            parts.append(str(self.port))
        if self.sport is not None:
            parts.append(f"sport-{self.sport}")
        parts += [w.removeprefix("--") for w in self.options]
        if self.csum:
            parts.append("encap-csum")
        return "-".join(parts)

    @property
    def dport(self) -> int:
        return self.port if self.port is not None else PORT[self.encap]

    @property
    def family(self) -> int:
        """The inner family pinged and carried over TCP: IPv6 for sit, IPv4 otherwise."""
        return 6 if self.mode == "sit" else 4

    @property
    def encap_length(self) -> int:
        """What we put between the outer IPv4 header and the mode's own bytes: UDP, and GUE's 4-byte header."""
        return 8 + (4 if self.encap == "gue" else 0)

    def plain(self, packet: bytes) -> bytes:
        """Our FOU/GUE `packet` without its UDP (and GUE) header: what the plain tunnel would send."""
        return same_inner.unwrapped(packet, PROTOCOL[self.mode], self.encap_length)

    def fou_add(self) -> str:
        """The kernel's receiving side (`ip fou add`)."""
        what = "gue" if self.encap == "gue" else f"ipproto {PROTOCOL[self.mode]}"
        return f"ip fou add port {self.dport} {what}"

    def ours(self) -> list[str]:
        """`usertunnel up`'s options for the encapsulation and GRE's (the mode and addresses apart)."""
        args = ["--encap", self.encap, "--encap-dport", str(self.dport)]
        if self.sport is not None:
            args += ["--encap-sport", str(self.sport)]
        return [*args, "--encap-csum" if self.csum else "--no-encap-csum", *self.options]

    def gre_flags(self) -> dict[str, bool]:
        return {flag: f"--{flag}" in self.options for flag in ("csum", "key", "seq")}


CELLS = [
    Cell(mode, encap, csum) for mode in ("gre", "ipip", "sit") for encap in ("fou", "gue") for csum in (False, True)
]
ALL_GRE = ("--key", "1234", "--seq", "--csum"), "key 1234 seq csum"
CELLS += [
    # RFC 8086's own port, a fixed source port, and every GRE option inside the UDP.
    Cell("gre", "fou", True, GRE_IN_UDP_PORT, GRE_IN_UDP_PORT, *ALL_GRE),
    Cell("gre", "gue", True, None, None, *ALL_GRE),
    # A fixed outer TTL and the TOS inherited: what a UDP socket sets per packet (ancillary data).
    Cell("ipip", "gue", False, None, None, ("--ttl", "64", "--tos", "inherit"), "ttl 64 tos inherit"),
]


@contextlib.contextmanager
def sysctls(namespace_settings: dict[str, str]) -> Iterator[None]:
    """Set sysctls in NS_HOST for the duration, then put back the values found."""
    found = {}
    for name in namespace_settings:
        shown = netns.run(NS_HOST, ["sysctl", "-n", name], check=True).stdout.decode().strip()
        found[name] = shown
    try:
        for name, value in namespace_settings.items():
            netns.run(NS_HOST, ["sysctl", "-q", "-w", f"{name}={value}"], check=True)
        yield
    finally:
        for name, value in found.items():
            netns.run(NS_HOST, ["sysctl", "-q", "-w", f"{name}={value}"], check=True)


class FouPair:
    """Our tunnel in UDP and the kernel's plain tunnels of the same mode and options:

        ut0  198.51.100.1 -> kt0  (FOU/GUE to `ip fou add`'s port; kt0 has the kernel's inner address)
        ut1  198.51.100.3 <- kt1  (plain; the kernel's route to our inner address goes out kt1, from its own)

    Two kernel devices and two of our outer addresses, because neither Linux nor usertunnel serves one
    (local, remote, key) twice: a tunnel in UDP and a plain one between the same addresses are refused as
    "File exists" by ip tunnel (ip_tunnel_find ignores the encapsulation) and by usertunnel's claims alike.

    Nothing but the tests' packets crosses: for gre and ipip, IPv6 is off on every tunnel device; for sit,
    none has a link-local address (addr_gen_mode 1), so none sends router solicitations or DAD probes. The
    kernel's devices have no TCP or generic segmentation offload, so that they count wire packets (test_kernel).
    """

    def __init__(self, kernel: KernelPeer, cell: Cell) -> None:
        self.kernel = kernel
        self.cell = cell
        ours, theirs, plen = INNER[cell.family]
        self.ours_addr, self.theirs_addr = ours, theirs
        if cell.family == 6:
            quiet = "net.ipv6.conf.{}.addr_gen_mode=1"
            address = f"ip -6 addr add {theirs}/64 dev kt0 nodad && ip -6 route add {ours}/128 dev kt1 src {theirs}"
        else:
            quiet = "net.ipv6.conf.{}.disable_ipv6=1"
            address = f"ip addr add {theirs}/{plen} dev kt0 && ip route add {ours}/32 dev kt1 src {theirs}"
        devices = " && ".join(
            f"ip tunnel add {name} mode {cell.mode} local {GUEST_ADDR} remote {remote} {cell.kernel_options}"
            f" && sysctl -q -w {quiet.format(name)} && ethtool -K {name} tso off gso off && ip link set {name} up"
            for name, remote in (("kt0", HOST_ADDR), ("kt1", RETURN_ADDR))
        )
        self.ends: list[UpProcess] = []
        self._undo = contextlib.ExitStack()  # what close() takes back, in reverse order
        try:
            self._undo.callback(kernel.sh, f"ip tunnel del kt0; ip tunnel del kt1; ip fou del port {cell.dport}")
            kernel.check(f"{cell.fou_add()} && {devices} && {address}")
            return_addr = [f"{RETURN_ADDR}/24", "dev", VETH_HOST]
            netns.run(NS_HOST, ["ip", "addr", "add", *return_addr], check=True)
            self._undo.callback(netns.run, NS_HOST, ["ip", "addr", "del", *return_addr])
            ipv6 = {"addr_gen_mode": "1"} if cell.family == 6 else {"disable_ipv6": "1"}
            self._undo.enter_context(
                sysctls(
                    {"net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.default.rp_filter": "0"}
                    | {f"net.ipv6.conf.default.{k}": v for k, v in ipv6.items()}
                )
            )
            endpoints = ["--remote", GUEST_ADDR, "--mode", cell.mode]
            self.ours = self._start(
                ["--local", HOST_ADDR, *endpoints, "--name", "ut0", "--address", f"{ours}/{plen}", *cell.ours()]
            )
            self.back = self._start(["--local", RETURN_ADDR, *endpoints, "--name", "ut1", *cell.options])
        except BaseException:
            self.close()
            raise

    def _start(self, args: list[str]) -> UpProcess:
        end = UpProcess(NS_HOST, args)
        self.ends.append(end)
        end.wait_ready()
        return end

    def counters(self, timeout: float = 5.0) -> Counters:
        """Every side's counters once every packet one side counts as sent is counted by the other as received
        (or after `timeout` s: the caller's assertion then says what differs)."""
        deadline = time.monotonic() + timeout
        while True:
            found = Counters(
                usertunnel_stats("ut0"),
                usertunnel_stats("ut1"),
                self.kernel.link_counters("kt0"),
                self.kernel.link_counters("kt1"),
            )
            if found.agree() or time.monotonic() > deadline:
                return found
            time.sleep(0.2)

    def mtu(self) -> int:
        """ut0's MTU (the kernel's plain devices have a larger one: they add no UDP)."""
        shown = netns.run(NS_HOST, ["ip", "-j", "link", "show", "dev", "ut0"], check=True).stdout
        mtu: int = json.loads(shown)[0]["mtu"]
        return mtu

    def close(self) -> dict[str, dict[str, Any]]:
        """Stop both usertunnels (their exit stats, by name) and remove both sides' configuration."""
        stats: dict[str, dict[str, Any]] = {}
        for end in self.ends:
            stats |= end.stop()
        self._undo.close()
        return stats


@dataclass
class Counters:
    """ut0 (ours, in UDP), ut1 (ours, plain, receiving), kt0 (the kernel's, receiving ours), kt1 (the kernel's,
    sending its answers): usertunnel's `stats -j` and the kernel's device counters ({"rx": ..., "tx": ...})."""

    ut0: dict[str, Any]
    ut1: dict[str, Any]
    kt0: dict[str, dict[str, int]]
    kt1: dict[str, dict[str, int]]

    def agree(self) -> bool:
        return bool(
            self.ut0["tx_packets"] == self.kt0["rx"]["packets"] and self.kt1["tx"]["packets"] == self.ut1["rx_packets"]
        )

    def assert_alike(self) -> None:
        """ut0's tx = kt0's rx, kt1's tx = ut1's rx; ut0, ut1's sending and kt1's receiving carried nothing;
        no errors, no drops. (kt0's tx is the caller's: it may write into kt0.)"""
        problems = []
        if self.ut0["tx_packets"] != self.kt0["rx"]["packets"]:
            problems.append("ut0's tx_packets (FOU/GUE) are not kt0's rx packets")
        if self.kt1["tx"]["packets"] != self.ut1["rx_packets"]:
            problems.append("kt1's tx packets are not ut1's rx_packets")
        if self.ut0["rx_packets"] or self.ut1["tx_packets"] or self.kt1["rx"]["packets"]:
            problems.append("ut0 or kt1 received, or ut1 sent")
        if any(c[d]["errors"] for c in (self.kt0, self.kt1) for d in ("rx", "tx")) or self.kt1["tx"]["dropped"]:
            problems.append("the kernel counted errors")
        if self.ut0["drops"] or self.ut1["drops"]:
            problems.append("usertunnel dropped packets")
        if problems:
            raise AssertionError(f"{'; '.join(problems)}: {self}")


def ping(target: str, count: int = 3) -> list[str]:
    return ["ping", "-c", str(count), "-i", "0.2", "-W", "2", target]


# --- ping and 5 MB of TCP --------------------------------------------------------------------------------------


@pytest.mark.netns
@pytest.mark.parametrize("cell", CELLS, ids=[c.name for c in CELLS])
@pytest.mark.matrix("kernel takes ours: ping + 5 MB TCP both ways; our tx = its rx, its tx = our rx")
def test_kernel_takes_our_fou_and_gue_answers_ping_and_5mb_tcp_and_both_count_every_packet(
    pair_factory, cell: Cell
) -> None:
    pair = pair_factory(FouPair, cell)
    kernel = pair.kernel
    done = netns.run(NS_HOST, ping(pair.theirs_addr))
    assert done.returncode == 0, f"ping from usertunnel's side failed: {done.stdout.decode()}"
    before = pair.counters()
    answer = kernel.sh(" ".join(ping(pair.ours_addr)))
    assert answer["rc"] == 0, f"ping from the kernel's side failed: {answer['out']}"
    sent, received = send_from_us(kernel, 5301, pair.theirs_addr)
    assert sent == received
    middle = pair.counters()
    sent, received = send_from_kernel(kernel, 5302, pair.ours_addr)
    assert sent == received
    counted = pair.counters()
    counted.assert_alike()
    assert counted.kt0["tx"]["packets"] == 0, counted  # every answer left by kt1, the route to our address
    # Each direction of each exchange crossed a tunnel (an answer from the kernel's underlay address would
    # cross the veth bare): the kernel's echo requests came to ut1 and our replies left by ut0; its 5 MB came
    # to ut1 and our acknowledgements left by ut0 (fewer than one per two segments: ut1 hands the host's
    # stack in-order segments joined, see --no-coalesce).
    assert middle.ut1["rx_packets"] - before.ut1["rx_packets"] >= 3, (before, middle)
    assert middle.ut0["tx_packets"] - before.ut0["tx_packets"] >= 3, (before, middle)
    assert counted.ut1["rx_bytes"] - middle.ut1["rx_bytes"] >= TRANSFER, (middle, counted)
    assert counted.ut0["tx_packets"] - middle.ut0["tx_packets"] >= 50, (middle, counted)
    assert counted.kt0["rx"]["bytes"] >= TRANSFER, counted
    at_exit = pair.close()
    assert at_exit["ut0"]["drops"] == at_exit["ut1"]["drops"] == {}, at_exit


# --- our headers, as tshark decodes them -----------------------------------------------------------------------

FIELDS = [
    "frame.protocols",
    "ip.version", "ip.hdr_len", "ip.len", "ip.flags.df", "ip.proto", "ip.src", "ip.dst", "ip.checksum.status",
    "udp.srcport", "udp.dstport", "udp.length", "udp.checksum", "udp.checksum.status",
    "gre.flags.checksum", "gre.flags.routing", "gre.flags.key", "gre.flags.sequence_number", "gre.flags.version",
    "gre.proto", "gre.checksum.status", "gre.key", "gre.sequence_number",
    "ipv6.src", "ipv6.dst", "icmp.checksum.status", "icmpv6.checksum.status",
]  # fmt: skip
GUE_FIELDS = ["gue.version", "gue.c", "gue.hlen", "gue.proto_ctype", "gue.flags"]
# tshark's checksum status values (epan/proto.h): 0 bad, 1 good, 2 unverified, 3 not present.
GOOD, NOT_PRESENT = 1, 3


def write_pcap(path: Path, packets: list[bytes]) -> None:
    """A pcap file of IP packets (LINKTYPE_RAW), no timestamps."""
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
        for packet in packets:
            out.write(struct.pack("<IIII", 0, 0, len(packet), len(packet)) + packet)


def tshark(path: Path, cell: Cell) -> list[dict[str, list[str]]]:
    """Each packet as tshark decodes it, UDP port `cell.dport` read as the cell carries it: field -> values
    (outer first where a protocol occurs twice)."""
    carried = {"gre": "gre", "ipip": "ip", "sit": "ipv6"}[cell.mode]
    fields = FIELDS + (GUE_FIELDS if cell.encap == "gue" else [])
    argv = ["tshark", "-n", "-r", str(path), "-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE"]
    if cell.encap == "gue":
        argv += ["-X", f"lua_script:{GUE_LUA}", "-d", f"udp.port=={cell.dport},gue"]
    elif (cell.mode, cell.dport) != ("gre", GRE_IN_UDP_PORT):  # IANA's port for GRE-in-UDP tshark knows itself
        argv += ["-d", f"udp.port=={cell.dport},{carried}"]
    argv += ["-T", "fields", "-E", "aggregator=|", "-E", "occurrence=a"]
    for name in fields:
        argv += ["-e", name]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = []
    for line in done.stdout.splitlines():
        values = line.split("\t")
        rows.append({name: (value.split("|") if value else []) for name, value in zip(fields, values, strict=True)})
    return rows


def number(text: str) -> int:
    """A tshark field value: decimal, 0x hex, or a boolean (1/0 in tshark 4.0, True/False in later ones)."""
    if text in ("True", "False"):
        return int(text == "True")
    return int(text, 0)


def expected_headers(cell: Cell, inner: bytes, port_range: tuple[int, int]) -> dict[str, object]:
    """What RFC 8086 and the GUE draft say each field of our packet carrying `inner` must be. A value of a
    tuple is a range; "flow" is checked across packets (the same inner flow, the same source port)."""
    carried = {"gre": "gre:ip", "ipip": "ip", "sit": "ipv6"}[cell.mode]
    want: dict[str, object] = {
        # The chain of protocols: outer IPv4, UDP, [GUE,] then the mode's own bytes.
        "protocols": "raw:ip:udp:" + ("gue:" if cell.encap == "gue" else "") + carried,
        "ip.version": 4, "ip.hdr_len": 20, "ip.proto": 17, "ip.src": HOST_ADDR, "ip.dst": GUEST_ADDR,
        "ip.flags.df": 1,  # pmtudisc (the default): DF on every packet, as the kernel's tunnel
        "ip.checksum.status": GOOD,
        # RFC 8086 3.2.1: destination port the configured one (IANA's 4754 for GRE-in-UDP); source port
        # an entropy value from the inner flow. RFC 8086 says the range SHOULD be 49152-65535: Linux's
        # udp_flow_src_port uses ip_local_port_range instead, and so do we.
        "udp.dstport": cell.dport,
        "udp.srcport": cell.sport if cell.sport is not None else port_range,
    }  # fmt: skip
    if cell.encap == "gue":
        # GUE variant 0: version 0, C 0 (a data message), Hlen 0 (no extension fields), Proto/ctype the IP
        # protocol number of what follows, Flags 0.
        want |= {"gue.version": 0, "gue.c": 0, "gue.hlen": 0, "gue.proto_ctype": PROTOCOL[cell.mode], "gue.flags": 0}
    if cell.mode == "gre":
        flags = cell.gre_flags()
        want |= {
            "gre.flags.version": 0, "gre.flags.routing": 0,
            "gre.flags.checksum": int(flags["csum"]), "gre.flags.key": int(flags["key"]),
            "gre.flags.sequence_number": int(flags["seq"]),
            "gre.proto": 0x0800 if inner[0] >> 4 == 4 else 0x86DD,
        }  # fmt: skip
        if flags["csum"]:
            want["gre.checksum.status"] = GOOD
        if flags["key"]:
            want["gre.key"] = 1234
    return want


def check_packet(cell: Cell, row: dict[str, list[str]], want: dict[str, object]) -> list[str]:
    """The fields of one decoded packet that differ from `want` (outer occurrence of each field)."""
    wrong = []
    protocols = row["frame.protocols"][0]
    if not protocols.startswith(str(want["protocols"])):
        wrong.append(f"protocols {protocols}, want {want['protocols']}...")
    for name, value in want.items():
        if name == "protocols":
            continue
        got = row[name][0] if row[name] else None
        if name in ("ip.src", "ip.dst"):
            ok = got == value
        elif isinstance(value, tuple):
            ok = got is not None and value[0] <= number(got) <= value[1]
        else:
            ok = got is not None and number(got) == value
        if not ok:
            wrong.append(f"{name} {got}, want {value}")
    # UDP: its length RFC 768's (the datagram after the outer header); the checksum RFC 8086 6.1 allows to be
    # zero over IPv4 (then none is computed), else it must be right.
    ip_len, udp_len = number(row["ip.len"][0]), number(row["udp.length"][0])
    if udp_len != ip_len - 20:
        wrong.append(f"udp.length {udp_len}, want {ip_len - 20}")
    checksum, status = number(row["udp.checksum"][0]), number(row["udp.checksum.status"][0])
    if cell.csum and (checksum == 0 or status != GOOD):
        wrong.append(f"udp.checksum {checksum:#06x} status {status}: want a right one (encap-csum)")
    if not cell.csum and (checksum != 0 or status != NOT_PRESENT):
        wrong.append(f"udp.checksum {checksum:#06x} status {status}: want zero, none computed (noencap-csum)")
    # The packet inside: its addresses, and every checksum tshark judged right.
    ours, theirs, _ = INNER[cell.family]
    if cell.family == 4 and row["ip.src"][1:2] != [ours]:
        wrong.append(f"inner ip.src {row['ip.src'][1:]}, want {ours}")
    if cell.family == 6 and row["ipv6.src"][:1] != [ours]:
        wrong.append(f"inner ipv6.src {row['ipv6.src']}, want {ours}")
    for name in ("ip.checksum.status", "icmp.checksum.status", "icmpv6.checksum.status"):
        if any(number(v) != GOOD for v in row[name]):
            wrong.append(f"{name} {row[name]}: a checksum tshark finds wrong")
    return wrong


def ours_in_udp(packets: list[bytes], cell: Cell) -> list[bytes]:
    """Our FOU or GUE packets among captured ones: IPv4 UDP from HOST_ADDR to the cell's port."""
    host = socket.inet_aton(HOST_ADDR)
    return [p for p in packets if p[9] == 17 and p[12:16] == host and struct.unpack_from("!H", p, 22)[0] == cell.dport]


def flow_of(inner: bytes) -> tuple[bytes, ...]:
    """An inner packet's flow: addresses, protocol and, for UDP, the ports."""
    if inner[0] >> 4 == 6:
        proto = inner[6]
        return (inner[8:40], bytes((proto,)), inner[40:44] if proto == 17 else b"")
    proto, ihl = inner[9], (inner[0] & 0x0F) * 4
    return (inner[12:20], bytes((proto,)), inner[ihl : ihl + 4] if proto == 17 else b"")


@pytest.mark.netns
@pytest.mark.parametrize("cell", CELLS, ids=[c.name for c in CELLS])
@pytest.mark.matrix("our UDP/GUE/GRE headers = RFC 8086 and the GUE draft, field by field (tshark)")
def test_our_udp_gue_and_gre_headers_are_what_rfc_8086_and_the_gue_draft_say_as_tshark_decodes_them(
    pair_factory, cell: Cell, tmp_path: Path
) -> None:
    if shutil.which("tshark") is None:
        require_peer("tshark is not installed (Debian package tshark)")
    pair = pair_factory(FouPair, cell)
    low, high = map(int, netns.run(NS_HOST, ["sysctl", "-n", "net.ipv4.ip_local_port_range"]).stdout.split())
    expected = 6 + 2 * UDP_FLOWS
    capture = netns.Capture(NS_HOST, VETH_HOST)
    try:
        assert netns.run(NS_HOST, ping(pair.theirs_addr)).returncode == 0  # our echo requests
        assert pair.kernel.sh(" ".join(ping(pair.ours_addr)))["rc"] == 0  # our echo replies
        family = socket.AF_INET6 if cell.family == 6 else socket.AF_INET
        for flow in range(UDP_FLOWS):  # several inner UDP flows, two datagrams each
            sock = netns.open_socket(NS_HOST, family, socket.SOCK_DGRAM)
            with sock:
                sock.bind((pair.ours_addr, 41000 + flow))
                for _ in range(2):
                    sock.sendto(b"usertunnel fou flow %d" % flow, (pair.theirs_addr, 9))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(ours_in_udp(capture.outgoing, cell)) < expected:
            time.sleep(0.1)
    finally:
        capture.stop()
    ours = ours_in_udp(capture.outgoing, cell)
    assert len(ours) >= expected, (
        f"{len(ours)} FOU/GUE packets of ours captured, {expected} sent at least: "
        + "; ".join(same_inner.describe(same_inner.inner_of(cell.plain(p))) for p in ours)
    )
    write_pcap(tmp_path / "ours.pcap", ours)
    rows = tshark(tmp_path / "ours.pcap", cell)
    assert len(rows) == len(ours)
    wrong = []
    ports: dict[tuple[bytes, ...], set[int]] = {}
    sequence = []
    for packet, row in zip(ours, rows, strict=True):
        inner = same_inner.inner_of(cell.plain(packet))
        for problem in check_packet(cell, row, expected_headers(cell, inner, (low, high))):
            wrong.append(f"{problem} ({same_inner.describe(inner)})")
        ports.setdefault(flow_of(inner), set()).add(number(row["udp.srcport"][0]))
        if row["gre.sequence_number"]:
            sequence.append(number(row["gre.sequence_number"][0]))
    assert not wrong, f"{len(wrong)} fields differ:\n" + "\n".join(wrong[:20])
    # RFC 8086 3.2.1: one flow, one source port (no reordering); several flows spread over ports.
    assert all(len(p) == 1 for p in ports.values()), ports
    if cell.sport is None:
        assert len(set().union(*ports.values())) >= 2, ports
    if cell.gre_flags()["seq"]:
        assert sequence == list(range(sequence[0], sequence[0] + len(sequence))), sequence
    pair.close()


# --- the same inner packets: ours in UDP, the kernel's plain ---------------------------------------------------


@pytest.mark.netns
@pytest.mark.parametrize("cell", CELLS, ids=[c.name for c in CELLS])
@pytest.mark.matrix("without its UDP, usertunnel up's packet = kernel's plain one (same inner); tx = peer's rx")
def test_inside_the_udp_usertunnel_sends_what_the_kernels_plain_tunnel_sends_for_the_same_inner_packets(
    pair_factory, cell: Cell
) -> None:
    pair = pair_factory(FouPair, cell)
    packets = same_inner.inner_packets(cell.mode, pair.mtu())
    wanted = set(packets)
    capture = same_inner.inject_both(pair.kernel, packets, NS_HOST, VETH_HOST)
    ours = [cell.plain(p) for p in ours_in_udp(capture.outgoing, cell)]
    theirs = same_inner.tunnel_packets(capture.incoming, cell.mode, GUEST_ADDR)
    # Only the packets written here are compared (the counters below count everything).
    ours = [p for p in ours if same_inner.inner_of(p) in wanted]
    theirs = [p for p in theirs if same_inner.inner_of(p) in wanted]
    same_inner.assert_one_each(ours, packets, "usertunnel")
    same_inner.assert_one_each(theirs, packets, "the kernel")
    counted = pair.counters()
    counted.assert_alike()
    assert counted.ut0["tx_packets"] == counted.kt0["tx"]["packets"] == len(packets), counted
    differ = []
    for inner, sent_by_us, sent_by_kernel in zip(packets, ours, theirs, strict=True):
        a, b = same_inner.masked(sent_by_us), same_inner.masked(same_inner.mirrored(sent_by_kernel, None))
        if a != b:
            differ.append(f"{same_inner.describe(inner)}: {'; '.join(same_inner.differences(a, b))}")
    assert not differ, f"{len(differ)} of {len(packets)} packets differ:\n" + "\n".join(differ[:12])
    at_exit = pair.close()
    assert at_exit["ut0"]["drops"] == at_exit["ut1"]["drops"] == {}, at_exit
