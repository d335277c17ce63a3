#!/usr/bin/env bash
# Set everything up and run the main job on the embedded default model: score example pairs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
Q="how long is the flight from berlin to new york"
.venv/bin/afrl score --model default --query "$Q" \
    --document "A direct flight from Berlin to New York takes about 9 hours."
.venv/bin/afrl score --model default --query "$Q" \
    --document "Berlin is the capital and largest city of Germany."
