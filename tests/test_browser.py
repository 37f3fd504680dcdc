"""The pages in a real browser: Debian's headless Chromium loads each page explain --html writes (every
mode's packet, what else captures hold, malformed packets) and the drawing explain --svg writes; the DOM
it builds lists every field with explain's JSON value, and its screenshot, kept under ARTIFACTS, shows
the drawing (not a blank page).

Without Chromium these tests are skipped, except under USERTUNNEL_REQUIRE_NETNS=1 (CI), where they fail:
a page nobody opened could be broken. `bash scripts/install.sh` installs it.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import pytest
from test_pictures import (
    LAB_PACKETS,
    MALFORMED,
    MODE_WIRE,
    MORE_WIRE,
    PageDOM,
    _report,
    assert_lab_report,
    assert_page_shows,
)

from usertunnel.teach import describe, explain
from usertunnel.teach.picture import network, packet, page

# Screenshots are kept here after the run (pytest's tmp_path is not), one PNG per page.
ARTIFACTS = Path(tempfile.gettempdir()) / "usertunnel-browser-artifacts"
PHONE, DESKTOP = (412, 915), (1280, 1000)


def require_chromium() -> str:
    path = shutil.which("chromium")
    if path is not None:
        return path
    reason = "needs Debian's chromium for the headless browser tests (bash scripts/install.sh installs it)"
    if os.environ.get("USERTUNNEL_REQUIRE_NETNS") == "1":
        pytest.fail(f"USERTUNNEL_REQUIRE_NETNS=1 but {reason}")
    pytest.skip(reason)


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="ut-chromium-") as profile:
        argv = [require_chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}"]
        return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=120, check=True)


def dump_dom(path: Path) -> str:
    """The DOM Chromium builds from the file, serialized after loading it."""
    return _chromium("--dump-dom", path.resolve().as_uri()).stdout


def screenshot(path: Path, name: str, size: tuple[int, int] = PHONE) -> Path:
    """A screenshot of the page at `size` (a phone's width by default), kept as ARTIFACTS/NAME.png."""
    ARTIFACTS.mkdir(exist_ok=True)
    png = ARTIFACTS / f"{name}.png"
    png.unlink(missing_ok=True)
    _chromium("--hide-scrollbars", f"--window-size={size[0]},{size[1]}", f"--screenshot={png}", path.resolve().as_uri())
    assert png.exists(), f"no screenshot of {path}"
    return png


def png_rgb(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB rows of an 8-bit RGB or RGBA PNG (what Chromium writes), with zlib alone."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, idat, header = 8, b"", b""
    while at < len(data):
        (length,) = struct.unpack_from("!I", data, at)
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        at += 12 + length
    width, height, depth, colour = struct.unpack_from("!IIBB", header)
    assert depth == 8 and colour in (2, 6), (depth, colour)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, corner = previous[i], previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        previous = line
        rows.append(bytes(line[c] for c in range(stride) if c % bpp < 3))
    return width, height, rows


def assert_shows_the_drawing(png: Path, colour: str = packet.PALETTE[0]) -> None:
    """Not blank: many colours, much that is not white, and `colour` filling boxes (by default the first
    header's: the packet was drawn)."""
    width, height, rows = png_rgb(png.read_bytes())
    pixels = [row[i : i + 3] for row in rows[::2] for i in range(0, len(row), 6)]
    white = sum(1 for p in pixels if p == b"\xff\xff\xff")
    assert len(set(pixels)) >= 16, f"{png}: {len(set(pixels))} colours"
    assert white < 0.97 * len(pixels), f"{png}: {white} of {len(pixels)} sampled pixels white"
    fill = bytes.fromhex(colour[1:])
    assert sum(1 for p in pixels if p == fill) > 200, f"{png}: no box filled with {colour}"


def _check_page(tmp_path: Path, name: str, wires: list[bytes]) -> None:
    explanations = [explain.explain(w) for w in wires]
    html = tmp_path / f"{name}.html"
    html.write_text(page.explain_page([(describe.summary(e), e) for e in explanations], f"usertunnel explain: {name}"))
    assert_page_shows(PageDOM(dump_dom(html)), explanations)
    assert_shows_the_drawing(screenshot(html, f"explain-{name}"))


@pytest.mark.parametrize("mode", sorted(MODE_WIRE))
def test_chromium_shows_every_field_of_a_modes_packet_and_draws_it(mode: str, tmp_path: Path) -> None:
    _check_page(tmp_path, mode, [MODE_WIRE[mode]])


@pytest.mark.parametrize("group", ["captures", "malformed"])
def test_chromium_shows_erspan_nhrp_pptp_wccp_and_malformed_packets(group: str, tmp_path: Path) -> None:
    wires = MORE_WIRE if group == "captures" else MALFORMED
    _check_page(tmp_path, group, [wires[n] for n in sorted(wires)])


def test_chromium_draws_the_svg_and_the_page_at_a_desktops_width(tmp_path: Path) -> None:
    e = explain.explain(bytes.fromhex("".join(explain.EXAMPLE_HEX)))
    svg = tmp_path / "example.svg"
    svg.write_text(packet.svg([("the help's example", e)], "usertunnel explain"))
    assert_shows_the_drawing(screenshot(svg, "explain-example-svg", (packet.WIDTH, 1100)))
    html = tmp_path / "example.html"
    html.write_text(page.explain_page([("the help's example", e)], "usertunnel explain"))
    assert_shows_the_drawing(screenshot(html, "explain-example-desktop", DESKTOP))


def check_lab_report(path: Path, name: str, namespaces: list[str], transcript: str) -> None:
    """A lab's page as Chromium builds it: the topology, the journeys, every packet and every field of it as
    explain gives it, the transcript; its screenshot at a phone's width shows the drawings."""
    assert_lab_report(PageDOM(dump_dom(path)), namespaces, transcript)
    assert_shows_the_drawing(screenshot(path, name), network.FILLS["host"])  # the topology's hosts


def test_chromium_shows_a_lab_reports_topology_journeys_and_packets(tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    path.write_text(_report(LAB_PACKETS))
    check_lab_report(path, "lab-report-unit", ["ut-lab-a", "ut-lab-b"], "== a <lab> & more")
