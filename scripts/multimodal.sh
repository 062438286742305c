#!/usr/bin/env bash
# The multimodality experiment end to end on a CPU (about 20 min on 2 idle cores):
#   bimodal demos (rim grasp at +x or -x, drawn per demo) -> fit the RFSQ tokenizer -> fit the tiny main model
#   -> roll out l1 / parallel / greedy ar / sampled ar / sampled speculative + scripted-expert controls
# Steps whose artifact is in checkpoints/multimodal are skipped (REDO="rfsq main" retrains); collect and the
# rollouts resume by themselves. Report: runs/multimodal/report.md, figure: runs/multimodal/paths.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
export MUJOCO_GL="${MUJOCO_GL:-egl}"
REDO="${REDO:-}"
data=data/multimodal/libero_spatial registry=checkpoints/multimodal runs=runs/multimodal

banner() { printf '\n=== [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
fit_step() {  # the quickstart's recipe on the bimodal demos, into the experiment's own registry
  local name=$1
  if $PY -m rsd_pl registry --root "$registry" show "$name@best" >/dev/null 2>&1 && [[ " $REDO " != *" $name "* ]]; then
    banner "fit $name: skipped, $name@best is in $registry (REDO=$name to retrain)"
    return
  fi
  banner "fit $name (configs/quickstart/$name.yaml on $data)"
  $PY -m rsd_pl fit --config "configs/quickstart/$name.yaml" --registry_root "$registry" \
    --run_dir "$runs/fit_$name" --data.init_args.data "$data"
}

banner "collect bimodal demos ($data)"
$PY -m rsd_pl collect --config configs/multimodal/collect.yaml --out "$data"
fit_step rfsq
fit_step main
banner "rollouts and report"
$PY -m rsd_pl multimodal --config configs/multimodal/experiment.yaml --eval.registry "$registry" --data "$data" \
  --out "$runs"
