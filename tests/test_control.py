"""The control socket: `show` and `stats` ask running instances, print what iproute2 prints, survive stale sockets.

No namespaces needed: every server here listens in a temporary directory, under
asyncio's own loop and under uvloop. The client is synchronous, so inside a test
coroutine it runs in a thread while the server answers from the loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import skip_or_fail

from usertunnel.core.drops import Drop
from usertunnel.core.encap import Counters
from usertunnel.core.errors import ConfigError
from usertunnel.core.params import Mode, TunnelParams
from usertunnel.run import control
from usertunnel.run.control import ControlError, ControlServer, format_show, format_stats, query, snapshot_of

A, B = socket.inet_aton("198.51.100.1"), socket.inet_aton("198.51.100.2")
PID = 4242


def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        skip_or_fail("uvloop is not installed (a dependency: pip install -e .)")
    return uvloop.new_event_loop  # type: ignore[no-any-return]


@pytest.fixture(params=["asyncio", "uvloop"])
def arun(request: pytest.FixtureRequest) -> Callable[[Callable[[], Awaitable[None]]], None]:
    """Run a test coroutine under the event loop named by the parameter."""
    factory = asyncio.new_event_loop if request.param == "asyncio" else _uvloop_factory()

    def run(main: Callable[[], Awaitable[None]]) -> None:
        async def bounded() -> None:
            await asyncio.wait_for(main(), 5)

        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(bounded())

    return run


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A short temporary directory: a Unix socket path must fit in 108 bytes, pytest's tmp_path may not."""
    path = Path(tempfile.mkdtemp(prefix="ut-ctl-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def tunnel(name: str = "gre1", mode: Mode = Mode.GRE, **options: Any) -> TunnelParams:
    options.setdefault("local", A)
    options.setdefault("remote", B)
    return TunnelParams(name=name, mode=mode, **options)


def snapshot(
    params: TunnelParams, counters: Counters | None = None, unmatched: Counters | None = None
) -> dict[str, Any]:
    return snapshot_of(params, counters or Counters(), unmatched or Counters(), 1476, PID)


def make_stale(path: Path, kind: str) -> None:
    if kind == "closed-socket":  # what a killed instance leaves behind
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        sock.close()
    else:
        path.write_text("not a socket\n")


def args(
    command: str, name: str | None = None, json_: bool = False, directory: Path | None = None
) -> argparse.Namespace:
    return argparse.Namespace(command=command, name=name, json=json_, dir=directory)


# --- the server and the client -------------------------------------------------------------------------------


def test_server_answers_show_and_stats_with_the_snapshot(arun: Any, run_dir: Path) -> None:
    counters = Counters()
    counters.rx_packets, counters.rx_bytes = 3, 252
    counters.drop(Drop.SEQ_OLD)
    directory = run_dir / "run" / "usertunnel"  # missing: the server creates it

    async def main() -> None:
        params = tunnel(ikey=1234, okey=1234)
        server = await ControlServer.start("gre1", lambda: [snapshot(params, counters)], directory)
        try:
            stats = await asyncio.to_thread(query, directory, None, "stats")
            assert stats == [snapshot(params, counters)]
            assert stats[0]["stats"]["drops"] == {"seq_old": 1}
            counters.drop(Drop.SEQ_OLD)  # answers are live, not taken at start
            (again,) = await asyncio.to_thread(query, directory, "gre1", "stats")
            assert again["stats"]["drops"] == {"seq_old": 2}
            (shown,) = await asyncio.to_thread(query, directory, "gre1", "show")
            assert "stats" not in shown and "unmatched" not in shown
            assert shown["ikey"] == shown["okey"] == 1234 and shown["pid"] == PID
            assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
            assert stat.S_IMODE(os.stat(directory).st_mode) == 0o755
            assert stat.S_IMODE(os.stat(directory.parent).st_mode) == 0o755
        finally:
            await server.close()
        assert not server.path.exists()

    arun(main)


def test_two_servers_with_different_names_are_both_listed(arun: Any, run_dir: Path) -> None:
    async def main() -> None:
        gre = await ControlServer.start("gre1", lambda: [snapshot(tunnel("gre1"))], run_dir)
        ipip = await ControlServer.start("ipip1", lambda: [snapshot(tunnel("ipip1", Mode.IPIP))], run_dir)
        try:
            listed = await asyncio.to_thread(query, run_dir, None, "show")
            assert [t["name"] for t in listed] == ["gre1", "ipip1"]
            named = await asyncio.to_thread(query, run_dir, "ipip1", "show")
            assert [t["name"] for t in named] == ["ipip1"]
        finally:
            await gre.close()
            await ipip.close()

    arun(main)


def test_a_second_server_with_a_live_name_is_refused_with_its_pid(arun: Any, run_dir: Path) -> None:
    async def main() -> None:
        first = await ControlServer.start("gre1", lambda: [snapshot(tunnel())], run_dir)
        try:
            with pytest.raises(ConfigError, match=rf"'gre1' is already running \(pid {os.getpid()}"):
                await ControlServer.start("gre1", lambda: [], run_dir)
            # The refused one touched nothing: the first still answers.
            assert [t["name"] for t in await asyncio.to_thread(query, run_dir)] == ["gre1"]
        finally:
            await first.close()

    arun(main)


@pytest.mark.parametrize("kind", ["closed-socket", "plain-file"])
def test_a_stale_socket_is_replaced_by_server_start(arun: Any, run_dir: Path, kind: str) -> None:
    make_stale(run_dir / "gre1.sock", kind)

    async def main() -> None:
        server = await ControlServer.start("gre1", lambda: [snapshot(tunnel())], run_dir)
        try:
            assert stat.S_ISSOCK(os.lstat(server.path).st_mode)
            assert [t["name"] for t in await asyncio.to_thread(query, run_dir)] == ["gre1"]
        finally:
            await server.close()

    arun(main)


@pytest.mark.parametrize("kind", ["closed-socket", "plain-file"])
def test_a_stale_socket_is_removed_and_skipped_by_query(arun: Any, run_dir: Path, kind: str) -> None:
    make_stale(run_dir / "gre2.sock", kind)
    make_stale(run_dir / "gre3.sock", kind)

    async def main() -> None:
        server = await ControlServer.start("gre1", lambda: [snapshot(tunnel())], run_dir)
        try:
            problems: list[str] = []
            listed = await asyncio.to_thread(query, run_dir, None, "stats", control.TIMEOUT, problems)
            assert [t["name"] for t in listed] == ["gre1"] and problems == []
            assert not (run_dir / "gre2.sock").exists() and not (run_dir / "gre3.sock").exists()
        finally:
            await server.close()

    arun(main)
    make_stale(run_dir / "gre3.sock", kind)  # asked for by name: an error that says so, and removed too
    with pytest.raises(ControlError, match=r"named 'gre3' is running \(removed its stale socket "):
        query(run_dir, "gre3")
    assert not (run_dir / "gre3.sock").exists()
    assert query(run_dir) == []


def test_nothing_running_is_an_empty_list_even_without_the_directory(run_dir: Path) -> None:
    assert query(run_dir / "missing") == []
    assert query(run_dir) == []


def test_an_instance_that_does_not_answer_times_out_and_the_others_are_still_listed(arun: Any, run_dir: Path) -> None:
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # listens, never accepts nor answers
    mute.bind(str(run_dir / "gre0.sock"))
    mute.listen()

    async def main() -> None:
        server = await ControlServer.start("gre1", lambda: [snapshot(tunnel())], run_dir)
        try:
            problems: list[str] = []
            start = time.monotonic()
            listed = await asyncio.to_thread(query, run_dir, None, "show", 0.3, problems)
            assert time.monotonic() - start < 2
            assert [t["name"] for t in listed] == ["gre1"]
            assert len(problems) == 1 and "gre0.sock: no answer within 0.3 s" in problems[0]
            with pytest.raises(ControlError, match="no answer within 0.3 s"):
                await asyncio.to_thread(query, run_dir, "gre0", "show", 0.3)
        finally:
            await server.close()

    try:
        arun(main)
    finally:
        mute.close()


def test_a_bad_request_gets_an_error_answer_and_the_server_goes_on(arun: Any, run_dir: Path) -> None:
    def ask(raw: bytes) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(run_dir / "gre1.sock"))
            sock.sendall(raw)
            answer: dict[str, Any] = json.loads(sock.makefile("rb").readline())
            return answer

    async def main() -> None:
        server = await ControlServer.start("gre1", lambda: [snapshot(tunnel())], run_dir)
        try:
            assert "one JSON line" in (await asyncio.to_thread(ask, b"nonsense\n"))["error"]
            assert "unknown cmd 'reboot'" in (await asyncio.to_thread(ask, b'{"cmd": "reboot"}\n'))["error"]
            assert (await asyncio.to_thread(ask, b'{"cmd": "show"}\n'))["tunnels"][0]["name"] == "gre1"
        finally:
            await server.close()

    arun(main)


def test_a_failing_snapshot_is_an_error_answer_not_a_crash(arun: Any, run_dir: Path) -> None:
    def broken() -> list[dict[str, Any]]:
        raise RuntimeError("boom")

    async def main() -> None:
        server = await ControlServer.start("gre1", broken, run_dir)
        try:
            with pytest.raises(ControlError, match="snapshot failed: RuntimeError: boom"):
                await asyncio.to_thread(query, run_dir, "gre1")
        finally:
            await server.close()

    arun(main)


def test_close_does_not_wait_for_a_client_that_never_asks(arun: Any, run_dir: Path) -> None:
    async def main() -> None:
        server = await ControlServer.start("gre1", lambda: [], run_dir)
        idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        idle.connect(str(server.path))
        await asyncio.sleep(0.05)  # let the server accept it
        start = time.monotonic()
        await server.close()
        assert time.monotonic() - start < 1
        assert not server.path.exists()
        idle.close()

    arun(main)


def test_a_user_other_than_root_is_told_the_sockets_are_roots_only(arun: Any, run_dir: Path) -> None:
    if os.geteuid() != 0:
        skip_or_fail("needs root to start a server and to drop to nobody")
    os.chmod(run_dir, 0o755)  # as /run/usertunnel is: anyone may list it, only root may connect
    repo = Path(__file__).resolve().parent.parent
    # Import as root (the interpreter may live under /root), then become nobody before asking.
    script = (
        "import argparse, os, sys\n"
        "from pathlib import Path\n"
        "from usertunnel.run import control\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        f"args = argparse.Namespace(command='show', name=None, json=False, dir=Path({str(run_dir)!r}))\n"
        "sys.exit(control.run(args))\n"
    )

    def as_nobody() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=repo,
            env={**os.environ, "PYTHONPATH": str(repo)},
        )

    async def main() -> None:
        server = await ControlServer.start("gre1", lambda: [snapshot(tunnel())], run_dir)
        server2 = await ControlServer.start("gre2", lambda: [snapshot(tunnel("gre2"))], run_dir)
        try:
            result = await asyncio.to_thread(as_nobody)
        finally:
            await server.close()
            await server2.close()
        assert result.returncode == 2 and result.stdout == ""  # a missing privilege, as everywhere
        denied = "permission denied: control sockets are root's only (mode 0600): run it with sudo"
        assert result.stderr.splitlines() == [f"usertunnel show: error: {run_dir}/gre1.sock: {denied}"]

    arun(main)


