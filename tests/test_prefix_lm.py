"""Prefix-LM students (afrl.prefix_lm): bidirectional scoring, a training mask that matches cached generation."""

from __future__ import annotations

import pytest
import torch

from afrl.contract import GradeScale, PromptBuilder
from afrl.prefix_lm import grade_logits_from_hidden, is_prefix_lm, prefix_lm_mask, prompt_mask
from afrl.scorer import TorchScorer, grade_head, grade_logits, load_scorer
from afrl.testing import build_tiny_model

PAIRS = [
    ("population of berlin", "Berlin had a population of 3,520,031 registered inhabitants in 2015."),
    ("running shoes", "waterproof hiking boots for men"),
    ("what is the population of berlin", "a phone case for the new model"),
]


@pytest.fixture(scope="module")
def tiny_bert():
    return build_tiny_model("bert")


def _prompt_ids(tok, query: str, document: str) -> list[int]:
    return PromptBuilder(tok).build(query, document).input_ids


def test_the_tiny_bert_is_a_prefix_lm_and_qwen3_is_not(tiny_bert):
    model, _ = tiny_bert
    assert is_prefix_lm(model)
    assert not is_prefix_lm(build_tiny_model("qwen3")[0])
    with pytest.raises(NotImplementedError, match="transform and a bias"):
        grade_head(model, [1, 2])


def test_scoring_attends_over_the_whole_prompt(tiny_bert):
    """The scorer's logits are those of the same weights run bidirectionally (no causal triangle), and they
    differ from a causal reading of the same prompt, so a causal mask sneaking back in fails this test."""
    model, tok = tiny_bert
    grade_ids = GradeScale().token_ids(tok)
    ids = torch.tensor([_prompt_ids(tok, *PAIRS[0])])
    mask = torch.ones_like(ids)
    got = grade_logits(model, ids, mask, grade_ids)
    with torch.no_grad():
        hidden = model.bert(input_ids=ids, attention_mask=prompt_mask(mask)).last_hidden_state[:, -1]
        bidirectional = grade_logits_from_hidden(model, hidden, grade_ids).float()
        causal_hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state[:, -1]  # 2-D: causal
        causal = grade_logits_from_hidden(model, causal_hidden, grade_ids).float()
    torch.testing.assert_close(got, bidirectional)
    assert (got - causal).abs().max() > 1e-3


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batches_score_like_single_prompts(tiny_bert, side):
    model, tok = tiny_bert
    scorer = TorchScorer(model, tok, PromptBuilder(tok), GradeScale(), batch_size=3, padding_side=side)
    prompts = scorer.builder.build_many(PAIRS)
    assert len({len(p.input_ids) for p in prompts}) > 1  # the batch really pads
    batched = scorer.logits_for_prompts(prompts)
    single = torch.cat([scorer.logits_for_prompts([p]) for p in prompts])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_prefix_lm_mask_shape_of_attention():
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    m = prefix_lm_mask(mask, torch.tensor([3, 2]))
    # row 0: prompt of 3 (positions 0-2), completion 3-4, padding 5
    assert m[0, 0].tolist() == [1, 1, 1, 0, 0, 0]  # a prompt token sees the prompt only
    assert m[0, 2].tolist() == [1, 1, 1, 0, 0, 0]
    assert m[0, 3].tolist() == [1, 1, 1, 1, 0, 0]  # the first completion token sees the prompt and itself
    assert m[0, 4].tolist() == [1, 1, 1, 1, 1, 0]  # never the padding
    assert m[1, 1].tolist() == [1, 1, 0, 0, 0, 0]
    assert m[1, 5].tolist() == [1, 1, 1, 1, 1, 1]


def test_teacher_forcing_under_the_mask_equals_cached_generation(tiny_bert):
    """What explanation training sees (one pass, prefix_lm_mask) is what generation computes (the prompt once,
    bidirectionally, then one cached token at a time): the next-token logits agree at every step."""
    model, tok = tiny_bert
    prompt = _prompt_ids(tok, *PAIRS[0])
    completion = tok.encode("2\nIntent: a number", add_special_tokens=False)
    ids = torch.tensor([prompt + completion])
    full_mask = prefix_lm_mask(torch.ones_like(ids), torch.tensor([len(prompt)]))
    with torch.no_grad():
        forced = model(input_ids=ids, attention_mask=full_mask).logits[0, len(prompt) - 1 : -1]
        p = torch.tensor([prompt])
        out = model(input_ids=p, attention_mask=prompt_mask(torch.ones_like(p)), use_cache=True)
        steps, past = [out.logits[0, -1]], out.past_key_values
        for t, token in enumerate(completion[:-1]):
            seen = torch.ones((1, len(prompt) + t + 1), dtype=torch.long)
            out = model(input_ids=torch.tensor([[token]]), attention_mask=seen, past_key_values=past, use_cache=True)
            steps.append(out.logits[0, -1])
            past = out.past_key_values
    torch.testing.assert_close(forced, torch.stack(steps), atol=1e-4, rtol=1e-4)


