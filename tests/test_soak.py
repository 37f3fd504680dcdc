"""The soak benchmark, shortened for CI: a tunnel at full rate keeps its memory and open files flat.

The full run (`python3 benchmarks/soak.py`, ten minutes) is recorded in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_netns

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.netns
def test_a_minute_at_full_rate_grows_neither_memory_nor_open_files() -> None:
    require_netns()
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--minutes", "1", "--warm-up", "20"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "alive at the end" in done.stdout and "— met" in done.stdout
