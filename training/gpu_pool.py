"""Distillation from a calibrated pool on a lent accelerator: `afrl train distill`'s pool recipe in a plain loop.

Why it exists: on this 2-core CPU the pool student plateaus within the hour a run can have (training/README.md),
and the GPU machine a session may borrow has 15 minutes, no package registry, its own transformers and no TRL.
`afrl train distill` cannot run there, because its config extends TRL's `SFTConfig` (`training.config`). So
`train` needs only torch, transformers, peft and the `gguf` reader, and reuses the pool path's own pieces: the
rows and collation of `training.distill_pool` (whole query groups per batch, explanations on a seeded share of
the groups), its loss `training.pool_loss.pool_distill_loss` (grade KL + listwise KL + explanation NLL), and the
base cut to a layer subset with `afrl.layers.keep_layers`. The pool itself (`pool.jsonl`, built here by
`afrl train pool`) travels in the carry; the base travels as its GGUF file.

    python -m training.gpu_pool train --gguf FILE --pool runs/pool_minilm --out $OUT/student \
        --layers 0-11 --lora-r 64 --max-minutes 8 --trec-dir .gpu/dl20                      # on the GPU
    python -m training.gpu_pool finish --student DIR                                          # here

`--lora-r 0` is a full fine-tune of the kept layers and the final norm (token embeddings and the tied LM head
frozen), saved as a whole model folder in bf16. `finish` writes the AFRL manifest (teacher, pool checksum,
calibration, settings), so that `afrl eval --model DIR` and `afrl ship` take the result like any other model.
Departures from `afrl train distill`: no checkpoints or resume (the run is minutes long) and a wall-clock budget
that also drives the cosine schedule (`training.gpu_loop`, the loop shared with `training.gpu_sft`).
`scripts/gpu_pool_job.sh` is the job.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

LICENSE = "trained on MS MARCO passages (TREC DL): non-commercial research use only"


def parse_layers(spec: str | None, n: int) -> list[int]:
    """`0-11`, `0,2,4` or `all` (None) -> layer indices within 0..n-1."""
    if spec in (None, "", "all"):
        return list(range(n))
    out: list[int] = []
    for part in str(spec).split(","):
        lo, sep, hi = part.partition("-")
        out += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    if any(not 0 <= i < n for i in out) or len(set(out)) != len(out):
        raise ValueError(f"--layers {spec!r}: need distinct layer indices within 0..{n - 1}")
    return out


def build_model(args: argparse.Namespace, torch: Any) -> tuple[Any, Any, list[int], int]:
    """(student, tokenizer, kept layers, the base's layer count): the base cut to `--layers`, with LoRA or with
    frozen embeddings."""
    from afrl.layers import keep_layers
    from training.gpu_loop import load_base

    model, tok = load_base(args, torch)
    n = model.config.num_hidden_layers
    layers = parse_layers(args.layers, n)
    if layers != list(range(n)):
        model = keep_layers(model, layers)
    if args.lora_r:
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = get_peft_model(model, LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules=targets))
    else:
        for module in (model.get_input_embeddings(), model.get_output_embeddings()):
            module.weight.requires_grad_(False)
    return model, tok, layers, n


def train(args: argparse.Namespace) -> Path:
    import torch

    from afrl.contract import DEFAULT_INSTRUCTION, GradeScale, PromptBuilder
    from training.distill_pool import build_pool_rows, collate, explanation_groups, whole_groups
    from training.gpu_loop import run_loop
    from training.gpu_sft import _to_bf16, evaluate_dev
    from training.pool_loss import pool_distill_loss
    from training.pools import read_pool

    start = time.time()
    if args.batch % args.group_size:
        raise ValueError(f"--batch {args.batch} must be a multiple of --group-size {args.group_size} (whole groups)")
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok, layers, base_layers = build_model(args, torch)
    model.to(device)
    scale = GradeScale()
    grade_ids = scale.token_ids(tok)
    instruction = Path(args.instruction_file).read_text().strip() if args.instruction_file else DEFAULT_INSTRUCTION
    builder = PromptBuilder(tok, instruction, args.max_query_tokens, args.max_document_tokens)
    pool = whole_groups(read_pool(args.pool), args.group_size, args.max_pairs)
    pool, explained = explanation_groups(pool, args.explanation_share, args.batch // args.group_size, args.seed)
    rows = build_pool_rows(pool, builder, scale, grade_ids, explained)
    batches = [rows[i : i + args.batch] for i in range(0, len(rows), args.batch)]  # whole groups, in pool order
    pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)

    def step_loss(batch: list[dict[str, Any]]) -> tuple[Any, dict[str, Any]]:
        inputs = {k: v.to(device) for k, v in collate(batch, pad_id).items()}
        return pool_distill_loss(model, inputs, grade_ids, args.alpha, args.listwise_weight, args.tau, args.group_size)

    loop = run_loop(model, batches, step_loss, args, device, start)
    out = Path(args.out)
    model.eval()
    if args.lora_r:
        model.save_pretrained(str(out))
        _to_bf16(out / "adapter_model.safetensors")
        merged = model.merge_and_unload()
    else:
        model.to(torch.bfloat16).save_pretrained(str(out))
        tok.save_pretrained(str(out))
        merged = model.float()
    info = {
        "base": Path(args.gguf).name if args.gguf else str(args.model),
        "layers": layers,
        "base_layers": base_layers,
        "pairs": len(rows),
        "pairs_trained": min(loop.steps * args.batch, len(rows) * args.epochs),
        "steps": loop.steps,
        "planned_steps": loop.planned_steps,
        "stopped": loop.stopped,
        "minutes": (time.time() - start) / 60,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "instruction": instruction,
        "settings": {k: v for k, v in vars(args).items() if k != "func"},
        "curve": loop.curve,
    }
    if args.trec_dir:  # score the dev queries there, where it takes seconds, with the same evaluate_trec
        info["eval"] = evaluate_dev(merged, tok, builder, args.trec_dir, out / "eval")
    (out / "gpu_run.json").write_text(json.dumps(info, indent=1) + "\n")
    return out


def finish(student: Path, base: str, pool: Path | None) -> Path:
    """The AFRL manifest beside a `train` result (adapter or full folder), naming its teacher, pool and settings."""
    from afrl.contract import GradeScale, PromptBuilder
    from afrl.manifest import Manifest, sha256_file
    from afrl.models import load_model
    from training.gpu_sft import portable_adapter_config

    info = json.loads((student / "gpu_run.json").read_text())
    settings = info["settings"]
    pool = pool or Path(settings["pool"])
    report = json.loads((pool / "pool_report.json").read_text())
    is_adapter = (student / "adapter_config.json").is_file()
    dropped = portable_adapter_config(student, base) if is_adapter else []
    _, tok, _ = load_model(str(student) if not is_adapter else base)
    builder = PromptBuilder(tok, info["instruction"], settings["max_query_tokens"], settings["max_document_tokens"])
    extra: dict[str, Any] = {
        "teacher": report["config"]["teacher"],
        "pool": {
            "folder": str(pool),
            "pool_sha256": sha256_file(pool / "pool.jsonl"),
            "calibration": json.loads((pool / "calibration.json").read_text()),
            "pairs_trained": info["pairs_trained"],
            "steps": info["steps"],
            "report": {k: v for k, v in report.items() if k != "config"},
        },
        "student_layers": info["layers"],
    }
    if is_adapter and info["layers"] != list(range(info["base_layers"])):  # an adapter over a cut base
        extra["num_layers"] = info["layers"]
    if "eval" in info:
        extra["dev_report"] = info["eval"]
    manifest = Manifest.for_builder(
        builder,
        GradeScale(),
        kind="distill",
        base_model=base,
        dtype="bfloat16-autocast",
        provenance={
            "data": [f"pool:{pool}"],
            "records": info["pairs"],
            "config": settings,
            "gpu_run": "gpu_run.json",
            "license": LICENSE,
            "adapter_config_fields_dropped": dropped,
        },
        extra=extra,
    )
    manifest.write(student)
    return student


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="distil the pool into a student (on the accelerator machine)")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf", help="the embedded base's GGUF file (the lent machine has no converted copy)")
    src.add_argument("--model", help="a Hugging Face model folder instead")
    t.add_argument("--pool", required=True, help="a pool folder or pool.jsonl (afrl train pool)")
    t.add_argument("--out", required=True)
    t.add_argument("--layers", default=None, help="kept layers: `0-11`, `0,2,4` or all (default)")
    t.add_argument("--lora-r", type=int, default=64, help="LoRA rank; 0: full fine-tune, embeddings frozen")
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--batch", type=int, default=64, help="pairs per step, a multiple of --group-size")
    t.add_argument("--group-size", type=int, default=8, help="the pool's candidates per query group")
    t.add_argument("--max-pairs", type=int, default=None, help="use the first N pairs of the pool (whole groups)")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--alpha", type=float, default=0.5, help="grade-KL weight; 1 - alpha weighs the explanation")
    t.add_argument("--listwise-weight", type=float, default=2.0)
    t.add_argument("--tau", type=float, default=0.1, help="listwise temperature (scores in [0, 1])")
    t.add_argument("--explanation-share", type=float, default=0.1)
    t.add_argument("--instruction-file", default=None, help="system message (default: the contract's)")
    t.add_argument("--max-query-tokens", type=int, default=32)
    t.add_argument("--max-document-tokens", type=int, default=128)
    t.add_argument("--max-minutes", type=float, default=8.0, help="training-loop wall-clock budget (load excluded)")
    t.add_argument("--log-every", type=int, default=20)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--trec-dir", default=None, help="also evaluate the dev split of this TREC folder (as afrl eval)")
    f = sub.add_parser("finish", help="write the AFRL manifest beside a trained student (here)")
    f.add_argument("--student", required=True)
    f.add_argument("--base", default="default-base")
    f.add_argument("--pool", default=None, help="the pool folder here (default: the one the run names)")
    args = ap.parse_args(argv)
    if args.cmd == "train":
        print(train(args))
    else:
        print(finish(Path(args.student), args.base, Path(args.pool) if args.pool else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
