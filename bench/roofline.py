"""Item 3: how close the best scorer comes to this machine's matmul peak, for its own number type and runtime.

Achieved FLOP/s = FLOPs of the scored batch / its median time, with the FLOPs counted as in PaLM's model-FLOPs
convention: 2 x non-embedding parameters per real token (the sliced grade head is K+1 rows at one position and
is left out, as is the embedding lookup), plus attention, 4 x layers x (heads x head dim) x L^2 per sequence of L
tokens (QK^T and AV, the full square).

Peak = the best of a few matrix products timed in the same run, through the same runtime and number type as the
scorer: torch.matmul for torch backends; for onnxruntime a one-node MatMul graph (fp32), or the same graph after
`quantize_dynamic` (INT8: dynamic activation quantisation plus the integer product, exactly what the INT8 scorer
runs). Shapes: a square 2048 product and the model's own MLP product (tokens x hidden x intermediate).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.timing import measure

log = logging.getLogger(__name__)


def non_embedding_parameters(model: Any) -> int:
    """Parameters of the transformer body: everything but the token embedding and the LM head."""
    skip = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def scorer_flops(model: Any, lengths: list[int]) -> dict[str, float]:
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attn_width = cfg.num_attention_heads * head_dim
    n = non_embedding_parameters(model)
    dense = 2.0 * n * sum(lengths)
    attention = float(sum(4 * cfg.num_hidden_layers * attn_width * length**2 for length in lengths))
    return {"non_embedding_parameters": n, "dense_flops": dense, "attention_flops": attention,
            "total_flops": dense + attention}  # fmt: skip


def _torch_peak(dtype_name: str, shape: tuple[int, int, int], repeats: int, where: Any) -> float:
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    device = torch.device(where or "cpu")
    m, k, n = shape
    a = torch.randn(m, k).to(device, dtype)
    b = torch.randn(k, n).to(device, dtype)

    def product() -> None:
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        t = measure(product, 1, repeats, budget_s=20)
    return 2.0 * m * k * n / t.median_s


def _matmul_graph(path: Path, k: int, n: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, n)).astype(np.float32), "W")
    node = helper.make_node("MatMul", ["X", "W"], ["Y"])
    graph = helper.make_graph(
        [node],
        "matmul",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["m", n])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))


def _ort_peak(number_type: str, shape: tuple[int, int, int], repeats: int, where: Any) -> float:
    """`where` is (providers, threads) for the session, as the scorer's own session was made."""
    from export.runtime import make_session
    from export.variants import convert_fp16, quantize_int8

    providers, threads = where
    m, k, n = shape
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "matmul.onnx"
        _matmul_graph(path, k, n)
        if number_type == "int8":
            path = quantize_int8(path, Path(tmp) / "matmul.int8.onnx")
        elif number_type == "fp16":
            path = convert_fp16(path, Path(tmp) / "matmul.fp16.onnx")
        session = make_session(path, providers, threads)
        x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
        t = measure(lambda: session.run(None, {"X": x}), 1, repeats, budget_s=20)
    return 2.0 * m * k * n / t.median_s


def peak_flops(backend: Any, model: Any, tokens: int, threads: int, repeats: int, square: int = 2048) -> dict[str, Any]:
    """The best measured matmul FLOP/s over the shapes in the module docstring, on the backend's runtime."""
    cfg = model.config
    runtime, number_type = backend.runtime, backend.number_type
    shapes = [(square, square, square), (tokens, cfg.hidden_size, cfg.intermediate_size)]
    measured = {}
    for shape in shapes:
        key = "x".join(map(str, shape))
        if runtime == "torch":
            measured[key] = _torch_peak(number_type, shape, repeats, backend.device)
        else:
            measured[key] = _ort_peak(number_type, shape, repeats, (backend.providers, threads))
        log.info("bench: %s %s matmul %s: %.1f GFLOP/s", runtime, number_type, key, measured[key] / 1e9)
    best = max(measured, key=measured.__getitem__)
    return {"runtime": runtime, "number_type": number_type, "by_shape_flops_per_s": measured,
            "peak_flops_per_s": measured[best], "peak_shape": best}  # fmt: skip


def bench_roofline(cfg: Any, backends: dict[str, Any], answer: dict[str, Any], torch_model: Any) -> dict[str, Any]:
    """Achieved over peak for the backend that was fastest at the full batch in item 2."""
    best = backends[answer["best_backend_b32"]]
    batch = answer["_batch"]
    timing = answer["_timings"][best.name][cfg.batch]
    flops = scorer_flops(torch_model, [len(p.input_ids) for p in batch])
    achieved = flops["total_flops"] / timing.median_s
    peak = peak_flops(best, torch_model, sum(len(p.input_ids) for p in batch), cfg.threads, cfg.repeats)
    return {
        "backend": best.name,
        **flops,
        "median_s": timing.median_s,
        "achieved_flops_per_s": achieved,
        **peak,
        "roofline_fraction": round(achieved / peak["peak_flops_per_s"], 4),
    }
