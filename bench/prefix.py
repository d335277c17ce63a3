"""Item 4: prefix reuse. One query, many documents, a long instruction: the service's torch backend computes the
shared instruction + query prefix once (KV cache) and runs only the documents' tokens, against its plain path.

Both paths go through `service.backends.torch_backend.TorchBackend` exactly as the batcher calls it: the
documents are cut into passes of the service's default `max_batch_pairs`, and the reuse path gets the contract's
`query_prefix_len`. The grades of the two paths are compared, so a speed-up that changed answers would show.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from bench import workload
from bench.config import BenchConfig
from bench.scoring import agreement
from bench.timing import measure, ratio

log = logging.getLogger(__name__)

QUERY = "waterproof hiking boots men size 42"
# Why item 4 does not apply to a prefix LM (afrl.prefix_lm), such as the shipped default student.
NOT_FOR_PREFIX_LM = (
    "not applicable to this model: a prefix LM attends both ways over the whole prompt, so the states of the "
    "instruction and the query depend on the document and no prefix can be computed once (the torch backend "
    "takes the plain path)"
)


def bench_prefix(cfg: BenchConfig, torch_scorer: Any) -> dict[str, Any]:
    from service.backends.torch_backend import TorchBackend
    from service.settings import Settings

    backend = TorchBackend(torch_scorer, model_name=cfg.model)
    chunk = Settings.model_fields["max_batch_pairs"].default
    instruction = workload.long_instruction(torch_scorer.tokenizer, cfg.prefix_instruction_tokens)
    prompts = workload.prompts(
        torch_scorer.builder, cfg.prefix_documents, cfg.prefix_prompt_tokens, instruction, seed=1, one_query=QUERY
    )
    prefix_len = prompts[0].query_prefix_len
    passes = [prompts[i : i + chunk] for i in range(0, len(prompts), chunk)]

    def plain() -> np.ndarray:
        return np.concatenate([backend.grade_logits(p) for p in passes])

    def reuse() -> np.ndarray:
        out = [backend.grade_logits_shared_prefix(p, prefix_len) for p in passes]
        if any(o is None for o in out):
            raise RuntimeError("the torch backend refused the shared prefix: the prompts do not share it")
        return np.concatenate(out)  # type: ignore[arg-type]

    # Warm-up on one pass of each kind: the full 100 documents take tens of seconds per run on a small CPU.
    warm = passes[0][: max(2, len(passes[0]) // 4)]
    for _ in range(cfg.warmup):
        backend.grade_logits(warm)
        backend.grade_logits_shared_prefix(warm, prefix_len)
    log.info("bench: prefix reuse, %d documents, prefix %d tokens of %d", len(prompts), prefix_len,
             len(prompts[0].input_ids))  # fmt: skip
    t_plain = measure(plain, 0, cfg.repeats, cfg.budget_s)
    t_reuse = measure(reuse, 0, cfg.repeats, cfg.budget_s)
    return {
        "backend": "service torch backend, fp32",
        "documents": len(prompts),
        "prompt_tokens": len(prompts[0].input_ids),
        "shared_prefix_tokens": prefix_len,
        "instruction_tokens": len(torch_scorer.tokenizer.encode(instruction, add_special_tokens=False)),
        "pass_size": chunk,
        "plain": t_plain.to_dict(items=len(prompts)),
        "reuse": t_reuse.to_dict(items=len(prompts)),
        "reuse_vs_plain": agreement(t_plain.result, t_reuse.result),
        "prefix_reuse_speedup": ratio(t_plain.median_s, t_reuse.median_s),
    }
