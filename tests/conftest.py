"""Shared fixtures: namespace labs for end-to-end tests.

A test that needs root and network namespaces asks for the `lab` fixture. Where
they are unavailable it is skipped with the reason, except under
USERTUNNEL_REQUIRE_NETNS=1 (set by .ci/run), where it fails instead: in CI a
skipped end-to-end test would hide a broken data path.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from usertunnel import netns

UNDER_A, UNDER_B = "198.51.100.1", "198.51.100.2"
INNER_A, INNER_B = "203.0.113.1", "203.0.113.2"
_counter = itertools.count()


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, TUN, raw sockets)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    if shutil.which("ping") is None:
        return "needs ping (Debian iputils-ping)"
    return None


def require_netns() -> None:
    reason = _netns_unavailable()
    if reason is None:
        return
    if os.environ.get("USERTUNNEL_REQUIRE_NETNS") == "1":
        pytest.fail(f"USERTUNNEL_REQUIRE_NETNS=1 but this test cannot run: {reason}")
    pytest.skip(reason)


class TunnelEnd:
    """One running `usertunnel up` inside a namespace."""

    def __init__(self, namespace: str, argv: list[str]) -> None:
        self.namespace = namespace
        self.argv = argv
        self.proc = netns.popen(namespace, argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        self.ready_line = ""
        self.stderr_lines: list[str] = []
        self.returncode: int | None = None

    def wait_ready(self, timeout: float = 10.0) -> None:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline().decode(errors="replace").rstrip()
            if not line and self.proc.poll() is not None:
                break
            self.stderr_lines.append(line)
            if ": up " in line:
                self.ready_line = line
                return
        raise AssertionError(f"tunnel in {self.namespace} did not come up: {self.stderr_lines}")

    def stop(self, timeout: float = 5.0, signal_first: bool = True) -> dict[str, dict]:
        """SIGTERM (unless told not to), wait, and return the stats printed at exit by tunnel name."""
        if signal_first and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        self.returncode = self.proc.returncode
        self.stderr_lines += err.decode(errors="replace").splitlines()
        stats = {}
        for line in self.stderr_lines:
            if ": stats " in line:
                name, _, payload = line.removeprefix("usertunnel: ").partition(": stats ")
                stats[name] = json.loads(payload)
        return stats


class Lab:
    """Two namespaces joined by a veth pair on 198.51.100.0/24; tunnels are started on demand."""

    def __init__(self) -> None:
        n = next(_counter)
        tag = f"{os.getpid() % 100000}-{n}"
        self.a = f"ut-t{tag}-a"
        self.b = f"ut-t{tag}-b"
        self.veth_a = f"vt{tag}a"[:15]
        self.veth_b = f"vt{tag}b"[:15]
        self.ends: list[TunnelEnd] = []
        for name in (self.a, self.b):
            netns.create(name)
        netns.veth(self.a, self.veth_a, self.b, self.veth_b, UNDER_A, UNDER_B, 24)

    def start(self, namespace: str, args: list[str], wait: bool = True) -> TunnelEnd:
        argv = [sys.executable, "-m", "usertunnel", "up", *args]
        end = TunnelEnd(namespace, argv)
        self.ends.append(end)
        if wait:
            end.wait_ready()
        return end

    def pair(
        self, args_a: list[str], args_b: list[str] | None = None, name: str = "tun0"
    ) -> tuple[TunnelEnd, TunnelEnd]:
        """Both ends, A at 203.0.113.1/30 and B at 203.0.113.2/30, each pointing at the other."""
        args_b = args_a if args_b is None else args_b
        end_a = self.start(
            self.a, ["--local", UNDER_A, "--remote", UNDER_B, "--name", name, "--address", f"{INNER_A}/30", *args_a]
        )
        end_b = self.start(
            self.b, ["--local", UNDER_B, "--remote", UNDER_A, "--name", name, "--address", f"{INNER_B}/30", *args_b]
        )
        return end_a, end_b

    def run(self, namespace: str, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
        return netns.run(namespace, argv, timeout=timeout)

    def ping(self, namespace: str, target: str, count: int = 3) -> subprocess.CompletedProcess[bytes]:
        return self.run(namespace, ["ping", "-c", str(count), "-i", "0.2", "-W", "1", target])

    def socket(self, namespace: str, family: int, kind: int, proto: int = 0) -> socket.socket:
        return netns.open_socket(namespace, family, kind, proto)

    def close(self) -> None:
        for end in self.ends:
            if end.proc.poll() is None:
                end.proc.kill()
                end.proc.wait()
        for name in (self.a, self.b):
            netns.remove(name)


@pytest.fixture
def lab() -> Iterator[Lab]:
    require_netns()
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
