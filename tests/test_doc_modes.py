"""Every help text and document that lists the tunnel modes lists them all, from the mode table of the code.

The list of modes is `core.params.Mode`; each place below that a reader turns to
for "which modes are there" must name every one of them (or, where the list is
about one outer family or one command, exactly the ones that apply), and none
may call a mode "planned".
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from usertunnel.cli import build_parser
from usertunnel.core.params import Mode
from usertunnel.front import iptunnel

ROOT = Path(__file__).resolve().parent.parent
MODES = [mode.value.name for mode in Mode]
MODES6 = [mode.value.name for mode in Mode if mode.value.outer == 6]


def named(text: str) -> list[str]:
    """The modes `text` names as words (`gre` is not named by `ip6gre`, `gretap` or `gre-lab`)."""
    return [m for m in MODES if re.search(rf"(?<![\w-]){re.escape(m)}(?![\w-])", text)]


def subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]  # type: ignore[no-any-return]
    raise AssertionError("no subcommands")


def option_help(parser: argparse.ArgumentParser, option: str) -> str:
    return next(a.help or "" for a in parser._actions if option in a.option_strings)


def every_help_text() -> dict[str, str]:
    """`usertunnel --help`, each command's --help, and `[-6] tunnel help`."""
    parser = build_parser()
    texts = {"usertunnel --help": parser.format_help()}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                texts[f"usertunnel {name} --help"] = sub.format_help()
    texts["usertunnel tunnel help"] = iptunnel.HELP
    texts["usertunnel -6 tunnel help"] = iptunnel.HELP6
    return texts


def test_the_mode_table_has_the_modes_this_test_was_written_for() -> None:
    # If a mode is added, the places below must name it; this line only shows the test sees it.
    assert {"gre", "ipip", "sit", "isatap", "ipip6", "ip6ip6", "ip6gre", "gretap", "ip6gretap"} <= set(MODES)


LISTS_OF_MODES: dict[str, Callable[[], str | None]] = {
    "usertunnel --help: description": lambda: build_parser().description,
    "usertunnel up --help: description": lambda: subparser("up").description,
    "usertunnel up --help: --mode": lambda: option_help(subparser("up"), "--mode"),
    "usertunnel show --help: description": lambda: subparser("show").description,
    "usertunnel stats --help: the -j fields": lambda: subparser("stats").epilog,
    "usertunnel tunnel help": lambda: iptunnel.HELP,  # the IPv6-outer modes hand over to -6, as in ip
}


@pytest.mark.parametrize("where", list(LISTS_OF_MODES))
def test_help_that_lists_the_modes_names_every_mode(where: str) -> None:
    text = LISTS_OF_MODES[where]() or ""
    assert named(text) == MODES, f"{where} does not name every mode of core/params.py's Mode"


def test_ip6_tunnel_help_names_every_ipv6_outer_mode() -> None:
    assert named(iptunnel.HELP6) == MODES6


def test_the_labs_modes_are_modes_and_its_help_says_up_runs_every_mode() -> None:
    lab = subparser("lab")
    choices = next(a.choices for a in lab._actions if "--mode" in a.option_strings)
    assert choices is not None and set(choices) <= set(MODES)
    assert "every mode" in option_help(lab, "--mode")


@pytest.mark.parametrize("where", sorted(every_help_text()))
def test_no_help_text_calls_a_mode_planned(where: str) -> None:
    text = every_help_text()[where]
    assert not re.search(r"(?<!\.)\bplanned\b|\bnot yet\b", text), where


def test_up_help_headings_name_both_outer_families_or_neither() -> None:
    """Options under "outer IPv4 header" apply to IPv6 outer headers too: a heading may not say only one."""
    for group in subparser("up")._action_groups:
        title = group.title or ""
        assert ("IPv4" in title) == ("IPv6" in title), f"up --help heading {title!r} names one outer family"


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Each table of a Markdown text as rows of cells (the separator row left out)."""
    tables: list[list[list[str]]] = []
    rows: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
        elif rows:
            tables.append(rows)
            rows = []
    return tables


DOCS = ["README.md", "docs/tutorial.md", "docs/tutorial.src.md", "docs/config.md"]


@pytest.mark.parametrize("doc", ["README.md", "docs/tutorial.md", "docs/tutorial.src.md"])
def test_a_docs_table_of_modes_has_a_row_for_every_mode(doc: str) -> None:
    tables = [t for t in markdown_tables((ROOT / doc).read_text()) if t[0][0] == "mode"]
    assert tables, f"{doc} has no table of modes"
    for table in tables:
        rows = [named(row[0].strip("`")) for row in table[1:]]
        assert sorted(m for row in rows for m in row) == sorted(MODES), f"{doc}: {table[0]}"


@pytest.mark.parametrize(
    ("doc", "row"),
    [("README.md", "`--mode MODE`"), ("docs/config.md", "`mode`")],
)
def test_a_docs_row_for_the_mode_option_names_every_mode(doc: str, row: str) -> None:
    rows = [r for t in markdown_tables((ROOT / doc).read_text()) for r in t if r[0] == row]
    assert rows, f"{doc} has no row {row}"
    for cells in rows:
        assert named(" ".join(cells[1:])) == MODES, f"{doc}: the row {row} does not name every mode"


@pytest.mark.parametrize("doc", DOCS)
def test_no_doc_calls_a_mode_planned(doc: str) -> None:
    for number, line in enumerate((ROOT / doc).read_text().splitlines(), 1):
        if named(line):
            assert not re.search(r"(?<!\.)\bplanned\b|\bnot yet\b", line), f"{doc}:{number}: {line}"