def test_the_torch_backend_explains_a_prefix_lm_after_its_own_score(tiny_bert):
    """/explain on a prefix LM: its score event equals the scorer's logits (bidirectional prompt pass), the text
    is the greedy continuation from that grade, and prefix reuse is refused rather than mis-scoring."""
    import threading

    from service.backends.base import ScoreStep, TextDelta
    from service.backends.torch_backend import TorchBackend

    model, tok = tiny_bert
    scorer = TorchScorer(model, tok, PromptBuilder(tok), GradeScale())
    backend = TorchBackend(scorer)
    prompts = scorer.builder.build_many([(PAIRS[0][0], d) for _, d in PAIRS])
    assert backend.grade_logits_shared_prefix(prompts, prompts[0].query_prefix_len) is None
    events = list(backend.explain(prompts[0], 6, threading.Event()))
    score = next(e for e in events if isinstance(e, ScoreStep))
    np_ref = scorer.logits_for_prompts([prompts[0]]).numpy()[0]
    assert abs(score.logits - np_ref).max() < 1e-4
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    from afrl.explanation_constraint import ExplanationConstraint
    from afrl.prefix_lm import greedy_continuation

    constraint = ExplanationConstraint.for_prompt(tok, prompts[0], budget=6)
    tokens = greedy_continuation(model, torch.tensor([prompts[0].input_ids]), 6, set(), scorer.grade_ids, constraint)
    assert tokens[0] == scorer.grade_ids[int(np_ref.argmax())]  # the explanation starts with the score's grade
    full = tok.decode(tokens, skip_special_tokens=True)
    # the stream holds back a trailing incomplete UTF-8 character (a byte-level token of the random tiny model),
    # which a one-shot decode shows as U+FFFD
    assert text == full or (full == text + "\ufffd" and len(text) > 1)


def test_eval_explains_a_prefix_lm_with_the_prefix_mask(tiny_bert):
    """`afrl eval`'s explanation sample decodes a prefix LM through the bidirectional prompt pass, not
    `generate` (which would read the prompt causally): each completion is the argmax grade, as `/explain` writes
    it, then the greedy continuation under the prefix mask."""
    from afrl.explanation_constraint import ExplanationConstraint
    from afrl.prefix_lm import greedy_continuation
    from training.data import Record
    from training.evaluate import explanation_consistency

    model, tok = tiny_bert
    scorer = TorchScorer(model, tok, PromptBuilder(tok), GradeScale())
    records = [Record(id=str(i), query=q, document=d, grade=0) for i, (q, d) in enumerate(PAIRS)]
    _, samples = explanation_consistency(scorer, records, sample=3, max_new_tokens=4)
    assert len(samples) == 3
    for s in samples:
        r = records[int(s["id"])]
        ids = torch.tensor([scorer.builder.build(r.query, r.document).input_ids])
        free = greedy_continuation(model, ids, 4, {tok.eos_token_id}, scorer.grade_ids)
        assert s["free_completion"] == tok.decode(free, skip_special_tokens=True)
        constraint = ExplanationConstraint.for_prompt(tok, scorer.builder.build(r.query, r.document), budget=4)
        served = greedy_continuation(model, ids, 4, {tok.eos_token_id}, scorer.grade_ids, constraint)
        assert s["completion"] == tok.decode(served, skip_special_tokens=True)


