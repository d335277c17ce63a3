"""Distillation: a small student learns the teacher's grade distribution and its explanations.

Method (DESIGN.md 5.5): the teacher scores every training pair once (its K+1 grade log-probabilities at the first
token) and writes an explanation after its own top grade; both go to a JSONL cache keyed by the teacher's manifest
hash, the prompt settings and the record id, so a rerun (or a second student) never calls the teacher again. That
pass is an `afrl batch-score` run (training/teacher_pass.py), in process or on a Ray cluster (`teacher_engine`). The
student trains on `training.distill_loss.distill_loss`:

    L = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) at the first token + (1 - alpha) * NLL(teacher explanation)

The student is a subset of the teacher's layers (`student_layers`, the teacher merged first if it is an adapter)
or any other model with the same tokenizer (`student_model`, optionally also cut to `student_layers`). With LoRA
(`lora_r` > 0), the student is saved as an adapter over the *base* cut to the kept layers (`extra.num_layers` in
`afrl.json`), so `afrl.models.load_model` rebuilds exactly the trained student, and a teacher that is itself a LoRA
adapter hands its adapter weights of the kept layers to the student as the starting point: the shipped student is
then a few MB over the pinned base. `lora_r: 0` fine-tunes all weights of the cut model instead (bigger artifact).

Departure from a TRL trainer: the loop is `transformers.Trainer` with `compute_loss` overridden and a 20-line
collator. SFTTrainer's dataset preparation (truncation, mask folding, dropping of unknown columns) would discard the
per-example teacher logits that the loss needs, and GKD (trl.experimental.gkd) distils full-vocabulary token
distributions on-policy, which is not this method.

    afrl train distill --config training/configs/distill_smollm2_trec.yaml     # the embedded student (CPU)
    afrl train distill --config training/configs/distill_tiny.yaml --teacher DIR --output_dir /tmp/d   # seconds
    afrl ship runs/distill_smollm2_trec --name distilled-smollm2   # into afrl/shipped/ (afrl/shipping.py)

Re-running the same command reuses the teacher cache and resumes from the last checkpoint in `output_dir`.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from afrl.contract import DEFAULT_INSTRUCTION, GradeScale, Prompt, PromptBuilder
from afrl.manifest import MANIFEST_NAME, Manifest, load_verified, model_fingerprint
from afrl.scorer import TorchScorer, pad_batch
from training.config import AfrlSFTConfig
from training.data import Record
from training.distill_loss import distill_loss
from training.sft import jsonable_config, logged_train_loss
from training.teacher_pass import teacher_cache

log = logging.getLogger(__name__)


@dataclass
class AfrlDistillConfig(AfrlSFTConfig):
    """Distillation of a teacher into a smaller student (LoRA fields as in SFT; `keep_layers` is not used)."""

    teacher: str = field(
        default="",
        metadata={
            "help": "teacher: an AFRL model (folder, `default`, hub id), `minilm` (the embedded bi-encoder), a "
            "sentence-transformers bi-/cross-encoder folder, or a Cohere-compatible /rerank URL"
        },
    )
    student_layers: list[int] | None = field(
        default=None, metadata={"help": "teacher (or student_model) layers the student keeps, in order"}
    )
    student_model: str | None = field(
        default=None, metadata={"help": "a smaller model sharing the teacher's tokenizer (instead of teacher layers)"}
    )
    alpha: float = field(default=0.5, metadata={"help": "weight of the grade KL; 1 - alpha weighs the explanation"})
    temperature: float = field(default=2.0, metadata={"help": "softmax temperature of the grade KL"})
    cache_dir: str | None = field(
        default=None, metadata={"help": "teacher cache folder (default: teacher_cache beside output_dir)"}
    )
    explanation_max_tokens: int = field(default=64, metadata={"help": "max tokens of a teacher explanation"})
    teacher_batch_size: int = field(default=8, metadata={"help": "pairs per teacher forward pass"})
    teacher_dtype: str = field(
        default="auto",
        metadata={"help": "teacher weights: auto (the service's choice: bf16 where it is fast), float32 or bfloat16"},
    )
    # The teacher pass is an `afrl batch-score` run (training.teacher_pass): in process, or on Ray Data.
    teacher_engine: str = field(default="local", metadata={"help": "teacher pass engine: local or ray"})
    teacher_ray_address: str | None = field(
        default=None, metadata={"help": "Ray cluster of the teacher pass (default: RAY_ADDRESS, else a local Ray)"}
    )
    teacher_shard_size: int = field(
        default=256, metadata={"help": "records per teacher-pass shard (the unit a killed pass resumes from)"}
    )
    cache_only: bool = field(default=False, metadata={"help": "write the teacher cache and stop (a separate job)"})
    report_records: int = field(default=0, metadata={"help": "dev pairs for the teacher-vs-student report (0: none)"})
    report_trec_queries: int = field(default=0, metadata={"help": "dev TREC queries reranked for nDCG@10 (0: none)"})
    # Teachers that are not AFRL models (training.teachers, training.distill_pool): data is one `pool:DIR`.
    pool_config: str | None = field(
        default=None, metadata={"help": "pool YAML (training.pools) to build `pool:DIR` when it has no pool yet"}
    )
    group_size: int = field(default=8, metadata={"help": "candidates per query group in a pool (batch = groups)"})
    listwise_weight: float = field(default=1.0, metadata={"help": "weight of the listwise KL over each query group"})
    listwise_temperature: float = field(default=0.1, metadata={"help": "tau of the listwise KL (scores in [0, 1])"})
    explanation_share: float = field(
        default=0.1, metadata={"help": "share of pool pairs trained with an explanation (the NLL term)"}
    )
    time_budget_minutes: float | None = field(
        default=None, metadata={"help": "stop (and save a checkpoint) after this many minutes; rerun to resume"}
    )
    stop_at_step: int | None = field(
        default=None,
        metadata={
            "help": "stop (and save) at this global step, the schedule still running to max_steps: a stage cut "
            "short on purpose, as the shipped default's explanation stage a was (step 200 of a 700-step cosine)"
        },
    )
    freeze_embeddings: bool = field(
        default=False,
        metadata={
            "help": "with lora_r 0: train the kept layers and final norm only, not the (tied) token embeddings and "
            "LM head, so the trained part is the layers (most of a small base's weights are its embeddings)"
        },
    )

    def __post_init__(self) -> None:
        if not self.teacher:
            raise ValueError("set `teacher` to the model to distil from (a folder, `default`, or a cached hub id)")
        if self.student_layers is None and self.student_model is None:
            raise ValueError("set `student_layers` (a subset of the teacher's layers) or `student_model`")
        if self.keep_layers:
            raise ValueError("distillation uses `student_layers`, not `keep_layers`")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.teacher_dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"teacher_dtype {self.teacher_dtype!r}: use auto, float32 or bfloat16")
        if self.teacher_engine not in ("local", "ray"):
            raise ValueError(f"teacher_engine {self.teacher_engine!r}: use local or ray")
        if self.teacher_shard_size < 1:
            raise ValueError(f"teacher_shard_size must be at least 1, got {self.teacher_shard_size}")
        if self.explanation_max_tokens < 1:
            raise ValueError("explanation_max_tokens must be >= 1")
        if self.freeze_embeddings and self.lora_r:
            raise ValueError("freeze_embeddings is for a full fine-tune (lora_r 0); LoRA never trains the embeddings")
        from training.teachers import teacher_kind

        if teacher_kind(self.teacher) != "afrl":
            if self.per_device_train_batch_size % self.group_size:
                raise ValueError(
                    f"per_device_train_batch_size {self.per_device_train_batch_size} must be a multiple of "
                    f"group_size {self.group_size}: a batch is whole query groups"
                )
            if not 0.0 <= self.explanation_share <= 1.0:
                raise ValueError("explanation_share must be in [0, 1]")
            if self.listwise_temperature <= 0:
                raise ValueError("listwise_temperature must be > 0")
        super().__post_init__()
        self.remove_unused_columns = False  # the collator needs the teacher-logit column the model never sees


# ---------------------------------------------------------------------------------------------------- teacher


def read_instruction_for(config: AfrlDistillConfig, teacher_path: Path) -> str:
    """The config's instruction file, else the teacher's own instruction (the student must see the same prompt)."""
    if config.instruction_file:
        return Path(config.instruction_file).read_text().strip()
    if (teacher_path / MANIFEST_NAME).is_file():
        return Manifest.read(teacher_path).instruction
    return DEFAULT_INSTRUCTION


# ---------------------------------------------------------------------------------------------------- student


@dataclass
class Student:
    model: Any
    base_model: str | None  # what the saved adapter applies over (None: saved as a full model)
    num_layers: list[int] | None  # layers of that base to keep before applying the adapter


def _remap_adapter(state: dict[str, torch.Tensor], layers: Sequence[int]) -> dict[str, torch.Tensor]:
    """Adapter weights of the kept layers, renumbered to the student's layer indices."""
    new_index = {old: new for new, old in enumerate(layers)}
    out = {}
    for name, tensor in state.items():
        m = re.search(r"\.layers\.(\d+)\.", name)
        if m is None:
            raise ValueError(f"teacher adapter weight {name!r} is not inside a decoder layer; cannot carry it over")
        old = int(m.group(1))
        if old in new_index:
            out[name[: m.start(1)] + str(new_index[old]) + name[m.end(1) :]] = tensor
    return out


