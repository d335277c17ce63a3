"""Instruction mutators for instruction evolution: error analysis in, candidate instructions out.

A mutator gets the instruction, the error analysis of the current model on the dev split with it (which rules or
grades it got wrong, the confusions, a few wrong examples) and returns up to n edited instructions, each with a
one-line description of the edit that the lineage records.

* `OfflineMutator` (deterministic, no network): edits the guideline line by line from a reference of known-good
  lines (by default the rule world's `RULES`): it replaces a line that states a failing rule wrongly, adds the
  missing line of a failing rule, moves the lines of failing rules to the top, and drops lines that state no known
  rule. Which edits it proposes, and in which order, depend only on the error counts.
* `HttpMutator`: the production mutator. It posts the same error analysis to an OpenAI-compatible
  `/v1/chat/completions` endpoint (vLLM, or any compatible server) and asks for n revised guidelines.
"""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass
class ErrorAnalysis:
    """What went wrong on the dev split: per-key (rule, or `grade N` without rules) counts and confusions."""

    metric: str
    score: float
    total: int
    wrong: Counter[str] = field(default_factory=Counter)  # key -> wrong predictions
    seen: Counter[str] = field(default_factory=Counter)  # key -> records
    confusions: Counter[tuple[int, int]] = field(default_factory=Counter)  # (gold, predicted) -> count, errors only
    examples: list[dict[str, Any]] = field(default_factory=list)  # a few wrong predictions, for an LLM to read

    def failing(self) -> list[str]:
        """Keys with errors, worst first (by error count, then error rate, then name: deterministic)."""
        keys = [k for k, n in self.wrong.items() if n > 0]
        return sorted(keys, key=lambda k: (-self.wrong[k], -self.wrong[k] / self.seen[k], k))

    def summary(self) -> str:
        """The analysis as text: what the HTTP mutator sends and the lineage keeps."""
        lines = [f"{self.metric} = {self.score:.4f} on {self.total} dev pairs."]
        for key in self.failing():
            lines.append(f"- {key}: {self.wrong[key]} of {self.seen[key]} wrong")
        if self.confusions:
            pairs = ", ".join(f"gold {g} -> predicted {p}: {n}" for (g, p), n in self.confusions.most_common(6))
            lines.append(f"Most frequent confusions: {pairs}.")
        for ex in self.examples:
            lines.append(
                f"Example ({ex.get('key')}): query {ex['query']!r}; document {ex['document'][:200]!r}; "
                f"gold {ex['gold']}, predicted {ex['predicted']}."
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "score": self.score,
            "total": self.total,
            "wrong": dict(self.wrong),
            "seen": dict(self.seen),
            "confusions": {f"{g}->{p}": n for (g, p), n in sorted(self.confusions.items())},
        }


@dataclass(frozen=True)
class Mutation:
    instruction: str
    description: str


class Mutator(Protocol):
    def mutate(self, instruction: str, analysis: ErrorAnalysis, n: int) -> list[Mutation]: ...


# ---------------------------------------------------------------------------------------------------- offline


def rule_world_lines() -> dict[str, str]:
    """The rule world's guideline lines by rule name, as `training.rule_world.GUIDELINE` writes them."""
    from training.rule_world import RULES

    return {r.name: f"{r.name} ({r.grade}): {r.description}." for r in RULES}


