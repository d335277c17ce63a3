"""Stepwise-GRPO with an SFT auxiliary loss (Mode-Balanced Optimisation) on AFRL completions.

Method. For each prompt, G completions are sampled; each completion is cut into steps (the grade token, then the
Intent, Evidence, Reasoning and Verdict lines: training/rl/steps.py), every step gets its own rewards
(training/rl/rewards.py) and its own advantage, normalised within the group of G (training/rl/advantages.py),
and each token is pushed by its step's advantage in TRL's clipped surrogate. To keep rare expert rules alive
(RL alone minimises a reverse KL and is mode-seeking), the loss adds the NLL of the gold AFRL targets of the
same prompts (a forward KL, mode-covering):

    loss = L_RL + mu(t) * L_SFT          mu(t): constant, linear or cosine (training/rl/schedule.py)

with an optional KL to the reference model (`kl_coef`, TRL's beta).

Departures from TRL's GRPOTrainer (this file overrides only these): prompt ids come from the AFRL PromptBuilder
(the dataset's text prompt is only a key, so the ids are exactly the contract's); the advantage is (B, T) instead
of (B,) when `advantage_mode: stepwise` (`completion` keeps TRL's behaviour, the plain-GRPO arm of the study);
the gold target ids travel in the generation batch so that `_compute_loss` can add mu(t) * L_SFT; the reference
model is a frozen copy of the policy at the start (TRL would reload `config._name_or_path`, which for a merged
adapter is the base, not the SFT model). Logged each step: every reward component, the per-step rewards, mu, the
predicted-grade distribution and its entropy, per-grade recall, the SFT loss.

    afrl train rl --config training/configs/rl_tiny.yaml --output_dir /tmp/rl      # seconds, tiny model
    afrl train rl --config training/configs/rl_smollm2_trec.yaml                    # after the TREC SFT run

Re-running the same command resumes from the last checkpoint in `output_dir`.
"""

from __future__ import annotations

import copy
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from trl import GRPOTrainer
from trl.trainer.utils import pad

from afrl.contract import GradeScale, PromptBuilder
from afrl.manifest import MANIFEST_NAME, Manifest, load_verified
from training.data import Record
from training.losses import completion_nll
from training.rl.advantages import group_step_advantages, token_advantages
from training.rl.config import AfrlGRPOConfig
from training.rl.rewards import COMPONENTS, Gold, make_reward_funcs, step_reward_matrix
from training.rl.rollouts import contract_builder, prompt_and_gold_ids, rollout_metrics
from training.rl.schedule import sft_coef_at
from training.rl.steps import STEP_NAMES, NewlineCounter, token_steps

log = logging.getLogger(__name__)


def build_rl_dataset(
    records: list[Record], builder: PromptBuilder, scale: GradeScale, with_explanation: bool = True
) -> tuple[Any, dict[str, list[int]], list[list[int]]]:
    """(dataset, prompt ids by prompt text, gold target ids by record index).

    The dataset's `prompt` is the decoded AFRL prompt: TRL needs text, but decoding and re-encoding is not
    guaranteed to give the same ids, so the trainer looks the contract's ids up by that text instead.
    """
    from datasets import Dataset

    rows: list[dict[str, Any]] = []
    prompt_ids: dict[str, list[int]] = {}
    prompts, gold = prompt_and_gold_ids(records, builder, scale, with_explanation)
    for i, (r, ids) in enumerate(zip(records, prompts, strict=True)):
        text = builder.tokenizer.decode(ids)
        if prompt_ids.setdefault(text, ids) != ids:
            raise ValueError(f"two different prompts decode to the same text (record {r.id}); cannot key them")
        rows.append({"prompt": text, "record_index": i, "grade": r.grade, "document": r.document, "rule": r.rule or ""})
    return Dataset.from_list(rows), prompt_ids, gold


