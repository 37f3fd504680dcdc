"""A real Linux kernel as a tunnel peer: user-mode-linux 6.1 with ip_gre, ipip, sit, ip6_tunnel, ip6_gre, fou, esp, vti.

Topology (all in namespaces created here and always removed):

    ut-ix-h: usertunnel runs here          ut-ix-g: the UML process lives here
    ut-ix-vh 198.51.100.1/24  <---veth--->  ut-ix-vg (no address)
                                               |  vector driver, raw transport
                                            guest kernel: vec0 198.51.100.2/24

The guest's underlay device has GRO off: Linux counts one received tunnel
packet per skb, and GRO would merge several wire packets into one, so the
tests could not compare its tunnel's counters with ours.

The guest boots with the host's root filesystem read-only (hostfs), loads the
tunnel modules with busybox's insmod, and runs `guest_agent.py` with the
host's Python; the tests drive it over TCP on the underlay. The guest is
booted once per test session and each test configures its own tunnels.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pyroute2 import NetNS

from usertunnel.io import netns

NS_HOST, NS_GUEST = "ut-ix-h", "ut-ix-g"
VETH_HOST, VETH_GUEST = "ut-ix-vh", "ut-ix-vg"
HOST_ADDR, GUEST_ADDR = "198.51.100.1", "198.51.100.2"
HOST_ADDR6, GUEST_ADDR6 = "2001:db8:1::1", "2001:db8:1::2"  # the same link, IPv6 (ip6_tunnel, ip6_gre)
AGENT_PORT = 7777
BOOT_TIMEOUT = 60.0

# Load order: each module after the ones it depends on (modinfo -F depends).
MODULES = [
    "lib/crc-ccitt",
    "net/ipv6/ipv6",
    "net/ipv4/gre",
    "net/ipv4/ip_tunnel",
    "net/ipv4/tunnel4",
    "net/ipv6/tunnel6",
    "net/ipv4/ip_gre",
    "net/ipv4/ipip",
    "net/ipv6/sit",
    "net/ipv6/ip6_tunnel",
    "net/ipv6/ip6_gre",
    "net/ipv4/udp_tunnel",
    "net/ipv6/ip6_udp_tunnel",
    "net/ipv4/fou",  # receives FOU and GUE (ip fou add); built without CONFIG_NET_FOU_IP_TUNNELS: sends neither
    # IPsec (ESP, vti). The kernel asks for crypto templates by name and, in the guest, has no modprobe that
    # can find them (the host's /lib/modules is another kernel's), so each one is loaded here. First the
    # default random generator: ESP's IV generators (seqiv) need it, its DRBG needs hmac(sha512) and an
    # entropy source; without them every `ip xfrm state add` fails with "Kernel was unable to initialize
    # cryptographic operations".
    "crypto/hmac",
    "crypto/sha512_generic",
    "crypto/jitterentropy_rng",
    "crypto/drbg",
    "crypto/seqiv",
    "crypto/echainiv",
    # the AEADs: rfc4106(gcm(aes)) is ctr(aes) + ghash, rfc7539esp(chacha20,poly1305) needs the lib/crypto
    # halves before the generic ciphers
    "crypto/gf128mul",
    "crypto/ghash-generic",
    "crypto/ctr",
    "crypto/gcm",
    "lib/crypto/libchacha",
    "lib/crypto/libpoly1305",
    "crypto/chacha_generic",
    "crypto/poly1305_generic",
    "crypto/chacha20poly1305",
    # ESP itself, the netlink interface of `ip xfrm`, and ip_vti. Not xfrm4_tunnel (nor ip6_vti, which needs
    # xfrm6_tunnel): it takes every IPIP packet no tunnel owns as IPComp's and drops it, so tunnel4 would no
    # longer answer it with ICMP port unreachable (test_kernel_refusals pins that answer).
    "net/xfrm/xfrm_algo",
    "net/ipv4/esp4",
    "net/ipv6/esp6",
    "net/xfrm/xfrm_user",
    "net/ipv4/ip_vti",
]

INIT = """#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin TMPDIR=/run
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs run /run
mount -t devtmpfs dev /dev 2>/dev/null
for m in {modules}; do
    busybox insmod {moddir}/$m.ko || echo "GUEST: insmod $m failed"
