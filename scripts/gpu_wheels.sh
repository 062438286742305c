#!/usr/bin/env bash
# The wheelhouse for the lent GPU machine: the wheels scripts/gpu_check.sh needs beyond the machine's image, for its
# Python 3.12 on manylinux x86-64, downloaded here (the GPU machine reaches no registry) into an ignored folder that
# travels with the working tree (the device tool's `carry`). gpu_check.sh installs them into a temporary folder.
#   bash scripts/gpu_wheels.sh                 # what gpu_check needs: nothing today (see below)
#   bash scripts/gpu_wheels.sh --transformers  # also the project's transformers 5.23.0 + tokenizers 0.23.3 (fallback)
# Needed today: none. `python -m rsd_pl bench --openvla` imports torch, transformers, tokenizers, safetensors, peft,
# numpy, pillow and tqdm, all in the image; jsonargparse (fit's CLI) and simplejpeg (OFT's JPEG step of evaluation)
# are not imported on that path, and bench and the native OpenVLA tests pass on the image's transformers 5.17.0
# (scripts/gpu_dryrun.sh, docs/gpu.md). --transformers is the tested fallback if a later image's transformers is
# refused by gpu_check's version check.
# Idempotent: the folder ends up holding exactly the listed wheels (a rerun downloads nothing; others are removed).
# Fails above GPU_WHEELS_MAX_MIB (40): everything that travels with the working tree is limited to 64 MiB.
# Env: GPU_WHEELS_DIR (.gpu_wheels), PYTHON (a python with pip; default .venv/bin/python, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${GPU_WHEELS_DIR:-.gpu_wheels}" max_mib="${GPU_WHEELS_MAX_MIB:-40}"
py="${PYTHON:-}"
if [[ -z $py ]]; then
  if [[ -x .venv/bin/python ]]; then py=.venv/bin/python; else py=python3; fi
fi
wanted=()  # name==version of each wheel gpu_check needs beyond the device image
case "${1:-}" in
  "") ;;
  --transformers) wanted+=(transformers==5.23.0 tokenizers==0.23.3) ;;
  *) echo "gpu_wheels: unknown option '$1' (none, or --transformers)" >&2; exit 2 ;;
esac

mkdir -p "$dir"
for requirement in "${wanted[@]}"; do
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dir" "$requirement"
done
keep=" "
for requirement in "${wanted[@]}"; do  # wheel file names start with name-version (dashes in names become _)
  name="${requirement%%==*}" version="${requirement##*==}"
  keep+="${name//-/_}-$version- "
done
shopt -s nullglob
for wheel in "$dir"/*; do
  base=$(basename "$wheel")
  prefix=$(cut -d- -f1-2 <<<"$base")-
  [[ $keep == *" $prefix "* ]] || { echo "gpu_wheels: removing $base (not in the list)"; rm -f "$wheel"; }
done
wheels=("$dir"/*.whl)
bytes=0
for wheel in "${wheels[@]}"; do
  size=$(stat -c %s "$wheel")
  bytes=$((bytes + size))
  awk -v b="$size" -v n="$(basename "$wheel")" 'BEGIN { printf "  %8.1f MiB  %s\n", b / 1048576, n }'
done
awk -v c="${#wheels[@]}" -v b="$bytes" -v d="$dir" \
  'BEGIN { printf "gpu_wheels: %d wheel(s), %.1f MiB in %s\n", c, b / 1048576, d }'
if ((bytes > max_mib * 1048576)); then
  echo "gpu_wheels: $dir holds more than $max_mib MiB; the working tree and everything carried travel in 64 MiB" >&2
  exit 1
fi
