# Sourced by scripts/quickstart.sh and scripts/multimodal.sh (not run alone): set-up and the helpers both use.
# Before sourcing set: data (demos), registry (checkpoint registry), runs (run folders), fit_extra (array of extra
# `fit` arguments, may be empty).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
PY=.venv/bin/python
export MUJOCO_GL="${MUJOCO_GL:-egl}"
REDO="${REDO:-}"

banner() { printf '\n=== [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
redo() { [[ " $REDO " == *" $1 "* || "$REDO" == all ]]; }
in_registry() { $PY -m rsd_pl registry --root "$registry" show "$1@best" >/dev/null 2>&1; }

fit_step() {  # fit_step NAME: fit configs/quickstart/NAME.yaml on $data unless NAME@best is in $registry
  local name=$1 config=configs/quickstart/$1.yaml
  if in_registry "$name" && ! redo "$name"; then
    banner "fit $name: skipped, $name@best is in $registry (REDO=$name to retrain)"
    return
  fi
  banner "fit $name ($config on $data)"
  $PY -m rsd_pl fit --config "$config" --registry_root "$registry" --run_dir "$runs/$name" \
    --data.init_args.data "$data" "${fit_extra[@]}"
}
