"""Pictures of what explain, lab and --trace say in words: SVG drawings and self-contained HTML pages.

Rules of this package:
- Pure: data in (a `describe.Explanation`, a `network.Network`, trace lines), text out. Nothing here reads
  a file, runs a command or looks at the clock, so the same input always draws the same bytes (the
  tutorial's pictures and their test rely on it).
- Standard library only. Every page is one file: inline SVG and CSS, no script, no font, no link to
  anything outside it. It reads without JavaScript; hovering and clicking (CSS :hover, :target) only
  highlight what belongs together.

The modules: `packet` draws a packet as RFC-style 32-bit rows; `page` puts packets, their hex dump and
their fields into HTML pages (explain --html, the lab's report); `network` draws a lab's topology;
`journey` draws the stages --trace reports as a sequence picture.
"""
