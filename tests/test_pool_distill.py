"""Distillation from non-AFRL teachers: calibration, the embedded teacher's checksum, pools, HTTP teachers, training.

Everything here runs on synthetic TREC folders and stub teachers (a bag-of-words "bi-encoder", a scripted
Cohere-compatible /rerank server on loopback) and a tiny random-weight student, in seconds.
"""

from __future__ import annotations

import hashlib
import json
import threading
import zipfile
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from afrl.contract import sha256_text
from afrl.embedded_teacher import ChecksumError, embedded_teacher_dir, verify_weights
from afrl.testing import save_tiny_model
from training.calibration import GradeCalibration, fit_calibration
from training.data import split_by_query
from training.pools import PoolConfig, build_pool, read_pool, sample_groups
from training.teachers import HttpRerankTeacher, teacher_kind

TOPICS = {
    "berlin": "berlin population city germany inhabitants capital",
    "coffee": "coffee beans roast espresso caffeine brew",
    "python": "python snake reptile venom species scales",
    "rocket": "rocket launch orbit fuel engine space",
    "violin": "violin strings bow music orchestra wood",
    "glacier": "glacier ice melt mountain valley climate",
    "tennis": "tennis racket serve court match player",
    "bread": "bread flour yeast oven dough bake",
    "saturn": "saturn rings planet moons gas giant",
    "honey": "honey bees hive nectar sweet wax",
    "volcano": "volcano lava eruption magma ash crater",
    "chess": "chess board king queen pawn opening",
}


def _words(text: str) -> list[str]:
    return [w for w in text.lower().replace("?", " ").split() if w.isalpha()]


class BagOfWordsTeacher:
    """A stub bi-encoder: hashed bag-of-words unit vectors, so cosine follows word overlap."""

    kind = "bi-encoder"
    fingerprint = sha256_text("bag-of-words stub")

    def encode(self, texts: Sequence[str], desc: str = "") -> np.ndarray:
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in _words(t):
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % 64] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        q, d = self.encode([p[0] for p in pairs]), self.encode([p[1] for p in pairs])
        return (q * d).sum(1)


def _write_trec(folder: Path, topics: list[str], judged: bool, prefix: str) -> None:
    """A TREC folder: one query per topic, 12 passages per topic (4 on topic, 8 mixing other topics)."""
    folder.mkdir(parents=True)
    names = list(TOPICS)
    queries, passages, qrels, run = [], [], [], []
    for qi, topic in enumerate(topics):
        qid = f"{prefix}{qi}"
        words = TOPICS[topic].split()
        queries.append(f"{qid}\t{words[0]} {words[1]} {words[2]}")
        for j in range(12):
            other = TOPICS[names[(names.index(topic) + 1 + j) % len(names)]].split()
            text = " ".join(words[: 6 - j // 2] + other[: j // 2 + 1]) if j < 4 else " ".join(other + words[:1])
            docid = f"{prefix}d{qi}_{j}"
            passages.append(f"{docid}\t{text}")
            run.append(f"{qid} Q0 {docid} {j + 1} {12 - j} bm25")
            if judged:
                qrels.append(f"{qid} 0 {docid} {3 - j if j < 3 else 0}")
    (folder / "queries.tsv").write_text("\n".join(queries) + "\n")
    (folder / "passages.tsv").write_text("\n".join(passages) + "\n")
    (folder / "bm25_top100.run").write_text("\n".join(run) + "\n")
    if judged:
        (folder / "qrels.txt").write_text("\n".join(qrels) + "\n")


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    names = list(TOPICS)
    _write_trec(tmp_path / "dla", names[:10], judged=True, prefix="a")
    _write_trec(tmp_path / "dlb", names[10:], judged=False, prefix="b")
    web = tmp_path / "web.tsv"
    web.write_text("id\tsource\tquery\nw1\tx\tsaturn rings moons\nw2\tx\tbake bread dough\nw3\tx\tzzz qqq\n")
    return {"judged": tmp_path / "dla", "unjudged": tmp_path / "dlb", "web": web, "root": tmp_path}


def _pool_config(folders: dict[str, Path], out: Path, **kw: object) -> PoolConfig:
    values: dict[str, object] = {
        "teacher": "stub",
        "judged": [str(folders["judged"])],
        "dev_folder": str(folders["judged"]),
        "unjudged": [str(folders["unjudged"])],
        "web_queries": str(folders["web"]),
        "dev_fraction": 0.2,
        "retrieve_k": 10,
        "group_size": 4,
        "groups_per_judged_query": 2,
        "groups_per_unjudged_query": 1,
        "min_best_relevance": 0.0,
        "output_dir": str(out),
    }
    values.update(kw)
    return PoolConfig(**values)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------- calibration


def test_calibration_recovers_a_known_monotone_mapping():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6000, 2))
    true_w, true_theta = np.array([2.0, -1.0]), np.array([-1.5, 0.5, 2.0])
    latent = x @ true_w + rng.logistic(size=len(x))
    grades = np.searchsorted(true_theta, latent)  # grade k where theta_{k-1} < latent <= theta_k
    cal = fit_calibration(x, grades.tolist(), ["a", "b"])
    # standardised features: w_std = w * scale, theta_std = theta - w . mean
    w = np.asarray(cal.weights) / np.asarray(cal.scale)
    theta = np.asarray(cal.thresholds) + np.asarray(cal.mean) @ w
    assert np.allclose(w, true_w, atol=0.15)
    assert np.allclose(theta, true_theta, atol=0.15)
    truth = GradeCalibration(["a", "b"], [0.0, 0.0], [1.0, 1.0], true_w.tolist(), true_theta.tolist())
    probe = rng.normal(size=(200, 2))
    assert np.abs(cal.predict_proba(probe) - truth.predict_proba(probe)).max() < 0.05
    # monotone: a higher score never lowers the expected grade
    line = np.stack([np.linspace(-3, 3, 50), np.zeros(50)], 1)
    assert np.all(np.diff(cal.expected_grade(line)) > 0)


