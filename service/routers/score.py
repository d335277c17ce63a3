"""POST /score (also /v1/score): grade, score and probabilities per (query, document), in input order.

The same route speaks vLLM's score API: a body with `text_1` and `text_2` gets vLLM's answer
(service/vllm_score.py); the body decides (service/shapes.py).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response

from service import shapes
from service.cancellation import until_disconnect
from service.deps import ApiKey, ScoringDep
from service.errors import ERROR_RESPONSES
from service.routers import timing_headers
from service.schemas import GradeOut, ScoreRequest, ScoreResponse
from service.vllm_score import VllmScoreData, VllmScoreRequest, VllmScoreResponse, VllmUsage

router = APIRouter(tags=["scoring"], dependencies=[ApiKey], responses=ERROR_RESPONSES)


async def score(
    body: shapes.ScoreBody, request: Request, response: Response, scoring: ScoringDep
) -> ScoreResponse | VllmScoreResponse:
    if isinstance(body, VllmScoreRequest):
        return await _vllm(body, request, response, scoring)
    return await _afrl(body, request, response, scoring)


async def _afrl(body: ScoreRequest, request: Request, response: Response, scoring: ScoringDep) -> ScoreResponse:
    if body.pairs is not None:
        pairs = [(p.query, p.document) for p in body.pairs]
        shared = False
    else:
        assert body.query is not None and body.documents is not None  # the model validator guarantees it
        pairs = [(body.query, d) for d in body.documents]
        shared = True
    scored = await until_disconnect(request, scoring.score(pairs, body.instruction, shared_query=shared))
    timing_headers(request, response, scored.timing)
    return ScoreResponse(
        model=scoring.backend.model_name,
        results=[
            GradeOut(grade=r.grade, score=r.score, probabilities=r.probabilities, truncated=t)
            for r, t in zip(scored.results, scored.truncated, strict=True)
        ],
    )


async def _vllm(body: VllmScoreRequest, request: Request, response: Response, scoring: ScoringDep) -> VllmScoreResponse:
    shapes.remember(request, shapes.VLLM)
    pairs = body.pairs()
    shared = len({q for q, _ in pairs}) == 1  # one text_1 broadcast over text_2: reuse its prefix
    scored = await until_disconnect(request, scoring.score(pairs, body.instruction, shared_query=shared))
    timing_headers(request, response, scored.timing)
    tokens = scored.prompt_tokens
    return VllmScoreResponse(
        id=f"score-{request.state.request_id}",
        created=int(time.time()),
        model=body.model or scoring.backend.model_name,
        data=[VllmScoreData(index=i, score=r.score) for i, r in enumerate(scored.results)],
        usage=VllmUsage(prompt_tokens=tokens, total_tokens=tokens),
    )


for _path in shapes.SCORE_PATHS:
    router.add_api_route(
        _path,
        score,
        methods=["POST"],
        response_model=ScoreResponse | VllmScoreResponse,
        summary=f"Grade (query, document) pairs ({_path}): this service's shape or vLLM's",
        description="A body with `query` and `documents`, or `pairs`, gets per-pair grades, scores and "
        "probabilities; a body with `text_1` and `text_2` (vLLM's score API) gets vLLM's `{id, object, created, "
        "model, data, usage}` answer.",
        operation_id="score" + _path.replace("/", "_"),
    )
