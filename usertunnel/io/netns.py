"""Network namespaces for the lab and the tests: create, wire with veth, run commands, remove.

Everything here happens inside namespaces this module creates; nothing is
added to the namespace the caller runs in. Built on pyroute2 (netns, NetNS)
rather than on `ip` commands.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pyroute2 import NetNS, netns

_ETH_P_ALL = 0x0003


def exists(name: str) -> bool:
    return name in netns.listnetns()


def create(name: str, ipv6: bool = True) -> None:
    """Create namespace `name` with its loopback up; with `ipv6=False`, IPv6 off on every device
    created in it afterwards (no link-local addresses, router solicitations or MLD reports)."""
    if exists(name):
        remove(name)
    netns.create(name)
    with NetNS(name) as ns:
        lo = ns.link_lookup(ifname="lo")
        ns.link("set", index=lo[0], state="up")
    if not ipv6:
        sysctl = ["sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1", "net.ipv6.conf.all.disable_ipv6=1"]
        run(name, sysctl, check=True)


def pids(name: str) -> list[int]:
    """Processes whose network namespace is `name`."""
    try:
        target = os.stat(f"/var/run/netns/{name}")
    except FileNotFoundError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino) and int(entry) != os.getpid():
            found.append(int(entry))
    return found


def remove(name: str) -> None:
    """Kill what runs in `name`, then delete it (its interfaces go with it)."""
    for pid in pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if exists(name):
        netns.remove(name)
    # Control sockets of instances that ran there (usertunnel.run.control.run_directory).
    shutil.rmtree(f"/run/usertunnel/netns/{name}", ignore_errors=True)


def veth(
    ns_a: str,
    if_a: str,
    ns_b: str,
    if_b: str,
    addr_a: str | None,
    addr_b: str | None,
    prefixlen: int,
    mtu: int = 1500,
) -> None:
    """A veth pair between two namespaces, up, each end addressed unless its address is None."""
    with NetNS(ns_a) as a:
        a.link("add", ifname=if_a, kind="veth", peer={"ifname": if_b, "net_ns_fd": ns_b})
    for ns_name, ifname, addr in ((ns_a, if_a, addr_a), (ns_b, if_b, addr_b)):
        with NetNS(ns_name) as ns:
            index = ns.link_lookup(ifname=ifname)[0]
            ns.link("set", index=index, mtu=mtu)
            if addr is not None:
                ns.addr("add", index=index, address=addr, prefixlen=prefixlen)
            ns.link("set", index=index, state="up")


def _enter(name: str) -> None:
    netns.setns(name, flags=0)


def popen(name: str, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
    """Start `argv` inside namespace `name`."""
    return subprocess.Popen(list(argv), preexec_fn=lambda: _enter(name), **kwargs)  # type: ignore[call-overload, no-any-return]


def run(name: str, argv: Sequence[str], timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess[bytes]:
    """Run `argv` inside namespace `name` and wait for it (bounded by `timeout`)."""
    return subprocess.run(
        list(argv), preexec_fn=lambda: _enter(name), capture_output=True, timeout=timeout, check=check
    )


def open_socket(name: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket living in namespace `name` (created there, usable from here)."""
    return netns.create_socket(name, family, kind, proto, flags=0)  # type: ignore[no-any-return]


@contextlib.contextmanager
def namespaces(*names: str) -> Iterator[tuple[str, ...]]:
    """Create the namespaces, and remove them however the block ends."""
    try:
        for name in names:
            create(name)
        yield names
    finally:
        for name in names:
            remove(name)


class UpProcess:
    """`usertunnel up ARGS` (or `usertunnel daemon ARGS`) running inside a namespace (the lab, the tests and
    the benchmarks use it).

    A thread reads its stderr line by line, so the pipe can never fill and
    stall the tunnel, and so the readiness line and the exit `stats` lines can
    be waited for and read.
    """

    def __init__(
        self, namespace: str, args: Sequence[str], command: str = "up", env: Mapping[str, str] | None = None
    ) -> None:
        self.namespace = namespace
        argv = [sys.executable, "-m", "usertunnel", command, *args]
        self.proc = popen(namespace, argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        self.lines: list[str] = []
        self._up_or_eof = threading.Event()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            if ": up " in line:
                self._up_or_eof.set()
        self._up_or_eof.set()

    def wait_ready(self, timeout: float = 10.0) -> str:
        """The readiness line; RuntimeError with what it printed instead if it did not come up."""
        self._up_or_eof.wait(timeout)
        for line in self.lines:
            if ": up " in line:
                return line
        raise RuntimeError(f"usertunnel in {self.namespace} did not come up: {' / '.join(self.lines[-5:])}")

    def wait_exit(self, timeout: float = 10.0) -> int:
        """Wait for the process to end by itself (SIGKILL after `timeout`); its exit status."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout)
        return self.proc.returncode

    def stop(self, timeout: float = 5.0) -> dict[str, dict[str, Any]]:
        """SIGTERM, wait (bounded), and return the `stats` printed at exit, by tunnel name."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.wait_exit(timeout)
        return self.stats()

    def stats(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for line in self.lines:
            if ": stats " in line:
                name, _, payload = line.removeprefix("usertunnel: ").partition(": stats ")
                found[name] = json.loads(payload)
        return found

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Capture:
    """IPv4 (and with `ipv6`, IPv6) packets seen on one interface of a namespace, both directions, read by a
    background thread.

    Each entry of `packets` is (monotonic time, outgoing?, the IPv4 packet without its Ethernet header).
    """

    def __init__(self, namespace: str, ifname: str, ipv6: bool = False) -> None:
        # ETH_P_ALL: the kernel shows outgoing frames only to sockets that asked for every protocol.
        self.sock = open_socket(namespace, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
        self.sock.bind((ifname, 0))
        self.sock.settimeout(0.2)
        self.packets: list[tuple[float, bool, bytes]] = []
        self.ipv6 = ipv6  # IPv6 packets too (their version nibble tells them apart)
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
            if frame[12:14] == b"\x08\x00" or (self.ipv6 and frame[12:14] == b"\x86\xdd"):
                self.packets.append((time.monotonic(), address[2] == socket.PACKET_OUTGOING, frame[14:]))

    def stop(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(timeout=2)
            self.sock.close()

    @property
    def incoming(self) -> list[bytes]:
        return [p for _, outgoing, p in self.packets if not outgoing]

    @property
    def outgoing(self) -> list[bytes]:
        return [p for _, outgoing, p in self.packets if outgoing]
