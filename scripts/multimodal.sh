#!/usr/bin/env bash
# The multimodality experiment end to end on a CPU (about 20 min on 2 idle cores):
#   bimodal demos (rim grasp at +x or -x, drawn per demo) -> fit the RFSQ tokenizer -> fit the tiny main model
#   -> roll out l1 / parallel / greedy ar / sampled ar / sampled speculative + scripted-expert controls
# Steps whose artifact is in checkpoints/multimodal are skipped (REDO="rfsq main" retrains); collect and the
# rollouts resume by themselves. Report: runs/multimodal/report.md, figure: runs/multimodal/paths.png.
set -euo pipefail
data=data/multimodal/libero_spatial registry=checkpoints/multimodal runs=runs/multimodal fit_extra=()
source "$(dirname "$0")/pipeline.sh"  # set-up, banner, fit_step (the quickstart's recipes)

banner "collect bimodal demos ($data)"
$PY -m rsd_pl collect --config configs/multimodal/collect.yaml --out "$data"
fit_step rfsq
fit_step main
banner "rollouts and report"
$PY -m rsd_pl multimodal --config configs/multimodal/experiment.yaml --eval.registry "$registry" --data "$data" \
  --out "$runs"
