"""Data source specs used by every stage's config: `trec:DIR[:train|:dev]`, `jsonl:FILE`, `rules:N[:SEED]`."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from training.data import Record, TrecCollection, read_jsonl, split_by_query

if TYPE_CHECKING:
    from training.config import AfrlDataArgs


def load_source(spec: str, dev_fraction: float = 0.2, split_seed: int = 0) -> list[Record]:
    kind, _, rest = spec.partition(":")
    if kind == "trec":
        directory, _, part = rest.partition(":")
        coll = TrecCollection.load(directory)
        qids = [q for q in coll.queries if q in coll.qrels]
        if part in ("", "all"):
            return coll.judged_records()
        train, dev = split_by_query(qids, dev_fraction, split_seed)
        if part == "train":
            return coll.judged_records(train)
        if part == "dev":
            return coll.judged_records(dev)
        raise ValueError(f"{spec!r}: the part after the folder must be all, train or dev")
    if kind == "jsonl":
        return read_jsonl(rest)
    if kind == "rules":
        from training.rule_world import generate_records

        n, _, seed = rest.partition(":")
        return generate_records(int(n), seed=int(seed or 0))
    raise ValueError(f"unknown data source {spec!r}: use trec:DIR[:train|:dev], jsonl:FILE or rules:N[:SEED]")


def load_sources(specs: Sequence[str], dev_fraction: float = 0.2, split_seed: int = 0) -> list[Record]:
    records: list[Record] = []
    for spec in specs:
        records.extend(load_source(spec, dev_fraction, split_seed))
    return records


def training_records(config: AfrlDataArgs) -> list[Record]:
    """The records a stage trains on: its `data` sources, sampled to `max_train_records` (grade-balanced if asked)."""
    records = load_sources(config.data, config.dev_fraction, config.split_seed)
    return subset(records, config.max_train_records, balance_grades=config.balance_grades)


def subset(records: list[Record], n: int | None, seed: int = 0, balance_grades: bool = False) -> list[Record]:
    """A seeded sample of `n` records (all of them when `n` is None or too large).

    With `balance_grades`, every grade gets an equal share of `n` (a grade with fewer records gives all it has and
    the rest is shared among the others), so that SFT on TREC's skewed pools (45 % grade 0, 11 % grade 3) does not
    collapse to the majority grade. The sample is shuffled, so batches mix grades.
    """
    rng = random.Random(seed)
    if not balance_grades:
        if n is None or n >= len(records):
            return records
        return rng.sample(records, n)
    by_grade: dict[int, list[Record]] = {}
    for r in records:
        by_grade.setdefault(r.grade, []).append(r)
    # without a size, every grade is down-sampled to the rarest one
    budget = min(n, len(records)) if n is not None else min(len(v) for v in by_grade.values()) * len(by_grade)
    picked: list[Record] = []
    groups = sorted(by_grade.values(), key=len)
    for i, group in enumerate(groups):
        share = (budget - len(picked)) // (len(groups) - i)
        picked.extend(rng.sample(group, min(share, len(group))))
    rng.shuffle(picked)
    return picked
