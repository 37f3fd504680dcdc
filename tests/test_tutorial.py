"""The tutorial's examples stay true: rebuilding docs/tutorial.md gives the same text, but for what varies.

Only what truly changes from one run to the next is set aside, each by name
(`VARYING`): round-trip times, IP identifications and the checksums that cover
them, ping's echo identifier and timestamp, process ids, a hub's idle times,
keepalive counts after a wall-clock wait, and the ports a NAT picks at random. Everything else must be what the
committed tutorial shows, every number included: packet counts, MTUs, flags,
TTLs, counters, every table row.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_netns

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "docs" / "tutorial.md"

# `usertunnel explain` rows whose bytes and value change with each run: the IPv4 identification (ours is a
# per-process random start, the ping's the sending kernel's), the header checksums that cover it, the GRE and
# ICMP checksums (over the ICMP identifier and timestamp), ping's echo identifier (its process) and data (the
# time of sending). A row reads: offset, bits (optional), bytes, field, value, source, meaning.
EXPLAIN_ROW = re.compile(
    r"^(?P<at>\s+\d+\s+(?:\d+(?:-\d+)?\s+)?)(?P<bytes>[0-9a-f]+(?:\.\.)?)(?P<gap>\s+)"
    r"(?P<field>identification|header checksum|checksum|identifier|data)(?P<rest>\s.*)$"
)
EXPLAIN_VALUE = {
    "identification": (re.compile(r"\d+ \(0x[0-9a-f]{4}\)"), "<IP identification>"),
    "header checksum": (re.compile(r"0x[0-9a-f]{4}"), "<IPv4 header checksum>"),
    "checksum": (re.compile(r"0x[0-9a-f]{4}"), "<GRE or ICMP checksum>"),
    "identifier": (re.compile(r"\d+ \(0x[0-9a-f]{4}\)"), "<ICMP echo identifier>"),
    "data": (re.compile(r"[0-9a-f]+\.\.\. \|.*\|$"), "<ICMP echo data: ping's timestamp>"),
}
# Everything else that varies, named; each pattern matches the value (`v`) with its context, so that the same
# number elsewhere is still compared.
VARYING = [
    ("ping round-trip time", re.compile(r"time=(?P<v>\d+(?:\.\d+)? ms)")),
    ("ping's total time", re.compile(r"packet loss, time (?P<v>\d+ms)")),
    ("ping's rtt statistics", re.compile(r"rtt min/avg/max/mdev = (?P<v>[\d./]+ ms)")),
    ("IP identification (--trace)", re.compile(r"DF (?:set|clear) \(.*\), id (?P<v>0x[0-9a-f]{4})$")),
    ("GRE checksum (--trace)", re.compile(r"GRE header \(\d+ bytes\): C=1 .*, csum (?P<v>0x[0-9a-f]{4})")),
    ("process id", re.compile(r"usertunnel: pid (?P<v>\d+)")),
    ("hub neighbor's idle time", re.compile(r"\(learned, idle (?P<v>\d+(?:\.\d+)?s)\)")),
    ("keepalive counts after a wall-clock wait",
     re.compile(r": line protocol (?:up|down) (?P<v>\(sent \d+, replies \d+, unanswered \d+\))")),
    # Linux's NAT keeps a source port if it can, else picks one at random (nf_nat_l4proto_unique_tuple):
    # `lab nat --encap` says so after each such port, and only there is it set aside.
    ("a port the NAT chose", re.compile(r"port (?P<v>\d+) \(the NAT's choice\)")),
]  # fmt: skip


def normalized(text: str) -> list[str]:
    """The tutorial's lines with each varying field replaced by its name, and runs of spaces (column alignment
    around those fields) made one."""
    out = []
    for line in text.splitlines():
        row = EXPLAIN_ROW.match(line)
        if row is not None:
            pattern, name = EXPLAIN_VALUE[row["field"]]
            rest = pattern.sub(name, row["rest"], count=1)
            line = f"{row['at']}<bytes of the {row['field']}>{row['gap']}{row['field']}{rest}"
        for name, pattern in VARYING:
            found = pattern.search(line)
            if found is not None:
                line = f"{line[: found.start('v')]}<{name}>{line[found.end('v') :]}"
        out.append(" ".join(line.split()))
    return out


def _first(pattern: str, text: str) -> str:
    """The first match of `pattern` in `text`: the run-to-run values of whatever run wrote the tutorial."""
    found = re.search(pattern, text, re.M)
    assert found is not None, pattern
    return found.group(0)


def test_the_normaliser_sets_aside_only_the_named_fields() -> None:
    committed = TUTORIAL.read_text()
    ident = re.search(r"^  4\s+([0-9a-f]{4})\s+identification\s+(\d+ \(0x\1\))", committed, re.M)
    assert ident is not None
    row = ident.group(0).replace(ident[2], "11132 (0x2b7c)").replace(ident[1], "2b7c", 1)
    varied = (
        committed.replace(_first(r"time=\d+\.\d+ ms", committed), "time=12.5 ms")
        .replace(_first(r", id 0x[0-9a-f]{4}$", committed), ", id 0x10cc")
        .replace(_first(r"pid \d+", committed), "pid 18998")
        .replace(ident.group(0), row)
        .replace(_first(r"\(sent \d+, replies \d+, unanswered 0\)", committed), "(sent 99, replies 98, unanswered 0)")
        .replace(_first(r"idle \d+(?:\.\d+)?s", committed), "idle 12.7s")
        .replace(_first(r"port \d+ \(the NAT's choice\)", committed), "port 12345 (the NAT's choice)")
    )
    assert varied != committed
    assert varied.count("11132 (0x2b7c)") == 1 and "idle 12.7s" in varied and ", id 0x10cc" in varied
    assert "port 12345 (the NAT's choice)" in varied
    assert normalized(varied) == normalized(committed)


CHANGES = [
    ("a packet count", "3 packets transmitted, 3 received, 0% packet loss", "3 packets transmitted, 2 received, 33% packet loss"),  # noqa: E501
    ("a lost ping", "icmp_seq=3 ttl=64", "icmp_seq=4 ttl=64"),
    ("an MTU", "pmtudisc mtu 1472", "pmtudisc mtu 1500"),
    ("the MTU of a device", "tun0: <NO-CARRIER,POINTOPOINT,MULTICAST,NOARP,UP> mtu 1476", "tun0: <NO-CARRIER,POINTOPOINT,MULTICAST,NOARP,UP> mtu 1500"),  # noqa: E501
    ("a GRE flag", "C=1 K=1 S=1, ver 0", "C=0 K=1 S=1, ver 0"),
    ("a TTL", "ttl 64 (inherited from the inner packet)", "ttl 255 (inherited from the inner packet)"),
    ("a counter", '"rx_bytes": 84, "rx_packets": 1', '"rx_bytes": 84, "rx_packets": 2'),
    ("a drop count", "the POP's drops: no_tunnel 4", "the POP's drops: no_tunnel 0"),
    ("a table row", "| ipip | IPv4 in IPv4 (RFC 2003) |", "| ipip | IPv6 in IPv4 (RFC 2003) |"),
    ("an explained field", "  20      2      b0          K                        1 ", "  20      2      90          K                        0 "),  # noqa: E501
    ("a sequence number", "sequence: 0, last accepted none yet: accepted", "sequence: 1, last accepted none yet: accepted"),  # noqa: E501
    ("a line protocol state", "line protocol down (sent", "line protocol up (sent"),
    ("a keepalive period", "keepalive 1,2: line protocol up", "keepalive 1,3: line protocol up"),
    ("a hub's learned host", "s): 203.0.113.2\n", "s): 203.0.113.3\n"),
    ("a GRE checksum's presence", "GRE (checksum, key 1234, seq 0)", "GRE (key 1234, seq 0)"),
    ("a port the NAT kept", "198.51.100.66 port 6000 -> 198.51.100.12 port 6000", "198.51.100.66 port 6000 -> 198.51.100.12 port 6001"),  # noqa: E501
    ("a hub's neighbor moved", "(learned 2, moved 2, expired 0)", "(learned 2, moved 1, expired 0)"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "old", "new"), CHANGES, ids=[c[0] for c in CHANGES])
def test_a_tutorial_with_one_number_or_flag_changed_differs(what: str, old: str, new: str) -> None:
    committed = TUTORIAL.read_text()
    assert old in committed, f"{what}: {old!r} is no longer in docs/tutorial.md"
    changed = committed.replace(old, new, 1)
    assert normalized(changed) != normalized(committed), f"{what} changed and the comparison did not see it"


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
    committed = normalized(TUTORIAL.read_text())
    rebuilt = normalized(fresh.read_text())
    stale = [f"- {a}\n+ {b}" for a, b in zip(committed, rebuilt, strict=False) if a != b]
    assert rebuilt == committed, "docs/tutorial.md is stale: run `python3 scripts/tutorial.py` and commit it\n" + (
        "\n".join(stale[:10])
    )
