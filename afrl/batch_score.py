"""`afrl batch-score`: score a file of (query, document) pairs into Parquet shards, resumably, in process or on
Ray Data (afrl/batch_ray.py).

    afrl batch-score --model default --input pairs.jsonl --output scored/
    afrl batch-score --model default --input pairs.parquet --output scored/ --engine ray [--ray-address ADDR]

Input: JSONL lines `{"id", "query", "document"}` or Parquet with those columns. The driver reads and checks every
row (bad JSON, a missing, empty or non-string query or document, a missing or duplicate id): a bad row becomes
an output row with its `error`, never a stop. Rows are cut into fixed shards of `shard_size` by row order, so
every run cuts an input the same way.

Output, under DIR: `part-NNNNN.parquet`, one row per input row (`row`, `id`, `grade`, `score`, `probabilities`,
`explanation`, `explanation_stopped` (eos, length, or the explanation constraint's end), `model_sha256`, `error`),
and `_batch_score.json`, what the shards were computed from. A shard is
written to a hidden temporary file and renamed, so a shard file exists only when complete; a rerun skips it, and
one whose input, model, shard size or settings differ is refused. Readers of DIR (`pandas.read_parquet(DIR)`,
pyarrow datasets) skip the `_` and `.` files.

Scoring is `afrl.Reranker`, i.e. the service's prompt building, batcher and grade math (a score here is what
POST /score gives), run by `score_shard`, the one function both engines call: a shard scored in process and one
scored by a Ray actor go through the same passes, so the two engines' outputs are interchangeable. The
distillation teacher pass (training/teacher_pass.py) is a batch-score run too, so a big teacher's pass scales out
on Ray the same way.

Why the driver reads the input rather than `ray.data.read_json`: Ray's readers fail a whole read task on one bad
line and give no global row order, and both are needed for error rows and for shards that a rerun recognises.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import pyarrow as pa

    from afrl.reranker import Reranker

log = logging.getLogger(__name__)

RUN_FILE = "_batch_score.json"
RUN_VERSION = 2  # 2: the explanation_stopped column, instruction and document budget options
# What a rerun must share with the run that wrote the shards; batch size and threads only change float rounding.
RESUME_KEYS = (
    "version",
    "input_sha256",
    "rows",
    "shard_size",
    "id_type",
    "model_sha256",
    "backend",
    "dtype",
    "explain",
    "instruction_sha256",
    "max_document_tokens",
)
Engine = Literal["local", "ray"]


@dataclass
class Row:
    """One input row: its position, id, texts, and why it cannot be scored (None when it can)."""

    row: int
    id: str | int | None
    query: str | None
    document: str | None
    error: str | None = None


@dataclass
class ScoreOptions:
    """How every scorer (the local one, each Ray actor) is built; plain values, so they travel to Ray actors."""

    model: str = "default"
    backend: Literal["torch", "onnx"] = "torch"
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    threads: int | None = None
    batch_size: int = 32
    explain: bool = False
    instruction: str | None = None  # instead of the model's own (as /rerank's `instruction`)
    max_document_tokens: int | None = None  # a lower document budget (as /rerank's `max_tokens_per_doc`)
    settings: dict[str, Any] = field(default_factory=dict)  # any other service setting (max_new_tokens, ...)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.max_document_tokens is not None and self.max_document_tokens < 1:
            raise ValueError(f"max_document_tokens must be at least 1, got {self.max_document_tokens}")
        if self.instruction is not None and not self.instruction.strip():
            raise ValueError("instruction is empty: leave it unset to use the model's own")


@dataclass
class Summary:
    rows: int
    shards: int
    skipped_shards: int
    scored: int
    errors: int
    output: str
    seconds: float

    def line(self) -> str:
        return (
            f"batch-score: {self.rows} rows in {self.shards} shards ({self.skipped_shards} already done): "
            f"{self.scored} scored, {self.errors} with an error -> {self.output} ({self.seconds:.1f} s)"
        )


# ------------------------------------------------------------------------------------------------ input


def read_rows(path: Path) -> list[Row]:
    """Every row of a JSONL or Parquet file, checked; ids are made one type (see `unify_ids`)."""
    if path.suffix in (".parquet", ".pq"):
        raws: Iterator[tuple[dict[str, Any] | None, str | None]] = ((r, None) for r in _parquet_records(path))
    else:
        raws = _jsonl_records(path)
    rows = [_check(i, raw, problem) for i, (raw, problem) in enumerate(raws)]
    unify_ids(rows)
    return rows


def _parquet_records(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    missing = [c for c in ("id", "query", "document") if c not in names]
    if missing:
        raise ValueError(f"{path} has no column(s) {missing}; batch-score reads `id`, `query` and `document`")
    return pq.read_table(path, columns=["id", "query", "document"]).to_pylist()  # type: ignore[no-any-return]


def _jsonl_records(path: Path) -> Iterator[tuple[dict[str, Any] | None, str | None]]:
    """(record, None) per non-blank line, or (None, why) for a line that is not a JSON object."""
    with path.open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                yield None, f"line {number}: not valid JSON ({e.msg} at column {e.colno})"
                continue
            if isinstance(record, dict):
                yield record, None
            else:
                yield None, f"line {number}: a JSON {type(record).__name__}, not an object"


def _check(i: int, raw: dict[str, Any] | None, problem: str | None) -> Row:
    if raw is None:
        return Row(i, None, None, None, problem)
    problems = []
    rid = raw.get("id")
    if rid is None:
        problems.append("missing id")
    elif isinstance(rid, bool) or not isinstance(rid, str | int):
        problems.append(f"id must be a string or an integer, got {type(rid).__name__}")
        rid = None
    elif rid == "":
        problems.append("empty id")
    texts = []
    for name in ("query", "document"):
        value = raw.get(name)
        if value is None:
            problems.append(f"missing {name}")
        elif not isinstance(value, str):
            problems.append(f"{name} must be a string, got {type(value).__name__}")
        elif not value.strip():
            problems.append(f"empty {name}")
        texts.append(value if isinstance(value, str) else None)
    return Row(i, rid, texts[0], texts[1], "; ".join(problems) or None)


def unify_ids(rows: list[Row]) -> None:
    """Integer ids stay integers when every id is one; otherwise all become strings (Parquet wants one type).
    The second and later rows of an id are errors: the output is keyed by id."""
    kind = "int" if all(isinstance(r.id, int) for r in rows if r.id is not None) else "string"
    first: dict[str | int, int] = {}
    for r in rows:
        if r.id is None:
            continue
        if kind == "string":
            r.id = str(r.id)
        if r.id in first:
            r.error = "; ".join(filter(None, [r.error, f"duplicate id (first at row {first[r.id]})"]))
        else:
            first[r.id] = r.row


def id_type(rows: Sequence[Row]) -> Literal["int", "string"]:
    """The Parquet type of the `id` column, once `unify_ids` has run."""
    return "string" if any(isinstance(r.id, str) for r in rows) else "int"


def shards_of(rows: Sequence[Row], shard_size: int) -> list[list[Row]]:
    return [list(rows[i : i + shard_size]) for i in range(0, len(rows), shard_size)]


def shard_name(k: int) -> str:
    return f"part-{k:05d}.parquet"


# ------------------------------------------------------------------------------------------------ scoring


def load_reranker(opts: ScoreOptions) -> Reranker:
    """The Reranker both engines score with, on the GPU when this process has one (a Ray actor given num_gpus):
    the torch backend's `device: auto` (service/backends/cuda.py)."""
    from afrl.reranker import Reranker

    settings: dict[str, Any] = {"dtype": opts.dtype, **opts.settings}
    if opts.threads:
        settings["threads"] = opts.threads
    return Reranker(opts.model, opts.backend, batch_size=opts.batch_size, show_progress_bar=False, **settings)


