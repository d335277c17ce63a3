"""Padding token id lists into rectangular batches: one implementation for torch, onnxruntime and training.

numpy only, so the onnxruntime serving path needs no torch; `afrl.scorer.pad_batch` wraps it as tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[np.ndarray, np.ndarray]:
    """Token id lists -> (input_ids, attention_mask) int64 arrays, padded on `side` ("left" or "right")."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        sl = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, sl] = row
        mask[i, sl] = 1
    return ids, mask
