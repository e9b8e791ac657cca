#!/usr/bin/env bash
# Figure 4 ablations and the Figure 5 steps sweep at 1 min (issue 5), after tools/train_cpu48.sh.
#   Full            = $RUNS/finetune-1min (shipped spurig-1min)
#   GLEAM only      = $RUNS/gleam-1min (no fine-tuning)
#   GLEAM w/o PT    = $CONFIGS/ablation/gleam-nopt-1min.toml
#   Uncond.         = pretrain-uncond -> gleam-uncond-1min -> finetune-uncond-1min
#   Uncond. w/o WS  = pretrain-uncond -> gleam-uncond-noshare-1min -> finetune-uncond-noshare-1min
#   Steps sweep     = gleam-steps{2,4,8}-1min (and the 6-step gleam-1min)
# Then every variant is reconstructed on the test subjects with tools/evaluate_models.py --label.
set -euo pipefail
cd "$(dirname "$0")/.."
SPURIG=${SPURIG:-.venv/bin/spurig}
CONFIGS=${CONFIGS:-configs/cpu48dc}   # the config set of tools/train_cpu48.sh
RUNS=${RUNS:-runs/cpu48dc}
EVAL=${EVAL:-data/eval48}
A=$CONFIGS/ablation
R=$RUNS/ablation
mkdir -p "$R"
stage() {  # stage STAGE NAME
  local resume=()
  [ -f "$R/$2/last.pt" ] && resume=(--resume)
  OMP_NUM_THREADS=1 "$SPURIG" -q train --stage "$1" --config "$A/$2.toml" "${resume[@]}" >> "$R/$2.log" 2>&1
}
( stage gleam gleam-nopt-1min; for n in 2 4 8; do stage gleam "gleam-steps$n-1min"; done ) &
( stage pretrain pretrain-uncond
  stage gleam gleam-uncond-1min; stage finetune finetune-uncond-1min
  stage gleam gleam-uncond-noshare-1min; stage finetune finetune-uncond-noshare-1min ) &
wait
ev() {  # ev LABEL MODEL
  OMP_NUM_THREADS=2 .venv/bin/python tools/evaluate_models.py data/cohort48/test "$EVAL" \
    --methods spurig --durations 1min --model "$2" --label "$1" --no-report
}
ev "GLEAM only" "$RUNS/gleam-1min/model.pt"
ev "GLEAM w/o PT" "$R/gleam-nopt-1min/model.pt"
ev "Uncond." "$R/finetune-uncond-1min/model.pt"
ev "Uncond. w/o WS" "$R/finetune-uncond-noshare-1min/model.pt"
for n in 2 4 8; do ev "GLEAM $n steps" "$R/gleam-steps$n-1min/model.pt"; done
.venv/bin/python tools/evaluate_models.py data/cohort48/test "$EVAL" --methods adjoint --durations 1min