def score_shard(
    reranker: Reranker,
    rows: Sequence[Row],
    opts: ScoreOptions,
    model_sha256: str,
    kind: Literal["int", "string"],
    on_progress: Callable[[int], None] | None = None,
) -> pa.Table:
    """The output table of one shard, in row order: valid rows scored `batch_size` at a time, bad ones with their
    error. A chunk that fails is scored pair by pair, so one bad pair costs only its own row."""
    out = {r.row: _result(r, None) for r in rows}
    bad = sum(r.error is not None for r in rows)
    if on_progress and bad:
        on_progress(bad)
    valid = [r for r in rows if r.error is None]
    for start in range(0, len(valid), opts.batch_size):
        chunk = valid[start : start + opts.batch_size]
        for r, (result, error) in zip(chunk, _score_chunk(reranker, chunk, opts), strict=True):
            out[r.row] = _result(r, result, error)
            if opts.explain and result is not None:
                out[r.row].update(_explain(reranker, r, opts))
        if on_progress:
            on_progress(len(chunk))
    records = [{**out[r.row], "model_sha256": model_sha256} for r in rows]
    import pyarrow as pa

    return pa.Table.from_pylist(records, schema=result_schema(kind))


def _score_chunk(reranker: Reranker, chunk: Sequence[Row], opts: ScoreOptions) -> list[tuple[Any, str | None]]:
    pairs = [(r.query or "", r.document or "") for r in chunk]
    try:
        results = reranker.predict_grades(
            pairs, instruction=opts.instruction, max_document_tokens=opts.max_document_tokens
        )
        return [(result, None) for result in results]
    except Exception as e:  # a row-level failure is that row's error, never the run's
        if len(pairs) == 1:
            return [(None, f"scoring failed: {type(e).__name__}: {e}")]
    return [_score_chunk(reranker, [r], opts)[0] for r in chunk]


