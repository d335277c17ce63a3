"""The ONNX explanation decoder of a prefix LM: one graph with an explicit KV cache, for the prompt and each step.

Why its own graph: optimum's `text-generation-with-past` export (the causal LMs' decoder, export/graphs.py) reads
the prompt causally, while a prefix LM (`afrl.prefix_lm`) attends over its whole prompt both ways and only the
written tokens causally. `PrefixDecoderGraph` is (input_ids (1, n), keys, values) -> (next-token logits (1, vocab),
keys and values grown by n), the caches stacked as (layers, 1, heads, length, head_dim):

- the prompt pass is a call with an empty cache: the n prompt tokens attend to each other both ways, as
  `afrl.prefix_lm.prompt_pass` does;
- each step is a call with one token: it attends to the cached prompt and every earlier new token, as
  `afrl.prefix_lm.step_pass` does.

The new tokens see every position (the mask is all ones) in both cases, which is exactly the prefix-LM rule, so one
graph, and one copy of the weights, serves both. transformers' `DynamicCache` is rebuilt from the stacked tensors
inside the graph, so its inputs are fixed whatever the depth. Exported with the dynamo exporter like the scorer
(export/graphs.py). The example it is traced with is a real prompt's cache: traced with an all-zero example
cache, the exported graph ignored the cache it was given (found by the parity check, which the export runs and
gates on: `export.pipeline`). On the shipped 6-layer student a step takes 3-6 ms in onnxruntime on two cores (a
by-hand probe, not an `afrl bench` figure), where recomputing the prompt for every token took ~70 ms in torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from export.graphs import dynamo_export

DECODER_FILE = "prefix_lm.onnx"
INPUTS = ("input_ids", "keys", "values")
OUTPUTS = ("logits", "new_keys", "new_values")


def _self_attention_cache(cache: Any) -> Any:
    """The decoder's own cache: BERT with `is_decoder` returns an `EncoderDecoderCache` in some versions."""
    return getattr(cache, "self_attention_cache", cache)


class PrefixDecoderGraph(torch.nn.Module):
    """(input_ids (1, n), keys, values) -> (next-token logits (1, vocab), keys, values), caches stacked as
    (layers, 1, heads, length, head_dim); an empty cache (length 0) is the prompt pass."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.layers = int(model.config.num_hidden_layers)

    def forward(
        self, input_ids: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from transformers import DynamicCache

        cache = DynamicCache()
        for i in range(self.layers):
            cache.update(keys[i], values[i], i)
        n, past = input_ids.shape[1], keys.shape[3]
        mask = torch.ones((1, n, past + n), dtype=torch.long, device=input_ids.device)  # (batch, query, key)
        positions = torch.arange(n, dtype=torch.long, device=input_ids.device).unsqueeze(0) + past
        out = self.model(
            input_ids=input_ids,
            past_key_values=cache,
            attention_mask=mask,
            position_ids=positions,
            token_type_ids=torch.zeros_like(input_ids),
            use_cache=True,
        )
        layers = _self_attention_cache(out.past_key_values).layers
        new_keys = torch.stack([layer.keys for layer in layers])
        new_values = torch.stack([layer.values for layer in layers])
        return out.logits[:, -1], new_keys, new_values


def empty_cache(model: Any) -> torch.Tensor:
    """The (layers, 1, heads, 0, head_dim) cache of the prompt pass."""
    config = model.config
    heads = int(config.num_attention_heads)
    return torch.zeros((int(config.num_hidden_layers), 1, heads, 0, int(config.hidden_size) // heads))


def export_prefix_decoder(model: Any, path: Path, example_ids: list[int], opset: int | None = None) -> Path:
    """Write the decoder graph of a prefix LM to `path`; `example_ids` is one real prompt (its cache is the traced
    example; every prompt and cache length works afterwards). Returns `path`."""
    model = model.eval()
    graph = PrefixDecoderGraph(model)
    with torch.inference_mode(False), torch.no_grad():  # the traced example must not be an inference tensor
        empty = empty_cache(model)
        _, keys, values = graph(torch.tensor([example_ids], dtype=torch.long), empty, empty)
    past = torch.export.Dim("past")
    example = (torch.tensor([[int(example_ids[-1]), int(example_ids[0])]]), keys, values)
    dynamic = {"input_ids": {1: torch.export.Dim("new")}, "keys": {3: past}, "values": {3: past}}
    dynamo_export(graph, example, path, INPUTS, OUTPUTS, dynamic, opset)
    return path
