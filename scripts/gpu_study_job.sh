#!/usr/bin/env bash
# The device job for the mode-balance study (issue 20, deliverable 4: "a GPU variant of the study script"): runs
# training/configs/study_rules_gpu.yaml (the CPU study's world, student, budgets and arms on the TRL-free engine,
# training/plain_sft.py + training/rl/loop.py) on the lent machine, which has torch and transformers but no TRL.
# Nothing to carry: the rule world is generated from its seeds and the repo's tracked files travel anyway.
# Never needed to pass CI; run it when a session is lent a GPU. Checked on CPU with a tiny budget (see the README
# section "The mode-balance study on a GPU").
#   device call:  bash scripts/gpu_study_job.sh                 (LIMIT_S: study seconds, default 480)
#   here, after (FILES = the call's files_at):
#     mkdir -p runs/study_rules_gpu && tar -xf FILES/runs.tar -C runs/study_rules_gpu
#     afrl train study --config training/configs/study_rules_gpu.yaml --render_only true   # JSON, table, plot
# The study writes each arm's results as it finishes, so an arm cut by LIMIT_S is the only loss; a second call
# with the same runs/ (a warm machine keeps ignored folders) skips the finished arms.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:?set OUT to the folder whose files come back}
LIMIT_S=${LIMIT_S:-480}
CONFIG=${CONFIG:-training/configs/study_rules_gpu.yaml}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
  python3 -c "import trl" 2>/dev/null && echo "trl is installed (the plain engine does not use it)" || echo "no trl"
} | tee "$OUT/gpu.txt"
start=$(date +%s)
# no plot there (matplotlib may be absent): it is drawn here from the runs by --render_only
timeout "$LIMIT_S" python3 -m training.study run --config "$CONFIG" --set plot_png=null ${EXTRA_SET:-} 2>&1 \
  | grep -v "it/s]" | tail -n 300 > "$OUT/study.log"
rc=${PIPESTATUS[0]}
echo "study exit $rc after $(( $(date +%s) - start )) s (124: stopped at LIMIT_S=$LIMIT_S)" | tee -a "$OUT/gpu.txt"
dir=$(python3 -c "import yaml,sys; print(yaml.safe_load(open('$CONFIG'))['output_dir'])")
( cd "$dir" && find . \( -name eval.json -o -name curve.json -o -name train_log.json -o -name afrl.json \) -print0 \
    | tar --null -cf "$OUT/runs.tar" -T - ) && ls -l "$OUT"
exit 0
