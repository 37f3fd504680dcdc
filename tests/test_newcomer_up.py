"""Issue 18: what a newcomer meets first with `usertunnel up`, each pinned down as it should be."""

from __future__ import annotations

import ipaddress

import pytest
from conftest import INNER_B, UNDER_A, UNDER_B, Lab

from usertunnel import cli
from usertunnel.core import esp
from usertunnel.core.errors import ConfigError
from usertunnel.core.params import Mode, TunnelParams


def _address(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def test_local_equal_to_remote_says_so_instead_of_an_mtu_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"local and remote are the same address \(198\.51\.100\.1\)"):
        TunnelParams(name="t0", mode=Mode.GRE, local=_address("198.51.100.1"), remote=_address("198.51.100.1"))
    status = cli.main(["up", "--local", "198.51.100.1", "--remote", "198.51.100.1"])
    err = capsys.readouterr().err
    assert status == 2
    assert "same address" in err and "mtu" not in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_same_address_over_ipv6_is_refused_too() -> None:
    with pytest.raises(ConfigError, match="same address"):
        TunnelParams(name="t0", mode=Mode.IP6GRE, local=_address("2001:db8::1"), remote=_address("2001:db8::1"))


@pytest.mark.parametrize("mode", list(Mode))
def test_default_mtu_from_loopback_never_exceeds_what_the_outer_header_can_carry(mode: Mode) -> None:
    remote = None if mode.value.isatap else _address("2001:db8::2" if mode.value.outer == 6 else "198.51.100.2")
    local, extra = None, {}
    if mode.value.esp:  # vti, vti6: keys, a local address, and xfrm's outer header
        local = _address("2001:db8::1" if mode.value.outer == 6 else "198.51.100.1")
        sa = esp.SecurityAssociation(0x1000, esp.GCM, bytes(20))
        extra = {"ttl": 64, "tos": None, "pmtudisc": False, "esp": esp.EspKeys(sa, sa)}
        if mode.value.outer == 6:
            extra |= {"flowlabel": None, "encaplimit": None}
    try:
        params = TunnelParams(name="t0", mode=mode, local=local, remote=remote, **extra)  # type: ignore[arg-type]
    except ConfigError:  # a mode that needs more options (e.g. --remote any): not what this test is about
        pytest.skip(f"mode {mode.value.name} needs other options")
    mtu = params.default_mtu(65536)  # loopback's MTU
    assert mtu <= 65535 - params.header_length
    assert params.default_mtu(1500) == 1500 - params.header_length - (14 if mode.value.ethernet else 0)


@pytest.mark.netns
def test_local_that_is_not_an_address_of_this_host_is_refused_in_one_line(lab: Lab) -> None:
    result = lab.run(
        lab.a,
        [
            *_usertunnel(),
            "up", "--local", "198.51.100.9", "--remote", UNDER_B, "--name", "tun5",
        ],
    )  # fmt: skip
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert "198.51.100.9 is not an address of this host" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    from pyroute2 import NetNS

    with NetNS(lab.a) as ns:
        assert not ns.link_lookup(ifname="tun5")


@pytest.mark.netns
def test_mtu_larger_than_the_underlay_fits_is_warned_with_the_largest_that_fits(lab: Lab) -> None:
    end = lab.start(lab.a, ["--local", UNDER_A, "--remote", UNDER_B, "--name", "tun0", "--key", "1", "--mtu", "9000"])
    ready = end.wait_ready()
    assert "mtu 9000" in ready
    end.stop()
    warnings = [line for line in end.lines if "does not fit the underlay" in line]
    assert warnings and "the largest MTU that fits is 1472" in warnings[0], end.lines
    quiet = lab.start(lab.b, ["--local", UNDER_B, "--remote", UNDER_A, "--name", "tun0", "--key", "1", "--mtu", "1472"])
    quiet.wait_ready()
    quiet.stop()
    assert not [line for line in quiet.lines if "does not fit" in line], quiet.lines


@pytest.mark.netns
def test_packets_arriving_while_the_device_is_down_count_as_tun_down(lab: Lab) -> None:
    _, end_b = lab.pair(["--key", "7"])
    assert lab.run(lab.b, ["ip", "link", "set", "tun0", "down"]).returncode == 0
    ping = lab.ping(lab.a, INNER_B, count=3)
    assert ping.returncode != 0
    drops = end_b.stop()["tun0"]["drops"]
    assert drops.get("tun_down", 0) >= 3, drops
    assert "tun_write_error" not in drops, drops


def _usertunnel() -> list[str]:
    import sys

    return [sys.executable, "-m", "usertunnel"]


@pytest.mark.parametrize(
    ("text", "name"),
    [("peer-b", True), ("pop.example.net", True), ("localhost", True), ("198.51.100.1", False),
     ("2001:db8::1", False), ("1.2.3", False), ("a b", False), ("-bad", False), ("any", True)],
)  # fmt: skip
def test_host_names_are_told_from_addresses(text: str, name: bool) -> None:
    from usertunnel.io import resolve

    assert resolve.is_host_name(text) is name


def test_a_host_name_resolves_in_the_outer_family() -> None:
    from usertunnel.io import resolve

    assert resolve.resolve("localhost", 4, "remote") == _address("127.0.0.1")


@pytest.mark.netns
def test_remote_given_as_a_host_name_is_resolved_once_and_shown(lab: Lab) -> None:
    end = lab.start(lab.a, ["--local", UNDER_A, "--remote", "localhost", "--name", "tun0"])
    ready = end.wait_ready()
    assert "remote 127.0.0.1" in ready, ready
    end.stop()
    assert any("remote localhost is 127.0.0.1" in line for line in end.lines), end.lines


@pytest.mark.netns
def test_a_name_that_does_not_resolve_is_one_line_exit_2(lab: Lab) -> None:
    result = lab.run(lab.a, [*_usertunnel(), "up", "--remote", "no-such-host.invalid", "--name", "tun4"])
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert "cannot resolve remote 'no-such-host.invalid'" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_the_configuration_file_takes_host_names_too() -> None:
    from usertunnel.front.config import ConfigFileError, parse_config

    config = parse_config('[tunnel.g1]\nmode = "gre"\nremote = "localhost"\n')
    assert config.tunnels["g1"].options.params.remote == _address("127.0.0.1")
    with pytest.raises(ConfigFileError, match=r":3: tunnel g1: remote: cannot resolve remote 'no-such-host\.invalid'"):
        parse_config('[tunnel.g1]\nmode = "gre"\nremote = "no-such-host.invalid"\n')


@pytest.mark.netns
def test_the_daemon_warns_about_a_local_that_is_not_an_address_of_this_host(lab: Lab) -> None:
    import time

    from usertunnel.io.netns import UpProcess

    daemon = UpProcess(lab.a, [], command="daemon")
    lab.ends.append(daemon)
    daemon.wait_ready()
    foreign = lab.run(lab.a, [*_usertunnel(), "tunnel", "add", "g9", "mode", "gre", "local", "198.51.100.9",
                              "remote", UNDER_B])  # fmt: skip
    assert foreign.returncode == 0, foreign.stderr.decode()  # added, as `ip tunnel add` would
    own = lab.run(lab.a, [*_usertunnel(), "tunnel", "add", "g8", "mode", "gre", "local", UNDER_A, "remote", UNDER_B])
    assert own.returncode == 0, own.stderr.decode()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any("g9: local" in line for line in daemon.lines):
        time.sleep(0.05)
    warned = [line for line in daemon.lines if "is not an address of this host" in line]
    assert len(warned) == 1 and "g9: local 198.51.100.9" in warned[0], daemon.lines
