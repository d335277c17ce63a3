"""Relevance records and their loaders: JSONL, TREC folders, and the query-level train/dev split.

A record is `{"id", "query", "document", "grade", "explanation"?, "rule"?, "source"?}` (DESIGN.md section 4).
Human judgments come without explanations; `synthesize_explanation` writes one from the gold grade and lexical
evidence by a fixed, documented template, so that every SFT target has the AFRL shape.
"""

from __future__ import annotations

import csv
import json
import random
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from afrl.contract import Explanation

csv.field_size_limit(sys.maxsize)


@dataclass
class Record:
    id: str
    query: str
    document: str
    grade: int
    explanation: str | None = None
    rule: str | None = None
    source: str | None = None
    qid: str | None = None
    docid: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def read_jsonl(path: str | Path) -> list[Record]:
    """Records from a JSONL file; a bad line is reported with its number and what is wrong."""
    records = []
    with Path(path).open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                missing = [k for k in ("query", "document", "grade") if k not in data]
                if missing:
                    raise ValueError(f"missing {', '.join(missing)}")
                data.setdefault("id", f"{Path(path).stem}-{n}")
                data["grade"] = int(data["grade"])
                records.append(Record(**{k: data[k] for k in Record.__dataclass_fields__ if k in data}))
            except (ValueError, TypeError) as e:
                raise ValueError(f"{path}:{n}: not a relevance record ({e})") from e
    return records


def write_jsonl(records: Iterable[Record], path: str | Path) -> None:
    with Path(path).open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------------- TREC


