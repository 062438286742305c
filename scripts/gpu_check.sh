#!/usr/bin/env bash
# GPU check of RSD on the native OpenVLA-OFT at 7B: one command, a few minutes on one GPU, nothing downloaded.
#   bash scripts/gpu_check.sh                                                  # real 7B architecture, random bf16 weights
#   bash scripts/gpu_check.sh /models/openvla-7b-oft-finetuned-libero-spatial  # OFT's own weights from a local directory
# Builds the native network once per case and times, round-robin on the same observations, one chunk of each mode:
# oft (OFT's L1 head: one bidirectional forward), parallel, ar, ar_exit (ar with early exit at 0.05), speculative.
# Two cases bracket speculation, because RSD's heads and draft are untrained here:
#   worst: exact rule, an untrained draft is never right -> 8 main forwards + the draft's;
#   best:  relaxed rule with tau 1e9, every proposal accepted -> 2 main forwards + the draft's.
# A trained RSD model lies between the two. Prints peak GPU memory and writes <out>/{worst,best}.json.
# Env: PYTHON (default .venv/bin/python, else python3), GPU_CHECK_OUT (runs/gpu_check), GPU_CHECK_CHUNKS (30),
# GPU_CHECK_ALLOW_CPU=1 runs it on a CPU (for testing the script with a tiny checkpoint; figures meaningless).
set -euo pipefail
cd "$(dirname "$0")/.."
source="${1:-random}"
py="${PYTHON:-}"
if [[ -z $py ]]; then
  if [[ -x .venv/bin/python ]]; then py=.venv/bin/python; else py=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${GPU_CHECK_OUT:-runs/gpu_check}" chunks="${GPU_CHECK_CHUNKS:-30}"
mkdir -p "$out"

"$py" - <<PY
import os, platform, sys
import torch, transformers
cuda = torch.cuda.is_available()
if not cuda and os.environ.get("GPU_CHECK_ALLOW_CPU") != "1":
    sys.exit("gpu_check: no CUDA device (set GPU_CHECK_ALLOW_CPU=1 to test the script on a CPU)")
device = torch.cuda.get_device_name(0) if cuda else "cpu"
print(f"gpu_check: {device}, python {platform.python_version()}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}, source: ${source}", flush=True)
PY

common=(--openvla "$source" --modes oft parallel ar ar_exit speculative --chunks "$chunks" --warmup 5 --presets)
echo "=== worst case for speculation (exact acceptance, untrained draft)"
"$py" -m rsd_pl bench "${common[@]}" --acceptance exact --draft_len 7 --out "$out/worst.json"
echo "=== best case for speculation (relaxed, tau 1e9: every proposed layer accepted)"
"$py" -m rsd_pl bench "${common[@]}" --acceptance relaxed --tau 1e9 --draft_len 7 --out "$out/best.json"
echo "gpu_check: done ($out/worst.json, $out/best.json)"
