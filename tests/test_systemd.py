"""systemd integration: sd_notify datagrams, and the two unit files in systemd/.

Pure tests: the notification socket is one the test binds itself (a path and
an abstract name), and the units are parsed as text. Where systemd-analyze is
installed (Debian's systemd package, which scripts/install.sh installs; no
running systemd is needed) the units are also verified and given a security
exposure score; where it is not, those tests are skipped, and fail in CI
(USERTUNNEL_REQUIRE_NETNS=1, conftest.skip_or_fail).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import skip_or_fail

from usertunnel.io import sdnotify

ROOT = Path(__file__).resolve().parent.parent
DAEMON_UNIT = ROOT / "systemd" / "usertunnel.service"
TEMPLATE_UNIT = ROOT / "systemd" / "usertunnel@.service"
INSTALLED_BINARY = "/usr/local/bin/usertunnel"
CAPABILITIES = {"CAP_NET_ADMIN", "CAP_NET_RAW"}
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid

Unit = dict[str, dict[str, list[str]]]  # section -> key -> every value assigned, in order


# --- sd_notify --------------------------------------------------------------------------------------------


@pytest.fixture
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound where systemd's would be, and the NOTIFY_SOCKET value naming it (a path)."""
    path = tmp_path_factory.mktemp("n") / "notify"  # short: AF_UNIX paths end at 108 bytes
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        yield sock, str(path)


@pytest.fixture
def abstract_receiver() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound to a name in the abstract namespace, and the "@name" value naming it."""
    name = f"usertunnel-test-notify-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        yield sock, "@" + name


def test_notify_sends_one_datagram_to_a_path_socket(receiver: tuple[socket.socket, str]) -> None:
    sock, value = receiver
    assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": value})
    assert sock.recv(4096) == b"READY=1"


def test_notify_sends_to_an_abstract_socket_named_with_an_at_sign(
    abstract_receiver: tuple[socket.socket, str],
) -> None:
    sock, value = abstract_receiver
    assert sdnotify.notify("STOPPING=1", {"NOTIFY_SOCKET": value})
    assert sock.recv(4096) == b"STOPPING=1"


def test_a_multi_line_state_arrives_as_one_datagram(receiver: tuple[socket.socket, str]) -> None:
    sock, value = receiver
    assert sdnotify.notify("READY=1\nSTATUS=3 tunnels up", {"NOTIFY_SOCKET": value})
    assert sdnotify.notify("STATUS=reloading", {"NOTIFY_SOCKET": value})
    assert sock.recv(4096) == b"READY=1\nSTATUS=3 tunnels up"
    assert sock.recv(4096) == b"STATUS=reloading"


def test_notify_reads_os_environ_by_default(
    receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, value = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert sdnotify.notify("READY=1")
    assert sock.recv(4096) == b"READY=1"


def test_the_datagram_carries_our_pid_which_systemd_matches_against_mainpid(
    receiver: tuple[socket.socket, str],
) -> None:
    # systemd sets SO_PASSCRED and, with NotifyAccess=main, hears only the unit's main pid.
    sock, value = receiver
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": value})
    data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
    creds = [d for level, kind, d in ancillary if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)]
    assert data == b"READY=1"
    assert len(creds) == 1
    assert _UCRED.unpack(creds[0])[0] == os.getpid()


def test_reloading_sends_reloading_with_the_monotonic_time_in_microseconds(
    receiver: tuple[socket.socket, str],
) -> None:
    sock, value = receiver
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading({"NOTIFY_SOCKET": value})
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    match = re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=(\d+)", sock.recv(4096))
    assert match is not None
    assert before <= int(match[1]) <= after


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}], ids=["unset", "empty"])
def test_notify_without_notify_socket_returns_false(environ: dict[str, str]) -> None:
    assert sdnotify.notify("READY=1", environ) is False


@pytest.mark.parametrize("value", ["notify", "run/systemd/notify", "@", "vsock:2:1234"])
def test_notify_refuses_what_sd_notify_refuses_and_sends_nothing(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A relative value must not be taken relative to our working directory.
    monkeypatch.chdir(tmp_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("notify")
        sock.setblocking(False)
        assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": value}) is False
        with pytest.raises(BlockingIOError):
            sock.recv(4096)


def test_a_socket_that_vanished_returns_false_without_raising(tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("n") / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
    # Closed but not unlinked: the file is there and nobody receives (ECONNREFUSED).
    assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": str(path)}) is False
    path.unlink()  # and now the file is gone too (ENOENT)
    assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": str(path)}) is False
    assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": "@usertunnel-test-nobody-binds-this"}) is False


def test_a_path_too_long_for_af_unix_returns_false() -> None:
    assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": "/" + "x" * 200}) is False


# --- the unit files ---------------------------------------------------------------------------------------


def parse_unit(text: str) -> Unit:
    """A systemd unit file as sections of keys, each with every value assigned to it (keys may repeat)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, equals, value = line.partition("=")
        assert equals and section is not None, f"line {number} is neither a section nor KEY=VALUE: {raw!r}"
        assert not line.endswith("\\"), f"line {number}: continuation lines are not expected here"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def one(unit: Unit, section: str, key: str) -> str:
    values = unit[section][key]
    assert len(values) == 1, f"[{section}] {key} is set {len(values)} times: {values}"
    return values[0]


