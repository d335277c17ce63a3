"""`afrl batch-score` on the tiny model: the local engine gives exactly `afrl.Reranker`'s numbers, reruns skip
finished shards, bad rows become error rows, Parquet input reads like JSONL, and (slow: a real local Ray instance)
the Ray engine writes the same shards as the local one and retries the shard of a worker that died."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import afrl.batch_score
from afrl import Reranker
from afrl.batch_score import RUN_FILE, ScoreOptions, batch_score, shard_name
from afrl.cli import main
from afrl.manifest import model_fingerprint
from afrl.testing import save_tiny_model
from tests.service.service_helpers import DOCS, QUERY

QUERIES = [QUERY, "running shoes", "berlin"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("batch") / "tiny-qwen3")


@pytest.fixture(scope="module")
def opts(tiny_dir):
    return ScoreOptions(model=str(tiny_dir), dtype="fp32", threads=1, batch_size=4)


def pairs(n: int) -> list[dict]:
    """n rows; runs of one query (the prefix-reuse path) and mixed ones (the plain path)."""
    return [{"id": f"r{i}", "query": QUERIES[(i // 5) % 3], "document": DOCS[i % len(DOCS)]} for i in range(n)]


def write_jsonl(path: Path, rows: list, raw_lines: tuple[str, ...] = ()) -> Path:
    lines = [json.dumps(r) for r in rows] + list(raw_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def read_output(folder: Path) -> pd.DataFrame:
    return pd.read_parquet(folder).sort_values("row").reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ local engine


def test_local_engine_gives_the_rerankers_numbers(tmp_path, tiny_dir, opts):
    rows = pairs(40)
    summary = batch_score(write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out", opts, shard_size=16)
    assert (summary.rows, summary.shards, summary.scored, summary.errors) == (40, 3, 40, 0)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [RUN_FILE, *(shard_name(k) for k in range(3))]
    out = read_output(tmp_path / "out")
    with Reranker(str(tiny_dir), threads=1, dtype="fp32", batch_size=4) as reranker:
        expected = reranker.predict_grades([(r["query"], r["document"]) for r in rows])
    assert out["id"].tolist() == [r["id"] for r in rows]
    # Shards of 16 rows cut into the same chunks of 4 as the Reranker's own batches: the same passes, equal.
    assert out["score"].tolist() == [e.score for e in expected]
    assert out["grade"].tolist() == [e.grade for e in expected]
    assert [list(p) for p in out["probabilities"]] == [e.probabilities for e in expected]
    assert out["error"].isna().all() and out["explanation"].isna().all()
    assert set(out["model_sha256"]) == {model_fingerprint(tiny_dir)}
    assert len({round(s, 6) for s in out["score"]}) > 3  # the scores differ: equality above means something


def test_explanations_are_the_rerankers(tmp_path, tiny_dir, opts):
    rows = pairs(3)
    explain = dataclasses.replace(opts, explain=True, settings={"max_new_tokens": 6})
    batch_score(write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out", explain, shard_size=2)
    out = read_output(tmp_path / "out")
    with Reranker(str(tiny_dir), threads=1, dtype="fp32", max_new_tokens=6) as reranker:
        expected = ["".join(reranker.explain(r["query"], r["document"])) for r in rows]
    assert out["explanation"].tolist() == expected and all(expected)
    assert out["error"].isna().all()
    assert out["explanation_stopped"].tolist() == ["length"] * 3  # 6 tokens cut a random model's explanation


def test_an_instruction_and_a_lower_document_budget_score_as_the_reranker_does(tmp_path, tiny_dir, opts):
    rows = pairs(8)
    (tmp_path / "instruction.txt").write_text("Grade how well the document answers the query.\n")
    args = ["--model", str(tiny_dir), "--input", str(write_jsonl(tmp_path / "in.jsonl", rows)), "--dtype", "fp32"]
    args += [
        "--threads",
        "1",
        "--batch-size",
        "4",
        "--no-progress",
        "--instruction-file",
        str(tmp_path / "instruction.txt"),
    ]
    assert main(["batch-score", *args, "--output", str(tmp_path / "out"), "--max-document-tokens", "3"]) == 0
    out = read_output(tmp_path / "out")
    with Reranker(str(tiny_dir), threads=1, dtype="fp32", batch_size=4) as reranker:
        texts = [(r["query"], r["document"]) for r in rows]
        kept = reranker.predict_grades(
            texts, instruction="Grade how well the document answers the query.", max_document_tokens=3
        )
        plain = reranker.predict_grades(texts)
    assert out["score"].tolist() == [e.score for e in kept]
    assert out["score"].tolist() != [e.score for e in plain]  # the options reached the prompts
    run = json.loads((tmp_path / "out" / RUN_FILE).read_text())
    assert run["max_document_tokens"] == 3 and run["instruction_sha256"]
    with pytest.raises(ValueError, match="max_document_tokens: 3 then, 4 now"):
        batch_score(
            tmp_path / "in.jsonl",
            tmp_path / "out",
            dataclasses.replace(
                opts, instruction="Grade how well the document answers the query.", max_document_tokens=4
            ),
        )
    with pytest.raises(ValueError, match="instruction is empty"):
        ScoreOptions(instruction="  ")


def test_rerun_skips_finished_shards_and_refuses_another_run(tmp_path, opts, monkeypatch):
    source = write_jsonl(tmp_path / "in.jsonl", pairs(20))
    out = tmp_path / "out"
    batch_score(source, out, opts, shard_size=8)
    before = {k: (out / shard_name(k)).stat().st_mtime_ns for k in range(3)}
    first = read_output(out)
    (out / shard_name(1)).unlink()
    calls = []
    real = afrl.batch_score.score_shard
    monkeypatch.setattr(afrl.batch_score, "score_shard", lambda *a, **kw: calls.append(a[1][0].row) or real(*a, **kw))
    summary = batch_score(source, out, opts, shard_size=8)
    assert calls == [8]  # only the missing shard (rows 8..15) was scored again
    assert summary.skipped_shards == 2 and summary.scored == 20
    assert all((out / shard_name(k)).stat().st_mtime_ns == before[k] for k in (0, 2))
    pd.testing.assert_frame_equal(read_output(out), first)
    with pytest.raises(ValueError, match="shard_size: 8 then, 5 now"):
        batch_score(source, out, opts, shard_size=5)
    with pytest.raises(ValueError, match="input_sha256"):
        batch_score(write_jsonl(tmp_path / "other.jsonl", pairs(21)), out, opts, shard_size=8)


def test_a_run_killed_mid_write_leaves_no_partial_shard(tmp_path, opts, monkeypatch):
    source = write_jsonl(tmp_path / "in.jsonl", pairs(12))
    out = tmp_path / "out"
    real = pq.write_table

    def dies_on_shard_1(table, where, **kw):
        if table["row"][0].as_py() == 6:
            Path(where.name).write_bytes(b"PAR1 half a file")
            raise KeyboardInterrupt  # what a Ctrl-C mid-write looks like
        real(table, where, **kw)

    monkeypatch.setattr(pq, "write_table", dies_on_shard_1)
    with pytest.raises(KeyboardInterrupt):
        batch_score(source, out, opts, shard_size=6)
    assert (out / shard_name(0)).is_file() and not (out / shard_name(1)).exists()
    monkeypatch.setattr(pq, "write_table", real)
    summary = batch_score(source, out, opts, shard_size=6)
    assert (summary.skipped_shards, summary.scored) == (1, 12)
    assert not list(out.glob(".*.tmp"))  # the half-written temporary file was cleared


def test_bad_rows_land_in_the_error_column(tmp_path, opts, capsys, monkeypatch):
    good = pairs(6)
    rows = [
        *good[:3],
        {"id": "r1", "query": "q", "document": "a duplicate id"},
        {"id": "x1", "document": "no query"},
        {"id": "x2", "query": "q", "document": 7},
        {"id": "x3", "query": "   ", "document": "blank query"},
        {"query": "q", "document": "no id"},
        {"id": 1.5, "query": "q", "document": "a float id"},
        *good[3:],
        {"id": "x4", "query": "q", "document": "POISON"},
        {"id": 17, "query": "q", "document": "an integer id among strings"},
    ]
    source = write_jsonl(tmp_path / "in.jsonl", rows, raw_lines=('{"id": "x5", "query": ', "[1, 2]", ""))

    # One pair whose scoring raises: it becomes its row's error, and the rest of its chunk is still scored.
    real = Reranker.predict_grades

    def poisoned(self, pairs, *a, **kw):
        if any(d == "POISON" for _, d in pairs):
            raise RuntimeError("boom")
        return real(self, pairs, *a, **kw)

    monkeypatch.setattr(Reranker, "predict_grades", poisoned)
    args = ["--model", opts.model, "--input", str(source), "--output", str(tmp_path / "out"), "--dtype", "fp32"]
    rc = main(["batch-score", *args, "--threads", "1", "--batch-size", "4", "--shard-size", "5", "--no-progress"])
    assert rc == 0
    assert "16 rows in 4 shards (0 already done): 7 scored, 9 with an error" in capsys.readouterr().out
    out = read_output(tmp_path / "out")
    errors = dict(zip(out["row"], out["error"], strict=True))
    assert errors[3] == "duplicate id (first at row 1)"
    assert errors[4] == "missing query"
    assert errors[5] == "document must be a string, got int"
    assert errors[6] == "empty query"
    assert errors[7] == "missing id"
    assert errors[8] == "id must be a string or an integer, got float"
    assert errors[12] == "scoring failed: RuntimeError: boom"  # its chunk (rows 10-13) failed; 10, 11, 13 scored
    assert pd.isna(errors[13]) and out["id"][13] == "17"  # an integer id among strings is kept, as a string
    assert errors[14].startswith("line 15: not valid JSON")
    assert errors[15] == "line 16: a JSON list, not an object"
    assert pa.types.is_string(pq.read_schema(tmp_path / "out" / shard_name(0)).field("id").type)
    scored = out[out["error"].isna()]
    assert scored["score"].notna().all() and out[out["error"].notna()]["score"].isna().all()
    assert scored["id"].tolist() == [r["id"] for r in good] + ["17"]


def test_a_run_where_every_row_fails_exits_1(tmp_path, opts, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "query": "", "document": ""}], raw_lines=("nope",))
    args = ["--model", opts.model, "--input", str(source), "--output", str(tmp_path / "out"), "--dtype", "fp32"]
    rc = main(["batch-score", *args, "--no-progress"])
    assert rc == 1
    assert "0 scored, 2 with an error" in capsys.readouterr().out


def test_parquet_input_scores_like_jsonl(tmp_path, opts):
    rows = [{**r, "id": i, "extra": "ignored"} for i, r in enumerate(pairs(10))]
    rows[4]["document"] = None
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    write_jsonl(tmp_path / "in.jsonl", rows)
    batch_score(tmp_path / "in.parquet", tmp_path / "from_parquet", opts, shard_size=4)
    batch_score(tmp_path / "in.jsonl", tmp_path / "from_jsonl", opts, shard_size=4)
    from_parquet = read_output(tmp_path / "from_parquet")
    pd.testing.assert_frame_equal(from_parquet, read_output(tmp_path / "from_jsonl"))
    assert from_parquet["id"].tolist() == list(range(10))  # integer ids stay integers
    assert from_parquet["error"][4] == "missing document" and from_parquet["error"].isna().sum() == 9
    pq.write_table(pa.table({"id": [1], "text": ["x"]}), tmp_path / "wrong.parquet")
    with pytest.raises(ValueError, match=r"no column\(s\) \['query', 'document'\]"):
        batch_score(tmp_path / "wrong.parquet", tmp_path / "wrong", opts)


# ------------------------------------------------------------------------------------------------ Ray engine


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2)
    yield ray
    ray.shutdown()


RAY_ROWS = [*pairs(18), {"id": "bad", "query": 3, "document": "d"}, *pairs(24)[18:]]


@pytest.mark.slow
def test_ray_engine_writes_the_local_engines_shards(tmp_path, opts, local_ray):
    source = write_jsonl(tmp_path / "in.jsonl", RAY_ROWS, raw_lines=("{broken",))
    local = batch_score(source, tmp_path / "local", opts, shard_size=8)
    on_ray = batch_score(source, tmp_path / "ray", opts, engine="ray", shard_size=8, show_progress=False)
    assert (on_ray.rows, on_ray.scored, on_ray.errors) == (local.rows, local.scored, local.errors) == (26, 24, 2)
    pd.testing.assert_frame_equal(read_output(tmp_path / "ray"), read_output(tmp_path / "local"))  # exactly
    # Interchangeable: a local rerun over the Ray output finds every shard done.
    assert batch_score(source, tmp_path / "ray", opts, shard_size=8).skipped_shards == 4


def crash_once(marker: Path) -> type:
    """An actor class whose first call anywhere kills its worker process (as an OOM kill would), once."""
    from afrl.batch_ray import ShardScorer

    class CrashOnce(ShardScorer):
        def __call__(self, batch):
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)
            return super().__call__(batch)

    return CrashOnce


@pytest.mark.slow
def test_ray_engine_retries_the_shard_of_a_killed_worker(tmp_path, opts, local_ray):
    from afrl.batch_ray import run_ray
    from afrl.batch_score import id_type, read_rows, shards_of

    source = write_jsonl(tmp_path / "in.jsonl", pairs(12))
    batch_score(source, tmp_path / "local", opts, shard_size=6)
    out = tmp_path / "ray"
    out.mkdir()
    rows = read_rows(source)
    marker = tmp_path / "crashed"
    pending = list(enumerate(shards_of(rows, 6)))
    run_ray(pending, opts, model_fingerprint(Path(opts.model)), id_type(rows), out, scorer_cls=crash_once(marker))
    assert marker.exists()  # a worker did die mid-shard ...
    for k in range(2):  # ... and every shard was still written, with the local engine's numbers
        pd.testing.assert_frame_equal(
            pd.read_parquet(out / shard_name(k)), pd.read_parquet(tmp_path / "local" / shard_name(k))
        )
