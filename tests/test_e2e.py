"""End to end: real TUN devices, raw sockets and traffic between two network namespaces."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import INNER_A, INNER_B, UNDER_B, Lab
from traffic import tcp_transfer

from usertunnel.io import netns

TRANSFER_BYTES = 10 * 1024 * 1024
PORT = 5001

VARIANTS = {
    "gre": ([], None),
    "gre-key": (["--key", "1234"], None),
    "gre-ikey-okey": (["--ikey", "1", "--okey", "2"], ["--ikey", "2", "--okey", "1"]),
    "gre-seq": (["--seq"], None),
    "gre-csum": (["--csum"], None),
    "gre-all": (["--key", "0.0.4.210", "--seq", "--csum", "--ttl", "64", "--tos", "inherit"], None),
    "ipip": (["--mode", "ipip"], None),
}


@pytest.mark.netns
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_ping_and_10mb_tcp_transfer_arrive_intact(lab: Lab, variant: str) -> None:
    args_a, args_b = VARIANTS[variant]
    end_a, end_b = lab.pair(args_a, args_b)
    ping = lab.ping(lab.a, INNER_B)
    assert ping.returncode == 0, ping.stdout.decode()
    sent, received = tcp_transfer(lab.a, lab.b, INNER_B, PORT, TRANSFER_BYTES)
    assert sent == received
    stats_a, stats_b = end_a.stop(), end_b.stop()
    assert end_a.returncode == 0 and end_b.returncode == 0
    # At least the 10 MB went through each tunnel, and no packet was dropped by a receive rule.
    assert stats_a["tun0"]["tx_bytes"] >= TRANSFER_BYTES
    assert stats_b["tun0"]["rx_bytes"] >= TRANSFER_BYTES
    for stats in (stats_a, stats_b):
        for reason in ("key_mismatch", "seq_old", "seq_missing", "csum_bad", "csum_missing", "inner_malformed"):
            assert reason not in stats["tun0"]["drops"], stats


@pytest.mark.netns
def test_wrong_key_delivers_nothing_and_is_counted(lab: Lab) -> None:
    end_a, end_b = lab.pair(["--key", "1"], ["--key", "2"])
    ping = lab.ping(lab.a, INNER_B, count=3)
    assert ping.returncode != 0
    end_a.stop()
    stats_b = end_b.stop()
    assert stats_b["tun0"]["rx_packets"] == 0
    assert stats_b["tun0"]["drops"].get("key_mismatch", 0) >= 3


@pytest.mark.netns
def test_wrong_remote_delivers_nothing_and_is_counted(lab: Lab) -> None:
    lab.start(lab.a, ["--local", "198.51.100.1", "--remote", UNDER_B, "--name", "tun0", "--address", f"{INNER_A}/30"])
    end_b = lab.start(
        lab.b, ["--local", UNDER_B, "--remote", "198.51.100.3", "--name", "tun0", "--address", f"{INNER_B}/30"]
    )
    ping = lab.ping(lab.a, INNER_B, count=3)
    assert ping.returncode != 0
    stats_b = end_b.stop()
    assert stats_b["tun0"]["rx_packets"] == 0
    assert stats_b["unmatched"]["drops"].get("no_tunnel", 0) >= 3


@pytest.mark.netns
def test_sigterm_exits_zero_quickly_and_removes_the_device(lab: Lab) -> None:
    import time

    from pyroute2 import NetNS

    end_a, _ = lab.pair([])
    with NetNS(lab.a) as ns:
        assert ns.link_lookup(ifname="tun0")
    t0 = time.monotonic()
    end_a.stop()
    assert end_a.returncode == 0
    assert time.monotonic() - t0 < 1.0
    with NetNS(lab.a) as ns:
        assert not ns.link_lookup(ifname="tun0")


@pytest.mark.netns
def test_existing_device_name_is_refused_with_one_line_and_nothing_left(lab: Lab) -> None:
    lab.pair([])
    end = lab.start(lab.a, ["--remote", UNDER_B, "--name", "tun0"], wait=False)
    assert end.wait_exit(timeout=10) == 2
    errors = [line for line in end.lines if line]
    assert len(errors) == 1 and "already exists" in errors[0], errors
    assert end.stats() == {}


@pytest.mark.netns
def test_default_mtu_is_underlay_mtu_minus_exact_overhead(lab: Lab) -> None:
    end_a, end_b = lab.pair(["--key", "5", "--seq", "--csum"])
    assert "mtu 1464" in end_a.wait_ready()  # 1500 - 20 - 4 - 3 * 4
    end_c = lab.start(lab.a, ["--mode", "ipip", "--remote", UNDER_B, "--name", "ipip9"])
    assert "mtu 1480" in end_c.wait_ready()


@pytest.mark.netns
@pytest.mark.parametrize(
    ("dropped", "expected"),
    [("-net_raw,-net_admin", "CAP_NET_RAW"), ("-net_admin", "CAP_NET_ADMIN")],
)
def test_missing_privilege_is_one_line_exit_2_and_nothing_left(lab: Lab, dropped: str, expected: str) -> None:
    import shutil
    import sys

    from pyroute2 import NetNS

    assert shutil.which("setpriv"), "setpriv (util-linux) is needed to drop capabilities"
    result = lab.run(
        lab.a,
        [
            "setpriv",
            f"--bounding-set={dropped}",
            sys.executable,
            "-m",
            "usertunnel",
            "up",
            "--remote",
            UNDER_B,
            "--name",
            "tun7",
        ],
    )
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err
    assert expected in err and "Traceback" not in err
    with NetNS(lab.a) as ns:
        assert not ns.link_lookup(ifname="tun7")


def _proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as status:
        return dict(line.rstrip("\n").split(":\t", 1) for line in status if ":\t" in line)


@pytest.mark.netns
def test_user_nobody_drops_every_capability_and_still_forwards(lab: Lab) -> None:
    end_a, end_b = lab.pair(["--key", "5"], ["--key", "5"])
    end_a.stop()
    end_a = lab.start(
        lab.a,
        ["--local", "198.51.100.1", "--remote", UNDER_B, "--name", "tun0", "--address", f"{INNER_A}/30",
         "--key", "5", "--user", "nobody"],
    )  # fmt: skip
    assert any("running as nobody:nogroup (uid 65534, gid 65534) with no capabilities" in line for line in end_a.lines)
    status = _proc_status(end_a.pid)
    assert status["Uid"].split() == ["65534"] * 4 and status["Gid"].split() == ["65534"] * 4
    assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
    assert status["Groups"].strip() == ""
    assert lab.ping(lab.a, INNER_B).returncode == 0
    sent, received = tcp_transfer(lab.b, lab.a, INNER_A, PORT, TRANSFER_BYTES)
    assert sent == received
    stats = end_a.stop()
    assert end_a.returncode == 0 and stats["tun0"]["rx_bytes"] >= TRANSFER_BYTES
    from pyroute2 import NetNS

    with NetNS(lab.a) as ns:
        assert not ns.link_lookup(ifname="tun0")


@pytest.mark.netns
def test_unknown_user_is_refused_before_anything_is_created(lab: Lab) -> None:
    end = lab.start(lab.a, ["--remote", UNDER_B, "--name", "tun8", "--user", "no-such-user-here"], wait=False)
    assert end.wait_exit() == 2
    assert [line for line in end.lines if line] == [
        "usertunnel up: error: no such user 'no-such-user-here': give an existing user, e.g. nobody"
    ]


@pytest.mark.netns
def test_cap_net_admin_and_cap_net_raw_are_all_it_needs(lab: Lab) -> None:
    """Root's uid but only CAP_NET_ADMIN and CAP_NET_RAW in the bounding set: the tunnel works."""
    import shutil

    assert shutil.which("setpriv")
    lab.start(lab.b, ["--local", UNDER_B, "--remote", "198.51.100.1", "--name", "tun0", "--address", f"{INNER_B}/30"])
    argv = ["setpriv", "--bounding-set=-all,+net_admin,+net_raw", "--inh-caps=-all", sys.executable, "-m",
            "usertunnel", "up", "--local", "198.51.100.1", "--remote", UNDER_B, "--name", "tun0",
            "--address", f"{INNER_A}/30"]  # fmt: skip
    proc = netns.popen(lab.a, argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline().decode()
        assert ": up " in line, line
        assert int(_proc_status(proc.pid)["CapEff"], 16) == (1 << 12) | (1 << 13)  # CAP_NET_ADMIN | CAP_NET_RAW
        assert lab.ping(lab.a, INNER_B).returncode == 0
    finally:
        proc.terminate()
        proc.wait(5)
    assert proc.returncode == 0
