"""Training pools for distillation: real queries paired with retrieved candidates, labelled by a calibrated teacher.

    afrl train pool --config training/configs/pool_minilm.yaml        # writes runs/pool_minilm/

Where the queries come from (DESIGN.md section 4):
- the judged TREC queries outside the dev split (dl20 train, dl21): their judged pool plus their BM25 top 100;
  a judged pair keeps its human grade as the target, mixed with the calibrated teacher (`human_weight`);
- the unjudged dl22 queries: their BM25 top 100;
- the web-query pool (20,649 real queries): candidates retrieved from the ~27k TREC passages by BM25 (`bm25s`,
  a maintained sparse-matrix BM25 with a Snowball stemmer, instead of a hand-written index) and by the teacher's
  own embeddings when it is a bi-encoder. Most of these queries have no truly relevant passage in so small a
  corpus, so a web query is kept only when its best candidate's calibrated P(grade >= 2) reaches
  `min_best_relevance`.

The dl20 dev queries never appear, in any role: their texts are not training queries, and every passage judged
for them or retrieved for them by the first stage is masked out of every candidate list (it stays in the BM25
index's statistics and in the embedded corpus, which evaluation reads, but never becomes a training pair).

Labels: the teacher's score and BM25's (divided by the query's best BM25 score over the corpus) are fused into a
grade distribution by `training.calibration` (ordinal logistic regression), fitted on the judged train pairs
only. Each query contributes groups of `group_size` candidates (the top of the calibrated ranking, hard negatives
from the middle, easy ones from the tail), so a listwise loss sees a spread of grades for one query.

Output (`output_dir`): `pool.jsonl` (one pair per line: id, group, qid, query, document, docid, source, probs,
score, human grade where judged), `calibration.json`, `pool_report.json` / `.md` (queries, pairs and groups per
source, grade histogram of the labels, the calibration's accuracy on held-out judged queries), and the teacher's
cached corpus embeddings (`teacher_corpus-<key>.npy`), so a rerun does not call the teacher again.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from afrl.contract import sha256_text
from training.data import TrecCollection, split_by_query

log = logging.getLogger(__name__)
csv.field_size_limit(sys.maxsize)

# teacher score; teacher score minus the best among the query's candidates (how far from the query's best match);
# BM25 over the query's best BM25 over the corpus. On held-out judged train queries this set gave the lowest
# log-loss of the feature sets tried (an uncommitted probe; training/README.md).
FEATURES = ["teacher", "teacher_rel", "bm25_rel"]


@dataclass
class PoolConfig:
    """What `afrl train pool` builds (YAML under training/configs/, `--key value` overrides)."""

    teacher: str = field(default="minilm", metadata={"help": "teacher spec (training.teachers.load_teacher)"})
    judged: list[str] = field(
        default_factory=lambda: ["../shared/data/trec-dl/dl20", "../shared/data/trec-dl/dl21"],
        metadata={"help": "judged TREC folders; their train queries (dev split removed) are pool queries"},
    )
    dev_folder: str = field(
        default="../shared/data/trec-dl/dl20", metadata={"help": "the folder whose dev queries are held out"}
    )
    unjudged: list[str] = field(
        default_factory=lambda: ["../shared/data/trec-dl/dl22"],
        metadata={"help": "TREC folders without qrels (queries + BM25 top 100)"},
    )
    web_queries: str | None = field(
        default="../shared/data/queries/web_queries.tsv", metadata={"help": "`id \\t source \\t query` file"}
    )
    max_web_queries: int | None = field(default=None, metadata={"help": "a seeded sample of the web queries"})
    dev_fraction: float = field(default=0.2, metadata={"help": "as in the stage configs: the dev split"})
    split_seed: int = field(default=0, metadata={"help": "as in the stage configs: the dev split"})
    retrieve_k: int = field(default=30, metadata={"help": "candidates per web query from BM25 and from the teacher"})
    group_size: int = field(default=8, metadata={"help": "candidates per query group"})
    groups_per_judged_query: int = field(default=8, metadata={"help": "groups drawn from each judged query"})
    groups_per_unjudged_query: int = field(default=4, metadata={"help": "groups drawn from each dl22 query"})
    min_best_relevance: float = field(
        default=0.5, metadata={"help": "keep a web query when its best candidate has P(grade >= 2) at least this"}
    )
    human_weight: float = field(default=0.8, metadata={"help": "weight of the human grade in a judged pair's target"})
    teacher_batch_size: int = field(default=32, metadata={"help": "texts per teacher batch"})
    output_dir: str = field(default="runs/pool_minilm", metadata={"help": "where the pool is written"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ValueError("group_size must be >= 2 (a listwise loss compares documents)")
        if not 0.0 <= self.human_weight <= 1.0:
            raise ValueError("human_weight must be in [0, 1]")


# ---------------------------------------------------------------------------------------------------- corpus


@dataclass
class Corpus:
    """Every passage of the TREC folders, a BM25 index over them, and the docids no training pair may use."""

    docids: list[str]
    texts: list[str]
    excluded: np.ndarray  # bool per passage: judged or retrieved for a dev query
    index: Any = None
    stemmer: Any = None

    @property
    def position(self) -> dict[str, int]:
        return {d: i for i, d in enumerate(self.docids)}

    def build_index(self) -> None:
        import bm25s
        import Stemmer

        self.stemmer = Stemmer.Stemmer("english")
        tokens = bm25s.tokenize(self.texts, stopwords="en", stemmer=self.stemmer, show_progress=False)
        self.index = bm25s.BM25()
        self.index.index(tokens, show_progress=False)

    def bm25_scores(self, query: str) -> np.ndarray:
        """BM25 of the query against every passage (0 for a query with no indexed term)."""
        import bm25s

        tok = bm25s.tokenize([query], stopwords="en", stemmer=self.stemmer, show_progress=False, return_ids=False)
        terms = [t for t in tok[0] if t in self.index.vocab_dict]
        if not terms:
            return np.zeros(len(self.docids), dtype=np.float32)
        return np.asarray(self.index.get_scores(terms), dtype=np.float32)


def load_corpus(config: PoolConfig) -> tuple[Corpus, list[str], dict[str, TrecCollection]]:
    """The passages, the dev query ids of `dev_folder`, and the loaded collections (judged and unjudged)."""
    collections: dict[str, TrecCollection] = {}
    for folder in [*config.judged, *config.unjudged]:
        collections[folder] = _load_folder(folder)
    dev_coll = collections.get(config.dev_folder) or _load_folder(config.dev_folder)
    judged_qids = [q for q in dev_coll.queries if q in dev_coll.qrels]
    _, dev_qids = split_by_query(judged_qids, config.dev_fraction, config.split_seed)
    dev_docs: set[str] = set()
    for q in dev_qids:
        dev_docs |= set(dev_coll.qrels.get(q, {}))
        dev_docs |= {d for d, _ in dev_coll.run.get(q, [])}
    docids, texts, seen = [], [], set()
    for coll in [*collections.values(), dev_coll]:
        for d, text in coll.passages.items():
            if d not in seen and text.strip():
                seen.add(d)
                docids.append(d)
                texts.append(text)
    order = sorted(range(len(docids)), key=lambda i: docids[i])  # canonical: the cache key does not depend on
    docids, texts = [docids[i] for i in order], [texts[i] for i in order]  # the order the folders were listed in
    excluded = np.array([d in dev_docs for d in docids])
    return Corpus(docids, texts, excluded), dev_qids, collections


def _load_folder(folder: str) -> TrecCollection:
    d = Path(folder)
    if (d / "qrels.txt").is_file():
        return TrecCollection.load(d)
    from training.data import read_passages, read_queries, read_run

    return TrecCollection(
        d.name, read_queries(d / "queries.tsv"), read_passages(d / "passages.tsv"), {}, read_run(d / "bm25_top100.run")
    )


def read_web_queries(path: str | Path) -> list[tuple[str, str]]:
    """(id, query) pairs of the web-query pool file (header row, then `id \\t source \\t query`)."""
    out = []
    with Path(path).open(encoding="utf-8") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows, None)
        if header is None or header[:3] != ["id", "source", "query"]:
            raise ValueError(f"{path}: expected a header `id  source  query`, got {header}")
        for row in rows:
            if len(row) >= 3 and row[2].strip():
                out.append((row[0], row[2].strip()))
    return out


# ---------------------------------------------------------------------------------------------------- teacher


class PoolScorer:
    """Teacher and BM25 features for (query, passage-position) pairs, dense retrieval for bi-encoders."""

    def __init__(self, teacher: Any, corpus: Corpus, cache_dir: Path):
        self.teacher, self.corpus = teacher, corpus
        self.embeddings: np.ndarray | None = None
        if getattr(teacher, "kind", "") == "bi-encoder":
            key = sha256_text(teacher.fingerprint + "\n".join(corpus.docids) + str(len(corpus.texts)))[:16]
            path = cache_dir / f"teacher_corpus-{key}.npy"
            if path.is_file():
                self.embeddings = np.load(path)
            else:
                self.embeddings = teacher.encode(corpus.texts, desc="teacher: encoding the corpus")
                np.save(path, self.embeddings)
        self._bm25_max: dict[str, float] = {}

    def features(self, query: str, positions: Sequence[int], bm25: np.ndarray | None = None) -> np.ndarray:
        """(n, 3) `FEATURES` of the query's candidates (all of them: `teacher_rel` is relative to their best)."""
        bm25 = self.corpus.bm25_scores(query) if bm25 is None else bm25
        top = float(bm25.max()) or 1.0
        if self.embeddings is not None:
            q = self.teacher.encode([query])[0]
            teacher = self.embeddings[list(positions)] @ q
        else:
            teacher = self.teacher.score([(query, self.corpus.texts[p]) for p in positions])
        teacher = np.asarray(teacher, dtype=np.float64)
        best = teacher.max() if len(teacher) else 0.0
        return np.stack([teacher, teacher - best, bm25[list(positions)] / top], axis=1)

    def retrieve(self, query: str, k: int, bm25: np.ndarray) -> list[int]:
        """Union of the BM25 top k and (bi-encoder teachers) the dense top k, dev passages masked out."""
        allowed = ~self.corpus.excluded
        bm = np.where(allowed, bm25, -np.inf)
        picked = [int(i) for i in np.argsort(-bm)[:k] if np.isfinite(bm[i]) and bm[i] > 0]
        if self.embeddings is not None:
            q = self.teacher.encode([query])[0]
            dense = np.where(allowed, self.embeddings @ q, -np.inf)
            picked += [int(i) for i in np.argsort(-dense)[:k]]
        return list(dict.fromkeys(picked))


