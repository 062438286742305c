#!/usr/bin/env bash
# CPU dry run of scripts/gpu_check.sh in an environment shaped like the lent GPU machine's image, so the first GPU
# call does not discover an import error there.
#   bash scripts/gpu_dryrun.sh            # builds .venv-gpu312 once (torch 2.11.0 from PyPI, a few GB), then runs
# The device image (docs/gpu.md): Python 3.12, torch 2.11.0, transformers 5.17.0, tokenizers 0.23.2, numpy 2.5.2 and
# the rest of DEVICE_PACKAGES below; no jsonargparse, no simplejpeg, no rsd_pl install. This environment holds exactly
# that (rsd_pl runs from the source tree), and gpu_check.sh installs the wheelhouse (scripts/gpu_wheels.sh) into a
# temporary target as it does on the device. Two steps:
#   1. the OpenVLA-OFT reference tests (native network vs the genuine implementation's outputs), bench and budget
#      tests, under the device's versions (LIBERO's and the JPEG step's tests need what the device lacks: deselected);
#   2. gpu_check.sh on the tiny checkpoint in bfloat16, the dtype of the GPU run.
# The figures are meaningless (tiny checkpoint, CPU); the point is that every import and every code path of the GPU
# run executes under the device's versions, so the first GPU call does not discover an error.
# Env: GPU_DRYRUN_ENV (.venv-gpu312), GPU_DRYRUN_PYTHON (a python3.12; default: pyenv's newest 3.12),
# GPU_CHECK_OUT (runs/gpu_dryrun), GPU_CHECK_CHUNKS (5) and the rest of gpu_check.sh's variables.
set -euo pipefail
cd "$(dirname "$0")/.."
env_dir="${GPU_DRYRUN_ENV:-.venv-gpu312}"
# The device's versions where the device's pip list names them (KINDS.md, 2026-11); the others unpinned, as there.
DEVICE_PACKAGES=(torch==2.11.0 torchvision==0.26.0 transformers==5.17.0 tokenizers==0.23.2 safetensors==0.8.0
  numpy==2.5.2 accelerate==1.15.0 huggingface_hub==1.33.0 sentencepiece==0.2.2 lightning==2.6.6
  pytorch-lightning==2.6.6 torchmetrics==1.9.0 peft scipy h5py matplotlib pillow tqdm imageio pyarrow pandas timm
  protobuf pyyaml pytest)

find_python312() {
  if [[ -n ${GPU_DRYRUN_PYTHON:-} ]]; then echo "$GPU_DRYRUN_PYTHON"; return; fi
  local root candidate
  root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
  candidate=$(ls -d "$root"/versions/3.12.*/bin/python3.12 2>/dev/null | sort -V | tail -1)
  if [[ -n $candidate ]]; then echo "$candidate"; return; fi
  command -v python3.12 || { echo "gpu_dryrun: no Python 3.12 (pyenv install 3.12, or set GPU_DRYRUN_PYTHON)" >&2
    exit 1; }
}

stamp="$env_dir/.device-packages"
want=$(printf '%s\n' "${DEVICE_PACKAGES[@]}" | sha256sum | cut -c1-16)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  py312=$(find_python312)
  echo "gpu_dryrun: building $env_dir with $("$py312" --version) and the device's packages (once; a few GB)"
  [[ -x $env_dir/bin/python ]] || "$py312" -m venv "$env_dir"
  "$env_dir/bin/python" -m pip install -q --upgrade pip
  "$env_dir/bin/python" -m pip install -q "${DEVICE_PACKAGES[@]}"
  echo "$want" > "$stamp"
fi
for absent in jsonargparse simplejpeg rsd_pl; do  # the device lacks them: so must this environment
  if "$env_dir/bin/python" -I -c "import importlib.util as u, sys; sys.exit(u.find_spec('$absent') is None)"; then
    echo "gpu_dryrun: $env_dir has $absent, the device does not: $env_dir/bin/python -m pip uninstall $absent" >&2
    exit 1
  fi
done

echo "=== 1. reference and bench tests under $("$env_dir/bin/python" --version)"
PYTHONPATH="$PWD" "$env_dir/bin/python" -m pytest -q -p no:cacheprovider -m "not slow" -k "not real_libero" \
  tests/test_openvla_native.py tests/test_bench.py tests/test_budget.py

echo "=== 2. gpu_check.sh on the tiny checkpoint, bfloat16"
[[ -d ${GPU_CHECK_WHEELS:-.gpu_wheels} ]] || bash scripts/gpu_wheels.sh
export PYTHON="$env_dir/bin/python" GPU_CHECK_ALLOW_CPU=1 GPU_CHECK_WHEELS="${GPU_CHECK_WHEELS:-.gpu_wheels}"
export GPU_CHECK_DTYPE="${GPU_CHECK_DTYPE:-bfloat16}" GPU_CHECK_OUT="${GPU_CHECK_OUT:-runs/gpu_dryrun}"
export GPU_CHECK_CHUNKS="${GPU_CHECK_CHUNKS:-5}"
time bash scripts/gpu_check.sh "${1:-../shared/fixtures/openvla_oft/tiny_checkpoint}"
