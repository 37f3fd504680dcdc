"""Issue 18 (a newcomer's first hour), the daemon's part: every mistake of a configuration file at once,
`usertunnel reload` logged and exiting as documented, JSON without IPv6-only fields on IPv4 tunnels, and no
control directory left behind in a namespace nobody uses any more."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import require_netns

from usertunnel.core.errors import ConfigError
from usertunnel.front.config import ConfigFileError, check_tunnel, parse_config, tunnel_from_table
from usertunnel.io import netns
from usertunnel.io.netns import UpProcess
from usertunnel.run import control


def refusal(text: str) -> ConfigFileError:
    with pytest.raises(ConfigFileError) as caught:
        parse_config(text, "t.toml")
    return caught.value


def reasons(error: ConfigFileError) -> list[tuple[int, str]]:
    return [(p.line, p.reason) for p in error.problems]


# --- item 4: an unknown key hides nothing ------------------------------------------------------------------------


def test_an_unknown_key_and_a_bad_value_of_the_same_tunnel_are_both_reported() -> None:
    error = refusal('[tunnel.gre1]\nmode = "gre"\nremote = "198.51.100.2"\nkeepalives = "10"\nttl = 300\n')
    assert [line for line, _ in reasons(error)] == [4, 5], str(error)
    assert "unknown key 'keepalives' (did you mean 'keepalive'?)" in error.problems[0].reason
    assert error.problems[1].reason == 'tunnel gre1: ttl: invalid ttl "300": a number 1..255 or "inherit"'


def test_an_unknown_key_does_not_hide_a_mistake_between_settings() -> None:
    error = refusal('[tunnel.gre1]\nmode = "gre"\nkeepalive = 10\ncolour = "blue"\n')
    assert [line for line, _ in reasons(error)] == [3, 4], str(error)
    assert "keepalives go to the remote and come back to local" in error.problems[0].reason
    assert "unknown key 'colour'" in error.problems[1].reason


def test_every_bad_value_type_and_list_element_of_a_tunnel_is_reported_once() -> None:
    text = (
        "[tunnel.gre-far-too-long]\n"  # 1: the name
        'mode = "gre"\n'
        'tos = "zz"\n'  # 3
        'key = "nine"\n'  # 4: an alias of two settings, said once
        "seq = 1\n"  # 5: the wrong type, said once too
        'addresses = ["x", "203.0.113.1/30", "y"]\n'  # 6: two bad elements
        "ikey = 2\n"  # 7: with key
        "colour = 1\n"  # 8
    )
    error = refusal(text)
    lines = [line for line, _ in reasons(error)]
    assert lines == [1, 3, 4, 5, 6, 6, 7, 8], str(error)
    text_of = [reason for _, reason in reasons(error)]
    assert "invalid tunnel name 'gre-far-too-long'" in text_of[0]
    assert "tos: invalid tos" in text_of[1]
    assert "key: invalid key" in text_of[2]
    assert "seq: expected true or false, got 1" in text_of[3]
    assert "'x'" in text_of[4] and "'y'" in text_of[5]
    assert "key sets both ikey and okey" in text_of[6]
    assert "unknown key 'colour'" in text_of[7]


def test_a_missing_mode_and_a_bad_value_are_both_reported() -> None:
    error = refusal('[tunnel.a]\nlocal = "198.51.100.1"\nttl = 300\n')
    assert [line for line, _ in reasons(error)] == [1, 3], str(error)
    assert "mode: missing" in error.problems[0].reason


def test_every_key_a_mode_has_no_use_for_is_named() -> None:
    error = refusal('[tunnel.a]\nmode = "ipip"\nremote = "198.51.100.2"\nseq = true\ncsum = true\nkey = 3\n')
    assert [line for line, _ in reasons(error)] == [4, 5, 6], str(error)
    assert all("is a GRE option" in reason for _, reason in reasons(error))


def test_a_wrong_value_does_not_bring_its_consequences_along() -> None:
    """pmtudisc = false needs ttl inherit; with ttl itself wrong, only ttl is reported (not 'ttl is 64')."""
    error = refusal('[tunnel.a]\nmode = "ip6ip6"\nremote = "2001:db8::2"\nttl = "x"\npmtudisc = false\n')
    assert [line for line, _ in reasons(error)] == [4], str(error)


def test_tunnel_from_table_still_raises_the_first_mistake_and_check_tunnel_lists_them_all() -> None:
    table = {"mode": "gre", "remote": "198.51.100.2", "colour": 1, "ttl": 300}
    config, errors = check_tunnel("gre1", table)
    assert config is None and [e.key for e in errors] == ["colour", "ttl"]
    with pytest.raises(ConfigError, match="unknown key 'colour'"):
        tunnel_from_table("gre1", table)
    config, errors = check_tunnel("gre1", {"mode": "gre", "remote": "198.51.100.2"})
    assert config is not None and errors == []


# --- the daemon in namespaces of our own ---------------------------------------------------------------------

UNDER_A, UNDER_B = "198.51.100.1", "198.51.100.2"
SIX_A, SIX_B = "2001:db8::1", "2001:db8::2"
_count = itertools.count()


@dataclass
class Hosts:
    """Two namespaces uhb-PID-N-a and -b joined by a veth pair (198.51.100.1/24 and .2, 2001:db8::1/64 and ::2)."""

    a: str
    b: str
    ends: list[UpProcess] = field(default_factory=list)

    def start(self, ns: str, *args: str, command: str = "daemon") -> UpProcess:
        end = UpProcess(ns, list(args), command=command)
        self.ends.append(end)
        end.wait_ready()
        return end


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    require_netns()
    n = next(_count)
    tag = f"{os.getpid() % 100000}-{n}"
    made = Hosts(f"uhb-{tag}-a", f"uhb-{tag}-b")
    try:
        for name in (made.a, made.b):
            netns.create(name)
        netns.veth(made.a, f"uhb{tag}a"[:15], made.b, f"uhb{tag}b"[:15], UNDER_A, UNDER_B, 24)
        for ns, ifname, six in ((made.a, f"uhb{tag}a"[:15], SIX_A), (made.b, f"uhb{tag}b"[:15], SIX_B)):
            netns.run(ns, ["ip", "-6", "addr", "add", f"{six}/64", "dev", ifname, "nodad"], check=True)
        yield made
    finally:
        for end in made.ends:
            end.kill()
        for name in (made.a, made.b):
            netns.remove(name)


def usertunnel(ns: str, *words: str) -> subprocess.CompletedProcess[bytes]:
    return netns.run(ns, [sys.executable, "-m", "usertunnel", *words], timeout=60)


def logged(end: UpProcess, text: str, timeout: float = 10.0) -> str:
    """The first line of `end`'s log containing `text`, waited for; AssertionError with the log if none."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = next((line for line in list(end.lines) if text in line), None)
        if found is not None:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no {text!r} in the log:\n" + "\n".join(end.lines))


