"""Linear probe: is relevance linearly readable from a frozen model's last-position hidden state?

Why it exists: the SFT runs on this CPU rank at chance within a query (training/README.md), and the listwise
loss did not move in 150 steps. This separates the two explanations. A ridge regression from the hidden state
the grade head reads (the last prompt position) to the gold grade is fitted on training pairs and scored on the
dev queries' judged pools. If the probe ranks dev pools above chance, the representation carries the signal and
the training budget is what limits SFT; if it does not, the base model itself is the limit. A lexical row
(the share of the query's content words found in the document) and a chance row (mean of seeded shuffles) put
the numbers in context. The ridge penalty is chosen on a query-level split of the training pairs, never on dev.

    python -m training.probe --model default-base --out training/results/probe_base
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

import torch

from afrl.contract import result_from_logits
from afrl.scorer import grade_head
from training.data import Record, content_words, split_records
from training.evaluate import judged_pool_ranking
from training.sources import load_sources, subset

PENALTIES = (0.1, 1.0, 10.0, 100.0, 1000.0)


def ridge(x: torch.Tensor, y: torch.Tensor, penalty: float) -> torch.Tensor:
    """Weights (with a trailing bias) minimising |Xw + b - y|^2 + penalty |w|^2, in float64."""
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    reg = penalty * torch.eye(xb.shape[1], dtype=x.dtype)
    reg[-1, -1] = 0.0  # the bias is not penalised
    return torch.linalg.solve(xb.T @ xb + reg, xb.T @ y)


def predict(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x @ w[:-1] + w[-1]


def lexical_overlap(r: Record) -> float:
    """Share of the query's content words that occur in the document."""
    q = set(content_words(r.query))
    return len(q & set(content_words(r.document))) / len(q) if q else 0.0


def chance_ndcg(records: list[Record], draws: int = 20, seed: int = 0) -> float:
    rng = random.Random(seed)
    shuffles = (judged_pool_ranking(records, [rng.random() for _ in records]) for _ in range(draws))
    return sum(m["ndcg@10_judged"] for m in shuffles) / draws


def run_probe(scorer: Any, train: list[Record], dev: list[Record], inner_dev_fraction: float = 0.25) -> dict[str, Any]:
    """Fit the probe on `train` (penalty chosen on a query split of it) and report judged-pool nDCG@10 on `dev`."""

    def features(records: list[Record], what: str) -> torch.Tensor:
        from tqdm import tqdm

        prompts = scorer.builder.build_many([(r.query, r.document) for r in records])
        chunks = [prompts[i : i + 64] for i in range(0, len(prompts), 64)]
        return torch.cat([scorer.hidden_for_prompts(c) for c in tqdm(chunks, desc=what, unit="x64 pairs")]).double()

    x_train, x_dev = features(train, "train pairs"), features(dev, "dev pairs")
    # the model's own score, from the same hidden states through its grade head (no second forward pass)
    head = grade_head(scorer.model, scorer.grade_ids).detach().double()
    model_scores = [result_from_logits(row).score for row in (x_dev @ head.T).tolist()]
    mean, std = x_train.mean(0), x_train.std(0).clamp(min=1e-6)
    x_train, x_dev = (x_train - mean) / std, (x_dev - mean) / std
    y_train = torch.tensor([float(r.grade) for r in train], dtype=torch.float64)

    fit_part, check_part = split_records(train, inner_dev_fraction, seed=1)
    fit_ids = {id(r) for r in fit_part}
    fit_mask = torch.tensor([id(r) in fit_ids for r in train])
    inner: dict[str, float] = {}
    for penalty in PENALTIES:
        w = ridge(x_train[fit_mask], y_train[fit_mask], penalty)
        scores = predict(x_train[~fit_mask], w).tolist()
        inner[str(penalty)] = judged_pool_ranking(check_part, scores).get("ndcg@10_judged", 0.0)
    best = float(max(inner, key=lambda k: inner[k]))
    w = ridge(x_train, y_train, best)
    dev_scores = predict(x_dev, w).tolist()
    return {
        "train_pairs": len(train),
        "dev_pairs": len(dev),
        "dev_queries": len({r.qid or r.query for r in dev}),
        "penalty": best,
        "inner_ndcg@10_judged_by_penalty": inner,
        "probe_ndcg@10_judged": judged_pool_ranking(dev, dev_scores)["ndcg@10_judged"],
        "probe_train_ndcg@10_judged": judged_pool_ranking(train, predict(x_train, w).tolist())["ndcg@10_judged"],
        "model_ndcg@10_judged": judged_pool_ranking(dev, model_scores)["ndcg@10_judged"],
        "lexical_ndcg@10_judged": judged_pool_ranking(dev, [lexical_overlap(r) for r in dev])["ndcg@10_judged"],
        "chance_ndcg@10_judged": chance_ndcg(dev),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default-base", help="model spec (default-base, default, a folder)")
    trec = "../shared/data/trec-dl"
    ap.add_argument("--train", nargs="+", default=[f"trec:{trec}/dl21", f"trec:{trec}/dl20:train"])
    ap.add_argument("--dev", nargs="+", default=["trec:../shared/data/trec-dl/dl20:dev"])
    ap.add_argument("--train-pairs", type=int, default=800, help="grade-balanced sample of the training pairs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True, help="folder for probe.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from afrl.scorer import load_scorer

    scorer = load_scorer(args.model)
    train = subset(load_sources(args.train), args.train_pairs, balance_grades=True)
    dev = load_sources(args.dev)
    result = {"model": args.model, "train": args.train, "dev": args.dev, **run_probe(scorer, train, dev)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
