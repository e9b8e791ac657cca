#!/usr/bin/env bash
# Train the v2-recipe models (issue 13) from one command; running it again continues every run
# from its last.pt (raise the update counts in the TOML to extend a finished run).
#   CONFIGS (default configs/cpu48v2) holds recipe-*.toml; DURATIONS (default "2min") picks them.
# Data first (resumable too):
#   spurig simulate-cohort data/cohort48 --subjects 24 --split 18/2/4 --matrix 48 --groups 16 --seed 2000
#   python tools/prepare_redraw.py data/cohort48 data/prepared48v2 --config configs/cpu48v2/prepare.toml \
#       --gridded-dir data/eval48v2
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CONFIGS=${CONFIGS:-configs/cpu48v2}
for d in ${DURATIONS:-2min}; do
  cfg="$CONFIGS/recipe-$d.toml"
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$PY" -m spurig_core.training.recipe "$cfg" --resume
done
