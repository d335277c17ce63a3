"""Training-record sampling and TREC folder loading (training/sources.py, training/data.py)."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.test_eval import write_tiny_trec
from training.data import Record, TrecCollection
from training.sources import subset


def skewed(n_per_grade: dict[int, int]) -> list[Record]:
    return [Record(f"{g}-{i}", f"q{i}", f"doc {i}", g) for g, n in sorted(n_per_grade.items()) for i in range(n)]


def test_subset_without_balance_is_a_seeded_sample():
    records = skewed({0: 50, 3: 10})
    assert subset(records, None) is records
    assert subset(records, 100) is records
    a, b = subset(records, 20, seed=1), subset(records, 20, seed=1)
    assert [r.id for r in a] == [r.id for r in b]
    assert len(a) == 20


def test_balanced_subset_gives_every_grade_an_equal_share():
    records = skewed({0: 300, 1: 200, 2: 100, 3: 80})
    picked = subset(records, 200, seed=0, balance_grades=True)
    assert Counter(r.grade for r in picked) == {0: 50, 1: 50, 2: 50, 3: 50}
    assert len({r.id for r in picked}) == 200  # no record twice


def test_balanced_subset_shares_out_what_a_rare_grade_lacks():
    records = skewed({0: 300, 1: 200, 2: 100, 3: 20})
    counts = Counter(r.grade for r in subset(records, 320, seed=0, balance_grades=True))
    assert counts[3] == 20  # all of the rare grade
    assert counts[0] == counts[1] == counts[2] == 100  # the other 300 shared evenly
    assert sum(counts.values()) == 320


def test_balanced_subset_without_a_size_down_samples_to_the_rarest_grade():
    counts = Counter(r.grade for r in subset(skewed({0: 30, 1: 12, 2: 7}), None, balance_grades=True))
    assert counts == {0: 7, 1: 7, 2: 7}


def test_balanced_subset_mixes_grades_within_batches():
    picked = subset(skewed({0: 40, 1: 40, 2: 40, 3: 40}), 80, seed=0, balance_grades=True)
    first_batch = {r.grade for r in picked[:8]}
    assert len(first_batch) > 1


def test_trec_load_refuses_a_missing_explicit_run_file(tmp_path):
    d = write_tiny_trec(tmp_path / "trec")
    with pytest.raises(FileNotFoundError, match=r"nope\.run"):
        TrecCollection.load(d, run_file=tmp_path / "nope.run")
    assert TrecCollection.load(d).run  # the folder's own run still loads


def test_query_groups_are_consecutive_same_query_runs_with_mixed_grades():
    from training.sources import query_groups

    records = [Record(f"{q}-{i}", f"query {q}", f"doc {i}", g, qid=q) for q in "abc" for i, g in
               enumerate([0] * 9 + [1] * 4 + [2] * 3 + [3] * 1)]  # fmt: skip
    records += [Record("d-0", "query d", "doc", 2, qid="d")]  # a query with one document: no group
    picked = query_groups(records, None, 4, seed=0)
    groups = [picked[i : i + 4] for i in range(0, len(picked), 4)]
    assert all(len({r.qid for r in g}) == 1 and len({r.grade for r in g}) > 1 for g in groups)
    assert {r.qid for r in picked} == {"a", "b", "c"}
    assert len({r.id for r in picked}) == len(picked)
    # round-robin dealing: every query's first group holds one record of each of its grades
    first_of_a = next(g for g in groups if g[0].qid == "a" and len({r.grade for r in g}) == 4)
    assert sorted(r.grade for r in first_of_a) == [0, 1, 2, 3]
    assert [r.id for r in query_groups(records, None, 4, seed=0)] == [r.id for r in picked]
    capped = query_groups(records, 10, 4, seed=0)
    assert len(capped) == 8 and len({r.qid for r in capped}) == 2  # first groups of two queries, not one's leftovers
    with pytest.raises(ValueError, match="lower the group size"):
        query_groups(records[-1:], None, 2)
    with pytest.raises(ValueError, match="at least 2"):
        query_groups(records, None, 1)
