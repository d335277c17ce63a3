"""Distillation from any relevance scorer, through a calibrated pool (`afrl train distill` with a non-AFRL teacher).

A teacher that is not an AFRL model (the embedded MiniLM bi-encoder, a sentence-transformers folder, a team's
`/rerank` URL; `training.teachers`) has no grade logits and writes no explanations. So the teacher pass is the
pool build (`training.pools`: real queries, retrieved candidates, teacher and BM25 scores fused into grade
distributions by a calibration fitted on human judgments), cached in the pool folder, and the student learns
from the pool with `training.pool_loss`:

    L = alpha * KL(calibrated grades || student) + listwise_weight * listwise KL over each query's group
        + (1 - alpha) * NLL(explanation), the explanation on a share of the pairs (`explanation_share`)

The explanation target is the documented template (`training.data.synthesize_explanation`) written for the grade
the calibrated teacher finds most likely: it quotes the passage span with the most query terms, so `/explain`
stays well-formed and its Evidence is a real quote; it is given to whole groups (`explanation_share` of them),
batched together, so padding stays small. Batches are whole query groups from different queries and sources (the
pool shuffles groups), so every batch mixes queries and a ranking term compares one query's candidates.

    afrl train pool --config training/configs/pool_minilm.yaml            # the teacher pass (cached)
    afrl train distill --config training/configs/distill_minilm_student.yaml
    afrl ship runs/distill_minilm_student --name minilm-student-6l

`time_budget_minutes` stops a run at a wall-clock budget (saving a checkpoint); re-running the same command
resumes from the last checkpoint in `output_dir`.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from afrl.contract import DEFAULT_INSTRUCTION, GradeScale, PromptBuilder, format_target
from afrl.manifest import Manifest, sha256_file
from afrl.scorer import pad_batch
from training.data import Record, synthesize_explanation
from training.pools import read_pool

if TYPE_CHECKING:
    from training.distill import AfrlDistillConfig

log = logging.getLogger(__name__)


def pool_folder(config: AfrlDistillConfig) -> Path:
    """The `pool:DIR` source of the config, built first from `pool_config` when the folder has no pool yet."""
    specs = [s for s in config.data if s.startswith("pool:")]
    if len(specs) != 1 or len(config.data) != 1:
        raise ValueError(
            f"a {config.teacher!r} teacher trains from one pool: set data to [pool:DIR], got {config.data}"
        )
    folder = Path(specs[0].partition(":")[2])
    if not (folder / "pool.jsonl").is_file():
        if not config.pool_config:
            raise FileNotFoundError(
                f"{folder} has no pool.jsonl: build it (afrl train pool --config ...) or set pool_config"
            )
        from training.config import parse_config
        from training.pools import PoolConfig, build_pool

        pool_cfg = parse_config(
            PoolConfig, ["--config", config.pool_config, "--output_dir", str(folder), "--teacher", config.teacher]
        )
        build_pool(pool_cfg)
    report = json.loads((folder / "pool_report.json").read_text())
    if report["config"]["teacher"] != config.teacher:
        raise ValueError(
            f"{folder} was labelled by teacher {report['config']['teacher']!r}, not {config.teacher!r}: "
            "rebuild the pool or point data at the pool of this teacher"
        )
    return folder


def whole_groups(rows: list[dict[str, Any]], group_size: int, limit: int | None) -> list[dict[str, Any]]:
    """The rows in file order, complete groups of `group_size` only, capped at `limit` rows (whole groups)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    kept = [g for g in groups.values() if len(g) == group_size]
    if limit is not None:
        kept = kept[: max(1, limit // group_size)]
    if not kept:
        raise ValueError(f"the pool has no group of exactly {group_size} rows; set group_size to the pool's")
    return [r for g in kept for r in g]


def explanation_groups(
    rows: Sequence[dict[str, Any]], share: float, per_batch: int, seed: int = 0
) -> tuple[list[dict[str, Any]], set[str]]:
    """A seeded `share` of the groups carry explanations; the rows are reordered so that those groups fill whole
    batches of `per_batch` groups together (an explanation adds ~60 tokens, and a batch pads to its longest row,
    so one explanation row would otherwise lengthen every row of its batch)."""
    rng = random.Random(seed)
    order = list(dict.fromkeys(r["group"] for r in rows))
    chosen = {g for g in order if rng.random() < share}
    plain = [g for g in order if g not in chosen]
    explained = [g for g in order if g in chosen]
    batches = [plain[i : i + per_batch] for i in range(0, len(plain), per_batch)]
    batches += [explained[i : i + per_batch] for i in range(0, len(explained), per_batch)]
    rng.shuffle(batches)
    by_group: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_group.setdefault(r["group"], []).append(r)
    return [r for batch in batches for g in batch for r in by_group[g]], chosen


def build_pool_rows(
    rows: Sequence[dict[str, Any]],
    builder: PromptBuilder,
    scale: GradeScale,
    grade_ids: Sequence[int],
    explained: set[str],
) -> list[dict[str, Any]]:
    """Model rows: the prompt (+ grade token and templated explanation for the groups in `explained`), labels on
    the explanation tokens only."""
    from training.targets import target_ids

    prompts = builder.build_many([(r["query"], r["document"]) for r in rows])
    out = []
    for r, prompt in zip(rows, prompts, strict=True):
        ids, labels = list(prompt.input_ids), [-100] * len(prompt.input_ids)
        if r["group"] in explained:
            grade = max(range(len(r["probs"])), key=lambda k: r["probs"][k])
            text = format_target(grade, synthesize_explanation(r["query"], r["document"], grade), scale)
            target = target_ids(builder.tokenizer, scale, list(grade_ids), text)
            ids += target
            labels += [-100, *target[1:]]  # the grade token is the KL's; the NLL covers the explanation
        out.append(
            {
                "input_ids": ids,
                "labels": labels,
                "grade_pos": len(prompt.input_ids) - 1,
                "teacher_probs": r["probs"],
                "teacher_score": r["score"],
            }
        )
    return out


def collate(rows: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    ids, mask = pad_batch([r["input_ids"] for r in rows], pad_id, "right")
    labels = torch.full_like(ids, -100)
    for i, r in enumerate(rows):
        labels[i, : len(r["labels"])] = torch.tensor(r["labels"])
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "grade_pos": torch.tensor([r["grade_pos"] for r in rows]),
        "teacher_probs": torch.tensor([r["teacher_probs"] for r in rows], dtype=torch.float32),
        "teacher_score": torch.tensor([r["teacher_score"] for r in rows], dtype=torch.float32),
    }


def make_trainer_class() -> Any:
    """transformers.Trainer with `pool_distill_loss`, batches kept as whole query groups, parts logged."""
    from torch.utils.data import SequentialSampler
    from transformers import Trainer

    from training.pool_loss import pool_distill_loss

    class PoolDistillTrainer(Trainer):  # type: ignore[misc]
        def __init__(self, *args: Any, grade_ids: Sequence[int], **kw: Any):
            super().__init__(*args, **kw)
            self.grade_ids = list(grade_ids)
            self._parts: dict[str, list[float]] = {"kl": [], "list": [], "nll": [], "spread": []}

        def _get_train_sampler(self, train_dataset=None):  # type: ignore[no-untyped-def]
            # the pool file is already shuffled by group; a random sampler would tear the groups apart
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)  # type: ignore[arg-type]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[no-untyped-def]
            a: Any = self.args  # an AfrlDistillConfig
            loss, parts = pool_distill_loss(
                model, inputs, self.grade_ids, a.alpha, a.listwise_weight, a.listwise_temperature, a.group_size
            )
            explained = bool((inputs["labels"] != -100).any())
            for k in self._parts:
                if k != "nll" or explained:  # a batch without explanations has NLL 0: it must not dilute the mean
                    self._parts[k].append(float(parts[k]))
            return (loss, parts) if return_outputs else loss

        def log(self, logs: dict[str, float], *args: Any, **kw: Any) -> None:
            for k, values in self._parts.items():
                if values:
                    logs[k] = sum(values) / len(values)
                    values.clear()
            super().log(logs, *args, **kw)

    return PoolDistillTrainer


def time_budget_callback(minutes: float | None, stop_at_step: int | None = None) -> Any:
    """Stops training (and saves a checkpoint) once `minutes` of wall clock have passed in this process, or at
    global step `stop_at_step`, whichever comes first."""
    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.start = time.monotonic()

        def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            if minutes is not None and time.monotonic() - self.start > minutes * 60:
                log.info("time budget of %.1f min reached at step %d: saving and stopping", minutes, state.global_step)
            elif stop_at_step is not None and state.global_step >= stop_at_step:
                log.info("stop_at_step %d reached: saving and stopping", stop_at_step)
            else:
                return control
            control.should_save = True
            control.should_training_stop = True
            return control

    return TimeBudget()


def train_from_pool(config: AfrlDistillConfig) -> Path:
    """Train the student on a calibrated pool and save it with its manifest (and the dev report when asked)."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from transformers.trainer_utils import get_last_checkpoint

    from afrl.models import resolve
    from training.distill import _tokenizer_folder, build_student, reload_check, reproduce_command
    from training.sft import jsonable_config, logged_train_loss

    if not config.student_model:
        raise ValueError(f"a {config.teacher!r} teacher has no layers to cut: set student_model (e.g. default-base)")
    folder = pool_folder(config)
    tokenizer = AutoTokenizer.from_pretrained(_tokenizer_folder(resolve(config.student_model)))
    scale = GradeScale()
    instruction = Path(config.instruction_file).read_text().strip() if config.instruction_file else DEFAULT_INSTRUCTION
    builder = PromptBuilder(
        tokenizer,
        instruction=instruction,
        max_query_tokens=config.max_query_tokens,
        max_document_tokens=config.max_document_tokens,
    )
    grade_ids = scale.token_ids(tokenizer)
    pool = whole_groups(read_pool(folder), config.group_size, config.max_train_records)
    per_batch = config.per_device_train_batch_size // config.group_size
    pool, explained = explanation_groups(pool, config.explanation_share, per_batch, config.seed)
    rows = build_pool_rows(pool, builder, scale, grade_ids, explained)
    log.info("pool %s: %d pairs in %d groups", folder, len(rows), len(rows) // config.group_size)
    student = build_student(config)
    student.model.train()
    if config.gradient_checkpointing and student.base_model is not None:
        student.model.enable_input_require_grads()
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    stops = (config.time_budget_minutes, config.stop_at_step)
    callbacks = [time_budget_callback(*stops)] if any(x is not None for x in stops) else []
    trainer = make_trainer_class()(
        model=student.model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        data_collator=lambda batch: collate(batch, pad_id),
        processing_class=tokenizer,
        grade_ids=grade_ids,
        callbacks=callbacks,
    )
    out = Path(str(config.output_dir))
    last = get_last_checkpoint(str(out)) if out.is_dir() else None
    if last:
        log.info("resuming from %s", last)
    result = trainer.train(resume_from_checkpoint=last)
    model = trainer.model
    model.save_pretrained(out)
    (out / "trainer_log.json").write_text(json.dumps(trainer.state.log_history, indent=1) + "\n")
    if student.base_model is None:
        tokenizer.save_pretrained(out)
    pool_report = json.loads((folder / "pool_report.json").read_text())
    extra: dict[str, Any] = {
        "teacher": config.teacher,
        "teacher_fingerprint": _teacher_fingerprint(config.teacher),
        "pool": {
            "folder": str(folder),
            "pool_sha256": sha256_file(folder / "pool.jsonl"),
            "calibration": json.loads((folder / "calibration.json").read_text()),
            "pairs_trained": len(rows),
            "steps": trainer.state.global_step,
            "report": {k: v for k, v in pool_report.items() if k != "config"},
        },
        "loss": {
            "alpha": config.alpha,
            "listwise_weight": config.listwise_weight,
            "listwise_temperature": config.listwise_temperature,
            "explanation_share": config.explanation_share,
        },
        "student_model": config.student_model,
        "student_layers": config.student_layers,
    }
    if student.num_layers:
        extra["num_layers"] = student.num_layers
    manifest = Manifest.for_builder(
        builder,
        scale,
        kind="distill",
        base_model=student.base_model or config.student_model,
        dtype="bfloat16-autocast" if config.bf16 else "float32",
        provenance={
            "data": config.data,
            "records": len(rows),
            "config": jsonable_config(config),
            "train_loss": logged_train_loss(trainer.state.log_history, result.training_loss),
            "command": reproduce_command(),
            "license": "trained on MS MARCO passages (TREC DL): non-commercial research use only",
        },
        extra=extra,
    )
    manifest.write(out)
    records = [Record(r["id"], r["query"], r["document"], 0) for r in pool[:8]]
    manifest.parity["reload_max_abs_diff"] = reload_check(model, out, records, builder)
    if config.report_trec_queries:
        manifest.extra["dev_report"] = dev_rerank_report(out, config)
        (out / "distill_report.json").write_text(json.dumps(manifest.extra["dev_report"], indent=2) + "\n")
    manifest.write(out)
    log.info("wrote %s", out)
    return out


def dev_rerank_report(out: Path, config: AfrlDistillConfig) -> dict[str, Any]:
    """The student's rerank of the first `report_trec_queries` dev queries of the config's `trec:DIR:dev` source."""
    from afrl.scorer import load_scorer
    from training.evaluate import evaluate_trec, split_qids

    trec = [s for s in config.dev_data if s.startswith("trec:")]
    if not trec:
        return {}
    directory = trec[0].split(":")[1]
    from training.data import TrecCollection

    qids = split_qids(TrecCollection.load(directory), "dev", config.dev_fraction, config.split_seed)
    qids = qids[: config.report_trec_queries]
    result = evaluate_trec(load_scorer(str(out)), directory, qids=qids)
    keys = ("ndcg@10", "mrr@10", "map", "bm25_ndcg@10", "shuffled_ndcg@10", "macro_f1", "accuracy", "ece")
    return {"trec_dir": directory, "queries": qids} | {k: result.get(k) for k in keys}


def _teacher_fingerprint(spec: str) -> str:
    from training.teachers import load_teacher

    return str(load_teacher(spec).fingerprint)  # no model is loaded for this