done
ip link set lo up
ip link set vec0 up
ethtool -K vec0 gro off || echo "GUEST: ethtool -K vec0 gro off failed"
ip addr add {guest}/24 dev vec0
ip -6 addr add {guest6}/64 dev vec0 nodad
sysctl -q -w net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
echo GUEST-INIT-DONE
exec {python} -I -S {agent} {guest} {port}
"""


class PeerError(RuntimeError):
    pass


def missing() -> str | None:
    """Why the kernel peer cannot run here, or None."""
    if shutil.which("linux.uml") is None and shutil.which("linux") is None:
        return "user-mode-linux is not installed (Debian package user-mode-linux)"
    if shutil.which("busybox") is None:
        return "busybox is not installed (Debian package busybox-static)"
    if not glob.glob("/usr/lib/uml/modules/*/kernel/net/ipv4/ip_gre.ko"):
        return "user-mode-linux modules (ip_gre.ko) not found under /usr/lib/uml/modules"
    return None


class KernelPeer:
    """The booted guest; `sh` runs a shell command in it, `request` talks to its agent."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="ut-uml-"))
        self.log_path = self.workdir / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._conn: socket.socket | None = None
        self._reader: Any = None

    # --- life cycle -----------------------------------------------------------------------------------------

    def start(self) -> None:
        for name in (NS_HOST, NS_GUEST):
            netns.create(name)
        netns.run(NS_HOST, ["sysctl", "-q", "-w", "net.ipv6.conf.default.accept_dad=0"], check=True)
        netns.veth(NS_HOST, VETH_HOST, NS_GUEST, VETH_GUEST, HOST_ADDR, None, 24)
        with NetNS(NS_HOST) as ns:
            ns.addr("add", index=ns.link_lookup(ifname=VETH_HOST)[0], address=HOST_ADDR6, prefixlen=64)
        # The guest's vector device takes checksum and segmentation offload from the host (vnet
        # headers), so its GRE checksums and TCP segments would cross the veth unfinished: a
        # real NIC finishes them. Turning the offloads off on the veth end makes the host kernel
        # finish them in software as it transmits (validate_xmit_skb), so our side sees wire bytes.
        off = netns.run(NS_GUEST, ["ethtool", "-K", VETH_GUEST, "tx", "off", "tso", "off", "gso", "off"])
        if off.returncode != 0:
            raise PeerError(f"ethtool -K {VETH_GUEST} tx off failed: {off.stderr.decode(errors='replace')}")
        # The same on our side, for what the host's UDP sockets send (FOU and GUE): a UDP checksum left to
        # the device, and a batch sent with UDP_SEGMENT, are finished here in software, before a capture on
        # VETH_HOST sees them, so the capture and the guest see the datagrams a wire would carry.
        off = netns.run(NS_HOST, ["ethtool", "-K", VETH_HOST, "tx", "off"])
        if off.returncode != 0:
            raise PeerError(f"ethtool -K {VETH_HOST} tx off failed: {off.stderr.decode(errors='replace')}")
        moddir = Path(sorted(glob.glob("/usr/lib/uml/modules/*/kernel"))[-1])
        init = self.workdir / "init.sh"
        init.write_text(
            INIT.format(
                modules=" ".join(MODULES),
                moddir=moddir,
                guest=GUEST_ADDR,
                guest6=GUEST_ADDR6,
                python=os.path.realpath(sys.executable),
                agent=Path(__file__).with_name("guest_agent.py").resolve(),
                port=AGENT_PORT,
            )
        )
        init.chmod(0o755)
        uml = shutil.which("linux.uml") or shutil.which("linux")
        assert uml is not None
        argv = [
            uml,
            "mem=256M",
            "root=/dev/root",
            "rootfstype=hostfs",
            "rootflags=/",
            "ro",
            f"init={init}",
            f"vec0:transport=raw,ifname={VETH_GUEST}",
            "con=null",
            "con0=null,fd:1",
        ]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env={**os.environ, "TMPDIR": str(self.workdir)},
                preexec_fn=lambda: (os.setsid(), netns._enter(NS_GUEST)),
            )
        self._connect()
        failures = [line for line in self.console().splitlines() if line.startswith("GUEST:") and "failed" in line]
        if failures:
            raise PeerError(f"kernel peer could not set itself up: {failures}")

    def _connect(self) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise PeerError(f"user-mode-linux exited with {self.proc.returncode}: {self.console()[-2000:]}")
            sock = netns.open_socket(NS_HOST, socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(2)
            try:
                sock.connect((GUEST_ADDR, AGENT_PORT))
            except OSError:
                sock.close()
                time.sleep(0.3)
                continue
            sock.settimeout(120)
            self._conn = sock
            self._reader = sock.makefile("rb")
            return
        raise PeerError(f"kernel peer did not answer within {BOOT_TIMEOUT:.0f} s: {self.console()[-2000:]}")

    def console(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self.proc is not None and self.proc.poll() is None:
            # UML runs each guest process as a host process in its session: kill them all.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        for name in (NS_HOST, NS_GUEST):
            netns.remove(name)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # --- talking to the guest -------------------------------------------------------------------------------

    def request(self, payload: dict[str, Any]) -> dict[str, Any]:
        assert self._conn is not None and self._reader is not None
        self._conn.sendall(json.dumps(payload).encode() + b"\n")
        line = self._reader.readline()
        if not line:
            raise PeerError(f"kernel peer agent closed the connection: {self.console()[-2000:]}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise PeerError(f"kernel peer: {answer['error']}")
        return answer

    def sh(self, command: str, timeout: float = 20) -> dict[str, Any]:
        return self.request({"sh": command, "timeout": timeout})

    def check(self, command: str, timeout: float = 20) -> str:
        """Run `command` in the guest; its stdout, or PeerError with everything it printed."""
        answer = self.sh(command, timeout)
        if answer["rc"] != 0:
            raise PeerError(f"in the kernel peer, `{command}` exited {answer['rc']}: {answer['err']}{answer['out']}")
        out: str = answer["out"]
        return out

    def link_stats(self, name: str, direction: str = "rx") -> dict[str, int]:
        """The tunnel device's counters as the kernel keeps them (ip -s -s -j link show), "rx" or "tx"."""
        data = json.loads(self.check(f"ip -s -s -j link show dev {name}"))[0]["stats64"][direction]
        return {k: int(v) for k, v in data.items()}

    def link_counters(self, name: str) -> dict[str, dict[str, int]]:
        """Both directions' counters of a device, read at once: {"rx": {...}, "tx": {...}}."""
        data = json.loads(self.check(f"ip -s -s -j link show dev {name}"))[0]
        return {d: {k: int(v) for k, v in data["stats64"][d].items()} for d in ("rx", "tx")}

    def link_mtu(self, name: str) -> int:
        mtu: int = json.loads(self.check(f"ip -j link show dev {name}"))[0]["mtu"]
        return mtu

    def snmp(self) -> dict[str, int]:
        """The guest's /proc/net/snmp as "Group.Field" -> value (e.g. "Icmp.OutDestUnreachs")."""
        lines = self.check("cat /proc/net/snmp").splitlines()
        found: dict[str, int] = {}
        for names, values in zip(lines[::2], lines[1::2], strict=True):
            group, _, fields = names.partition(":")
            found |= {f"{group}.{k}": int(v) for k, v in zip(fields.split(), values.split(":")[1].split(), strict=True)}
        return found

    def underlay_drops(self) -> int | None:
        """Frames the host dropped on their way into the guest: user-mode-linux's packet socket on VETH_GUEST was
        full (its skmem drop count, from `ss`); None if it cannot be read."""
        shown = netns.run(NS_GUEST, ["ss", "-0", "-a", "-m"]).stdout.decode()
        for line in shown.splitlines():  # the receiving socket takes every protocol ("*")
            found = re.search(r",d(\d+)\)", line)
            if f"*:{VETH_GUEST}" in line and found:
                return int(found.group(1))
        return None

    def inject(self, ifname: str, packets: list[bytes], gap: float = 0.0) -> None:
        """Write each IP packet into the guest's device `ifname` (guest_agent's "inject")."""
        answer = self.request({"inject": ifname, "packets": [p.hex() for p in packets], "gap": gap})
        assert answer["sent"] == len(packets), answer

    def send_ip(self, packets: list[bytes], gap: float = 0.0) -> None:
        """Send whole IPv4 packets from the guest (guest_agent's "send_ip"): onto the underlay from the guest's
        address, as if its kernel had sent them (a replayed or tampered ESP packet, say)."""
        answer = self.request({"send_ip": [p.hex() for p in packets], "gap": gap})
        assert answer["sent"] == len(packets), answer
