#!/usr/bin/env bash
# Train the shipped CPU models (48³ cohort) stage by stage, two chains side by side (1 thread each).
#   chain A: SPUR-iG pretrain -> for 2min, 30s: GLEAM -> fine-tune
#   chain B: hybrid pretrain -> hybrid GLEAM 2min -> hybrid fine-tune 2min -> (once the SPUR-iG
#            pretraining has finished) SPUR-iG GLEAM 1min -> fine-tune 1min
# Every stage resumes from its last checkpoint (`--resume`) when it is run again, so the script
# can be restarted after an interruption. Logs: runs/cpu48/*.log.
# Data first:
#   spurig simulate-cohort data/cohort48 --subjects 24 --split 18/2/4 --matrix 48 --groups 16 --seed 2000
#   spurig prepare-training data/cohort48 data/prepared48 --splits train,val --config configs/cpu48/prepare.toml
set -euo pipefail
cd "$(dirname "$0")/.."
SPURIG=${SPURIG:-.venv/bin/spurig}
mkdir -p runs/cpu48
stage() {  # stage NAME CONFIG
  local name=$1 cfg=$2 resume=()
  [ -f "runs/cpu48/$name/last.pt" ] && resume=(--resume)
  OMP_NUM_THREADS=1 "$SPURIG" -q train --stage "${name%%-*}" --config "$cfg" "${resume[@]}" \
    >> "runs/cpu48/$name.log" 2>&1
  echo "$(date -u +%H:%M:%S) finished $name" >> runs/cpu48/chain.log
}
spurig_duration() {
  stage "gleam-$1" "configs/cpu48/gleam-$1.toml"
  stage "finetune-$1" "configs/cpu48/finetune-$1.toml"
}
chain_a() {
  stage pretrain configs/cpu48/pretrain.toml
  touch runs/cpu48/.pretrain-done
  spurig_duration 2min
  spurig_duration 30s
}
chain_b() {
  stage pretrain-hybrid configs/cpu48/pretrain-hybrid.toml
  stage gleam-hybrid-2min configs/cpu48/gleam-hybrid-2min.toml
  stage finetune-hybrid-2min configs/cpu48/finetune-hybrid-2min.toml
  while [ ! -f runs/cpu48/.pretrain-done ] && kill -0 "$1" 2>/dev/null; do sleep 30; done
  [ -f runs/cpu48/.pretrain-done ] && spurig_duration 1min
}
rm -f runs/cpu48/.pretrain-done
chain_a & a=$!
chain_b "$a" & b=$!
wait $a $b
