"""The distillation teacher pass: an AFRL teacher's grade distribution and explanation for every training record,
computed once into a JSONL cache, and computed by `afrl batch-score` (afrl/batch_score.py).

Why batch-score: it is the project's one way of scoring a file of pairs at scale. The teacher pass then scores
exactly as the service and `afrl batch-score` do (the same prompt building, batcher, grade math, and the
constrained explanation decoder of the torch backend). It resumes shard by shard, and with `teacher_engine: ray`
(and `teacher_ray_address`) the pass of a teacher too big for one process runs on a Ray cluster, one teacher per
actor and a GPU per actor where the cluster has them, with no code change.

    teacher-<key>.jsonl       the cache: one line per record id (below); a rerun computes only the missing ids
    teacher-<key>.pass-<h>/   a pass in progress: input.jsonl (the missing records) and scored/ (batch-score's
                              shards). Deleted once its rows are in the cache; a killed pass resumes from its shards.

A cache line: `{"id", "grade_logits": [K+1 floats], "grade", "explanation_ids", "explanation", "finished"}`.
`grade_logits` are the log-probabilities of the grades (the distillation KL only sees their softmax, so they are
as good as raw logits, and log-probabilities from any other engine, vLLM say, are valid too). `explanation_ids`
are the teacher tokenizer's ids of what follows the grade token (the contract's newline, then the explanation),
`finished` whether the teacher ended it itself (eos) rather than at `explanation_max_tokens`.

The key names what the cache depends on: the teacher's files, the instruction, the document budget, whether
explanations are wanted and their length. The teacher scores with its own manifest's prompt settings, its
document budget lowered to the config's `max_document_tokens` when that is smaller (the student's prompts use the
config's budgets).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from afrl.contract import sha256_text

if TYPE_CHECKING:
    from training.data import Record
    from training.distill import AfrlDistillConfig

log = logging.getLogger(__name__)

# 2: computed by batch-score (log-probabilities, constrained explanations); version-1 caches are recomputed.
PASS_VERSION = 2
SERVICE_DTYPES = {"auto": "auto", "float32": "fp32", "bfloat16": "bf16"}
# A config's instruction file may be long; the service's 256-token limit guards request latency, not this pass.
_INSTRUCTION_LIMIT = 8192


def cache_key(teacher_hash: str, instruction: str, config: AfrlDistillConfig) -> str:
    settings = {
        "version": PASS_VERSION,
        "teacher": teacher_hash,
        "instruction": sha256_text(instruction),
        "max_document_tokens": config.max_document_tokens,
        "explanations": config.explanations,
        "explanation_max_tokens": config.explanation_max_tokens,
    }
    return sha256_text(json.dumps(settings, sort_keys=True))[:16]


def cache_folder(config: AfrlDistillConfig) -> Path:
    # Beside the output folder, not in it: the cache must not be hashed into (and shipped with) the student.
    if config.cache_dir:
        return Path(config.cache_dir)
    return Path(str(config.output_dir)).resolve().parent / "teacher_cache"


def teacher_cache(
    records: Sequence[Record],
    config: AfrlDistillConfig,
    instruction: str,
    teacher_hash: str,
    tokenizer: Any,
) -> dict[str, dict[str, Any]]:
    """Cache entries per record id, the missing ones computed by a batch-score run of the teacher and appended.
    `instruction` is the one the student trains with: the config's file, else the teacher's own."""
    folder = cache_folder(config)
    folder.mkdir(parents=True, exist_ok=True)
    key = cache_key(teacher_hash, instruction, config)
    path = folder / f"teacher-{key}.jsonl"
    cache = read_cache(path)
    todo = [r for r in dict((r.id, r) for r in records).values() if r.id not in cache]
    log.info("teacher cache %s: %d cached, %d to compute", path, len(cache), len(todo))
    if not todo:
        return cache
    if config.world_size > 1:  # every rank would run the teacher and append to the same file
        raise RuntimeError(
            f"the teacher cache misses {len(todo)} records; write it first in one process "
            "(the same command with --cache_only true, without accelerate launch), then launch the student"
        )
    work = _pass_folder(folder, key, todo)
    scored = run_pass(todo, config, instruction, work)
    entries = [entry_from_row(scored[r.id], tokenizer) for r in todo]
    with path.open("a", encoding="utf-8") as f:
        for r, entry in zip(todo, entries, strict=True):
            entry["id"] = r.id
            cache[r.id] = entry
            f.write(json.dumps(entry) + "\n")
        f.flush()
    shutil.rmtree(work)
    return cache


def read_cache(path: Path) -> dict[str, dict[str, Any]]:
    cache: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                cache[entry["id"]] = entry
    return cache


def _pass_folder(folder: Path, key: str, todo: Sequence[Record]) -> Path:
    """This pass's folder, named by the records it scores (so a killed pass resumes and a changed set starts
    anew), with its batch-score input written. Folders of other record sets for the same key are stale."""
    digest = sha256_text(json.dumps([r.id for r in todo]))[:12]
    work = folder / f"teacher-{key}.pass-{digest}"
    for stale in folder.glob(f"teacher-{key}.pass-*"):
        if stale != work:
            log.warning("removing %s: a teacher pass over another set of records", stale)
            shutil.rmtree(stale)
    work.mkdir(exist_ok=True)
    source = work / "input.jsonl"
    if not source.is_file():
        tmp = work / ".input.jsonl.tmp"
        with tmp.open("w", encoding="utf-8") as f:
            for r in todo:
                f.write(json.dumps({"id": r.id, "query": r.query, "document": r.document}) + "\n")
        tmp.replace(source)
    return work


def score_options(config: AfrlDistillConfig, instruction: str) -> Any:
    """The batch-score options of the pass: the config's teacher, batch, dtype, instruction and budgets."""
    from afrl.batch_score import ScoreOptions
    from afrl.manifest import MANIFEST_NAME, Manifest
    from afrl.models import resolve

    teacher_path = resolve(config.teacher)
    own = Manifest.read(teacher_path).instruction if (teacher_path / MANIFEST_NAME).is_file() else None
    return ScoreOptions(
        model=config.teacher,
        backend="torch",
        dtype=SERVICE_DTYPES[config.teacher_dtype],  # type: ignore[arg-type]
        batch_size=config.teacher_batch_size,
        explain=config.explanations,
        instruction=None if instruction == own else instruction,
        max_document_tokens=config.max_document_tokens,
        settings={
            "max_new_tokens": config.explanation_max_tokens,
            "max_instruction_tokens": _INSTRUCTION_LIMIT,
        },
    )


