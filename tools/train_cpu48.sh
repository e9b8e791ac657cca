#!/usr/bin/env bash
# Train the shipped CPU models (48³ cohort) stage by stage, two chains side by side (1 thread each).
#   chain A: SPUR-iG pretrain -> for 2min, 30s: GLEAM -> fine-tune
#   chain B: hybrid pretrain -> hybrid GLEAM 2min -> hybrid fine-tune 2min -> (once the SPUR-iG
#            pretraining has finished) SPUR-iG GLEAM 1min -> fine-tune 1min
# Every stage resumes from its last checkpoint (`--resume`) when it is run again, so the script
# can be restarted after an interruption. Logs: $RUNS/*.log.
# CONFIGS (default configs/cpu48dc, the shipped models) and RUNS (default runs/cpu48dc) select the
# config set; configs/cpu48 is the earlier γ = 0.5 set (RUNS=runs/cpu48).
# Data first:
#   spurig simulate-cohort data/cohort48 --subjects 24 --split 18/2/4 --matrix 48 --groups 16 --seed 2000
#   spurig prepare-training data/cohort48 data/prepared48 --splits train,val --config configs/cpu48/prepare.toml
#   spurig prepare-training data/cohort48 data/prepared48dc --splits train,val --config configs/cpu48dc/prepare.toml
set -euo pipefail
cd "$(dirname "$0")/.."
SPURIG=${SPURIG:-.venv/bin/spurig}
CONFIGS=${CONFIGS:-configs/cpu48dc}
RUNS=${RUNS:-runs/cpu48dc}
mkdir -p "$RUNS"
stage() {  # stage NAME CONFIG
  local name=$1 cfg=$2 resume=()
  [ -f "$RUNS/$name/last.pt" ] && resume=(--resume)
  OMP_NUM_THREADS=1 "$SPURIG" -q train --stage "${name%%-*}" --config "$cfg" "${resume[@]}" \
    >> "$RUNS/$name.log" 2>&1
  echo "$(date -u +%H:%M:%S) finished $name" >> "$RUNS/chain.log"
}
spurig_duration() {
  stage "gleam-$1" "$CONFIGS/gleam-$1.toml"
  stage "finetune-$1" "$CONFIGS/finetune-$1.toml"
}
chain_a() {
  stage pretrain "$CONFIGS/pretrain.toml"
  touch "$RUNS/.pretrain-done"
  spurig_duration 2min
  spurig_duration 30s
}
chain_b() {
  stage pretrain-hybrid "$CONFIGS/pretrain-hybrid.toml"
  stage gleam-hybrid-2min "$CONFIGS/gleam-hybrid-2min.toml"
  stage finetune-hybrid-2min "$CONFIGS/finetune-hybrid-2min.toml"
  while [ ! -f "$RUNS/.pretrain-done" ] && kill -0 "$1" 2>/dev/null; do sleep 30; done
  [ -f "$RUNS/.pretrain-done" ] && spurig_duration 1min
}
rm -f "$RUNS/.pretrain-done"
chain_a & a=$!
chain_b "$a" & b=$!
wait $a $b
