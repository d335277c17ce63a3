"""Benchmark inputs: (query, document) pairs whose prompts are about N tokens, and a long instruction.

The text is synthetic but ordinary English (seeded, so every run and every backend sees the same ids), and the
prompts are built by the contract's `PromptBuilder`: the document budget is set so that template + query +
document comes to the requested length, which keeps padding (and so wasted work) near zero in a batch.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from afrl.contract import DEFAULT_INSTRUCTION, Prompt, PromptBuilder

_SENTENCES = [
    "Berlin had a population of 3,520,031 registered inhabitants in 2015.",
    "The city is known for its museums, its parks and a lively music scene.",
    "A direct flight from Berlin to New York takes about nine hours.",
    "At sea level, water boils at 100 degrees Celsius, or 212 degrees Fahrenheit.",
    "Men's waterproof leather hiking boots come with a breathable lining in sizes 40 to 47.",
    "Vitamin D deficiency can cause bone pain, muscle weakness and fatigue in adults.",
    "Photosynthesis is the process by which plants use light to make sugar from carbon dioxide and water.",
    "The novel was adapted for film and television many times during the twentieth century.",
    "Stainless steel bottles keep drinks cold for up to twenty-four hours.",
    "Canberra is the capital city of Australia, while Sydney is its largest city.",
    "The report compares the prices of train tickets across several European countries.",
    "Customers who bought this phone case also looked at screen protectors and chargers.",
]
_QUERIES = [
    "population of berlin",
    "how long is the flight from berlin to new york",
    "waterproof hiking boots men size 42",
    "symptoms of vitamin d deficiency",
    "what is the boiling point of water",
    "capital of australia",
]
# Extra guideline rules: a realistic long instruction (the cacheable prefix that prefix reuse is for).
_GUIDELINE_RULES = [
    "An exact answer to the question in the passage earns a 3, even when the passage also covers other topics.",
    "A passage that answers only part of the question, or answers it for a different year or place, earns a 2.",
    "A passage about the right topic that does not answer the question earns a 1.",
    "A product of the wrong category earns a 0, even when the brand matches the query.",
    "An accessory for the product the user asked for is not the product: grade it 1 at most.",
    "A size, gender or unit mismatch lowers the grade by one; a negated requirement counts as a mismatch.",
    "Quote the evidence verbatim from the passage; never paraphrase it inside the quotation marks.",
    "When the passage is empty, garbled or in another language than the query, grade it 0.",
]


def documents(n: int, chars: int, seed: int = 0) -> list[str]:
    """n different documents of at least `chars` characters, made of shuffled ordinary sentences."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts: list[str] = []
        while sum(len(p) + 1 for p in parts) < chars:
            parts.append(rng.choice(_SENTENCES))
        out.append(" ".join(parts))
    return out


RERANK_QUERY = "symptoms of vitamin d deficiency"


def passages(n: int, chars: tuple[int, int], seed: int = 0) -> list[str]:
    """n different documents of `chars[0]` to `chars[1]` characters (cut at a word boundary when longer)."""
    low, high = chars
    out = []
    for doc in documents(n, low + 1, seed):  # joined with spaces: at least `low` characters
        if len(doc) > high:
            cut = doc.rfind(" ", low, high + 1)
            doc = doc[: cut if cut >= low else high]
        out.append(doc)
    return out


def rerank_pairs(n: int, chars: tuple[int, int], seed: int = 0) -> list[tuple[str, str]]:
    """A rerank request's shape: one query with n passages (MS MARCO length: `BenchConfig.document_chars`)."""
    return [(RERANK_QUERY, d) for d in passages(n, chars, seed)]


def pairs(n: int, doc_chars: int, seed: int = 0, one_query: str | None = None) -> list[tuple[str, str]]:
    docs = documents(n, doc_chars, seed)
    return [(one_query or _QUERIES[i % len(_QUERIES)], d) for i, d in enumerate(docs)]


def long_instruction(tokenizer: Any, tokens: int) -> str:
    """The default instruction followed by guideline rules, repeated until it is at least `tokens` tokens."""
    text = DEFAULT_INSTRUCTION
    i = 0
    while len(tokenizer.encode(text, add_special_tokens=False)) < tokens:
        text += " " + _GUIDELINE_RULES[i % len(_GUIDELINE_RULES)]
        i += 1
    return text


def sized_builder(builder: PromptBuilder, prompt_tokens: int, instruction: str | None = None) -> PromptBuilder:
    """A copy of `builder` whose document budget makes a full prompt about `prompt_tokens` long."""
    probe = builder.build(_QUERIES[0], "x", instruction)
    overhead = len(probe.input_ids) - probe.document_tokens
    room = prompt_tokens - overhead
    if room < 8:
        raise ValueError(
            f"a {prompt_tokens}-token prompt leaves {room} tokens for the document after the template, instruction "
            f"and query ({overhead} tokens): ask for longer prompts"
        )
    return dataclasses.replace(builder, max_document_tokens=room, _cache={})


def prompts(
    builder: PromptBuilder, n: int, prompt_tokens: int, instruction: str | None = None, seed: int = 0,
    one_query: str | None = None,
) -> list[Prompt]:  # fmt: skip
    """n prompts of about `prompt_tokens` tokens (the documents are cut to fit, so all have the same length)."""
    sized = sized_builder(builder, prompt_tokens, instruction)
    return sized.build_many(pairs(n, prompt_tokens * 8, seed, one_query), instruction)


def ids(prompt_list: list[Prompt]) -> list[list[int]]:
    return [p.input_ids for p in prompt_list]


def real_tokens(prompt_list: list[Prompt]) -> int:
    return sum(len(p.input_ids) for p in prompt_list)
