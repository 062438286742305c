#!/usr/bin/env bash
# The users' table on the full protocol (README "Four-suite table"): for each LIBERO suite, demos from fresh
# placements (never a benchmark init state), one multi-task main model in the VLA setting (camera + proprio) with
# the benchmark recipe, then evaluation on the benchmark's own init states:
#   1. the blind floor (step replay, the only step after fit that reads the demos): one demo per task replayed open
#      loop (`rsd_pl replay`) on all 50 init states, and on LIBERO-PRO's perturbed suites, trials 0-9 (LIBERO-PRO
#      places the objects anew: the replay shows what that alone does)
#   2. l1, parallel, ar, ar_exit, speculative on trials 0-9 of every task (the same episodes in every mode)
#   3. l1, ar and ar_exit (the regression baseline, the token reference and the recommended mode) on trials 10-49 as
#      well: 500 episodes each, so each pair of them is compared on the same 500 episodes (LONG_MODES to change)
#   4. LIBERO-PRO: the language, object and position-swap perturbations of the suite, trials 0-9, every mode; and
#      `<suite>_paraphrase`, LIBERO-PRO's words at the clean init states (the wording alone)
# and finally `python -m rsd_pl suites-table` over every suite done so far.
#   bash scripts/four_suites.sh                                  # all four suites, one after the other
#   bash scripts/four_suites.sh libero_object                   # one suite
#   STEPS="collect fit" bash scripts/four_suites.sh libero_goal # some steps: collect fit replay eval long pro table
# Everything resumes: rerun the same command after an interruption (collect and eval skip what is done, a fit already
# exported is skipped, an interrupted fit continues from its last.ckpt). Each step fits in one working session.
# The record: after each step (and on any exit) the episode logs and their reports, and once rfsq and main are both
# exported the checkpoints, are copied to results/four_suites/<suite> (FOUR_SUITES_RESULTS), which is committed, and
# the table is built from it (`python -m rsd_pl record`).
# On a new machine the script first restores what runs/ and checkpoints/ lack from there, so `eval`, `long` and `pro`
# go on where the record stops with the same model (the demos are not kept: collect, fit and replay come first).
# Artifacts: data/four_suites/<suite>, checkpoints/four_suites/<suite>, runs/four_suites/<suite>/{rfsq,main,eval,replay,pro},
# results/four_suites/<suite>/{checkpoints,eval,replay,pro}, results/four_suites/suites.{md,json,png}.
# Env: NUM_ENVS (2), DEMOS (per task, 20), FULL_TRIALS (50), TRIALS (10), LONG_MODES (l1,ar,ar_exit).
# `--smoke` (first argument): task 0, 2 demos at 32 px, a few training steps, 1-2 trials of 24 steps with one env,
# LIBERO-PRO's `_lan` and `_paraphrase` only, into $FOUR_SUITES_ROOT (default runs/four-suites-smoke; its record in
# <root>/results): what CI runs so this script keeps working.
set -euo pipefail
collect_extra=() fit_extra=() eval_extra=() replay_extra=() pro_suffixes=(lan paraphrase object swap)
trials=${TRIALS:-10} full_trials=${FULL_TRIALS:-50} demos=${DEMOS:-20} num_envs=${NUM_ENVS:-2}
long_modes=${LONG_MODES:-l1,ar,ar_exit}
if [[ "${1:-}" == "--smoke" ]]; then
  shift
  root="${FOUR_SUITES_ROOT:-runs/four-suites-smoke}"
  collect_extra=(--tasks 0 --attempts 4 --workers 1 --image_size 32)
  fit_extra=(--trainer.max_epochs 1 --trainer.limit_train_batches 3 --trainer.limit_val_batches 2
             --trainer.check_val_every_n_epoch 1 --trainer.enable_progress_bar false)
  eval_extra=(--tasks 0 --max_steps 24 --camera_size null)  # null: the demos' 32 px
  replay_extra=(--tasks 0)
  trials=1 full_trials=2 demos=2 num_envs=1 pro_suffixes=(lan paraphrase)
