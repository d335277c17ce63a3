"""Layer-subset models: a student made of some of the teacher's decoder layers (Training III).

A shallow student initialised from a subset of the teacher's layers starts much closer to the teacher than a
random one; `keep_layers` builds it in place and renumbers the layers so that the KV cache indexes stay dense.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def keep_layers(model: Any, indices: Sequence[int]) -> Any:
    """Keep only the decoder layers at `indices` (in the given order) of a Llama/Qwen-style causal LM."""
    import torch

    layers = model.model.layers
    n = len(layers)
    if not indices or any(not 0 <= i < n for i in indices) or len(set(indices)) != len(indices):
        raise ValueError(f"layer indices must be distinct and within 0..{n - 1}, got {list(indices)}")
    kept = torch.nn.ModuleList([layers[i] for i in indices])
    for new_idx, layer in enumerate(kept):
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = new_idx
    model.model.layers = kept
    cfg = model.config
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = [cfg.layer_types[i] for i in indices]
    cfg.num_hidden_layers = len(indices)
    return model
