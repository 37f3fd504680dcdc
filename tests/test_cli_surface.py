"""What a person expects around the command line: help everywhere, --version, completion, a man page, logs."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import pty
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Lab, require_netns

import usertunnel
from usertunnel import cli
from usertunnel.core.params import Mode
from usertunnel.front import iptunnel
from usertunnel.io import netns

MODES = [mode.value.name for mode in Mode]
MODES6 = [mode.value.name for mode in Mode if mode.value.outer == 6]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "usertunnel", *args], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["tunnel", "--help"], iptunnel.HELP),
        (["tunnel", "-h"], iptunnel.HELP),
        (["tunnel", "add", "--help"], iptunnel.HELP),
        (["-6", "tunnel", "--help"], iptunnel.HELP6),
        (["-6", "tunnel", "-h"], iptunnel.HELP6),
    ],
)
def test_tunnel_help_options_print_what_tunnel_help_prints(args: list[str], expected: str) -> None:
    done = run_cli(*args)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == expected
    help_word = run_cli(*[a for a in args if a not in ("-h", "--help", "add")], "help")
    assert help_word.stdout == done.stdout


def test_ip6_tunnel_help_lists_no_word_that_add_then_refuses() -> None:
    """The words whose values usertunnel keeps only to refuse them (EXTRA_KEYS) are not in -6 tunnel help's usage."""
    refused = []
    for word, handler in iptunnel._WORDS6.items():
        state = iptunnel._State()
        with contextlib.suppress(iptunnel.IpTunnelError):
            handler(iptunnel._Words(["inherit"]), state)
        if set(state.table) & set(iptunnel.EXTRA_KEYS):
            refused.append(word)
    assert "allow-localremote" in refused
    usage = iptunnel.HELP6.partition("\nWhere:")[0]
    for word in refused:
        assert not re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", usage), f"-6 tunnel help offers {word!r}"


def test_version_is_the_installed_distributions(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    done = run_cli("--version")
    assert (done.returncode, done.stdout) == (0, f"usertunnel {importlib.metadata.version('usertunnel')}\n")
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "9.8.7")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert (exit_.value.code, capsys.readouterr().out) == (0, "usertunnel 9.8.7\n")


def test_version_without_an_installed_distribution_is_the_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert cli.version() == usertunnel.__version__


# --- bash completion -------------------------------------------------------------------------------------------

DRIVER = """
source "$1"; shift
COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}; COMPREPLY=()
function=$(complete -p usertunnel | sed -E 's/.* -F ([^ ]+) .*/\\1/')
"$function" usertunnel "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\\n' "${COMPREPLY[@]}"
"""


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    done = run_cli("completion", "bash")
    assert (done.returncode, done.stderr) == (0, "")
    path = tmp_path_factory.mktemp("completion") / "usertunnel.bash"
    path.write_text(done.stdout)
    return path


def offered(script: Path, *words: str) -> list[str]:
    """What bash completion offers for the command line `words` (the last one is being completed)."""
    done = subprocess.run(
        ["bash", "-c", DRIVER, "bash", str(script), "usertunnel", *words],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (done.returncode, done.stderr) == (0, "")
    return [line for line in done.stdout.splitlines() if line]


def test_the_completion_script_is_valid_bash(bash_script: Path) -> None:
    done = subprocess.run(["bash", "-n", str(bash_script)], capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stderr) == (0, "")


def test_completion_offers_commands_and_options_from_the_parser(bash_script: Path) -> None:
    assert offered(bash_script, "u") == ["up"]
    assert "completion" in offered(bash_script, "")
    assert offered(bash_script, "up", "--mo") == ["--mode"]
    assert offered(bash_script, "up", "--csum-verify", "") == ["full", "derived"]
    assert offered(bash_script, "completion", "") == ["bash"]


def test_completion_offers_the_words_of_the_tunnel_grammar(bash_script: Path) -> None:
    assert offered(bash_script, "tunnel", "add", "x", "mo") == ["mode"]
    assert offered(bash_script, "tunnel", "d") == ["delete"]
    assert {"key", "remote", "local", "ttl", "nopmtudisc"} <= set(offered(bash_script, "tunnel", "add", "x", ""))
    assert offered(bash_script, "tunnel", "add", "x", "key", "") == []  # a value: nothing to offer
    assert set(offered(bash_script, "tunnel", "add", "x", "mode", "")) >= set(MODES)
    assert offered(bash_script, "tunnel", "add", "x", "ttl", "") == ["inherit"]
    assert "lowdelay" in offered(bash_script, "tunnel", "add", "x", "tos", "")
    assert offered(bash_script, "tunnel", "prl", "prl-d") == ["prl-default", "prl-delete"]
    assert offered(bash_script, "tunnel", "6rd", "6rd-r") == ["6rd-relay_prefix", "6rd-reset"]


def test_completion_under_minus_6_offers_the_ip6_tunnel_words_and_none_add_refuses(bash_script: Path) -> None:
    words6 = offered(bash_script, "-6", "tunnel", "add", "x", "")
    assert "encaplimit" in words6 and "flowlabel" in words6
    assert "allow-localremote" not in words6 and "dscp" not in words6
    assert offered(bash_script, "-6", "tunnel", "add", "x", "hoplimit", "") == []  # ip -6 has no hoplimit inherit
    assert offered(bash_script, "tunnel", "add", "x", "mode", "ip6gre", "encap") == ["encaplimit"]  # handed over
    assert set(offered(bash_script, "-6", "tunnel", "add", "x", "mode", "")) >= set(MODES6)


@pytest.mark.parametrize("grammar", [[], ["-6"]])
def test_every_keyword_completion_offers_is_one_the_grammar_reads(bash_script: Path, grammar: list[str]) -> None:
    """Each keyword offered, with the first value offered after it (or a number), parses: none is unknown."""
    ipv6 = bool(grammar)
    start = ["add", "t", "mode", "ip6gre" if ipv6 else "gre"]
    keywords = offered(bash_script, *grammar, "tunnel", *start, "")
    assert len(keywords) > 10
    for keyword in keywords:
        after = offered(bash_script, *grammar, "tunnel", *start, keyword, "")
        value = [] if "mode" in after else after[:1] or ["1"]  # keywords again: a flag
        try:
            iptunnel.parse([*start, keyword, *value], ipv6=ipv6)
        except iptunnel.IpTunnelError as exc:
            assert "garbage" not in str(exc) and "not complete" not in str(exc), (keyword, value, str(exc))


# --- logs --------------------------------------------------------------------------------------------------------

LOGS = """
import logging, sys
from usertunnel.cli import setup_logging
setup_logging(sys.argv[1])
log = logging.getLogger("usertunnel")
log.debug("a debug line")
log.info("an info line")
log.warning("a warning line")
"""
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} usertunnel: ")


