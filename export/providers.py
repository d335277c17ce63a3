"""onnxruntime execution-provider settings for the service: CPU, CUDA, and TensorRT (fp16, engine cache, shapes).

onnxruntime silently falls back to the next provider in the list when one cannot be created, so callers that
need a GPU should check `session.get_providers()` (see `require_providers`). TensorRT engines are built per shape
profile; the profiles below bound the scorer's (batch, sequence) and are written as TensorRT expects
("input_ids:1x1,attention_mask:1x1"). The decoder's KV-cache inputs change length every step: give it "cuda".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
# (batch, sequence) at the minimum, optimum and maximum of the TensorRT profile for the scorer's two inputs.
DEFAULT_PROFILES: dict[str, tuple[int, int]] = {"min": (1, 1), "opt": (16, 256), "max": (64, 1024)}
DEFAULT_TRT_CACHE = Path("~/.cache/afrl/trt-engines")
SCORER_INPUTS = ("input_ids", "attention_mask")


def _shape_spec(batch: int, seq: int, inputs: Sequence[str]) -> str:
    return ",".join(f"{name}:{batch}x{seq}" for name in inputs)


def provider_list(
    name: str,
    cache_dir: str | Path = DEFAULT_TRT_CACHE,
    fp16: bool = True,
    profiles: dict[str, tuple[int, int]] | None = None,
    device_id: int = 0,
    inputs: Sequence[str] = SCORER_INPUTS,
) -> list[Any]:
    """onnxruntime `providers=` for "cpu", "cuda" or "tensorrt", each ending in the providers it falls back to."""
    key = name.lower()
    if key not in PROVIDER_NAMES:
        raise ValueError(f"unknown execution provider {name!r}; choose one of {', '.join(PROVIDER_NAMES)}")
    cpu: list[Any] = ["CPUExecutionProvider"]
    if key == "cpu":
        return cpu
    cuda: list[Any] = [
        (
            "CUDAExecutionProvider",
            {
                "device_id": device_id,
                # grow the arena only by what is asked: prompts vary in length and a doubling arena wastes GiBs
                "arena_extend_strategy": "kSameAsRequested",
                "cudnn_conv_algo_search": "HEURISTIC",
                "do_copy_in_default_stream": True,
            },
        )
    ]
    if key == "cuda":
        return cuda + cpu
    shapes = {**DEFAULT_PROFILES, **(profiles or {})}
    for which, (batch, seq) in shapes.items():
        if batch < 1 or seq < 1:
            raise ValueError(f"TensorRT profile {which} must have positive batch and sequence, got {(batch, seq)}")
    if not all(lo <= mid <= hi for lo, mid, hi in zip(shapes["min"], shapes["opt"], shapes["max"], strict=True)):
        raise ValueError(f"TensorRT profiles must satisfy min <= opt <= max, got {shapes}")
    cache = Path(cache_dir).expanduser()
    trt = (
        "TensorrtExecutionProvider",
        {
            "device_id": device_id,
            "trt_fp16_enable": bool(fp16),
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
            "trt_profile_min_shapes": _shape_spec(*shapes["min"], inputs),
            "trt_profile_opt_shapes": _shape_spec(*shapes["opt"], inputs),
            "trt_profile_max_shapes": _shape_spec(*shapes["max"], inputs),
        },
    )
    return [trt, *cuda, *cpu]


def provider_names(providers: Sequence[Any]) -> list[str]:
    return [p if isinstance(p, str) else p[0] for p in providers]


def require_providers(session: Any, providers: Sequence[Any]) -> None:
    """Refuse a session on which onnxruntime silently dropped the first requested provider."""
    wanted = provider_names(providers)[0]
    active = session.get_providers()
    if wanted not in active:
        raise RuntimeError(
            f"{wanted} was requested but onnxruntime created the session with {active}. Install onnxruntime-gpu "
            "(never together with onnxruntime), and check the CUDA / TensorRT libraries and the GPU driver."
        )
