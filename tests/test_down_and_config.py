"""Issue 18: `usertunnel down NAME` (the wg-quick habit) and `usertunnel up --config FILE` (one tunnel from the
daemon's TOML file)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import INNER_A, INNER_B, UNDER_A, UNDER_B, Lab

from usertunnel import cli

TWO_TUNNELS = f"""
[tunnel.gre7]
mode = "gre"
local = "{UNDER_A}"
remote = "{UNDER_B}"
key = 5
addresses = ["{INNER_A}/30"]
routes = ["203.0.113.64/26"]

[tunnel.ipip7]
mode = "ipip"
remote = "{UNDER_B}"
"""


def _usertunnel(*args: str) -> list[str]:
    return [sys.executable, "-m", "usertunnel", *args]


def test_config_with_tunnel_options_on_the_command_line_too_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "t.toml"
    path.write_text(TWO_TUNNELS)
    assert cli.main(["up", "--config", str(path), "--name", "gre7", "--key", "3", "--ttl", "9"]) == 2
    err = capsys.readouterr().err
    assert "--key, --ttl given too: put them in the file" in err, err
    assert len(err.strip().splitlines()) == 1


def test_config_with_several_tunnels_needs_a_name_and_a_name_it_has(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "t.toml"
    path.write_text(TWO_TUNNELS)
    assert cli.main(["up", "--config", str(path)]) == 2
    assert "has 2 tunnels (gre7, ipip7): say which with --name" in capsys.readouterr().err
    assert cli.main(["up", "--config", str(path), "--name", "gre9"]) == 2
    assert "no [tunnel.gre9] (its tunnels: gre7, ipip7)" in capsys.readouterr().err


def test_config_file_plan_is_the_same_as_the_flags_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t.toml"
    path.write_text(TWO_TUNNELS)
    assert cli.main(["up", "--config", str(path), "--name", "gre7", "--show-plan"]) == 0
    from_file = capsys.readouterr().out
    flags = ["up", "--local", UNDER_A, "--remote", UNDER_B, "--key", "5", "--name", "gre7", "--show-plan"]
    assert cli.main(flags) == 0
    assert capsys.readouterr().out == from_file


def test_up_without_remote_or_config_says_what_is_needed(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["up", "--key", "1"]) == 2
    assert "--remote is required" in capsys.readouterr().err


@pytest.mark.netns
def test_up_config_runs_the_files_tunnel_with_its_routes_and_down_stops_it(lab: Lab, tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(TWO_TUNNELS)
    end_a = lab.start(lab.a, ["--config", str(path), "--name", "gre7"])
    assert "key 5" in end_a.wait_ready()
    lab.start(lab.b, ["--local", UNDER_B, "--remote", UNDER_A, "--key", "5", "--name", "gre7",
                      "--address", f"{INNER_B}/30"])  # fmt: skip
    routes = lab.run(lab.a, ["ip", "route", "show", "203.0.113.64/26"]).stdout.decode()
    assert "dev gre7" in routes, routes
    assert lab.ping(lab.a, INNER_B).returncode == 0

    down = lab.run(lab.a, _usertunnel("down", "gre7"))
    assert down.returncode == 0, down.stderr.decode()
    assert "gre7: stopped" in down.stdout.decode()
    assert end_a.wait_exit(5) == 0
    assert end_a.stats()["gre7"]["tx_packets"] >= 3  # it stopped as on SIGTERM: its counters were printed
    assert any("asked to stop (usertunnel down)" in line for line in end_a.lines)
    links = lab.run(lab.a, ["ip", "link", "show", "gre7"])
    assert links.returncode != 0  # the device is gone when `down` returns


@pytest.mark.netns
def test_down_of_a_tunnel_nobody_runs_is_one_line_exit_1(lab: Lab) -> None:
    result = lab.run(lab.a, _usertunnel("down", "nosuch0"))
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert "no usertunnel up runs tunnel nosuch0 in this network namespace" in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.netns
@pytest.mark.parametrize("argv", [["down", "tun0"], ["reload"], ["tunnel", "del", "tun0"]])
def test_control_clients_run_as_an_ordinary_user_say_they_need_root_exit_2(lab: Lab, argv: list[str]) -> None:
    from usertunnel.io.netns import UpProcess

    lab.pair(["--key", "3"])
    daemon = UpProcess(lab.b, [], command="daemon")
    lab.ends.append(daemon)
    daemon.wait_ready()
    where = lab.a if argv[0] == "down" else lab.b
    result = lab.run(where, ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
                             "--inh-caps=-all", *_usertunnel(*argv)])  # fmt: skip
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert "root" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
