"""Locust users for the AFRL service: `/score`, `/rerank` and streaming `/explain`.

Run headless with SLO checks through the runner (`python -m loadtest --help`), or directly:

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000            # web UI on :8089
    locust -f loadtest/locustfile.py --headless -u 8 -r 2 -t 60s --host URL \
        --csv runs/lt/stats --html runs/lt/report.html

Entries in the report:
* `/score`: one query with 1 to `--afrl-max-docs` documents (default 64), uniform, so the service sees small and
  large client batches mixed, as in production.
* `/rerank`: the Cohere-compatible endpoint with a candidate list and `top_n`.
* `/explain` streamed as Server-Sent Events. AFRL's point is that the grade arrives before any explanation token,
  so the stream is timed twice from the moment the request is sent: `/explain [score event]` (the first event,
  which carries the grade) and `/explain [done]` (the end of the explanation). The plain `/explain` entry is the
  time to response headers.

Options: `--afrl-max-docs N` (env AFRL_LOADTEST_MAX_DOCS), `--afrl-explain-tokens N` (AFRL_LOADTEST_EXPLAIN_TOKENS,
sent as max_new_tokens; 0 leaves the service default), `--afrl-explain-users N` (AFRL_LOADTEST_EXPLAIN_USERS, a fixed
number of /explain users instead of the weights) and a bearer key from AFRL_API_KEY when the service needs one.
"""

from __future__ import annotations

import json
import os
import random
import time
from functools import lru_cache
from typing import Any

from locust import HttpUser, between, events, task

from loadtest.payloads import MAX_DOCS_PER_REQUEST, Corpus, explain_body, load_corpus, rerank_body, score_body
from loadtest.slo import DERIVED_TYPE
from loadtest.sse import iter_sse

SCORE_EVENT_ENTRY = "/explain [score event]"
DONE_EVENT_ENTRY = "/explain [done]"


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    parser.add_argument(
        "--afrl-max-docs",
        type=int,
        env_var="AFRL_LOADTEST_MAX_DOCS",
        default=MAX_DOCS_PER_REQUEST,
        help="most documents per /score and /rerank request (each request draws 1..N uniformly)",
    )
    parser.add_argument(
        "--afrl-explain-tokens",
        type=int,
        env_var="AFRL_LOADTEST_EXPLAIN_TOKENS",
        default=0,
        help="max_new_tokens sent with each /explain request (0: the service's default)",
    )
    parser.add_argument(
        "--afrl-explain-users",
        type=int,
        env_var="AFRL_LOADTEST_EXPLAIN_USERS",
        default=0,
        help="exactly this many streaming /explain users (0: by weight, 1 in 10); short runs with few users need "
        "it, or the weights round the explain users away and the SLO check finds no /explain data",
    )


@events.init.add_listener
def _apply_options(environment: Any, **_: Any) -> None:
    opts = environment.parsed_options
    if opts is not None and getattr(opts, "afrl_explain_users", 0) > 0:
        # Read by locust's dispatcher, which runs after init (on the master in a distributed run).
        ExplainUser.fixed_count = opts.afrl_explain_users


@lru_cache(maxsize=1)
def corpus() -> Corpus:
    # Loaded once per locust process: the TREC TSVs are a few MB and every user shares them read-only.
    return load_corpus()


class _AfrlUser(HttpUser):
    abstract = True
    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        self.rng = random.Random()
        opts = self.environment.parsed_options
        self.max_docs = max(1, int(getattr(opts, "afrl_max_docs", MAX_DOCS_PER_REQUEST)))
        self.explain_tokens = int(getattr(opts, "afrl_explain_tokens", 0)) or None
        key = os.environ.get("AFRL_API_KEY")
        if key:
            self.client.headers["Authorization"] = f"Bearer {key}"


class ScoreUser(_AfrlUser):
    """Scores one query against a batch of documents, the online ranking path."""

    weight = 6

    @task
    def score(self) -> None:
        body = score_body(corpus(), self.rng, self.max_docs)
        with self.client.post("/score", json=body, name="/score", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                return
            results = resp.json().get("results", [])
            if len(results) != len(body["documents"]):
                resp.failure(f"{len(results)} results for {len(body['documents'])} documents")


class RerankUser(_AfrlUser):
    """Cohere-compatible rerank, what an existing search stack would call."""

    weight = 3

    @task
    def rerank(self) -> None:
        body = rerank_body(corpus(), self.rng, self.max_docs)
        with self.client.post("/rerank", json=body, name="/rerank", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                return
            results = resp.json().get("results", [])
            if len(results) != body["top_n"]:
                resp.failure(f"{len(results)} results for top_n={body['top_n']}")


class ExplainUser(_AfrlUser):
    """Streams an explanation; the score event and the end of the stream are reported as separate entries."""

    weight = 1

    def _report(self, name: str, start: float, length: int, error: Exception | None) -> None:
        self.environment.events.request.fire(
            request_type=DERIVED_TYPE,
            name=name,
            response_time=(time.perf_counter() - start) * 1000.0,
            response_length=length,
            exception=error,
            context={},
        )

    @task
    def explain(self) -> None:
        body = explain_body(corpus(), self.rng, self.explain_tokens)
        start = time.perf_counter()
        with self.client.post("/explain", json=body, name="/explain", stream=True, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                return
            seen_score = False
            length = 0
            try:
                for event, data in iter_sse(resp.iter_lines()):
                    length += len(data)
                    if event == "score" and not seen_score:
                        seen_score = True
                        json.loads(data)  # a score event must carry JSON; a parse error is a failure
                        self._report(SCORE_EVENT_ENTRY, start, length, None)
                    elif event == "error":
                        raise RuntimeError(f"error event: {data[:200]}")
                    elif event == "done":
                        if not seen_score:
                            raise RuntimeError("stream ended with 'done' before any 'score' event")
                        self._report(DONE_EVENT_ENTRY, start, length, None)
                        return
                raise RuntimeError("stream closed without a 'done' event" if seen_score else "stream had no events")
            except Exception as e:  # any broken stream is a failed request, never a crashed user
                self._report(DONE_EVENT_ENTRY if seen_score else SCORE_EVENT_ENTRY, start, length, e)
                resp.failure(str(e))
