"""Faults a tunnel endpoint meets: it survives what it can, and says clearly when it cannot go on."""

from __future__ import annotations

import contextlib
import signal
import threading
import time

import pytest
from conftest import INNER_B, UNDER_A, UNDER_B, Lab
from pyroute2 import NetNS
from traffic import tcp_transfer

from usertunnel.io import netns


def link(lab: Lab, namespace: str, ifname: str, **kwargs: object) -> None:
    with NetNS(namespace) as ns:
        ns.link("set", index=ns.link_lookup(ifname=ifname)[0], **kwargs)


@pytest.mark.netns
def test_tun_device_deleted_from_outside_ends_the_tunnel_with_one_clear_line(lab: Lab) -> None:
    end_a, _ = lab.pair([])
    assert netns.run(lab.a, ["ip", "link", "del", "tun0"]).returncode == 0
    assert end_a.wait_exit(timeout=3) == 1
    errors = [line for line in end_a.lines if "removed from outside" in line]
    assert errors == ["usertunnel: tun0: the TUN device tun0 was removed from outside (File descriptor in bad state); "
                      "stopping"]  # fmt: skip
    assert not any("Traceback" in line for line in end_a.lines)


@pytest.mark.netns
def test_sigterm_under_full_load_exits_within_a_second_and_removes_the_device(lab: Lab) -> None:
    end_a, _ = lab.pair([])

    def load() -> None:
        # 200 MB cannot finish before the SIGTERM below: the transfer is expected to break off.
        with contextlib.suppress(Exception):
            tcp_transfer(lab.a, lab.b, INNER_B, 5003, 200 * 1024 * 1024, timeout=4)

    transfer = threading.Thread(target=load)
    transfer.start()
    time.sleep(1.0)  # the transfer is running flat out now
    t0 = time.monotonic()
    end_a.proc.send_signal(signal.SIGTERM)
    assert end_a.wait_exit(timeout=5) == 0
    assert time.monotonic() - t0 < 1.0
    assert not any("Traceback" in line for line in end_a.lines)
    with NetNS(lab.a) as ns:
        assert not ns.link_lookup(ifname="tun0")
    transfer.join(15)


@pytest.mark.netns
@pytest.mark.parametrize("fault", ["link-down-up", "address-removed-and-readded"])
def test_underlay_faults_are_survived_and_traffic_resumes(lab: Lab, fault: str) -> None:
    end_a, end_b = lab.pair(["--key", "3"])
    assert lab.ping(lab.a, INNER_B, count=1).returncode == 0
    if fault == "link-down-up":
        link(lab, lab.a, lab.veth_a, state="down")
        lab.ping(lab.a, INNER_B, count=2)  # sends into a dead link: errors are counted, not fatal
        link(lab, lab.a, lab.veth_a, state="up")
    else:
        with NetNS(lab.a) as ns:
            index = ns.link_lookup(ifname=lab.veth_a)[0]
            ns.addr("del", index=index, address=UNDER_A, prefixlen=24)
            lab.ping(lab.a, INNER_B, count=2)
            ns.addr("add", index=index, address=UNDER_A, prefixlen=24)
    time.sleep(1.5)  # veth carrier and neighbour entries come back
    assert lab.ping(lab.a, INNER_B, count=3).returncode == 0
    assert end_a.proc.poll() is None and end_b.proc.poll() is None
    stats = end_a.stop()["tun0"]
    assert end_a.returncode == 0 and stats["rx_packets"] >= 4


@pytest.mark.netns
def test_a_restarted_peer_with_seq_is_refused_until_its_numbers_catch_up_as_in_linux(lab: Lab) -> None:
    end_a, end_b = lab.pair(["--seq"])
    assert lab.ping(lab.a, INNER_B, count=3).returncode == 0
    end_b.stop()
    lab.start(lab.b, ["--local", UNDER_B, "--remote", UNDER_A, "--name", "tun0", "--address", f"{INNER_B}/30",
                      "--seq"])  # fmt: skip
    # B numbers from 0 again; A accepted higher numbers before: Linux's rule drops B until it catches up.
    assert lab.ping(lab.a, INNER_B, count=2).returncode != 0
    stats = end_a.stop()["tun0"]
    assert stats["drops"].get("seq_old", 0) >= 2


@pytest.mark.netns
def test_a_restarted_peer_is_taken_back_after_a_few_packets_with_seq_policy_resync(lab: Lab) -> None:
    end_a, end_b = lab.pair(["--seq", "--seq-policy", "resync"], ["--seq"])
    # 300 echo replies: B's numbers run far ahead of where a restarted B starts (0).
    burst = lab.run(lab.a, ["ping", "-q", "-c", "300", "-i", "0.002", "-W", "1", INNER_B])
    assert burst.returncode == 0, burst.stdout
    end_b.stop()
    lab.start(lab.b, ["--local", UNDER_B, "--remote", UNDER_A, "--name", "tun0", "--address", f"{INNER_B}/30",
                      "--seq"])  # fmt: skip
    # B numbers from 0 again: Linux would drop it for 300 packets. Under resync A drops B's first 7
    # restarted packets, then takes the stream back. (B may also send IPv6 neighbour discovery through
    # the tunnel: those packets are part of the run too.)
    result = lab.ping(lab.a, INNER_B, count=12)
    out = result.stdout.decode()
    assert " 0 received" not in out, out
    stats = end_a.stop()["tun0"]
    assert stats["drops"].get("seq_old", 0) == 7
    assert stats["sequence"]["resyncs"] == 1
