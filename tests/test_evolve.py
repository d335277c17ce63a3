"""Instruction evolution: offline and HTTP mutators, the evolution loop on the rule world, and its outputs."""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from afrl.contract import GradeScale, PromptBuilder, result_from_logits
from afrl.manifest import load_verified
from afrl.scorer import TorchScorer
from training.config import AfrlSFTConfig, parse_config
from training.evolve import AfrlEvolveConfig, run_evolve
from training.mutators import ErrorAnalysis, HttpMutator, OfflineMutator, rule_world_lines
from training.rule_world import GUIDELINE
from training.sources import load_sources

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "training" / "configs" / "evolve_tiny.yaml"
BAD = (ROOT / "training" / "configs" / "evolve_bad_instruction.txt").read_text()


def make_config(tmp_path: Path, model: str, *overrides: str) -> AfrlEvolveConfig:
    argv = ["--config", str(CONFIG), "--model", model, "--output_dir", str(tmp_path / "evolve")]
    return parse_config(AfrlEvolveConfig, [*argv, *overrides])


class GuidelineReader(TorchScorer):
    """A stand-in model whose grades depend on the guideline lines, and on nothing else.

    For a pair whose deciding rule is R it answers the grade that the first line starting with R states, if that
    line is among the first `attention_lines` lines of the instruction (a model reads a long system message
    less carefully further down); without such a line it answers 3, as a naive matcher would. So a correct line
    fixes R, a wrong line breaks R, and order matters past the attention window. It stands in for a model that
    follows its instruction: the test shows that the evolution loop (error analysis -> mutation -> selection,
    lineage, carrying the winner) finds and keeps better instructions for such a model. It does not show that a
    real language model of a given size follows guideline edits; `test_evolve_cli_with_a_real_tiny_model` runs
    the same loop with a real (tiny, random) model, where only the plumbing is checked. Pairs outside `records`
    get 3 whatever the instruction says (a model whose dev gains do not transfer).
    """

    attention_lines = 9

    def __init__(self, model, tokenizer, records):
        super().__init__(model, tokenizer, PromptBuilder(tokenizer), GradeScale())
        self.rule_of = {(r.query, r.document): r.rule for r in records}

    def score(self, pairs, instruction=None):
        lines = (instruction or "").splitlines()[: self.attention_lines]
        out = []
        for pair in pairs:
            rule = self.rule_of.get(pair, "no known rule")
            line = next((ln for ln in lines if re.match(rf"\s*{rule}\b", ln)), None)
            m = re.search(r"\((\d)\)", line) if line else None
            grade = int(m.group(1)) if m else 3
            out.append(result_from_logits([4.0 if k == grade else 0.0 for k in range(4)]))
        return out


def test_offline_mutator_fixes_the_worst_rules_first_and_is_deterministic():
    analysis = ErrorAnalysis("macro_f1", 0.3, 100)
    analysis.seen.update({"brand_mismatch": 5, "wrong_category": 25, "exact_match": 30})
    analysis.wrong.update({"brand_mismatch": 5, "wrong_category": 25})
    mutator = OfflineMutator()
    children = mutator.mutate(BAD, analysis, 4)
    assert children == mutator.mutate(BAD, analysis, 4)
    lines = rule_world_lines()
    assert children[0].description == "add the line of wrong_category"
    assert lines["wrong_category"] in children[0].instruction.splitlines()
    assert children[1].description == "correct the line of brand_mismatch"
    assert lines["brand_mismatch"] in children[1].instruction.splitlines()
    assert "the brand does not matter" not in children[1].instruction
    assert all(c.instruction != BAD.strip() for c in children)
    # The unknown rule line goes when asked for enough candidates.
    assert any("cheap_is_better" not in c.instruction for c in mutator.mutate(BAD, analysis, 10))
    # Nothing failing and a correct guideline: nothing to propose.
    assert mutator.mutate(GUIDELINE, ErrorAnalysis("macro_f1", 1.0, 10), 4) == []


