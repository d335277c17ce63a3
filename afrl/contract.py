"""The AFRL contract: everything training, export and service must agree on, in one place.

"Answer First, Reason Later": the model writes the relevance grade as its very first token, then a structured
explanation. This module owns

* the grade scale (grades 0..K, each exactly one vocabulary token),
* the prompt (the model's own chat template; instruction = system message; user message = query, then document),
* truncation (query and document each to their own token budget; the template is never cut),
* the target the model is trained to write and the parser that checks an explanation,
* the scoring math (softmax over the K+1 grade logits, argmax grade, expected-grade score).

The manifest that travels with every model lives in `afrl.manifest`. Nothing else in the repo may re-type the
prompt format: import `PromptBuilder` instead.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_GRADE_NAMES = ("irrelevant", "related", "highly relevant", "perfectly relevant")

DEFAULT_INSTRUCTION = (
    "Grade how relevant the passage is to the search query. 3: dedicated to the query, contains the exact answer. "
    "2: has some answer, maybe unclear or hidden. 1: related but does not answer. 0: irrelevant. "
    "Write the grade, then Intent, Evidence (a quote), Reasoning, Verdict."
)

EXPLANATION_FIELDS = ("Intent", "Evidence", "Reasoning", "Verdict")

# Slots substituted into the chat template so that the rendered text can be cut into fixed template segments
# and the two variable parts. They are plain ASCII words so that no template trims or escapes them.
_QUERY_SLOT = "AFRLQUERYSLOTq7x"
_DOC_SLOT = "AFRLDOCUMENTSLOTd7x"
USER_TEMPLATE = "Query:\n" + _QUERY_SLOT + "\n\nDocument:\n" + _DOC_SLOT


class ContractError(ValueError):
    """The model, tokenizer or input does not satisfy the AFRL contract."""


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class GradeScale:
    """Ordered grades 0..K; grade k is written as the single token str(k)."""

    names: tuple[str, ...] = DEFAULT_GRADE_NAMES

    def __post_init__(self) -> None:
        if not 2 <= len(self.names) <= 10:
            raise ContractError(f"a grade scale needs 2 to 10 grades (digits 0-9), got {len(self.names)}")

    @property
    def max_grade(self) -> int:
        return len(self.names) - 1

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(str(k) for k in range(len(self.names)))

    def token_ids(self, tokenizer: Any) -> list[int]:
        """Vocabulary ids of the grade tokens; refuses a tokenizer that splits a grade or shares ids."""
        ids = []
        for label in self.labels:
            pieces = tokenizer.encode(label, add_special_tokens=False)
            if len(pieces) != 1:
                raise ContractError(
                    f"grade {label!r} is {len(pieces)} tokens {pieces} in this tokenizer; AFRL needs every grade "
                    "to be exactly one token. Use a model whose vocabulary has single-digit tokens."
                )
            ids.append(int(pieces[0]))
        if len(set(ids)) != len(ids):
            raise ContractError(f"grade tokens are not distinct: {ids}")
        return ids

    def to_dict(self) -> dict[str, Any]:
        return {"labels": list(self.labels), "names": list(self.names)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GradeScale:
        return cls(names=tuple(data["names"]))


# ---------------------------------------------------------------------------------------------------- prompt


@dataclass(frozen=True)
class Prompt:
    """Token ids of one prompt, ending exactly where the grade token goes."""

    input_ids: list[int]
    truncated: bool
    query_tokens: int
    document_tokens: int
    prefix_len: int  # tokens of the instruction prefix (identical for every request with this instruction)
    query_prefix_len: int  # tokens up to the start of the document (shared by all documents of one query)


@dataclass(frozen=True)
class _Segments:
    prefix: list[int]
    middle: list[int]
    suffix: list[int]


@dataclass
class PromptBuilder:
    """Builds AFRL prompts through the tokenizer's chat template, with per-part token budgets.

    The chat template is rendered once per instruction with slot words in place of the query and the document;
    the rendered text is cut at the slots into prefix / middle / suffix, which are tokenized on their own and
    cached. A prompt is prefix + query ids + middle + document ids + suffix, so the template around the variable
    parts is never truncated and the ids are identical in training, export and serving.
    """

    tokenizer: Any
    instruction: str = DEFAULT_INSTRUCTION
    max_query_tokens: int = 64
    max_document_tokens: int = 384
    _cache: dict[str, _Segments] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.max_query_tokens < 1 or self.max_document_tokens < 1:
            raise ContractError("token budgets must be positive")
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ContractError("the tokenizer has no chat template; AFRL prompts are built with the model's own")

    def render_template(self, instruction: str | None = None) -> str:
        """The chat template rendered with slot words, for the manifest and for inspection."""
        messages = [
            {"role": "system", "content": self.instruction if instruction is None else instruction},
            {"role": "user", "content": USER_TEMPLATE},
        ]
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
        return str(text)

    def _segments(self, instruction: str) -> _Segments:
        cached = self._cache.get(instruction)
        if cached is not None:
            return cached
        if _QUERY_SLOT in instruction or _DOC_SLOT in instruction:
            raise ContractError("the instruction contains a reserved slot word")
        text = self.render_template(instruction)
        if text.count(_QUERY_SLOT) != 1 or text.count(_DOC_SLOT) != 1:
            raise ContractError("the chat template does not render the user message verbatim exactly once")
        prefix, rest = text.split(_QUERY_SLOT)
        middle, suffix = rest.split(_DOC_SLOT)
        enc = self._encode
        segments = _Segments(enc(prefix), enc(middle), enc(suffix))
        if len(self._cache) > 64:  # instructions are few; bound the cache against per-request instructions
            self._cache.clear()
        self._cache[instruction] = segments
        return segments

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def build(self, query: str, document: str, instruction: str | None = None) -> Prompt:
        return self.build_many([(query, document)], instruction)[0]

    def build_many(self, pairs: Sequence[tuple[str, str]], instruction: str | None = None) -> list[Prompt]:
        seg = self._segments(self.instruction if instruction is None else instruction)
        queries = [q for q, _ in pairs]
        documents = [d for _, d in pairs]
        # Cap the text before tokenizing: a 10 MB document should not cost a 10 MB tokenization. Eight
        # characters per token is far above any real tokenizer's average, so the cap never changes the result.
        q_ids = self._encode_batch([q[: self.max_query_tokens * 8] for q in queries])
        d_ids = self._encode_batch([d[: self.max_document_tokens * 8] for d in documents])
        prompts = []
        for (q, d), qi, di in zip(pairs, q_ids, d_ids, strict=True):
            truncated = (
                len(qi) > self.max_query_tokens
                or len(di) > self.max_document_tokens
                or len(q) > self.max_query_tokens * 8
                or len(d) > self.max_document_tokens * 8
            )
            qi = qi[: self.max_query_tokens]
            di = di[: self.max_document_tokens]
            ids = seg.prefix + qi + seg.middle + di + seg.suffix
            prompts.append(
                Prompt(
                    input_ids=ids,
                    truncated=truncated,
                    query_tokens=len(qi),
                    document_tokens=len(di),
                    prefix_len=len(seg.prefix),
                    query_prefix_len=len(seg.prefix) + len(qi) + len(seg.middle),
                )
            )
        return prompts

    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        out = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [list(x) for x in out]

    def max_prompt_tokens(self, instruction: str | None = None) -> int:
        seg = self._segments(self.instruction if instruction is None else instruction)
        return len(seg.prefix) + len(seg.middle) + len(seg.suffix) + self.max_query_tokens + self.max_document_tokens


# ---------------------------------------------------------------------------------------------------- target


@dataclass(frozen=True)
class Explanation:
    """The structured explanation that follows the grade token."""

    intent: str
    evidence: str
    reasoning: str
    verdict: int

    def to_text(self) -> str:
        evidence = self.evidence.replace('"', "'")
        return f'Intent: {self.intent}\nEvidence: "{evidence}"\nReasoning: {self.reasoning}\nVerdict: {self.verdict}'


def format_target(grade: int, explanation: Explanation | str | None, scale: GradeScale | None = None) -> str:
    """What the model writes: the grade token, a newline, then the explanation lines (no end token)."""
    scale = scale or GradeScale()
    if not 0 <= grade <= scale.max_grade:
        raise ContractError(f"grade {grade} is outside 0..{scale.max_grade}")
    if explanation is None:
        return str(grade)
    text = explanation.to_text() if isinstance(explanation, Explanation) else explanation.strip()
    return f"{grade}\n{text}"


@dataclass
class ParsedCompletion:
    """A parsed completion and the result of each check."""

    grade: int | None
    fields: dict[str, str]
    verdict: int | None
    well_formed: bool
    verdict_consistent: bool
    evidence_in_document: bool
    errors: list[str]

    @property
    def consistent(self) -> bool:
        return self.well_formed and self.verdict_consistent and self.evidence_in_document

    def to_dict(self) -> dict[str, Any]:
        return {
            "grade": self.grade,
            "fields": self.fields,
            "verdict": self.verdict,
            "well_formed": self.well_formed,
            "verdict_consistent": self.verdict_consistent,
            "evidence_in_document": self.evidence_in_document,
            "consistent": self.consistent,
            "errors": self.errors,
        }


# Field names are matched in any case: an uncased tokenizer (the BERT of a prefix-LM student) writes "intent:".
_FIELD_RE = re.compile(r"^\s*(Intent|Evidence|Reasoning|Verdict)\s*:\s*(.*?)\s*$", re.IGNORECASE)


def normalize_for_match(text: str) -> str:
    """The form in which a quoted Evidence is looked up in the document: lower case, accents and all whitespace
    removed. An uncased WordPiece tokenizer (a prefix-LM student's BERT) strips accents and decodes "3,520" as
    "3, 520" and "don't" as "don ' t", so a faithful quote differs from its source in exactly these ways."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not c.isspace() and not unicodedata.combining(c))


def parse_completion(text: str, document: str | None = None, scale: GradeScale | None = None) -> ParsedCompletion:
    """Parse "<grade>\\nIntent: ...\\nEvidence: "..."\\nReasoning: ...\\nVerdict: <grade>" and check it.

    Checks: well-formed (grade token first, the four labelled lines in order, each non-empty), Verdict equal to
    the first token, and Evidence (without its quotes) found in the document, ignoring case, accents and
    whitespace (`normalize_for_match`). Field names match in any case.
    """
    scale = scale or GradeScale()
    errors: list[str] = []
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    grade: int | None = None
    if lines and lines[0].strip() in scale.labels:
        grade = int(lines[0].strip())
        body = lines[1:]
    else:
        errors.append("the first line is not a grade token")
        body = lines[1:] if lines else []
    fields: dict[str, str] = {}
    order: list[str] = []
    for ln in body:
        m = _FIELD_RE.match(ln)
        if m is None:
            errors.append(f"unlabelled line: {ln[:60]!r}")
            continue
        name, value = m.group(1).capitalize(), m.group(2)
        if name in fields:
            errors.append(f"field {name} appears twice")
            continue
        fields[name] = value
        order.append(name)
    missing = [f for f in EXPLANATION_FIELDS if not fields.get(f)]
    if missing:
        errors.append("missing or empty fields: " + ", ".join(missing))
    elif order != list(EXPLANATION_FIELDS):
        errors.append("fields out of order: " + ", ".join(order))
    verdict: int | None = None
    raw_verdict = fields.get("Verdict", "")
    if raw_verdict in scale.labels:
        verdict = int(raw_verdict)
    elif raw_verdict:
        errors.append(f"Verdict {raw_verdict!r} is not a grade")
    well_formed = not errors
    verdict_consistent = grade is not None and verdict == grade
    if not verdict_consistent and grade is not None and verdict is not None:
        errors.append(f"Verdict {verdict} differs from the first token {grade}")
    evidence = fields.get("Evidence", "").strip().strip('"').strip()
    evidence_ok = False
    if document is not None and evidence:
        evidence_ok = normalize_for_match(evidence) in normalize_for_match(document)
        if not evidence_ok:
            errors.append("Evidence is not a quote from the document")
    return ParsedCompletion(grade, fields, verdict, well_formed, verdict_consistent, evidence_ok, errors)


# ---------------------------------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class GradeResult:
    grade: int
    score: float
    probabilities: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {"grade": self.grade, "score": self.score, "probabilities": self.probabilities}


def result_from_logits(grade_logits: Sequence[float]) -> GradeResult:
    """p = softmax over the K+1 grade logits; grade = argmax p; score = sum_k k * p_k / K (expected grade)."""
    k_max = len(grade_logits) - 1
    if k_max < 1:
        raise ContractError("need at least two grade logits")
    top = max(grade_logits)
    exps = [math.exp(x - top) for x in grade_logits]
    total = sum(exps)
    probs = [e / total for e in exps]
    grade = max(range(len(probs)), key=probs.__getitem__)
    score = sum(k * p for k, p in enumerate(probs)) / k_max
    return GradeResult(grade=grade, score=score, probabilities=probs)
