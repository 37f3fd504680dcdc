"""Our Cisco-style keepalives against a Linux kernel peer, which has no keepalives of its own.

Linux reflects a keepalive the way any router would: it decapsulates it and routes
the inner packet (from its own address back to us). It only does so with
`accept_local=1` on the tunnel device (the inner source is one of its own
addresses, which it otherwise drops as a martian) and forwarding on.
"""

from __future__ import annotations

import json
import sys
import time

import pytest
from kernel_peer import GUEST_ADDR, HOST_ADDR, NS_HOST, KernelPeer
from test_kernel import OURS, THEIRS

from usertunnel.io import netns
from usertunnel.io.netns import UpProcess

PERIOD, RETRIES = 0.3, 2


def keepalive_state(end: UpProcess) -> dict[str, object]:
    done = netns.run(NS_HOST, [sys.executable, "-m", "usertunnel", "stats", "-j", "ut0"])
    [tunnel] = json.loads(done.stdout)
    state: dict[str, object] = tunnel["keepalive"]
    return state


def kernel_tunnel(kernel: KernelPeer, accept_local: bool) -> None:
    kernel.check(
        f"ip tunnel add kt0 mode gre local {GUEST_ADDR} remote {HOST_ADDR} && ip link set kt0 up"
        f" && ip addr add {THEIRS}/30 dev kt0 && sysctl -q -w net.ipv4.ip_forward=1"
        f" net.ipv4.conf.kt0.accept_local={int(accept_local)} net.ipv4.conf.kt0.rp_filter=0"
    )


def start_ours() -> UpProcess:
    end = UpProcess(
        NS_HOST,
        ["--local", HOST_ADDR, "--remote", GUEST_ADDR, "--name", "ut0", "--address", f"{OURS}/30",
         "--keepalive", f"{PERIOD},{RETRIES}"],
    )  # fmt: skip
    end.wait_ready()
    return end


@pytest.mark.netns
@pytest.mark.matrix("keepalives reflected by Linux with accept_local=1; line follows the peer")
def test_linux_with_accept_local_reflects_our_keepalives_and_the_line_follows_it(kernel: KernelPeer) -> None:
    kernel_tunnel(kernel, accept_local=True)
    end = start_ours()
    try:
        time.sleep(4 * PERIOD)
        state = keepalive_state(end)
        assert state["state"] == "up" and int(state["replies"]) >= 2, state  # type: ignore[call-overload]
        kernel.check("ip tunnel del kt0")
        time.sleep(PERIOD * (RETRIES + 3))
        assert keepalive_state(end)["state"] == "down"
        kernel_tunnel(kernel, accept_local=True)
        time.sleep(3 * PERIOD)
        assert keepalive_state(end)["state"] == "up"
        assert kernel.sh(f"ping -c 1 -W 2 {OURS}")["rc"] == 0
    finally:
        end.stop()
        kernel.sh("ip tunnel del kt0")


@pytest.mark.netns
@pytest.mark.matrix("without accept_local Linux drops keepalives (martian source): line goes down")
def test_linux_without_accept_local_drops_keepalives_so_the_line_goes_down(kernel: KernelPeer) -> None:
    kernel_tunnel(kernel, accept_local=False)
    end = start_ours()
    try:
        time.sleep(PERIOD * (RETRIES + 3))
        state = keepalive_state(end)
        assert state["state"] == "down" and state["replies"] == 0, state
    finally:
        end.stop()
        kernel.sh("ip tunnel del kt0")
