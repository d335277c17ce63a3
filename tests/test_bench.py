"""`afrl bench`: every headline key is produced by a real quick run, and BENCHMARKS.md renders from the JSON.

No assertion on a speed: benchmarks report numbers, tests check that the numbers exist and are well-formed.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from afrl.cli import main
from bench import report
from bench.runner import HEADLINES, target_met
from bench.timing import measure, percentile

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results" / "cpu.json"


def _check_headlines(data: dict) -> None:
    for key in HEADLINES:
        value = data[key]
        assert isinstance(value, int | float) and not isinstance(value, bool), f"{key} = {value!r}"
        assert math.isfinite(value), key
        if key != "http_overhead_ms_c1":  # a difference of two medians: may be near zero either way
            assert value > 0, key
        assert key in data["targets"]


@pytest.mark.slow
def test_quick_bench_writes_every_key_and_the_markdown(tmp_path: Path) -> None:
    from afrl.testing import save_tiny_model

    model = save_tiny_model(tmp_path / "tiny")
    out, md = tmp_path / "bench.json", tmp_path / "BENCHMARKS.md"
    argv = ["bench", "--model", str(model), "--quick", "--json", str(out), "--markdown", str(md)]
    rc = main([*argv, "--cache-dir", str(tmp_path / "cache"), "--threads", "1"])
    data = json.loads(out.read_text())
    assert rc == 0, data["errors"]
    assert data["errors"] == {}
    _check_headlines(data)

    m = data["machine"]
    assert m["cpu_model"] and m["logical_cpus"] >= 1 and m["threads_used"] == 1
    assert len(m["load_average_at_start"]) == 3 and len(m["load_average_at_end"]) == 3
    backends = data["items"]["backends"]["backends"]
    assert set(backends) == {"torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8"}
    for row in backends.values():
        assert row["batch_32"]["repeats"] >= 1 and row["batch_32"]["median_s"] > 0
        assert 0 <= row["vs_baseline_on_batch"]["grade_agreement"] <= 1
    assert backends["onnx-fp32"]["vs_baseline_on_batch"]["max_abs_prob_diff"] < 1e-3  # same math as torch fp32
    service = data["items"]["service"]
    assert [lv["concurrency"] for lv in service["modes"]["batching_on"]["levels"]] == [1, 8, 32]
    assert all(lv["errors"] == 0 and lv["requests"] > 0 for mode in service["modes"].values() for lv in mode["levels"])
    assert data["items"]["prefix"]["reuse_vs_plain"]["max_abs_prob_diff"] < 1e-3

    text = md.read_text()
    for key in HEADLINES:
        assert f"`{key}`" in text
    assert m["cpu_model"] in text and "--quick" in text and "**Not run.**" in text


def _results() -> dict:
    if not RESULTS.is_file():
        pytest.skip(f"{RESULTS} has not been generated yet")
    return json.loads(RESULTS.read_text())


def test_markdown_renders_from_the_committed_json(tmp_path: Path) -> None:
    data = _results()
    _check_headlines(data)
    md = tmp_path / "B.md"
    assert main(["bench", "--from-json", str(RESULTS), "--markdown", str(md), "--gpu-json", str(tmp_path / "no")]) == 0
    text = md.read_text()
    for key in HEADLINES:
        assert f"`{key}`" in text
    assert data["machine"]["cpu_model"] in text
    assert "**Not run.**" in text  # no GPU results beside it


def test_markdown_has_a_gpu_section_when_gpu_results_exist() -> None:
    data = _results()
    gpu = copy.deepcopy(data)
    gpu.update(kind="gpu", command="python -m bench.gpu --model default-base")
    gpu["machine"]["gpu_name"] = "NVIDIA Test GPU, 80 GiB"
    gpu["items"]["service"] = {"skipped": True}
    text = report.render(data, gpu)
    assert "**Not run.**" not in text
    assert "NVIDIA Test GPU" in text and "### GPU 2. Backends" in text


def test_from_json_needs_markdown(tmp_path: Path) -> None:
    assert main(["bench", "--from-json", str(tmp_path / "x.json")]) == 2


def test_measure_stops_at_the_budget_but_times_once() -> None:
    calls = []
    t = measure(lambda: calls.append(1), warmup=2, repeats=5, budget_s=0.0)
    assert len(calls) == 3 and t.warmup == 2 and len(t.runs_s) == 1
    t = measure(lambda: None, warmup=0, repeats=4)
    assert len(t.runs_s) == 4 and t.median_s >= 0


def test_percentile_and_targets() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)
    assert math.isnan(percentile([], 50))
    assert target_met(25.0, ">=", 20.0) is True
    assert target_met(1600.0, "<=", 1500.0) is False
    assert target_met(1.0, None, None) is None and target_met(None, ">=", 1.0) is None
