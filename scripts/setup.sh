#!/usr/bin/env bash
# Creates .venv and installs rsd_pl with every pinned dependency. Idempotent: a second run only
# checks. torch==2.13.0 goes first (the local CPU wheel); otherwise pip would pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

# MuJoCo renders offscreen through EGL (Mesa's llvmpipe on CPU machines).
if ! ldconfig -p 2>/dev/null | grep -q "libEGL.so.1"; then
  echo "[setup] installing Mesa EGL (libegl1, libgl1-mesa-dri) for offscreen rendering"
  apt-get update -qq && apt-get install -y -qq libegl1 libgl1-mesa-dri libgl1 >/dev/null
fi

stamp=.venv/.rsd_pl-installed
want=$(cat pyproject.toml requirements.lock.txt | sha256sum | cut -c1-16)
if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
  exit 0
fi
[[ -d .venv ]] || python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
echo "[setup] installing torch 2.13.0 (CPU wheel), then the pinned dependencies (a few minutes, once)"
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -r requirements.lock.txt
.venv/bin/python -m pip install -q --no-deps -e .
echo "$want" > "$stamp"
echo "[setup] done: .venv ready"