def test_evolution_improves_a_bad_instruction_on_the_rule_world(tmp_path, tiny_qwen):
    model, tok = tiny_qwen
    config = make_config(
        tmp_path, "tiny", "--generations", "4", "--population_size", "4", "--children_per_parent", "3",
        "--heldout_data", "rules:60:8",
    )  # fmt: skip
    records = load_sources(config.dev_data) + load_sources(config.heldout_data)
    scorer = GuidelineReader(model, tok, records)
    out = run_evolve(config, scorer=scorer)

    lineage = json.loads((out / "lineage.json").read_text())
    initial, best = lineage["initial_score"], lineage["best_score"]
    assert best > initial + 0.3, f"macro-F1 {initial:.3f} -> {best:.3f}"
    held = lineage["heldout"]  # the stand-in follows guidelines on fresh pairs too: the gain is confirmed
    assert held["records"] == 60 and held["winner_score"] > held["start_score"] + 0.3
    assert held["p_better"] >= 0.9 and held["confirmed"] and lineage["carried"] == lineage["best"]
    assert held["gain_90ci"][0] > 0
    by_id = {c["id"]: c for c in lineage["candidates"]}
    assert by_id[lineage["initial"]]["instruction"] == BAD.strip()
    for c in lineage["candidates"]:  # every child names an older, scored parent and its mutation
        if c["parent"] is not None:
            assert by_id[c["parent"]]["generation"] < c["generation"] and c["mutation"]
    assert [g["best_score"] for g in lineage["generations"]] == sorted(g["best_score"] for g in lineage["generations"])
    assert lineage["path"][0]["id"] == lineage["initial"] and lineage["path"][-1]["id"] == lineage["best"]

    winner = (out / "instruction.txt").read_text().strip()
    assert winner == by_id[lineage["best"]]["instruction"]
    # The rule the stand-in got wrong most often at the start is now stated with its right grade.
    worst_initial = Counter(by_id[lineage["initial"]]["errors"]["wrong"]).most_common(1)[0][0]
    assert rule_world_lines()[worst_initial] in winner.splitlines()

    # Carried into the next stage's config (which parses as that stage's config) and into the manifest.
    next_cfg = parse_config(AfrlSFTConfig, ["--config", str(out / "next_stage.yaml")])
    assert Path(next_cfg.instruction_file).read_text().strip() == winner
    assert next_cfg.output_dir == "runs/sft_tiny_evolved"
    manifest = load_verified(out)
    assert manifest.kind == "evolve" and manifest.instruction == winner
    assert manifest.extra["best_score"] == best and manifest.extra["initial_score"] == initial


def test_a_dev_gain_that_does_not_hold_out_is_not_carried(tmp_path, tiny_qwen):
    model, tok = tiny_qwen
    config = make_config(tmp_path, "tiny", "--heldout_data", "rules:60:8")
    scorer = GuidelineReader(model, tok, load_sources(config.dev_data))  # reads guidelines on dev pairs only
    out = run_evolve(config, scorer=scorer)

    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["best_score"] > lineage["initial_score"]  # the search found a dev winner ...
    held = lineage["heldout"]
    assert held["gain"] == 0.0 and held["p_better"] == 0.0 and not held["confirmed"]  # ... that fresh pairs reject
    assert lineage["carried"] == lineage["initial"]
    assert (out / "instruction.txt").read_text().strip() == BAD.strip()
    next_cfg = parse_config(AfrlSFTConfig, ["--config", str(out / "next_stage.yaml")])
    assert Path(next_cfg.instruction_file).read_text().strip() == BAD.strip()
    manifest = load_verified(out)
    assert manifest.instruction == BAD.strip() and manifest.extra["carried"] == lineage["initial"]


def test_heldout_bootstrap_resamples_queries_for_ndcg():
    from training.data import Record
    from training.evolve import evaluate_instruction, heldout_check

    class ByInstruction:
        """Scores the gold grade under "good" and the reverse under "bad": a sure gain on every query."""

        def score(self, pairs, instruction=None):
            grade_of = {(r.query, r.document): r.grade for r in records}
            grades = [grade_of[p] if instruction == "good" else 3 - grade_of[p] for p in pairs]
            return [result_from_logits([4.0 if k == g else 0.0 for k in range(4)]) for g in grades]

    records = [Record(f"{q}{i}", f"query {q}", f"doc {i}", i % 4, qid=q) for q in "abcde" for i in range(4)]
    check = heldout_check(ByInstruction(), records, "bad", "good", "ndcg@10", draws=50)
    assert check["winner_score"] == pytest.approx(1.0) and check["start_score"] < 1.0
    assert check["p_better"] == 1.0 and check["gain_90ci"][0] > 0
    assert evaluate_instruction(ByInstruction(), records, "good", "ndcg@10")[0] == pytest.approx(1.0)


