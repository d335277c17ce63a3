"""BENCHMARKS.md from the benchmark JSON (and the GPU JSON beside it, when bench/gpu.py has written one).

The Markdown is generated, never edited by hand: `afrl bench --from-json bench/results/cpu.json --markdown
BENCHMARKS.md` rewrites it from the numbers, so the document and the JSON cannot disagree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.runner import HEADLINES

LABELS = {
    "answer_first_speedup": "1. Answer-first over reason-first (pairs/s, full batch)",
    "best_backend_speedup_b32": "2. Best backend over torch fp32, full batch",
    "roofline_fraction": "3. Roofline: achieved / measured peak",
    "prefix_reuse_speedup": "4. Prefix reuse over plain",
    "batching_speedup_c32": "5. Dynamic batching on / off, throughput at top concurrency",
    "http_overhead_ms_c1": "5. HTTP overhead at concurrency 1 (ms)",
    "qwen3_0p6b_pairs_per_s": "6. Qwen3-0.6B architecture, pairs/s",
    "batching_min_ratio": "5. Batching on / off, lowest over the concurrency levels",
    "p99_over_batch_compute_c32": "5. p99 at top concurrency over one full batch's compute time",
    "batching_ceiling_c32": "5. Most batching can give here: in-process pairs/s, full batch over one pair",
    "batching_share_of_ceiling_c32": "5. Batching on / off at top concurrency over that ceiling",
    "server_rss_mb": "7. Server peak RSS (MB), the served backend",
    "torch_server_rss_mb": "7. Server peak RSS (MB), torch backend",
    "onnx_server_rss_mb": "7. Server peak RSS (MB), onnx backend",
    "default_speedup_vs_previous": "8. Default model over the previous default (pairs/s)",
    "rerank100_p50_s": "9. /rerank of 100 documents over HTTP, p50 (s)",
    "explain_well_formed": "10. /explain well-formed (the lower of the backends)",
    "explain_onnx_total_s_p50": "10. /explain on the ONNX backend, whole explanation p50 (s)",
}


def fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if x != x:  # NaN
            return "n/a"
        if abs(x) >= 1e9:
            return f"{x / 1e9:.1f} G"
        return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"
    return str(x)


def giga(x: float, unit: str) -> str:
    return f"{x / 1e9:.3g} G{unit}"


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_section(data: dict[str, Any]) -> str:
    m = data["machine"]
    flags = ", ".join(f for f, on in m.get("cpu_flags", {}).items() if on) or "none of interest"
    v = m.get("versions", {})
    rows = [
        ["CPU", m.get("cpu_model") or m.get("gpu_name", "n/a")],
        ["logical CPUs / physical cores", f"{m.get('logical_cpus')} / {m.get('physical_cores')}"],
        ["threads used (torch.set_num_threads, ORT intra_op_num_threads)", str(m.get("threads_used"))],
        ["relevant CPU flags", flags],
        ["native bf16 (AMX or AVX512-BF16)", fmt(m.get("native_bf16"))],
        ["memory", f"{m.get('memory_gib')} GiB"],
        [
            "load average (1, 5, 15 min) at start / end",
            f"{m.get('load_average_at_start')} / {m.get('load_average_at_end')}",
        ],
        ["versions", ", ".join(f"{k} {val}" for k, val in v.items())],
    ]
    if "gpu_name" in m:
        rows.insert(1, ["GPU", m["gpu_name"]])
    return table(["", ""], rows)


def summary_section(data: dict[str, Any]) -> str:
    rows = []
    for key, (_, op, goal) in HEADLINES.items():
        # A JSON from before a headline existed has no entry for it: its target is still the current one.
        t = data.get("targets", {}).get(key, {"comparison": op, "target": goal})
        target = f"{t['comparison']} {fmt(t['target'])}" if t.get("target") is not None else "none set"
        rows.append([LABELS[key], f"`{key}`", fmt(data.get(key)), target, fmt(t.get("met"))])
    return table(["figure", "JSON key", "measured", "target", "met"], rows)


def _per_s(entry: dict[str, Any]) -> Any:
    return entry.get("per_s")


def answer_first_section(item: dict[str, Any]) -> str:
    rows = []
    for key in sorted(k for k in item if k.startswith("batch_")):
        row = item[key]
        rows.append(
            [
                key.replace("batch_", ""),
                _per_s(row["answer_first"]),
                _per_s(row["reason_first"]),
                row["speedup"],
                f"{row['answer_first']['repeats']} / {row['reason_first']['repeats']}",
            ]
        )
    return (
        f"Same model and backend ({item['model_backend']}), same prompt length (answer-first "
        f"{fmt(item['answer_first_prompt_tokens'])} tokens, reason-first {fmt(item['reason_first_prompt_tokens'])}). "
        "Answer-first: one forward pass, grade logits at the last prompt position. Reason-first: the instruction "
        f"asks for the explanation before the grade; `generate` writes {item['explanation_tokens']} tokens greedily "
        "(KV cache, every row writes all of them), then the grade is read from the next position's logits.\n\n"
        + table(["batch", "answer-first pairs/s", "reason-first pairs/s", "speed-up", "repeats (af / rf)"], rows)
        + "\n\nHow to read it: at batch 1 every generated token is one more pass over all the weights (memory-bound), "
        "so reason-first pays about one prompt pass plus that many small passes. At a full batch on a CPU, which is "
        "compute-bound, a decode step costs about as much as `batch` prompt tokens, so the ratio tends towards "
        "(prompt + explanation tokens) / prompt tokens plus the per-step overhead of `generate`: answer-first's "
        "advantage is largest where decoding is latency-bound (small batches, GPUs)."
    )


def backends_section(item: dict[str, Any]) -> str:
    b = item["batch"]
    rows = []
    for name, r in item["backends"].items():
        agree = r["vs_baseline_on_batch"]
        rows.append(
            [
                f"`{name}`",
                _per_s(r["batch_1"]),
                r["speedup_b1"],
                _per_s(r[f"batch_{b}"]),
                r[f"speedup_b{b}"],
                agree["grade_agreement"],
                agree["max_abs_prob_diff"],
                f"{r['batch_1']['repeats']} / {r[f'batch_{b}']['repeats']}",
            ]
        )
    return (
        f"Batch 1 and batch {b} x {fmt(item['prompt_tokens'])} tokens (token ids built once; tokenisation is not "
        f"timed). Ratios and grade agreement are against `{item['baseline']}`. Best at batch {b}: "
        f"`{item['best_backend_b32']}`.\n\n"
        + table(
            [
                "backend",
                "b1 pairs/s",
                "b1 vs baseline",
                f"b{b} pairs/s",
                f"b{b} vs baseline",
                "grade agreement",
                "max prob diff",
                "repeats (b1 / b)",
            ],
            rows,
        )
    )


def roofline_section(item: dict[str, Any]) -> str:
    shapes = ", ".join(f"{s}: {giga(v, 'FLOP/s')}" for s, v in item["by_shape_flops_per_s"].items())
    return table(
        ["", ""],
        [
            ["scorer", f"`{item['backend']}` ({item['runtime']}, {item['number_type']})"],
            ["non-embedding parameters", f"{item['non_embedding_parameters']:,}"],
            [
                "FLOPs of the batch (dense + attention)",
                f"{giga(item['dense_flops'], 'FLOP')} + {giga(item['attention_flops'], 'FLOP')}",
            ],
            ["median time of the batch", f"{fmt(item['median_s'])} s"],
            ["achieved", giga(item["achieved_flops_per_s"], "FLOP/s")],
            ["measured peak (same runtime and number type)", f"{giga(item['peak_flops_per_s'], 'FLOP/s')} ({shapes})"],
            ["fraction", fmt(item["roofline_fraction"])],
        ],
    )


def prefix_section(item: dict[str, Any]) -> str:
    a = item["reuse_vs_plain"]
    return (
        f"{item['documents']} documents for one query, prompts of {item['prompt_tokens']} tokens of which "
        f"{item['shared_prefix_tokens']} are the shared instruction + query prefix ({item['instruction_tokens']}-token "
        f"instruction); {item['backend']}, passes of {item['pass_size']} documents as the batcher makes them. "
        f"The two paths' grades agree on {fmt(a['grade_agreement'])} of the documents "
        f"(max prob diff {fmt(a['max_abs_prob_diff'])})."
        "\n\n"
        + table(
            ["path", "seconds (median)", "documents/s", "repeats"],
            [
                ["plain", item["plain"]["median_s"], item["plain"]["per_s"], item["plain"]["repeats"]],
                ["prefix reuse", item["reuse"]["median_s"], item["reuse"]["per_s"], item["reuse"]["repeats"]],
            ],
        )
    )


def service_section(item: dict[str, Any]) -> str:
    rows = []
    for mode, entry in item["modes"].items():
        for lv in entry["levels"]:
            rows.append(
                [
                    mode.replace("_", " "),
                    lv["concurrency"],
                    lv["throughput_rps"],
                    lv["p50_ms"],
                    lv["p99_ms"],
                    lv["requests"],
                    lv["errors"],
                ]
            )
    inproc = item["modes"]["batching_off"]["in_process_c1"]["median_s"] * 1000
    padding = [
        f"{mode.replace('_', ' ')} {fmt(e['padding_efficiency'])}"
        for mode, e in item["modes"].items()
        if e.get("padding_efficiency") is not None
    ]
    padding_line = (
        "\n\nPadding efficiency (real / padded prompt tokens over every pass the server ran, from its "
        f"`afrl_real_tokens_total` and `afrl_padded_tokens_total`): {', '.join(padding)}."
        if padding
        else ""
    )
    if item.get("batch_compute"):
        ratios = ", ".join(f"c={c} {fmt(r)}x" for c, r in item["batching_ratio_by_concurrency"].items())
        padding_line += (
            f"\n\nBatching on / off by concurrency: {ratios}. One full batch ({item['batch_compute']['items']} "
            f"of the pairs, in process, no server): {fmt(item['batch_compute']['median_s'] * 1000)} ms; p99 at "
            f"concurrency {item['top_concurrency']} is {fmt(item['p99_over_batch_compute_c32'])}x that."
        )
    if item.get("single_pair_compute"):
        padding_line += (
            f" One pair's pass, timed the same way: {fmt(item['single_pair_compute']['median_s'] * 1000)} ms. So "
            f"batching can give at most {fmt(item['batching_ceiling_c32'])}x on this backend and machine (full "
            f"batch over one pair, in pairs/s); the server reached {fmt(item['batching_share_of_ceiling_c32'])} of "
            "that ceiling at the top concurrency."
        )
    if item.get("control_ratio_by_concurrency"):
        ratios = ", ".join(f"c={c} {fmt(r)}x" for c, r in item["control_ratio_by_concurrency"].items())
        padding_line += (
            "\n\nControl: a second batching-off server, identical to the first and measured in the same rounds, "
            f"over the first: {ratios}. Two servers that differ in nothing differ this much here, so an on / off "
            "ratio within that distance of 1 is noise."
        )
    return (
        f"`afrl serve` in processes of its own ({item['served_backend']} backend, scorer "
        f"`{item.get('served_scorer')}`), "
        f"{item['request']}, {fmt(item['seconds_per_level'])} s per level, httpx clients in the benchmark process. "
        + (
            f"The servers (batching on, off, and the control below) run side by side and take turns: "
            f"{item['rounds_per_level']} rounds per level, in alternating order, so that a change in the machine's "
            "load falls on all of them. "
            if item.get("rounds_per_level", 1) > 1
            else ""
        )
        + "Batching off = `max_batch_pairs` 1; on = `max_batch_pairs` "
        f"{item['modes']['batching_on']['max_batch_pairs']} "
        "(the service default is 32) and the default 5 ms window.\n\n"
        + table(["batching", "concurrency", "requests/s", "p50 ms", "p99 ms", "requests", "errors"], rows)
        + f"\n\nHTTP overhead at concurrency 1: p50 over HTTP minus the in-process backend call ({fmt(inproc)} ms, "
        f"prompt building + scoring) = **{fmt(item['http_overhead_ms_c1'])} ms**." + padding_line
    )


def qwen3_section(item: dict[str, Any]) -> str:
    c = item["config"]
    return (
        f"{item['model']}: {c['num_hidden_layers']} layers, hidden {c['hidden_size']}, vocabulary {c['vocab_size']}; "
        f"backend `{item['backend']}`, batch {item['batch']} x {item['tokens']} tokens, {item['threads']} threads, "
        "in its own process.\n\n"
        + table(
            ["pairs/s", "median s per batch", "repeats", "load s", "peak RSS MB"],
            [[item["pairs_per_s"], item["median_s"], item["repeats"], item["load_s"], item["peak_rss_mb"]]],
        )
    )


def memory_section(item: dict[str, Any]) -> str:
    rows = [
        [f"{item['served_backend']}, {m.replace('_', ' ')}", e.get("peak_rss_mb")] for m, e in item["modes"].items()
    ]
    other = item.get("other_server")
    if other:
        rps = other["levels"][-1]["throughput_rps"]
        label = (
            f"{other['backend']} (dtype {other['dtype']}), batching on, c={item['top_concurrency']} only ({rps} req/s)"
        )
        rows.append([label, other["peak_rss_mb"]])
    return (
        f"VmHWM of the server process (/proc/PID/status) after the load runs of item 5 ({item['served_backend']} "
        f"backend, scorer `{item.get('served_scorer')}`): the model, the runtime and everything a request touched, "
        "at up to the top concurrency. The onnx backend holds its explanation decoder only after the first /explain "
        "(these runs send none), since 2026-12-04; runs before that held it from the start. The other backend "
        "serves the same model once more, for its RSS.\n\n" + table(["server", "peak RSS MB"], rows)
    )


def models_section(item: dict[str, Any]) -> str:
    main = item["models"][0]
    rows = []
    for i, m in enumerate(item["models"]):
        rows.append(
            [
                f"`{m['spec']}`" + (" (--model)" if i == 0 else ""),
                f"`{m['folder']}`",
                m["layers"],
                f"{fmt(m['parameters'] / 1e6)} M",
                m["dtype"],
                m["prompt_tokens_mean"],
                m["pairs_per_s"],
                m["timing"]["repeats"],
                "-" if i == 0 else m["model_speedup"],
            ]
        )
    c = item["document_chars"]
    same = [m["spec"] for m in item["models"][1:] if m["folder"] == main["folder"]]
    note = (
        f" **`{main['spec']}` is the same folder as {', '.join(f'`{s}`' for s in same)}**: that ratio shows only "
        "the noise of the measurement."
        if same
        else ""
    )
    return (
        f"The same workload for every model: one query (`{item['query']}`) with {item['documents']} documents of "
        f"{c['min']}-{c['max']} characters (mean {fmt(c['mean'])}, MS MARCO passage length), each model under its "
        "own contract (prompts built once, not timed). Each model is loaded as `afrl serve` loads it and scored by "
        f"the service's torch backend, plain path, in {item['dtype']} (what `--dtype auto` picks here; native bf16: "
        f"{fmt(item['native_bf16'])}), in passes of {item['pass_size']} documents (the service's `max_batch_pairs`). "
        f"Speed-up = `{main['spec']}` pairs/s over the row's; the first compared model gives "
        "`default_speedup_vs_previous`. The models are measured one after the other, so a change of load between "
        f"them moves the ratio.{note}\n\n"
        + table(
            ["model", "folder", "layers", "parameters", "dtype", "prompt tokens", "pairs/s", "repeats", "speed-up"],
            rows,
        )
    )


def rerank_precision(item: dict[str, Any]) -> str:
    """Item 9's number type: `precision` (torch dtype or ONNX scorer, from /info), or `dtype` in older JSON, whose
    server was always torch."""
    return str(item.get("precision") or item.get("dtype"))


def rerank_section(item: dict[str, Any]) -> str:
    c = item["document_chars"]
    return (
        f"`afrl serve --model {item['served_model']}` in its own process ({item['served_backend']} backend, "
        f"{rerank_precision(item)}, the service defaults: `--backend {'auto' if 'precision' in item else 'torch'}`, "
        f"dynamic batching with `max_batch_pairs` "
        f"{item['max_batch_pairs']}, prefix reuse where the backend has it). "
        + (f"What `--backend auto` chose, as /info says: {item['chosen']}. " if item.get("chosen") else "")
        + (
            f"That choice was made before the timed server started ({fmt(item['first_start_prepare_s'])} s here, "
            "the one-off export of a first start when it is not cached yet), so the server started as every later "
            "start does. "
            if "first_start_prepare_s" in item
            else ""
        )
        + f"{item['requests']} sequential requests after {item['warmup_requests']} warm-up, each "
        f"{item['request']} of {c['min']}-{c['max']} characters (mean {fmt(c['mean'])}, about "
        f"{fmt(item['prompt_tokens_per_document'])} prompt tokens per document), different documents in every "
        "request. Latency is end to end at the client (httpx in the benchmark process): body encoding, HTTP, "
        "tokenisation, scoring, the response.\n\n"
        + table(
            ["p50 s", "p90 s", "max s", "server inference ms (p50)", "server queue ms (p50)", "server peak RSS MB"],
            [
                [
                    item["p50_s"],
                    item["p90_s"],
                    item["max_s"],
                    item["server_inference_ms_p50"],
                    item["server_queue_ms_p50"],
                    item["peak_rss_mb"],
                ]
            ],
        )
    )


def explain_section(item: dict[str, Any]) -> str:
    rows = [
        [
            name,
            r["score_ms_p50"],
            r["first_text_ms_p50"],
            r["total_s_p50"],
            r["total_s_max"],
            r["tokens_mean"],
            r["tokens_per_s"],
            fmt(r["well_formed"]),
            fmt(r["same_text_as_first"]),
        ]
        for name, r in item["backends"].items()
    ]
    example = next(iter(item["backends"].values()))["example"]
    return (
        f"{item['pairs']} pairs of MS MARCO length (about {fmt(item['prompt_tokens_mean'])} prompt tokens), each "
        f"explained by each backend in this process through `Backend.explain` (no HTTP), greedy, at most "
        f"{item['max_new_tokens']} tokens, under the explanation constraint (`afrl.explanation_constraint`: the "
        "contract's labels in order, the Evidence a quote of the passage, the Verdict the first token). "
        "Well-formed: `afrl.contract.parse_completion` accepts it, which that decoding guarantees whenever the "
        "budget fits; it says nothing of the words inside the fields. Same text: equal to the "
        f"`{item['first_backend']}` row's.\n\n"
        + table(
            [
                "backend",
                "score ms",
                "first text ms",
                "total s (p50)",
                "total s (max)",
                "tokens",
                "tokens/s",
                "well-formed",
                "same text",
            ],
            rows,
        )
        + "\n\nThe first explanation, as written:\n\n```text\n"
        + example
        + "\n```"
    )


SECTIONS = [
    ("answer_first", "1. Answer-first against reason-first", answer_first_section),
    ("backends", "2. Backends", backends_section),
    ("roofline", "3. Roofline", roofline_section),
    ("prefix", "4. Prefix reuse", prefix_section),
    ("service", "5. Service under load", service_section),
    ("qwen3", "6. Production size", qwen3_section),
    ("service", "7. Server memory", memory_section),
    ("models", "8. Default model against the previous default", models_section),
    ("rerank100", "9. /rerank of 100 documents", rerank_section),
    ("explain", "10. /explain on each backend", explain_section),
]


def items_markdown(data: dict[str, Any], level: str = "##", only_measured: bool = False) -> list[str]:
    out = []
    for key, title, render in SECTIONS:
        item = data.get("items", {}).get(key)
        missing = item is None or item.get("skipped")
        if missing and only_measured:
            continue
        out.append(f"{level} {title}\n")
        if missing:
            out.append(
                "Not measured in this run" + (f": {item['reason']}" if item and "reason" in item else ".") + "\n"
            )
        elif "error" in item:
            out.append(f"Failed: `{item['error']}`\n")
        else:
            out.append(render(item) + "\n")
    return out


def gpu_section(gpu: dict[str, Any] | None) -> list[str]:
    out = ["## 11. GPU (CUDA and TensorRT, fp16)\n"]
    if gpu is None:
        out.append(
            "**Not run.** `bench/gpu.py` runs items 1-4 and 6 with onnxruntime's CUDA and TensorRT execution "
            "providers (fp16) on an NVIDIA GPU and writes `bench/results/gpu.json` and this section. The machine "
            "these numbers come from has no GPU, so it has not been run yet:\n\n"
            "```bash\npip install -e '.[gpu]'   # onnxruntime-gpu, in its own environment (never with onnxruntime)\n"
            "python -m bench.gpu --model default-base --json bench/results/gpu.json --markdown BENCHMARKS.md\n```\n"
        )
        return out
    out.append(f"Measured by `{gpu['command']}` on {gpu['created_utc']}.\n")
    out.append(machine_section(gpu) + "\n")
    out.append(summary_section(gpu) + "\n")
    out += items_markdown(gpu, "### GPU", only_measured=True)
    return out


def render(data: dict[str, Any], gpu: dict[str, Any] | None = None, source: str = "bench/results/cpu.json") -> str:
    notes = []
    if data.get("quick"):
        notes.append(
            "**This is a `--quick` run** (small sizes, few repeats): it checks the code paths, the numbers mean little."
        )
    load = data["machine"].get("load_average_at_start", [0])[0]
    cpus = data["machine"].get("logical_cpus") or 1
    if load > 0.5 * cpus:
        notes.append(
            f"The load average was {load} on {cpus} logical CPUs when the run started: other jobs shared the cores, "
            "so absolute figures are low; ratios are less affected, but not immune."
        )
    if data.get("errors"):
        notes.append("Items that failed: " + ", ".join(f"{k} ({v})" for k, v in data["errors"].items()))
    parts = [
        "# Benchmarks\n",
        f"Generated from `{source}` by `afrl bench`; do not edit by hand. Ratios are measured side by "
        "side in one run; each figure is a median over repeats after warm-up (the tables give the repeat counts). "
        "These are not tests: no number ever fails CI.\n",
        f"Command: `{data['command']}` ({data['created_utc']}, {fmt(data.get('total_seconds'))} s in all).\n",
        *(n + "\n" for n in notes),
        "## Machine\n",
        machine_section(data) + "\n",
        "## Summary\n",
        summary_section(data) + "\n",
        *items_markdown(data),
        *gpu_section(gpu),
    ]
    return "\n".join(parts).rstrip() + "\n"


def write_markdown(json_path: Path, markdown_path: Path, gpu_json: Path | None = None) -> Path:
    data = json.loads(Path(json_path).read_text())
    gpu_path = gpu_json or Path(json_path).with_name("gpu.json")
    gpu = json.loads(gpu_path.read_text()) if gpu_path.is_file() else None
    Path(markdown_path).write_text(render(data, gpu, _display_path(Path(json_path))))
    return Path(markdown_path)


def _display_path(path: Path) -> str:
    """The JSON's path relative to the working directory when it is inside it (as the README quotes it)."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
