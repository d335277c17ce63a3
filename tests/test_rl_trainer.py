"""The Stepwise-GRPO trainer on a tiny model: contract prompt ids, per-token advantages, the SFT term, a 3-step run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from afrl.contract import GradeScale, PromptBuilder
from afrl.manifest import load_verified
from afrl.models import load_model
from afrl.testing import save_tiny_model
from training.data import Record
from training.losses import completion_nll
from training.rl.config import AfrlGRPOConfig
from training.rl.trainer import AfrlGRPOTrainer, build_rl_dataset, train_rl

G = 4


def records(n: int = 4) -> list[Record]:
    return [
        Record(
            f"r{i}",
            f"running shoes size {40 + i}",
            f"Running shoes for men, size {40 + i}, waterproof hiking boots.",
            i % 4,
            rule="size_mismatch" if i % 2 else None,
        )
        for i in range(n)
    ]


def config(tmp_path: Path, model: str, **kw) -> AfrlGRPOConfig:
    base = dict(
        output_dir=str(tmp_path / "out"),
        model=model,
        data=["unused"],
        max_steps=3,
        per_device_train_batch_size=2 * G,
        num_generations=G,
        max_completion_length=16,
        learning_rate=1e-3,
        report_to="none",
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        max_query_tokens=16,
        max_document_tokens=32,
        seed=0,
    )
    base.update(kw)
    return AfrlGRPOConfig(**base)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "m")


def make_trainer(tmp_path: Path, tiny_dir: Path, **kw) -> tuple[AfrlGRPOTrainer, PromptBuilder, list[dict]]:
    model, tok, _ = load_model(str(tiny_dir))
    model.train()
    cfg = config(tmp_path, str(tiny_dir), **kw)
    builder = PromptBuilder(tok, max_query_tokens=16, max_document_tokens=32)
    scale = GradeScale()
    ds, prompt_ids, gold = build_rl_dataset(records(2), builder, scale)
    trainer = AfrlGRPOTrainer(
        model=model,
        args=cfg,
        train_dataset=ds,
        processing_class=tok,
        prompt_ids=prompt_ids,
        gold_ids=gold,
        scale=scale,
    )
    trainer.current_gradient_accumulation_steps = 1
    batch = [dict(row) for row in ds for _ in range(G)]  # TRL's sampler repeats each prompt G times in a row
    return trainer, builder, batch


def test_prompt_ids_fed_to_the_model_are_the_contracts(tmp_path, tiny_dir):
    trainer, builder, batch = make_trainer(tmp_path, tiny_dir)
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions(batch)
    for row, ids, mask in zip(batch, out["prompt_ids"], out["prompt_mask"], strict=True):
        rec = records(2)[row["record_index"]]
        assert ids[mask.bool()].tolist() == builder.build(rec.query, rec.document).input_ids
    # stepwise: one advantage per token, constant within a step, zero on padding
    adv = out["advantages"]
    assert adv.shape == out["completion_ids"].shape
    assert (adv[out["completion_mask"] == 0] == 0).all()


def test_completion_mode_keeps_trls_one_advantage_per_completion(tmp_path, tiny_dir):
    trainer, _, batch = make_trainer(tmp_path, tiny_dir, advantage_mode="completion")
    out = trainer._generate_and_score_completions(batch)
    assert out["advantages"].dim() == 1 and "sft_input_ids" not in out


def _grads(trainer: AfrlGRPOTrainer, inputs: dict) -> torch.Tensor:
    trainer.model.zero_grad()
    trainer._compute_loss(trainer.model, inputs).backward()
    return torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])


def test_sft_term_is_in_the_loss_and_its_gradient_flows(tmp_path, tiny_dir):
    trainer, _, batch = make_trainer(tmp_path, tiny_dir, sft_coef=0.5)
    torch.manual_seed(0)
    inputs = trainer._generate_and_score_completions(batch)
    assert inputs["sft_rows"].sum().item() == 2  # one gold sequence per distinct prompt
    g_mu = _grads(trainer, inputs)
    trainer.args.sft_coef = trainer.args.sft_coef_final = 0.0
    g_zero = _grads(trainer, inputs)
    assert not torch.allclose(g_mu, g_zero)
    # the difference is exactly mu * grad(L_SFT) of the gold targets
    keep = inputs["sft_rows"].bool()
    trainer.model.zero_grad()
    nll, _ = completion_nll(
        trainer.model, inputs["sft_input_ids"][keep], inputs["sft_attention_mask"][keep], inputs["sft_labels"][keep]
    )
    nll.backward()
    g_sft = torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])
    assert torch.allclose(g_mu - g_zero, 0.5 * g_sft, atol=1e-5)
    labels = inputs["sft_labels"][keep][0]
    assert labels[labels != -100][-1].item() == trainer.processing_class.eos_token_id


def test_three_step_run_writes_a_model_with_its_manifest(tmp_path, tiny_dir):
    cfg = config(tmp_path, str(tiny_dir), sft_coef=0.5, sft_coef_schedule="linear", sft_coef_final=0.0, kl_coef=0.05)
    before = load_model(str(tiny_dir))[0].state_dict()
    out = train_rl(cfg, records(4))
    manifest = load_verified(out)
    assert manifest.kind == "rl" and manifest.provenance["config"]["advantage_mode"] == "stepwise"
    log = json.loads((out / "train_log.json").read_text())
    steps = [e for e in log if "loss" in e]
    assert len(steps) == 3
    for key in ("mu", "grades/entropy", "grades/p0", "step_reward/grade", "rewards/grade_exact/mean", "kl"):
        assert key in steps[0], key
    assert steps[0]["mu"] > steps[-1]["mu"]  # linear schedule towards 0
    after = load_model(str(out))[0].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
