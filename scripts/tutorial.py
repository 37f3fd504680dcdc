#!/usr/bin/env python3
"""Build docs/tutorial.md from docs/tutorial.src.md by running every example in it.

The source is Markdown with directives in HTML comments; each is replaced by what
it produced, so no output in the tutorial is typed by hand:

  <!-- tunnels: ARGS -->     start `usertunnel up ARGS` on two hosts (namespaces ut-tut-a and
                             ut-tut-b on 198.51.100.0/24, inner 203.0.113.1/30 and .2/30),
                             each pointing at the other; host A also writes {tmp}/a.pcapng
  <!-- daemons -->           the same two hosts, each running `usertunnel daemon` with no tunnel yet
  <!-- ping -->              ping host B's inner address from host A, three times
  <!-- run: CMD -->          run CMD on this machine and show it with its output
  <!-- run on A: CMD -->     run CMD on host A (inside ut-tut-a); `run on B` likewise
  <!-- stop B -->            stop host B's tunnel (its peer goes away)
  <!-- start B -->           start host B's tunnel again, as it was
  <!-- wait: SECONDS -->     let time pass (keepalive timers), shown as a comment
  <!-- stop -->              stop both tunnels and remove the hosts
  <!-- picture: FILE: FROM --> draw a picture into pictures/FILE (next to the output) and show it, from
                             `usertunnel ... --svg ...` (a command that prints SVG, shown too), from
                             `topology of PATH` (the topology a `lab --html PATH` run drew), or from
                             `journey out` / `journey in` (explain's example packet sent by host A and
                             received by host B, drawn from the lines --trace writes for it)

A CMD may end in `| grep REGEX` or `| head N` (applied in Python, in order), and
may use {tmp} and {echo_index} (the index in host A's pcap of the first echo
request that crossed the underlay). Run as root: `python3 scripts/tutorial.py`
(`--output FILE` writes elsewhere, its pictures in a pictures/ folder beside it;
tests/test_tutorial.py rebuilds it and compares). Every picture is drawn from
what does not change from run to run, so that rebuilding gives the same files.
"""

from __future__ import annotations

import argparse
import html
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from usertunnel.core.encap import Demux, Tunnel
from usertunnel.core.params import Mode, TunnelParams
from usertunnel.io import netns
from usertunnel.teach import explain, trace
from usertunnel.teach.picture import journey

ROOT = Path(__file__).resolve().parent.parent
SOURCE, TARGET = ROOT / "docs" / "tutorial.src.md", ROOT / "docs" / "tutorial.md"
NS_A, NS_B = "ut-tut-a", "ut-tut-b"
PICTURES = "pictures"  # the folder beside the tutorial that holds its pictures
DIRECTIVE = re.compile(
    r"<!-- (tunnels|daemons|ping|run|run on A|run on B|stop B|start B|stop|wait|picture)(?::\s*(.*?))? -->"
)


def example_journeys() -> dict[str, str]:
    """The journey of `usertunnel explain --help`'s example packet (what usertunnel sends with --key 1234
    --seq --csum): out of host A and into host B, drawn from the lines --trace writes for it. The core
    builds the packet the same way every time, so the pictures are the same every time."""
    ends = []
    for local, remote in ((b"\xc6\x33\x64\x01", b"\xc6\x33\x64\x02"), (b"\xc6\x33\x64\x02", b"\xc6\x33\x64\x01")):
        flags = {"ikey": 1234, "okey": 1234, "iseq": True, "oseq": True, "icsum": True, "ocsum": True}
        ends.append(Tunnel(TunnelParams(name="tun0", mode=Mode.GRE, local=local, remote=remote, **flags)))
    inner = bytes.fromhex("".join(explain.EXAMPLE_HEX))[36:]
    header = ends[0].encapsulate_header(inner)
    wire = ends[0].encapsulate(inner)
    assert isinstance(header, bytes) and isinstance(wire, bytes)
    demux = Demux()
    demux.add(ends[1])
    lines = trace.describe_tx(ends[0], inner, header)
    lines += trace.describe_rx(wire, trace.rx_context(demux, wire), demux.decapsulate(wire))
    (_, out), (_, back) = trace.journeys(lines)
    return {
        "journey out": journey.drawing("tx", out, "host A sends explain's example packet (--trace's stages)"),
        "journey in": journey.drawing("rx", back, "host B receives it (--trace's stages)"),
    }


