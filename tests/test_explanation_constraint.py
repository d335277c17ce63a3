"""afrl.explanation_constraint: inside the Evidence quote every token continues a span of the passage; outside, free."""

from __future__ import annotations

import re
import threading

import torch

from afrl.contract import GradeScale, PromptBuilder, parse_completion
from afrl.explanation_constraint import (
    _PLAN,
    FIELD_TOKENS,
    ExplanationConstraint,
    decode_explanation,
    vocab_classes,
)
from afrl.testing import build_tiny_model, tiny_tokenizer

DOCUMENT = "Berlin had 3,520,031 registered inhabitants in 2015."


def _constraint(tok, document=DOCUMENT, **kw):
    prompt = PromptBuilder(tok).build("population of berlin", document)
    constraint = ExplanationConstraint.for_prompt(tok, prompt, **kw)
    assert constraint is not None
    return constraint


def _scripted(tok, text: str):
    """Logits that prefer, at each step, the next token of `text`, then the first token of ' zebra' for ever."""
    script = tok.encode(text, add_special_tokens=False)
    fallback = tok.encode(" zebra", add_special_tokens=False)[0]
    vocab = len(tok)

    def logits(step: int) -> torch.Tensor:
        row = torch.zeros(vocab)
        row[script[step] if step < len(script) else fallback] = 10.0
        row[torch.arange(vocab) % 7 == step % 7] += 1.0  # a varying second choice
        return row

    return logits


def _explain(tok, script: str, grade: str = "2", document=DOCUMENT, steps: int = 200, **kw):
    """Decode a scripted model under the constraint, the first token forced to `grade`; the text and its parse."""
    constraint = _constraint(tok, document, **kw)
    logits = _scripted(tok, script)
    first = tok.encode(grade, add_special_tokens=False)[0]
    end = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    tokens = list(decode_explanation(first, lambda _token, i: (logits(i), i + 1), 0, steps, end, constraint))
    text = tok.decode(tokens, skip_special_tokens=True)
    return text, parse_completion(text, document, GradeScale()), constraint


def test_a_model_that_ignores_the_format_still_gets_a_well_formed_explanation():
    """Fields out of order, a label repeated, no quote: the constraint writes the labels in the contract's order,
    and the Evidence is a verbatim span of the passage whatever the model preferred."""
    text, parsed, constraint = _explain(tiny_tokenizer(), "\nEvidence: zebra\nIntent: zebra\nIntent: x", "1")
    assert parsed.consistent, (text, parsed.errors)
    assert [ln.split(":")[0] for ln in text.splitlines()[1:]] == ["Intent", "Evidence", "Reasoning", "Verdict"]
    assert parsed.fields["Verdict"] == "1" and parsed.evidence_in_document
    assert constraint.done


def test_the_free_fields_hold_the_models_own_words_and_its_line_break_ends_them():
    """A model that writes each field's words and then a line break (its scores read from where it is, as a real
    model's are read from its context) gets exactly those words."""
    tok = tiny_tokenizer()
    wants = {"Intent": "the zebra", "Reasoning": "berlin had"}
    constraint = _constraint(tok)
    newline = tok.encode("\n", add_special_tokens=False)[0]

    def step(_token, state):
        row = torch.zeros(len(tok))
        if constraint.state == "free":
            field = _PLAN[constraint.step][1]
            words = tok.encode(" " + wants[field], add_special_tokens=False)
            row[words[len(constraint.field)] if len(constraint.field) < len(words) else newline] = 10.0
        return row, state

    first = tok.encode("2", add_special_tokens=False)[0]
    tokens = list(decode_explanation(first, step, None, 200, {tok.eos_token_id}, constraint))
    parsed = parse_completion(tok.decode(tokens, skip_special_tokens=True), DOCUMENT, GradeScale())
    assert parsed.consistent, parsed.errors
    assert parsed.fields["Intent"] == "the zebra" and parsed.fields["Reasoning"] == "berlin had"
    assert parsed.fields["Verdict"] == "2"  # the first-token grade


def test_a_field_that_never_ends_is_cut_at_its_cap_and_the_budget_always_fits_the_verdict():
    tok = tiny_tokenizer()
    text, parsed, _ = _explain(tok, "", "3")  # the script is empty: " zebra" for ever, never a line break
    assert parsed.consistent, (text, parsed.errors)
    assert len(tok.encode(parsed.fields["Intent"], add_special_tokens=False)) <= FIELD_TOKENS["Intent"]
    smallest = _constraint(tok).min_budget
    for budget in (smallest, smallest + 7, 70):
        text, parsed, _ = _explain(tok, "", "3", steps=budget, budget=budget)
        assert parsed.consistent, (budget, text, parsed.errors)
        assert len(tok.encode(text, add_special_tokens=False)) <= budget