def test_a_name_that_is_not_an_interface_name_is_refused(run_dir: Path) -> None:
    with pytest.raises(ControlError, match="invalid tunnel name"):
        query(run_dir, "../etc")


def test_run_directory_is_per_named_network_namespace(monkeypatch: pytest.MonkeyPatch, run_dir: Path) -> None:
    monkeypatch.delenv(control.ENV_RUN_DIR, raising=False)
    netns = run_dir / "netns"
    netns.mkdir()
    monkeypatch.setattr(control, "NETNS_DIR", netns)
    assert control.run_directory() == control.RUN_DIR  # our namespace has no name
    (netns / "ut-lab-a").symlink_to("/proc/self/ns/net")  # as `ip netns add` would name ours
    assert control.run_directory() == control.RUN_DIR / "netns" / "ut-lab-a"
    monkeypatch.setenv(control.ENV_RUN_DIR, str(run_dir / "base"))  # replaces the base, keeps the namespace
    assert control.run_directory() == run_dir / "base" / "netns" / "ut-lab-a"
    (netns / "ut-lab-a").unlink()
    assert control.run_directory() == run_dir / "base"


# --- show: iproute2's print_tunnel -----------------------------------------------------------------------------

EXTRAS = f"  usertunnel: pid {PID} mtu 1476"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (tunnel(), ["gre1: gre/ip remote 198.51.100.2 local 198.51.100.1 ttl inherit"]),
        (tunnel(ikey=1234, okey=1234), ["gre1: gre/ip remote 198.51.100.2 local 198.51.100.1 ttl inherit key 1234"]),
        (tunnel(ikey=0, okey=0), ["gre1: gre/ip remote 198.51.100.2 local 198.51.100.1 ttl inherit key 0"]),
        (tunnel(ikey=1, okey=2), ["gre1: gre/ip remote 198.51.100.2 local 198.51.100.1 ttl inherit ikey 1 okey 2"]),
        (tunnel(okey=7), ["gre1: gre/ip remote 198.51.100.2 local 198.51.100.1 ttl inherit okey 7"]),
        (
            tunnel(iseq=True, oseq=True),
            [
                "gre1: gre/ip remote 198.51.100.2 local 198.51.100.1 ttl inherit",
                "  Drop packets out of sequence.",
                "  Sequence packets on output.",
            ],
        ),
        (
            tunnel(icsum=True, ocsum=True),
            [
                "gre1: gre/ip remote 198.51.100.2 local 198.51.100.1 ttl inherit",
                "  Checksum in received packet is required.",
                "  Checksum output packets.",
            ],
        ),
        (
            tunnel(ikey=1, okey=2, iseq=True, oseq=True, icsum=True, ocsum=True),
            [
                "gre1: gre/ip remote 198.51.100.2 local 198.51.100.1 ttl inherit ikey 1 okey 2",
                "  Drop packets out of sequence.",
                "  Checksum in received packet is required.",
                "  Sequence packets on output.",
                "  Checksum output packets.",
            ],
        ),
        (tunnel(ttl=64), ["gre1: gre/ip remote 198.51.100.2 local 198.51.100.1 ttl 64"]),
        (tunnel(tos=None), ["gre1: gre/ip remote 198.51.100.2 local 198.51.100.1 ttl inherit tos inherit"]),
        (tunnel(tos=0x28), ["gre1: gre/ip remote 198.51.100.2 local 198.51.100.1 ttl inherit tos 0x28"]),
        (tunnel(pmtudisc=False), ["gre1: gre/ip remote 198.51.100.2 local 198.51.100.1 ttl inherit nopmtudisc"]),
        (
            tunnel(ttl=64, tos=None, ikey=9, okey=9),
            ["gre1: gre/ip remote 198.51.100.2 local 198.51.100.1 ttl 64 tos inherit key 9"],
        ),
        (tunnel("ipip1", Mode.IPIP), ["ipip1: ip/ip remote 198.51.100.2 local 198.51.100.1 ttl inherit"]),
        (
            tunnel("ipip1", Mode.IPIP, local=None, pmtudisc=False),
            ["ipip1: ip/ip remote 198.51.100.2 local any ttl inherit nopmtudisc"],
        ),
        (tunnel(local=None, remote=None), ["gre1: gre/ip remote any local any ttl inherit"]),
    ],
    ids=[
        "gre",
        "key",
        "key-0",
        "ikey-okey",
        "okey-only",
        "seq",
        "csum",
        "all-gre-options",
        "ttl-64",
        "tos-inherit",
        "tos-fixed",
        "nopmtudisc",
        "ttl-tos-key",
        "ipip",
        "ipip-any-nopmtudisc",
        "wildcards",
    ],
)
def test_show_prints_what_ip_tunnel_show_prints(params: TunnelParams, expected: list[str]) -> None:
    assert format_show([snapshot(params)]) == "".join(f"{line}\n" for line in [*expected, EXTRAS])


