"""The soak benchmark, shortened for CI: a tunnel at full rate keeps its memory and open files flat.

The full run (`python3 benchmarks/soak.py`, ten minutes) is recorded in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_netns

ROOT = Path(__file__).resolve().parent.parent
# soak.py's own words: "both tunnel processes alive at the end" (or "NOT alive") and "— met" (or "— NOT met").
ALIVE = re.compile(r"both tunnel processes (alive|NOT alive) at the end")
VERDICT = re.compile(r"Target: growth under \d+% — (met|NOT met) ")


def soak_problems(report: str) -> list[str]:
    """What soak.py's report says went wrong: a tunnel process that died, growth over the target, or a report
    that does not say (each line must be found, with the good word, not a phrase that its negation contains)."""
    alive, verdict = ALIVE.search(report), VERDICT.search(report)
    problems = []
    if alive is None or alive[1] != "alive":
        problems.append(f"tunnel processes: {alive[0] if alive else 'no liveness line'}")
    if verdict is None or verdict[1] != "met":
        problems.append(f"growth: {verdict[0] if verdict else 'no verdict line'}")
    return problems


def test_a_report_with_a_dead_tunnel_or_a_missed_target_is_a_failure() -> None:
    good = (
        "gre key+seq+csum between two namespaces, 3 back-to-back iperf3 TCP tests over 1.0 min, 5.2 GB through the "
        "tunnel; both tunnel processes alive at the end; drops: none.\n\n"
        "Target: growth under 5% — met (largest +0.4%).\n"
    )
    assert soak_problems(good) == []
    dead = good.replace("processes alive", "processes NOT alive")
    assert soak_problems(dead) == ["tunnel processes: both tunnel processes NOT alive at the end"]
    missed = good.replace("— met", "— NOT met")
    assert soak_problems(missed) == ["growth: Target: growth under 5% — NOT met "]
    assert len(soak_problems("soak: crashed before its report")) == 2


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
    assert soak_problems(done.stdout) == [], done.stdout