def _standalone(svg: str) -> str:
    """An inline <svg> element as an SVG file."""
    head = '<?xml version="1.0" encoding="UTF-8"?>\n'
    return svg if svg.startswith("<?xml") else head + svg.strip() + "\n"


def _title(svg: str) -> str:
    found = re.search(r'aria-label="([^"]*)"', svg) or re.search(r"<title>([^<]*)</title>", svg)
    return html.unescape(found.group(1)) if found else "picture"


class Session:
    def __init__(self, tmp: Path, pictures: Path) -> None:
        self.tmp = tmp
        self.pictures = pictures
        self.ends: list[netns.UpProcess] = []
        self.b_args: list[str] = []

    def hosts(self) -> None:
        self.stop()
        for name in (NS_A, NS_B):
            netns.create(name, ipv6=False)
        netns.veth(NS_A, "tut-a", NS_B, "tut-b", "198.51.100.1", "198.51.100.2", 24)

    def daemons(self) -> str:
        self.hosts()
        for ns in (NS_A, NS_B):
            end = netns.UpProcess(ns, [], command="daemon")
            self.ends.append(end)
            end.wait_ready()
        return "```\n# on host A and on host B\n$ usertunnel daemon &\n```\n"

    def tunnels(self, args: str) -> str:
        self.hosts()
        words = shlex.split(args)
        for ns, local, remote, inner, extra in (
            (NS_A, "198.51.100.1", "198.51.100.2", "203.0.113.1", ["--pcap", str(self.tmp / "a.pcapng")]),
            (NS_B, "198.51.100.2", "198.51.100.1", "203.0.113.2", []),
        ):
            args = ["--local", local, "--remote", remote, "--name", "tun0", "--address", f"{inner}/30", *words, *extra]
            end = netns.UpProcess(ns, args)
            self.ends.append(end)
            end.wait_ready()
            self.b_args = args
        shown = " ".join(["usertunnel up --local 198.51.100.1 --remote 198.51.100.2 --name tun0",
                          "--address 203.0.113.1/30", *words])  # fmt: skip
        return f"```\n# host A (host B the same, with the addresses swapped)\n$ {shown}\n```\n"

    def ping(self) -> str:
        done = netns.run(NS_A, ["ping", "-c", "3", "-i", "0.2", "203.0.113.2"], timeout=30)
        time.sleep(0.3)
        return self._block("ping -c 3 -i 0.2 203.0.113.2", done.stdout.decode(), "host A")

    def run(self, command: str, namespace: str | None = None) -> str:
        command, filters = _split_filters(command.format(tmp=self.tmp, echo_index=self._echo_index()))
        argv = shlex.split(command)
        if argv[0] == "usertunnel":
            argv = [sys.executable, "-m", "usertunnel", *argv[1:]]
        if namespace is None:
            done = subprocess.run(argv, capture_output=True, timeout=120)
        else:
            done = netns.run(namespace, argv, timeout=120)
        out = (done.stdout + done.stderr).decode(errors="replace").replace(str(self.tmp), "/tmp")
        for kind, value in filters:
            lines = out.splitlines()
            lines = [line for line in lines if re.search(value, line)] if kind == "grep" else lines[: int(value)]
            out = "\n".join(lines) + "\n"
        shown = command.replace(str(self.tmp), "/tmp") + ("    # (excerpt)" if filters else "")
        return self._block(shown, out, {NS_A: "host A", NS_B: "host B"}.get(namespace or ""))

    def _echo_index(self) -> int:
        pcap = self.tmp / "a.pcapng"
        if not pcap.exists():
            return 0
        from scapy.utils import RawPcapNgReader

        for index, (data, meta) in enumerate(RawPcapNgReader(str(pcap))):
            if meta.ifname == b"underlay" and len(data) > 40 and data[9] == 47 and b"\x08\x00" in data[20:40]:
                return index
        return 0

    def picture(self, arg: str) -> str:
        """Draw pictures/FILE from FROM (see the module's docstring) and show it as a Markdown image."""
        name, _, source = arg.partition(": ")
        source = source.strip().format(tmp=self.tmp)
        shown = ""
        if source.startswith("usertunnel "):
            argv = [sys.executable, "-m", "usertunnel", *shlex.split(source)[1:]]
            svg = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True).stdout
            shown = f"```\n$ {source} > {PICTURES}/{name}\n```\n\n"
        elif source.startswith("topology of "):
            page = Path(source.removeprefix("topology of ")).read_text()
            found = re.search(r'<svg [^>]*class="topology".*?</svg>', page, re.S)
            if found is None:
                raise SystemExit(f"tutorial: no topology in {source!r}")
            svg = found.group(0)
        elif source in ("journey out", "journey in"):
            svg = example_journeys()[source]
        else:
            raise SystemExit(f"tutorial: unknown picture source {source!r}")
        self.pictures.mkdir(parents=True, exist_ok=True)
        (self.pictures / name).write_text(_standalone(svg))
        return f"{shown}![{_title(svg)}]({PICTURES}/{name})\n"

    @staticmethod
    def _block(command: str, output: str, where: str | None) -> str:
        prompt = f"{where} $ " if where else "$ "
        shown = output.rstrip()
        return f"```\n{prompt}{command}\n{shown}\n```\n" if shown else f"```\n{prompt}{command}\n```\n"

    def stop_b(self) -> str:
        self.ends.pop().stop()
        return "```\n# host B's tunnel stopped\n```\n"

    def start_b(self) -> str:
        end = netns.UpProcess(NS_B, self.b_args)
        self.ends.append(end)
        end.wait_ready()
        return "```\n# host B's tunnel started again\n```\n"

    @staticmethod
    def wait(seconds: str) -> str:
        time.sleep(float(seconds))
        return f"```\n# ... {seconds} seconds later\n```\n"

    def stop(self) -> str:
        for end in self.ends:
            end.stop()
        self.ends.clear()
        for name in (NS_A, NS_B):
            netns.remove(name)
        return ""


