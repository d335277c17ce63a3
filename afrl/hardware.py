"""What this machine can do fast: used to pick bf16 or fp32 for training and serving."""

from __future__ import annotations

from pathlib import Path


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
    return bool(cpu_flags(cpuinfo) & {"amx_bf16", "avx512_bf16"})


def bf16_is_fast() -> bool:
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    return cpu_has_native_bf16()
