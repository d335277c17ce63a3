"""Hugging Face text-embeddings-inference (TEI) `/rerank`: its request and response, so TEI clients work here.

Fields as TEI declares them: `RerankRequest` and `Rank` in TEI's router/src/http/types.rs, and its OpenAPI
document (docs/openapi.json, TEI 1.7.1): request `{query, texts, raw_scores=false, return_text=false,
truncate=false|null, truncation_direction="Right"}`, answer a bare JSON list of `{index, score, text?}` sorted by
score, best first (`text` left out unless `return_text`). Clients rely on that order: Haystack's
HuggingFaceTEIRanker takes the first `top_k` items as they come.

Where AFRL differs, it says so instead of pretending:
- `score` is the AFRL score (expected grade / K in [0, 1]), the number the Cohere shape calls `relevance_score`.
  TEI's own score is sigmoid(logit); with `raw_scores` TEI returns the logit. Here `raw_scores` returns the
  log-odds of the score, so sigmoid(raw) == score holds as in TEI and the order is the same.
- Truncation is always on: the AFRL contract cuts the query and each text to their token budgets (keeping their
  start, TEI's "Right"), as TEI does with `--auto-truncate`. `truncate` is accepted for compatibility;
  `truncation_direction` "Left" is refused, since cutting the start is not what the model was trained on.
- `instruction` is an AFRL extension (the relevance guideline), as in the other shapes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.scoring import rank_order

Text = Annotated[str, Field(min_length=1)]

# Fields of the TEI shape, for the message that refuses a body of no clear shape.
FIELDS = "query, texts, raw_scores, return_text, truncate, truncation_direction"


class TeiRerankRequest(BaseModel):
    """text-embeddings-inference rerank request; unknown fields are ignored, as TEI's serde does."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"examples": [{"query": "population of berlin", "texts": ["Berlin had 3.5M people."]}]},
    )
    query: str = Field(min_length=1, description="the search query")
    texts: list[Text] = Field(min_length=1, description="passages to rank against `query`")
    raw_scores: bool = Field(False, description="return the log-odds of the score (sigmoid(raw) == score)")
    return_text: bool = Field(False, description="echo each text in its result")
    truncate: bool | None = Field(
        None, description="accepted for compatibility: over-long texts are always cut to the model's token budget"
    )
    truncation_direction: Literal["Right"] = Field(
        "Right", description='"Right" (cut the end of an over-long text); "Left" is not supported'
    )
    instruction: str | None = Field(None, min_length=1, description="AFRL extension: override the instruction")

    @field_validator("truncation_direction", mode="before")
    @classmethod
    def _direction(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lower() == "left":
            raise ValueError(
                '"Left" truncation is not supported: the AFRL contract keeps the start of an over-long query or '
                'text and cuts its end; send "Right" or leave the field out'
            )
        return value.capitalize() if isinstance(value, str) else value


class TeiRank(BaseModel):
    index: int = Field(description="position of the text in the request")
    score: float = Field(description="expected grade / K in [0, 1]; with `raw_scores`, its log-odds")
    text: str | None = Field(None, description="the text, when `return_text` is true")


def raw_score(score: float) -> float:
    """log(s / (1 - s)): the inverse of the sigmoid, clamped so that a score of exactly 0 or 1 stays finite."""
    s = min(max(score, 1e-12), 1 - 1e-12)
    return math.log(s / (1 - s))


def ranks(body: TeiRerankRequest, scores: Sequence[float]) -> list[TeiRank]:
    """TEI's answer: every text, best first (TEI has no top-n; clients cut the list themselves)."""
    return [
        TeiRank(
            index=i,
            score=raw_score(scores[i]) if body.raw_scores else scores[i],
            text=body.texts[i] if body.return_text else None,
        )
        for i in rank_order(scores)
    ]
