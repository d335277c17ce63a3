"""The benchmark's sizes and repeats in one dataclass: the full run, and `--quick` for CI on tiny models."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from afrl.models import SHIPPED_DIR

PREVIOUS_DEFAULT = str(SHIPPED_DIR / "sft-smollm2-trec-balanced")
"""The default model before the layer-cut student (a 30-layer SmolLM2-135M adapter): what `models` compares with."""


@dataclass
class BenchConfig:
    model: str = "default"
    quick: bool = False
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    cache_dir: Path | None = None
    warmup: int = 1
    repeats: int = 3
    budget_s: float = 30.0
    """Timed runs of one configuration stop starting once they have used this many seconds (min. one run)."""
    batch: int = 32
    prompt_tokens: int = 200
    explanation_tokens: int = 60
    """Reason-first baseline: tokens generated before the grade is read (an AFRL explanation's length)."""
    prefix_documents: int = 100
    prefix_instruction_tokens: int = 384
    prefix_prompt_tokens: int = 470
    """Prompt length with the long instruction: instruction + query + a document of about 64 tokens."""
    service_concurrency: tuple[int, ...] = (1, 8, 32)
    service_seconds: float = 5.0
    """Length of one round of load at one concurrency level."""
    service_rounds: int = 3
    """Rounds per level and mode, the batching-on and -off servers taking turns (item 5): a change in the machine's
    load during the item then falls on both modes instead of on whichever one ran at the time."""
    service_prompt_tokens: int = 200
    service_max_batch: int = 32
    """`max_batch_pairs` of the batching-on server (32: the service default)."""
    qwen3_batch: int = 32
    qwen3_tokens: int = 256
    compare: tuple[str, ...] = (PREVIOUS_DEFAULT,)
    """Models the `models` item measures against `model` (the first one gives `default_speedup_vs_previous`)."""
    rerank_documents: int = 100
    """Documents per query in `models` and per /rerank request in `rerank100`."""
    document_chars: tuple[int, int] = (350, 450)
    """Their length in characters (MS MARCO passages)."""
    rerank_requests: int = 12
    """Sequential timed /rerank requests (after `warmup` untimed ones)."""
    explain_pairs: int = 8
    """Pairs each backend explains in `explain` (MS MARCO-length passages, `document_chars`)."""
    skip: tuple[str, ...] = ()
    """Items to leave out: answer_first, backends, roofline, prefix, service, qwen3, models, rerank100, explain."""

    @classmethod
    def quick_for(cls, **kw: Any) -> BenchConfig:
        """Small everything: a smoke run of every code path on a tiny model (whose tokenizer makes the template and
        default instruction about 180 tokens, hence the prompt lengths).
        """
        base: dict[str, Any] = dict(
            quick=True, warmup=1, repeats=2, budget_s=5.0, batch=32, prompt_tokens=224, explanation_tokens=8,
            prefix_documents=12, prefix_instruction_tokens=220, prefix_prompt_tokens=340, service_seconds=1.0,
            service_rounds=2, service_prompt_tokens=224, qwen3_batch=4, qwen3_tokens=32, rerank_requests=3,
            explain_pairs=2,
        )  # fmt: skip
        base.update(kw)
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cache_dir"] = str(self.cache_dir) if self.cache_dir else None
        data["service_concurrency"] = list(self.service_concurrency)
        data["skip"] = list(self.skip)
        data["compare"] = list(self.compare)
        data["document_chars"] = list(self.document_chars)
        return data
