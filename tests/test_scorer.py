import pytest
import torch

from afrl.contract import GradeScale, PromptBuilder
from afrl.scorer import TorchScorer, pad_batch

PAIRS = [
    ("population of berlin", "Berlin had a population of 3,520,031 registered inhabitants."),
    ("waterproof hiking boots", "a phone case"),
    ("q", "a much longer document " * 20),
    ("what is the trec scale", "0 1 2 3 irrelevant related highly perfectly relevant"),
]


def test_scored_position_is_the_first_generated_position(tiny):
    model, tok = tiny
    scorer = TorchScorer(model, tok, PromptBuilder(tok), GradeScale())
    prompt = scorer.builder.build(*PAIRS[0])
    ids = torch.tensor([prompt.input_ids])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=1,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
    )
    first_step = out.logits[0][0, scorer.grade_ids]
    ours = scorer.logits_for_prompts([prompt])[0]
    torch.testing.assert_close(ours, first_step.float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_one_by_one(tiny, side):
    model, tok = tiny
    scorer = TorchScorer(model, tok, PromptBuilder(tok), GradeScale(), batch_size=8, padding_side=side)
    batched = scorer.score(PAIRS)
    scorer.batch_size = 1
    single = scorer.score(PAIRS)
    for b, s in zip(batched, single, strict=True):
        assert b.probabilities == pytest.approx(s.probabilities, abs=1e-5)
    # the pairs differ, so a scorer that ignored its input would fail the comparison above trivially: guard it
    assert len({round(r.score, 6) for r in single}) > 1


def test_pad_batch_sides():
    ids, mask = pad_batch([[1, 2, 3], [4]], pad_id=0, side="left")
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_batch([[1, 2, 3], [4]], pad_id=0, side="right")
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_rank_orders_by_score(tiny_qwen):
    model, tok = tiny_qwen
    scorer = TorchScorer(model, tok, PromptBuilder(tok), GradeScale())
    docs = [d for _, d in PAIRS]
    ranked = scorer.rank("population of berlin", docs, top_k=3)
    assert len(ranked) == 3
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)


def test_hidden_states_are_what_the_grade_head_reads(tiny):
    from afrl.scorer import grade_head

    model, tok = tiny
    scorer = TorchScorer(model, tok, PromptBuilder(tok), GradeScale(), batch_size=3)
    prompts = scorer.builder.build_many(PAIRS)
    hidden = scorer.hidden_for_prompts(prompts)
    assert hidden.shape == (len(PAIRS), model.config.hidden_size)
    with torch.no_grad():
        via_head = hidden @ grade_head(model, scorer.grade_ids).float().T
    torch.testing.assert_close(via_head, scorer.logits_for_prompts(prompts), atol=1e-5, rtol=1e-5)
