#!/usr/bin/env bash
# The README's test command: set up (once), then run the whole suite, real LIBERO tests included.
# With no arguments, in two passes: every test on TEST_WORKERS processes (default 2, pytest-xdist, one test file
# per process at a time), then the `serial` ones (kill moments timed from a reference run) alone. With arguments,
# one plain pytest run of them (e.g. `bash scripts/test.sh tests/test_eval_loop.py`, `bash scripts/test.sh -m soak`).
# pytest's exit code 5 ("no tests collected") is a failure here, never a pass.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
export MUJOCO_GL="${MUJOCO_GL:-egl}"
workers=${TEST_WORKERS:-2}

pass() {  # pass PYTEST_ARGS...: one pytest run; 0 when it passed (exit code 5, no tests, is a failure)
  .venv/bin/python -m pytest -q "$@"
  local rc=$?
  if [[ $rc -eq 5 ]]; then echo "test.sh: pytest collected no tests ($*): failing" >&2; return 1; fi
  return $rc
}

if [[ $# -gt 0 || $workers -le 1 ]]; then
  pass --durations=25 "$@"
  exit $?
fi
start=$SECONDS
OMP_NUM_THREADS=1 pass --durations=25 -n "$workers" --dist loadfile -m "not soak and not serial"
rc=$?
pass --durations=10 -m "serial and not soak" || rc=1
echo "test.sh: both passes in $((SECONDS - start)) s (rc $rc)"
exit $rc
