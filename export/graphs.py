"""Build the two ONNX graphs of an export: the sliced scorer and the explanation decoder with KV cache.

The scorer is the AFRL hot path: one forward pass over the prompt, the hidden state at the last real position,
times the K+1 grade rows of the LM head. It is exported with the dynamo exporter (`torch.onnx.export(dynamo=True)`):
the TorchScript exporter fails on this graph with transformers 4.57 (`unordered_map::at`, DESIGN.md 9).
The decoder is optimum-onnx's `text-generation-with-past` export of the same (merged) model. A prefix LM
(`afrl.prefix_lm`: bidirectional over the prompt, BERT head) exports its scorer the same way; its decoder is its
own graph (export/prefix_decoder.py), since optimum's text-generation export has no prefix-LM attention.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from afrl.prefix_lm import is_prefix_lm
from afrl.scorer import grade_head, grade_logits, last_real_index, position_ids_from_mask

log = logging.getLogger(__name__)

SCORER_FILE = "scorer.onnx"
DECODER_DIR = "decoder"
DECODER_FILE = "model.onnx"
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "grade_logits"
# protobuf cannot hold more than 2 GiB; stay clear of the limit (graph structure and attributes add a little).
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 64 * 1024**2


class ScorerGraph(torch.nn.Module):
    """(input_ids, attention_mask) -> (batch, K+1) grade logits at the last real position, either padding side.

    A causal LM's grade rows of the head are copied out once, so the exported graph holds a (K+1) x hidden matrix
    instead of the vocabulary-sized head (an untied head would otherwise be exported whole and gathered at run
    time). A prefix LM is the torch scorer's own `afrl.scorer.grade_logits` (bidirectional mask, the head's
    transform and bias); its decoder is tied to the input embeddings the graph holds anyway, so gathering the K+1
    rows adds no weights.
    """

    def __init__(self, model: Any, grade_ids: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        self.grade_ids = list(grade_ids)
        self.prefix_lm = is_prefix_lm(model)
        if not self.prefix_lm:
            self.register_buffer("grade_rows", grade_head(model, grade_ids).detach().clone())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.prefix_lm:
            return grade_logits(self.model, input_ids, attention_mask, self.grade_ids)
        out = self.model.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        )
        hidden = out.last_hidden_state
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_real_index(attention_mask)]
        return (last @ self.grade_rows.T).float()


def parameter_bytes(model: torch.nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for p in model.parameters():  # tied weights are one tensor: count them once
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


def export_scorer(
    model: Any,
    grade_ids: Sequence[int],
    path: Path,
    external_data: bool | None = None,
    opset: int | None = None,
    optimize: bool = True,
) -> bool:
    """Export the sliced scorer to `path`; returns whether the weights went to external data (`path`.data)."""
    graph = ScorerGraph(model, grade_ids).eval()
    # Example batch: two rows, one left-padded, and a length above 1, so that no dimension is specialised.
    ids = torch.full((2, 8), 1, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    if external_data is None:
        external_data = parameter_bytes(graph) > EXTERNAL_DATA_THRESHOLD
    dynamic = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    # onnxscript's optimizer folds the shape arithmetic (a cleaner graph for TensorRT); onnxruntime optimises
    # again at load, so skipping it only saves export time (about half on a 30-layer model)
    dynamo_export(graph, (ids, mask), path, INPUT_NAMES, [OUTPUT_NAME], dynamic, opset, optimize, external_data)
    return external_data


def dynamo_export(
    graph: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_shapes: dict[str, Any],
    opset: int | None = None,
    optimize: bool = True,
    external_data: bool = False,
) -> None:
    """`torch.onnx.export(dynamo=True)` of `graph` traced with `example`, saved to `path`: the one export call of
    the scorer and the prefix-LM decoder (export/prefix_decoder.py), quiet and refusing an empty result."""
    # onnx_ir and onnxscript log every deduplicated initializer and folded constant at INFO: noise to a user
    for name in ("onnx_ir", "onnxscript"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter says nothing about the graph
        program = torch.onnx.export(
            graph,
            example,
            None,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=dynamic_shapes,
            dynamo=True,
            optimize=optimize,
            opset_version=opset,
            verbose=False,
        )
    if program is None:
        raise RuntimeError(f"torch.onnx.export(dynamo=True) returned no program for {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(path, external_data=external_data)


def export_decoder(model: Any, out_dir: Path, opset: int | None = None) -> Path:
    """optimum-onnx `text-generation-with-past` export of the model into `out_dir` (model.onnx, configs)."""
    from optimum.exporters.onnx import onnx_export_from_model

    out_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript tracer warnings about data-dependent branches
        # Validation is ours (greedy equality with transformers), not optimum's random-input check.
        onnx_export_from_model(model, out_dir, task="text-generation-with-past", opset=opset, do_validation=False)
    path = out_dir / DECODER_FILE
    if not path.is_file():
        raise RuntimeError(f"optimum did not write {path}; files: {sorted(p.name for p in out_dir.iterdir())}")
    return path