class AfrlGRPOTrainer(GRPOTrainer):  # type: ignore[misc]
    """GRPOTrainer with per-step advantages and the mu(t) * L_SFT term (see the module docstring)."""

    def __init__(
        self,
        *,
        model: Any,
        args: AfrlGRPOConfig,
        train_dataset: Any,
        processing_class: Any,
        prompt_ids: dict[str, list[int]],
        gold_ids: list[list[int]],
        scale: GradeScale,
        **kwargs: Any,
    ) -> None:
        weights = args.weights
        args.reward_weights = [weights[c] for c in COMPONENTS]
        super().__init__(
            model=model,
            reward_funcs=make_reward_funcs(scale),
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        self.afrl_args = args  # typed view of self.args (TRL types it as TrainingArguments)
        self.tokenizer_: Any = processing_class
        self.scale = scale
        self.weights = weights
        self.grade_ids = scale.token_ids(processing_class)
        self._prompt_ids = prompt_ids
        self._gold_ids = gold_ids
        self._newlines = NewlineCounter(processing_class)
        if self.beta != 0.0 and self.ref_model is not None:
            ref = copy.deepcopy(self.accelerator.unwrap_model(self.model)).eval()
            ref.requires_grad_(False)
            self.ref_model = self.accelerator.prepare_model(ref, evaluation_mode=True)

    # ------------------------------------------------------------------------------------------- prompts

    def _tokenize_prompts(self, prompts: list) -> tuple[list[list[int]], None, dict]:
        try:
            return [list(self._prompt_ids[p]) for p in prompts], None, {}
        except KeyError as e:
            raise ValueError("a prompt that the AFRL PromptBuilder did not build reached the RL trainer") from e

    # ------------------------------------------------------------------------------------------- mu(t)

    def _mode(self) -> str:
        model: Any = self.model
        return "train" if model.training else "eval"

    def current_sft_coef(self) -> float:
        a = self.afrl_args
        return sft_coef_at(
            self.state.global_step, self.state.max_steps, a.sft_coef, float(a.sft_coef_final or 0), a.sft_coef_schedule
        )

    def _uses_sft(self) -> bool:
        return self.afrl_args.sft_coef > 0 or float(self.afrl_args.sft_coef_final or 0) > 0

    # ------------------------------------------------------------------------------------------- rollouts

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        out = super()._generate_and_score_completions(inputs)
        mode = self._mode()
        num_generations: Any = self.num_generations if mode == "train" else self.num_generations_eval
        ids, mask = out["completion_ids"], out["completion_mask"]
        rows = [ids[i][: int(mask[i].sum())].tolist() for i in range(ids.shape[0])]
        texts = self.tokenizer_.batch_decode(rows, skip_special_tokens=True)
        golds = [Gold(int(x["grade"]), x["document"], x["rule"] or None) for x in inputs]
        rewards, _ = step_reward_matrix(texts, golds, self.scale, self.weights)
        steps = [torch.tensor(token_steps(r, self._newlines) or [0]) for r in rows]
        step_ids = pad(steps, padding_value=0, padding_side="right")[:, : ids.shape[1]]
        if step_ids.shape[1] < ids.shape[1]:
            step_ids = torch.nn.functional.pad(step_ids, (0, ids.shape[1] - step_ids.shape[1]))
        step_ids = step_ids.to(ids.device)
        if self.afrl_args.advantage_mode == "stepwise":
            # Groups may straddle processes (TRL distributes them): normalise over the gathered batch, keep ours.
            all_rewards = self.accelerator.gather(rewards.to(ids.device))
            step_adv = group_step_advantages(all_rewards, num_generations, scale=self.scale_rewards != "none")
            n = rewards.shape[0]
            start = self.accelerator.process_index * n
            out["advantages"] = token_advantages(step_adv[start : start + n], step_ids, mask)
        self._log_rollouts(mode, rows, inputs, rewards)
        if self._uses_sft():
            out.update(self._gold_batch(inputs, ids.device))
        return out

    def _gold_batch(self, inputs: list[dict[str, Any]], device: Any) -> dict[str, torch.Tensor]:
        """Gold prompt + target sequences, one per distinct record of the batch (the other rows are empty)."""
        seen: set[int] = set()
        seqs, labels, flags = [], [], []
        for x in inputs:
            idx = int(x["record_index"])
            if idx in seen:
                seqs.append(torch.tensor([], dtype=torch.long))
                labels.append(torch.tensor([], dtype=torch.long))
                flags.append(0)
                continue
            seen.add(idx)
            prompt, target = self._prompt_ids[x["prompt"]], self._gold_ids[idx]
            seqs.append(torch.tensor(prompt + target))
            labels.append(torch.tensor([-100] * len(prompt) + target))
            flags.append(1)
        pad_id = self._tokenizer.pad_token_id
        return {
            "sft_input_ids": pad(seqs, padding_value=pad_id, padding_side="right").to(device),
            "sft_attention_mask": pad([torch.ones_like(s) for s in seqs], padding_value=0, padding_side="right").to(
                device
            ),
            "sft_labels": pad(labels, padding_value=-100, padding_side="right").to(device),
            "sft_rows": torch.tensor(flags, device=device),
        }

    def _log_rollouts(self, mode: str, rows: list[list[int]], inputs: list[dict[str, Any]], rewards: torch.Tensor):
        metrics = self._metrics[mode]
        for s, name in enumerate(STEP_NAMES):
            metrics[f"step_reward/{name}"].append(rewards[:, s].mean().item())
        for key, value in rollout_metrics(rows, [int(x["grade"]) for x in inputs], self.grade_ids).items():
            metrics[key].append(value)

    # ------------------------------------------------------------------------------------------- loss

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        loss = super()._compute_loss(model, inputs)
        mode = self._mode()
        mu = self.current_sft_coef()
        self._metrics[mode]["mu"].append(mu)
        if mu > 0 and "sft_input_ids" in inputs:
            keep = inputs["sft_rows"].bool()
            if keep.any():
                nll, _ = completion_nll(
                    model, inputs["sft_input_ids"][keep], inputs["sft_attention_mask"][keep], inputs["sft_labels"][keep]
                )
                normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
                loss = loss + mu * nll / normalizer
                self._metrics[mode]["sft_loss"].append(nll.item())
        return loss


# ----------------------------------------------------------------------------------------------- entry point


def train_rl(config: AfrlGRPOConfig, records: list[Record] | None = None, callbacks: list[Any] | None = None) -> Path:
    """Run Stepwise-GRPO (or plain GRPO) from `config.model` and write full weights + manifest to output_dir.

    `callbacks` are transformers TrainerCallbacks (the study's rule-accuracy curve, training/study_curve.py)."""
    from transformers.trainer_utils import get_last_checkpoint

    from afrl.models import load_model
    from training.sources import training_records

    model, tokenizer, model_dir = load_model(config.model)
    if config.keep_layers:
        from afrl.layers import keep_layers

        model = keep_layers(model, config.keep_layers)
    model.train()
    builder, scale = contract_builder(tokenizer, model_dir, config)
    if records is None:
        records = training_records(config)
    log.info(
        "RL (%s, mu %s -> %s %s, kl %s) on %d records, grades %s",
        config.advantage_mode,
        config.sft_coef,
        config.sft_coef_final,
        config.sft_coef_schedule,
        config.kl_coef,
        len(records),
        dict(sorted(Counter(r.grade for r in records).items())),
    )
    dataset, prompt_ids, gold_ids = build_rl_dataset(records, builder, scale, config.explanations)
    if config.lora_r > 0:
        from training.sft import apply_lora

        model = apply_lora(model, config)  # type: ignore[arg-type]
    trainer = AfrlGRPOTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        prompt_ids=prompt_ids,
        gold_ids=gold_ids,
        scale=scale,
        callbacks=callbacks,
    )
    out = Path(str(config.output_dir))
    last = get_last_checkpoint(str(out)) if out.is_dir() else None
    if last:
        log.info("resuming from %s", last)
    trainer.train(resume_from_checkpoint=last)
    final = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(final, "merge_and_unload"):  # ship full weights: an adapter over an SFT folder would nest bases
        final = final.merge_and_unload()
    final.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "train_log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    base = load_verified(model_dir).base_model if (model_dir / MANIFEST_NAME).is_file() else config.model
    manifest = Manifest.for_builder(
        builder,
        scale,
        kind="rl",
        base_model=base,
        dtype="bfloat16-autocast" if config.bf16 else "float32",
        provenance={
            "init_model": str(config.model),
            "data": config.data,
            "records": len(records),
            "config": config.to_jsonable(),
        },
    )
    manifest.write(out)
    log.info("wrote %s", out)
    return out
