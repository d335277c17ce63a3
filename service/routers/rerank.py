"""POST /rerank (also /v1/rerank and /v2/rerank): Cohere / Jina and text-embeddings-inference reranking.

The Cohere SDK's `Client` posts to /v1/rerank and `ClientV2` to /v2/rerank; Jina clients and LangChain /
LlamaIndex Cohere rerankers use the same body (`documents`). TEI clients (Haystack's HuggingFaceTEIRanker,
LlamaIndex's TextEmbeddingInference) post `texts` to /rerank and get TEI's bare list back (service/tei.py).
The body decides which (service/shapes.py). The relevance score is the AFRL expected grade / K in both.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service import shapes, tei
from service.cancellation import until_disconnect
from service.deps import ApiKey, ScoringDep
from service.errors import ERROR_RESPONSES
from service.routers import timing_headers
from service.schemas import (
    BilledUnits,
    RerankDocument,
    RerankMeta,
    RerankRequest,
    RerankResponse,
    RerankResult,
    Tokens,
    Usage,
)
from service.scoring import rank_order

router = APIRouter(tags=["rerank"], dependencies=[ApiKey], responses=ERROR_RESPONSES)


async def _rerank(
    body: shapes.RerankBody, request: Request, response: Response, scoring: ScoringDep
) -> RerankResponse | list[tei.TeiRank]:
    if isinstance(body, tei.TeiRerankRequest):
        return await _tei(body, request, response, scoring)
    return await _cohere(body, request, response, scoring)


async def _tei(
    body: tei.TeiRerankRequest, request: Request, response: Response, scoring: ScoringDep
) -> list[tei.TeiRank]:
    shapes.remember(request, shapes.TEI)
    pairs = [(body.query, t) for t in body.texts]
    scored = await until_disconnect(request, scoring.score(pairs, body.instruction, shared_query=True))
    timing_headers(request, response, scored.timing)
    return tei.ranks(body, [r.score for r in scored.results])


async def _cohere(body: RerankRequest, request: Request, response: Response, scoring: ScoringDep) -> RerankResponse:
    texts = body.texts()
    scored = await until_disconnect(
        request,
        scoring.score(
            [(body.query, t) for t in texts],
            body.instruction,
            shared_query=True,
            max_document_tokens=body.max_tokens_per_doc,
        ),
    )
    timing_headers(request, response, scored.timing)
    order = rank_order([r.score for r in scored.results])
    if body.top_n is not None:
        order = order[: body.top_n]
    results = [
        RerankResult(
            index=i,
            relevance_score=scored.results[i].score,
            document=RerankDocument(text=texts[i]) if body.return_documents else None,
        )
        for i in order
    ]
    tokens = scored.prompt_tokens
    return RerankResponse(
        id=request.state.request_id,
        model=body.model or scoring.backend.model_name,
        results=results,
        meta=RerankMeta(
            billed_units=BilledUnits(search_units=1, input_tokens=tokens), tokens=Tokens(input_tokens=tokens)
        ),
        usage=Usage(total_tokens=tokens),
    )


for _path in shapes.RERANK_PATHS:
    router.add_api_route(
        _path,
        _rerank,
        methods=["POST"],
        response_model=RerankResponse | list[tei.TeiRank],
        response_model_exclude_none=True,
        summary=f"Rerank documents for a query ({_path}): Cohere / Jina or text-embeddings-inference shape",
        description="A body with `documents` is answered in the Cohere / Jina shape (an object with `results`), a "
        "body with `texts` in the text-embeddings-inference shape (a list of `{index, score, text?}`, best first).",
        operation_id="rerank" + _path.replace("/", "_"),
    )
