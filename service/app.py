"""`create_app(settings, backend=None)`: the FastAPI app, built from settings.

The lifespan loads the model (unless a backend is passed in, as tests do), starts the batcher, scoring service
and explainer (service/runtime.py, shared with the in-process `afrl.Reranker`), warms up (the first forward
passes allocate and pick kernels; /ready stays false until they are done), and on shutdown turns /ready false,
stops taking work and drains what is in flight. Under `afrl serve` the drain happens before uvicorn closes its
sockets (service/server.py), so /ready answers 503 while it lasts. Run it with `afrl serve` (service/README.md).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from service import errors
from service.backends.base import Backend, can_explain
from service.deps import ApiKey
from service.metrics import Metrics
from service.middleware import RequestContextMiddleware
from service.routers import explain, ops, rerank, score
from service.runtime import start_services
from service.settings import Settings

log = logging.getLogger(__name__)

WARMUP_QUERY = "what is the population of berlin"
WARMUP_DOCUMENTS = [
    "Berlin had a population of 3,520,031 registered inhabitants in 2015.",
    "running shoes for men size 42",
    "waterproof hiking boots",
    "a phone case for the new model",
]


def create_app(settings: Settings | None = None, backend: Backend | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from service.backends import load_backend

        be = backend if backend is not None else await asyncio.to_thread(load_backend, settings)
        services = start_services(be, settings, metrics)
        app.state.backend = be
        app.state.services = services  # the shutdown drain (service/server.py) stops and cuts them
        app.state.scoring = services.scoring
        app.state.explainer = services.explainer
        if settings.warmup:
            await _warm_up(app)
        app.state.ready = True
        log.info("ready", extra={"model": be.model_name, "backend": be.name})
        try:
            yield
        finally:
            app.state.ready = False
            log.info("shutting down: draining in-flight work (up to %g s)", settings.drain_timeout_s)
            await services.close(settings.drain_timeout_s)

    app = FastAPI(
        title="AFRL relevance",
        version="0.1.0",
        summary="Answer First, Reason Later: relevance grades from one forward pass, explanations on demand",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.ready = False
    routers = tuple(module.router for module in (score, rerank, explain, ops))
    for router in routers:
        app.include_router(router)
    errors.install(app)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        body_timeout_s=settings.body_timeout_s,
        api_key=settings.api_key.get_secret_value() if settings.api_key is not None else None,
        protected_paths=_paths(routers, protected=True),
        known_paths=_paths(routers, protected=False),
    )
    return app


def _paths(routers: tuple[APIRouter, ...], protected: bool) -> frozenset[str]:
    """Route paths; with `protected`, only those behind the API key (the `ApiKey` dependency, on the router or
    the route). Read from the routers (none has a prefix), not from `app.routes`, which holds FastAPI's
    private wrappers of included routers."""
    return frozenset(
        route.path
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute)
        and (not protected or any(d is ApiKey for d in [*router.dependencies, *route.dependencies]))
    )


async def _warm_up(app: FastAPI) -> None:
    """Shared-prefix and plain passes, then a two-token explanation, so the first user request is not slow.

    It calls the backend directly, not the services, so warm-up traffic never shows in the drift counters.
    """
    backend: Backend = app.state.backend
    prompts = backend.builder.build_many([(WARMUP_QUERY, d) for d in WARMUP_DOCUMENTS])

    def run() -> None:
        backend.grade_logits_shared_prefix(prompts, prompts[0].query_prefix_len)
        backend.grade_logits(prompts)
        # a scorer-only export has nothing to warm up here; a lazily loaded explainer must stay unloaded
        if can_explain(backend) and not getattr(backend, "explain_is_lazy", False):
            for _ in backend.explain(prompts[0], 2, threading.Event()):
                pass

    await asyncio.to_thread(run)