@pytest.fixture(params=[DAEMON_UNIT, TEMPLATE_UNIT], ids=["daemon", "template"])
def unit(request: pytest.FixtureRequest) -> Unit:
    path: Path = request.param
    return parse_unit(path.read_text())


def test_both_units_are_type_notify_and_restart_on_failure(unit: Unit) -> None:
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Service", "RestartSec")
    assert "NotifyAccess" not in unit["Service"]  # the default, main: only the daemon itself is heard
    assert one(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_both_units_start_after_the_network_is_online(unit: Unit) -> None:
    assert one(unit, "Unit", "After") == "network-online.target"
    assert one(unit, "Unit", "Wants") == "network-online.target"


def test_the_daemon_unit_runs_the_daemon_on_the_fixed_config_file() -> None:
    unit = parse_unit(DAEMON_UNIT.read_text())
    assert one(unit, "Service", "ExecStart") == f"{INSTALLED_BINARY} daemon --config /etc/usertunnel/usertunnel.toml"


def test_the_template_runs_one_daemon_per_instance_on_its_own_config_file() -> None:
    unit = parse_unit(TEMPLATE_UNIT.read_text())
    assert one(unit, "Service", "ExecStart") == f"{INSTALLED_BINARY} daemon --config /etc/usertunnel/%i.toml"
    assert "%i" in one(unit, "Unit", "Description")


def test_both_units_hold_exactly_net_admin_and_net_raw_as_an_ordinary_user(unit: Unit) -> None:
    assert set(one(unit, "Service", "AmbientCapabilities").split()) == CAPABILITIES
    assert set(one(unit, "Service", "CapabilityBoundingSet").split()) == CAPABILITIES
    assert one(unit, "Service", "User") == "usertunnel"
    assert one(unit, "Service", "NoNewPrivileges") == "yes"
    assert "DynamicUser" not in unit["Service"]


def test_both_units_confine_files_devices_and_socket_families(unit: Unit) -> None:
    service = unit["Service"]
    assert one(unit, "Service", "ProtectSystem") == "strict"
    assert one(unit, "Service", "ProtectHome") == "yes"
    assert one(unit, "Service", "PrivateTmp") == "yes"
    assert one(unit, "Service", "DevicePolicy") == "closed"
    assert one(unit, "Service", "DeviceAllow") == "/dev/net/tun rw"
    assert set(one(unit, "Service", "RestrictAddressFamilies").split()) == {
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
        "AF_NETLINK",
    }
    # Settings that would break a tunnel: /proc/sys/net must stay writable (disable_ipv6 on an IPv4-only
    # device), /dev/net/tun visible, and the host's network and user ids in reach.
    for breaking in ("ProtectKernelTunables", "ProcSubset", "PrivateDevices", "PrivateNetwork", "PrivateUsers"):
        assert breaking not in service, f"{breaking}= would stop the daemon from working"


def test_the_daemon_unit_keeps_its_socket_in_run_usertunnel_and_leaves_it_for_the_instances() -> None:
    unit = parse_unit(DAEMON_UNIT.read_text())
    assert one(unit, "Service", "RuntimeDirectory") == "usertunnel"
    assert one(unit, "Service", "RuntimeDirectoryPreserve") == "yes"  # instances' directories are below it
    assert not any(e.startswith("USERTUNNEL_RUN_DIR=") for e in unit["Service"]["Environment"])


def test_each_template_instance_has_a_control_directory_of_its_own() -> None:
    # The daemon's socket is DIR/usertunnel-daemon.sock whatever its config: two instances in one DIR would
    # refuse each other ("already running").
    unit = parse_unit(TEMPLATE_UNIT.read_text())
    assert one(unit, "Service", "RuntimeDirectory") == "usertunnel/%i"
    assert one(unit, "Service", "RuntimeDirectoryPreserve") == "no"
    assert "USERTUNNEL_RUN_DIR=/run/usertunnel/%i" in unit["Service"]["Environment"]


def test_the_two_units_differ_only_in_description_config_file_and_control_directory() -> None:
    daemon, template = parse_unit(DAEMON_UNIT.read_text()), parse_unit(TEMPLATE_UNIT.read_text())
    for unit in (daemon, template):
        del unit["Unit"]["Description"]
        for key in ("ExecStart", "RuntimeDirectory", "RuntimeDirectoryPreserve"):
            del unit["Service"][key]
        unit["Service"]["Environment"].remove("PYTHONUNBUFFERED=1")
    assert template["Service"].pop("Environment") == ["USERTUNNEL_RUN_DIR=/run/usertunnel/%i"]
    assert daemon["Service"].pop("Environment") == []
    assert daemon == template


# --- systemd-analyze (no running systemd needed) ----------------------------------------------------------

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def require_analyze() -> str:
    """systemd-analyze, or the test is skipped (a failure under USERTUNNEL_REQUIRE_NETNS=1)."""
    if SYSTEMD_ANALYZE is None:
        skip_or_fail("needs systemd-analyze (Debian package systemd; scripts/install.sh installs it)")
    return SYSTEMD_ANALYZE


def _installable(directory: Path) -> tuple[Path, Path]:
    """Copies of both units in `directory`, with ExecStart's binary replaced by one that exists here.

    `verify` checks that ExecStart is executable; /usr/local/bin/usertunnel is
    where docs/systemd.md installs it, not where the test suite runs from.
    """
    copies = []
    for source in (DAEMON_UNIT, TEMPLATE_UNIT):
        copy = directory / source.name
        copy.write_text(source.read_text().replace(INSTALLED_BINARY, sys.executable))
        copies.append(copy)
    return copies[0], copies[1]


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_analyze(), *args], capture_output=True, text=True, timeout=60, check=False)


