"""`usertunnel show` and `stats` against running instances, over their control sockets."""

from __future__ import annotations

import json
import signal
import sys

import pytest
from conftest import INNER_B, Lab


def cli(lab: Lab, namespace: str, *args: str) -> tuple[int, str, str]:
    done = lab.run(namespace, [sys.executable, "-m", "usertunnel", *args])
    return done.returncode, done.stdout.decode(), done.stderr.decode()


@pytest.mark.netns
def test_show_and_stats_list_the_running_tunnel_like_ip_tunnel_show(lab: Lab) -> None:
    end_a, _ = lab.pair(["--key", "1234", "--seq"])
    assert lab.ping(lab.a, INNER_B, count=3).returncode == 0
    rc, out, err = cli(lab, lab.a, "show")
    assert rc == 0, err
    assert out.splitlines()[0] == "tun0: gre/ip remote 198.51.100.2 local 198.51.100.1 ttl inherit key 1234"
    assert "  Drop packets out of sequence." in out and "  Sequence packets on output." in out
    rc, out, err = cli(lab, lab.a, "stats", "-j")
    assert rc == 0, err
    [tunnel] = json.loads(out)
    assert (tunnel["name"], tunnel["mode"], tunnel["ikey"], tunnel["iseq"]) == ("tun0", "gre", 1234, True)
    assert tunnel["pid"] == end_a.pid
    assert tunnel["stats"]["rx_packets"] >= 3 and tunnel["stats"]["tx_packets"] >= 3
    rc, out, _ = cli(lab, lab.a, "stats")
    assert "RX: Packets" in out and "TX: Packets" in out


@pytest.mark.netns
def test_a_crashed_instance_leaves_a_stale_socket_that_show_removes(lab: Lab) -> None:
    end_a, _ = lab.pair([])
    end_a.proc.send_signal(signal.SIGKILL)
    end_a.wait_exit()
    rc, out, err = cli(lab, lab.a, "show")
    assert (rc, out) == (0, ""), err
    rc, _, err = cli(lab, lab.a, "show", "tun0")
    assert rc == 1 and len(err.splitlines()) == 1 and "no usertunnel instance named 'tun0'" in err
    # And a new instance of the same name starts where the crashed one was.
    lab.start(lab.a, ["--remote", "198.51.100.2", "--name", "tun0"])
    rc, out, _ = cli(lab, lab.a, "show", "tun0")
    assert rc == 0 and out.startswith("tun0: gre/ip remote 198.51.100.2 local any")


@pytest.mark.netns
def test_show_with_nothing_running_prints_nothing(lab: Lab) -> None:
    assert cli(lab, lab.a, "show")[:2] == (0, "")
    assert cli(lab, lab.a, "stats", "-j")[:2] == (0, "[]\n")
