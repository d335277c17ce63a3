import math

import pytest

from afrl.contract import (
    ContractError,
    Explanation,
    GradeScale,
    PromptBuilder,
    format_target,
    parse_completion,
    result_from_logits,
)
from afrl.testing import tiny_tokenizer


@pytest.fixture
def tok():
    return tiny_tokenizer()


def test_grades_are_single_tokens(tok):
    ids = GradeScale().token_ids(tok)
    assert len(ids) == 4 and len(set(ids)) == 4
    assert [tok.decode([i]) for i in ids] == ["0", "1", "2", "3"]


class _SplittingTokenizer:
    """Encodes every digit as two tokens, as some SentencePiece vocabularies do (a prefix piece + the digit)."""

    def encode(self, text, add_special_tokens=False):
        return [7, 100 + int(text)] if text.isdigit() else [1]


def test_tokenizer_that_splits_a_grade_is_refused():
    with pytest.raises(ContractError, match="exactly one token"):
        GradeScale().token_ids(_SplittingTokenizer())


def test_instruction_is_system_message_and_query_precedes_document(tok):
    builder = PromptBuilder(tok, instruction="GUIDELINE TEXT")
    text = tok.decode(builder.build("berlin population", "a passage about cities").input_ids)
    system = text.index("<|im_start|>system\nGUIDELINE TEXT<|im_end|>")
    user = text.index("<|im_start|>user")
    assert system < user < text.index("berlin population") < text.index("a passage about cities")
    assert text.endswith("<|im_start|>assistant\n")


def test_long_document_is_truncated_and_keeps_generation_suffix(tok):
    builder = PromptBuilder(tok, max_query_tokens=16, max_document_tokens=100)
    document = " ".join(f"word{i}" for i in range(10_000))
    assert len(tok.encode(document)) > 10_000
    prompt = builder.build("short query", document)
    assert prompt.truncated
    assert prompt.document_tokens == 100
    suffix = tok.encode("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    assert prompt.input_ids[-len(suffix) :] == suffix
    assert len(prompt.input_ids) <= builder.max_prompt_tokens()
    # the template before the query is intact as well
    assert tok.decode(prompt.input_ids[: prompt.prefix_len]).startswith("<|im_start|>system\n")


def test_long_query_is_truncated_to_its_own_budget(tok):
    builder = PromptBuilder(tok, max_query_tokens=8, max_document_tokens=100)
    prompt = builder.build("berlin " * 200, "short document")
    assert prompt.truncated and prompt.query_tokens == 8
    assert "short document" in tok.decode(prompt.input_ids)


def test_short_pair_is_not_truncated(tok):
    prompt = PromptBuilder(tok).build("q", "d")
    assert not prompt.truncated


def test_prefix_lengths_mark_shared_prefixes(tok):
    builder = PromptBuilder(tok)
    a = builder.build("same query", "first document")
    b = builder.build("same query", "second, different document")
    assert a.input_ids[: a.query_prefix_len] == b.input_ids[: b.query_prefix_len]
    assert a.prefix_len < a.query_prefix_len


def test_target_and_parser_round_trip():
    doc = "Berlin had a population of 3,520,031 registered inhabitants in 2015."
    exp = Explanation("the population of Berlin", "population of 3,520,031", "states the number", 2)
    text = format_target(2, exp)
    assert text.startswith("2\nIntent: ")
    parsed = parse_completion(text, doc)
    assert parsed.well_formed and parsed.verdict_consistent and parsed.evidence_in_document
    assert parsed.consistent and parsed.grade == 2 and parsed.errors == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('2\nIntent: x\nEvidence: "Berlin"\nReasoning: y\nVerdict: 1', "differs from the first token"),
        ('2\nIntent: x\nEvidence: "Munich"\nReasoning: y\nVerdict: 2', "not a quote"),
        ("2\nIntent: x\nReasoning: y\nVerdict: 2", "missing"),
        ('Intent: x\nEvidence: "Berlin"\nReasoning: y\nVerdict: 2', "not a grade token"),
        ('2\nEvidence: "Berlin"\nIntent: x\nReasoning: y\nVerdict: 2', "out of order"),
    ],
)
def test_parser_flags_bad_explanations(text, problem):
    parsed = parse_completion(text, "Berlin is a city.")
    assert not parsed.consistent
    assert any(problem in e for e in parsed.errors), parsed.errors


def test_scoring_math():
    r = result_from_logits([0.0, math.log(2.0), math.log(3.0), math.log(4.0)])
    assert r.probabilities == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert r.grade == 3
    assert r.score == pytest.approx((0.2 + 0.6 + 1.2) / 3)


def test_grade_out_of_range_is_refused():
    with pytest.raises(ContractError):
        format_target(4, None)


def test_an_uncased_wordpiece_decoding_still_parses_and_quotes():
    """A prefix-LM student's BERT tokenizer lower-cases, strips accents and spaces punctuation ("3, 520"): its
    explanation is still well-formed and its Evidence still a quote; a quote from elsewhere still fails."""
    from afrl.contract import parse_completion

    document = "Berlin had 3,520,031 inhabitants; the Café Kranzler doesn't close."
    text = '2\nintent: population\nevidence: " berlin had 3, 520, 031 inhabitants ; the cafe kranzler doesn \' t "'
    parsed = parse_completion(text + "\nreasoning: it gives the number\nverdict: 2", document)
    assert parsed.well_formed and parsed.verdict_consistent and parsed.evidence_in_document, parsed.errors
    assert set(parsed.fields) == {"Intent", "Evidence", "Reasoning", "Verdict"}
    other = parse_completion('2\nintent: x\nevidence: "munich had 1,500,000"\nreasoning: y\nverdict: 2', document)
    assert not other.evidence_in_document
