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
from bench import models, report, workload
from bench.config import BenchConfig
from bench.runner import CORE_ITEMS, HEADLINES, target_met
from bench.timing import measure, percentile

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results" / "cpu.json"
NEW_HEADLINES = ("default_speedup_vs_previous", "rerank100_p50_s")  # items 8, 9: newer than the committed cpu.json
NEWER_THAN_CPU_JSON = (
    *NEW_HEADLINES,
    "torch_server_rss_mb",
    "onnx_server_rss_mb",
    "batching_min_ratio",
    "p99_over_batch_compute_c32",
    "batching_ceiling_c32",
    "batching_share_of_ceiling_c32",
    "explain_well_formed",
    "explain_onnx_total_s_p50",
)


def _check_headlines(data: dict, keys: tuple[str, ...] | None = None) -> None:
    for key in HEADLINES if keys is None else keys:
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
    previous = save_tiny_model(tmp_path / "tiny-deeper", seed=1, num_layers=4)  # not the real previous default
    out, md = tmp_path / "bench.json", tmp_path / "BENCHMARKS.md"
    argv = ["bench", "--model", str(model), "--compare", str(previous), "--quick", "--json", str(out)]
    argv += ["--markdown", str(md)]
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
    assert service["rounds_per_level"] == 2 and service["seconds_per_level"] == 2.0  # the modes took turns
    assert all(len(lv["rounds_rps"]) == 2 for mode in service["modes"].values() for lv in mode["levels"])
    control = service["control"]  # a second batching-off server, in the same rounds
    assert [lv["concurrency"] for lv in control["levels"]] == [1, 8, 32] and control["max_batch_pairs"] == 1
    off = {lv["concurrency"]: lv["throughput_rps"] for lv in service["modes"]["batching_off"]["levels"]}
    for lv in control["levels"]:
        c = lv["concurrency"]
        assert service["control_ratio_by_concurrency"][str(c)] == pytest.approx(lv["throughput_rps"] / off[c], rel=1e-2)
    assert service["modes"]["batching_off"]["padding_efficiency"] == 1.0  # one pair per pass: never padded
    assert 0.0 < service["modes"]["batching_on"]["padding_efficiency"] <= 1.0
    other = service["other_server"]  # the backend not served, in a run of its own for its RSS
    assert {other["backend"], service["served_backend"]} == {"torch", "onnx"} and other["levels"][0]["errors"] == 0
    assert service[f"{other['backend']}_server_rss_mb"] == other["peak_rss_mb"] > 0
    full, one = service["batch_compute"], service["single_pair_compute"]  # the ceiling: same timing, 1 vs full
    assert one["items"] == 1 and full["items"] > 1
    assert service["batching_ceiling_c32"] == pytest.approx(full["per_s"] / one["per_s"], rel=1e-2)
    assert data["batching_share_of_ceiling_c32"] == pytest.approx(
        data["batching_speedup_c32"] / data["batching_ceiling_c32"], rel=1e-2
    )
    assert data["items"]["prefix"]["reuse_vs_plain"]["max_abs_prob_diff"] < 1e-3

    text = md.read_text()
    for key in HEADLINES:
        assert f"`{key}`" in text
    assert m["cpu_model"] in text and "--quick" in text and "**Not run.**" in text
    assert "Padding efficiency (real / padded prompt tokens" in text and "batching off 1" in text
    assert "Control: a second batching-off server" in text


def _results() -> dict:
    if not RESULTS.is_file():
        pytest.skip(f"{RESULTS} has not been generated yet")
    return json.loads(RESULTS.read_text())


def test_markdown_renders_from_the_committed_json(tmp_path: Path) -> None:
    data = _results()
    not_measured = {k for k, (item, _, _) in HEADLINES.items() if data["items"].get(item, {}).get("skipped")}
    _check_headlines(data, tuple(k for k in HEADLINES if (k not in NEWER_THAN_CPU_JSON or k in data)
                                 and k not in not_measured))  # fmt: skip
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