def read_queries(path: Path) -> dict[str, str]:
    out = {}
    with path.open(encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 2:
                out[row[0]] = row[1]
    return out


def read_passages(path: Path) -> dict[str, str]:
    return read_queries(path)


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    with path.open() as f:
        for line in f:
            parts = line.split()
            if len(parts) == 4:
                qrels[parts[0]][parts[2]] = int(parts[3])
    return dict(qrels)


def read_run(path: Path) -> dict[str, list[tuple[str, float]]]:
    """A TREC run as qid -> [(docid, score)] in rank order."""
    rows: dict[str, list[tuple[str, float, int]]] = defaultdict(list)
    with path.open() as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5:
                rows[parts[0]].append((parts[2], float(parts[4]), int(parts[3])))
    return {q: [(d, s) for d, s, _ in sorted(v, key=lambda x: x[2])] for q, v in rows.items()}


@dataclass
class TrecCollection:
    """One TREC folder: queries.tsv, passages.tsv, qrels.txt and a first-stage run (bm25_top100.run)."""

    name: str
    queries: dict[str, str]
    passages: dict[str, str]
    qrels: dict[str, dict[str, int]]
    run: dict[str, list[tuple[str, float]]]

    @classmethod
    def load(cls, directory: str | Path, run_file: str | Path | None = None) -> TrecCollection:
        d = Path(directory)
        needed = ["queries.tsv", "passages.tsv", "qrels.txt"]
        missing = [n for n in needed if not (d / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{d} is not a TREC folder: missing {', '.join(missing)}")
        if run_file is not None and not Path(run_file).is_file():
            raise FileNotFoundError(f"run file {run_file} does not exist (omit it to use {d}/bm25_top100.run)")
        run_path = Path(run_file) if run_file else d / "bm25_top100.run"
        run = read_run(run_path) if run_path.is_file() else {}  # the folder's own run is optional (judged pool only)
        return cls(
            d.name, read_queries(d / "queries.tsv"), read_passages(d / "passages.tsv"), read_qrels(d / "qrels.txt"), run
        )

    def judged_records(self, qids: Iterable[str] | None = None) -> list[Record]:
        """Every judged pair whose passage text is known, as records (fully judged pools)."""
        keep = set(qids) if qids is not None else None
        out = []
        for qid, docs in sorted(self.qrels.items()):
            if qid not in self.queries or (keep is not None and qid not in keep):
                continue
            for docid, grade in sorted(docs.items()):
                text = self.passages.get(docid)
                if text:
                    out.append(
                        Record(
                            f"{self.name}-{qid}-{docid}",
                            self.queries[qid],
                            text,
                            grade,
                            source=self.name,
                            qid=qid,
                            docid=docid,
                        )
                    )
        return out


def load_trec_records(directory: str | Path, qids: Iterable[str] | None = None) -> list[Record]:
    return TrecCollection.load(directory).judged_records(qids)


# ---------------------------------------------------------------------------------------------------- split


def split_by_query(qids: Sequence[str], dev_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """A deterministic query-level split: pairs of one query never straddle train and dev."""
    if not 0 < dev_fraction < 1:
        raise ValueError(f"dev_fraction must be in (0, 1), got {dev_fraction}")
    ordered = sorted(set(qids))
    random.Random(seed).shuffle(ordered)
    n_dev = max(1, round(len(ordered) * dev_fraction))
    return sorted(ordered[n_dev:]), sorted(ordered[:n_dev])


def split_records(records: Sequence[Record], dev_fraction: float, seed: int = 0) -> tuple[list[Record], list[Record]]:
    keys = [r.qid or r.query for r in records]
    _, dev = split_by_query(keys, dev_fraction, seed)
    dev_set = set(dev)
    train = [r for r, k in zip(records, keys, strict=True) if k not in dev_set]
    return train, [r for r, k in zip(records, keys, strict=True) if k in dev_set]


# ---------------------------------------------------------------------------------------------------- explanations

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    {
        "a",
        "an",
        "the",
        "of",
        "to",
        "in",
        "on",
        "for",
        "and",
        "or",
        "is",
        "are",
        "was",
        "were",
        "be",
        "by",
        "with",
        "what",
        "which",
        "who",
        "whom",
        "how",
        "why",
        "when",
        "where",
        "does",
        "do",
        "did",
        "can",
        "could",
        "should",
        "would",
        "from",
        "at",
        "as",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "into",
        "about",
        "than",
        "then",
        "there",
        "their",
    }
)
_REASONS = {
    0: "not about what the query asks",
    1: "on topic but no answer",
    2: "a partial or buried answer",
    3: "dedicated to the query, states the answer",
}


def content_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


def _sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    return [p for p in parts if p.strip()] or [text.strip()]


def best_evidence(query: str, document: str, max_words: int = 12) -> str:
    """The document span (at most `max_words` words) with the most query content words: the quoted Evidence."""
    terms = set(content_words(query))
    best, best_score = "", -1.0
    for sentence in _sentences(document):
        words = sentence.split()
        for start in range(0, max(1, len(words) - max_words + 1), max(1, max_words // 2)):
            span = words[start : start + max_words]
            if any('"' in w for w in span):  # Explanation.to_text rewrites '"', which would break the quote
                continue
            hits = len(terms & set(content_words(" ".join(span))))
            score = hits + 0.001 * len(span)
            if score > best_score:
                best, best_score = " ".join(span), score
    return best


def synthesize_explanation(query: str, document: str, grade: int) -> Explanation:
    """The documented template for judged pairs without an explanation.

    Intent: "information about <query>". Evidence: the document span of at most 12 words that
    shares the most content words with the query (verbatim, so the Evidence check holds). Reasoning: the overlap
    found (which query terms the passage mentions, or that it mentions none) plus the fixed meaning of the gold
    grade on the TREC scale. Verdict: the gold grade.
    """
    terms = list(dict.fromkeys(content_words(query)))
    doc_terms = set(content_words(document))
    found = [t for t in terms if t in doc_terms]
    overlap = f"mentions {', '.join(found[:3])}" if found else "no key query terms"
    evidence = best_evidence(query, document)
    intent = f"information about {query.strip().rstrip('?')}"
    return Explanation(intent=intent, evidence=evidence, reasoning=f"{overlap}; {_REASONS[grade]}", verdict=grade)
