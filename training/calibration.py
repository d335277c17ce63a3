"""Calibration: a teacher's continuous score (fused with BM25) becomes a distribution over the grades 0..K.

Ordinal logistic regression (proportional odds): P(grade <= k | x) = sigmoid(theta_k - w . x), with ordered
cut points theta_0 < ... < theta_{K-1}, fitted by maximum likelihood on human judgments with statsmodels'
`OrderedModel` (a maintained, tested implementation; the fitted parameters are then applied with numpy, so using
a saved calibration needs neither statsmodels nor the training data). The features are standardised first (the
means and scales are saved with the weights), so weights are comparable and the fit is well conditioned.

A monotone score-to-grade mapping is exactly what this model can represent, which is why it is the right shape
for a bi-encoder's cosine: the distribution it gives is a real probability of each grade, fitted where assessors
said what the grades mean, so a student trained on it learns TREC grades and not the teacher's score scale.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class GradeCalibration:
    """Fitted ordinal logistic regression: `predict_proba(features)` -> (n, K+1) grade probabilities."""

    feature_names: list[str]
    mean: list[float]
    scale: list[float]
    weights: list[float]
    thresholds: list[float]  # K increasing cut points

    @property
    def n_grades(self) -> int:
        return len(self.thresholds) + 1

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        x = (np.asarray(features, dtype=np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)
        eta = x @ np.asarray(self.weights)
        cdf = 1.0 / (1.0 + np.exp(-(np.asarray(self.thresholds)[None, :] - eta[:, None])))
        cdf = np.concatenate([np.zeros((len(eta), 1)), cdf, np.ones((len(eta), 1))], axis=1)
        probs = np.clip(np.diff(cdf, axis=1), 1e-6, None)
        return probs / probs.sum(1, keepdims=True)

    def expected_grade(self, features: np.ndarray) -> np.ndarray:
        """Expected grade / K in [0, 1]: the AFRL score of the calibrated distribution."""
        p = self.predict_proba(features)
        return (p * np.arange(p.shape[1])).sum(1) / (p.shape[1] - 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> GradeCalibration:
        return cls(**json.loads(Path(path).read_text()))


def fit_calibration(features: np.ndarray, grades: Sequence[int], feature_names: Sequence[str]) -> GradeCalibration:
    """Maximum-likelihood proportional-odds fit of `grades` on `features` (n, f)."""
    import warnings

    from statsmodels.miscmodels.ordinal_model import OrderedModel

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(grades, dtype=int)
    if x.ndim != 2 or x.shape[0] != len(y) or x.shape[1] != len(feature_names):
        raise ValueError(f"features must be (n, {len(feature_names)}) for {len(y)} grades, got {x.shape}")
    present = sorted(set(y.tolist()))
    if present != list(range(len(present))) or len(present) < 2:
        raise ValueError(f"calibration needs every grade 0..K present at least once, got grades {present}")
    mean, scale = x.mean(0), x.std(0)
    scale[scale == 0] = 1.0
    z = (x - mean) / scale
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statsmodels' convergence chatter; the result is checked below
        result = OrderedModel(y, z, distr="logit").fit(method="bfgs", disp=False, maxiter=500)
    params = np.asarray(result.params)
    n_feat = x.shape[1]
    weights = params[:n_feat]
    # statsmodels parameterises the cut points as theta_0 then log-increments (so they stay ordered)
    raw = params[n_feat:]
    thresholds = np.concatenate([raw[:1], raw[0] + np.cumsum(np.exp(raw[1:]))])
    if not np.all(np.isfinite(params)):
        raise RuntimeError("the calibration fit did not converge (non-finite parameters); check the features")
    return GradeCalibration(list(feature_names), mean.tolist(), scale.tolist(), weights.tolist(), thresholds.tolist())


def calibration_report(calibration: GradeCalibration, features: np.ndarray, grades: Sequence[int]) -> dict[str, Any]:
    """Accuracy, macro-F1, ECE and the log-loss of the calibrated distribution on judged pairs."""
    from training.metrics import classification_metrics, expected_calibration_error

    p = calibration.predict_proba(features)
    pred = p.argmax(1)
    gold = np.asarray(grades, dtype=int)
    out: dict[str, Any] = {"pairs": len(gold)}
    cls = classification_metrics(gold.tolist(), pred.tolist(), calibration.n_grades)
    out |= {k: cls[k] for k in ("accuracy", "macro_f1") if k in cls}
    out["ece"] = expected_calibration_error(p.max(1).tolist(), (pred == gold).tolist())
    out["log_loss"] = float(-np.log(p[np.arange(len(gold)), gold]).mean())
    out["predicted_histogram"] = np.bincount(pred, minlength=calibration.n_grades).tolist()
    out["gold_histogram"] = np.bincount(gold, minlength=calibration.n_grades).tolist()
    return out
