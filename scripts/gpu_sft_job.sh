#!/usr/bin/env bash
# The device job of a session lent a GPU (training/README.md, "SFT on a lent GPU"): two SFT runs of the embedded
# base on all TREC DL training pairs (pointwise; pointwise + listwise), each scored on DL20's dev queries.
# Run on the device machine from the repo root, after the two calls that assemble /tmp/g/model.gguf from the
# embedded GGUF (it is 98 MB, over one call's 64 MiB): here, beforehand,
#   python -m training.gpu_sft prepare --out .gpu/data
#   mkdir -p .gpu/dl20 && cp ../shared/data/trec-dl/dl20/{queries.tsv,passages.tsv,qrels.txt,bm25_top100.run} .gpu/dl20/
#   pip download (cp312) gguf==0.19.0 ir_measures==0.4.3 pytrec-eval-terrier==0.5.11 into .whl/
# Everything comes back as $OUT/{pointwise,listwise}.tar (adapter + gpu_run.json + eval/), logs and gpu.txt.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
GG=/tmp/g/model.gguf
MINUTES=${MINUTES:-3}
sha256sum "$GG" | tee "$OUT/gguf.sha256"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
} | tee "$OUT/gpu.txt"
for run in pointwise listwise; do
  extra=""; [ "$run" = listwise ] && extra="--ranking-weight 1"
  python3 -m training.gpu_sft train --gguf "$GG" --data .gpu/data --out "/tmp/$run" --epochs 4 --batch 16 \
    --lr 2e-4 --max-minutes "$MINUTES" --trec-dir .gpu/dl20 $extra 2>&1 | grep -v "de-quantizing" > "$OUT/$run.log"
  tail -n 5 "$OUT/$run.log"
  tar -C /tmp -cf "$OUT/$run.tar" "$run"
done
