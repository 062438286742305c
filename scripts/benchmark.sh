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
# `--smoke` (first argument) runs it shrunken (task 0, 2 demos, a few training steps, one 24-step episode per mode)
# into $BENCHMARK_ROOT (default runs/benchmark-smoke): what CI runs so this script keeps working.
set -euo pipefail
collect_extra=() fit_extra=() eval_extra=()
if [[ "${1:-}" == "--smoke" ]]; then
  shift
  root="${BENCHMARK_ROOT:-runs/benchmark-smoke}"
  collect_extra=(--tasks 0 --episodes 2 --workers 1)
  fit_extra=(--trainer.max_epochs 1 --trainer.limit_train_batches 3 --trainer.limit_val_batches 2
             --trainer.check_val_every_n_epoch 1 --trainer.enable_progress_bar false)
  eval_extra=(--tasks 0 --num_trials 1 --max_steps 24)
fi
suite=${1:-libero_spatial}
settings=("${@:2}")
[[ ${#settings[@]} -gt 0 ]] || settings=(privileged images)
if [[ -n "${root:-}" ]]; then
  data=$root/data/$suite checkpoints=$root/checkpoints/$suite out=$root/runs/$suite
else
  data=data/benchmark/$suite checkpoints=checkpoints/benchmark/$suite out=runs/benchmark/$suite
fi
registry="" runs=""
source "$(dirname "$0")/pipeline.sh"  # set-up, banner, fit_step
for setting in "${settings[@]}"; do
  [[ -f configs/benchmark/main_$setting.yaml ]] || { echo "unknown setting '$setting': privileged or images" >&2; exit 2; }
done
[[ -f configs/benchmark/collect_$suite.yaml ]] || { echo "no configs/benchmark/collect_$suite.yaml" >&2; exit 2; }

banner "collect $suite demos ($data; finished demos are kept, the rest collected)"
$PY -m rsd_pl collect --config "configs/benchmark/collect_$suite.yaml" --out "$data" "${collect_extra[@]}"

run_setting() {  # run_setting SETTING: tokenizer, main model and eval of one observation setting
  local setting=$1
  registry=$checkpoints/$setting runs=$out/$setting
  fit_step rfsq configs/benchmark/rfsq.yaml
  fit_step main "configs/benchmark/main_$setting.yaml"
  banner "eval $suite, $setting, on held-out init states (finished episodes are reused)"
  $PY -m rsd_pl eval --config configs/benchmark/eval.yaml --suites "[$suite]" --registry "$registry" \
    --out "$runs/eval" --progress_bar false "${eval_extra[@]}"
}

if [[ "${PARALLEL:-0}" == 1 && ${#settings[@]} -gt 1 ]]; then
  export OMP_NUM_THREADS=1  # one core per setting: the fits' torch threads (the eval config sets its own)
  pids=()
  for setting in "${settings[@]}"; do
    mkdir -p "$out/$setting"
    log=$out/$setting/benchmark.log
    banner "$setting: in the background, log in $log"
    (run_setting "$setting") >"$log" 2>&1 &
    pids+=($!)
  done
  status=0
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  [[ $status == 0 ]] || { echo "a setting failed: see $out/*/benchmark.log" >&2; exit 1; }
else
  for setting in "${settings[@]}"; do run_setting "$setting"; done
fi
banner "benchmark table"
$PY -m rsd_pl benchmark-table --root "$out"
banner "done: $out/benchmark.md, TensorBoard: tensorboard --logdir $out"