def _split_filters(command: str) -> tuple[str, list[tuple[str, str]]]:
    parts = command.split(" | ")
    filters = []
    for part in parts[1:]:
        kind, _, value = part.partition(" ")
        if kind not in ("grep", "head"):
            raise SystemExit(f"tutorial: unknown filter {part!r}")
        filters.append((kind, value.strip()))
    return parts[0], filters


def build(pictures: Path = TARGET.parent / PICTURES) -> str:
    text = SOURCE.read_text()
    with tempfile.TemporaryDirectory(prefix="ut-tutorial-") as tmp:
        session = Session(Path(tmp), pictures)
        try:
            out, pos = [], 0
            for m in DIRECTIVE.finditer(text):
                out.append(text[pos : m.start()])
                kind, arg = m.group(1), (m.group(2) or "").strip()
                if kind == "tunnels":
                    out.append(session.tunnels(arg))
                elif kind == "ping":
                    out.append(session.ping())
                elif kind == "run":
                    out.append(session.run(arg))
                elif kind == "run on A":
                    out.append(session.run(arg, NS_A))
                elif kind == "run on B":
                    out.append(session.run(arg, NS_B))
                elif kind == "daemons":
                    out.append(session.daemons())
                elif kind == "stop B":
                    out.append(session.stop_b())
                elif kind == "start B":
                    out.append(session.start_b())
                elif kind == "wait":
                    out.append(session.wait(arg))
                elif kind == "picture":
                    out.append(session.picture(arg))
                else:
                    out.append(session.stop())
                pos = m.end()
            out.append(text[pos:])
        finally:
            session.stop()
    header = "<!-- Generated by scripts/tutorial.py from docs/tutorial.src.md: edit that, not this. -->\n"
    return header + "".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=TARGET)
    args = parser.parse_args()
    args.output.write_text(build(args.output.parent / PICTURES))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
