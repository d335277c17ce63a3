"""bf16 / fp32 selection (afrl.hardware) on every machine kind, forced both ways so any CI machine runs every path.

The dev and CI machines here come with AMX (Intel Sapphire Rapids class), with AVX512-BF16 but no AMX (AMD EPYC)
and with neither (Intel Xeon with AVX512-VNNI); CUDA is faked off (or on, for the pure decision) by monkeypatching
`torch.cuda`, so the transformers TrainingArguments check that failed in issue 14 runs for real on each kind.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import afrl.hardware as hardware
from afrl.hardware import TrainingPrecision, cpu_flags, cpu_has_native_bf16, training_precision
from tests.test_configs import PRODUCTION, config_class
from training.config import AfrlSFTConfig, parse_config

CPUINFO = {  # trimmed /proc/cpuinfo of each kind (the flags line is the one that counts)
    "amx": "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
    "flags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8\n",
    "avx512_bf16": "processor\t: 0\nmodel name\t: AMD EPYC\n"
    "flags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16 avx512_vp2intersect\n",
    "vnni_only": "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor @ 2.50GHz\n"
    "flags\t\t: fpu sse avx2 avx512f avx512_vnni\n",
}
NATIVE = {"amx": True, "avx512_bf16": True, "vnni_only": False}


def fake_machine(monkeypatch, tmp_path: Path, kind: str, cuda: bool = False, cuda_bf16: bool = True) -> None:
    """This process now sees the CPU `kind` and CUDA on or off (and no other accelerator)."""
    info = tmp_path / f"cpuinfo-{kind}"
    info.write_text(CPUINFO[kind])
    monkeypatch.setattr(hardware, "cpu_flags", lambda cpuinfo="/proc/cpuinfo": cpu_flags(info))
    monkeypatch.setattr(hardware, "_other_accelerator", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda and cuda_bf16)


@pytest.mark.parametrize("kind", sorted(CPUINFO))
def test_native_bf16_is_read_from_cpuinfo(kind, tmp_path):
    (tmp_path / "cpuinfo").write_text(CPUINFO[kind])
    assert cpu_has_native_bf16(tmp_path / "cpuinfo") is NATIVE[kind]


@pytest.mark.parametrize(
    ("kind", "cuda", "bf16", "use_cpu", "fp16", "expected"),
    [
        # bf16 unset, no CUDA: bf16 + use_cpu where the CPU has it natively, fp32 elsewhere
        ("amx", False, None, False, False, (True, True)),
        ("avx512_bf16", False, None, False, False, (True, True)),
        ("vnni_only", False, None, False, False, (False, False)),
        ("vnni_only", False, None, True, False, (False, True)),
        # CUDA: the GPU decides and use_cpu stays as it was, whatever the CPU
        ("vnni_only", True, None, False, False, (True, False)),
        ("amx", True, None, False, False, (True, False)),
        # ... unless the run is on the CPU of a CUDA machine
        ("vnni_only", True, None, True, False, (False, True)),
        ("amx", True, None, True, False, (True, True)),
        # fp16 asked for: never bf16 as well (TrainingArguments allows one of them)
        ("amx", True, None, False, True, (False, False)),
        ("amx", False, None, False, True, (False, False)),
        # explicit values are kept; explicit bf16 without a GPU gets use_cpu, so that it parses
        ("vnni_only", False, False, False, False, (False, False)),
        ("amx", False, False, False, False, (False, False)),
        ("amx", False, True, False, False, (True, True)),
        ("vnni_only", False, True, False, False, (True, True)),
        ("vnni_only", True, True, False, False, (True, False)),
    ],
)
def test_training_precision(monkeypatch, tmp_path, kind, cuda, bf16, use_cpu, fp16, expected):
    fake_machine(monkeypatch, tmp_path, kind, cuda=cuda)
    assert training_precision(bf16, use_cpu, fp16=fp16) == TrainingPrecision(*expected)


def test_cuda_without_bf16_trains_in_fp32(monkeypatch, tmp_path):
    fake_machine(monkeypatch, tmp_path, "amx", cuda=True, cuda_bf16=False)
    assert training_precision(None, False) == TrainingPrecision(bf16=False, use_cpu=False)


def test_explicit_bf16_on_an_emulating_cpu_warns(monkeypatch, tmp_path, caplog):
    fake_machine(monkeypatch, tmp_path, "vnni_only")
    with caplog.at_level(logging.WARNING, logger="afrl.hardware"):
        training_precision(True, False)
    assert "set bf16 false" in caplog.text
    caplog.clear()
    fake_machine(monkeypatch, tmp_path, "amx")
    with caplog.at_level(logging.WARNING, logger="afrl.hardware"):
        training_precision(True, False)
    assert not caplog.text


@pytest.mark.parametrize("kind", sorted(CPUINFO))
def test_sft_config_with_bf16_unset_parses_without_cuda(monkeypatch, tmp_path, kind):
    fake_machine(monkeypatch, tmp_path, kind)
    config = AfrlSFTConfig(output_dir=str(tmp_path / "out"), data=["rules:8"], report_to="none")
    assert (config.bf16, config.use_cpu) == (NATIVE[kind], NATIVE[kind])


@pytest.mark.parametrize("kind", sorted(CPUINFO))
def test_rl_config_with_bf16_unset_parses_without_cuda(monkeypatch, tmp_path, kind):
    from training.rl.config import AfrlGRPOConfig

    fake_machine(monkeypatch, tmp_path, kind)
    config = AfrlGRPOConfig(output_dir=str(tmp_path / "out"), data=["rules:8"], report_to="none")
    assert (config.bf16, config.use_cpu) == (NATIVE[kind], NATIVE[kind])


def test_the_unpatched_transformers_check_still_refuses_gpu_bf16_without_a_gpu(monkeypatch, tmp_path):
    """What the tests above guard against: bf16 without use_cpu and without a GPU fails in TrainingArguments."""
    from transformers import TrainingArguments

    fake_machine(monkeypatch, tmp_path, "amx")
    with pytest.raises(ValueError, match="bf16/gpu"):
        TrainingArguments(output_dir=str(tmp_path / "out"), bf16=True, report_to="none")


@pytest.mark.parametrize("kind", ["avx512_bf16", "vnni_only"])
@pytest.mark.parametrize("path", PRODUCTION, ids=[p.name for p in PRODUCTION])
def test_production_configs_parse_without_cuda(monkeypatch, tmp_path, path, kind):
    fake_machine(monkeypatch, tmp_path, kind)
    cls = config_class(path)
    config = parse_config(cls, ["--config", str(path), "--output_dir", str(tmp_path / "out")])
    assert isinstance(config, cls)
    if hasattr(config, "bf16"):  # the TrainingArguments-based stages (evolve is not one)
        assert (config.bf16, config.use_cpu) == (NATIVE[kind], NATIVE[kind])
