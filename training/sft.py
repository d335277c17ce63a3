"""SFT: teach a causal LM to write the AFRL target (grade token first, then the explanation).

Method: TRL's SFTTrainer on pre-tokenized examples built by the contract (`training/targets.py`), loss on the
assistant part only. Departures from the textbook recipe: a LoRA adapter by default (optionally on the top layers
only, which halves the backward pass on CPU), so that the shipped artifact is a few MB over the pinned base; the LM
head applied at completion positions only (`training/losses.py`); bf16 autocast only where bf16 is native (CUDA, or
a CPU with AMX / AVX512-BF16: emulated bf16 measured 2-5x slower than fp32 here); the output folder carries
`afrl.json` with the contract, data and config.

    afrl train sft --config training/configs/sft_smollm2_trec.yaml            # the first real model (CPU, ~1.5 h)
    afrl train sft --config training/configs/sft_tiny.yaml --output_dir /tmp/x  # seconds

Re-running the same command resumes from the last checkpoint in `output_dir`.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from afrl.contract import DEFAULT_INSTRUCTION, GradeScale, PromptBuilder
from afrl.manifest import Manifest
from training.config import AfrlSFTConfig
from training.sources import load_sources, subset, training_records
from training.targets import build_example

log = logging.getLogger(__name__)


def read_instruction(path: str | None) -> str:
    return Path(path).read_text().strip() if path else DEFAULT_INSTRUCTION


def build_dataset(records: list[Any], builder: PromptBuilder, scale: GradeScale, with_explanation: bool) -> Any:
    from datasets import Dataset

    grade_ids = scale.token_ids(builder.tokenizer)
    rows = [build_example(r, builder, scale, grade_ids, with_explanation) for r in records]
    return Dataset.from_list(rows)


def apply_lora(model: Any, config: AfrlSFTConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
        layers_to_transform=config.lora_layers,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def make_trainer_class() -> Any:
    """SFTTrainer with the completion-only loss computed by `training.losses` (head on the completion positions
    only) and, when `ranking_loss_weight` > 0, a listwise term over each batch, whose rows are then one query's
    documents in dataset order (`training.sources.query_groups`): the two changes this stage makes to TRL."""
    import torch
    from torch.utils.data import SequentialSampler
    from trl import SFTTrainer

    from training.losses import completion_nll_and_grade_logits, listwise_grade_loss

    class AfrlSFTTrainer(SFTTrainer):  # type: ignore[misc]
        args: AfrlSFTConfig
        grade_ids: list[int]  # the grade tokens' ids, set by train_sft

        def _get_train_sampler(self, train_dataset=None):  # type: ignore[no-untyped-def]
            if self.args.ranking_loss_weight > 0:  # batches must stay the query groups they were built as
                dataset: Any = train_dataset if train_dataset is not None else self.train_dataset
                return SequentialSampler(dataset)
            return super()._get_train_sampler(train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[no-untyped-def]
            loss, accuracy, first_logits = completion_nll_and_grade_logits(
                model,
                inputs["input_ids"],
                inputs["attention_mask"],
                inputs["labels"],
                grade_weight=self.args.grade_loss_weight,
            )
            mode = "train" if model.training else "eval"
            self._metrics[mode]["mean_token_accuracy"].append(accuracy.item())
            if self.args.ranking_loss_weight > 0 and model.training:
                rank = listwise_grade_loss(first_logits[:, self.grade_ids], self._gold_grades(inputs["labels"]))
                self._metrics[mode]["ranking_loss"].append(rank.item())
                loss = loss + self.args.ranking_loss_weight * rank
            return (loss, None) if return_outputs else loss

        def _gold_grades(self, labels: torch.Tensor) -> torch.Tensor:
            """The gold grade of each row: its first label token, looked up among the grade tokens."""
            first = labels.gather(1, (labels != -100).long().argmax(-1, keepdim=True)).squeeze(1)
            matches = first[:, None] == torch.tensor(self.grade_ids, device=labels.device)
            if not bool(matches.any(-1).all()):
                raise RuntimeError("a training row does not start its completion with a grade token")
            return matches.long().argmax(-1)

    return AfrlSFTTrainer


def train_sft(config: AfrlSFTConfig) -> Path:
    """Run SFT and write the model (adapter or full weights) and its manifest to `config.output_dir`."""
    from transformers.trainer_utils import get_last_checkpoint

    from afrl.models import load_model

    model, tokenizer, _ = load_model(config.model)
    if config.keep_layers:
        from afrl.layers import keep_layers

        model = keep_layers(model, config.keep_layers)
    model.train()
    scale = GradeScale()
    builder = PromptBuilder(
        tokenizer,
        instruction=read_instruction(config.instruction_file),
        max_query_tokens=config.max_query_tokens,
        max_document_tokens=config.max_document_tokens,
    )
    group = config.per_device_train_batch_size if config.ranking_loss_weight > 0 else None
    records = training_records(config, group_size=group)
    log.info("SFT on %d records, grades %s", len(records), dict(sorted(Counter(r.grade for r in records).items())))
    train_ds = build_dataset(records, builder, scale, config.explanations)
    eval_ds = None
    if config.dev_data:
        dev = load_sources(config.dev_data, config.dev_fraction, config.split_seed)
        eval_ds = build_dataset(subset(dev, 256), builder, scale, config.explanations)
    if config.lora_r > 0:
        model = apply_lora(model, config)
    trainer = make_trainer_class()(
        model=model, args=config, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer
    )
    trainer.grade_ids = scale.token_ids(tokenizer)
    if group and len(trainer.train_dataset) != len(train_ds):  # TRL drops fully truncated rows; groups would shift
        raise ValueError(
            f"TRL dropped {len(train_ds) - len(trainer.train_dataset)} training rows (completion truncated away), "
            "which breaks the one-query-per-batch groups of the ranking loss: raise max_length or lower the budgets"
        )
    out = Path(str(config.output_dir))
    last = get_last_checkpoint(str(out)) if out.is_dir() else None
    if last:
        log.info("resuming from %s", last)
    result = trainer.train(resume_from_checkpoint=last)
    trainer.model.save_pretrained(out)
    if config.lora_r == 0:
        tokenizer.save_pretrained(out)
    manifest = Manifest.for_builder(
        builder,
        scale,
        kind="sft",
        base_model=config.model,
        dtype="bfloat16-autocast" if config.bf16 else "float32",
        provenance={
            "data": config.data,
            "records": len(records),
            "config": jsonable_config(config),
            "train_loss": logged_train_loss(trainer.state.log_history, result.training_loss),
        },
        extra={"num_layers": config.keep_layers} if config.keep_layers else {},
    )
    manifest.write(out)
    log.info("wrote %s", out)
    return out


def logged_train_loss(history: list[dict[str, Any]], fallback: float) -> float:
    """Mean of the losses logged over the whole run. TRL's `training_loss` covers only the steps of the last
    `train()` call, so a resumed run would report the loss of its last few steps (or of none)."""
    losses = [float(h["loss"]) for h in history if "loss" in h]
    return sum(losses) / len(losses) if losses else float(fallback)


def jsonable_config(config: Any) -> dict[str, Any]:
    """The config's fields that JSON can hold as they are: the `provenance.config` of every stage's manifest."""
    plain = str | int | float | bool | list | dict
    return {k: v for k, v in asdict(config).items() if v is None or isinstance(v, plain)}
