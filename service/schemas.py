"""Request and response models of the HTTP API; their descriptions become the OpenAPI spec at /docs.

Strings that carry text must be non-empty, so an empty query or document is a 422 naming the field. The rerank
models follow Cohere's v1/v2 and Jina's shapes so that their SDKs work unchanged against this server.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Pair(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, description="the search query")
    document: str = Field(min_length=1, description="the passage to judge")


class ScoreRequest(BaseModel):
    """Either one `query` with `documents`, or a list of `pairs`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"query": "population of berlin", "documents": ["Berlin had 3.5M people."]}]},
    )
    query: str | None = Field(None, min_length=1, description="the query shared by all `documents`")
    documents: list[str] | None = Field(None, min_length=1, description="passages to judge against `query`")
    pairs: list[Pair] | None = Field(None, min_length=1, description="independent (query, document) pairs")
    instruction: str | None = Field(None, min_length=1, description="override the model's instruction")

    @model_validator(mode="after")
    def _one_form(self) -> ScoreRequest:
        if self.pairs is not None:
            if self.query is not None or self.documents is not None:
                raise ValueError("send either `pairs` or `query` with `documents`, not both")
        elif self.query is None or self.documents is None:
            raise ValueError("`query` and `documents` are required (or send `pairs`)")
        if self.documents is not None and any(not d for d in self.documents):
            raise ValueError("`documents` must not contain empty strings")
        return self


class GradeOut(BaseModel):
    grade: int = Field(description="argmax of the grade distribution (0..K)")
    score: float = Field(description="expected grade / K, in [0, 1]; use it to rank")
    probabilities: list[float] = Field(description="softmax over the K+1 grade-token logits")
    truncated: bool = Field(description="the query or document was cut to its token budget")


class ScoreResponse(BaseModel):
    model: str = Field(description="the served model")
    results: list[GradeOut] = Field(description="one result per input, in input order")


class RerankRequest(BaseModel):
    """Cohere v1/v2 and Jina rerank request; unknown fields (e.g. `rank_fields`, `priority`) are ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = Field(None, description="accepted for compatibility; the served model answers")
    query: str = Field(min_length=1, description="the search query")
    documents: list[str | dict[str, Any]] = Field(
        min_length=1, description='passages as strings or objects with a "text" field (Cohere v1)'
    )
    top_n: int | None = Field(None, ge=1, description="return only the best N (default: all)")
    return_documents: bool = Field(False, description="echo each document in its result")
    max_tokens_per_doc: int | None = Field(None, ge=1, description="truncate documents to this many tokens")
    instruction: str | None = Field(None, min_length=1, description="override the model's instruction")

    @model_validator(mode="after")
    def _texts(self) -> RerankRequest:
        for i, d in enumerate(self.documents):
            text = d.get("text") if isinstance(d, dict) else d
            if not isinstance(text, str) or not text:
                raise ValueError(f"documents[{i}] must be a non-empty string or an object with a non-empty 'text'")
            if not _is_unicode(text):  # typed fields refuse lone surrogates themselves; `text` is in an Any dict
                raise ValueError(f"documents[{i}].text is not valid Unicode (it holds a lone surrogate escape)")
        return self

    def texts(self) -> list[str]:
        return [str(d["text"]) if isinstance(d, dict) else d for d in self.documents]


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int = Field(description="position of the document in the request")
    relevance_score: float = Field(description="expected grade / K, in [0, 1]")
    document: RerankDocument | None = Field(None, description="the document, when `return_documents` is true")


class ApiVersion(BaseModel):
    version: str = "2"


class BilledUnits(BaseModel):
    search_units: int = Field(description="one per request, as Cohere counts them")
    input_tokens: int


class Tokens(BaseModel):
    input_tokens: int
    output_tokens: int = 0


class RerankMeta(BaseModel):
    api_version: ApiVersion = Field(default_factory=ApiVersion)
    billed_units: BilledUnits
    tokens: Tokens


class Usage(BaseModel):
    total_tokens: int = Field(description="prompt tokens scored (Jina's field)")


class RerankResponse(BaseModel):
    id: str = Field(description="the request id")
    model: str
    results: list[RerankResult] = Field(description="sorted by relevance_score, best first")
    meta: RerankMeta
    usage: Usage


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, description="the search query")
    document: str = Field(min_length=1, description="the passage to judge and explain")
    instruction: str | None = Field(None, min_length=1, description="override the model's instruction")
    stream: bool = Field(True, description="Server-Sent Events (score, delta..., done); false returns one JSON")
    max_new_tokens: int | None = Field(None, ge=1, le=4096, description="cap on explanation tokens")


class ExplainTimings(BaseModel):
    time_to_score_ms: float
    generation_ms: float
    total_ms: float


class ExplainDone(BaseModel):
    text: str = Field(description="the whole completion: grade token, newline, explanation lines")
    explanation: dict[str, Any] = Field(description="the parsed completion (fields and checks)")
    consistent: bool = Field(description="well-formed, Verdict equals the first token, Evidence quoted")
    prompt_tokens: int
    completion_tokens: int
    stopped: Literal["eos", "length", "cancelled"]
    timings: ExplainTimings


class ExplainResponse(BaseModel):
    score: GradeOut
    done: ExplainDone


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    ready: bool
    backend: str | None = None
    model: str | None = None


class ErrorBody(BaseModel):
    detail: Any = Field(description="what is wrong and how to fix it")
