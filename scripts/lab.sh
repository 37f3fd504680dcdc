#!/usr/bin/env bash
# The main job: install what is missing, then run `usertunnel lab` (two namespaces, a GRE tunnel
# with key 1234 between them, pings through it, every packet shown, everything removed after).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/usertunnel lab "$@"
