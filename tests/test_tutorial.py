"""The tutorial's examples stay true: rebuilding docs/tutorial.md gives the same text, numbers aside.

Times, identifiers, checksums and ports change from run to run; everything else
(which commands run, which lines they print, every field name and verdict) must
be what the committed tutorial shows.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_netns

ROOT = Path(__file__).resolve().parent.parent
# Numbers, hex values, and 4-digit hex words without a decimal digit (an identification such as "abfa").
NUMBERISH = re.compile(r"0x[0-9a-fA-F]+|[0-9a-fA-F]*\d[0-9a-fA-F.]*|\b[a-f]{4}\b")


ASCII_DUMP = re.compile(r"\|.*\|$")  # explain's printable view of payload bytes (ping timestamps)


def normalized(text: str) -> list[str]:
    return [" ".join(NUMBERISH.sub("#", ASCII_DUMP.sub("|...|", line)).split()) for line in text.splitlines()]


@pytest.mark.netns
def test_rebuilding_the_tutorial_reproduces_every_example(tmp_path: Path) -> None:
    require_netns()
    fresh = tmp_path / "tutorial.md"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "tutorial.py"), "--output", str(fresh)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    committed = normalized((ROOT / "docs" / "tutorial.md").read_text())
    rebuilt = normalized(fresh.read_text())
    assert rebuilt == committed, "docs/tutorial.md is stale: run `python3 scripts/tutorial.py` and commit it"
