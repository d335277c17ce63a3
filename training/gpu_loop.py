"""The plain training loop that the lent-GPU entry points share (`training.gpu_sft`, `training.gpu_pool`).

A lent machine has no TRL and a fixed number of minutes, so both entry points run the same small loop instead of
a Trainer: the base loaded from its GGUF file (or a Hugging Face folder in tests), AdamW over the trainable
parameters, bf16 autocast on CUDA, a warm-up + cosine schedule driven by steps *or* wall clock, gradient clipping,
a JSON line per logged step, and a stop when the budget is spent. Each entry point supplies only its loss.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def load_base(args: argparse.Namespace, torch: Any) -> tuple[Any, Any]:
    """(model, tokenizer) in fp32 from `--gguf FILE` (the embedded base, as `afrl.models` converts it) or from
    `--model DIR` (a Hugging Face folder: the tests' tiny model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.gguf:
        from afrl.models import load_gguf_tokenizer

        gguf = Path(args.gguf)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        return model, load_gguf_tokenizer(gguf)
    return AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32), AutoTokenizer.from_pretrained(
        args.model
    )


def budget_cosine(step: int, total: int, elapsed_s: float, budget_s: float, warmup: float = 0.05) -> float:
    """The learning-rate factor: linear warm-up, then cosine decay over the run's progress, which is steps done or
    wall-clock budget used, whichever is further along, so that a run the budget cuts short still ends with a
    decayed learning rate (a lent machine's minutes are fixed; its speed is not known in advance)."""
    progress = min(1.0, max(step / total, elapsed_s / budget_s))
    return min(1.0, (step + 1) / max(1, int(warmup * total))) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class LoopResult:
    steps: int
    planned_steps: int
    stopped: str | None
    curve: list[dict[str, float]] = field(default_factory=list)


def run_loop(
    model: Any,
    batches: Sequence[Any],
    step_loss: Callable[[Any], tuple[Any, dict[str, Any]]],
    args: argparse.Namespace,
    device: str,
    start: float,
) -> LoopResult:
    """Train `model` over `args.epochs` passes of `batches` (their order shuffled per epoch, each batch kept
    whole). `step_loss(batch)` returns (loss, scalars to log); it runs under autocast. `args` gives lr, epochs,
    max_minutes, log_every and seed; `start` is when the job began (the logged `minutes`)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    total = len(batches) * args.epochs
    budget = 60 * args.max_minutes
    train_start = time.time()
    rng = random.Random(args.seed)
    result = LoopResult(0, total, None)
    model.train()
    for epoch in range(args.epochs):
        order = list(batches)
        rng.shuffle(order)  # batch order only: a batch (one query's group, or whole groups) stays intact
        for batch in order:
            for group in opt.param_groups:
                group["lr"] = args.lr * budget_cosine(result.steps, total, time.time() - train_start, budget)
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
                loss, logged = step_loss(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            result.steps += 1
            if result.steps % args.log_every == 0 or result.steps == total:
                entry = {"step": result.steps, "epoch": epoch, "loss": loss.item()}
                entry |= {k: float(v) for k, v in logged.items()}
                entry["minutes"] = (time.time() - start) / 60
                result.curve.append(entry)
                print(json.dumps(entry), flush=True)
            if time.time() - train_start > budget:
                result.stopped = (
                    f"wall-clock budget of {args.max_minutes} min reached at step {result.steps} of {total}"
                )
                break
        if result.stopped:
            print(result.stopped, flush=True)
            break
    return result
