#!/usr/bin/env bash
# The README's test command: set up (once), then run the whole suite, real LIBERO tests included.
# pytest's exit code 5 ("no tests collected") is a failure here, never a pass.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
export MUJOCO_GL="${MUJOCO_GL:-egl}"
.venv/bin/python -m pytest -q --durations=25 "$@"
rc=$?
if [[ $rc -eq 5 ]]; then
  echo "test.sh: pytest collected no tests: failing" >&2
  exit 1
fi
exit $rc
