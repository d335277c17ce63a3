"""afrl.explanation_constraint: inside the Evidence quote every token continues a span of the passage; outside, free."""

from __future__ import annotations

import re
import threading

import torch

from afrl.contract import GradeScale, PromptBuilder
from afrl.explanation_constraint import ExplanationConstraint
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


def test_tokens_are_free_until_the_quote_opens_and_then_copy_the_passage():
    tok = tiny_tokenizer()
    constraint = _constraint(tok)
    logits = _scripted(tok, '2\nIntent: zebra\nEvidence: "zebra zebra"\nReasoning: x')
    picked = [constraint.pick(logits(i)) for i in range(40)]
    text = tok.decode(picked)
    before, _, rest = text.partition('Evidence: "')
    assert before == "2\nIntent: zebra\n"  # free: the model's own choice, not in the passage
    quote, closed, _ = rest.partition('"')
    assert closed and quote.strip() and quote.strip() in DOCUMENT  # a verbatim span, whatever the model preferred
    assert constraint.state == "after"


def test_the_quote_closes_at_the_end_of_the_passage_and_at_the_length_cap():
    tok = tiny_tokenizer()
    doc_ids = tok.encode("in 2015.", add_special_tokens=False)
    constraint = _constraint(tok, document="in 2015.")
    for t in tok.encode('Evidence: "', add_special_tokens=False):
        constraint.advance(t)
    quote_id = tok.encode('"', add_special_tokens=False)[0]
    for expected in doc_ids:  # the only continuation each time, so the model's scores do not matter
        allowed = constraint.allowed()
        assert expected in allowed and set(allowed) <= {*doc_ids, quote_id}
        constraint.advance(expected)
    assert constraint.allowed() == [quote_id]  # nothing left to continue: only the closing quote

    capped = _constraint(tok, max_quote_tokens=2)
    for t in tok.encode('Evidence: "', add_special_tokens=False):
        capped.advance(t)
    capped.advance(capped.allowed()[0])
    capped.advance(next(t for t in capped.allowed() if t != quote_id))
    assert capped.allowed() == [quote_id]


def test_a_tokenizer_without_a_one_token_quote_gets_no_constraint():
    class TwoTokenQuote:
        def encode(self, text, add_special_tokens=False):
            return [1, 2]

    prompt = PromptBuilder(tiny_tokenizer()).build("q", "d")
    assert ExplanationConstraint.for_prompt(TwoTokenQuote(), prompt) is None


def test_the_torch_backend_streams_what_the_constrained_greedy_continuation_writes(monkeypatch):
    """/explain (torch backend) and afrl eval's sample decode alike: grade first, then the constrained greedy. The
    random tiny model never writes `Evidence: "` itself, so the constraint starts inside an open quote here."""
    from afrl.prefix_lm import end_token_ids, greedy_continuation
    from afrl.scorer import TorchScorer
    from service.backends import torch_backend
    from service.backends.base import TextDelta

    class OpenQuote(ExplanationConstraint):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.state = "inside"

        def advance(self, token):
            if self.tokens or token not in self.grade_ids:  # the forced grade token is not part of the quote
                return super().advance(token)
            self.tokens.append(token)

    model, tok = build_tiny_model("bert")
    scorer = TorchScorer(model, tok, PromptBuilder(tok), GradeScale())
    OpenQuote.grade_ids = set(scorer.grade_ids)
    monkeypatch.setattr(torch_backend, "ExplanationConstraint", OpenQuote)
    prompt = scorer.builder.build("population of berlin", DOCUMENT)
    events = list(torch_backend.TorchBackend(scorer).explain(prompt, 12, threading.Event()))
    streamed = "".join(e.text for e in events if isinstance(e, TextDelta))
    ids = torch.tensor([prompt.input_ids])
    with torch.inference_mode():
        tokens = greedy_continuation(
            model, ids, 12, end_token_ids(model, tok), scorer.grade_ids, OpenQuote.for_prompt(tok, prompt)
        )
    full = tok.decode(tokens, skip_special_tokens=True)
    assert streamed == full or full == streamed + "\ufffd"  # the stream holds back an incomplete character
    quote = streamed[1:].split('"')[0]
    assert len(tokens) > 2 and quote.strip() and quote.strip() in DOCUMENT


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
