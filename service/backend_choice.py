"""`--backend auto`: the fastest backend for this machine and model, decided once at start, reported in /info.

The rules, in order (figures: `afrl bench`, bench/results/default_student_service_lean.md, default student, batch
32 on a 2-core AMD EPYC with AVX512-BF16: torch bf16 2.06x torch fp32, INT8 ONNX 2.28x, ONNX fp32 1.16x):
1. `--model` is an `afrl export` folder: onnx (there is nothing else to run).
2. torch sees a GPU and `--device` is not cpu: torch on CUDA (service/backends/cuda.py). torch is only asked where
   a GPU's device files exist (`gpu_device_present`): on a machine without them no CUDA or ROCm device can work,
   and importing torch to learn that would cost an ONNX server about 230 MB of RSS.
3. the CPU has native bf16 (AMX or AVX512-BF16): torch in bf16. It is within noise of INT8 ONNX there, and keeps
   prefix reuse, /explain and exact torch numbers.
4. otherwise (bf16 would be emulated, 2-5x slower than fp32): the model's INT8 ONNX scorer, exported once into
   the AFRL cache (`afrl export` code, the INT8 accuracy gate enforced: a model whose INT8 grades move too far
   keeps fp32, and is then served by torch fp32, since ONNX fp32 is barely faster). An export without an
   explanation decoder (a prefix LM's) explains with the torch model, loaded on the first /explain only.

The INT8 weights are quantised per channel. For the shipped default student, per-tensor INT8 fails the gate
(`afrl export --model default --int8 --out DIR`: grade agreement 0.906 on the 32 check pairs, below 0.95) and
per-channel passes it (`... --int8 --int8-per-channel`: 0.969, largest score change 0.021), and the two ran at
the same speed in a by-hand timing here. The export is keyed by the model's files (sizes and times) and reused
while they are unchanged (`export.cache`); the first start on such a machine pays for it (about 20 s for the
default student on this 2-core machine).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from glob import glob
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger(__name__)

REFUSED = "int8-refused.txt"  # beside an export whose INT8 scorer failed the gate: why
# Device files a GPU runtime needs: NVIDIA's driver, WSL's GPU paravirtualisation, AMD ROCm's compute driver.
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia[0-9]*", "/dev/dxg", "/dev/kfd")


@dataclass(frozen=True)
class Choice:
    backend: str  # "torch" or "onnx"
    model: str  # what that backend loads: the model spec, or an export folder
    reason: str  # one sentence, shown in /info (`runtime.chosen`) and logged
    explain_with: str | None = None  # a torch model spec that explains for a scorer-only export


def is_export_folder(spec: str) -> bool:
    from export.runtime import SCORER_FILES

    folder = Path(spec).expanduser()
    return folder.is_dir() and (folder / SCORER_FILES["fp32"]).is_file()


def gpu_device_present() -> bool:
    """Whether any GPU device file exists (GPU_DEVICE_FILES): without one, torch cannot see a GPU."""
    return any(glob(pattern) for pattern in GPU_DEVICE_FILES)


def serves_onnx_only(settings: Settings) -> bool:
    """Whether this process will only ever run onnxruntime: `--backend onnx`, or auto whose choice is onnx and can be
    made without torch and without exporting (rule 1, an export folder; or rule 4 once its INT8 export is built,
    passed its gate and has its own explanation decoder: every start after the first, on a CPU without native
    bf16). Then `afrl serve` keeps torch out of it (afrl/lean_imports.py)."""
    if settings.backend != "auto":
        return settings.backend == "onnx"
    try:
        choice = _choose(settings, build=False)
    except Exception:  # e.g. a model that is not there: the load says what is wrong, with its own message
        return False
    return choice is not None and choice.backend == "onnx" and choice.explain_with is None


def choose(settings: Settings) -> Choice:
    """Apply the rules of the module docstring to `settings` (whose backend is "auto")."""
    choice = _choose(settings, build=True)
    assert choice is not None  # building, every rule decides
    return choice


def _choose(settings: Settings, build: bool) -> Choice | None:
    """The rules; with `build` False, None where deciding needs torch (GPU device files exist) or an export that is
    not built yet, so that nothing is imported or exported."""
    spec = settings.model
    if is_export_folder(spec):  # before importing torch: an ONNX-only process may run without it
        return Choice("onnx", spec, "an `afrl export` folder: onnxruntime")
    from afrl.hardware import cpu_has_native_bf16

    if settings.device != "cpu" and gpu_device_present():
        if not build:
            return None  # only torch can tell whether it sees the GPU
        import torch

        if torch.cuda.is_available():
            return Choice("torch", spec, "torch sees a GPU: torch on CUDA")
    if cpu_has_native_bf16():
        return Choice("torch", spec, "this CPU has native bf16 (AMX or AVX512-BF16): torch in bf16")
    found = int8_export(spec, settings.threads) if build else cached_int8_export(*int8_export_folder(spec))
    if found is None:
        return None
    folder, refusal = found
    if refusal is not None:
        return Choice("torch", spec, f"no native bf16, and INT8 failed its accuracy gate ({refusal}): torch fp32")
    from afrl.manifest import Manifest

    manifest = Manifest.read(folder)
    gate = manifest.parity.get("int8", {})
    decoder = "decoder" in manifest.extra
    return Choice(
        "onnx",
        str(folder),
        f"no native bf16 on this CPU: the INT8 ONNX scorer (gate: agreement {gate.get('grade_agreement')}), "
        f"exported to {folder}" + ("" if decoder else "; /explain uses the torch model, loaded on first use"),
        explain_with=None if decoder else spec,
    )


def int8_export_folder(spec: str) -> tuple[Path, dict[str, Any]]:
    """(folder, stamp) of the model's `--backend auto` export under the AFRL cache; the stamp is keyed by the
    model's files, so a changed model gets a new folder."""
    from afrl.models import cache_dir, resolve
    from export.cache import slug, source_fingerprint

    source = resolve(spec)
    stamp = {"spec": spec, "purpose": "afrl serve --backend auto", **source_fingerprint(source), "decoder": 2}
    return cache_dir() / "serve" / f"onnx-{source.name}-{slug(stamp)}", stamp


