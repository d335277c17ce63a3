"""Teachers for distillation: any relevance scorer that gives a number per (query, document) pair.

`load_teacher(spec)` turns a spec into one of:

| spec | teacher | score |
|---|---|---|
| `minilm` | the embedded all-MiniLM-L6-v2 (`afrl.embedded_teacher`, checksum verified) | cosine (mean pooling) |
| a sentence-transformers folder (`modules.json`) | that bi-encoder | cosine |
| a folder whose config names a `*ForSequenceClassification` | sentence-transformers `CrossEncoder` | its raw logit |
| `http://...` / `https://...` | a team's Cohere/Jina-compatible `/rerank` endpoint | `relevance_score` |
| anything else (`default`, an AFRL folder) | an AFRL model (`afrl.scorer.TorchScorer`) | expected grade |

sentence-transformers (5.1, the last release that works with the pinned transformers 4.57) does the encoding:
tokenisation, pooling and normalisation exactly as the teacher was trained, instead of a hand copy. A continuous
score is turned into a grade distribution by `training.calibration`, fitted on human judgments; an AFRL teacher
already has one, and the calibration can still fuse it with BM25.

Every teacher has a `fingerprint` (what it is, byte for byte where that can be known), so cached teacher passes
are keyed by it and a changed teacher is never mixed with an old cache.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from afrl.contract import sha256_text

log = logging.getLogger(__name__)


def _require_sentence_transformers() -> Any:
    try:
        import sentence_transformers
    except ImportError as e:  # the train extra installs it
        raise ImportError(
            "sentence-transformers teachers need `pip install sentence-transformers==5.1.2` (the train extra)"
        ) from e
    return sentence_transformers


@dataclass
class BiEncoderTeacher:
    """A sentence-transformers bi-encoder: score = cosine of the normalised embeddings.

    Embeddings are kept per distinct text, so a query shared by many pairs (and a passage shared by many queries)
    is encoded once; `encode` is also what dense retrieval over a corpus uses (`training.pools`).
    """

    folder: Path
    batch_size: int = 32
    fingerprint: str = ""
    kind: str = "bi-encoder"
    _model: Any = field(default=None, repr=False)
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.fingerprint:
            self.fingerprint = folder_fingerprint(self.folder)

    @property
    def model(self) -> Any:
        if self._model is None:
            st = _require_sentence_transformers()
            self._model = st.SentenceTransformer(str(self.folder), device="cpu", local_files_only=True)
        return self._model

    def encode(self, texts: Sequence[str], desc: str = "teacher: encoding") -> np.ndarray:
        """(n, dim) float32 unit vectors, cached per text; a progress bar over what is not cached yet."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        step = 1024
        with tqdm(total=len(todo), desc=desc, unit="text", disable=len(todo) < step) as bar:
            for start in range(0, len(todo), step):
                chunk = todo[start : start + step]
                vecs = self.model.encode(
                    chunk,
                    batch_size=self.batch_size,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
                self._cache.update(zip(chunk, vecs.astype(np.float32), strict=True))
                bar.update(len(chunk))
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        q = self.encode([p[0] for p in pairs])
        d = self.encode([p[1] for p in pairs])
        return (q * d).sum(-1)


@dataclass
class CrossEncoderTeacher:
    """A sentence-transformers CrossEncoder folder: score = its raw output (a logit; calibration maps it)."""

    folder: Path
    batch_size: int = 32
    fingerprint: str = ""
    kind: str = "cross-encoder"
    _model: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.fingerprint:
            self.fingerprint = folder_fingerprint(self.folder)

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        if self._model is None:
            st = _require_sentence_transformers()
            self._model = st.CrossEncoder(str(self.folder), device="cpu", local_files_only=True)
        out = self._model.predict(
            list(pairs),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            activation_fn=_identity(),
            show_progress_bar=len(pairs) > 1000,
        )
        return np.asarray(out, dtype=np.float32).reshape(len(pairs), -1)[:, -1]


def _identity() -> Any:
    import torch

    return torch.nn.Identity()


@dataclass
class HttpRerankTeacher:
    """A Cohere/Jina-compatible `/rerank` endpoint (a team's current reranker): one request per query."""

    url: str
    api_key: str | None = None
    timeout_s: float = 60.0
    max_documents: int = 100
    fingerprint: str = ""
    kind: str = "http-rerank"

    def __post_init__(self) -> None:
        if not self.fingerprint:
            # the endpoint's model can change behind the URL; the URL is what we can know
            self.fingerprint = sha256_text(json.dumps({"http_rerank": self.url}))

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        import httpx

        out = np.zeros(len(pairs), dtype=np.float32)
        by_query: dict[str, list[int]] = {}
        for i, (q, _) in enumerate(pairs):
            by_query.setdefault(q, []).append(i)
        headers = {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        with httpx.Client(timeout=self.timeout_s, headers=headers) as client:
            for query, idx in tqdm(by_query.items(), desc="teacher: /rerank", unit="query", disable=len(by_query) < 20):
                for start in range(0, len(idx), self.max_documents):
                    chunk = idx[start : start + self.max_documents]
                    body = {"query": query, "documents": [pairs[i][1] for i in chunk], "top_n": len(chunk)}
                    resp = client.post(self.url, json=body)
                    if resp.status_code != 200:
                        raise RuntimeError(f"teacher {self.url} answered {resp.status_code}: {resp.text[:300]}")
                    results = resp.json().get("results")
                    if not isinstance(results, list) or len(results) != len(chunk):
                        raise RuntimeError(
                            f"teacher {self.url} did not answer a Cohere rerank body "
                            f"(`results` with {len(chunk)} entries of index and relevance_score)"
                        )
                    for r in results:
                        out[chunk[int(r["index"])]] = float(r["relevance_score"])
        return out


@dataclass
class AfrlTeacher:
    """An AFRL model as a teacher: score = expected grade; its grade logits are there too (`grade_logits`)."""

    spec: str
    batch_size: int = 16
    fingerprint: str = ""
    kind: str = "afrl"
    _scorer: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.fingerprint:
            from afrl.models import resolve
            from training.distill import model_fingerprint

            self.fingerprint = model_fingerprint(resolve(self.spec))

    @property
    def scorer(self) -> Any:
        if self._scorer is None:
            from afrl.scorer import load_scorer

            self._scorer = load_scorer(self.spec, batch_size=self.batch_size)
        return self._scorer

    def grade_logits(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        prompts = self.scorer.builder.build_many(list(pairs))
        return self.scorer.logits_for_prompts(prompts).numpy()

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        logits = self.grade_logits(pairs)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return (p * np.arange(p.shape[1])).sum(-1) / (p.shape[1] - 1)


Teacher = BiEncoderTeacher | CrossEncoderTeacher | HttpRerankTeacher | AfrlTeacher


def folder_fingerprint(folder: Path) -> str:
    """sha256 over the folder's config and weight files (names and contents)."""
    from afrl.manifest import sha256_file

    names = sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and p.suffix in (".json", ".safetensors", ".bin", ".txt")
    )
    return sha256_text(json.dumps({n: sha256_file(folder / n) for n in names}))


def teacher_kind(spec: str) -> str:
    """bi-encoder, cross-encoder, http-rerank or afrl, decided from the spec alone (no model loaded)."""
    from afrl.embedded_teacher import TEACHER_SPEC

    if spec == TEACHER_SPEC:
        return "bi-encoder"
    if spec.startswith(("http://", "https://")):
        return "http-rerank"
    path = Path(spec).expanduser()
    if path.is_dir() and not (path / "afrl.json").is_file():
        config = path / "config.json"
        archs = json.loads(config.read_text()).get("architectures") or [] if config.is_file() else []
        if any(a.endswith("ForSequenceClassification") for a in archs):
            return "cross-encoder"
        if (path / "modules.json").is_file():
            return "bi-encoder"
    return "afrl"


def load_teacher(spec: str, batch_size: int = 32, api_key: str | None = None) -> Teacher:
    """The teacher a spec names (see the module table). Nothing is downloaded."""
    from afrl.embedded_teacher import TEACHER_SHA256, TEACHER_SPEC, embedded_teacher_dir

    kind = teacher_kind(spec)
    if spec == TEACHER_SPEC:
        folder = embedded_teacher_dir()  # verified against TEACHER_SHA256 when unpacked
        return BiEncoderTeacher(folder, batch_size, fingerprint=sha256_text(f"all-minilm-l6-v2:{TEACHER_SHA256}"))
    if kind == "http-rerank":
        return HttpRerankTeacher(spec, api_key=api_key)
    if kind == "bi-encoder":
        return BiEncoderTeacher(Path(spec).expanduser(), batch_size)
    if kind == "cross-encoder":
        return CrossEncoderTeacher(Path(spec).expanduser(), batch_size)
    return AfrlTeacher(spec, batch_size)
