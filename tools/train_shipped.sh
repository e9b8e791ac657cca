#!/usr/bin/env bash
# Train the shipped SPUR-iG models (issue 13) from one command, in the order of their lineage (each
# card's "Continued" list); running it again resumes every run from its last.pt, and a finished
# run returns at once.  Runs go to runs/cpu48v4 and runs/cpu48v5; ship with tools/ship_recipe.py.
#
# The chain starts from the v3 files (the 48-subject recipe runs of configs/cpu48v3, cut to their
# first 2 unrolled steps by tools/ship_recipe.py --select-steps), taken from the git history; to
# train those too: CONFIGS=configs/cpu48v3 DURATIONS="2min 30s" tools/train_cpu48_v2.sh, then ship.
# Data first (resumable):
#   spurig simulate-cohort data/cohort48 --subjects 24 --split 18/2/4 --matrix 48 --groups 16 --seed 2000
#   for i in $(seq 24 77); do    # 54 more training subjects, numbered and seeded as the cohort's
#     spurig simulate data/cohort48/train/subj0$i.h5 --matrix 48 --groups 16 --seed $((2000 + i))
#   done
#   python tools/prepare_redraw.py data/cohort48 data/prepared48v2 --config configs/cpu48v2/prepare.toml
#   python tools/prepare_redraw.py data/cohort48 data/prepared48v5 --config configs/cpu48v5/prepare-1min.toml \
#       --splits train,val
#   python tools/prepare_redraw.py data/cohort48 data/prepared48v6 --config configs/cpu48v6/prepare-15s.toml \
#       --splits val,train                            # 15 s: arm N (WITH_15S=1)
# About 40 CPU-minutes per 300-update run on this project's 2-core VM (cards: "Ran … in …").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
# shipped COMMIT DIR DURATION...: the shipped spurig-<duration>.pt of COMMIT into DIR (once)
shipped() {
  local commit=$1 dir=$2 d
  shift 2
  mkdir -p "$dir"
  for d in "$@"; do
    if [ ! -f "$dir/spurig-$d.pt" ]; then
      git show "$commit:src/spurig_core/models/spurig-$d.pt" > "$dir/spurig-$d.pt.part"
      mv "$dir/spurig-$d.pt.part" "$dir/spurig-$d.pt"
    fi
  done
}
shipped 0341ea2 runs/cpu48v3/shipped-v3 2min 30s
run() { OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$PY" -m spurig_core.training.recipe "$1" --resume; }
for arm in F G E H K; do run "configs/cpu48v4/arm-$arm-2min.toml"; done     # spurig-2min (v5)
run configs/cpu48v5/arm-L-1min.toml                                         # spurig-1min (v6)
for arm in F2 E H K; do run "configs/cpu48v4/arm-$arm-30s.toml"; done       # spurig-30s (v5)
# 15 s (issue 13): arm N, the 30-s network trained end to end at 15 s.  Not shipped (the repository's
# size): spurig recon at 15 s uses spurig-30s.pt; pass --model runs/cpu48v6/arm-N-15s/model.pt.
if [ "${WITH_15S:-0}" = 1 ]; then run configs/cpu48v6/arm-N-15s.toml; fi
# Not shipped either (issue 13, session 12; RESULTS-models): a denoiser per unrolled step at every
# duration, continued from the shipped networks (test +0.14 / +0.19 / +0.32 dB at 2 min / 1 min / 30 s).
if [ "${WITH_PER_STEP:-0}" = 1 ]; then
  for d in 2min 1min 30s; do run "configs/cpu48v6/arm-O-$d.toml"; done
fi
# The shipped files since session 19 (issue 13; RESULTS-models): 4 unrolled steps with a denoiser per
# step.  Arm Q2 continues each file above to 4 steps of 2 DC gradient steps (the added steps start as
# identity denoisers); arm R fine-tunes Q2 with one DC step per unrolled step, so that a 4-step
# reconstruction costs the 3 grams of the 2-step files (issue 14).  Ship with
#   python tools/ship_recipe.py runs/cpu48v8/arm-R-<d> configs/cpu48v8/arm-R-<d>.toml --pack \
#       --pack-base runs/cpu48v7/shipped-349fd2e/spurig-<d>.pt
shipped 349fd2e runs/cpu48v7/shipped-349fd2e 2min 1min 30s   # the files above, shipped until session 19
for d in 2min 1min 30s; do run "configs/cpu48v7/arm-Q2-$d.toml"; done
for d in 2min 1min 30s; do run "configs/cpu48v8/arm-R-$d.toml"; done
# The 1-min file since session 20 (issue 13; RESULTS-models): arm R3, the 4-step file of session 19
# continued on the 30 training subjects subj000-017 and subj024-035 prepared at 1 min (data/prepared48v5;
# the session stopped it at update 100 of 250 and shipped that; run again to continue).  Ship with
#   python tools/ship_recipe.py runs/cpu48v9/arm-R3-1min configs/cpu48v9/arm-R3-1min.toml --pack \
#       --pack-base runs/cpu48v7/shipped-349fd2e/spurig-1min.pt
shipped 74cefc8 runs/cpu48v8/shipped-74cefc8 1min   # the 4-step file as shipped in session 19
run configs/cpu48v9/arm-R3-1min.toml
# The 1-min file since session 25 (issue 13; RESULTS-models): arm M2, the file of session 20 (arm R3)
# continued with the 30-s file's loss (soft-matched T1/T2 term).  Ship with
#   python tools/ship_recipe.py runs/cpu48v12/arm-M2-1min configs/cpu48v12/arm-M2-1min.toml --pack \
#       --pack-base runs/cpu48v7/shipped-349fd2e/spurig-1min.pt
shipped 47418ad runs/cpu48v9/shipped-47418ad 1min   # arm R3 as shipped in sessions 20-24
run configs/cpu48v12/arm-M2-1min.toml
# Not shipped (issue 13, session 21; RESULTS-models): the 4-step 30-s file trained end to end at 15 s
# (arm R-15s; spurig recon at 15 s uses spurig-30s.pt, pass --model runs/cpu48v10/arm-R-15s/model.pt),
# and two tries at the 30-s T1 (arm R3-30s: fingerprint weight 10; arm S: 6 unrolled steps).  Data:
#   python tools/prepare_redraw.py data/cohort48 data/prepared48v6 --config configs/cpu48v6/prepare-15s.toml --splits val,train
#   python tools/prepare_redraw.py data/cohort48 data/prepared48v10 --config configs/cpu48v10/prepare-30s.toml --splits val,train
if [ "${WITH_15S:-0}" = 1 ] || [ "${WITH_S21:-0}" = 1 ]; then
  shipped 74cefc8 runs/cpu48v8/shipped-74cefc8 30s
  run configs/cpu48v10/arm-R-15s.toml
fi
# 7.5 s = 1 group (session 21): arm T, arm R-15s continued at 1 group (not shipped).  Data:
#   python tools/prepare_redraw.py data/cohort48 data/prepared1g --config configs/cpu48v10/prepare-7.5s.toml --splits val,train
if [ "${WITH_S21:-0}" = 1 ]; then
  for arm in R3-30s S-30s T-7.5s; do run "configs/cpu48v10/arm-$arm.toml"; done
fi
# Session 22 (not shipped): the 30-s file widened to base_width 32 (arms W, W2) and its width-16
# control (arm N); arm R-15s and arm T trained longer (R2-15s; T2-, T3-, T4-7.5s); the control on
# gamma = 0.85 states (arm G).  Needs WITH_S21's runs, and for arm G:
#   python tools/prepare_redraw.py data/cohort48 data/prepared48g085 --config configs/cpu48v10/prepare-30s-g085.toml --splits val,train
if [ "${WITH_S22:-0}" = 1 ]; then
  for arm in W-30s W2-30s N-30s R2-15s T2-7.5s T3-7.5s T4-7.5s G-30s; do run "configs/cpu48v10/arm-$arm.toml"; done
fi
# spurig-30s since session 23 (issue 13; RESULTS-models): the 30-s file of session 19 continued with
# the soft-matched T1/T2 term (maps_weights; training/maps_loss.py): arms X2, X4, X7 on the 30-s
# states (X7 ran while subj036-053 were simulated, as in the header, and prepared, and took them in
# as they came; run again with all 48 present it trains on 48 from its start), then X9 on all 48.
# Data (the 30-s states of the validation subjects and all 48 training subjects):
#   python tools/prepare_redraw.py data/cohort48 data/prepared48v10 --config configs/cpu48v10/prepare-30s.toml --splits val,train
# Ship with
#   python tools/ship_recipe.py runs/cpu48v11/arm-X9-30s configs/cpu48v11/arm-X9-30s.toml --pack \
#       --pack-base runs/cpu48v7/shipped-349fd2e/spurig-30s.pt
# Side arms (not shipped): X1 (weights 3 / 1), X3 (30 / 10), X10 (X9 continued).
shipped 74cefc8 runs/cpu48v8/shipped-74cefc8 30s
for arm in X2 X4 X7 X9; do run "configs/cpu48v11/arm-$arm-30s.toml"; done
if [ "${WITH_S23:-0}" = 1 ]; then
  for arm in X1 X3 X10; do run "configs/cpu48v11/arm-$arm-30s.toml"; done
fi
# spurig-30s since session 24 (issue 13; RESULTS-models): X9 continued on 72 training subjects
# (subj054-077 as in the header; X11 ran while they were prepared into data/prepared48v10 and took
# them in as they came), then X12 and X13 on all 72.  Ship with
#   python tools/ship_recipe.py runs/cpu48v11/arm-X13-30s configs/cpu48v11/arm-X13-30s.toml --pack \
#       --pack-base runs/cpu48v7/shipped-349fd2e/spurig-30s.pt
for arm in X11 X12 X13; do run "configs/cpu48v11/arm-$arm-30s.toml"; done
# Side arms of session 24 (not shipped): X14 (X13 continued), X14e (boundary voxels x3 in the maps
# term), X14f (trained through 2 flips), X13f (2 flips, no updates), Z0 (two DC-only steps), S2 (two
# more learned steps), Y-15s
# (the 15-s network with the maps term; data/prepared48v6 with all 48 of subj000-017, subj024-053).
if [ "${WITH_S24:-0}" = 1 ]; then
  for arm in X14-30s X14e-30s X14f-30s X13f-30s Z0-30s S2-30s Y-15s; do run "configs/cpu48v11/arm-$arm.toml"; done
fi
# Session 25 (not shipped): arm G2, the shipped 30-s file (X13) continued on the 72 training subjects
# gridded on LLR's 2x grid.  Data (about 48 s a subject on one core):
#   python tools/prepare_redraw.py data/cohort48 data/prepared48v12 --config configs/cpu48v12/prepare-30s-os2.toml --splits val,train
# Eight more held-out test subjects for the evaluation (RESULTS-models, session 25; no config reads them):
#   for i in $(seq 78 85); do spurig simulate data/test48b/subj0$i.h5 --matrix 48 --groups 16 --seed $((2000 + i)); done
if [ "${WITH_S25:-0}" = 1 ]; then run configs/cpu48v12/arm-G2-30s.toml; fi
# Session 26 (not shipped): arms C1 and C2, the shipped 30-s file (X13) continued with the MoDL data
# term (dc = "cg": 2 or 3 conjugate-gradient iterations per unrolled step, lambda from 0.5 L), and
# C3, X13 continued with a sharper soft matching in the maps term (maps_sharpness 0.003).
if [ "${WITH_S26:-0}" = 1 ]; then
  for arm in C1 C2 C3; do run "configs/cpu48v13/arm-$arm-30s.toml"; done
fi
# Session 27: arms E1-E4, the shipped 30-s file (X13) continued with an edge term in the loss:
# maps_edge_weight (the soft-matched log T1/T2 differences between GM/WM neighbours; E1 1, E4 3),
# edge_weight (the coefficients' error differences between neighbours touching GM/WM; E2 2), both (E3).
if [ "${WITH_S27:-0}" = 1 ]; then
  for arm in E1 E2 E3 E4; do run "configs/cpu48v14/arm-$arm-30s.toml"; done
fi
# Session 28 (issue 14): the shipped files reconstruct with a half-width kernel network (their
# training data keep the width-128 one, recorded as training_gridding; the held-out test subjects'
# tables moved by at most 0.013 dB, RESULTS-models).  After shipping with ship_recipe.py:
#   python tools/set_model_gridding.py --gridding configs/cpu48v15/prepare.toml --note "..." \
#       src/spurig_core/models/spurig-{2min,1min,30s}.pt
# Session 28 (issue 13, not shipped): arm X15, X13 continued on 96 training subjects.  Data:
#   for i in $(seq 86 109); do spurig simulate data/cohort48/train/subj$(printf %03d $i).h5 --matrix 48 --groups 16 --seed $((2000 + i)); done
#   python tools/prepare_redraw.py data/cohort48 data/prepared48v10 --config configs/cpu48v10/prepare-30s.toml --splits train
if [ "${WITH_S28:-0}" = 1 ]; then run configs/cpu48v16/arm-X15-30s.toml; fi
