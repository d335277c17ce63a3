"""Production-size export check: a random-weight model with the true Qwen3-0.6B architecture.

Builds the model from its config in memory (no download: hidden 1024, 28 layers, 16 heads, 8 KV heads, head dim
128, intermediate 3072, vocab 151936, tied embeddings), exports it through the same pipeline as `afrl export`
(its fp32 weights, about 2.4 GB, exceed protobuf's 2 GB, so the scorer goes to `scorer.onnx` + `scorer.onnx.data`),
loads the folder back with `OnnxScorer` (manifest verified) and records time, file sizes, memory and parity.
Weights are random, so the tiny offline tokenizer stands in for Qwen's: its ids are far below the vocabulary size.
Not part of CI (several minutes and several GB of RAM):

    nice -n 10 .venv/bin/python -m export.prod_size --out /tmp/afrl-prod-size [--decoder] [--int8]
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

QWEN3_06B = dict(
    vocab_size=151936,
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40960,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)


def build_model() -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    from afrl.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = Qwen3Config(**QWEN3_06B, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model, tok


def file_sizes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pairs", type=int, default=4, help="check pairs for parity")
    parser.add_argument("--decoder", action="store_true", help="also export the KV-cache decoder")
    parser.add_argument("--int8", action="store_true", help="also try INT8 (gate at default thresholds)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import numpy as np
    import torch

    from afrl.contract import GradeScale, PromptBuilder
    from afrl.scorer import TorchScorer
    from export.check_pairs import load_check_pairs
    from export.parity import ExportError
    from export.pipeline import ExportOptions, export_scorer_model
    from export.runtime import OnnxScorer

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, tok = build_model()
    params = sum(p.numel() for p in model.parameters())
    build_s = time.perf_counter() - start
    log.info("built a random Qwen3-0.6B-architecture model: %.1f M parameters in %.1f s", params / 1e6, build_s)
    scorer = TorchScorer(model, tok, PromptBuilder(tok), GradeScale(), batch_size=4)
    opts = ExportOptions(
        out=args.out,
        int8=args.int8,
        max_check_pairs=args.pairs,
        decoder=args.decoder,
        decoder_check_tokens=8 if args.decoder else 0,
        overwrite=True,
        threads=args.threads,
        provenance={"model": "random Qwen3-0.6B architecture", "config": QWEN3_06B},
    )
    export_start = time.perf_counter()
    int8_refusal = None
    try:
        manifest = export_scorer_model(scorer, "random-qwen3-0.6b-architecture", opts)
    except ExportError as e:
        if "INT8 refused" not in str(e):
            raise
        int8_refusal = str(e)
    export_s = time.perf_counter() - export_start

    load_start = time.perf_counter()
    onnx = OnnxScorer.from_dir(args.out, threads=args.threads, variant="fp32")
    load_s = time.perf_counter() - load_start
    pairs = load_check_pairs(None, args.pairs)
    ours = np.array([r.probabilities for r in onnx.score(pairs)])
    ref = np.array([r.probabilities for r in scorer.score(pairs)])
    manifest = onnx.manifest
    command = " ".join(sys.argv[1:] if argv is None else argv)
    report = {
        "command": f"nice -n 10 .venv/bin/python -m export.prod_size {command}",
        "parameters": params,
        "config": QWEN3_06B,
        "build_s": round(build_s, 1),
        "export_s": round(export_s, 1),
        "stage_timings_s": manifest.provenance.get("timings_s"),
        "load_and_verify_s": round(load_s, 1),
        "external_data": manifest.extra.get("external_data"),
        "file_sizes_bytes": file_sizes(args.out),
        "parity_in_manifest": manifest.parity,
        "reload_max_abs_prob_diff": float(np.abs(ours - ref).max()),
        "int8_refusal": int8_refusal,
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
        "threads": args.threads,
    }
    (args.out.parent / (args.out.name + ".report.json")).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
