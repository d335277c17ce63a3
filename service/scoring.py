"""Scoring requests end to end: build prompts (contract), batch them, turn logits into grades, count metrics.

The routes for /score and /rerank are thin wrappers over `ScoringService.score`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from afrl.contract import ContractError, GradeResult, Prompt, PromptBuilder, result_from_logits
from service.backends.base import Backend
from service.batcher import Batcher, Timing
from service.metrics import Metrics


class TooManyDocumentsError(Exception):
    def __init__(self, count: int, limit: int):
        super().__init__(
            f"{count} documents in one request, the limit is {limit}: split the request or raise AFRL_MAX_DOCUMENTS"
        )


@dataclass
class Scored:
    results: list[GradeResult]
    truncated: list[bool]
    prompt_tokens: int
    timing: Timing


class ScoringService:
    def __init__(
        self,
        backend: Backend,
        batcher: Batcher,
        metrics: Metrics,
        max_documents: int,
        timeout_s: float,
        tokenize_executor: ThreadPoolExecutor,
        max_instruction_tokens: int = 256,
    ):
        self.backend = backend
        self.batcher = batcher
        self.metrics = metrics
        self.max_documents = max_documents
        self.timeout_s = timeout_s
        # One thread owns the tokenizer: fast tokenizers are not safe to call from several threads at once.
        self.tokenize_executor = tokenize_executor
        self.max_instruction_tokens = max_instruction_tokens

    async def build(
        self, pairs: Sequence[tuple[str, str]], instruction: str | None, max_document_tokens: int | None = None
    ) -> list[Prompt]:
        builder = self.backend.builder
        if max_document_tokens is not None and max_document_tokens < builder.max_document_tokens:
            builder = dataclasses.replace(builder, max_document_tokens=max_document_tokens)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.tokenize_executor, _build, builder, list(pairs), instruction, self.max_instruction_tokens
        )

    async def score(
        self,
        pairs: Sequence[tuple[str, str]],
        instruction: str | None = None,
        shared_query: bool = False,
        max_document_tokens: int | None = None,
    ) -> Scored:
        if len(pairs) > self.max_documents:
            raise TooManyDocumentsError(len(pairs), self.max_documents)
        prompts = await self.build(pairs, instruction, max_document_tokens)
        shared = prompts[0].query_prefix_len if shared_query and prompts else None
        logits, timing = await self.batcher.submit(prompts, timeout_s=self.timeout_s, shared_prefix=shared)
        results = [result_from_logits(row.tolist()) for row in logits]
        self.count(results)
        return Scored(results, [p.truncated for p in prompts], sum(len(p.input_ids) for p in prompts), timing)

    def count(self, results: Sequence[GradeResult]) -> None:
        self.metrics.pairs_scored.inc(len(results))
        for r in results:
            self.metrics.predicted_grade.labels(grade=str(r.grade)).inc()


def rank_order(scores: Sequence[float]) -> list[int]:
    """Indices by score, best first; ties keep input order (a stable sort). /rerank in every shape and
    `afrl.Reranker.rank` order with this one function, so they can never disagree on an order."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def _build(
    builder: PromptBuilder, pairs: list[tuple[str, str]], instruction: str | None, max_instruction_tokens: int
) -> list[Prompt]:
    if instruction is not None:
        check_instruction(builder, instruction, max_instruction_tokens)
    return builder.build_many(pairs, instruction)


def check_instruction(builder: PromptBuilder, instruction: str, limit: int) -> None:
    """Refuse an instruction override over `limit` tokens (ContractError, 422 upstream).

    Query and document are cut to their budgets, but an instruction is not: cutting it would change what the
    model is asked. Its cost is in every prompt of the request, so a long one makes a forward pass (and every
    request queued behind it) slow. A text of more than 8 characters per allowed token is refused before it
    is tokenized.
    """
    hint = "shorten it, or raise AFRL_MAX_INSTRUCTION_TOKENS"
    if len(instruction) > 8 * limit:
        raise ContractError(f"the instruction is {len(instruction)} characters, over the {limit}-token limit; {hint}")
    tokens = len(builder.tokenizer(instruction, add_special_tokens=False)["input_ids"])
    if tokens > limit:
        raise ContractError(f"the instruction is {tokens} tokens, over the {limit}-token limit; {hint}")
