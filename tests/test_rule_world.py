"""The synthetic rule world: seeded, long-tailed, every record decided by one rule with a consistent explanation."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from afrl.contract import format_target, parse_completion
from training.data import split_records
from training.rule_world import (
    GUIDELINE,
    GUIDELINE_PATH,
    HEAD_RULES,
    RULES,
    RULES_BY_NAME,
    TAIL_RULES,
    generate_records,
    quotas,
    write_guideline,
)
from training.sources import load_source


@pytest.fixture(scope="module")
def world():
    return generate_records(5000, seed=0)


def test_deterministic_for_a_seed():
    assert generate_records(300, seed=3) == generate_records(300, seed=3)
    assert [r.document for r in generate_records(300, seed=3)] != [r.document for r in generate_records(300, seed=4)]


def test_rules_are_named_graded_and_split_into_head_and_tail():
    names = [r.name for r in RULES]
    assert len(RULES) >= 12
    assert len(set(names)) == len(names)
    assert set(HEAD_RULES) | set(TAIL_RULES) == set(names) and not set(HEAD_RULES) & set(TAIL_RULES)
    assert {r.grade for r in RULES} == {0, 1, 2, 3}
    for needed in ("exact_match", "wrong_category", "unit_conversion", "negation_violated", "accessory_for_product"):
        assert needed in names


def test_frequencies_are_long_tailed(world):
    share = {k: v / len(world) for k, v in Counter(r.rule for r in world).items()}
    assert set(share) == set(RULES_BY_NAME)
    assert sum(share[h] for h in HEAD_RULES) >= 0.8
    assert len(HEAD_RULES) <= 5
    for t in TAIL_RULES:
        assert 0.01 <= share[t] <= 0.03, (t, share[t])
    assert min(share[h] for h in HEAD_RULES) > max(share[t] for t in TAIL_RULES)


def test_quotas_sum_to_n_and_follow_weights():
    for n in (0, 1, 7, 32, 999):
        assert sum(quotas(n).values()) == n
    q = quotas(1000)
    assert q["exact_match"] == 338 and q["incompatible_model"] == 12


def test_every_record_is_consistent_and_cites_its_rule(world):
    for r in world:
        rule = RULES_BY_NAME[r.rule]
        assert r.source == "rules" and r.qid and r.grade == rule.grade
        parsed = parse_completion(format_target(r.grade, r.explanation), r.document)
        assert parsed.consistent, (r, parsed.errors)
        assert parsed.fields["Reasoning"].startswith(f"rule {r.rule}:")
        assert '"' not in r.document


def test_query_groups_share_one_query_and_split_by_query(world):
    by_qid: dict[str, set[str]] = {}
    for r in world:
        by_qid.setdefault(r.qid, set()).add(r.query)
    assert all(len(q) == 1 for q in by_qid.values())
    sizes = Counter(r.qid for r in world).values()
    assert max(sizes) <= 6 and sum(sizes) / len(sizes) > 2
    train, dev = split_records(world, 0.2, seed=0)
    assert not {r.qid for r in train} & {r.qid for r in dev}


def test_tail_rules_mean_what_they_say(world):
    for r in world:
        if r.rule == "unit_conversion":
            asked = re.search(r"(\d+(?:\.\d+)?) (kg|g|ml|l)\b", r.query)
            listed = re.search(r"Net quantity: (\d+(?:\.\d+)?) (kg|g|ml|l)\.", r.document)
            assert asked and listed and asked.group(2) != listed.group(2)
            to_base = {"g": 1, "kg": 1000, "ml": 1, "l": 1000}
            assert float(asked.group(1)) * to_base[asked.group(2)] == float(listed.group(1)) * to_base[listed.group(2)]
        if r.rule == "negation_violated":
            excluded = r.query.split("without ")[1].split(" under ")[0]
            assert f"Contains {excluded}." in r.document
        if r.rule == "exact_match" and "without " in r.query:
            excluded = r.query.split("without ")[1].split(" under ")[0]
            assert f"Free from {excluded}." in r.document
        if r.rule == "over_budget":
            budget = int(r.query.rsplit("$", 1)[1])
            price = int(re.search(r"Price: \$(\d+)\.", r.document).group(1))
            assert price > budget


def test_guideline_file_equals_guideline(tmp_path):
    assert GUIDELINE_PATH.read_text(encoding="utf-8") == GUIDELINE + "\n"
    for rule in RULES:
        assert f"{rule.name} ({rule.grade}):" in GUIDELINE
    written = write_guideline(tmp_path / "g.txt")
    assert written.read_text(encoding="utf-8") == GUIDELINE + "\n"


def test_rules_source_spec():
    records = load_source("rules:40:2")
    assert records == generate_records(40, seed=2)
    assert generate_records(0) == []
