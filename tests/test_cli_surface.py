"""What a person expects around the command line: help everywhere, --version, completion, a man page, logs."""

from __future__ import annotations

import contextlib
import importlib.metadata
import re
import subprocess
import sys

import pytest

import usertunnel
from usertunnel import cli, iptunnel


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