# ---------------------------------------------------------------------------------------------------- groups


def sample_groups(order: Sequence[int], group_size: int, n_groups: int, rng: random.Random) -> list[list[int]]:
    """Groups over candidates ranked best first: each takes a top quarter, a middle half and a bottom quarter share.

    Every group holds one of the best candidates (so a listwise loss has something to put first), hard negatives
    from the middle of the ranking and easier ones from its tail. Candidates are not reused across groups until
    a region runs out.
    """
    n = len(order)
    if n < group_size:
        return []
    top = max(1, n // 4)
    regions = [list(order[:top]), list(order[top : n - n // 4]), list(order[n - n // 4 :])]
    shares = [max(1, group_size // 4), group_size - max(1, group_size // 4) - group_size // 4, group_size // 4]
    pools = [rng.sample(r, len(r)) for r in regions]
    groups = []
    for _ in range(n_groups):
        group: list[int] = []
        for pool, region, share in zip(pools, regions, shares, strict=True):
            for _ in range(share):
                if not pool:
                    pool.extend(rng.sample(region, len(region)) if region else [])
                if pool:
                    group.append(pool.pop())
        group = list(dict.fromkeys(group))
        if len(group) == group_size:
            groups.append(group)
    return groups


# ---------------------------------------------------------------------------------------------------- build


def build_pool(config: PoolConfig, teacher: Any = None) -> Path:
    """Build the pool described by `config` into `config.output_dir` (see the module docstring).

    `teacher` replaces `load_teacher(config.teacher)` (an object with `kind`, `fingerprint`, `score` and, for a
    bi-encoder, `encode`): for tests and for teachers built in code.
    """
    from tqdm.auto import tqdm

    from training.calibration import calibration_report, fit_calibration
    from training.teachers import load_teacher

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(config.seed)
    corpus, dev_qids, collections = load_corpus(config)
    dev_set = set(dev_qids)
    log.info(
        "corpus: %d passages, %d masked for %d dev queries", len(corpus.docids), corpus.excluded.sum(), len(dev_qids)
    )
    corpus.build_index()
    teacher = teacher or load_teacher(config.teacher, batch_size=config.teacher_batch_size)
    scorer = PoolScorer(teacher, corpus, out)
    pos = corpus.position

    # 1. queries with candidates: (source, qid, query, candidate positions, human grades by position)
    queries: list[tuple[str, str, str, list[int], dict[int, int]]] = []
    for folder in config.judged:
        coll = collections[folder]
        for qid in sorted(q for q in coll.qrels if q in coll.queries):
            if folder == config.dev_folder and qid in dev_set:
                continue
            human = {pos[d]: g for d, g in coll.qrels[qid].items() if d in pos and not corpus.excluded[pos[d]]}
            cands = list(dict.fromkeys([*human, *(pos[d] for d, _ in coll.run.get(qid, []) if d in pos)]))
            cands = [c for c in cands if not corpus.excluded[c]]
            queries.append((f"{coll.name}-judged", qid, coll.queries[qid], cands, human))
    for folder in config.unjudged:
        coll = collections[folder]
        for qid, query in sorted(coll.queries.items()):
            cands = [pos[d] for d, _ in coll.run.get(qid, []) if d in pos and not corpus.excluded[pos[d]]]
            queries.append((coll.name, qid, query, cands, {}))
    web = read_web_queries(config.web_queries) if config.web_queries else []
    if config.max_web_queries is not None and config.max_web_queries < len(web):
        web = rng.sample(web, config.max_web_queries)

    # 2. features of every candidate (the teacher pass), web candidates retrieved first; a bi-encoder encodes
    # every query in one batched pass (cached per text) instead of one call per query
    if scorer.embeddings is not None:
        teacher.encode([q[2] for q in queries] + [q for _, q in web], desc="teacher: encoding the queries")
    feats: list[np.ndarray] = []
    for _, _, query, cands, _ in tqdm(queries, desc="pool: TREC queries", unit="query"):
        feats.append(scorer.features(query, cands))
    for wid, query in tqdm(web, desc="pool: web queries", unit="query"):
        bm25 = corpus.bm25_scores(query)
        cands = scorer.retrieve(query, config.retrieve_k, bm25)
        queries.append(("web", wid, query, cands, {}))
        feats.append(scorer.features(query, cands, bm25))

    # 3. calibration on the judged train pairs; held-out report on a query split of them
    judged_idx = [i for i, q in enumerate(queries) if q[4]]
    fit_q, check_q = split_by_query([queries[i][1] for i in judged_idx], 0.2, config.seed)
    check_set = set(check_q)

    def judged_xy(keep: set[str] | None) -> tuple[np.ndarray, list[int]]:
        xs, ys = [], []
        for i in judged_idx:
            _, qid, _, cands, human = queries[i]
            if keep is None or qid in keep:
                for j, c in enumerate(cands):
                    if c in human:
                        xs.append(feats[i][j])
                        ys.append(human[c])
        return np.array(xs), ys

    x_fit, y_fit = judged_xy(set(fit_q))
    x_chk, y_chk = judged_xy(check_set)
    held_out = calibration_report(fit_calibration(x_fit, y_fit, FEATURES), x_chk, y_chk)
    x_all, y_all = judged_xy(None)
    calibration = fit_calibration(x_all, y_all, FEATURES)
    calibration.save(out / "calibration.json")
    # the teacher's own score alone, calibrated the same way: the "teacher" row of evaluations (its ranking is the
    # teacher's, its grades are comparable with the fused calibration's)
    fit_calibration(x_all[:, :1], y_all, FEATURES[:1]).save(out / "calibration_teacher_only.json")

    # 4. labels and groups
    rows: list[dict[str, Any]] = []
    stats: dict[str, Counter[str]] = {}
    kept_web = 0
    for (source, qid, query, cands, human), x in zip(queries, feats, strict=True):
        if len(cands) < config.group_size:
            continue
        probs = calibration.predict_proba(x)
        if source == "web":
            if float(probs[:, 2:].sum(1).max()) < config.min_best_relevance:
                continue
            kept_web += 1
        targets = probs.copy()
        for j, c in enumerate(cands):
            if c in human:
                onehot = np.eye(calibration.n_grades)[human[c]]
                targets[j] = config.human_weight * onehot + (1 - config.human_weight) * probs[j]
        score = (targets * np.arange(calibration.n_grades)).sum(1) / (calibration.n_grades - 1)
        order = list(np.argsort(-score))
        n_groups = {"web": 1}.get(source, config.groups_per_judged_query if human else config.groups_per_unjudged_query)
        for g, group in enumerate(sample_groups(order, config.group_size, n_groups, rng)):
            gid = f"{source}:{qid}:{g}"
            for j in group:
                c = cands[j]
                row = {
                    "id": f"{gid}:{corpus.docids[c]}",
                    "group": gid,
                    "qid": qid,
                    "query": query,
                    "docid": corpus.docids[c],
                    "document": corpus.texts[c],
                    "source": source,
                    "probs": [round(float(p), 5) for p in targets[j]],
                    "score": round(float(score[j]), 5),
                }
                if c in human:
                    row["human_grade"] = human[c]
                rows.append(row)
            stats.setdefault(source, Counter())["groups"] += 1
        stats.setdefault(source, Counter())["queries"] += 1
    groups = list(dict.fromkeys(r["group"] for r in rows))
    rng.shuffle(groups)  # batches mix queries and sources; a group stays contiguous
    by_group: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_group.setdefault(r["group"], []).append(r)
    with (out / "pool.jsonl").open("w", encoding="utf-8") as f:
        for gid in groups:
            for r in by_group[gid]:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    report = pool_report(config, rows, stats, held_out, len(web), kept_web, corpus, len(dev_qids))
    (out / "pool_report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "pool_report.md").write_text(render_pool_report(report))
    log.info("pool: %d pairs in %d groups -> %s", len(rows), len(groups), out)
    return out


def pool_report(
    config: PoolConfig,
    rows: Sequence[dict[str, Any]],
    stats: dict[str, Counter[str]],
    held_out: dict[str, Any],
    web_total: int,
    web_kept: int,
    corpus: Corpus,
    dev_queries: int,
) -> dict[str, Any]:
    argmax = Counter(int(np.argmax(r["probs"])) for r in rows)
    return {
        "config": asdict(config),
        "corpus_passages": len(corpus.docids),
        "masked_dev_passages": int(corpus.excluded.sum()),
        "dev_queries_held_out": dev_queries,
        "pairs": len(rows),
        "groups": len({r["group"] for r in rows}),
        "by_source": {s: dict(c) | {"pairs": sum(1 for r in rows if r["source"] == s)} for s, c in stats.items()},
        "web_queries": {"read": web_total, "kept": web_kept},
        "label_histogram": [argmax.get(g, 0) for g in range(len(rows[0]["probs"]) if rows else 0)],
        "human_labelled_pairs": sum(1 for r in rows if "human_grade" in r),
        "calibration_held_out": held_out,
    }


def render_pool_report(report: dict[str, Any]) -> str:
    lines = [
        "# Distillation pool",
        "",
        f"{report['pairs']} pairs in {report['groups']} groups; corpus {report['corpus_passages']} passages, "
        f"{report['masked_dev_passages']} masked for the {report['dev_queries_held_out']} dev queries.",
        f"Web queries kept: {report['web_queries']['kept']} of {report['web_queries']['read']}; "
        f"human-labelled pairs: {report['human_labelled_pairs']}.",
        "",
        "| source | queries | groups | pairs |",
        "|---|---|---|---|",
    ]
    for s, c in report["by_source"].items():
        lines.append(f"| {s} | {c.get('queries', 0)} | {c.get('groups', 0)} | {c.get('pairs', 0)} |")
    lines += ["", f"Label histogram (argmax grade 0..K): {report['label_histogram']}", ""]
    h = report["calibration_held_out"]
    lines.append(
        f"Calibration on held-out judged train queries ({h['pairs']} pairs): accuracy {h['accuracy']:.3f}, "
        f"macro-F1 {h['macro_f1']:.3f}, ECE {h['ece']:.3f}, log-loss {h['log_loss']:.3f}; "
        f"predicted {h['predicted_histogram']} vs gold {h['gold_histogram']}."
    )
    return "\n".join(lines) + "\n"


def read_pool(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a `pool.jsonl` (or of the pool folder that holds one), in file order (groups contiguous)."""
    p = Path(path)
    if p.is_dir():
        p = p / "pool.jsonl"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no pool; build one with `afrl train pool --config ...`")
    rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    for n, r in enumerate(rows, 1):
        missing = [k for k in ("id", "group", "query", "document", "probs", "score") if k not in r]
        if missing:
            raise ValueError(f"{p}:{n}: not a pool row (missing {', '.join(missing)})")
    return rows