def test_show_prints_the_underlay_device_where_iproute2_does() -> None:
    shown = snapshot_of(tunnel(ikey=5, okey=5), Counters(), Counters(), 1476, PID, dev="eth0")
    first = format_show([shown]).splitlines()[0]
    assert first == "gre1: gre/ip remote 198.51.100.2 local 198.51.100.1 dev eth0 ttl inherit key 5"


def test_show_of_nothing_is_nothing() -> None:
    assert format_show([]) == "" and format_stats([]) == ""


# --- stats: iproute2's tnl_print_stats, then the drop reasons --------------------------------------------------


def busy_counters() -> tuple[Counters, Counters]:
    c = Counters()
    c.rx_packets, c.rx_bytes, c.tx_packets, c.tx_bytes = 1200, 100800, 1180, 99120
    for reason, n in {
        Drop.CSUM_BAD: 3,
        Drop.CSUM_MISSING: 1,
        Drop.CSUM_UNEXPECTED: 2,
        Drop.SEQ_OLD: 4,
        Drop.SEQ_MISSING: 1,
        Drop.KEY_MISMATCH: 5,
        Drop.TUN_WRITE_ERROR: 1,
        Drop.SEND_NOBUFS: 2,
        Drop.ICMP_ERROR: 1,
        Drop.SEND_MSGSIZE: 1,
    }.items():
        for _ in range(n):
            c.drop(reason)
    unmatched = Counters()
    for _ in range(7):
        unmatched.drop(Drop.NO_TUNNEL)
    return c, unmatched


