# Sourced by scripts/quickstart.sh, multimodal.sh and benchmark.sh (not run alone): set-up and the helpers they use.
# Before sourcing set: data (demos), registry (checkpoint registry), runs (run folders), fit_extra (array of extra
# `fit` arguments, may be empty); optionally configs (folder of NAME.yaml fit configs, default configs/quickstart).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
PY=.venv/bin/python
export MUJOCO_GL="${MUJOCO_GL:-egl}"
REDO="${REDO:-}"

banner() { printf '\n=== [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
redo() { [[ " $REDO " == *" $1 "* || "$REDO" == all ]]; }
in_registry() { $PY -m rsd_pl registry --root "$registry" show "$1@best" >/dev/null 2>&1; }

configs="${configs:-configs/quickstart}"

# fit_step NAME [CONFIG]: fit CONFIG (default $configs/NAME.yaml) on $data unless NAME@best is in $registry.
# A fit that was interrupted (its run folder has checkpoints/last.ckpt, nothing exported yet) resumes from it.
fit_step() {
  local name=$1 config=${2:-$configs/$1.yaml} resume=()
  if in_registry "$name" && ! redo "$name"; then
    banner "fit $name: skipped, $name@best is in $registry (REDO=$name to retrain)"
    return
  fi
  if ! in_registry "$name" && [[ -f "$runs/$name/checkpoints/last.ckpt" ]]; then
    resume=(--ckpt_path last)
    banner "fit $name: resuming the interrupted run in $runs/$name"
  fi
  banner "fit $name ($config on $data)"
  $PY -m rsd_pl fit --config "$config" --registry_root "$registry" --run_dir "$runs/$name" \
    --data.init_args.data "$data" "${resume[@]}" "${fit_extra[@]}"
}
