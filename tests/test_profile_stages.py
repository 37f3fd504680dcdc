"""benchmarks/profile.py: the collapsed-stack parser, the stage rules and the µs-per-packet arithmetic (no root)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load() -> ModuleType:
    # Loaded by path under its own name: `import profile` would find the standard library's module.
    spec = importlib.util.spec_from_file_location("usertunnel_bench_profile", ROOT / "benchmarks" / "profile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


profile = _load()

BASE = (
    "_run_module_as_main (<frozen runpy>:198);<module> (usertunnel/__main__.py:3);"
    "up (usertunnel/run/service.py:419);Runner.run (asyncio/runners.py:118)"
)
LOOP = "usertunnel/io/loop.py"
# What the lines of this made-up loop.py say (py-spy gives file:line; the tool reads the line from the checkout).
SOURCE = {
    (LOOP, 272): "            data = os.read(fd, RECV_BUFFER)",
    (LOOP, 279): "            header = tunnel.encapsulate_header(inner, now)",
    (LOOP, 125): "                os.writev(fd, (item.vnet, item.packet))",
    (LOOP, 290): "                batch.flush()",
    ("usertunnel/io/batch.py", 225): "            n = _sendmmsg(fd, self._msgs_address, total - done, MSG_DONTWAIT)",
}


def source(file: str, line: int) -> str | None:
    return SOURCE.get((file, line))


def stack(*frames: str) -> str:
    return ";".join((BASE, *frames))


LINES = [
    # TUN read: a C call (os.read) has no frame; the leaf line's text names it.
    stack(f"Dataplane._on_tun_readable ({LOOP}:227)", f"Dataplane._tun_batch ({LOOP}:272)") + " 10",
    # encapsulate, including a checksum helper and an enum property it calls (no rule: the caller's stage).
    stack(
        f"Dataplane._on_tun_readable ({LOOP}:227)",
        f"Dataplane._tun_batch ({LOOP}:279)",
        "Tunnel.encapsulate_header (usertunnel/core/encap.py:280)",
        "ones_complement_sum (usertunnel/core/checksum.py:20)",
    )
    + " 20",
    stack(
        f"Dataplane._tun_batch ({LOOP}:279)",
        "Tunnel.encapsulate_header (usertunnel/core/encap.py:209)",
        "property.__get__ (enum.py:211)",
        "Enum.value (enum.py:1258)",
    )
    + " 5",
    # send: sendmmsg through ctypes, and SendBatch.add's own lines.
    stack(
        f"Dataplane._tun_batch ({LOOP}:290)",
        "SendBatch.flush (usertunnel/io/batch.py:225)",
    )
    + " 30",
    stack(f"Dataplane._tun_batch ({LOOP}:281)", "SendBatch.add (usertunnel/io/batch.py:206)") + " 5",
    # TX loop: _tun_batch's own line, nothing inside it.
    stack(f"Dataplane._on_tun_readable ({LOOP}:227)", f"Dataplane._tun_batch ({LOOP}:284)") + " 10",
    # recv, decapsulate, coalesce (gro's checksum included), TUN write.
    stack(f"Dataplane._on_raw_batch ({LOOP}:366)", "RecvBatch.recv (usertunnel/io/batch.py:147)") + " 8",
    stack(
        f"Dataplane._on_raw_batch ({LOOP}:375)",
        "Demux.decapsulate (usertunnel/core/encap.py:511)",
        "Demux._decapsulate (usertunnel/core/encap.py:600)",
        "TunnelTable.lookup (usertunnel/core/lookup.py:99)",
    )
    + " 12",
    stack(
        f"Interface.write_many ({LOOP}:123)",
        "coalesce (usertunnel/core/gro.py:160)",
        "ones_complement_sum (usertunnel/core/checksum.py:20)",
    )
    + " 6",
    stack(f"Dataplane._on_raw_batch ({LOOP}:392)", f"Interface.write_many ({LOOP}:125)") + " 9",
    stack(f"Dataplane._on_raw_batch ({LOOP}:380)") + " 4",
    # the event loop itself, and a timer.
    BASE + " 7",
    stack("Dataplane._expire (usertunnel/io/loop.py:556)") + " 1",
    # compiled plans, by file name and by function name.
    stack(f"Dataplane._tun_batch ({LOOP}:279)", "tx_plan_gre_key (<plan gre0 tx>:12)") + " 3",
    stack(f"Dataplane._on_raw_batch ({LOOP}:375)", "run (<plan gre0 rx>:4)") + " 2",
    stack(f"Dataplane._on_raw_batch ({LOOP}:375)", "rx_plan_gre (usertunnel/core/plan.py:88)") + " 2",
    "",
    "not a stack line",
]


def test_parse_collapsed() -> None:
    stacks = profile.parse_collapsed("\n".join(LINES))
    assert len(stacks) == 16
    frames, count = stacks[0]
    assert count == 10
    assert frames[-1] == profile.Frame("Dataplane._tun_batch", LOOP, 272)
    assert frames[0] == profile.Frame("_run_module_as_main", "<frozen runpy>", 198)
    plan_frames, _ = stacks[13]
    assert plan_frames[-1] == profile.Frame("tx_plan_gre_key", "<plan gre0 tx>", 12)


def test_parse_frame_without_location() -> None:
    assert profile.parse_frame("<native>") == profile.Frame("<native>", "", 0)


def test_stage_attribution() -> None:
    stacks = profile.parse_collapsed("\n".join(LINES))
    stages = [profile.stage_of(frames, source) for frames, _ in stacks]
    assert stages == [
        "TUN read",
        "encapsulate",
        "encapsulate",
        "send",
        "send",
        "TX loop",
        "recv",
        "decapsulate",
        "coalesce",
        "TUN write",
        "RX loop",
        profile.OTHER,
        profile.OTHER,
        "encapsulate",
        "decapsulate",
        "decapsulate",
    ]
    counts = profile.stage_samples(stacks, source)
    assert counts["encapsulate"] == 20 + 5 + 3
    assert counts["decapsulate"] == 12 + 2 + 2
    assert counts[profile.OTHER] == 8
    assert sum(counts.values()) == sum(n for _, n in stacks)
    assert list(counts) == [stage for stage, _ in profile.STAGES]


def test_without_source_a_c_call_counts_for_its_function() -> None:
    frames, _ = profile.parse_collapsed(LINES[0])[0]
    assert profile.stage_of(frames) == "TX loop"


def test_extra_rule() -> None:
    frames = [profile.Frame("Dataplane._tun_batch", LOOP, 300), profile.Frame("fast_path", "usertunnel/x.py", 1)]
    assert profile.stage_of(frames) == "TX loop"
    rules = (profile.Rule("send", function=r"^fast_path$"), *profile.RULES)
    assert profile.stage_of(frames, rules=rules) == "send"


def test_microseconds_from_samples() -> None:
    # 200 Hz for 5 s; 100 encapsulation samples = 0.5 CPU s over 5 s = 0.1 CPU s per s; at 10,000 packets/s, 10 µs.
    samples = dict.fromkeys((s for s, _ in profile.STAGES), 0)
    samples.update({"encapsulate": 100, "decapsulate": 50, profile.OTHER: 50})
    b = profile.Breakdown(processes=[profile.ProcessProfile(samples)], rate=200, seconds=5, tx_pps=10_000, rx_pps=5_000)
    assert b.cpu("encapsulate") == pytest.approx(0.1)
    assert b.us_per_packet("encapsulate") == pytest.approx(10.0)
    assert b.us_per_packet("decapsulate") == pytest.approx(0.05 / 5_000 * 1e6)  # 10 µs per received packet
    assert b.us_per_packet(profile.OTHER) is None
    assert b.us_per_packet_through(b.total_cpu) == pytest.approx(0.2 / 5_000 * 1e6)
    assert b.share("encapsulate") == pytest.approx(0.5)
    assert b.direction_total(profile.TX) == pytest.approx(10.0)
    assert b.coverage is None and b.proc_cpu is None


def test_microseconds_scaled_to_proc() -> None:
    # A: 300 samples (1.5 s of 5 s at 200 Hz = 0.3 CPU s/s) but /proc says 0.6 CPU s/s: each sample is worth twice
    # as much. B: 100 samples, /proc 0.1 CPU s/s (it was sampled waiting for a core: coverage above 100%).
    a = dict.fromkeys((s for s, _ in profile.STAGES), 0)
    a.update({"TUN read": 100, "send": 200})
    b_samples = dict.fromkeys((s for s, _ in profile.STAGES), 0)
    b_samples.update({"decapsulate": 100})
    b = profile.Breakdown(
        processes=[profile.ProcessProfile(a, 0.6), profile.ProcessProfile(b_samples, 0.1)],
        rate=200,
        seconds=5,
        tx_pps=20_000,
        rx_pps=20_000,
    )
    assert b.cpu("TUN read") == pytest.approx(0.2)
    assert b.cpu("send") == pytest.approx(0.4)
    assert b.cpu("decapsulate") == pytest.approx(0.1)
    assert b.total_cpu == pytest.approx(b.proc_cpu)
    assert b.us_per_packet("send") == pytest.approx(20.0)
    assert b.sampled_cpu == pytest.approx(0.4)
    assert b.coverage == pytest.approx(0.4 / 0.7)
    unscaled = profile.Breakdown(b.processes, rate=200, seconds=5, tx_pps=20_000, rx_pps=20_000, scale=False)
    assert unscaled.cpu("send") == pytest.approx(0.2)
    table = profile.table(b)
    assert "| send | 20.00 |  | 20.00 |" in table
    assert "57% of /proc" in table


def test_with_profile_keeps_the_rest_and_other_labels() -> None:
    old = "# report\n\n## Absolute\n\nrows\n\n## Ratios of medians\n\nratios\n\n## Issue 5 targets\n\n- x\n"
    one = profile.with_profile(old, "before", "### before\n\ntable 1")
    assert one.index("ratios") < one.index(profile.START) < one.index("## Issue 5 targets")
    assert one.replace(one[one.index(profile.START) : one.index(profile.END) + len(profile.END)], "").count("rows") == 1
    two = profile.with_profile(one, "after", "### after\n\ntable 2")
    three = profile.with_profile(two, "before", "### before\n\ntable 3")
    assert "table 1" not in three and "table 3" in three and "table 2" in three
    assert three.index("table 3") < three.index("table 2")
    assert three.count(profile.START) == 1 and three.count("## Issue 5 targets") == 1


def test_with_profile_after_bench_moved_the_block_to_history() -> None:
    old = "# report\n\n## Ratios of medians\n\nr\n\n## Issue 5 targets\n\n- x\n"
    first = profile.with_profile(old, "before", "### before\n\ntable 1")
    # What bench.py --write does: a new report on top, the old one (headings two levels down) under History.
    demoted = "\n".join("##" + line if line.startswith("#") else line for line in first.splitlines())
    moved = "# new report\n\n## Ratios of medians\n\nr2\n\n## History\n\n" + demoted + "\n"
    after = profile.with_profile(moved, "after", "### after\n\ntable 2")
    current = after[: after.index("## History")]
    assert "table 1" in current and "table 2" in current  # "before" carried over, headings as written
    assert "\n### before\n" in current
    assert "table 1" in after[after.index("## History") :]  # the history is left as it was


def test_with_profile_without_a_report() -> None:
    text = profile.with_profile("", "before", "### before\n\nt")
    assert text.startswith(profile.START)
