"""What the numbers were measured on: CPU model, cores, threads, the flags that decide bf16 / INT8 speed, load.

The load average is recorded because the figures are wall-clock: other jobs on the same cores slow every
configuration, which distorts ratios less than absolute numbers but not zero.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from afrl.hardware import cpu_flags

# Flags that change which number type is fast: AMX / AVX512-BF16 (native bf16), VNNI (int8 dot products).
RELEVANT_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni")
PACKAGES = ("torch", "transformers", "onnxruntime", "onnx", "fastapi", "uvicorn", "httpx")


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def physical_cores(cpuinfo: str | Path = "/proc/cpuinfo") -> int | None:
    """Distinct (physical id, core id) pairs; None when /proc/cpuinfo does not say."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    cores, phys = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            phys = value.strip()
        elif key == "core id":
            cores.add((phys, value.strip()))
    return len(cores) or None


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def describe(threads: int) -> dict[str, Any]:
    """The machine section of the benchmark JSON."""
    flags = cpu_flags()
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "threads_used": threads,
        "cpu_flags": {f: f in flags for f in RELEVANT_FLAGS},
        "native_bf16": bool(flags & {"amx_bf16", "avx512_bf16"}),
        "memory_gib": memory_gib(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "versions": versions(),
    }
