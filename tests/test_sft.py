"""SFT end to end on a tiny model: it learns, writes a verifiable manifest, loads back, and resumes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from afrl.contract import GradeScale, PromptBuilder
from afrl.manifest import load_verified
from afrl.models import load_model
from afrl.scorer import load_scorer, pad_batch
from afrl.testing import save_tiny_model
from training.config import AfrlSFTConfig, parse_config
from training.losses import completion_nll
from training.rule_world import generate_records
from training.sft import read_instruction, train_sft
from training.targets import build_example

TINY_YAML = "training/configs/sft_tiny.yaml"


def sft_config(model: Path, out: Path, *extra: str) -> AfrlSFTConfig:
    argv = ["--config", TINY_YAML, "--model", str(model), "--output_dir", str(out), "--data", "rules:32:0", *extra]
    return parse_config(AfrlSFTConfig, argv)


def fixed_batch(tokenizer, config: AfrlSFTConfig) -> dict[str, torch.Tensor]:
    """Four training records as one padded batch with labels on the completion only."""
    scale = GradeScale()
    builder = PromptBuilder(
        tokenizer,
        instruction=read_instruction(config.instruction_file),
        max_query_tokens=config.max_query_tokens,
        max_document_tokens=config.max_document_tokens,
    )
    rows = [build_example(r, builder, scale, scale.token_ids(tokenizer)) for r in generate_records(32, 0)[:4]]
    ids, mask = pad_batch([r["input_ids"] for r in rows], tokenizer.pad_token_id)
    cmask, _ = pad_batch([r["completion_mask"] for r in rows], 0)
    labels = ids.masked_fill(cmask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batch_loss(model, batch) -> float:
    with torch.no_grad():
        loss, _ = completion_nll(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    return float(loss)


@pytest.fixture
def tiny_dir(tmp_path):
    return save_tiny_model(tmp_path / "tiny")


def test_sft_learns_and_writes_a_loadable_model(tiny_dir, tmp_path):
    out = tmp_path / "sft"
    config = sft_config(tiny_dir, out)
    before_model, tok, _ = load_model(str(tiny_dir))
    batch = fixed_batch(tok, config)
    before = batch_loss(before_model, batch)

    assert train_sft(config) == out
    after_model, _, _ = load_model(str(out))
    changed = [
        name
        for (name, p0), (_, p1) in zip(before_model.named_parameters(), after_model.named_parameters(), strict=True)
        if not torch.equal(p0, p1)
    ]
    assert changed, "no parameter changed"
    after = batch_loss(after_model, batch)
    assert after < before, (before, after)

    manifest = load_verified(out)
    assert manifest.kind == "sft" and manifest.provenance["data"] == ["rules:32:0"]
    scorer = load_scorer(str(out))
    result = scorer.score([("running shoes", "Trailmax running shoes. Price: $80.")])[0]
    assert 0 <= result.grade <= 3 and sum(result.probabilities) == pytest.approx(1.0)


def test_sft_resumes_from_its_checkpoint(tiny_dir, tmp_path, caplog):
    out = tmp_path / "sft"
    train_sft(sft_config(tiny_dir, out, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2"))
    assert (out / "checkpoint-2").is_dir()
    caplog.set_level(logging.INFO, logger="training.sft")
    train_sft(sft_config(tiny_dir, out, "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "1"))
    assert any("resuming from" in m and m.endswith("checkpoint-2") for m in caplog.messages)
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert not (out / "checkpoint-1").exists()  # steps 1-2 were not trained again
    manifest = load_verified(out)
    logged = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert len(logged) == 3  # the resumed run keeps the first two steps' log
    assert manifest.provenance["train_loss"] == pytest.approx(sum(logged) / 3)


def test_grade_weight_weights_exactly_the_first_completion_token(tiny_qwen):
    """The weighted loss equals (w * nll_grade + sum(other nll)) / (w + n_other), computed by hand."""
    import torch.nn.functional as F

    model, tok = tiny_qwen
    ids = torch.tensor([tok.encode("running shoes for men size 42 Berlin")])
    labels = ids.clone()
    labels[0, :4] = -100  # prompt
    mask = torch.ones_like(ids)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[0, :-1].float()
        nll = F.cross_entropy(logits, ids[0, 1:], reduction="none")[3:]  # positions predicting labels 4..
        plain, _ = completion_nll(model, ids, mask, labels)
        weighted, _ = completion_nll(model, ids, mask, labels, grade_weight=5.0)
    assert plain.item() == pytest.approx(nll.mean().item(), rel=1e-4)
    expected = (5.0 * nll[0] + nll[1:].sum()) / (5.0 + len(nll) - 1)
    assert weighted.item() == pytest.approx(expected.item(), rel=1e-4)
    assert weighted.item() != pytest.approx(plain.item(), rel=1e-3)


def test_listwise_loss_equals_listnet_by_hand_and_prefers_the_gold_order():
    from training.losses import listwise_grade_loss

    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    gold = torch.tensor([0, 3, 1])
    p = logits.softmax(-1)
    expected = p @ torch.arange(4.0)
    by_hand = -(gold.float().softmax(-1) * expected.log_softmax(-1)).sum()
    assert listwise_grade_loss(logits, gold).item() == pytest.approx(by_hand.item(), rel=1e-6)
    reversed_order = listwise_grade_loss(logits, torch.tensor([3, 0, 1]))
    assert listwise_grade_loss(logits, gold) < reversed_order
    with pytest.raises(ValueError, match="at least two documents"):
        listwise_grade_loss(logits[:1], gold[:1])


def test_grade_logits_come_from_each_rows_grade_position(tiny_qwen):
    from training.losses import completion_nll_and_grade_logits

    model, tok = tiny_qwen
    ids = torch.tensor([tok.encode("running shoes for men size 42 Berlin")] * 2)
    labels = ids.clone()
    labels[0, :4] = -100  # row 0: completion starts at token 4, predicted from position 3
    labels[1, :6] = -100  # row 1: from position 5
    mask = torch.ones_like(ids)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits.float()
        _, _, first = completion_nll_and_grade_logits(model, ids, mask, labels)
    assert torch.allclose(first[0], full[0, 3], atol=1e-4)
    assert torch.allclose(first[1], full[1, 5], atol=1e-4)


def test_sft_with_ranking_loss_trains_on_query_groups(tiny_dir, tmp_path):
    from tests.test_eval import write_tiny_trec

    trec = write_tiny_trec(tmp_path / "trec")
    out = tmp_path / "sft"
    config = parse_config(
        AfrlSFTConfig,
        ["--config", TINY_YAML, "--model", str(tiny_dir), "--output_dir", str(out), "--data", f"trec:{trec}",
         "--ranking_loss_weight", "1.0", "--per_device_train_batch_size", "2", "--max_steps", "2"],
    )  # fmt: skip
    train_sft(config)
    state = json.loads((out / "afrl.json").read_text())
    assert state["provenance"]["records"] == 4  # q1 and q2 give one 2-document group each; q3 has one document
    assert state["provenance"]["config"]["ranking_loss_weight"] == 1.0
    with pytest.raises(ValueError, match="unset balance_grades"):
        parse_config(AfrlSFTConfig, ["--config", TINY_YAML, "--ranking_loss_weight", "1", "--balance_grades", "true"])
