#!/usr/bin/env bash
# The README's main job, end to end on a CPU, offline, on real LIBERO simulation:
#   collect demos -> fit the RFSQ tokenizer -> fit the tiny main model -> fit the draft -> eval
# Each step is an ordinary CLI call with a config in configs/quickstart/ (run or change any alone).
# Steps whose artifact is already in the registry (checkpoints/quickstart) are skipped; `collect`
# and `eval` resume by themselves. Redo steps with e.g. `REDO="main draft" bash scripts/quickstart.sh`
# (REDO=all redoes every training step; new versions are exported, old ones kept).
# `--smoke` runs a shrunken pipeline (1 task, 2 demos, a few steps, short episodes) into a scratch
# folder ($QUICKSTART_ROOT, default runs/quickstart-smoke): what CI runs so this door never breaks.
set -euo pipefail
data=data/quickstart/libero_spatial registry=checkpoints/quickstart runs=runs/quickstart
collect_extra=() fit_extra=() eval_extra=()
if [[ "${1:-}" == "--smoke" ]]; then
  root="${QUICKSTART_ROOT:-runs/quickstart-smoke}"
  data=$root/data registry=$root/checkpoints runs=$root/runs
  collect_extra=(--tasks 0 --episodes 2 --workers 1)
  fit_extra=(--trainer.max_epochs 1 --trainer.limit_train_batches 3 --trainer.limit_val_batches 2
             --trainer.check_val_every_n_epoch 1 --trainer.enable_progress_bar false)
  eval_extra=(--tasks 0 --num_trials 1 --max_steps 24 --videos_per_task 1 --progress_bar false)
fi
source "$(dirname "$0")/pipeline.sh"  # set-up, banner, fit_step

banner "collect demos ($data; finished episodes are kept, the rest collected)"
$PY -m rsd_pl collect --config configs/quickstart/collect.yaml --out "$data" "${collect_extra[@]}"
fit_step rfsq
fit_step main
fit_step draft
banner "eval on held-out init states (finished episodes are reused)"
$PY -m rsd_pl eval --config configs/quickstart/eval.yaml --registry "$registry" --out "$runs/eval" "${eval_extra[@]}"
banner "done: report in $runs/eval/report.md, TensorBoard: tensorboard --logdir $runs"
