"""Data source specs used by every stage's config: `trec:DIR[:train|:dev]`, `jsonl:FILE`, `rules:N[:SEED]`."""

from __future__ import annotations

import random
from collections.abc import Sequence

from training.data import Record, TrecCollection, read_jsonl, split_by_query


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


def subset(records: list[Record], n: int | None, seed: int = 0) -> list[Record]:
    if n is None or n >= len(records):
        return records
    return random.Random(seed).sample(records, n)
