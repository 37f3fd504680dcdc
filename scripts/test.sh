#!/usr/bin/env bash
# The tests: install what is missing, then lint (ruff), type-check (mypy --strict) and run pytest.
# Namespace tests need root; under USERTUNNEL_REQUIRE_NETNS=1 they fail instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check usertunnel tests benchmarks scripts
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
