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


def training_records(config: AfrlDataArgs, group_size: int | None = None) -> list[Record]:
    """The records a stage trains on: its `data` sources, sampled to `max_train_records` (grade-balanced if asked).

    With `group_size`, the sample is `query_groups` instead: consecutive runs of `group_size` records of one query,
    for a listwise loss that needs each batch to be one query's documents.
    """
    records = load_sources(config.data, config.dev_fraction, config.split_seed)
    if group_size:
        return query_groups(records, config.max_train_records, group_size)
    return subset(records, config.max_train_records, balance_grades=config.balance_grades)


def query_groups(records: list[Record], n: int | None, group_size: int, seed: int = 0) -> list[Record]:
    """Up to `n` records as consecutive groups of exactly `group_size` records sharing a query.

    Within a query, records are dealt round-robin over its grades (shuffled inside each grade), so every group
    mixes as many grades as the query has; a group with a single grade carries no ordering signal and is dropped,
    and so is each query's ragged remainder. Groups are taken first-group-of-every-query, then second, ..., in a
    seeded order, so a size cap keeps many queries and the grade-mixed groups rather than a few queries' leftovers.
    """
    if group_size < 2:
        raise ValueError(f"group_size must be at least 2 (a listwise loss compares documents), got {group_size}")
    rng = random.Random(seed)
    by_query: dict[str, list[Record]] = {}
    for r in records:
        by_query.setdefault(r.qid or r.query, []).append(r)
    rounds: list[list[list[Record]]] = []
    for key in sorted(by_query):
        by_grade: dict[int, list[Record]] = {}
        for r in by_query[key]:
            by_grade.setdefault(r.grade, []).append(r)
        buckets = [rng.sample(v, len(v)) for _, v in sorted(by_grade.items())]
        dealt = [b[i] for i in range(max(map(len, buckets))) for b in buckets if i < len(b)]
        groups = [dealt[i : i + group_size] for i in range(0, len(dealt) - group_size + 1, group_size)]
        for depth, group in enumerate(g for g in groups if len({r.grade for r in g}) > 1):
            if depth == len(rounds):
                rounds.append([])
            rounds[depth].append(group)
    ordered: list[list[Record]] = []
    for same_depth in rounds:
        ordered.extend(rng.sample(same_depth, len(same_depth)))
    if n is not None:
        ordered = ordered[: n // group_size]
    if not ordered:
        raise ValueError(
            f"no group of {group_size} records of one query with two or more grades: lower the group size "
            "(per_device_train_batch_size) or use data with several judged documents per query"
        )
    rng.shuffle(ordered)
    return [r for group in ordered for r in group]


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
