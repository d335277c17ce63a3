#!/usr/bin/env bash
# The device job for the shipped default student (issue 15: "one script does the same at larger scale on a GPU"):
# continue afrl/shipped/minilm-prefix-student (a prefix LM, 22.7M parameters; it travels with the repo) on the
# whole MiniLM pool for several epochs with `training.gpu_pool` (the pool loss of `afrl train distill` in a plain
# loop: grade KL + listwise KL + explanation NLL), each run scored on DL20's dev queries there. Never needed to
# pass CI; run it when a session is lent a GPU. Tested on CPU with a tiny BERT (tests/test_gpu_pool.py).
#
# A call carries the working tree (about 54 MiB) plus at most ~10 MiB, so the pool travels first, in parts:
#   here, beforehand (after `afrl train pool --config training/configs/pool_minilm.yaml`):
#     printf '/.gpu/\n/.whl/\n' >> .git/info/exclude && mkdir -p .gpu/dl20 .whl
#     cp ../shared/data/trec-dl/dl20/{queries.tsv,passages.tsv,qrels.txt,bm25_top100.run} .gpu/dl20/   # 5.7 MB
#     gzip -c runs/pool_minilm/pool.jsonl | split -b 8M -d - .gpu/pool.gz. && cp runs/pool_minilm/*.json .gpu/
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
#         -d .whl ir_measures==0.4.3 pytrec-eval-terrier==0.5.11          # (checked: both resolve for 3.12)
#   device calls 1..k, one per part (carry .gpu/pool.gz.NN):  mkdir -p /tmp/p && cp .gpu/pool.gz.* /tmp/p/
#   last device call (carry .gpu/dl20 .gpu/calibration.json .gpu/pool_report.json .whl):
#     bash scripts/gpu_student_job.sh
#   here, after (FILES = the call's files_at):
#     mkdir -p runs/gpu && tar -xf FILES/runs.tar -C runs/gpu && cat FILES/best.safetensors.* > runs/gpu/BEST/model.safetensors
#     (runs.tar holds each run's tokenizer, config, gpu_run.json, dev report and log; BEST is in summary.txt)
#     python -m training.gpu_pool finish --student runs/gpu/BEST --base afrl/shipped/minilm-prefix-student \
#         --pool runs/pool_minilm && afrl eval --model runs/gpu/BEST --trec-dir ../shared/data/trec-dl/dl20 --split dev
# RUNS picks the runs (name:lr:epochs:explanation_share), MINUTES the training minutes of each.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
MINUTES=${MINUTES:-3}
RUNS=${RUNS:-"lr5e5:5e-5:4:0.3 lr1e4:1e-4:4:0.3"}
mkdir -p /tmp/p /tmp/pool /tmp/runs && cp .gpu/pool.gz.* /tmp/p/ 2>/dev/null
cat /tmp/p/pool.gz.* | gunzip -c > /tmp/pool/pool.jsonl && cp .gpu/calibration.json .gpu/pool_report.json /tmp/pool/ || exit 1
sha256sum /tmp/pool/pool.jsonl afrl/shipped/minilm-prefix-student/model.safetensors | tee "$OUT/inputs.sha256"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} | tee "$OUT/gpu.txt"
best="" best_ndcg=-1
for spec in $RUNS; do
  IFS=: read -r name lr epochs share <<< "$spec"
  python3 -m training.gpu_pool train --model afrl/shipped/minilm-prefix-student --lora-r 0 --pool /tmp/pool \
    --out "/tmp/runs/$name" --lr "$lr" --epochs "$epochs" --batch 64 --alpha 0.4 --explanation-share "$share" \
    --max-minutes "$MINUTES" --instruction-file training/configs/student_instruction.txt --trec-dir .gpu/dl20 \
    > "/tmp/runs/$name.log" 2>&1
  tail -n 3 "/tmp/runs/$name.log"
  ndcg=$(python3 -c "import json; print(json.load(open('/tmp/runs/$name/gpu_run.json'))['eval']['ndcg@10'])" 2>/dev/null || echo -1)
  echo "$name ndcg@10 $ndcg" | tee -a "$OUT/summary.txt"
  if python3 -c "import sys; sys.exit(0 if float('$ndcg') > float('$best_ndcg') else 1)"; then best=$name best_ndcg=$ndcg; fi
done
# What comes back: at most 8 files of 16 MiB. Every run's logs, reports and curves in one tar; the best run's
# weights (45 MB in bf16) in 15 MiB parts.
tar -C /tmp/runs --exclude=model.safetensors -cf "$OUT/runs.tar" .
[ -n "$best" ] && split -b 15M -d "/tmp/runs/$best/model.safetensors" "$OUT/best.safetensors." && echo "best: $best" | tee -a "$OUT/summary.txt"
