"""`afrl serve` (service/cli.py's `run`, as the console script calls it) over the tiny test model, for tests that
need a real server process: SIGTERM only reaches uvicorn's handlers in a process's main thread.

The backend is service_helpers.GatedBackend with its gate open, so explanations stream until stopped. Settings
come from AFRL_* variables like any `afrl serve`; the only argument is the port.
Run: PYTHONPATH=. python tests/service/serve_tiny.py PORT
"""

from __future__ import annotations

import argparse
import sys

import torch
from service_helpers import GatedBackend, make_backend

import service.app
from afrl.testing import build_tiny_model
from service.cli import run


def main() -> int:
    torch.set_num_threads(1)
    model, tok = build_tiny_model("qwen3")
    backend = GatedBackend(make_backend(model, tok))
    backend.gate.set()
    create_app = service.app.create_app
    # cli.run imports create_app from service.app when called: this hands it the tiny backend instead of a load.
    service.app.create_app = lambda settings=None, _backend=None: create_app(settings, backend)
    return run(argparse.Namespace(host="127.0.0.1", port=sys.argv[1]))


if __name__ == "__main__":
    sys.exit(main())
