"""`afrl serve`: run the HTTP service with uvicorn. Every flag is also an environment variable (AFRL_*).

afrl serve --model default                      # the embedded default, torch, 127.0.0.1:8000
afrl serve --model exports/student --backend onnx --port 9000
AFRL_API_KEY=secret AFRL_MAX_BATCH_PAIRS=64 afrl serve
"""

from __future__ import annotations

import argparse
from typing import Any

# Flags that the command line offers; the rest of the settings are environment variables only.
_FLAGS = {
    "model": "`default`, a model folder or cached hub id; with --backend onnx an export folder",
    "backend": "torch, onnx, or auto (the fastest for this machine: service/backend_choice.py)",
    "host": "bind address",
    "port": "bind port",
    "device": "torch: auto (cuda when torch sees a GPU), cpu or cuda",
    "dtype": "torch weights: auto, bf16 or fp32",
    "threads": "intra-op threads",
    "onnx_providers": "onnxruntime providers: cpu, cuda or tensorrt",
    "max_batch_pairs": "most pairs per forward pass",
    "max_wait_ms": "batching window",
}


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve /score, /rerank, /explain over HTTP",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, help_text in _FLAGS.items():
        env = "AFRL_" + name.upper()
        p.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=f"{help_text} (env {env})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from afrl.lean_imports import keep_torch_out
    from service.app import create_app
    from service.backend_choice import serves_onnx_only
    from service.logs import configure_logging
    from service.server import serve
    from service.settings import Settings

    overrides = {k: getattr(args, k) for k in _FLAGS if getattr(args, k, None) is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        # Refuse bad settings at start, naming each field (flag or AFRL_ variable) and why.
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg']}" for err in e.errors())
        raise ValueError(f"invalid settings: {problems}") from None
    configure_logging(settings.log_json, settings.log_level)
    if serves_onnx_only(settings):
        keep_torch_out()  # about 200 MB of RSS that an onnxruntime-only server never uses (afrl/lean_imports.py)
    # service/server.py: the SIGTERM drain (AFRL_DRAIN_TIMEOUT_S) and the request-head timeout.
    started = serve(create_app(settings), settings)
    return 0 if started else 3  # 3: uvicorn's exit status for a failed start
