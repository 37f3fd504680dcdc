"""What a person expects around the command line: help everywhere, --version, completion, a man page, logs."""

from __future__ import annotations

import contextlib
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

import usertunnel
from usertunnel import cli, iptunnel
from usertunnel.core.params import Mode

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
