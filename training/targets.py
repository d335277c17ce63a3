"""Gold AFRL training examples: prompt ids (from the contract) + target ids, with the loss mask.

The target is built as [grade token] + tokens of "\\n<explanation>" + [end of turn], so its first token is the
grade token by construction, whatever the tokenizer would merge. SFT, the RL auxiliary loss and distillation all
use this one function.
"""

from __future__ import annotations

from typing import Any

from afrl.contract import GradeScale, PromptBuilder, format_target
from training.data import Record, synthesize_explanation


def target_text(record: Record, scale: GradeScale, with_explanation: bool = True) -> str:
    if not with_explanation:
        return format_target(record.grade, None, scale)
    explanation = record.explanation or synthesize_explanation(record.query, record.document, record.grade).to_text()
    return format_target(record.grade, explanation, scale)


def target_ids(tokenizer: Any, scale: GradeScale, grade_ids: list[int], text: str) -> list[int]:
    grade_line, _, rest = text.partition("\n")
    ids = [grade_ids[int(grade_line)]]
    if rest:
        ids += tokenizer.encode("\n" + rest, add_special_tokens=False)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token: the model could never learn to stop")
    return [*ids, int(eos)]


def build_example(
    record: Record, builder: PromptBuilder, scale: GradeScale, grade_ids: list[int], with_explanation: bool = True
) -> dict[str, list[int]]:
    """{"input_ids", "completion_mask"}: the format TRL's SFTTrainer trains on with completion_only_loss."""
    prompt = builder.build(record.query, record.document)
    target = target_ids(builder.tokenizer, scale, grade_ids, target_text(record, scale, with_explanation))
    return {
        "input_ids": prompt.input_ids + target,
        "completion_mask": [0] * len(prompt.input_ids) + [1] * len(target),
    }
