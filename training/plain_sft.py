"""SFT of a whole model in the plain loop (`training.gpu_loop`), without TRL: the study's SFT on a lent GPU.

The same targets (`training.targets.build_example`) and loss (`training.losses.completion_nll`, the grade token
weighted) as `afrl train sft`, and TRL's SFT defaults where the study relies on them: AdamW without weight decay,
a 5 % warm-up then cosine decay, gradients clipped at 1.0, records reshuffled every epoch, exactly `max_steps`
batches. bf16 autocast on CUDA, fp32 on CPU. Departures: full fine-tune only (no LoRA, no layer cut), no
checkpoints (a study's SFT is minutes long on a GPU; a stopped one starts over).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

from training.data import Record


def sft_batches(n_records: int, batch_size: int, max_steps: int, seed: int) -> list[list[int]]:
    """`max_steps` batches of record indices: the records shuffled, each epoch anew, then cut into batches."""
    if n_records < 1 or batch_size < 1 or max_steps < 1:
        raise ValueError(f"need records, batch size and steps >= 1 (got {n_records}, {batch_size}, {max_steps})")
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < batch_size * max_steps:
        epoch = list(range(n_records))
        rng.shuffle(epoch)
        order += epoch
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(max_steps)]


def train_sft_plain(
    model_spec: str,
    records: list[Record],
    out: Path,
    *,
    instruction: str,
    max_query_tokens: int,
    max_document_tokens: int,
    max_steps: int,
    batch_size: int,
    learning_rate: float,
    grade_weight: float,
    seed: int,
    device: str = "auto",
    data: list[str] | None = None,
) -> Path:
    """Train all weights of `model_spec` on `records`; write weights, tokenizer and the AFRL manifest to `out`."""
    import torch

    from afrl.contract import GradeScale, PromptBuilder
    from afrl.manifest import Manifest
    from afrl.models import load_model
    from afrl.scorer import pad_batch
    from training.gpu_loop import run_loop
    from training.losses import completion_nll
    from training.rl.loop import pick_device
    from training.targets import build_example

    start = time.time()
    torch.manual_seed(seed)
    device = pick_device(device)
    model, tok, _ = load_model(model_spec)
    model.to(device)
    scale = GradeScale()
    grade_ids = scale.token_ids(tok)
    builder = PromptBuilder(tok, instruction, max_query_tokens, max_document_tokens)
    rows = [build_example(r, builder, scale, grade_ids) for r in records]
    pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)

    def step_loss(idx: list[int]) -> tuple[Any, dict[str, Any]]:
        ids, mask = pad_batch([rows[i]["input_ids"] for i in idx], pad_id)
        cmask, _ = pad_batch([rows[i]["completion_mask"] for i in idx], 0)
        labels = ids.masked_fill(cmask == 0, -100)
        loss, acc = completion_nll(model, ids.to(device), mask.to(device), labels.to(device), grade_weight)
        return loss, {"mean_token_accuracy": acc}

    args = argparse.Namespace(lr=learning_rate, epochs=1, max_minutes=10_000.0, log_every=10, seed=seed)
    result = run_loop(model, sft_batches(len(rows), batch_size, max_steps, seed), step_loss, args, device, start)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "train_log.json").write_text(json.dumps(result.curve, indent=1))
    losses = [e["loss"] for e in result.curve]
    Manifest.for_builder(
        builder,
        scale,
        kind="sft",
        base_model=model_spec,
        dtype="bfloat16-autocast" if device == "cuda" else "float32",
        provenance={
            "data": data or [],
            "records": len(records),
            "engine": "training.plain_sft (TRL-free)",
            "device": device,
            "config": {
                "max_steps": max_steps,
                "batch_size": batch_size,
                "learning_rate": learning_rate,
                "grade_weight": grade_weight,
                "seed": seed,
            },
            "train_loss": sum(losses) / len(losses) if losses else None,
            "minutes": (time.time() - start) / 60,
        },
    ).write(out)
    return out