def test_models_and_rerank100_on_tiny_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Items 8 and 9 alone (every other item skipped: no exports, no backends of items 1-7), on two tiny models.
    Item 9's server runs `--backend auto`, as a user's does; where that exports INT8 ONNX, it goes to the AFRL
    cache (here a temporary one), never to the bench's."""
    from afrl.testing import save_tiny_model

    monkeypatch.setenv("AFRL_CACHE_DIR", str(tmp_path / "afrl-cache"))

    model = save_tiny_model(tmp_path / "tiny")
    previous = save_tiny_model(tmp_path / "tiny-deeper", seed=1, num_layers=4)
    out, md, cache = tmp_path / "bench.json", tmp_path / "BENCHMARKS.md", tmp_path / "cache"
    argv = ["bench", "--model", str(model), "--compare", str(previous), "--quick", "--json", str(out)]
    argv += ["--markdown", str(md), "--cache-dir", str(cache), "--threads", "1", "--skip", *CORE_ITEMS, "explain"]
    rc = main(argv)
    data = json.loads(out.read_text())
    assert rc == 0, data["errors"]
    assert data["errors"] == {}
    _check_headlines(data, NEW_HEADLINES)
    assert "--compare" in data["command"]
    assert data["items"]["prepare"]["skipped"] and all(data["items"][k] == {"skipped": True} for k in CORE_ITEMS)
    assert not any(p.is_dir() for p in cache.iterdir())  # nothing exported

    item = data["items"]["models"]
    dtype = models.service_dtype()
    assert item["dtype"] == dtype and item["documents"] == 100 and item["pass_size"] == 32
    assert 350 <= item["document_chars"]["min"] <= item["document_chars"]["max"] <= 450
    main_row, deeper = item["models"]
    assert [main_row["spec"], deeper["spec"]] == [str(model), str(previous)]
    assert [main_row["layers"], deeper["layers"]] == [2, 4]
    assert {main_row["dtype"], deeper["dtype"]} == {"bfloat16" if dtype == "bf16" else "float32"}
    for row in item["models"]:
        assert row["pairs_per_s"] > 0 and row["timing"]["items"] == 100 and row["timing"]["repeats"] >= 1
    assert deeper["model_speedup"] == pytest.approx(main_row["pairs_per_s"] / deeper["pairs_per_s"], rel=1e-2)
    assert data["default_speedup_vs_previous"] == deeper["model_speedup"]

    rr = data["items"]["rerank100"]
    assert rr["requests"] == 3 and rr["documents"] == 100 and len(rr["latencies_s"]) == 3
    assert 0 < rr["p50_s"] <= rr["p90_s"] <= rr["max_s"] == max(rr["latencies_s"])
    assert data["rerank100_p50_s"] == rr["p50_s"] == pytest.approx(percentile(rr["latencies_s"], 50), abs=1e-3)
    assert 350 <= rr["document_chars"]["min"] <= rr["document_chars"]["max"] <= 450
    assert rr["prompt_tokens_per_document"] > 0 and rr["chosen"]  # /info says why auto chose it
    assert rr["first_start_prepare_s"] >= 0
    if rr["served_backend"] == "torch":  # a native-bf16 CPU, or an INT8 graph that failed its gate
        assert rr["precision"] == ("bfloat16" if dtype == "bf16" else "float32")
    else:
        assert rr["served_backend"] == "onnx" and rr["precision"] == "onnx int8"

    text = md.read_text()
    assert "## 8. Default model against the previous default" in text and "## 9. /rerank of 100 documents" in text
    assert "`default_speedup_vs_previous`" in text and "`rerank100_p50_s`" in text
    assert "3 sequential requests" in text and "one query with 100 documents" in text
    assert f"`--backend auto` chose, as /info says: {rr['chosen']}" in text
    assert "before the timed server started" in text
    assert f"| {report.fmt(deeper['model_speedup'])} |" in text and "## 2. Backends\n\nNot measured" in text