def test_calibration_round_trips_and_refuses_missing_grades(tmp_path):
    x = np.arange(8, dtype=float)[:, None]
    cal = fit_calibration(x, [0, 0, 1, 1, 2, 2, 3, 3], ["s"])
    cal.save(tmp_path / "c.json")
    assert np.allclose(GradeCalibration.load(tmp_path / "c.json").predict_proba(x), cal.predict_proba(x))
    with pytest.raises(ValueError, match="every grade"):
        fit_calibration(x, [0, 0, 1, 1, 3, 3, 3, 3], ["s"])


# ---------------------------------------------------------------------------------------------------- embedded teacher


def _teacher_zip(path: Path, weights: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("model.safetensors", weights)
    return path


def test_embedded_teacher_refuses_weights_with_another_checksum(tmp_path):
    z = _teacher_zip(tmp_path / "model.zip", b"not the genuine MiniLM")
    with pytest.raises(ChecksumError, match="not the pinned"):
        embedded_teacher_dir(zip_path=z, target=tmp_path / "cache" / "teacher")
    assert not (tmp_path / "cache" / "teacher").exists()  # nothing half-unpacked is left to be used


def test_verify_weights_accepts_the_expected_digest(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    verify_weights(tmp_path, hashlib.sha256(b"weights").hexdigest())
    with pytest.raises(ChecksumError):
        verify_weights(tmp_path, "0" * 64)


def test_teacher_kind_from_the_spec(tmp_path):
    st = tmp_path / "st"
    st.mkdir()
    (st / "modules.json").write_text("[]")
    ce = tmp_path / "ce"
    ce.mkdir()
    (ce / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"]}))
    assert teacher_kind("minilm") == "bi-encoder"
    assert teacher_kind(str(st)) == "bi-encoder"
    assert teacher_kind(str(ce)) == "cross-encoder"
    assert teacher_kind("http://127.0.0.1:9/rerank") == "http-rerank"
    assert teacher_kind("default") == "afrl"


# ---------------------------------------------------------------------------------------------------- pools


def test_sample_groups_mixes_top_middle_and_tail():
    import random

    groups = sample_groups(list(range(40)), 8, 3, random.Random(0))
    assert len(groups) == 3
    for g in groups:
        assert len(set(g)) == 8
        assert min(g) < 10 and max(g) >= 30  # one of the best and one of the tail in every group


def test_pool_never_emits_a_dev_query_or_a_dev_passage(folders, tmp_path):
    config = _pool_config(folders, tmp_path / "pool")
    build_pool(config, teacher=BagOfWordsTeacher())
    rows = read_pool(tmp_path / "pool")
    qids = sorted(f"a{i}" for i in range(10))
    _, dev = split_by_query(qids, 0.2, 0)
    dev_docs = {f"ad{q[1:]}_{j}" for q in dev for j in range(12)}
    assert dev and not {r["qid"] for r in rows} & set(dev)
    assert not {r["docid"] for r in rows} & dev_docs
    assert {r["source"] for r in rows} == {"dla-judged", "dlb", "web"}
    for group in {r["group"] for r in rows}:
        members = [r for r in rows if r["group"] == group]
        assert len(members) == 4 and len({r["qid"] for r in members}) == 1
    for r in rows:
        assert sum(r["probs"]) == pytest.approx(1.0, abs=1e-3)
        assert r["score"] == pytest.approx(sum(k * p for k, p in enumerate(r["probs"])) / 3, abs=1e-3)
    judged = [r for r in rows if "human_grade" in r]
    assert judged and all(int(np.argmax(r["probs"])) == r["human_grade"] for r in judged)  # human weight 0.8
    report = json.loads((tmp_path / "pool" / "pool_report.json").read_text())
    assert report["pairs"] == len(rows) and sum(report["label_histogram"]) == len(rows)
    assert (tmp_path / "pool" / "calibration_teacher_only.json").is_file()


def test_pool_filters_web_queries_by_teacher_confidence(folders, tmp_path):
    build_pool(_pool_config(folders, tmp_path / "all"), teacher=BagOfWordsTeacher())
    build_pool(_pool_config(folders, tmp_path / "strict", min_best_relevance=0.999), teacher=BagOfWordsTeacher())
    kept = [
        json.loads((tmp_path / n / "pool_report.json").read_text())["web_queries"]["kept"] for n in ("all", "strict")
    ]
    assert kept[0] == 3 and kept[1] < kept[0]


# ---------------------------------------------------------------------------------------------------- HTTP teacher


@pytest.fixture
def rerank_server() -> Iterator[tuple[str, list[dict]]]:
    """A scripted Cohere-compatible /rerank on loopback: relevance = share of query words in the document."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            seen.append(body)
            if body["query"] == "fail":
                self.send_response(500)
                self.end_headers()
                self.wfile.write(b"boom")
                return
            q = set(_words(body["query"]))
            scores = [len(q & set(_words(d))) / max(1, len(q)) for d in body["documents"]]
            results = sorted(
                ({"index": i, "relevance_score": s} for i, s in enumerate(scores)), key=lambda r: -r["relevance_score"]
            )
            data = json.dumps({"results": results}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/rerank", seen
    server.shutdown()


def test_http_teacher_maps_results_back_to_pairs(rerank_server):
    url, seen = rerank_server
    teacher = HttpRerankTeacher(url, max_documents=2)
    pairs = [("coffee beans", "coffee beans roast"), ("coffee beans", "tennis court"), ("saturn", "saturn rings")]
    pairs.append(("coffee beans", "beans only"))
    scores = teacher.score(pairs)
    assert scores.tolist() == pytest.approx([1.0, 0.0, 1.0, 0.5])
    assert len(seen) == 3  # two chunks for the first query (max_documents=2), one for the second
    with pytest.raises(RuntimeError, match="answered 500"):
        teacher.score([("fail", "x")])


# ---------------------------------------------------------------------------------------------------- training


def _group_agreement(model_dir: Path, rows: list[dict], group_size: int) -> float:
    """Mean listwise KL of the teacher's ranking to the student's over the pool's groups (lower is closer)."""
    from afrl.scorer import load_scorer
    from training.pool_loss import listwise_kl

    scorer = load_scorer(str(model_dir))
    results = scorer.score([(r["query"], r["document"]) for r in rows])
    student = torch.tensor([res.score for res in results])
    teacher = torch.tensor([r["score"] for r in rows])
    return float(listwise_kl(student, teacher, group_size, 0.1))


@pytest.mark.parametrize("arch", ["qwen3", "bert"])  # a causal student and a prefix LM (afrl.prefix_lm)
def test_distillation_from_a_rerank_server_moves_the_student_toward_its_ranking(folders, tmp_path, rerank_server, arch):
    from training.config import parse_config
    from training.distill import AfrlDistillConfig, train_distill

    url, _ = rerank_server
    pool_dir = tmp_path / "pool"
    build_pool(_pool_config(folders, pool_dir, teacher=url, groups_per_judged_query=3, groups_per_unjudged_query=3))
    student_dir = save_tiny_model(tmp_path / "tiny", arch=arch, num_layers=2)
    argv = ["--teacher", url, "--student_model", str(student_dir), "--data", f"pool:{pool_dir}"]
    argv += ["--output_dir", str(tmp_path / "student"), "--group_size", "4", "--per_device_train_batch_size", "8"]
    argv += ["--lora_r", "0", "--learning_rate", "3e-3", "--max_steps", "80", "--alpha", "0.9"]
    argv += ["--listwise_weight", "3.0", "--explanation_share", "0.2", "--max_query_tokens", "16"]
    argv += ["--max_document_tokens", "32", "--report_to", "none", "--save_strategy", "no", "--logging_steps", "5"]
    config = parse_config(AfrlDistillConfig, argv)
    rows = read_pool(pool_dir)
    before = _group_agreement(student_dir, rows, 4)
    out = train_distill(config)
    after = _group_agreement(out, rows, 4)
    assert after < 0.7 * before, (before, after)
    manifest = json.loads((out / "afrl.json").read_text())
    assert manifest["extra"]["teacher"] == url
    assert (
        manifest["extra"]["pool"]["pool_sha256"] == hashlib.sha256((pool_dir / "pool.jsonl").read_bytes()).hexdigest()
    )
    assert manifest["provenance"]["data"] == [f"pool:{pool_dir}"]
    assert manifest["parity"]["reload_max_abs_diff"] < 1e-4


def test_a_pool_of_another_teacher_is_refused(folders, tmp_path):
    from training.config import parse_config
    from training.distill import AfrlDistillConfig, train_distill

    pool_dir = tmp_path / "pool"
    build_pool(_pool_config(folders, pool_dir), teacher=BagOfWordsTeacher())  # labelled by teacher "stub"
    student_dir = save_tiny_model(tmp_path / "tiny", num_layers=2)
    argv = ["--teacher", "minilm", "--student_model", str(student_dir), "--data", f"pool:{pool_dir}"]
    argv += ["--output_dir", str(tmp_path / "s"), "--group_size", "4", "--per_device_train_batch_size", "8"]
    config = parse_config(AfrlDistillConfig, [*argv, "--report_to", "none"])
    with pytest.raises(ValueError, match="labelled by teacher 'stub'"):
        train_distill(config)
