#!/usr/bin/env bash
# The device job for the pool student (training/README.md, "The pool student on a lent GPU"): distil the MiniLM
# pool into students of the embedded base, each scored on DL20's dev queries there (training.gpu_pool).
# Never needed to pass CI; run it when a session is lent a GPU. Three carries (one call takes at most 64 MiB):
#   here, beforehand:
#     mkdir -p .gpu/dl20 .whl && cp ../shared/data/trec-dl/dl20/{queries.tsv,passages.tsv,qrels.txt,bm25_top100.run} .gpu/dl20/
#     gzip -c runs/pool_minilm/pool.jsonl > .gpu/pool.jsonl.gz && cp runs/pool_minilm/*.json .gpu/
#     split -n 2 -d "$(python -c 'from afrl.models import embedded_gguf_path; print(embedded_gguf_path())')" .gpu/gguf.
#     pip download --no-deps --python-version 3.12 --only-binary=:all: -d .whl gguf==0.19.0 ir_measures==0.4.3 \
#         pytrec-eval-terrier==0.5.11
#   device call 1 (carry .gpu/gguf.00):  mkdir -p /tmp/g && cp .gpu/gguf.00 /tmp/g/
#   device call 2 (carry .gpu/gguf.01):  cat /tmp/g/gguf.00 .gpu/gguf.01 > /tmp/g/model.gguf
#   device call 3 (carry .gpu/dl20 .gpu/pool.jsonl.gz .gpu/*.json .whl):  bash scripts/gpu_pool_job.sh
#   here, after:  tar -xf <files_at>/RUN.tar -C runs/ && python -m training.gpu_pool finish --student runs/RUN --pool runs/pool_minilm
# RUNS picks the runs (name:layers:lora_r:lr), MINUTES the training minutes of each.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
GG=/tmp/g/model.gguf
MINUTES=${MINUTES:-4}
RUNS=${RUNS:-"l6_full:0-5:0:1e-4 l12_lora:0-11:64:1e-3"}
mkdir -p /tmp/pool && gunzip -c .gpu/pool.jsonl.gz > /tmp/pool/pool.jsonl && cp .gpu/*.json /tmp/pool/ || exit 1
sha256sum "$GG" /tmp/pool/pool.jsonl | tee "$OUT/inputs.sha256"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
} | tee "$OUT/gpu.txt"
for spec in $RUNS; do
  IFS=: read -r name layers rank lr <<< "$spec"
  python3 -m training.gpu_pool train --gguf "$GG" --pool /tmp/pool --out "/tmp/$name" --layers "$layers" \
    --lora-r "$rank" --lr "$lr" --epochs 3 --batch 64 --max-minutes "$MINUTES" \
    --instruction-file training/configs/student_instruction.txt --trec-dir .gpu/dl20 2>&1 \
    | grep -v "de-quantizing" > "$OUT/$name.log"
  tail -n 4 "$OUT/$name.log"
  # a full fine-tune is a whole bf16 model folder (~100 MB, over what comes back): its measurements come back
  [ "$rank" = 0 ] && skip=(--exclude=model.safetensors) || skip=()
  tar -C /tmp "${skip[@]}" -cf "$OUT/$name.tar" "$name"
done