CONFIG = f"""\
[tunnel.g4]
mode = "gre"
local = "{UNDER_A}"
remote = "{UNDER_B}"
key = 1

[tunnel.g6]
mode = "ip6gre"
local = "{SIX_A}"
remote = "{SIX_B}"
encaplimit = 2
"""

ADDED = f"""
[tunnel.g4b]
mode = "ipip"
local = "{UNDER_A}"
remote = "{UNDER_B}"
"""


@pytest.mark.netns
def test_reload_by_command_or_sighup_is_logged_and_a_bad_file_exits_2(hosts: Hosts, tmp_path: Path) -> None:
    path = tmp_path / "usertunnel.toml"
    path.write_text(CONFIG + ADDED)
    daemon = hosts.start(hosts.a, "--config", str(path))
    path.write_text(CONFIG)
    assert usertunnel(hosts.a, "reload").returncode == 0
    line = logged(daemon, "daemon: reloaded (usertunnel reload):")
    assert "removed g4b" in line and "unchanged g4 g6" in line, line

    path.write_text(CONFIG + ADDED)
    os.kill(daemon.pid, signal.SIGHUP)
    assert "added g4b" in logged(daemon, "daemon: reloaded (SIGHUP):")

    path.write_text(CONFIG.replace("key = 1", "key = 1\nttl = 300") + ADDED)
    out = usertunnel(hosts.a, "reload")
    err = out.stderr.decode()
    assert out.returncode == 2, err  # as any bad configuration (README), not 1
    assert err.startswith(f"usertunnel reload: refused, nothing changed: {path}:6: tunnel g4: ttl: invalid ttl"), err
    assert "Traceback" not in err
    assert f"{path}:6:" in logged(daemon, "daemon: reload (usertunnel reload) refused, nothing changed:")
    assert {t["name"] for t in json.loads(usertunnel(hosts.a, "-j", "tunnel", "show").stdout)} == {"g4", "g4b"}


