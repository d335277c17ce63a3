"""Distillation on tiny models: the loss, layer-subset students, the teacher cache, exact reload, and shipping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from afrl.contract import GradeScale, PromptBuilder
from afrl.manifest import Manifest, load_verified
from afrl.shipping import ship_model
from afrl.testing import build_tiny_model, save_tiny_model
from training.config import parse_config
from training.distill import AfrlDistillConfig, build_student, train_distill
from training.distill_loss import grade_kl

CONFIG = Path(__file__).resolve().parents[1] / "training" / "configs" / "distill_tiny.yaml"


def make_config(tmp_path: Path, teacher: Path, *overrides: str) -> AfrlDistillConfig:
    argv = ["--config", str(CONFIG), "--teacher", str(teacher), "--output_dir", str(tmp_path / "student")]
    return parse_config(AfrlDistillConfig, [*argv, *overrides])


def save_adapter_teacher(tmp_path: Path, num_layers: int = 4) -> tuple[Path, Path]:
    """A LoRA teacher over a tiny base, with its manifest: the shape of the real SFT teacher."""
    from peft import LoraConfig, get_peft_model

    base = save_tiny_model(tmp_path / "base", num_layers=num_layers)
    model, tok = build_tiny_model(num_layers=num_layers)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], layers_to_transform=[1, 3])
    peft_model = get_peft_model(model, lora)
    torch.manual_seed(1)
    with torch.no_grad():  # a trained adapter has non-zero B; a fresh one would make the test blind
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)
    teacher = tmp_path / "teacher"
    peft_model.save_pretrained(teacher)
    builder = PromptBuilder(tok, max_query_tokens=16, max_document_tokens=48)
    Manifest.for_builder(builder, GradeScale(), kind="sft", base_model=str(base)).write(teacher)
    return base, teacher


def test_grade_kl_is_zero_only_for_equal_distributions():
    t = torch.tensor([[2.0, 0.5, -1.0, 0.0]])
    assert grade_kl(t, t, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    assert grade_kl(t + 3.0, t, 2.0).item() == pytest.approx(0.0, abs=1e-6)  # softmax ignores a shift
    other = torch.tensor([[0.0, 0.0, 2.0, 0.0]])
    assert grade_kl(other, t, 1.0).item() > 0.1
    # KL(teacher || student) with the teacher first: swapping the arguments changes the value
    assert grade_kl(other, t, 1.0).item() != pytest.approx(grade_kl(t, other, 1.0).item())


def test_layer_subset_of_a_full_teacher_copies_the_right_layers(tmp_path):
    teacher_dir = save_tiny_model(tmp_path / "teacher", num_layers=4)
    teacher, _ = build_tiny_model(num_layers=4)
    config = make_config(tmp_path, teacher_dir, "--student_layers", "3", "1", "--lora_r", "0")
    student = build_student(config)
    assert student.base_model is None and student.model.config.num_hidden_layers == 2
    t_layers, s_layers = teacher.model.layers, student.model.model.layers
    for new, old in enumerate([3, 1]):
        for (name, p_s), (_, p_t) in zip(
            s_layers[new].named_parameters(), t_layers[old].named_parameters(), strict=True
        ):
            assert torch.equal(p_s, p_t), f"student layer {new} {name} differs from teacher layer {old}"
        assert s_layers[new].self_attn.layer_idx == new
    assert not torch.equal(s_layers[0].mlp.down_proj.weight, t_layers[0].mlp.down_proj.weight)


def test_freeze_embeddings_trains_the_layers_only(tmp_path):
    teacher_dir = save_tiny_model(tmp_path / "teacher", num_layers=4)
    config = make_config(
        tmp_path, teacher_dir, "--student_layers", "0", "1", "--lora_r", "0", "--freeze_embeddings", "true"
    )
    model = build_student(config).model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "model.embed_tokens.weight" not in trainable and not model.get_output_embeddings().weight.requires_grad
    assert "model.layers.0.mlp.up_proj.weight" in trainable and "model.norm.weight" in trainable
    assert all(
        p.requires_grad
        for p in build_student(
            make_config(tmp_path, teacher_dir, "--student_layers", "0", "--lora_r", "0")
        ).model.parameters()
    )
    with pytest.raises(ValueError, match="freeze_embeddings is for a full fine-tune"):
        make_config(tmp_path, teacher_dir, "--student_layers", "0", "--lora_r", "4", "--freeze_embeddings", "true")


def test_layer_subset_of_an_adapter_teacher_starts_as_the_cut_teacher(tmp_path):
    """The student = base cut to the kept layers + the teacher's adapter weights of those layers, so before any
    training it computes exactly what the merged teacher cut to those layers computes."""
    from afrl.layers import keep_layers
    from afrl.models import load_model
    from afrl.scorer import grade_logits, pad_batch

    _, teacher_dir = save_adapter_teacher(tmp_path)
    config = make_config(tmp_path, teacher_dir, "--student_layers", "0", "3")
    student = build_student(config)
    assert student.num_layers == [0, 3] and student.base_model is not None
    # the config's rank 8 is above the teacher's 4: the teacher's factors are padded, not replaced
    assert student.model.peft_config["default"].r == 8
    merged_teacher, tok, _ = load_model(str(teacher_dir))
    reference = keep_layers(merged_teacher, [0, 3])
    ids, mask = pad_batch([tok.encode("running shoes for men size 42"), tok.encode("Berlin")], tok.pad_token_id)
    grade_ids = GradeScale().token_ids(tok)
    student.model.eval()
    with torch.no_grad():
        got = grade_logits(student.model.merge_and_unload(), ids, mask, grade_ids)
        want = grade_logits(reference, ids, mask, grade_ids)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def student_teacher_kl(model, scorer, records, cache_dir: Path) -> float:
    """Mean KL(teacher || student) of the grade distributions over `records`, teacher logits from the cache."""
    from afrl.scorer import TorchScorer

    (cache_file,) = cache_dir.glob("teacher-*.jsonl")
    by_id = {e["id"]: e for e in map(json.loads, cache_file.read_text().splitlines())}
    model.eval()
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    s = TorchScorer(model, scorer.tokenizer, scorer.builder, scorer.scale)
    s_logits = s.logits_for_prompts(scorer.builder.build_many([(r.query, r.document) for r in records]))
    t_logits = torch.tensor([by_id[r.id]["grade_logits"] for r in records])
    return grade_kl(s_logits, t_logits, 1.0).item()


@pytest.fixture
def optional_trec_dir(request):
    """The TREC DL folder when present (the nDCG part of the report needs it), else None: the rest still runs."""
    try:
        return request.getfixturevalue("trec_dir")
    except pytest.skip.Exception:
        return None


def test_distill_moves_the_student_to_the_teacher_and_reloads_exactly(tmp_path, monkeypatch, optional_trec_dir):
    from afrl.models import resolve
    from afrl.scorer import load_scorer
    from training import distill
    from training.sources import load_sources

    trec_dir = optional_trec_dir
    _, teacher_dir = save_adapter_teacher(tmp_path)
    cache = tmp_path / "cache"
    config = make_config(tmp_path, teacher_dir, "--cache_dir", str(cache))
    out = train_distill(config)

    losses = [e["loss"] for e in json.loads((out / "trainer_log.json").read_text()) if "loss" in e]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, f"loss did not fall: {losses}"
    # The student before training is a pure function of the teacher (carried adapter, zero-initialised new B),
    # so building it again gives the starting point to compare with.
    records = load_sources(config.data)
    teacher = load_scorer(str(teacher_dir))
    before = student_teacher_kl(build_student(config).model, teacher, records, cache)
    after = student_teacher_kl(load_scorer(str(out)).model, teacher, records, cache)
    assert after < 0.5 * before, f"student-teacher grade KL {before:.4f} -> {after:.4f}"

    manifest = load_verified(out)
    assert manifest.kind == "distill" and manifest.extra["num_layers"] == [0, 3]
    assert manifest.base_model == str(tmp_path / "base")
    assert manifest.parity["reload_max_abs_diff"] < 1e-4  # load_scorer(out) == the in-memory student
    assert manifest.provenance["command"]
    assert not any("teacher-" in name for name in manifest.files)
    assert load_scorer(str(out)).model.config.num_hidden_layers == 2

    # The teacher-vs-student dev report: agreement, macro-F1 of both, speed ratio; nDCG@10 on TREC dev queries.
    report_config = make_config(tmp_path, teacher_dir, "--dev_data", "rules:24:5", "--report_records", "16")
    if trec_dir is not None:
        report_config.dev_data.append(f"trec:{trec_dir / 'dl20'}:dev")
        report_config.report_trec_queries = 1
    report = distill.dev_report(teacher, out, report_config)
    assert report["records"] == 16 and 0.0 <= report["grade_agreement"] <= 1.0 and report["speed_ratio"] > 0
    assert set(report["teacher"]) >= {"accuracy", "macro_f1"} and set(report["student"]) >= {"accuracy", "macro_f1"}
    if trec_dir is not None:
        assert len(report["trec_queries"]) == 1 and 0.0 <= report["student_ndcg@10"] <= 1.0

    # A rerun with the same teacher and settings never loads the teacher again (its pass is a batch-score run).
    import afrl.batch_score

    monkeypatch.setattr(afrl.batch_score, "load_reranker", lambda *a, **k: pytest.fail("teacher called again"))
    train_distill(make_config(tmp_path, teacher_dir, "--max_steps", "1", "--cache_dir", str(cache)))

    # Shipping: `default` then resolves to the student, whose manifest verifies in its new place.
    from afrl import models

    shipped = tmp_path / "shipped"
    shipped.mkdir()
    monkeypatch.setattr(models, "SHIPPED_DIR", shipped)
    target = ship_model(out, "student-a")
    assert resolve("default") == target
    assert json.loads((shipped / "index.json").read_text()) == [{"path": "student-a", "order": 1}]
    assert not any("checkpoint" in p.name for p in target.rglob("*"))
    assert load_scorer("default").model.config.num_hidden_layers == 2
    (target / "adapter_model.safetensors").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="does not match its manifest"):
        load_verified(target)


def test_config_refuses_missing_student_and_bad_alpha(tmp_path):
    with pytest.raises(ValueError, match="student_layers"):
        AfrlDistillConfig(teacher="x", data=["rules:4"], output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="alpha"):
        AfrlDistillConfig(teacher="x", student_layers=[0], alpha=1.5, data=["rules:4"], output_dir=str(tmp_path))
