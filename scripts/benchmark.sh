#!/usr/bin/env bash
# A suite's benchmark on this CPU (README "Benchmark"): collect demos of every task, then for each observation
# setting (privileged: image + proprio + object positions; images: image + proprio only, the VLA setting):
# fit the RFSQ tokenizer -> fit one multi-task main model -> eval all five modes on held-out init states.
#   bash scripts/benchmark.sh                          # libero_spatial, both settings, one after the other
#   PARALLEL=1 bash scripts/benchmark.sh               # the two settings side by side, one core each
#   bash scripts/benchmark.sh libero_object images     # another suite / one setting
# Configs: configs/benchmark/ (collect_<suite>.yaml, rfsq.yaml, main_<setting>.yaml, eval.yaml). Artifacts:
# data/benchmark/<suite>, checkpoints/benchmark/<suite>/<setting>, runs/benchmark/<suite>/<setting>/{rfsq,main,eval}.
# Everything resumes: collect and eval skip what is done, a fit already exported is skipped and an interrupted
# fit continues from its last.ckpt; rerun the same command after an interruption. REDO="main" refits.
# The last step writes runs/benchmark/<suite>/benchmark.md: both settings side by side, per task and overall.
set -euo pipefail
suite=${1:-libero_spatial}
settings=("${@:2}")
[[ ${#settings[@]} -gt 0 ]] || settings=(privileged images)
data=data/benchmark/$suite registry="" runs="" fit_extra=()
source "$(dirname "$0")/pipeline.sh"  # set-up, banner, fit_step
for setting in "${settings[@]}"; do
  [[ -f configs/benchmark/main_$setting.yaml ]] || { echo "unknown setting '$setting': privileged or images" >&2; exit 2; }
done
[[ -f configs/benchmark/collect_$suite.yaml ]] || { echo "no configs/benchmark/collect_$suite.yaml" >&2; exit 2; }

banner "collect $suite demos ($data; finished demos are kept, the rest collected)"
$PY -m rsd_pl collect --config "configs/benchmark/collect_$suite.yaml" --out "$data"

run_setting() {  # run_setting SETTING: tokenizer, main model and eval of one observation setting
  local setting=$1
  registry=checkpoints/benchmark/$suite/$setting runs=runs/benchmark/$suite/$setting
  fit_step rfsq configs/benchmark/rfsq.yaml
  fit_step main "configs/benchmark/main_$setting.yaml"
  banner "eval $suite, $setting, on held-out init states (finished episodes are reused)"
  $PY -m rsd_pl eval --config configs/benchmark/eval.yaml --suites "[$suite]" --registry "$registry" \
    --out "$runs/eval" --progress_bar false
}

if [[ "${PARALLEL:-0}" == 1 && ${#settings[@]} -gt 1 ]]; then
  export OMP_NUM_THREADS=1  # one core per setting: the fits' torch threads (the eval config sets its own)
  pids=()
  for setting in "${settings[@]}"; do
    mkdir -p "runs/benchmark/$suite/$setting"
    log=runs/benchmark/$suite/$setting/benchmark.log
    banner "$setting: in the background, log in $log"
    (run_setting "$setting") >"$log" 2>&1 &
    pids+=($!)
  done
  status=0
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  [[ $status == 0 ]] || { echo "a setting failed: see runs/benchmark/$suite/*/benchmark.log" >&2; exit 1; }
else
  for setting in "${settings[@]}"; do run_setting "$setting"; done
fi
banner "benchmark table"
$PY -m rsd_pl benchmark-table --root "runs/benchmark/$suite"
banner "done: runs/benchmark/$suite/benchmark.md, TensorBoard: tensorboard --logdir runs/benchmark/$suite"
