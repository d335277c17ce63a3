"""vLLM's score API on `POST /score` and `/v1/score`: its request, broadcasting rules and response.

Read from vLLM's source rather than its docs: the request and response models are `ScoreRequest`,
`ScoreResponse` and `ScoreResponseData` in vllm/entrypoints/pooling/score/protocol.py (commit 08a48e2b), with
`UsageInfo` from vllm/entrypoints/openai/protocol.py (`prompt_tokens`, `total_tokens`, `completion_tokens`);
the length rules are `validate_score_input` / `_validate_score_input_lens` in
vllm/entrypoints/pooling/score/utils.py (commit 0829f204) and the pairing is `make_pairs` of the older
vllm/entrypoints/openai/serving_score.py: a string on either side is a list of one; one `text_1` is paired with
every `text_2` (1:N), N with N pair element-wise, and anything else ("N:1", "2:3") is an error. `text_1` is the
query, `text_2` the document.

The answer is `{id, object: "list", created, model, data: [{index, object: "score", score}], usage}` in input
order; `score` is the AFRL score (expected grade / K in [0, 1]). vLLM's `truncate_prompt_tokens` cuts a whole
prompt to its last N tokens; here the contract's own budgets cut the query and the document apart and never
the template, so the field is accepted and has no further effect.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, WithJsonSchema, model_validator


def _as_list(value: Any, info: ValidationInfo) -> Any:
    """A string is a list of one, as in vLLM. Done before validation rather than with a `str | list` union,
    whose errors would name union branches ("text_1.constrained-str") instead of the field."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise ValueError(f"{info.field_name} must be a string or a list of strings")
    return value


_TEXT_SCHEMA = {"type": "string", "minLength": 1}
Texts = Annotated[
    list[Annotated[str, Field(min_length=1)]],
    Field(min_length=1),
    BeforeValidator(_as_list),
    WithJsonSchema({"anyOf": [_TEXT_SCHEMA, {"type": "array", "items": _TEXT_SCHEMA, "minItems": 1}]}),
]

# Fields of the vLLM shape, for the message that refuses a body of no clear shape.
FIELDS = "model, text_1, text_2 (strings or lists of strings)"


class VllmScoreRequest(BaseModel):
    """vLLM score request; unknown fields (`priority`, `use_activation`, ...) are ignored, as vLLM does."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [{"model": "afrl", "text_1": "population of berlin", "text_2": ["Berlin had 3.5M people."]}]
        },
    )
    model: str | None = Field(None, description="accepted for compatibility; the served model answers")
    text_1: Texts = Field(description="the query, or one query per `text_2`")
    text_2: Texts = Field(description="the documents (or one document)")
    truncate_prompt_tokens: int | None = Field(
        None, ge=-1, description="accepted; the AFRL contract's per-part token budgets apply instead"
    )
    instruction: str | None = Field(None, min_length=1, description="AFRL extension: override the instruction")

    @model_validator(mode="after")
    def _lengths(self) -> VllmScoreRequest:
        n1, n2 = len(self.text_1), len(self.text_2)
        if n1 > 1 and n1 != n2:
            raise ValueError(
                f"text_1 has {n1} texts and text_2 has {n2}: lengths must be 1:1, 1:N or N:N (one text_1 is scored "
                "against every text_2; otherwise text_1[i] against text_2[i])"
            )
        return self

    def pairs(self) -> list[tuple[str, str]]:
        queries = self.text_1 * len(self.text_2) if len(self.text_1) == 1 else self.text_1
        return list(zip(queries, self.text_2, strict=True))


class VllmScoreData(BaseModel):
    index: int = Field(description="position of the pair, in input order")
    object: Literal["score"] = "score"
    score: float = Field(description="expected grade / K, in [0, 1]")


class VllmUsage(BaseModel):
    prompt_tokens: int = Field(description="prompt tokens scored")
    total_tokens: int
    completion_tokens: int = 0


class VllmScoreResponse(BaseModel):
    id: str = Field(description='"score-" and the request id')
    object: Literal["list"] = "list"
    created: int = Field(description="Unix time of the answer")
    model: str
    data: list[VllmScoreData] = Field(description="one score per pair, in input order")
    usage: VllmUsage