def test_systemd_analyze_verify_accepts_both_units_without_a_warning(tmp_path: Path) -> None:
    daemon, template = _installable(tmp_path)
    instance = tmp_path / "usertunnel@site-a.service"  # an instance of the template in the same directory
    result = _analyze("verify", "--man=no", str(daemon), str(instance))
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")


def test_systemd_analyze_verify_would_report_a_mistake(tmp_path: Path) -> None:
    # The check above is only worth something if verify speaks up here, without a running systemd.
    daemon, _ = _installable(tmp_path)
    daemon.write_text(daemon.read_text().replace("Type=notify", "Type=notify\nAmbientCapabilites=CAP_NET_RAW"))
    result = _analyze("verify", "--man=no", str(daemon))
    assert "AmbientCapabilites" in result.stderr


def test_systemd_analyze_security_rates_both_units_ok(tmp_path: Path) -> None:
    daemon, _ = _installable(tmp_path)
    for path in (daemon, tmp_path / "usertunnel@site-a.service"):
        result = _analyze("security", "--offline=yes", "--no-pager", str(path))
        if "--offline" in result.stderr:
            skip_or_fail(f"this systemd-analyze has no offline security review: {result.stderr.strip()}")
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
        assert match is not None, result.stdout + result.stderr
        # 2.2 when written: CAP_NET_ADMIN, CAP_NET_RAW and the host's network are what a tunnel is.
        assert float(match[1]) <= 2.5, result.stdout


