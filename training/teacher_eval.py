"""A calibrated teacher as a grade scorer, so `afrl eval` reports it beside AFRL models on the same queries.

    afrl eval --teacher minilm --calibration runs/pool_minilm/calibration.json \\
        --trec-dir ../shared/data/trec-dl/dl20 --split dev --out runs/eval_teacher_fused_dl20dev

`CalibratedTeacher.grade_results` computes, for each query's pairs, the features the calibration was fitted on
(`training.pools.FEATURES`, or their prefix for `calibration_teacher_only.json`) with the same corpus, BM25
index and teacher as the pool build (read from `pool_report.json` beside the calibration), then the calibrated
grade distribution. The dev passages are in that corpus (evaluation reads them; the pool never trains on them).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from afrl.contract import GradeResult, GradeScale, result_from_logits
from training.calibration import GradeCalibration


class CalibratedTeacher:
    """`grade_results(pairs)` like a TorchScorer's, from a teacher + BM25 through a fitted calibration."""

    def __init__(self, teacher_spec: str, calibration_path: str | Path):
        from training.pools import PoolConfig, PoolScorer, load_corpus
        from training.teachers import load_teacher

        path = Path(calibration_path)
        self.calibration = GradeCalibration.load(path)
        report = path.parent / "pool_report.json"
        if not report.is_file():
            raise FileNotFoundError(f"{report}: the calibration's pool report (its corpus and teacher) is missing")
        pool_config = json.loads(report.read_text())["config"]
        if pool_config["teacher"] != teacher_spec:
            raise ValueError(f"{path} was fitted for teacher {pool_config['teacher']!r}, not {teacher_spec!r}")
        config = PoolConfig(**{k: v for k, v in pool_config.items() if k in PoolConfig.__dataclass_fields__})
        self.corpus, _, _ = load_corpus(config)
        self.corpus.build_index()
        self.scorer = PoolScorer(load_teacher(teacher_spec), self.corpus, path.parent)
        self._by_text = {t: i for i, t in enumerate(self.corpus.texts)}
        self.scale = GradeScale()
        self.batch_size = 1

    def grade_results(self, pairs: Sequence[tuple[str, str]]) -> list[GradeResult]:
        n_feat = len(self.calibration.feature_names)
        by_query: dict[str, list[int]] = {}
        for i, (q, _) in enumerate(pairs):
            by_query.setdefault(q, []).append(i)
        out: list[GradeResult | None] = [None] * len(pairs)
        for query, idx in by_query.items():
            missing = [pairs[i][1][:60] for i in idx if pairs[i][1] not in self._by_text]
            if missing:
                raise ValueError(f"passage not in the calibration's corpus (BM25 needs it): {missing[0]!r}...")
            feats = self.scorer.features(query, [self._by_text[pairs[i][1]] for i in idx])[:, :n_feat]
            probs = self.calibration.predict_proba(feats)
            for i, p in zip(idx, np.log(probs), strict=True):
                out[i] = result_from_logits(p.tolist())
        return [r for r in out if r is not None]
