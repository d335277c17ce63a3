"""What this machine can do fast: used to pick bf16 or fp32 for training and serving.

A CPU has *native* bf16 when /proc/cpuinfo lists `amx_bf16` (AMX, Intel Sapphire Rapids and later) or
`avx512_bf16` (AVX512-BF16, also on AMD EPYC from Zen 4 on, which has no AMX). Without either, torch emulates
bf16 matmuls, which was measured 2-2.5x slower than fp32 for a LoRA training step on the Xeon with AVX512-VNNI
only (`python -m training.probe_step`, training/README.md). The 2-core dev and CI machines here come in all three
kinds: a Sapphire Rapids-class Xeon with AMX, an AMD EPYC with AVX512-BF16 and no AMX, and that Xeon with neither.
bf16 speed on the first two has not been measured here.

Training (`training_precision`, used by every stage config built on TrainingArguments: SFT, distill, RL):

* CUDA: bf16 when the GPU supports it (`torch.cuda.is_bf16_supported()`), else fp32; `use_cpu` untouched.
* no CUDA (or `use_cpu` set), CPU with native bf16: bf16 *and* `use_cpu=True`. transformers' TrainingArguments
  reads bf16 without `use_cpu` as GPU bf16 and refuses it ("Your setup doesn't support bf16/gpu"); on a machine
  without an accelerator the run is on the CPU anyway, so `use_cpu=True` only says so.
* no CUDA (or `use_cpu` set), CPU without native bf16: fp32.
* another accelerator torch knows (MPS, XPU, ...), no CUDA: fp32, `use_cpu` untouched (not tried here).
* `fp16` set: never bf16 too.

An explicit `bf16` is kept; `bf16: true` without an accelerator gets `use_cpu=True` too (and a warning where bf16
is emulated), so a config written for GPUs still parses on a CPU-only machine for validation. The production
configs (training/configs/production/) leave bf16 unset and parse by the rules above.

Serving: the torch backend's `--dtype auto` decides by the device the model runs on
(`service.backends.torch_backend.resolve_dtype`): bf16 on a GPU with bf16, or on a CPU with native bf16, else
fp32. `bf16_is_fast` (CUDA first, then the CPU) is for processes that run wherever torch puts them (training
probes, distillation's `teacher_dtype: auto` for its dev report).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)

NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """AMX or AVX512-BF16. Without them torch emulates bf16 matmuls, measured 2-5x slower than fp32 here."""
    return bool(cpu_flags(cpuinfo) & NATIVE_BF16_FLAGS)


def bf16_is_fast() -> bool:
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    return cpu_has_native_bf16()


class TrainingPrecision(NamedTuple):
    """What to set on a TrainingArguments: `bf16` and `use_cpu`."""

    bf16: bool
    use_cpu: bool


def _other_accelerator() -> bool:
    """An accelerator other than CUDA that TrainingArguments would train on (MPS, XPU, ...)."""
    import torch

    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    return accelerator is not None and accelerator.type != "cuda"


def training_precision(bf16: bool | None, use_cpu: bool, fp16: bool = False) -> TrainingPrecision:
    """The `bf16` / `use_cpu` pair for a training run: `bf16` None picks it (module docstring), True / False keep it.

    The result always passes transformers' TrainingArguments precision check.
    """
    import torch

    on_cuda = not use_cpu and torch.cuda.is_available()
    on_cpu = use_cpu or (not on_cuda and not _other_accelerator())
    if bf16 is None:
        if fp16:
            bf16 = False
        elif on_cuda:
            bf16 = bool(torch.cuda.is_bf16_supported())
        else:
            bf16 = on_cpu and cpu_has_native_bf16()
    elif bf16 and on_cpu and not cpu_has_native_bf16():
        log.warning(
            "bf16 is set but there is no GPU and this CPU has no AMX / AVX512-BF16: torch emulates bf16 here, "
            "which is slower than fp32; set bf16 false (or leave it unset) to train on this CPU"
        )
    return TrainingPrecision(bf16=bf16, use_cpu=use_cpu or (bf16 and on_cpu))