fi
suites=("$@")
[[ ${#suites[@]} -gt 0 ]] || suites=(libero_spatial libero_object libero_goal libero_10)
steps=" ${STEPS:-collect fit replay eval long pro table} "
if [[ -n "${root:-}" ]]; then base_data=$root/data base_ckpt=$root/checkpoints base_runs=$root/runs keep=$root/results
else base_data=data/four_suites base_ckpt=checkpoints/four_suites base_runs=runs/four_suites
  keep=${FOUR_SUITES_RESULTS:-results/four_suites}; fi
data="" registry="" runs="" record=""
source "$(dirname "$0")/pipeline.sh"  # set-up, banner, fit_step
configs=configs/benchmark
for suite in "${suites[@]}"; do
  [[ -f $configs/collect_$suite.yaml ]] || { echo "no $configs/collect_$suite.yaml: one of libero_spatial, libero_object, libero_goal, libero_10" >&2; exit 2; }
done
step() { [[ "$steps" == *" $1 "* ]]; }
record_() {  # record_ keep|restore: the suite's record (python -m rsd_pl record; refuses to mix two runs)
  $PY -m rsd_pl record "$1" --runs "$runs" --registry "$registry" --record "$record"
}
keep_results() { if [[ -n $record ]]; then record_ keep || { record=""; return 1; }; fi; }  # once: not again on exit
trap 'rc=$?; keep_results || rc=1; exit $rc' EXIT  # also after a failed or stopped step: what finished is kept
evaluate() {  # evaluate OUT SUITES MODES TRIALS [EXTRA...]: eval.yaml with this suite's registry, resumable
  $PY -m rsd_pl eval --config $configs/eval.yaml --registry "$registry" --suites "$2" --modes "$3" \
    --num_trials "$4" --out "$1" --num_envs "$num_envs" --progress_bar false "${eval_extra[@]}" "${@:5}"
}

for suite in "${suites[@]}"; do
  data=$base_data/$suite registry=$base_ckpt/$suite runs=$base_runs/$suite record=$keep/$suite
  record_ restore || { record=""; exit 1; }
  if step collect; then
    banner "collect $suite: $demos demos per task from sampled placements ($data; finished demos are kept)"
    $PY -m rsd_pl collect --config "$configs/collect_$suite.yaml" --placements sampled --init_states null \
      --episodes "$demos" --out "$data" "${collect_extra[@]}"
  fi
  if step fit; then
    fit_step rfsq $configs/rfsq.yaml
    fit_step main $configs/main_images.yaml
    keep_results
  fi
  if step replay; then
    banner "replay $suite: the blind floor, one demo per task open loop on trials 0-$((full_trials - 1)) (finished episodes are kept)"
    compare=()  # pairs the replay with the evaluations that have run (suites-table pairs them in any case)
    for part in eval pro; do if [[ -f $runs/$part/episodes.jsonl ]]; then compare+=("$runs/$part"); fi; done
    if [[ ${#compare[@]} -gt 0 ]]; then compare=(--compare "${compare[@]}"); fi
    $PY -m rsd_pl replay --data "$data" --suite "$suite" --num_trials "$full_trials" --out "$runs/replay" \
      "${compare[@]}" "${replay_extra[@]}"
    # the blind replay ignores the words, so on `_paraphrase` (the clean init states) it is the clean replay: not run
    pro_replay=""
    for p in "${pro_suffixes[@]}"; do [[ $p == paraphrase ]] || pro_replay+="${suite}_$p,"; done
    if [[ -n $pro_replay ]]; then
      banner "replay $suite on LIBERO-PRO (${pro_replay%,}): the blind floor at their own placements, trials 0-$((trials - 1))"
      $PY -m rsd_pl replay --data "$data" --suite "${pro_replay%,}" --num_trials "$trials" --out "$runs/replay" \
        "${compare[@]}" "${replay_extra[@]}"
    fi
    keep_results
  fi
  if step eval; then
    banner "eval $suite: every mode on trials 0-$((trials - 1)) (finished episodes are reused)"
    evaluate "$runs/eval" "[$suite]" "[l1,parallel,ar,ar_exit,speculative]" "$trials"
    keep_results
  fi
  if step long; then
    banner "eval $suite: $long_modes on trials 0-$((full_trials - 1)) (the benchmark's $full_trials init states)"
    # the action gap to ar was measured on trials 0-9 in the step before; no second decode per chunk here
    evaluate "$runs/eval" "[$suite]" "[$long_modes]" "$full_trials" --deviation_reference null
    keep_results
  fi
  if step pro && [[ ${#pro_suffixes[@]} -gt 0 ]]; then
    pro=$(printf "${suite}_%s," "${pro_suffixes[@]}")
    banner "eval $suite on LIBERO-PRO (${pro%,}): every mode on trials 0-$((trials - 1))"
    evaluate "$runs/pro" "[${pro%,}]" "[l1,parallel,ar,ar_exit,speculative]" "$trials"
    keep_results
  fi
done
record=""  # every suite is kept
if step table; then
  banner "the table of every suite in the record so far ($keep)"
  $PY -m rsd_pl suites-table --root "$keep"
  banner "done: $keep/suites.md (commit $keep to carry it to another machine), TensorBoard: tensorboard --logdir $base_runs"
fi