def _explain(reranker: Reranker, r: Row, opts: ScoreOptions) -> dict[str, str | None]:
    """The row's `explanation`, `explanation_stopped` and `error` columns."""
    try:
        with reranker.explain(
            r.query or "", r.document or "", instruction=opts.instruction, max_document_tokens=opts.max_document_tokens
        ) as explanation:
            text = "".join(explanation)
            stopped = explanation.result["stopped"] if explanation.result else None
            return {"explanation": text, "explanation_stopped": stopped, "error": None}
    except Exception as e:
        why = f"explanation failed: {type(e).__name__}: {e}"
        return {"explanation": None, "explanation_stopped": None, "error": why}


def _result(r: Row, result: Any, error: str | None = None) -> dict[str, Any]:
    return {
        "row": r.row,
        "id": r.id,
        "grade": None if result is None else result.grade,
        "score": None if result is None else result.score,
        "probabilities": None if result is None else list(result.probabilities),
        "explanation": None,
        "explanation_stopped": None,
        "error": r.error if r.error is not None else error,
    }


def result_schema(kind: Literal["int", "string"]) -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("row", pa.int64()),
            ("id", pa.int64() if kind == "int" else pa.string()),
            ("grade", pa.int64()),
            ("score", pa.float64()),
            ("probabilities", pa.list_(pa.float64())),
            ("explanation", pa.string()),
            ("explanation_stopped", pa.string()),
            ("model_sha256", pa.string()),
            ("error", pa.string()),
        ]
    )