def test_every_drop_reason_has_a_direction() -> None:
    assert set(control.DIRECTION) == set(Drop)


def test_stats_columns_add_up_from_the_counters() -> None:
    counters, unmatched = busy_counters()
    obj = snapshot(tunnel(ikey=1234, okey=1234, iseq=True), counters, unmatched)
    columns = control.iproute2_columns(obj["stats"])
    assert columns["rx_csum_errs"] == 3 + 1 + 2
    assert columns["rx_out_of_seq"] == 4 + 1
    assert columns["rx_errors"] == 6 + 5 + 5 + 1  # csum, seq, key_mismatch, tun_write_error
    assert columns["tx_errors"] == 2 + 1 + 1
    assert columns["tx_no_bufs"] == 2 and columns["tx_no_route"] == 1
    assert columns["rx_errors"] + columns["tx_errors"] == sum(counters.drops.values())
    text = format_stats([obj])
    assert text.splitlines()[:7] == [
        "gre1: gre/ip remote 198.51.100.2 local 198.51.100.1 ttl inherit key 1234",
        "  Drop packets out of sequence.",
        # tnl_print_stats: "%-10lld %-12lld %-6lld %-8lld %-8lld %-8lld", trailing blanks included.
        "RX: Packets    Bytes        Errors CsumErrs OutOfSeq Mcasts",
        "    1200       100800       17     6        5        0       ",
        "TX: Packets    Bytes        Errors DeadLoop NoRoute  NoBufs",
        "    1180       99120        4      0        1        2     ",
        EXTRAS,
    ]
    assert "  drops:" in text
    for reason, n in counters.drops.items():
        assert f"    {reason.value:<16}{n:>10}  {reason.description}" in text.splitlines()
    assert f"  unmatched: received by pid {PID}, owned by none of its tunnels:" in text
    assert f"    no_tunnel{7:>17}  {Drop.NO_TUNNEL.description}" in text.splitlines()