def test_an_empty_field_cannot_end_and_a_token_with_text_after_its_line_break_is_refused():
    tok = tiny_tokenizer()
    constraint = _constraint(tok)
    constraint.advance(tok.encode("2", add_special_tokens=False)[0])
    while constraint.state == "label":
        constraint.advance(constraint.allowed()[0])
    assert constraint.state == "free" and constraint.allowed() is None
    row = torch.zeros(len(tok))
    row[constraint.newline_id] = 10.0  # the model wants to end Intent before writing anything
    assert constraint.pick(row) != constraint.newline_id


def test_line_breaks_are_sorted_into_clean_and_dirty_and_blank_tokens_found():
    class Vocab:
        texts = ("a", "\n", " \n\n", "b\n", "\nc", "x", "\x0c", "y\u2028z")  # str.splitlines' breaks too

        def __len__(self):
            return len(self.texts)

        def batch_decode(self, rows):
            return [self.texts[r[0]] for r in rows]

    clean, dirty, blank = vocab_classes(Vocab())
    assert clean == {1, 2, 3, 6} and dirty == {4, 7} and blank == {1, 2, 6}


def test_the_quote_closes_at_the_end_of_the_passage_and_at_the_length_cap():
    tok = tiny_tokenizer()
    doc_ids = tok.encode("in 2015.", add_special_tokens=False)
    quote_id = tok.encode('"', add_special_tokens=False)[0]

    def at_quote(**kw):
        constraint = _constraint(tok, document="in 2015.", **kw)
        constraint.advance(tok.encode("2", add_special_tokens=False)[0])
        while constraint.state != "quote":
            allowed = constraint.allowed()
            constraint.advance(allowed[0] if allowed else tok.encode("x", add_special_tokens=False)[0])
            if constraint.state == "free" and constraint.field:
                constraint.advance(constraint.newline_id)
        return constraint

    constraint = at_quote()
    for expected in doc_ids:  # the only continuation each time, so the model's scores do not matter
        allowed = constraint.allowed()
        assert expected in allowed and set(allowed) <= {*doc_ids, quote_id}
        constraint.advance(expected)
    assert constraint.allowed() == [quote_id]  # nothing left to continue: only the closing quote

    capped = at_quote(max_quote_tokens=2)
    capped.advance(doc_ids[0])
    capped.advance(doc_ids[1])
    assert capped.allowed() == [quote_id]


def test_a_tokenizer_without_a_one_token_quote_gets_no_constraint():
    class TwoTokenQuote:
        def encode(self, text, add_special_tokens=False):
            return [1, 2]

    prompt = PromptBuilder(tiny_tokenizer()).build("q", "d")
    assert ExplanationConstraint.for_prompt(TwoTokenQuote(), prompt) is None


def test_the_torch_backend_streams_what_the_constrained_greedy_continuation_writes():
    """/explain (torch backend) and afrl eval's sample decode alike: grade first, then the constrained greedy; even
    a random tiny model's explanation parses, its Evidence a quote of the passage."""
    from afrl.prefix_lm import end_token_ids, greedy_continuation
    from afrl.scorer import TorchScorer
    from service.backends import torch_backend
    from service.backends.base import StreamEnd, TextDelta

    model, tok = build_tiny_model("bert")
    scorer = TorchScorer(model, tok, PromptBuilder(tok), GradeScale())
    prompt = scorer.builder.build("population of berlin", DOCUMENT)
    events = list(torch_backend.TorchBackend(scorer).explain(prompt, 160, threading.Event()))
    streamed = "".join(e.text for e in events if isinstance(e, TextDelta))
    ids = torch.tensor([prompt.input_ids])
    with torch.inference_mode():
        constraint = ExplanationConstraint.for_prompt(tok, prompt, budget=160)
        tokens = greedy_continuation(model, ids, 160, end_token_ids(model, tok), scorer.grade_ids, constraint)
    full = tok.decode(tokens, skip_special_tokens=True)
    assert streamed == full or full == streamed + "\ufffd"  # the stream holds back an incomplete character
    parsed = parse_completion(streamed, DOCUMENT, GradeScale())
    assert parsed.consistent, (streamed, parsed.errors)
    assert isinstance(events[-1], StreamEnd) and events[-1].reason == "eos"


def test_the_closing_quote_ends_its_line_and_the_verdict_restates_the_first_grade():
    """After the quote closes, the newline that ends the field; after `Verdict:`, the grade the explanation began
    with (whatever the model prefers), then the end token."""
    tok = tiny_tokenizer()
    constraint = _constraint(tok)
    constraint.advance(tok.encode("1", add_special_tokens=False)[0])  # the forced first token: grade 1
    logits = _scripted(tok, '\nIntent: x\nEvidence: "zebra"\nReasoning: y\nVerdict: 3 and more')
    picked = [constraint.pick(logits(i)) for i in range(60)]
    text = tok.decode(constraint.tokens, skip_special_tokens=True)
    evidence_line = text.split("\n")[2]
    assert evidence_line.startswith('Evidence: "') and evidence_line.endswith('"')  # closed, then its newline
    assert re.search(r"\nVerdict:\s*1$", text) and "3 and more" not in text
    if tok.eos_token_id is not None:
        assert picked[-1] == tok.eos_token_id