def write_shard(table: pa.Table, output: Path, k: int) -> Path:
    """Write a shard atomically: a hidden temporary file, flushed to disk, then renamed into place."""
    import pyarrow.parquet as pq

    final = output / shard_name(k)
    tmp = output / f".{final.name}.{os.getpid()}.tmp"
    with tmp.open("wb") as f:
        pq.write_table(table, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return final


# ------------------------------------------------------------------------------------------------ the run


def batch_score(
    input_path: str | Path,
    output: str | Path,
    opts: ScoreOptions,
    engine: Engine = "local",
    shard_size: int = 1000,
    ray_options: dict[str, Any] | None = None,
    show_progress: bool = True,
) -> Summary:
    """Score every pending shard of `input_path` into `output` and count the whole output (skipped shards too).
    `ray_options` go to `afrl.batch_ray.run_ray` (address, actors, cpus_per_actor, gpus_per_actor)."""
    from afrl.contract import sha256_text
    from afrl.manifest import model_fingerprint, sha256_file
    from afrl.models import resolve

    t0 = time.monotonic()
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    input_path, output = Path(input_path), Path(output)
    if not input_path.is_file():
        raise FileNotFoundError(f"input {input_path} not found")
    rows = read_rows(input_path)
    if not rows:
        raise ValueError(f"{input_path} has no rows")
    kind = id_type(rows)
    model_sha256 = model_fingerprint(resolve(opts.model))
    run = {
        "version": RUN_VERSION,
        "input": str(input_path),
        "input_sha256": sha256_file(input_path),
        "rows": len(rows),
        "shard_size": shard_size,
        "id_type": kind,
        "model": opts.model,
        "model_sha256": model_sha256,
        "backend": opts.backend,
        "dtype": opts.dtype,
        "explain": opts.explain,
        "instruction_sha256": None if opts.instruction is None else sha256_text(opts.instruction),
        "max_document_tokens": opts.max_document_tokens,
        "settings": opts.settings,
    }
    _claim(output, run)
    shards = shards_of(rows, shard_size)
    pending = [(k, s) for k, s in enumerate(shards) if not (output / shard_name(k)).is_file()]
    log.info("%d rows, %d shards, %d to score (%s engine)", len(rows), len(shards), len(pending), engine)
    from tqdm.auto import tqdm

    # The local model loads before the bar starts, so that the bar's rate is the scoring rate.
    reranker = load_reranker(opts) if pending and engine == "local" else None
    bar = tqdm(total=sum(len(s) for _, s in pending), desc="batch-score", unit="pair", disable=not show_progress)
    try:
        if reranker is not None:
            for k, shard in pending:
                write_shard(score_shard(reranker, shard, opts, model_sha256, kind, bar.update), output, k)
        elif pending:
            from afrl.batch_ray import run_ray

            run_ray(pending, opts, model_sha256, kind, output, on_progress=bar.update, **(ray_options or {}))
    finally:
        bar.close()
        if reranker is not None:
            reranker.close()
    scored, errors = _count(output, len(shards))
    return Summary(
        len(rows), len(shards), len(shards) - len(pending), scored, errors, str(output), time.monotonic() - t0
    )


def _claim(output: Path, run: dict[str, Any]) -> None:
    """Record the run in DIR, or check that DIR's shards come from the same input, model and settings."""
    output.mkdir(parents=True, exist_ok=True)
    for tmp in output.glob(".part-*.tmp"):  # left by a killed run; one run per DIR at a time
        tmp.unlink()
    path = output / RUN_FILE
    if path.is_file():
        before = json.loads(path.read_text())
        differ = [k for k in RESUME_KEYS if before.get(k) != run.get(k)]
        if differ:
            shown = ", ".join(f"{k}: {before.get(k)!r} then, {run.get(k)!r} now" for k in differ)
            raise ValueError(
                f"{output} holds shards of another batch-score run ({shown}); "
                "pass a new --output, or delete the folder to start over"
            )
        return
    if any(output.glob("part-*.parquet")):
        raise ValueError(f"{output} holds Parquet shards but no {RUN_FILE}: pass a new --output")
    path.write_text(json.dumps(run, indent=2) + "\n")


def _count(output: Path, n_shards: int) -> tuple[int, int]:
    """(rows with a score, rows with an error) over every shard file of the run."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    scored = errors = 0
    for k in range(n_shards):
        path = output / shard_name(k)
        if not path.is_file():
            raise RuntimeError(f"shard {path.name} is missing after the run")
        table = pq.read_table(path, columns=["score", "error"])
        scored += len(table) - table["score"].null_count
        errors += int(pc.sum(pc.is_valid(table["error"])).as_py() or 0)
    return scored, errors


def rows_to_json(rows: Sequence[Row]) -> str:
    """A shard as one JSON string (how it travels to a Ray actor); `rows_from_json` reverses it."""
    return json.dumps([asdict(r) for r in rows])


def rows_from_json(text: str) -> list[Row]:
    return [Row(**r) for r in json.loads(text)]