# --- no silent skips in CI ----------------------------------------------------------------------------------------
# Under USERTUNNEL_REQUIRE_NETNS=1 (.ci/run) a test that cannot run fails: through conftest.skip_or_fail, and
# through conftest's report hook for any other skip. Each case runs pytest on real tests in a subprocess.

ANALYZE_TESTS = [
    "tests/test_systemd.py::test_systemd_analyze_verify_accepts_both_units_without_a_warning",
    "tests/test_systemd.py::test_systemd_analyze_verify_would_report_a_mistake",
    "tests/test_systemd.py::test_systemd_analyze_security_rates_both_units_ok",
]


def _pytest(args: list[str], require: bool, **env: str) -> str:
    """The summary line of a pytest run in a subprocess, with USERTUNNEL_REQUIRE_NETNS=1 or without."""
    environ = {k: v for k, v in os.environ.items() if k not in ("USERTUNNEL_REQUIRE_NETNS", "HYPOTHESIS_PROFILE")}
    if require:
        environ["USERTUNNEL_REQUIRE_NETNS"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**environ, **env},
    )
    return done.stdout


def test_without_systemd_analyze_its_three_tests_skip_here_and_fail_in_ci() -> None:
    path = str(Path(sys.executable).parent)  # python and nothing of Debian's: no systemd-analyze
    assert "3 skipped" in _pytest(ANALYZE_TESTS, require=False, PATH=path)
    out = _pytest(ANALYZE_TESTS, require=True, PATH=path)
    assert "3 failed" in out and "USERTUNNEL_REQUIRE_NETNS=1 but this test cannot run: needs systemd-analyze" in out


def test_without_uvloop_the_control_tests_under_uvloop_skip_here_and_fail_in_ci(tmp_path: Path) -> None:
    (tmp_path / "uvloop.py").write_text("raise ModuleNotFoundError(\"No module named 'uvloop'\", name='uvloop')\n")
    hidden = {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    tests = ["tests/test_control.py", "-k", "test_server_answers_show_and_stats_with_the_snapshot"]
    assert "1 passed, 1 skipped" in _pytest(tests, require=False, **hidden)
    out = _pytest(tests, require=True, **hidden)
    assert "1 passed" in out and "1 error" in out and "cannot run: uvloop is not installed" in out  # in the fixture


SKIPPING = """
import os
import pytest
from conftest import skip_or_fail

@pytest.mark.skipif(True, reason="a skipif marker")
def test_marker():
    pass

def test_importorskip():
    pytest.importorskip("a_module_nobody_installed")

def test_bare_skip():
    pytest.skip("a bare pytest.skip")

def test_helper():
    skip_or_fail("through the helper")
"""


def test_every_kind_of_skip_is_a_failure_in_ci(tmp_path: Path) -> None:
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    (tmp_path / "test_module_skip.py").write_text("import pytest\npytest.importorskip('a_module_nobody_installed')\n")
    tests = [str(tmp_path), "-p", "conftest", "--rootdir", str(tmp_path), "--continue-on-collection-errors"]
    plugin = {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    assert "5 skipped" in _pytest(tests, require=False, **plugin)
    out = _pytest(tests, require=True, **plugin)
    # The skipif marker and the module's importorskip stop the test before its call: errors, not failures.
    assert "3 failed, 2 errors in" in out.splitlines()[-1], out
    for reason in ("a skipif marker", "a_module_nobody_installed", "a bare pytest.skip", "through the helper"):
        assert reason in out, reason