def logged(stderr: Any, level: str = "info", env: dict[str, str] | None = None) -> None:
    subprocess.run([sys.executable, "-c", LOGS, level], stderr=stderr, timeout=30, check=True, env=env)


def test_log_lines_in_a_file_carry_a_timestamp(tmp_path: Path) -> None:
    with (tmp_path / "log").open("w") as file:
        logged(file)
    lines = (tmp_path / "log").read_text().splitlines()
    assert [STAMP.sub("", line) for line in lines] == ["an info line", "a warning line"]
    assert all(STAMP.match(line) for line in lines), lines


def test_log_lines_on_a_terminal_carry_a_timestamp() -> None:
    leader, follower = pty.openpty()
    try:
        logged(follower)
        os.close(follower)
        follower = -1
        received = b""
        with contextlib.suppress(OSError):  # EIO: the terminal's other side is closed, all is read
            while chunk := os.read(leader, 4096):
                received += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    lines = received.decode().splitlines()
    assert len(lines) == 2 and all(STAMP.match(line) for line in lines), lines


def test_log_lines_to_another_program_carry_none() -> None:
    done = subprocess.run([sys.executable, "-c", LOGS, "info"], capture_output=True, text=True, timeout=30)
    assert done.stderr.splitlines() == ["usertunnel: an info line", "usertunnel: a warning line"]


def test_log_lines_in_systemds_journal_carry_no_timestamp_but_the_priority(tmp_path: Path) -> None:
    """JOURNAL_STREAM names the journal's stream (device:inode); a file stands in for it here."""
    with (tmp_path / "journal").open("w") as file:
        status = os.fstat(file.fileno())
        logged(file, env={**os.environ, "JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"})
        other = {**os.environ, "JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino + 1}"}  # another stream's
        logged(file, env=other)
    lines = (tmp_path / "journal").read_text().splitlines()
    assert lines[:2] == ["<6>usertunnel: an info line", "<4>usertunnel: a warning line"]
    assert len(lines) == 4 and all(STAMP.match(line) for line in lines[2:]), lines


@pytest.mark.parametrize(
    ("level", "shown"),
    [
        ("debug", ["a debug line", "an info line", "a warning line"]),
        ("info", ["an info line", "a warning line"]),
        ("warning", ["a warning line"]),
        ("error", []),
    ],
)
def test_log_level_is_the_least_severe_line_shown(level: str, shown: list[str]) -> None:
    done = subprocess.run([sys.executable, "-c", LOGS, level], capture_output=True, text=True, timeout=30)
    assert [line.removeprefix("usertunnel: ") for line in done.stderr.splitlines()] == shown


UP = ["up", "--remote", "198.51.100.2"]


@pytest.mark.parametrize(
    ("args", "level"),
    [
        (UP, "info"),
        (["-q", *UP], "warning"),
        (["--log-level", "debug", *UP], "debug"),
        (["--log-level", "error", *UP, "--log-level", "debug"], "debug"),
        ([*UP, "--log-level", "warning"], "warning"),
        (["daemon", "--log-level", "error"], "error"),
        (["--log-level", "debug", "daemon"], "debug"),
    ],
)
def test_log_level_is_read_before_the_command_and_by_up_and_daemon(args: list[str], level: str) -> None:
    assert cli.build_parser().parse_args(args).log_level == level