@dataclass
class OfflineMutator:
    """Deterministic guideline edits driven by which rules failed (see the module docstring)."""

    reference: dict[str, str] = field(default_factory=rule_world_lines)

    def _line_of(self, lines: list[str], key: str) -> int | None:
        pattern = re.compile(rf"^\s*{re.escape(key)}\b")
        return next((i for i, ln in enumerate(lines) if pattern.match(ln)), None)

    def _fix(self, lines: list[str], key: str) -> tuple[list[str], str] | None:
        """Replace a wrong line of `key` with the reference, or add the missing one after the first line."""
        good = self.reference.get(key)
        if good is None:
            return None
        i = self._line_of(lines, key)
        if i is None:
            at = 1 if lines else 0
            return [*lines[:at], good, *lines[at:]], f"add the line of {key}"
        if lines[i].strip() == good:
            return None
        return [*lines[:i], good, *lines[i + 1 :]], f"correct the line of {key}"

    def _promote(self, lines: list[str], keys: list[str]) -> tuple[list[str], str] | None:
        """Move the lines of the given keys to the top (after the first line), in the given order."""
        idx = [i for k in keys if (i := self._line_of(lines, k)) is not None]
        if not idx or idx == list(range(1, 1 + len(idx))):
            return None
        moved = [lines[i] for i in idx]
        rest = [ln for i, ln in enumerate(lines) if i not in set(idx)]
        return [rest[0], *moved, *rest[1:]] if rest else moved, "move the lines of " + ", ".join(keys) + " up"

    def _drop_unknown(self, lines: list[str]) -> tuple[list[str], str] | None:
        """Drop `name (...)`-style rule lines whose rule the reference does not know (they can only mislead)."""
        rule_line = re.compile(r"^\s*([a-z_]+) \(\d\):")
        keep = [ln for ln in lines if not ((m := rule_line.match(ln)) and m.group(1) not in self.reference)]
        if len(keep) == len(lines):
            return None
        return keep, f"drop {len(lines) - len(keep)} line(s) of unknown rules"

    def mutate(self, instruction: str, analysis: ErrorAnalysis, n: int) -> list[Mutation]:
        lines = instruction.strip().splitlines()
        failing = analysis.failing()
        candidates: list[tuple[list[str], str]] = []
        fixes = [f for key in failing if (f := self._fix(lines, key)) is not None]
        candidates.extend(fixes)  # one rule at a time, worst first
        if len(fixes) > 1:  # and the worst three together
            combined, names = lines, list[str]()
            for key in failing:
                if (f := self._fix(combined, key)) is not None:
                    combined, names = f[0], [*names, key]
                if len(names) == 3:
                    break
            candidates.append((combined, "fix the lines of " + ", ".join(names)))
        if (p := self._promote(lines, failing[:3])) is not None:
            candidates.append(p)
        if (d := self._drop_unknown(lines)) is not None:
            candidates.append(d)
        out, seen = [], {instruction.strip()}
        for new_lines, description in candidates:
            text = "\n".join(new_lines).strip()
            if text not in seen:
                seen.add(text)
                out.append(Mutation(text, description))
            if len(out) == n:
                break
        return out


# ---------------------------------------------------------------------------------------------------- HTTP

SYSTEM_PROMPT = (
    "You improve the guideline that a relevance-grading model receives as its system message. You get the "
    "guideline and an error analysis of the model on a dev split. Reply with the complete revised guideline only: "
    "no preamble, no commentary, no code fences. Keep what works, fix or add what the errors point to, and keep "
    "the output format line at the end."
)


@dataclass
class HttpMutator:
    """An LLM behind an OpenAI-compatible chat-completions endpoint writes the candidates."""

    url: str  # base URL, e.g. http://127.0.0.1:8000/v1 (vLLM's OpenAI server)
    model: str
    api_key_env: str | None = "AFRL_MUTATOR_API_KEY"
    temperature: float = 0.8
    max_tokens: int = 1024
    timeout_s: float = 120.0

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        url = self.url.rstrip("/")
        if not url.endswith("/chat/completions"):
            url += "/chat/completions"
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")[:300]
            raise RuntimeError(f"mutator endpoint {url} answered {e.code}: {body}") from e
        except urllib.error.URLError as e:
            raise RuntimeError(f"mutator endpoint {url} unreachable ({e.reason}); is the server running?") from e

    def mutate(self, instruction: str, analysis: ErrorAnalysis, n: int) -> list[Mutation]:
        user = f"Guideline:\n<<<\n{instruction}\n>>>\n\nError analysis:\n{analysis.summary()}"
        payload = {
            "model": self.model,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}],
            "n": n,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        reply = self._post(payload)
        out, seen = [], {instruction.strip()}
        for i, choice in enumerate(reply.get("choices", [])):
            text = _strip_fences(str((choice.get("message") or {}).get("content") or ""))
            if text and text not in seen:
                seen.add(text)
                out.append(Mutation(text, f"LLM rewrite {i + 1} ({self.model})"))
        if not out:
            log.warning("the mutator endpoint returned no usable candidate")
        return out[:n]


def _strip_fences(text: str) -> str:
    text = text.strip()
    m = re.fullmatch(r"```[a-zA-Z]*\n(.*?)\n?```", text, flags=re.S)
    return (m.group(1) if m else text).strip()
