#!/usr/bin/env bash
# afrl batch-score throughput: --engine local against --engine ray on the same rows and model, one after the
# other on this machine (issue 19's target: ray within 15 % of local). Two figures per engine: the whole command
# (Ray's fixed start, the local instance and the actor's model load, counts against it; more rows amortise it)
# and the steady rate, rows after the first shard over the time between the first and the last shard's file.
#   bash scripts/batch_score_engines.sh [MODEL] [ROWS] [extra batch-score flags...]
#   nice -n 19 bash scripts/batch_score_engines.sh default 2000
# Needs a quiet machine: another job on the same cores makes either figure meaningless.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-default}"
ROWS="${2:-2000}"
shift $(($# < 2 ? $# : 2))
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
.venv/bin/python -m training.rule_world --sample "$ROWS" > "$WORK/pairs.jsonl"  # rule-world product pairs
for engine in local ray; do
    start=$(date +%s.%N)
    .venv/bin/afrl batch-score --model "$MODEL" --input "$WORK/pairs.jsonl" --output "$WORK/$engine" \
        --engine "$engine" --shard-size 200 --no-progress "$@"
    echo "$engine $start $(date +%s.%N)" >> "$WORK/times"
done
.venv/bin/python - "$WORK" "$ROWS" <<'PY'
import sys
from pathlib import Path

import pandas as pd

work, rows = Path(sys.argv[1]), int(sys.argv[2])
seconds = {e: float(end) - float(start) for e, start, end in map(str.split, (work / "times").read_text().splitlines())}
local, ray = (pd.read_parquet(work / e).sort_values("row").reset_index(drop=True) for e in ("local", "ray"))
rate = {e: rows / s for e, s in seconds.items()}


def steady(folder: Path) -> float:
    shards = sorted(folder.glob("part-*.parquet"), key=lambda p: p.stat().st_mtime)
    if len(shards) < 2:
        return float("nan")
    after_first = sum(len(pd.read_parquet(p)) for p in shards[1:])
    return after_first / (shards[-1].stat().st_mtime - shards[0].stat().st_mtime)


steady_rate = {e: steady(work / e) for e in ("local", "ray")}
diff = (local["score"] - ray["score"]).abs().max()
for e in ("local", "ray"):
    print(f"{e}: {rate[e]:.1f} pairs/s over the whole command ({seconds[e]:.1f} s), {steady_rate[e]:.1f} pairs/s steady")
print(
    f"ray/local: {rate['ray'] / rate['local']:.3f} whole command, {steady_rate['ray'] / steady_rate['local']:.3f} "
    f"steady (target >= 0.85); max |score difference| {diff:.2e}"
)
PY
