"""Request bodies for the load test: real TREC DL queries and passages when the data is there, else a sample.

Realistic lengths matter more than realistic grades here: the service's cost is set by the number of pairs and
their token counts, so the payloads are drawn from judged TREC DL passages (`judged_with_text.tsv`, columns
`qid query docid label passage`) whenever `AFRL_TREC_DIR` or `../shared/data/trec-dl` holds them. The built-in
sample keeps the load test runnable anywhere (a container, CI) with passages of a typical length.
"""

from __future__ import annotations

import csv
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_DOCS_PER_REQUEST = 64

# Default location relative to the repository: <repo>/../shared/data/trec-dl.
DEFAULT_TREC_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "trec-dl"

SAMPLE: dict[str, list[str]] = {
    "what is the population of berlin": [
        "Berlin is the capital and largest city of Germany, with 3,850,809 inhabitants in 2023, making it the most "
        "populous city in the European Union by population within city limits.",
        "The Berlin Wall was a guarded concrete barrier that encircled West Berlin from 1961 to 1989.",
        "Berlin had a population of 3,520,031 registered inhabitants in 2015 in an area of 891.82 square kilometres.",
        "Munich is the capital and most populous city of the German state of Bavaria.",
        "The Berlin metropolitan region has a population of about six million people, Germany's second-largest "
        "metropolitan area after the Rhine-Ruhr region.",
    ],
    "how long does it take to boil an egg": [
        "For a soft-boiled egg, lower the egg into boiling water and cook for six minutes; for a hard-boiled egg, "
        "cook for ten to twelve minutes, then cool it in cold water.",
        "Eggs are a good source of protein and contain all nine essential amino acids.",
        "Place the eggs in a saucepan, cover with cold water, bring to a boil, then cover and remove from the heat. "
        "Let them stand 9 to 12 minutes depending on the size.",
        "Chickens lay eggs roughly every 26 hours; the colour of the shell depends on the breed.",
    ],
    "symptoms of vitamin d deficiency": [
        "Vitamin D deficiency can cause bone pain, muscle weakness, fatigue and, in children, rickets; many "
        "people have no symptoms at all.",
        "Vitamin D is produced in the skin when it is exposed to ultraviolet B light from the sun.",
        "Fatty fish such as salmon and mackerel are among the few foods that naturally contain vitamin D.",
        "Common signs of low vitamin D include frequent infections, back pain, depression and slow wound healing.",
    ],
    "what does a cpu do": [
        "A central processing unit executes the instructions of a computer program: arithmetic, logic, control "
        "and input/output operations specified by the instructions.",
        "The graphics processing unit is a specialised circuit designed to accelerate image rendering.",
        "Modern CPUs have several cores, each able to run its own thread of instructions in parallel.",
        "A power supply unit converts mains AC to low-voltage regulated DC power for the internal components.",
    ],
}


@dataclass
class Corpus:
    """Queries with candidate passages; `source` says where they came from (for the report)."""

    by_query: dict[str, list[str]]
    source: str

    def __post_init__(self) -> None:
        self.by_query = {q: docs for q, docs in self.by_query.items() if docs}
        if not self.by_query:
            raise ValueError(f"no query with passages in {self.source}")
        self._queries = sorted(self.by_query)

    def sample(self, rng: random.Random, n_docs: int) -> tuple[str, list[str]]:
        """A random query with `n_docs` of its passages (with replacement when it has fewer)."""
        query = rng.choice(self._queries)
        docs = self.by_query[query]
        picked = rng.sample(docs, n_docs) if n_docs <= len(docs) else [rng.choice(docs) for _ in range(n_docs)]
        return query, picked


def trec_dir() -> Path:
    return Path(os.environ.get("AFRL_TREC_DIR", str(DEFAULT_TREC_DIR)))


def load_trec(root: Path) -> Corpus | None:
    """Queries and passages from every `*/judged_with_text.tsv` under `root`; None when there are none."""
    files = sorted(root.glob("*/judged_with_text.tsv")) if root.is_dir() else []
    if not files:
        return None
    by_query: dict[str, list[str]] = {}
    for path in files:
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            missing = {"query", "passage"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(
                    f"{path}: missing columns {sorted(missing)}; expected header qid query docid label passage"
                )
            for row in reader:
                by_query.setdefault(row["query"], []).append(row["passage"])
    return Corpus(by_query, source=", ".join(str(p) for p in files))


def load_corpus(root: Path | None = None) -> Corpus:
    """TREC DL passages when present, else the built-in sample."""
    root = root or trec_dir()
    corpus = load_trec(root)
    if corpus is None:
        log.info("no TREC DL data at %s (set AFRL_TREC_DIR); using the built-in sample", root)
        return Corpus({q: list(d) for q, d in SAMPLE.items()}, source="built-in sample")
    return corpus


def score_body(corpus: Corpus, rng: random.Random, max_docs: int = MAX_DOCS_PER_REQUEST) -> dict[str, Any]:
    """`/score`: one query with 1..max_docs documents (uniform, so small and large batches both occur)."""
    query, docs = corpus.sample(rng, rng.randint(1, max_docs))
    return {"query": query, "documents": docs}


def rerank_body(corpus: Corpus, rng: random.Random, max_docs: int = MAX_DOCS_PER_REQUEST) -> dict[str, Any]:
    """`/rerank`, Cohere-compatible: a candidate list and a top_n below its length."""
    query, docs = corpus.sample(rng, rng.randint(2, max(2, max_docs)))
    return {"query": query, "documents": docs, "top_n": min(10, len(docs)), "return_documents": False}


def explain_body(corpus: Corpus, rng: random.Random, max_new_tokens: int | None = None) -> dict[str, Any]:
    """`/explain` streamed: one pair."""
    query, docs = corpus.sample(rng, 1)
    body: dict[str, Any] = {"query": query, "document": docs[0], "stream": True}
    if max_new_tokens is not None:
        body["max_new_tokens"] = max_new_tokens
    return body