def cached_int8_export(folder: Path, stamp: dict[str, Any]) -> tuple[Path, str | None] | None:
    """`int8_export`'s answer where the export in `folder` (of `int8_export_folder`) is already built, without
    importing the exporter; else None."""
    from export.cache import cached

    if not cached(folder, stamp):
        return None
    refused = folder / REFUSED
    return folder, refused.read_text() if refused.is_file() else None


def int8_export(spec: str, threads: int | None) -> tuple[Path, str | None]:
    """(folder, None): the model's ONNX export with its INT8 scorer, built once under the AFRL cache; or
    (folder, why) when the INT8 gate refused it (remembered too, so no later start exports again)."""
    from export.cache import write_stamp

    folder, stamp = int8_export_folder(spec)
    found = cached_int8_export(folder, stamp)
    if found is not None:
        log.info("backend auto: reusing the ONNX export in %s", folder)
        return found
    refused = folder / REFUSED
    from export.parity import ExportError  # the export's modules import torch: only when exporting
    from export.pipeline import ExportOptions, export_model

    log.info("backend auto: exporting %s to ONNX with INT8 into %s (once; later starts reuse it)", spec, folder)
    options = ExportOptions(
        out=folder,
        int8=True,
        int8_per_channel=True,  # the default student passes the gate per channel only (module docstring)
        overwrite=True,
        threads=threads,
        provenance={"purpose": stamp["purpose"]},
    )
    why = None
    try:
        export_model(spec, options)
    except ExportError as e:  # the INT8 gate: the fp32 export is complete, the INT8 graph is not to be served
        if not (folder / "afrl.json").is_file():
            raise
        why = str(e).split(". ")[0]
        refused.write_text(why)
    write_stamp(folder, stamp)
    return folder, why
