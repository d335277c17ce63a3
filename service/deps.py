"""Request dependencies as `Annotated` aliases: the services on app.state and the optional bearer API key."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.explainer import Explainer
from service.scoring import ScoringService
from service.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="set when the server runs with AFRL_API_KEY")


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_scoring(request: Request) -> ScoringService:
    scoring: ScoringService = request.app.state.scoring
    return scoring


def get_explainer(request: Request) -> Explainer:
    explainer: Explainer = request.app.state.explainer
    return explainer


def require_api_key(
    settings: Annotated[Settings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    if settings.api_key is None:
        return
    if not key_matches(settings.api_key.get_secret_value(), credentials.credentials if credentials else ""):
        raise HTTPException(status_code=401, detail=UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})


UNAUTHORIZED = "missing or wrong API key: send `Authorization: Bearer <AFRL_API_KEY>`"


def key_matches(expected: str, given: str) -> bool:
    """Constant-time comparison (no timing hint about the key); the one check of the dependency and middleware."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape"))


def bearer_token(authorization: str) -> str:
    """The token of an `Authorization: Bearer TOKEN` header value ('' when it is not a bearer header)."""
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


SettingsDep = Annotated[Settings, Depends(get_settings)]
ScoringDep = Annotated[ScoringService, Depends(get_scoring)]
ExplainerDep = Annotated[Explainer, Depends(get_explainer)]
ApiKey = Depends(require_api_key)