@pytest.mark.netns
def test_json_has_encaplimit_and_flowlabel_only_for_tunnels_over_ipv6(hosts: Hosts, tmp_path: Path) -> None:
    path = tmp_path / "usertunnel.toml"
    path.write_text(CONFIG)
    hosts.start(hosts.a, "--config", str(path))
    for command in ("stats", "show"):
        out = usertunnel(hosts.a, command, "-j")
        assert out.returncode == 0, out.stderr.decode()
        tunnels = {t["name"]: t for t in json.loads(out.stdout)}
        assert "encaplimit" not in tunnels["g4"] and "flowlabel" not in tunnels["g4"], tunnels["g4"]
        assert tunnels["g6"]["encaplimit"] == 2 and tunnels["g6"]["flowlabel"] == 0, tunnels["g6"]
    # `ip -6 tunnel show`'s line still has them, and `ip tunnel show`'s never had.
    six = usertunnel(hosts.a, "-6", "tunnel", "show").stdout.decode()
    assert "encaplimit 2" in six and "flowlabel 0x00000" in six, six
    assert "encaplimit" not in usertunnel(hosts.a, "tunnel", "show").stdout.decode()


@pytest.mark.netns
def test_the_namespaces_control_directory_goes_with_the_last_instance(hosts: Hosts) -> None:
    base = Path(os.environ.get(control.ENV_RUN_DIR) or control.RUN_DIR)
    directory = base / "netns" / hosts.a
    daemon = hosts.start(hosts.a)
    out = usertunnel(hosts.a, "reload")  # a daemon without a file: a usage mistake, exit 2 as well
    assert out.returncode == 2 and "started without --config" in out.stderr.decode(), out.stderr.decode()
    tunnel = hosts.start(hosts.a, "--local", UNDER_A, "--remote", UNDER_B, "--name", "t9", command="up")
    assert sorted(p.name for p in directory.iterdir()) == ["t9.sock", "usertunnel-daemon.sock"]
    daemon.stop()
    assert [p.name for p in directory.iterdir()] == ["t9.sock"]  # `up` still uses it
    tunnel.stop()
    assert tunnel.returncode == 0 and daemon.returncode == 0
    assert not directory.exists()
    assert netns.exists(hosts.a)  # gone with its last user, not with the namespace
    # The next instance makes it again.
    again = hosts.start(hosts.a)
    assert (directory / "usertunnel-daemon.sock").exists()
    again.stop()
    assert not directory.exists()


def test_the_last_server_to_close_removes_the_namespace_directory_and_a_starting_one_makes_it_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = Path(tempfile.mkdtemp(prefix="uhb-ctl-"))  # short: a Unix socket path fits in 108 bytes
    directory = base / "netns" / "uhb-x"
    monkeypatch.setattr(control, "_run_directory", lambda: (directory, True))
    live_pid = control._live_pid
    removed: list[Path] = []

    def removed_meanwhile(path: Path) -> int | None:
        """The last instance leaves between our mkdir and our bind, and takes the directory with it."""
        if not removed:
            os.rmdir(path.parent)
            removed.append(path.parent)
        return live_pid(path)

    async def main() -> None:
        one = await control.ControlServer.start("g1", list)
        two = await control.ControlServer.start("g2", list)
        await one.close()
        assert [p.name for p in directory.iterdir()] == ["g2.sock"]
        await two.close()
        assert not directory.exists() and (base / "netns").is_dir()
        monkeypatch.setattr(control, "_live_pid", removed_meanwhile)
        three = await control.ControlServer.start("g3", list)
        assert removed == [directory] and (directory / "g3.sock").exists()
        await three.close()
        assert not directory.exists()
        # A directory given (--dir, a systemd RuntimeDirectory, the tests) is never removed.
        four = await control.ControlServer.start("g4", list, base)
        await four.close()
        assert base.is_dir()

    try:
        asyncio.run(main())
    finally:
        shutil.rmtree(base, ignore_errors=True)
