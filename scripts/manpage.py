#!/usr/bin/env python3
"""Write docs/usertunnel.1, usertunnel's man page, from the command line's own parser (argparse-manpage).

Every command, option and help text is what `usertunnel ... --help` prints, taken from
usertunnel.cli.build_parser(); each command's epilog (its examples) follows its
description, and `tunnel` carries the ip tunnel grammar's usage (iptunnel.HELP and
HELP6). The sections argparse has no place for come from the tables the top-level
--help prints too: EXIT STATUS (cli.EXIT_STATUS) and ENVIRONMENT (cli.ENVIRONMENT);
FILES and SEE ALSO are written here. The page carries no date, so that building it
twice gives the same file: tests/test_cli_surface.py rebuilds it and compares.
After changing the command line: `python3 scripts/manpage.py` and commit the page.
Read it with `man -l docs/usertunnel.1`.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

from argparse_manpage.manpage import Manpage

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "docs" / "usertunnel.1"

# The roff requests this script and argparse-manpage write; a text line that starts like a request would be one.
REQUESTS = {
    ".TH",
    ".SH",
    ".SS",
    ".TP",
    ".B",
    ".BR",
    ".nf",
    ".fi",
    ".RS",
    ".RE",
    ".br",
    ".PP",
    ".nh",
    ".ad",
    ".UR",
    ".UE",
}


def roff(text: str) -> str:
    """Text as roff prints it literally: backslashes and hyphens escaped, no line read as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.splitlines())


def verbatim(text: str) -> str:
    """A block argparse-manpage will escape, kept line for line (no filling): the raw help texts. A line
    longer than 100 characters is a paragraph nobody wrapped: it is wrapped at its own indentation."""
    lines = []
    for line in text.strip("\n").splitlines():
        if line.startswith((".", "'")):
            raise SystemExit(f"a help line starts like a roff request, reword it: {line!r}")
        indent = " " * (len(line) - len(line.lstrip()))
        long = len(line) > 100
        lines += textwrap.wrap(line.strip(), 79, initial_indent=indent, subsequent_indent=indent) if long else [line]
    return "\n".join([".nf", *lines, ".fi"])


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def prepared_parser() -> argparse.ArgumentParser:
    """The command line's parser, its texts arranged for a man page (the parser `usertunnel` runs is untouched)."""
    from usertunnel import cli
    from usertunnel.front import iptunnel

    parser = cli.build_parser()
    first_paragraph = (parser.epilog or "").split("\n\n")[0]
    parser.description = f"{parser.description}\n\n{first_paragraph}"
    parser.epilog = None  # its tables are the EXIT STATUS and ENVIRONMENT sections
    parser._positionals.title = "commands"
    parser._action_groups.remove(parser._positionals)  # OPTIONS first, then COMMANDS and each command's own
    parser._action_groups.append(parser._positionals)
    for name, command in subcommands(parser).items():
        raw = isinstance(command._get_formatter(), argparse.RawDescriptionHelpFormatter)  # laid out by hand
        parts = [command.description or "", command.epilog or ""]
        if name == "tunnel":
            parts += [iptunnel.HELP, iptunnel.HELP6]
        text = "\n\n".join(part.strip("\n") for part in parts if part)
        if raw:
            text = verbatim(text)
        command.description, command.epilog = text, None
        for group in command._action_groups:
            if group.title:  # a heading of its own, not run into the group's description
                group.title = f"\\fB{roff(group.title)}\\fR\n.br"
    return parser


def table(rows: tuple[tuple[str, str], ...]) -> str:
    return "\n".join(f".TP\n.B {roff(name)}\n{roff(meaning)}" for name, meaning in rows)


def manpage() -> str:
    """The text of docs/usertunnel.1."""
    from usertunnel import cli
    from usertunnel.run import control

    os.environ["COLUMNS"] = "100000"  # argparse wraps nothing; roff fills the lines to the reader's width
    page = Manpage(prepared_parser(), format="single-commands-section")
    page.description = "GRE, IPIP, SIT and IPv6 tunnels in userspace, over a Linux TUN device"
    page.date = ""
    page.source = f"usertunnel {cli.version()}"
    page.manual = "User Commands"
    run = control.RUN_DIR
    page.add_section("exit status", ">", table(cli.EXIT_STATUS))
    page.add_section("environment", ">", table(cli.ENVIRONMENT))
    files = (
        (f"{run}/IFNAME.sock", "the control socket of the `usertunnel up` running tunnel IFNAME (mode 0600)"),
        (f"{run}/{control.DAEMON}.sock", "the control socket of `usertunnel daemon`"),
        (f"{run}/netns/NAME/", "the same, for the instances running in network namespace NAME"),
    )
    page.add_section("files", ">", table(files))
    see_also = ".BR ip\\-tunnel (8),\n.BR ip\\-link (8),\n.BR systemd.service (5);\n" + roff(
        "README.md, docs/config.md (the configuration file), docs/systemd.md and docs/tutorial.md"
    )
    page.add_section("see also", ">", see_also)
    text = str(page)
    lines = text.splitlines()
    lines[1:1] = [".nh", ".ad l"]  # no hyphenation, ragged right: option names and addresses stay whole
    for line in lines:
        word = line.split(" ", 1)[0]
        if line.startswith((".", "'")) and word not in REQUESTS:
            raise SystemExit(f"an unexpected roff request in the page: {line!r}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=TARGET, help=f"where to write it (default {TARGET})")
    args = parser.parse_args()
    args.output.write_text(manpage())
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