def test_explain_on_a_tiny_prefix_lm_compares_torch_and_onnx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 10 alone on a tiny prefix LM: its export (built into the cache) explains through its own decoder graph,
    the same text as the torch backend (both fp32 here; on a bf16 CPU the service's torch backend is bf16, whose
    greedy path may differ), every explanation well-formed, and the section renders."""
    from afrl.testing import save_tiny_model

    monkeypatch.setattr(models, "service_dtype", lambda: "fp32")
    model = save_tiny_model(tmp_path / "tiny-bert", arch="bert")
    out, md, cache = tmp_path / "bench.json", tmp_path / "BENCHMARKS.md", tmp_path / "cache"
    argv = ["bench", "--model", str(model), "--quick", "--json", str(out), "--markdown", str(md)]
    argv += ["--cache-dir", str(cache), "--threads", "1", "--skip", *CORE_ITEMS, "models", "rerank100"]
    rc = main(argv)
    data = json.loads(out.read_text())
    assert rc == 0, data["errors"]
    item = data["items"]["explain"]
    assert list(item["backends"]) == ["torch-fp32", "onnx"] and item["pairs"] == 2
    for row in item["backends"].values():
        assert row["well_formed"] == 1.0 and row["end_reasons"] == ["eos"]
        assert 0 < row["score_ms_p50"] <= row["first_text_ms_p50"] <= 1000 * row["total_s_max"]
        assert row["tokens_per_s"] > 0 and row["tokens_mean"] <= item["max_new_tokens"]
    assert item["backends"]["onnx"]["same_text_as_first"] == 1.0  # the same constrained greedy decoding
    assert data["explain_well_formed"] == 1.0
    assert data["explain_onnx_total_s_p50"] == item["backends"]["onnx"]["total_s_p50"]
    text = md.read_text()
    assert "## 10. /explain on each backend" in text and "| onnx |" in text


def test_rounds_of_a_level_pool_their_requests_time_and_latencies() -> None:
    from bench.service_load import level_stats, pool_rounds

    a = level_stats(8, [0.1, 0.2, 0.3], {}, None, 2.0)
    b = level_stats(8, [0.4] * 5, {"503": 2}, "overloaded", 3.0)
    assert a["throughput_rps"] == 1.5 and b["throughput_rps"] == pytest.approx(5 / 3, abs=1e-3)
    pooled = pool_rounds([a, b])
    assert pooled["requests"] == 8 and pooled["seconds"] == 5.0 and pooled["throughput_rps"] == 1.6
    assert pooled["p50_ms"] == 400.0 and pooled["mean_ms"] == pytest.approx(1000 * 2.6 / 8, abs=0.01)
    assert pooled["errors"] == 2 and pooled["error_statuses"] == {"503": 2} and pooled["first_error"] == "overloaded"
    assert pooled["rounds_rps"] == [1.5, b["throughput_rps"]] and "_latencies" not in pooled


def test_prefix_reuse_is_not_applicable_to_a_prefix_lm(tmp_path: Path) -> None:
    """Item 4 on a tiny prefix LM (bidirectional over the prompt, as the shipped default): recorded as not
    applicable, with the reason, instead of failing the run; the section says why."""
    from afrl.testing import save_tiny_model
    from bench.prefix import NOT_FOR_PREFIX_LM

    model = save_tiny_model(tmp_path / "tiny-bert", arch="bert")
    out, md = tmp_path / "bench.json", tmp_path / "BENCHMARKS.md"
    argv = ["bench", "--model", str(model), "--quick", "--json", str(out), "--markdown", str(md)]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--threads", "1", "--skip"]
    argv += [name for name in (*CORE_ITEMS, "models", "rerank100", "explain") if name != "prefix"]
    rc = main(argv)
    data = json.loads(out.read_text())
    assert rc == 0, data["errors"]
    assert data["items"]["prefix"] == {"skipped": True, "reason": NOT_FOR_PREFIX_LM}
    assert data["prefix_reuse_speedup"] is None and data["targets"]["prefix_reuse_speedup"]["met"] is None
    assert f"## 4. Prefix reuse\n\nNot measured in this run: {NOT_FOR_PREFIX_LM}" in md.read_text()


def test_models_ratio_comes_from_the_measured_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    measured = {"student": 250.0, "previous": 50.0, "other": 100.0}

    def fake(cfg: BenchConfig, spec: str, pairs: list, pass_size: int) -> dict:
        assert len(pairs) == 100 and len({q for q, _ in pairs}) == 1 and pass_size == 32
        return {"spec": spec, "pairs_per_s": measured[spec]}

    monkeypatch.setattr(models, "measure_model", fake)
    out = models.bench_models(BenchConfig(model="student", compare=("previous", "other")))
    assert [r["model_speedup"] for r in out["models"][1:]] == [5.0, 2.5]
    assert out["default_speedup_vs_previous"] == 5.0 and "model_speedup" not in out["models"][0]
    measured["previous"] = 125.0
    out = models.bench_models(BenchConfig(model="student", compare=("previous",)))
    assert out["default_speedup_vs_previous"] == 2.0


def test_rerank_passages_have_ms_marco_length() -> None:
    docs = workload.passages(100, (350, 450))
    assert len(set(docs)) == 100 and all(350 <= len(d) <= 450 for d in docs)
    assert all(q == workload.RERANK_QUERY for q, _ in workload.rerank_pairs(5, (350, 450)))


def test_summary_shows_new_targets_for_an_older_json() -> None:
    data = {"machine": {}, "targets": {}, "items": {}, "command": "afrl bench", "created_utc": "now"}
    rows = report.summary_section(data)
    assert "| `default_speedup_vs_previous` | n/a | >= 5 | n/a |" in rows
    assert "| `rerank100_p50_s` | n/a | <= 2 | n/a |" in rows
    text = report.render(data)
    assert "## 8. Default model against the previous default\n\nNot measured in this run." in text


def test_models_section_says_when_the_model_is_the_compared_folder() -> None:
    row = {"folder": "afrl/shipped/x", "layers": 30, "parameters": 134_515_008, "dtype": "bfloat16",
           "prompt_tokens_mean": 180.0, "pairs_per_s": 20.0, "timing": {"repeats": 3}}  # fmt: skip
    models_rows = [{**row, "spec": "default"}, {**row, "spec": "afrl/shipped/x", "model_speedup": 1.0}]
    item = {"query": "q", "documents": 100, "document_chars": {"min": 350, "max": 449, "mean": 400.0},
            "dtype": "bf16", "native_bf16": True, "pass_size": 32, "models": models_rows}  # fmt: skip
    text = report.models_section(item)
    assert "**`default` is the same folder as `afrl/shipped/x`**" in text and "| 30 | 135 M | bfloat16 |" in text
    item["models"][1]["folder"] = "afrl/shipped/y"
    assert "same folder" not in report.models_section(item)
