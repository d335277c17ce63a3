"""POST /rerank (also /v1/rerank and /v2/rerank): Cohere- and Jina-compatible reranking.

The Cohere SDK's `Client` posts to /v1/rerank and `ClientV2` to /v2/rerank; Jina clients and LangChain /
LlamaIndex rerankers use the same body. The relevance score is the AFRL expected grade / K.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

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

router = APIRouter(tags=["rerank"], dependencies=[ApiKey], responses=ERROR_RESPONSES)


async def _rerank(body: RerankRequest, request: Request, response: Response, scoring: ScoringDep) -> RerankResponse:
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
    order = sorted(range(len(texts)), key=lambda i: -scored.results[i].score)
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


for _path in ("/rerank", "/v1/rerank", "/v2/rerank"):
    router.add_api_route(
        _path,
        _rerank,
        methods=["POST"],
        response_model=RerankResponse,
        response_model_exclude_none=True,
        summary=f"Rerank documents for a query ({_path})",
        operation_id="rerank" + _path.replace("/", "_"),
    )
