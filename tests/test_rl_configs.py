"""Every shipped RL, curriculum and study config loads against its config class (litgpt's config-hub test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import parse_config

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("rl_*.yaml")), ids=lambda p: p.name)
def test_rl_config_loads(path, tmp_path):
    from training.rl.config import AfrlGRPOConfig

    cfg = parse_config(AfrlGRPOConfig, ["--config", str(path), "--output_dir", str(tmp_path)])
    assert cfg.advantage_mode in ("stepwise", "completion") and cfg.beta == cfg.kl_coef
    assert cfg.generation_batch_size % cfg.num_generations == 0


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("curriculum_*.yaml")), ids=lambda p: p.name)
def test_curriculum_config_loads(path):
    from training.curriculum import AfrlCurriculumConfig

    cfg = parse_config(AfrlCurriculumConfig, ["--config", str(path)])
    assert cfg.parsed and (CONFIGS.parent.parent / cfg.rl_config).is_file()


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("study_*.yaml")), ids=lambda p: p.name)
def test_study_config_loads(path):
    from training.study import AfrlStudyConfig

    cfg = parse_config(AfrlStudyConfig, ["--config", str(path)])
    assert cfg.datasets and cfg.arm_specs
    assert {"grpo", "stepwise", "stepwise_sft"} <= set(cfg.arm_specs)
    assert cfg.arm_specs["grpo"]["advantage_mode"] == "completion"
