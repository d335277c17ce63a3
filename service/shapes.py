"""Which API shape a request speaks, and error bodies in that shape's convention.

Teams replacing a reranker should change a URL, not their client code, so the same routes answer three
families of clients:
- `/rerank` (and /v1, /v2): Cohere / Jina (`documents`), or text-embeddings-inference (`texts`), service/tei.py;
- `/score` (and /v1/score): this service's own body (`query` + `documents`, or `pairs`), or vLLM's
  (`text_1`, `text_2`), service/vllm_score.py.
The body decides, through a pydantic discriminator, so each route's OpenAPI request body lists its shapes as
`oneOf`. A body that fits both shapes of a route, or (on /rerank) neither, is refused with a 422 naming the
fields of each: guessing would answer a client in a shape it cannot read.

Errors: the status codes are the service's own in every shape (service/README.md, Errors); the body follows
the shape's convention: `{"detail": ...}` for this service and the Cohere shape (as before; the Cohere SDK reads
the status), TEI's `{"error", "error_type"}` (router/src/lib.rs `ErrorResponse`, types from its OpenAPI
document), vLLM's `{"error": {"message", "type", "param", "code"}}` (vllm/entrypoints/openai/protocol.py
`ErrorResponse`; `type` is the status phrase and `code` the status, as its server_utils.py sets them). Refusals
sent before the body is read (401, 408, 413 for an oversized body) cannot know the shape and use `detail`.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated, Any, Literal

from fastapi import Request
from pydantic import Discriminator, Tag

from service import tei, vllm_score
from service.schemas import RerankRequest, ScoreRequest

Shape = Literal["afrl", "cohere", "tei", "vllm"]
AFRL: Shape = "afrl"
COHERE: Shape = "cohere"
TEI: Shape = "tei"
VLLM: Shape = "vllm"
TAGS = frozenset({AFRL, COHERE, TEI, VLLM})

RERANK_PATHS = ("/rerank", "/v1/rerank", "/v2/rerank")
SCORE_PATHS = ("/score", "/v1/score")

COHERE_FIELDS = "query, documents, top_n, return_documents, max_tokens_per_doc, instruction"
AFRL_SCORE_KEYS = frozenset({"query", "documents", "pairs"})
VLLM_KEYS = frozenset({"text_1", "text_2"})

RERANK_SHAPE_MESSAGE = (
    "a rerank body is a JSON object with either `documents` (Cohere / Jina shape: "
    f"{COHERE_FIELDS}) or `texts` (text-embeddings-inference shape: {tei.FIELDS}), exactly one of the two"
)
SCORE_SHAPE_MESSAGE = (
    "a score body is either this service's shape (`query` with `documents`, or `pairs`; optional `instruction`) "
    f"or vLLM's ({vllm_score.FIELDS}), not a mix of the two"
)


def rerank_shape(body: Any) -> str | None:
    """The tag of a /rerank body (or of a validated model); None refuses it with RERANK_SHAPE_MESSAGE."""
    if isinstance(body, RerankRequest):
        return COHERE
    if isinstance(body, tei.TeiRerankRequest):
        return TEI
    if not isinstance(body, dict) or ("documents" in body) == ("texts" in body):
        return None
    return COHERE if "documents" in body else TEI


def score_shape(body: Any) -> str | None:
    """The tag of a /score body; a body without vLLM's keys is this service's (whose own checks then apply)."""
    if isinstance(body, ScoreRequest):
        return AFRL
    if isinstance(body, vllm_score.VllmScoreRequest):
        return VLLM
    if not isinstance(body, dict):
        return AFRL
    vllm, afrl = bool(VLLM_KEYS & body.keys()), bool(AFRL_SCORE_KEYS & body.keys())
    if vllm and afrl:
        return None
    return VLLM if vllm else AFRL


RerankBody = Annotated[
    Annotated[RerankRequest, Tag(COHERE)] | Annotated[tei.TeiRerankRequest, Tag(TEI)],
    Discriminator(rerank_shape, custom_error_type="body_shape", custom_error_message=RERANK_SHAPE_MESSAGE),
]
ScoreBody = Annotated[
    Annotated[ScoreRequest, Tag(AFRL)] | Annotated[vllm_score.VllmScoreRequest, Tag(VLLM)],
    Discriminator(score_shape, custom_error_type="body_shape", custom_error_message=SCORE_SHAPE_MESSAGE),
]


def remember(request: Request, shape: Shape) -> None:
    """Record the shape a route is answering in, so that later errors (413, 429, 503) are shaped alike."""
    request.state.api_shape = shape


def of_request(request: Request, body: Any = None) -> Shape | None:
    """The shape of this request: what the route recorded, else what its path and body say (for a body that
    failed validation, before any route ran); None when neither tells."""
    shape: Shape | None = getattr(request.state, "api_shape", None)
    if shape is not None:
        return shape
    path = request.url.path
    if path in RERANK_PATHS and isinstance(body, dict):
        return TEI if rerank_shape(body) == TEI else None
    if path in SCORE_PATHS and isinstance(body, dict):
        return VLLM if score_shape(body) == VLLM else None
    return None


def clean_loc(loc: Any) -> list[Any]:
    """A validation error's `loc` without the union tag pydantic inserts (`["body", "tei", "texts", 0]` becomes
    `["body", "texts", 0]`), so a field is named the same way whichever shape the body took."""
    parts = list(loc)
    if len(parts) > 1 and parts[0] == "body" and parts[1] in TAGS:
        del parts[1]
    return parts


def error_content(shape: Shape | None, status: int, detail: Any) -> dict[str, Any]:
    """The JSON body of an error in the shape's convention; `detail` is a message or a list of validation
    errors (`loc`, `msg`)."""
    if shape == TEI:
        return {"error": _message(detail), "error_type": _TEI_TYPES.get(status, "backend")}
    if shape == VLLM:
        return {
            "error": {"message": _message(detail), "type": _phrase(status), "param": _param(detail), "code": status}
        }
    return {"detail": detail}


# TEI's ErrorType by our status: TEI sends "validation" for an over-large batch (413) and bad input, "overloaded"
# when its queue is full (429), "unhealthy" when it cannot serve (503), "backend" when inference failed.
_TEI_TYPES = {400: "validation", 413: "validation", 422: "validation", 429: "overloaded", 503: "unhealthy"}


def _message(detail: Any) -> str:
    if not isinstance(detail, list):
        return str(detail)
    parts = []
    for d in detail:
        loc = [str(p) for p in d.get("loc", ()) if p != "body"] if isinstance(d, dict) else []
        msg = d.get("msg", d) if isinstance(d, dict) else d
        parts.append(f"{'.'.join(loc)}: {msg}" if loc else str(msg))
    return "; ".join(parts)


def _param(detail: Any) -> str | None:
    """vLLM's `param`: the dotted location of the first invalid field (e.g. "body.text_1")."""
    if isinstance(detail, list) and detail and isinstance(detail[0], dict) and detail[0].get("loc"):
        return ".".join(str(p) for p in detail[0]["loc"])
    return None


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # 499 has no standard phrase
        return "Client Closed Request"
