"""Exports the benchmarks need, built once and cached: they cost minutes, the measurements should not wait on them.

* the benchmarked model as ONNX: fp32 scorer, dynamic INT8 scorer (per-channel weight scales, as `--backend auto`
  builds it) and the KV-cache decoder (the service's onnx
  backend loads it), through `export.pipeline.export_scorer_model`, the same code as `afrl export`;
* the random-weight Qwen3-0.6B-architecture scorer of `export.prod_size` (or a shrunk one with `--quick`).

The INT8 gate is opened (agreement 0, score change 1) because a benchmark needs the INT8 graph whatever the
gate would say about this model; the gate's figures are still measured, recorded in the export's manifest and
copied into the benchmark JSON, so a reader sees how far INT8 moved the grades. A cache entry is reused only
when its stamp (source path, the source's config and weights sizes and times, bench cache version) matches.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from export.cache import CACHE_VERSION, cached, slug, source_fingerprint, write_stamp

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    from afrl.models import cache_dir

    return cache_dir() / "bench"


def _export_options(out: Path, decoder: bool, threads: int, check_pairs: int, fp16: bool = False) -> Any:
    from export.pipeline import ExportOptions

    return ExportOptions(
        out=out,
        int8=True,
        int8_per_channel=True,  # what `afrl serve --backend auto` builds (service/backend_choice.py)
        fp16=fp16,
        int8_min_agreement=0.0,  # the gate is measured and recorded, not enforced: see the module docstring
        int8_max_score_delta=1.0,
        max_check_pairs=check_pairs,
        decoder=decoder,
        decoder_check_tokens=4 if decoder else 0,
        overwrite=True,
        threads=threads,
        provenance={"purpose": "afrl bench"},
    )


def onnx_export(spec: str, cache: Path, threads: int, check_pairs: int = 4, fp16: bool = False) -> Path:
    """An ONNX export of `spec` (fp32 + INT8 scorers, decoder; fp16 too for GPUs) under `cache`, built once."""
    from afrl.models import resolve

    source = resolve(spec)
    stamp = {"spec": spec, **source_fingerprint(source), "int8": "per-channel", "decoder": "prefix-lm too"}
    if fp16:
        stamp["fp16"] = True
    folder = cache / f"onnx-{source.name}-{slug(stamp)}"
    if cached(folder, stamp):
        log.info("bench: reusing the ONNX export in %s", folder)
        return folder
    from export.pipeline import export_model

    log.info("bench: exporting %s to ONNX (fp32, INT8, decoder) into %s; done once", spec, folder)
    export_model(spec, _export_options(folder, True, threads, check_pairs, fp16))
    write_stamp(folder, stamp)
    return folder


def qwen3_config(shrunk: bool) -> dict[str, Any]:
    """The Qwen3-0.6B architecture of `export.prod_size`, or a two-layer, narrow version of it for `--quick`."""
    from export.prod_size import QWEN3_06B

    cfg = dict(QWEN3_06B)
    if shrunk:
        # Keeps the vocabulary and head layout, so the code path is the same, at a few MB of weights.
        cfg.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16, vocab_size=4096)  # fmt: skip
    return cfg


def build_qwen3(cfg: dict[str, Any]) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    from afrl.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    config = Qwen3Config(**cfg, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    return model, tok


def qwen3_export(cache: Path, threads: int, shrunk: bool) -> Path:
    """The random-weight Qwen3-0.6B-architecture scorer as ONNX (fp32 + INT8, no decoder), built once."""
    cfg = qwen3_config(shrunk)
    stamp = {"model": "random qwen3-0.6b architecture", "config": cfg, "cache_version": CACHE_VERSION}
    stamp["int8"] = "per-channel"
    folder = cache / f"qwen3-0.6b-arch-{slug(stamp)}"
    if cached(folder, stamp):
        log.info("bench: reusing the Qwen3-0.6B-architecture export in %s", folder)
        return folder
    from afrl.contract import GradeScale, PromptBuilder
    from afrl.scorer import TorchScorer
    from export.pipeline import export_scorer_model

    log.info("bench: building and exporting the Qwen3-0.6B-architecture scorer (shrunk=%s) into %s", shrunk, folder)
    model, tok = build_qwen3(cfg)
    scorer = TorchScorer(model, tok, PromptBuilder(tok), GradeScale(), batch_size=2)
    export_scorer_model(scorer, "random-qwen3-0.6b-architecture", _export_options(folder, False, threads, 2))
    write_stamp(folder, stamp)
    return folder


def main() -> None:
    """`python -m bench.prepare [--quick] [--model SPEC]`: build the caches ahead of a measured run."""
    import argparse

    import torch

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model", default="default")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-qwen3", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    cache = args.cache_dir or default_cache_dir()
    log.info("onnx export: %s", onnx_export(args.model, cache, args.threads))
    if not args.skip_qwen3:
        log.info("qwen3 export: %s", qwen3_export(cache, args.threads, shrunk=args.quick))


if __name__ == "__main__":
    main()
