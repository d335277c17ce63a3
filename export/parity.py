"""Parity figures and the acceptance gates of an export.

fp32 parity compares the ONNX scorer with the torch reference scorer (`afrl.scorer`) on the check pairs, with
both padding sides: the export fails when the largest probability difference exceeds the tolerance (1e-4).
The INT8 gate compares the INT8 graph with the fp32 graph on the same pairs: grade agreement and the largest
change of the expected-grade score must be within the configured thresholds, or INT8 is refused with the figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

FP32_TOLERANCE = 1e-4
INT8_MIN_AGREEMENT = 0.95
INT8_MAX_SCORE_DELTA = 0.05


class ExportError(ValueError):
    """An export was refused: parity or a quantisation gate failed. The message gives the figures."""


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def expected_score(probs: np.ndarray) -> np.ndarray:
    """sum_k k * p_k / K, the contract's ranking score (afrl.contract.result_from_logits), for a batch."""
    k = probs.shape[-1] - 1
    return probs @ np.arange(k + 1) / k


@dataclass
class Comparison:
    max_abs_prob_diff: float
    grade_agreement: float
    max_score_delta: float
    pairs: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_abs_prob_diff": self.max_abs_prob_diff,
            "grade_agreement": self.grade_agreement,
            "max_score_delta": self.max_score_delta,
            "pairs": self.pairs,
        }


def compare(reference_logits: np.ndarray, logits: np.ndarray) -> Comparison:
    if reference_logits.shape != logits.shape:
        raise ValueError(f"logit shapes differ: {reference_logits.shape} vs {logits.shape}")
    p_ref, p = softmax(reference_logits), softmax(logits)
    return Comparison(
        max_abs_prob_diff=float(np.abs(p_ref - p).max()),
        grade_agreement=float((p_ref.argmax(-1) == p.argmax(-1)).mean()),
        max_score_delta=float(np.abs(expected_score(p_ref) - expected_score(p)).max()),
        pairs=len(logits),
    )


def worst(*comparisons: Comparison) -> Comparison:
    """The worst figures over several runs (e.g. left and right padding)."""
    return Comparison(
        max_abs_prob_diff=max(c.max_abs_prob_diff for c in comparisons),
        grade_agreement=min(c.grade_agreement for c in comparisons),
        max_score_delta=max(c.max_score_delta for c in comparisons),
        pairs=comparisons[0].pairs,
    )


def check_fp32(parity: Comparison, tolerance: float = FP32_TOLERANCE) -> None:
    if not parity.max_abs_prob_diff <= tolerance:  # `not <=` also refuses NaN
        raise ExportError(
            f"fp32 parity failed: the ONNX scorer's probabilities differ from the torch reference by up to "
            f"{parity.max_abs_prob_diff:.3g} (tolerance {tolerance:g}; grade agreement "
            f"{parity.grade_agreement:.3f} on {parity.pairs} pairs). The graph is wrong: do not serve it."
        )


def int8_verdict(vs_fp32: Comparison, min_agreement: float, max_score_delta: float) -> str | None:
    """None when INT8 is acceptable, else the refusal message with the figures and the thresholds."""
    problems = []
    if not vs_fp32.grade_agreement >= min_agreement:
        problems.append(f"grade agreement with fp32 {vs_fp32.grade_agreement:.4f} < required {min_agreement:g}")
    if not vs_fp32.max_score_delta <= max_score_delta:
        problems.append(
            f"largest expected-grade score change {vs_fp32.max_score_delta:.4g} > allowed {max_score_delta:g}"
        )
    if not problems:
        return None
    return (
        f"INT8 refused on {vs_fp32.pairs} check pairs: "
        + "; ".join(problems)
        + f" (largest probability change {vs_fp32.max_abs_prob_diff:.4g}). Serve the fp32 graph, or loosen "
        "--int8-min-agreement / --int8-max-score-delta if these figures are acceptable for your use"
    )