def run_pass(
    todo: Sequence[Record], config: AfrlDistillConfig, instruction: str, work: Path
) -> dict[str, dict[str, Any]]:
    """batch-score's output row per record id; a row that failed stops the pass with its error."""
    import pyarrow.parquet as pq

    from afrl.batch_score import batch_score

    opts = score_options(config, instruction)
    address = config.teacher_ray_address or os.environ.get("RAY_ADDRESS")
    ray_options = {"address": address} if config.teacher_engine == "ray" else None
    summary = batch_score(
        work / "input.jsonl",
        work / "scored",
        opts,
        engine=config.teacher_engine,  # type: ignore[arg-type]
        shard_size=config.teacher_shard_size,
        ray_options=ray_options,
    )
    log.info("teacher pass: %s", summary.line())
    rows = pq.read_table(work / "scored").to_pylist()
    failed = [r for r in rows if r["error"] is not None]
    if failed:
        raise RuntimeError(
            f"the teacher failed on {len(failed)} of {len(rows)} records (first: id {failed[0]['id']}: "
            f"{failed[0]['error']}); fix those records or the teacher, then delete {work} and rerun"
        )
    return {str(r["id"]): r for r in rows}


def entry_from_row(row: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """A cache entry from one batch-score output row."""
    text = row["explanation"] or ""
    # What follows the grade token in a completion: the contract's newline, then the explanation (format_target).
    ids = tokenizer("\n" + text, add_special_tokens=False)["input_ids"] if text else []
    return {
        "grade_logits": [math.log(max(p, 1e-45)) for p in row["probabilities"]],
        "grade": int(row["grade"]),
        "explanation_ids": ids,
        "explanation": text,
        "finished": row["explanation_stopped"] == "eos",
    }
