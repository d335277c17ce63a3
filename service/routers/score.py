"""POST /score: grade, score and probabilities per (query, document), in input order."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.cancellation import until_disconnect
from service.deps import ApiKey, ScoringDep
from service.errors import ERROR_RESPONSES
from service.routers import timing_headers
from service.schemas import GradeOut, ScoreRequest, ScoreResponse

router = APIRouter(tags=["scoring"], dependencies=[ApiKey], responses=ERROR_RESPONSES)


@router.post("/score", response_model=ScoreResponse, summary="Grade (query, document) pairs")
async def score(body: ScoreRequest, request: Request, response: Response, scoring: ScoringDep) -> ScoreResponse:
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
