"""Every shipped YAML config in training/configs/ parses against its stage's config dataclass.

The top level and production/ are checked (production/accelerate/ holds launcher files, not stage configs).
The config class of a file is found by its name prefix: a prefix that is a stage name in training/cli.py's STAGES
maps to that stage (`sft_*.yaml` -> `sft`, `distill_*.yaml` -> `distill`); other prefixes are listed in
CONFIG_PREFIXES (a stage name, or "module:Class"). A YAML with no known prefix fails, so a config can never ship
untested. A `chain_*.yaml` is a list of stages, checked by `afrl train chain`'s own schema.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from training.cli import STAGES
from training.config import parse_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "training" / "configs"

# file-name prefixes that are not themselves stage names -> a stage name in training.cli.STAGES, or "module:Class"
# (e.g. "grpo": "rl", or "mystage": "training.mystage:MyConfig")
CONFIG_PREFIXES: dict[str, str] = {"plainrl": "training.rl.loop:PlainRLConfig"}


def config_class(path: Path) -> type:
    prefix = path.stem.split("_", 1)[0]
    target = prefix if prefix in STAGES else CONFIG_PREFIXES.get(prefix)
    if target is None:
        raise AssertionError(
            f"{path.name}: no config class for prefix {prefix!r}; add it to CONFIG_PREFIXES in {Path(__file__).name}"
        )
    if ":" in target:
        module, name = target.split(":")
        return getattr(importlib.import_module(module), name)
    if target not in STAGES:
        raise AssertionError(f"{path.name}: stage {target!r} is not in training.cli.STAGES")
    module_name, cls_name, _ = STAGES[target]
    module = importlib.import_module(module_name)
    return getattr(module, cls_name, None) or getattr(importlib.import_module("training.config"), cls_name)


# keys the config rewrites in __post_init__ (TrainingArguments turns report_to "none" into []), or overridden here
NORMALISED = {"output_dir", "env", "report_to"}

# production/ stage configs too; production/accelerate/ holds launcher files, not stage configs
PRODUCTION = sorted((CONFIG_DIR / "production").glob("*.yaml"))
YAMLS = sorted(CONFIG_DIR.glob("*.yaml")) + sorted(CONFIG_DIR.glob("*.yml")) + PRODUCTION


def test_configs_exist():
    assert any(p.name.startswith("sft_") for p in YAMLS)


@pytest.mark.parametrize("path", YAMLS, ids=[str(p.relative_to(CONFIG_DIR)) for p in YAMLS])
def test_yaml_parses_against_its_dataclass(path, tmp_path):
    if path.stem.startswith("chain_"):  # a list of stages, `afrl train chain`'s own schema (pydantic)
        from training.chain import load_chain

        assert load_chain(path).stages
        return
    cls = config_class(path)
    values = yaml.safe_load(path.read_text())
    assert isinstance(values, dict), f"{path.name} is not a YAML mapping"
    config = parse_config(cls, ["--config", str(path), "--output_dir", str(tmp_path / "out")])
    assert isinstance(config, cls)
    for key, value in values.items():
        if key in NORMALISED:
            continue
        got = getattr(config, key)
        # TrainingArguments turns some strings into enums; compare their values
        assert getattr(got, "value", got) == value, (key, got, value)
    # production configs name files on the training cluster (data/prod/...), which do not exist here
    for instruction in [getattr(config, "instruction_file", None)]:
        if instruction and path not in PRODUCTION:
            assert (CONFIG_DIR.parents[1] / instruction).is_file(), f"{path.name}: {instruction} does not exist"


def test_a_yaml_without_a_known_prefix_fails(tmp_path):
    with pytest.raises(AssertionError, match="no config class"):
        config_class(tmp_path / "mystery_run.yaml")