def build_student(config: AfrlDistillConfig) -> Student:
    """The student to train: teacher (or student_model) layers, LoRA or full, ready to save and reload exactly."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    from afrl.layers import keep_layers
    from afrl.models import is_adapter, load_model, resolve
    from training.sft import apply_lora

    source = config.student_model or config.teacher
    path = resolve(source)
    layers = config.student_layers
    if config.lora_r == 0:  # full fine-tune of the (merged) source cut to the chosen layers
        model, _, _ = load_model(source)
        if layers:
            model = keep_layers(model, layers)
        if config.freeze_embeddings:
            for module in (model.get_input_embeddings(), model.get_output_embeddings()):
                module.weight.requires_grad_(False)
        return Student(model, None, None)
    if not is_adapter(path):
        model, _, _ = load_model(source)
        if layers:
            model = keep_layers(model, layers)
        return Student(apply_lora(model, config), source, list(layers) if layers else None)
    # The source is an adapter over a base: the student is that base cut to the kept layers, with the source's
    # adapter weights of those layers as the starting LoRA (same rank and modules, so they load as they are).
    manifest = load_verified(path)
    if manifest.extra.get("num_layers"):
        raise ValueError(f"{source} is already a layer-subset adapter; distil from a full-depth teacher")
    base, _, _ = load_model(manifest.base_model)
    n = base.config.num_hidden_layers
    layers = list(layers) if layers else list(range(n))
    base = keep_layers(base, layers)
    src_cfg = json.loads((path / "adapter_config.json").read_text())
    src_state = load_file(str(path / "adapter_model.safetensors"))
    carried = _remap_adapter(src_state, layers)
    carried_layers = sorted({int(re.search(r"\.layers\.(\d+)\.", k).group(1)) for k in carried})  # type: ignore[union-attr]
    lora_layers = sorted(set(config.lora_layers or range(len(layers))) | set(carried_layers))
    # A student rank above the teacher's pads the teacher's factors (A: fresh rows, B: zero columns), with alpha
    # scaled so that alpha / r, and so B @ A * alpha / r, is unchanged: the start is still exactly the teacher's.
    teacher_r = int(src_cfg["r"])
    rank = max(config.lora_r, teacher_r)
    lora = LoraConfig(
        r=rank,
        lora_alpha=src_cfg["lora_alpha"] * rank / teacher_r,
        lora_dropout=config.lora_dropout,
        target_modules=sorted(src_cfg["target_modules"]),
        layers_to_transform=lora_layers,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, lora)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in carried.items():
            target = params.get(name.replace(".weight", ".default.weight"))
            if target is None:
                raise ValueError(f"teacher adapter weight {name} has no place in the student")
            if ".lora_A." in name:
                target[: tensor.shape[0]] = tensor
            else:
                target.zero_()
                target[:, : tensor.shape[1]] = tensor
    log.info("student: %d of %d base layers, %d teacher adapter tensors carried over", len(layers), n, len(carried))
    return Student(model, manifest.base_model, layers)


# ---------------------------------------------------------------------------------------------------- data


def build_rows(
    records: Sequence[Record], cache: dict[str, dict[str, Any]], builder: PromptBuilder, grade_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """Prompt + teacher completion ids, labels on the explanation only, grade position and teacher logits."""
    eos = int(builder.tokenizer.eos_token_id)
    rows = []
    for r, prompt in zip(records, builder.build_many([(r.query, r.document) for r in records]), strict=True):
        entry = cache[r.id]
        explanation = list(entry["explanation_ids"]) + ([eos] if entry["finished"] and entry["explanation_ids"] else [])
        ids = [*prompt.input_ids, grade_ids[entry["grade"]], *explanation]
        labels = [-100] * (len(prompt.input_ids) + 1) + explanation
        rows.append(
            {
                "input_ids": ids,
                "labels": labels,
                "grade_pos": len(prompt.input_ids) - 1,
                "teacher_logits": entry["grade_logits"],
            }
        )
    return rows


def make_collator(pad_id: int) -> Any:
    def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids, mask = pad_batch([r["input_ids"] for r in rows], pad_id, "right")
        labels = torch.full_like(ids, -100)
        for i, r in enumerate(rows):
            labels[i, : len(r["labels"])] = torch.tensor(r["labels"])
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": labels,
            "grade_pos": torch.tensor([r["grade_pos"] for r in rows]),
            "teacher_logits": torch.tensor([r["teacher_logits"] for r in rows], dtype=torch.float32),
        }

    return collate


def make_trainer_class() -> Any:
    """transformers.Trainer whose loss is `distill_loss`; KL and NLL are logged beside the total."""
    from transformers import Trainer

    class DistillTrainer(Trainer):  # type: ignore[misc]
        def __init__(self, *args: Any, grade_ids: Sequence[int], alpha: float, temperature: float, **kw: Any):
            super().__init__(*args, **kw)
            self.grade_ids, self.alpha, self.temperature = list(grade_ids), alpha, temperature
            self._parts: dict[str, list[float]] = {"kl": [], "nll": []}

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[no-untyped-def]
            loss, parts = distill_loss(
                model,
                inputs["input_ids"],
                inputs["attention_mask"],
                inputs["labels"],
                inputs["grade_pos"],
                inputs["teacher_logits"],
                self.grade_ids,
                self.alpha,
                self.temperature,
            )
            self._parts["kl"].append(parts["kl"].item())
            self._parts["nll"].append(parts["nll"].item())
            return (loss, parts) if return_outputs else loss

        def log(self, logs: dict[str, float], *args: Any, **kw: Any) -> None:
            for k, values in self._parts.items():
                if values:
                    logs[k] = sum(values) / len(values)
                    values.clear()
            super().log(logs, *args, **kw)

    return DistillTrainer


# ---------------------------------------------------------------------------------------------------- stage


def reproduce_command() -> str:
    """The command line this process was started with, as `afrl ...` when it came through the CLI."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name == "afrl":
        return shlex.join(["afrl", *argv[1:]])
    return shlex.join([Path(sys.executable).name, *argv])