def test_a_prefix_lm_base_from_a_bert_encoder_keeps_the_contract(tmp_path):
    """From a plain BERT encoder folder: a base that loads as an AFRL model, builds contract prompts through its
    chat template, keeps newlines (the explanation format needs them) and stops on [SEP]."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from afrl.models import load_model
    from afrl.prefix_lm import build_prefix_lm_base

    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "0",
        "1",
        "2",
        "3",
        "query",
        "document",
        "intent",
        ":",
        "berlin",
        "grade",
        "how",
        "relevant",
    ]
    wp = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    encoder = tmp_path / "encoder"
    BertTokenizerFast(
        tokenizer_object=wp,
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        mask_token="[MASK]",
    ).save_pretrained(encoder)
    BertModel(
        BertConfig(
            vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64
        )
    ).save_pretrained(encoder)
    base = build_prefix_lm_base(encoder, tmp_path / "base")
    model, tok, _ = load_model(str(base))
    assert is_prefix_lm(model) and model.config.is_decoder
    assert tok.eos_token == "[SEP]" and model.generation_config.eos_token_id == tok.sep_token_id
    assert tok.decode(tok.encode("2\nintent", add_special_tokens=False)).split(" ") == ["2", "\n", "intent"]
    prompt = PromptBuilder(tok).build("berlin", "document")
    assert prompt.input_ids[0] == tok.cls_token_id and prompt.input_ids[-1] == tok.sep_token_id
    # BERT's 512 positions do not hold the default budgets (64 + 384 + the template): a base without a manifest
    # gets the document budget lowered to fit, and the longest prompt then fits exactly
    scorer = load_scorer(str(base))
    b = scorer.builder
    assert b.max_query_tokens == 64 and b.max_document_tokens < 384
    assert b.max_prompt_tokens() == 512
    scores = scorer.score([("berlin " * 80, "document " * 600)])
    assert len(scores) == 1 and abs(sum(scores[0].probabilities) - 1) < 1e-5


def test_the_training_pass_reads_the_grade_as_the_scorer_does_and_learns_the_explanation(tiny_bert):
    """`training.distill_loss.student_forward` on prompt + completion gives the scorer's grade logits of the prompt
    alone (the prompt never sees the completion under the prefix-LM mask), and its NLL is that of the completion
    tokens under BERT's head."""
    from afrl.scorer import pad_batch
    from training.distill_loss import student_forward

    model, tok = tiny_bert
    grade_ids = GradeScale().token_ids(tok)
    prompts = [_prompt_ids(tok, *pair) for pair in PAIRS[:2]]
    completion = [grade_ids[2], *tok.encode("\nIntent: x", add_special_tokens=False)]
    rows = [p + completion for p in prompts]
    ids, mask = pad_batch(rows, tok.pad_token_id, "right")
    labels = torch.full_like(ids, -100)
    for i, p in enumerate(prompts):
        labels[i, len(p) + 1 : len(p) + len(completion)] = torch.tensor(completion[1:])
    grade_pos = torch.tensor([len(p) - 1 for p in prompts])
    with torch.no_grad():
        got, nll = student_forward(model, ids, mask, labels, grade_pos, grade_ids)
        alone = torch.cat([grade_logits(model, torch.tensor([p]), torch.ones(1, len(p)), grade_ids) for p in prompts])
    torch.testing.assert_close(got, alone, atol=1e-4, rtol=1e-4)
    assert 0 < float(nll) < 20


@pytest.mark.parametrize("arch", ["bert", "qwen3"])
def test_the_sft_loss_reads_the_grade_where_the_scorer_does(arch):
    """`training.losses.completion_nll_and_grade_logits` (SFT and RL) labels the grade token too: its grade-position
    logits are the scorer's grade logits of the prompt alone, for a prefix LM (its mask keeps the completion out
    of the prompt) and for a causal LM, and its NLL comes from the model's own head."""
    from afrl.scorer import pad_batch
    from training.losses import completion_nll_and_grade_logits

    model, tok = build_tiny_model(arch)
    grade_ids = GradeScale().token_ids(tok)
    prompts = [_prompt_ids(tok, *pair) for pair in PAIRS[:2]]
    completion = [grade_ids[1], *tok.encode("\nIntent: x", add_special_tokens=False)]
    ids, mask = pad_batch([p + completion for p in prompts], tok.pad_token_id, "right")
    labels = torch.full_like(ids, -100)
    for i, p in enumerate(prompts):
        labels[i, len(p) : len(p) + len(completion)] = torch.tensor(completion)
    with torch.no_grad():
        nll, _, first = completion_nll_and_grade_logits(model, ids, mask, labels)
        alone = torch.cat([grade_logits(model, torch.tensor([p]), torch.ones(1, len(p)), grade_ids) for p in prompts])
    torch.testing.assert_close(first[:, grade_ids], alone, atol=1e-4, rtol=1e-4)
    assert 0 < float(nll) < 20


def test_the_greedy_explanation_starts_with_the_argmax_grade(tiny_bert):
    """With grade_ids the first token is the scored grade, as the service's /explain writes it, whatever the rest
    of the vocabulary scores at that position; the tokens after it are the plain greedy continuation."""
    from afrl.prefix_lm import greedy_continuation, prompt_pass, step_pass

    model, tok = tiny_bert
    grade_ids = GradeScale().token_ids(tok)
    ids = torch.tensor([_prompt_ids(tok, *PAIRS[0])])
    with torch.no_grad():
        best = grade_ids[int(grade_logits(model, ids, torch.ones_like(ids), grade_ids).argmax())]
        tokens = greedy_continuation(model, ids, 2, set(), grade_ids)
        _, past = prompt_pass(model, ids)
        after_grade, _ = step_pass(model, torch.tensor([[best]]), past)
    assert tokens == [best, int(after_grade[0].argmax())]
