"""The Ray Data engine of `afrl batch-score` (`--engine ray`): pending shards go through `map_batches` on an actor
pool, one model per actor, each call scoring whole shards with `afrl.batch_score.score_shard`, the function the
local engine runs; the driver writes each shard as it completes, exactly as the local engine does.

Imported only for `--engine ray`, so Ray stays an optional extra (`pip install 'afrl-relevance[ray]'`).

* Here: a local Ray instance (`ray.init(num_cpus=...)`). A cluster: `--ray-address ray://HEAD:10001` (Ray Client)
  or `auto` on a cluster node, with this package installed in the workers' environment; `--actors N` sets the
  pool size. Nothing else changes.
* One shard per map task (`batch_size=1` over a dataset of one row per shard): a retried task redoes exactly one
  shard, and an actor sees the same chunks, hence the same forward passes, as the local engine.
* GPUs: `num_gpus` per actor when the cluster has GPUs (Ray then gives each actor its device, and
  `load_reranker` moves the model there).
* Failures: a worker process that dies (OOM kill, segfault, lost node) is restarted and its shard retried, up to
  `max_retries` times; Ray Data's own default is to retry forever, which turns one row that kills its worker into
  a run that never ends. Python exceptions inside a shard are row errors already (`score_shard`).
* The driver reads the input and writes the output (`write_parquet` names files its own way and cannot skip
  finished shards); only scores travel back, a few hundred bytes per row.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from afrl.batch_score import Row, ScoreOptions, load_reranker, rows_from_json, rows_to_json, score_shard, write_shard

log = logging.getLogger(__name__)


class ShardScorer:
    """The actor: loads one model, then scores the shards of each batch it is given."""

    def __init__(self, opts: dict[str, Any], model_sha256: str, kind: Literal["int", "string"]):
        self.opts = ScoreOptions(**opts)
        self.model_sha256 = model_sha256
        self.kind = kind
        self.reranker = load_reranker(self.opts)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        tables = []
        for k, text in zip(batch["shard"], batch["rows"], strict=True):
            table = score_shard(self.reranker, rows_from_json(str(text)), self.opts, self.model_sha256, self.kind)
            tables.append(table.append_column("shard", pa.array([int(k)] * len(table), pa.int64())))
        return pa.concat_tables(tables)


def run_ray(
    pending: list[tuple[int, list[Row]]],
    opts: ScoreOptions,
    model_sha256: str,
    kind: Literal["int", "string"],
    output: Path,
    on_progress: Callable[[int], Any] | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    actors: int | None = None,
    cpus_per_actor: float | None = None,
    gpus_per_actor: float | None = None,
    max_retries: int = 3,
    scorer_cls: type = ShardScorer,
) -> None:
    """Score `pending` shards on Ray and write each one into `output` as it completes.

    `address`: a Ray cluster (None starts a local instance with `num_cpus`, default all cores; an instance this
    process already started is reused). `actors`, `cpus_per_actor`, `gpus_per_actor`: the pool (defaults: one actor
    per GPU, or CPU actors of up to 4 cores each). `scorer_cls`: the actor class (tests pass a faulty one)."""
    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False)
    try:
        gpus_per_actor, cpus_per_actor, actors = _pool(ray.cluster_resources(), gpus_per_actor, cpus_per_actor, actors)
        actors = min(actors, len(pending))
        if opts.threads is None and not gpus_per_actor:
            opts = ScoreOptions(**{**asdict(opts), "threads": max(1, int(cpus_per_actor))})
        log.info("Ray: %d actor(s), %s CPU and %s GPU each", actors, cpus_per_actor, gpus_per_actor)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # batch-score's own bar counts pairs, as with the local engine
        items = [{"shard": k, "rows": rows_to_json(rows)} for k, rows in pending]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        with warnings.catch_warnings():
            # Ray 2.60 takes max_restarts / max_task_retries only as extra remote args, which it flags as
            # deprecated for 2.64 while offering no named parameter for them; the pin keeps them working.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            scored = ds.map_batches(
                scorer_cls,
                batch_size=1,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=actors),
                fn_constructor_kwargs={"opts": asdict(opts), "model_sha256": model_sha256, "kind": kind},
                num_cpus=cpus_per_actor,
                num_gpus=gpus_per_actor or None,
                max_restarts=max_retries,
                max_task_retries=max_retries,
            )
        _collect(scored, {k: len(rows) for k, rows in pending}, output, on_progress)
    finally:
        if started:
            ray.shutdown()


def _pool(
    resources: dict[str, float], gpus: float | None, cpus: float | None, actors: int | None
) -> tuple[float, float, int]:
    """(GPUs per actor, CPUs per actor, actors) from what the cluster has and what was asked for."""
    cluster_gpus, cluster_cpus = resources.get("GPU", 0.0), resources.get("CPU", 1.0)
    if gpus is None:
        gpus = 1.0 if cluster_gpus >= 1 else 0.0
    if cpus is None:
        cpus = 1.0 if gpus else min(cluster_cpus, 4.0)
    if actors is None:
        actors = int(cluster_gpus // gpus) if gpus else int(cluster_cpus // cpus)
    if gpus > cluster_gpus or cpus > cluster_cpus:
        raise ValueError(
            f"an actor asks for {cpus} CPU and {gpus} GPU; the Ray cluster has {cluster_cpus} CPU, {cluster_gpus} GPU"
        )
    return gpus, cpus, max(1, actors)


def _collect(scored: Any, expected: dict[int, int], output: Path, on_progress: Callable[[int], Any] | None) -> None:
    """Gather result rows by shard as Ray streams them back; write each shard once all its rows are there."""
    parts: dict[int, list[pa.Table]] = {}
    for batch in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
        for k in set(batch["shard"].to_pylist()):
            part = batch.filter(pc.equal(batch["shard"], k)).drop_columns(["shard"])
            parts.setdefault(k, []).append(part)
            if sum(len(t) for t in parts[k]) == expected[k]:
                table = pa.concat_tables(parts.pop(k)).sort_by("row")
                write_shard(table, output, k)
                if on_progress:
                    on_progress(len(table))
    if parts:
        raise RuntimeError(f"Ray returned incomplete shards {sorted(parts)}; rerun to score them")