def train_distill(config: AfrlDistillConfig) -> Path:
    """Cache the teacher, train the student, save it with its manifest (and the dev report when asked)."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from transformers.trainer_utils import get_last_checkpoint

    from afrl.models import load_model, resolve
    from training.sources import training_records
    from training.teachers import teacher_kind

    if teacher_kind(config.teacher) != "afrl":  # a bi-/cross-encoder or a /rerank URL: through a calibrated pool
        from training.distill_pool import train_from_pool

        return train_from_pool(config)
    teacher_path = resolve(config.teacher)
    tokenizer = AutoTokenizer.from_pretrained(_tokenizer_folder(teacher_path))
    scale = GradeScale()
    builder = PromptBuilder(
        tokenizer,
        instruction=read_instruction_for(config, teacher_path),
        max_query_tokens=config.max_query_tokens,
        max_document_tokens=config.max_document_tokens,
    )
    grade_ids = scale.token_ids(tokenizer)

    def load_teacher() -> TorchScorer:  # for the dev report, once the student is trained
        model, _, _ = load_model(config.teacher, dtype=_teacher_dtype(config.teacher_dtype))
        model.to("cuda" if torch.cuda.is_available() else "cpu")
        return TorchScorer(model, tokenizer, builder, scale, batch_size=config.teacher_batch_size)

    teacher_hash = model_fingerprint(teacher_path)
    records = training_records(config)
    cache = teacher_cache(records, config, builder.instruction, teacher_hash, tokenizer)
    if config.cache_only:
        log.info("cache_only: the teacher cache is complete for %d records", len(records))
        return Path(str(config.output_dir))

    if config.student_model:
        student_tok = AutoTokenizer.from_pretrained(_tokenizer_folder(resolve(config.student_model)))
        if student_tok.get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"student_model {config.student_model} does not share the teacher's tokenizer")
    keep_teacher = bool(config.report_records or config.report_trec_queries)
    student = build_student(config)
    student.model.train()
    if config.gradient_checkpointing and student.base_model is not None:
        # checkpointed blocks over a frozen base see no input that requires grad; LoRA would get no gradient
        student.model.enable_input_require_grads()
    rows = build_rows(records, cache, builder, grade_ids)
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    trainer = make_trainer_class()(
        model=student.model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        data_collator=make_collator(pad_id),
        processing_class=tokenizer,
        grade_ids=grade_ids,
        alpha=config.alpha,
        temperature=config.temperature,
    )
    out = Path(str(config.output_dir))
    last = get_last_checkpoint(str(out)) if out.is_dir() else None
    if last:
        log.info("resuming from %s", last)
    result = trainer.train(resume_from_checkpoint=last)
    model = trainer.model
    distributed = config.world_size > 1
    if distributed:  # gathers ZeRO-3 shards into one checkpoint (and writes the tokenizer and training args too)
        trainer.save_model(str(out))
        if not trainer.is_world_process_zero():
            return out
    else:
        model.save_pretrained(out)
    (out / "trainer_log.json").write_text(json.dumps(trainer.state.log_history, indent=1) + "\n")
    if student.base_model is None:
        tokenizer.save_pretrained(out)
    extra: dict[str, Any] = {
        "teacher": config.teacher,
        "teacher_fingerprint": teacher_hash,
        "alpha": config.alpha,
        "temperature": config.temperature,
        "student_layers": config.student_layers,
        "student_model": config.student_model,
    }
    if student.num_layers:
        extra["num_layers"] = student.num_layers
    manifest = Manifest.for_builder(
        builder,
        scale,
        kind="distill",
        base_model=student.base_model or config.student_model or config.teacher,
        dtype="bfloat16-autocast" if config.bf16 else "float32",
        provenance={
            "data": config.data,
            "records": len(records),
            "config": jsonable_config(config),
            "train_loss": logged_train_loss(trainer.state.log_history, result.training_loss),
            "command": reproduce_command(),
        },
        extra=extra,
    )
    manifest.write(out)
    if not distributed:  # the in-memory student is sharded across ranks otherwise
        manifest.parity["reload_max_abs_diff"] = reload_check(model, out, records[:8], builder)
    if keep_teacher:
        manifest.extra["dev_report"] = dev_report(load_teacher(), out, config)
        (out / "distill_report.json").write_text(json.dumps(manifest.extra["dev_report"], indent=2) + "\n")
    manifest.write(out)
    log.info("wrote %s", out)
    return out


def _tokenizer_folder(path: Path) -> Path:
    """Where a model's tokenizer lives: the folder itself, or for an adapter without one, its base."""
    from afrl.models import resolve

    if (path / "tokenizer_config.json").is_file():
        return path
    return resolve(Manifest.read(path).base_model)


