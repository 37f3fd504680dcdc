"""The Containerfile cannot be built here (no registry for its base image); what can be checked is checked:
what it copies exists, and the command it runs is one usertunnel has, with options it takes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from usertunnel import cli

ROOT = Path(__file__).resolve().parent.parent
TEXT = (ROOT / "Containerfile").read_text()


def test_everything_it_copies_is_in_the_checkout() -> None:
    copies = re.findall(r"^COPY (.+) \S+$", TEXT, re.MULTILINE)
    assert copies
    for line in copies:
        for source in line.split():
            assert (ROOT / source).exists(), source


def test_its_entry_point_is_usertunnel_daemon_with_a_config_file() -> None:
    entry = json.loads(re.search(r"^ENTRYPOINT (.+)$", TEXT, re.MULTILINE)[1])  # type: ignore[index]
    command = json.loads(re.search(r"^CMD (.+)$", TEXT, re.MULTILINE)[1])  # type: ignore[index]
    assert entry[0] == "usertunnel"
    args = cli.build_parser().parse_args(entry[1:] + command)
    assert args.command == "daemon" and args.config == "/etc/usertunnel/usertunnel.toml"


def test_it_asks_for_no_more_than_net_admin_and_net_raw() -> None:
    added = set(re.findall(r"--cap-add (\w+)", TEXT))
    assert added == {"NET_ADMIN", "NET_RAW"} and "--cap-drop all" in TEXT and "--device /dev/net/tun" in TEXT
