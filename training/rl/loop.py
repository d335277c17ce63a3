"""Stepwise-GRPO with the SFT auxiliary loss in a plain PyTorch loop: no TRL, a causal LM or a prefix LM, CPU or CUDA.

Why a second engine beside `training.rl.trainer` (TRL's GRPOTrainer):
- the default student is a prefix LM (bidirectional over the prompt). TRL samples and scores every model as a
  causal LM, so it would train a different model from the one served. Here a group is sampled with the passes the
  scorer and `/explain` use (`training.rl.rollouts.sample_group`) and its log-probabilities come from the SFT
  forward under the model's own training mask (`training.losses.completion_token_nll`);
- the lent GPU machine has torch and transformers but no TRL.

The method is the trainer's, from the same parts: steps (`steps.py`), rewards (`rewards.py`), group advantages
(`advantages.py`), mu(t) (`schedule.py`), gold targets (`training.targets`). Where TRL has a choice, the loop does
what TRL 1.16 does at the defaults the study runs with:
- one optimiser step per generation batch of `prompts x num_generations` completions (TRL's `num_iterations` 1),
  so the clipped importance ratio is 1 and the surrogate's gradient is advantage x grad log p;
- TRL's "dapo" loss normalisation: token losses summed over the batch, divided by its completion tokens;
- `advantage_mode: completion`: one reward per completion, each component averaged over its steps and summed
  with the weights (`rewards.completion_level`), as TRL sums its reward functions;
- `scale_rewards`: `group` divides by the group's std, `none` keeps the reward scale;
- KL to a frozen copy of the starting policy with TRL's k3 estimator when `kl_coef` > 0;
- AdamW (no weight decay), linear decay to 0 over `max_steps`, gradients clipped at 1.0.
Not done: LoRA, checkpoints mid-run (a study arm is minutes long; a stopped arm starts over), vLLM.

    python -m training.rl.loop --config training/configs/plainrl_rules.yaml [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from afrl.manifest import MANIFEST_NAME, Manifest, load_verified
from training.data import Record
from training.losses import completion_nll, completion_token_nll
from training.rl.advantages import group_step_advantages
from training.rl.rewards import COMPONENTS, Gold, completion_level, resolve_weights, step_reward_matrix
from training.rl.rollouts import (
    contract_builder,
    parse_overrides,
    prompt_and_gold_ids,
    rollout_metrics,
    sample_groups,
)
from training.rl.schedule import SCHEDULES, sft_coef_at
from training.rl.steps import STEP_NAMES, NewlineCounter, token_steps

log = logging.getLogger(__name__)

ADVANTAGE_MODES = ("stepwise", "completion")
SCALE_REWARDS = ("group", "none")


@dataclass
class PlainRLConfig:
    """The loop's settings; names match `AfrlGRPOConfig`'s, so the study builds either from one mapping."""

    model: str
    output_dir: str
    max_steps: int = 20
    per_device_train_batch_size: int = 8  # completions per step (prompts x num_generations), as TRL counts
    num_generations: int = 4
    max_completion_length: int = 80
    learning_rate: float = 2e-5
    temperature: float = 1.0
    advantage_mode: str = "stepwise"
    scale_rewards: str = "group"
    sft_coef: float = 0.0
    sft_coef_final: float | None = None
    sft_coef_schedule: str = "constant"
    kl_coef: float = 0.0
    step_rewards: dict[str, float] | str | None = None  # a mapping, or its JSON on a command line
    seed: int = 0
    device: str = "auto"  # auto: cuda when available
    instruction_file: str | None = None
    max_query_tokens: int = 64
    max_document_tokens: int = 256
    explanations: bool = True
    # draw the first token among the grade tokens only (renormalised), the distribution the scorer reads, and
    # train that restricted log-probability: for a student distilled on the grade logits alone, whose free first
    # token is rarely a grade token (so every group would get zero reward)
    grade_first: bool = False
    logging_steps: int = 1
    data: list[str] = field(default_factory=list)  # sources for the CLI; the study passes records itself

    def __post_init__(self) -> None:
        if self.advantage_mode not in ADVANTAGE_MODES:
            raise ValueError(f"advantage_mode must be one of {', '.join(ADVANTAGE_MODES)}, got {self.advantage_mode!r}")
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(
                f"scale_rewards must be one of {', '.join(SCALE_REWARDS)} in the plain loop, got {self.scale_rewards!r}"
            )
        if self.sft_coef_schedule not in SCHEDULES:
            raise ValueError(f"sft_coef_schedule must be one of {', '.join(SCHEDULES)}, got {self.sft_coef_schedule!r}")
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2: a group of one has no advantage")
        if self.per_device_train_batch_size % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size ({self.per_device_train_batch_size}) must be a multiple of "
                f"num_generations ({self.num_generations}): it counts completions, prompts x num_generations"
            )
        if self.sft_coef < 0 or (self.sft_coef_final or 0) < 0 or self.kl_coef < 0:
            raise ValueError("sft_coef, sft_coef_final and kl_coef must be >= 0")
        if self.sft_coef_final is None:
            self.sft_coef_final = self.sft_coef
        if isinstance(self.step_rewards, str):
            self.step_rewards = json.loads(self.step_rewards)
        self.step_rewards = resolve_weights(self.step_rewards)  # type: ignore[arg-type]

    @property
    def weights(self) -> dict[str, float]:
        """The resolved reward weights (every component named)."""
        assert isinstance(self.step_rewards, dict)
        return dict(self.step_rewards)

    @property
    def prompts_per_step(self) -> int:
        return self.per_device_train_batch_size // self.num_generations

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> PlainRLConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown plain-RL settings {unknown}; known: {', '.join(sorted(known))}")
        return cls(**values)


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for, but torch sees no CUDA device (use device: auto or cpu)")
    return name


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def _sequences(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """(input_ids, attention_mask, labels) of right-padded prompt + completion rows; labels -100 on the prompt."""
    seqs = [p + c for p, c in zip(prompts, completions, strict=True)]
    labels = [[-100] * len(p) + c for p, c in zip(prompts, completions, strict=True)]
    ids = _pad(seqs, pad_id)
    mask = _pad([[1] * len(s) for s in seqs], 0)
    return ids, mask, _pad(labels, -100)


class PlainGRPO:
    """One policy, its optimiser and the per-step work; `train_rl_plain` drives it."""

    def __init__(self, config: PlainRLConfig, model: Any, tokenizer: Any, builder: Any, scale: Any) -> None:
        from afrl.prefix_lm import end_token_ids

        self.config, self.model, self.tokenizer, self.builder, self.scale = config, model, tokenizer, builder, scale
        self.device = next(model.parameters()).device
        self.grade_ids = scale.token_ids(tokenizer)
        self.end_ids = end_token_ids(model, tokenizer)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
        self.newlines = NewlineCounter(tokenizer)
        self.weights = config.weights
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate, weight_decay=0.0)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.ref = None
        if config.kl_coef > 0:
            self.ref = copy.deepcopy(model).eval()
            self.ref.requires_grad_(False)

    def rewards(self, texts: list[str], golds: list[Gold]) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-step rewards (N, steps), the completion-level reward (N,) plain GRPO and the log use)."""
        per_step, comps = step_reward_matrix(texts, golds, self.scale, self.weights)
        total = torch.tensor(
            [
                sum(self.weights[c] * completion_level(c, comps[c][i].tolist()) for c in COMPONENTS)
                for i in range(len(texts))
            ]
        )
        return per_step, total

    def token_nll(self, model: Any, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> tuple:
        """(NLL of every completion token, the `keep` mask): `completion_token_nll`, with the first token's NLL
        over the grade tokens alone when `grade_first` (the distribution it was drawn from)."""
        nll, logits, keep = completion_token_nll(model, ids, mask, labels)
        if not self.config.grade_first:
            return nll, keep
        first = (keep & (keep.long().cumsum(-1) == 1))[keep]
        chosen = labels[:, 1:][keep][first]
        index = torch.tensor([self.grade_ids.index(int(t)) for t in chosen], device=nll.device)
        restricted = -logits[first][:, self.grade_ids].log_softmax(-1).gather(1, index[:, None])[:, 0]
        first_nll = torch.zeros_like(nll)
        first_nll[first] = restricted
        return torch.where(first, first_nll, nll), keep

    def step(self, step: int, records: list[Record], prompt_ids: list[list[int]], gold_ids: list[list[int]]) -> dict:
        c = self.config
        g = c.num_generations
        self.model.eval()
        first = self.grade_ids if c.grade_first else None
        rows = sample_groups(
            self.model, prompt_ids, g, c.max_completion_length, c.temperature, self.end_ids, self.generator, first
        )
        self.model.train()
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
        golds = [Gold(r.grade, r.document, r.rule) for r in records for _ in range(g)]
        per_step, total = self.rewards(texts, golds)
        rewards = per_step if c.advantage_mode == "stepwise" else total[:, None]
        adv = group_step_advantages(rewards, g, scale=c.scale_rewards != "none")
        prompts = [ids for ids in prompt_ids for _ in range(g)]
        ids, mask, labels = (t.to(self.device) for t in _sequences(prompts, rows, self.pad_id))
        # each completion token's advantage, at the position that predicts it (row-major, as `keep` flattens)
        token_adv = torch.zeros(labels.shape, dtype=torch.float32)
        for i, (p, r) in enumerate(zip(prompts, rows, strict=True)):
            steps = token_steps(r, self.newlines) if c.advantage_mode == "stepwise" else [0] * len(r)
            token_adv[i, len(p) : len(p) + len(r)] = adv[i, torch.tensor(steps, dtype=torch.long)]
        nll, keep = self.token_nll(self.model, ids, mask, labels)
        flat_adv = token_adv[:, 1:].to(self.device)[keep]
        n_tokens = max(int(keep.sum()), 1)
        loss = (flat_adv * nll).sum() / n_tokens  # -A * log p, the on-policy surrogate
        entry: dict[str, Any] = {"policy_loss": loss.item()}
        if self.ref is not None:
            with torch.no_grad():
                ref_nll, _ = self.token_nll(self.ref, ids, mask, labels)
            delta = nll - ref_nll  # log p_ref - log p
            kl = torch.exp(delta) - delta - 1
            loss = loss + c.kl_coef * kl.sum() / n_tokens
            entry["kl"] = (kl.sum() / n_tokens).item()
        mu = sft_coef_at(step, c.max_steps, c.sft_coef, float(c.sft_coef_final or 0), c.sft_coef_schedule)
        entry["mu"] = mu
        if mu > 0:
            sft_ids, sft_mask, sft_labels = (t.to(self.device) for t in _sequences(prompt_ids, gold_ids, self.pad_id))
            sft, _ = completion_nll(self.model, sft_ids, sft_mask, sft_labels)
            loss = loss + mu * sft
            entry["sft_loss"] = sft.item()
        lr = c.learning_rate * max(0.0, 1.0 - step / max(c.max_steps, 1))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        grouped = total.view(-1, g)
        entry |= {
            "step": step + 1,
            "loss": loss.item(),
            "learning_rate": lr,
            "grad_norm": float(grad_norm),
            "reward": total.mean().item(),
            "frac_reward_zero_std": (grouped.std(dim=1) == 0).float().mean().item(),
            "completions/mean_length": sum(len(r) for r in rows) / len(rows),
            "completions/clipped_ratio": sum(not r or r[-1] not in self.end_ids for r in rows) / len(rows),
        }
        entry |= {f"step_reward/{name}": per_step[:, s].mean().item() for s, name in enumerate(STEP_NAMES)}
        entry |= rollout_metrics(rows, [gd.grade for gd in golds], self.grade_ids)
        return entry


def train_rl_plain(config: PlainRLConfig, records: list[Record], callbacks: list[Any] | None = None) -> Path:
    """Run the loop from `config.model` and write full weights, `train_log.json` and the manifest to output_dir.

    `callbacks` get TrainerCallback-style `on_train_begin` / `on_step_end` / `on_train_end` calls (with
    `state.global_step`, `model` and `processing_class`), so the study's rule curve works with either engine."""
    from afrl.models import load_model

    if not records:
        raise ValueError("the plain RL loop got no records to sample prompts from")
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    model, tokenizer, model_dir = load_model(config.model)
    model.to(device)
    builder, scale = contract_builder(tokenizer, model_dir, config)
    prompt_ids, gold_ids = prompt_and_gold_ids(records, builder, scale, config.explanations)
    engine = PlainGRPO(config, model, tokenizer, builder, scale)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    order: list[int] = []
    rng = random.Random(config.seed)
    history: list[dict[str, Any]] = []
    hooks = list(callbacks or [])

    def call(hook: str, step: int) -> None:
        state = SimpleNamespace(global_step=step, max_steps=config.max_steps)
        for cb in hooks:
            getattr(cb, hook)(config, state, None, model=model, processing_class=tokenizer)

    log.info(
        "plain RL (%s, mu %s, kl %s) on %d records, %s, %d steps of %d prompts x %d",
        config.advantage_mode,
        config.sft_coef,
        config.kl_coef,
        len(records),
        device,
        config.max_steps,
        config.prompts_per_step,
        config.num_generations,
    )
    call("on_train_begin", 0)
    start = time.time()
    for step in range(config.max_steps):
        batch: list[int] = []
        while len(batch) < config.prompts_per_step:
            if not order:
                order = list(range(len(records)))
                rng.shuffle(order)
            batch.append(order.pop())
        entry = engine.step(
            step, [records[i] for i in batch], [prompt_ids[i] for i in batch], [gold_ids[i] for i in batch]
        )
        entry["seconds"] = time.time() - start
        history.append(entry)
        if (step + 1) % config.logging_steps == 0 or step + 1 == config.max_steps:
            print(
                json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in entry.items()}), flush=True
            )
        call("on_step_end", step + 1)
    call("on_train_end", config.max_steps)
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "train_log.json").write_text(json.dumps(history, indent=1))
    base = load_verified(model_dir).base_model if (model_dir / MANIFEST_NAME).is_file() else config.model
    Manifest.for_builder(
        builder,
        scale,
        kind="rl",
        base_model=base,
        dtype="float32",
        provenance={
            "init_model": str(config.model),
            "engine": "training.rl.loop (TRL-free)",
            "device": device,
            "records": len(records),
            "config": asdict(config),
        },
    ).write(out)
    log.info("wrote %s (%d steps, %.0f s)", out, config.max_steps, time.time() - start)
    return out


def main(argv: list[str] | None = None) -> int:
    import yaml

    from training.sources import load_sources

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="YAML mapping of PlainRLConfig fields")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override settings (VALUE read as YAML)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        overrides = parse_overrides(args.set)
    except ValueError as e:
        ap.error(str(e))
    values = (yaml.safe_load(Path(args.config).read_text()) or {}) | overrides
    config = PlainRLConfig.from_mapping(values)
    if not config.data:
        raise SystemExit(f"{args.config}: set `data` to at least one source (e.g. rules:256:0 or trec:DIR:train)")
    print(train_rl_plain(config, load_sources(config.data)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
