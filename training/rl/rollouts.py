"""The TRL-free parts of an RL step: the contract prompt, sampling a group, the gold targets, rollout metrics.

Both RL engines use them: `training.rl.trainer` (TRL's GRPOTrainer, causal LMs) and `training.rl.loop` (a plain
PyTorch loop that also takes a prefix LM and runs where TRL is not installed, such as the lent GPU machine).
Sampling goes through `afrl.prefix_lm.prompt_pass` / `step_pass`, the passes the scorer and `/explain` use, so a
prefix LM is sampled as it is served: bidirectional over the prompt, causal after it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from afrl.contract import DEFAULT_INSTRUCTION, GradeScale, PromptBuilder
from afrl.manifest import MANIFEST_NAME, load_verified


def contract_builder(tokenizer: Any, model_dir: Path, config: Any) -> tuple[PromptBuilder, GradeScale]:
    """The prompt the model was trained with: its manifest's instruction and budgets unless the config names a
    guideline file; a model without a manifest gets the config's settings (`instruction_file`,
    `max_query_tokens`, `max_document_tokens`)."""
    if (model_dir / MANIFEST_NAME).is_file() and config.instruction_file is None:
        m = load_verified(model_dir)
        return PromptBuilder(tokenizer, m.instruction, m.max_query_tokens, m.max_document_tokens), m.scale
    instruction = Path(config.instruction_file).read_text().strip() if config.instruction_file else DEFAULT_INSTRUCTION
    return PromptBuilder(tokenizer, instruction, config.max_query_tokens, config.max_document_tokens), GradeScale()


def prompt_and_gold_ids(
    records: Sequence[Any], builder: PromptBuilder, scale: GradeScale, with_explanation: bool = True
) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, gold target ids) of every record: `training.targets.build_example` cut where its completion
    starts, so the RL prompt and the SFT term's target are exactly the contract's."""
    from training.targets import build_example

    grade_ids = scale.token_ids(builder.tokenizer)
    prompts, golds = [], []
    for r in records:
        example = build_example(r, builder, scale, grade_ids, with_explanation)
        n_prompt = len(example["input_ids"]) - sum(example["completion_mask"])
        prompts.append(example["input_ids"][:n_prompt])
        golds.append(example["input_ids"][n_prompt:])
    return prompts, golds


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` command-line overrides as a mapping, each VALUE read as YAML (`seeds=[0,1]`, `plot_png=null`)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


@torch.no_grad()
def sample_group(
    model: Any,
    prompt_ids: Sequence[int],
    n: int,
    max_new_tokens: int,
    temperature: float,
    end_ids: set[int],
    generator: torch.Generator | None = None,
    first_ids: Sequence[int] | None = None,
) -> list[list[int]]:
    """`n` completions of one prompt, sampled from softmax(logits / temperature) (no top-k / top-p, as TRL's
    defaults), each ending with its end token (kept, so that stopping is learned) or cut at `max_new_tokens`.
    With `first_ids`, the first token is drawn among those ids only (renormalised): the grade tokens."""
    from afrl.prefix_lm import prompt_pass, step_pass

    device = next(model.parameters()).device
    logits, past = prompt_pass(model, torch.tensor([list(prompt_ids)], device=device).repeat(n, 1))
    return _sample(
        lambda tokens, cache: step_pass(model, tokens, cache),
        logits,
        past,
        max_new_tokens,
        temperature,
        end_ids,
        generator,
        first_ids,
    )


@torch.no_grad()
def sample_groups(
    model: Any,
    prompts: Sequence[Sequence[int]],
    n: int,
    max_new_tokens: int,
    temperature: float,
    end_ids: set[int],
    generator: torch.Generator | None = None,
    first_ids: Sequence[int] | None = None,
) -> list[list[int]]:
    """`n` completions of every prompt, in prompt order (the first prompt's group, then the next one's). A causal
    LM samples the whole batch at once from left-padded prompts (one forward per token for all groups, as TRL's
    generate does); a prefix LM samples one group at a time, since its cached step pass takes no padding mask."""
    from afrl.prefix_lm import is_prefix_lm
    from afrl.scorer import pad_batch, position_ids_from_mask

    if is_prefix_lm(model) or len(prompts) == 1:
        return [
            r
            for p in prompts
            for r in sample_group(model, p, n, max_new_tokens, temperature, end_ids, generator, first_ids)
        ]
    device = next(model.parameters()).device
    ids, mask = pad_batch([list(p) for p in prompts for _ in range(n)], 0, side="left")
    ids, mask = ids.to(device), mask.to(device)
    positions = position_ids_from_mask(mask)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    state = {"mask": mask, "next": positions[:, -1:] + 1}

    def step(tokens: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        state["mask"] = torch.cat([state["mask"], torch.ones_like(tokens)], dim=1)
        o = model(
            input_ids=tokens,
            attention_mask=state["mask"],
            position_ids=state["next"],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        state["next"] = state["next"] + 1
        return o.logits[:, -1], o.past_key_values

    return _sample(
        step, out.logits[:, -1], out.past_key_values, max_new_tokens, temperature, end_ids, generator, first_ids
    )


def _sample(
    step: Any,
    logits: torch.Tensor,
    past: Any,
    max_new_tokens: int,
    temperature: float,
    end_ids: set[int],
    generator: torch.Generator | None,
    first_ids: Sequence[int] | None = None,
) -> list[list[int]]:
    """The token loop both samplers share: draw, keep the rows that have not ended, feed the draws back."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to sample a group (got {temperature})")
    n = logits.shape[0]
    rows: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    for t in range(max_new_tokens):
        logits = logits.float()
        if t == 0 and first_ids is not None:
            allowed = torch.full_like(logits, float("-inf"))
            allowed[:, list(first_ids)] = 0.0
            logits = logits + allowed
        probs = torch.softmax(logits / temperature, dim=-1)
        tokens = torch.multinomial(probs, 1, generator=generator)
        for i, tok in enumerate(tokens[:, 0].tolist()):
            if not done[i]:
                rows[i].append(int(tok))
                done[i] = int(tok) in end_ids
        if all(done):
            break
        logits, past = step(tokens, past)
    return rows


def rollout_metrics(rows: Sequence[Sequence[int]], gold_grades: Sequence[int], grade_ids: Sequence[int]) -> dict:
    """The predicted-grade distribution of a batch of completions (`grades/p<g>`, `grades/invalid` when the
    first token is not a grade), its entropy in nats (`grades/entropy`: low when the policy collapses onto a few
    grades) and the recall of each gold grade present (`recall/grade_<g>`)."""
    ids = list(grade_ids)
    preds = [ids.index(r[0]) if r and r[0] in ids else -1 for r in rows]
    counts = Counter(preds)
    n = max(len(preds), 1)
    out = {f"grades/p{g}": counts[g] / n for g in range(len(ids))}
    out["grades/invalid"] = counts[-1] / n
    valid = sum(counts[g] for g in range(len(ids)))
    probs = [counts[g] / valid for g in range(len(ids))] if valid else []
    out["grades/entropy"] = -sum(p * math.log(p) for p in probs if p > 0)
    for g in range(len(ids)):
        hits = [p == g for p, gold in zip(preds, gold_grades, strict=True) if gold == g]
        if hits:
            out[f"recall/grade_{g}"] = sum(hits) / len(hits)
    return out