def test_evolve_cli_with_a_real_tiny_model(tmp_path):
    """`afrl train evolve` end to end with a real (tiny, random-weight) model: files, lineage, monotone best."""
    from afrl.cli import main
    from afrl.testing import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "tiny")
    out = tmp_path / "evolve"
    argv = ["train", "evolve", "--config", str(CONFIG), "--threads", "1"]
    assert main([*argv, "--model", str(model_dir), "--output_dir", str(out), "--max_dev_records", "16"]) == 0
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["dev_records"] == 16 and len(lineage["candidates"]) >= 2
    assert lineage["best_score"] >= lineage["initial_score"]
    assert load_verified(out).instruction == (out / "instruction.txt").read_text().strip()


class _FakeChat(BaseHTTPRequestHandler):
    requests: ClassVar[list[dict]] = []
    status = 200

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if type(self).status != 200:
            self.send_response(type(self).status)
            self.end_headers()
            self.wfile.write(b"overloaded")
            return
        guideline = GUIDELINE.replace("exact_match (3)", "exact_match (3) [revised]")
        reply = {
            "choices": [
                {"message": {"role": "assistant", "content": "```\n" + guideline + "\n```"}},
                {"message": {"role": "assistant", "content": guideline}},  # a duplicate: dropped
                {"message": {"role": "assistant", "content": ""}},  # empty: dropped
            ]
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_endpoint():
    _FakeChat.requests, _FakeChat.status = [], 200
    server = HTTPServer(("127.0.0.1", 0), _FakeChat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


def test_http_mutator_posts_the_error_analysis_to_a_chat_endpoint(fake_endpoint, monkeypatch):
    monkeypatch.setenv("AFRL_MUTATOR_API_KEY", "secret-for-test")
    analysis = ErrorAnalysis("macro_f1", 0.4, 50)
    analysis.seen.update({"negation_violated": 3})
    analysis.wrong.update({"negation_violated": 3})
    analysis.confusions[(0, 3)] = 3
    analysis.examples.append({"key": "negation_violated", "query": "q", "document": "d", "gold": 0, "predicted": 3})
    children = HttpMutator(url=fake_endpoint, model="served-model").mutate(BAD, analysis, 3)

    assert len(children) == 1 and "[revised]" in children[0].instruction
    assert not children[0].instruction.startswith("```")
    (request,) = _FakeChat.requests
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer secret-for-test"
    body = request["body"]
    assert body["model"] == "served-model" and body["n"] == 3
    user = body["messages"][-1]["content"]
    assert BAD.strip() in user and "negation_violated: 3 of 3 wrong" in user and "gold 0 -> predicted 3" in user


def test_http_mutator_reports_a_failing_endpoint(fake_endpoint):
    _FakeChat.status = 503
    with pytest.raises(RuntimeError, match="answered 503"):
        HttpMutator(url=fake_endpoint, model="m").mutate(BAD, ErrorAnalysis("macro_f1", 0.0, 1), 2)


def test_evolve_with_the_http_mutator(tmp_path, tiny_qwen, fake_endpoint):
    model, tok = tiny_qwen
    config = make_config(tmp_path, "tiny", "--mutator", "http", "--mutator_url", fake_endpoint, "--mutator_model", "m")
    scorer = GuidelineReader(model, tok, load_sources(config.dev_data))
    out = run_evolve(config, scorer=scorer)
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["best_score"] > lineage["initial_score"]
    assert "[revised]" in (out / "instruction.txt").read_text()


def test_config_refuses_http_without_url():
    with pytest.raises(ValueError, match="mutator_url"):
        AfrlEvolveConfig(dev_data=["rules:10"], mutator="http")
    with pytest.raises(ValueError, match="dev_data"):
        AfrlEvolveConfig()
