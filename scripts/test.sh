#!/usr/bin/env bash
# Set up, then lint (ruff), type-check (mypy) and run every test, slow ones included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy $(for p in afrl training export service bench loadtest; do [ -f "$p/__init__.py" ] && echo "$p"; done)
.venv/bin/python -m pytest "$@"