def test_stats_of_a_quiet_tunnel_has_no_drop_lines() -> None:
    text = format_stats([snapshot(tunnel())])
    assert "drops:" not in text and "unmatched:" not in text
    assert text.splitlines()[-1] == EXTRAS


def test_unmatched_drops_are_shown_once_per_instance() -> None:
    counters, unmatched = busy_counters()
    one = snapshot(tunnel("gre1"), counters, unmatched)
    two = snapshot(tunnel("gre2"), counters, unmatched)
    assert format_stats([one, two]).count("unmatched:") == 1


# --- the command line -----------------------------------------------------------------------------------------

DOCUMENTED = {
    "name", "mode", "local", "remote", "dev", "ikey", "okey", "iseq", "oseq", "icsum", "ocsum",
    "ttl", "tos", "pmtudisc", "sixrd", "prl", "seq_policy", "mtu", "pid",  # encaplimit, flowlabel: IPv6 outer only
    "stats", "unmatched",
}  # fmt: skip


def test_stats_json_is_valid_with_the_documented_fields(
    arun: Any, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    counters, unmatched = busy_counters()

    async def main() -> None:
        server = await ControlServer.start("gre1", lambda: [snapshot(tunnel(), counters, unmatched)], run_dir)
        try:
            assert await asyncio.to_thread(control.run, args("stats", json_=True, directory=run_dir)) == 0
        finally:
            await server.close()

    arun(main)
    out = capsys.readouterr()
    (obj,) = json.loads(out.out)
    assert set(obj) == DOCUMENTED
    for field in DOCUMENTED - {"stats", "unmatched"}:
        assert field in (control.__doc__ or "")
        assert field in control._stats_epilog()
    assert set(obj["stats"]) == {"rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "drops"}
    assert obj["stats"]["drops"]["csum_bad"] == 3
    assert obj["unmatched"] == {"drops": {"no_tunnel": 7}}
    assert (obj["mode"], obj["local"], obj["ttl"], obj["tos"]) == ("gre", "198.51.100.1", None, 0)
    assert out.err == ""


def test_cli_show_and_stats_print_iproute2_lines(
    arun: Any, run_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(control.ENV_RUN_DIR, str(run_dir))
    parser = argparse.ArgumentParser(prog="usertunnel")
    control.add_parsers(parser.add_subparsers(dest="command"))

    async def main() -> None:
        server = await ControlServer.start("gre1", lambda: [snapshot(tunnel(ikey=1234, okey=1234))], None)
        try:
            assert await asyncio.to_thread(control.run, parser.parse_args(["show"])) == 0
            assert await asyncio.to_thread(control.run, parser.parse_args(["stats", "gre1"])) == 0
        finally:
            await server.close()

    arun(main)
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["gre1: gre/ip remote 198.51.100.2 local 198.51.100.1 ttl inherit key 1234", EXTRAS]
    assert out[2] == out[0] and out[3].startswith("RX: Packets")


def test_cli_with_a_name_not_running_exits_1_with_one_line(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert control.run(args("show", name="gre9", directory=run_dir)) == 1
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.splitlines()
    assert len(lines) == 1
    assert (
        lines[0]
        == f"usertunnel show: error: no usertunnel instance named 'gre9' is running (no socket {run_dir}/gre9.sock; "
        "no daemon tunnel either)"
    )


def test_cli_with_nothing_running_prints_nothing_and_exits_0(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert control.run(args("show", directory=run_dir / "absent")) == 0
    assert control.run(args("stats", directory=run_dir)) == 0
    assert capsys.readouterr() == ("", "")
    assert control.run(args("stats", json_=True, directory=run_dir)) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_help_teaches_the_columns_and_the_socket_permissions() -> None:
    subparsers = argparse.ArgumentParser(prog="usertunnel").add_subparsers(dest="command")
    control.add_parsers(subparsers)
    for command in ("show", "stats"):
        text = subparsers.choices[command].format_help()
        assert "0600" in text and "root" in text and "ip tunnel show" in text
    stats_help = subparsers.choices["stats"].format_help()
    for words in ("CsumErrs", "csum_bad + csum_missing + csum_unexpected", "OutOfSeq", "NoBufs", "send_nobufs", "-j"):
        assert words in stats_help