def test_a_log_level_that_is_none_is_one_line_exit_2() -> None:
    done = run_cli("--log-level", "verbose", "up", "--remote", "198.51.100.2")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    assert "invalid choice: 'verbose'" in done.stderr and "'debug', 'info', 'warning', 'error'" in done.stderr


@pytest.mark.netns
def test_up_in_a_file_logs_timestamped_lines_and_at_warning_no_ready_line(tmp_path: Path) -> None:
    require_netns()
    lab = Lab(prefix="uha", ipv6=False)
    try:
        for level, ready_shown in (("info", True), ("warning", False)):
            path = tmp_path / f"{level}.log"
            args = ["--local", "198.51.100.1", "--remote", "198.51.100.2", "--name", "uha0", "--log-level", level]
            with path.open("w") as log:
                proc = netns.popen(lab.a, [sys.executable, "-m", "usertunnel", "up", *args], stderr=log)
            try:
                # The ready line is logged at info; the control socket appears just after it.
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and lab.run(lab.a, ["ip", "link", "show", "uha0"]).returncode:
                    time.sleep(0.1)
                time.sleep(0.5)
            finally:
                proc.terminate()
                assert proc.wait(timeout=10) == 0
            lines = path.read_text().splitlines()
            assert any(" uha0: up mode gre" in line for line in lines) == ready_shown, lines
            assert all(STAMP.match(line) for line in lines), lines
    finally:
        lab.close()


def test_top_level_help_documents_the_exit_status_and_usertunnel_debug() -> None:
    done = run_cli("--help")
    text = done.stdout
    assert done.returncode == 0
    assert "USERTUNNEL_DEBUG=1" in text and "traceback" in text
    section = text.partition("\nexit status:\n")[2].partition("\n\n")[0]
    assert [line.split()[0] for line in section.splitlines() if not line.startswith("     ")] == ["0", "1", "2", "130"]
    assert str(cli.EXIT_USAGE) in [code for code, _ in cli.EXIT_STATUS]


def test_an_internal_error_names_usertunnel_debug_and_with_it_prints_the_traceback() -> None:
    """The variable the help documents does what it says (`show`, made to fail inside)."""
    code = "import sys; from usertunnel import cli\nfrom usertunnel.run import control\n"
    code += "control.run = lambda args: 1 / 0\nsys.exit(cli.main(['show']))"
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert quiet.returncode == 1 and "Traceback" not in quiet.stderr and "USERTUNNEL_DEBUG=1" in quiet.stderr
    env = {**os.environ, "USERTUNNEL_DEBUG": "1"}
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=env)
    assert loud.returncode == 1 and "Traceback" in loud.stderr and "ZeroDivisionError" in loud.stderr


# --- the man page ------------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
MANPAGE = ROOT / "docs" / "usertunnel.1"


def test_the_committed_man_page_is_the_one_the_parser_writes(tmp_path: Path) -> None:
    fresh = tmp_path / "usertunnel.1"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "manpage.py"), "--output", str(fresh)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert fresh.read_text() == MANPAGE.read_text(), (
        "docs/usertunnel.1 is stale: run `python3 scripts/manpage.py` and commit it"
    )


def require_man() -> str:
    """man(1), or the test is skipped (failed under USERTUNNEL_REQUIRE_NETNS=1, as the other tests that need
    something of the machine)."""
    man = shutil.which("man")
    if man is None:
        reason = "needs man (Debian man-db)"
        if os.environ.get("USERTUNNEL_REQUIRE_NETNS") == "1":
            pytest.fail(f"USERTUNNEL_REQUIRE_NETNS=1 but this test cannot run: {reason}")
        pytest.skip(reason)
    return man


def test_the_man_page_renders_every_section_and_command_without_a_warning() -> None:
    man = require_man()
    env = {**os.environ, "MANWIDTH": "80", "MANPAGER": "cat", "PAGER": "cat"}
    done = subprocess.run(
        [man, "--warnings", "-l", "-P", "cat", str(MANPAGE)], capture_output=True, text=True, timeout=60, env=env
    )
    assert (done.returncode, done.stderr) == (0, "")
    headings = [line for line in done.stdout.splitlines() if re.match(r"[A-Z][A-Z ]+$", line)]
    assert headings == [
        "NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "EXIT STATUS", "ENVIRONMENT", "FILES", "SEE ALSO"
    ]  # fmt: skip
    assert "usertunnel - GRE, IPIP, SIT and IPv6 tunnels" in done.stdout
    commands = [line.split()[1] for line in done.stdout.splitlines() if re.match(r"   usertunnel \w+$", line)]
    assert commands == list(subparsers_of(cli.build_parser()))
    for code, _ in cli.EXIT_STATUS:
        assert re.search(rf"^       {code} ", done.stdout, re.MULTILINE), f"exit status {code}"
    assert "USERTUNNEL_DEBUG=1" in done.stdout and "JOURNAL_STREAM" in done.stdout
    assert max(len(line) for line in done.stdout.splitlines()) <= 7 + 100  # no paragraph left unwrapped


def subparsers_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}
