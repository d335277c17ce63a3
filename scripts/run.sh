#!/usr/bin/env bash
# Set everything up and run the main job: serve the embedded default model on 127.0.0.1:8000 (Ctrl-C stops it).
# Any `afrl serve` flag can be appended, e.g. `bash scripts/run.sh --port 9000`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/afrl serve --model default "$@"