def _teacher_dtype(name: str) -> Any:
    if name == "auto":
        from afrl.hardware import bf16_is_fast

        return torch.bfloat16 if torch.cuda.is_available() and bf16_is_fast() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def reload_check(model: Any, out: Path, records: Sequence[Record], builder: PromptBuilder) -> float:
    """Max |logit difference| between the in-memory student and the one `load_scorer` rebuilds from `out`."""
    from afrl.scorer import load_scorer

    model.eval()
    # The scorer reads `model.model` (the decoder): unwrap PEFT, whose LoRA layers stay injected in the base.
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    mem = TorchScorer(inner, builder.tokenizer, builder, GradeScale())
    loaded = load_scorer(str(out))
    prompts = builder.build_many([(r.query, r.document) for r in records])
    diff = float((mem.logits_for_prompts(prompts) - loaded.logits_for_prompts(prompts)).abs().max())
    log.info("reloaded student: max |grade logit difference| %.2e", diff)
    return diff


def dev_report(teacher: TorchScorer, out: Path, config: AfrlDistillConfig) -> dict[str, Any]:
    """Teacher vs student on the dev split: macro-F1, grade agreement, nDCG@10, and the scoring speed ratio."""
    from afrl.scorer import load_scorer
    from training.evaluate import evaluate_records, evaluate_trec
    from training.sources import load_sources, subset

    student = load_scorer(str(out), batch_size=teacher.batch_size)
    report: dict[str, Any] = {}
    if config.report_records and config.dev_data:
        dev = subset(load_sources(config.dev_data, config.dev_fraction, config.split_seed), config.report_records)
        prompts = teacher.builder.build_many([(r.query, r.document) for r in dev])
        t_time, t_logits = _timed(teacher, prompts)
        s_time, s_logits = _timed(student, prompts)
        report["records"] = len(dev)
        report["grade_agreement"] = float((t_logits.argmax(-1) == s_logits.argmax(-1)).float().mean())
        report["speed_ratio"] = t_time / s_time
        report["teacher"] = _metrics(evaluate_records(teacher, dev))
        report["student"] = _metrics(evaluate_records(student, dev))
    trec = [s for s in config.dev_data if s.startswith("trec:")]
    if config.report_trec_queries and trec:
        from training.data import TrecCollection, split_by_query

        directory = trec[0].split(":")[1]
        coll = TrecCollection.load(directory)
        _, dev_qids = split_by_query(
            [q for q in coll.queries if q in coll.qrels], config.dev_fraction, config.split_seed
        )
        qids = [q for q in dev_qids if q in coll.run][: config.report_trec_queries]
        report["trec_queries"] = qids
        report["teacher_ndcg@10"] = evaluate_trec(teacher, directory, qids=qids)["ndcg@10"]
        report["student_ndcg@10"] = evaluate_trec(student, directory, qids=qids)["ndcg@10"]
        report["ndcg_kept"] = report["student_ndcg@10"] / max(report["teacher_ndcg@10"], 1e-9)
    log.info("dev report: %s", json.dumps(report))
    return report


def _timed(scorer: TorchScorer, prompts: Sequence[Prompt], repeats: int = 2) -> tuple[float, torch.Tensor]:
    best, logits = float("inf"), torch.empty(0)
    for _ in range(repeats):
        start = time.perf_counter()
        logits = scorer.logits_for_prompts(prompts)
        best = min(best, time.perf_counter() - start)
    return best, logits


def _metrics(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k in ("accuracy", "macro_f1", "ndcg@10")}
