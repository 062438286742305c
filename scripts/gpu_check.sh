#!/usr/bin/env bash
# GPU check of RSD on the native OpenVLA-OFT at 7B: one command, a few minutes on one GPU, nothing downloaded.
#   bash scripts/gpu_check.sh                          # real 7B architecture, random bf16 weights
#   bash scripts/gpu_check.sh /models/oft-spatial      # OFT's own weights from a local checkpoint directory
# Builds the native network once per case and times, round-robin on the same observations, one chunk of each mode:
# oft (OFT's L1 head: one bidirectional forward), parallel, ar, ar_exit (ar with early exit at 0.05), speculative.
# Two cases bracket speculation, because RSD's heads and draft are untrained here:
#   worst: exact rule, an untrained draft is never right -> 8 main forwards + the draft's;
#   best:  relaxed rule with tau 1e9, every proposal accepted -> 2 main forwards + the draft's.
# The worst case also times each forward as `budget` does (prefill, extend with 1 / 2 / 7 blocks, draft forward,
# parallel head) and derives the break-even acceptance and the ceiling of speculation over ar_exit per exit depth.
# Writes <out>/{worst,best}.json (bench's reports), <out>/gpu_check.json (every figure in one place) and
# <out>/summary.txt; <out> is $GPU_CHECK_OUT, else $OUT (the device tool's folder that comes back), else runs/gpu_check.
# Runs from the source tree (PYTHONPATH), never from a venv install: on the GPU machine with its own python3.
# Wheels the machine's image lacks (scripts/gpu_wheels.sh, docs/gpu.md) are installed into a temporary folder first.
# Env: PYTHON (default .venv/bin/python, else python3), GPU_CHECK_WHEELS (wheel folder; default .gpu_wheels when
# present; named but missing is an error), GPU_CHECK_CHUNKS (50 timed chunks per mode and case), GPU_CHECK_WARMUP (5),
# GPU_CHECK_COST_OBS (30 observations for the forward costs), GPU_CHECK_DTYPE (auto: bfloat16 on CUDA, float32 on CPU),
# GPU_CHECK_ALLOW_CPU=1 (run on a CPU, for testing the script with a tiny checkpoint; figures meaningless),
# GPU_CHECK_ANY_VERSION=1 (run outside the tested versions: python 3.11-3.12, torch 2.11-2.13, transformers 5.17-5.23).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
source="${1:-random}"
py="${PYTHON:-}"
if [[ -z $py ]]; then
  if [[ -x .venv/bin/python ]]; then py=.venv/bin/python; else py=python3; fi
fi
out="${GPU_CHECK_OUT:-${OUT:-runs/gpu_check}}"
chunks="${GPU_CHECK_CHUNKS:-50}" warmup="${GPU_CHECK_WARMUP:-5}" cost_obs="${GPU_CHECK_COST_OBS:-30}"

"$py" -c 'import os, sys, torch
if not torch.cuda.is_available() and os.environ.get("GPU_CHECK_ALLOW_CPU") != "1":
    sys.exit("gpu_check: no CUDA device (set GPU_CHECK_ALLOW_CPU=1 to test the script on a CPU)")'

wheels="${GPU_CHECK_WHEELS:-}"
if [[ -n $wheels && ! -d $wheels ]]; then
  echo "gpu_check: wheel folder '$wheels' (GPU_CHECK_WHEELS) is missing: build it with scripts/gpu_wheels.sh," \
    "carry it" >&2
  exit 1
fi
[[ -z $wheels && -d .gpu_wheels ]] && wheels=.gpu_wheels
site=""
if [[ -n $wheels ]] && compgen -G "$wheels/*.whl" >/dev/null; then
  site=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_site.XXXXXX")
  trap 'rm -rf "$site"' EXIT
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl
fi
export PYTHONPATH="$PWD${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

"$py" - "$source" "${site:+$wheels}" <<'PY'
import os, platform, re, sys
import torch, transformers
tested = {"python": (platform.python_version(), (3, 11), (3, 12)), "torch": (torch.__version__, (2, 11), (2, 13)),
          "transformers": (transformers.__version__, (5, 17), (5, 23))}
for name, (version, low, high) in tested.items():
    major_minor = tuple(map(int, re.match(r"(\d+)\.(\d+)", version).groups()))
    if not low <= major_minor <= high and os.environ.get("GPU_CHECK_ANY_VERSION") != "1":
        sys.exit(f"gpu_check: {name} {version} is outside the tested {'.'.join(map(str, low))} to "
                 f"{'.'.join(map(str, high))} (GPU_CHECK_ANY_VERSION=1 to run anyway)")
device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
print(f"gpu_check: {device}, python {platform.python_version()}, torch {torch.__version__}, transformers "
      f"{transformers.__version__}, source: {sys.argv[1]}, wheels: {sys.argv[2] or 'none (the image only)'}",
      flush=True)
PY

mkdir -p "$out"
common=(--openvla "$source" --modes oft parallel ar ar_exit speculative --chunks "$chunks" --warmup "$warmup" --presets
        --dtype "${GPU_CHECK_DTYPE:-auto}")
echo "=== $(date +%T) worst case for speculation (exact acceptance, untrained draft), then budget's forward costs"
"$py" -m rsd_pl bench "${common[@]}" --acceptance exact --draft_len 7 --forward_costs "$cost_obs" \
  --out "$out/worst.json"
echo "=== $(date +%T) best case for speculation (relaxed, tau 1e9: every proposed layer accepted)"
"$py" -m rsd_pl bench "${common[@]}" --acceptance relaxed --tau 1e9 --draft_len 7 --out "$out/best.json"

"$py" - "$out" "$((SECONDS - start))" <<'PY'
import datetime, json, platform, sys
from pathlib import Path
import numpy, tokenizers, torch, transformers
out, wall_s = Path(sys.argv[1]), int(sys.argv[2])
cases = {case: json.loads((out / f"{case}.json").read_text()) for case in ("worst", "best")}
result = {case: report["results"][0] for case, report in cases.items()}
costs = result["worst"]["forward_costs"]
peaks = [r.get("peak_memory_gib") for r in result.values()]
summary = {
    "date": datetime.date.today().isoformat(), "wall_s": wall_s, "setting": result["worst"]["setting"],
    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    "weights": result["worst"]["weights"], "chunks": cases["worst"]["config"]["chunks"],
    "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
                 "transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
    "peak_memory_gib": None if None in peaks else max(peaks),
    "peak_host_memory_gib": max(r["peak_host_memory_gib"] for r in result.values()),
    "latency_ms": {case: {mode: {"p50": s["latency_p50_ms"], "p95": s["latency_p95_ms"],
                                 "main_forwards": s["main_forwards_per_chunk"]} for mode, s in r["modes"].items()}
                   for case, r in result.items()},
    "speedup_speculative_over_ar_exit_p50": {case: r["speedup_speculative_over_ar_exit_p50"]
                                             for case, r in result.items()},
    "forward_costs_ms_p50": costs["costs_ms_p50"], "break_even_acceptance": costs["break_even_acceptance"],
    "ceiling_over_ar_exit_by_exit_depth": costs["ceiling_over_ar_exit_by_exit_depth"],
    "ceiling_best": costs["ceiling_best"],
}
peak = "n/a (CPU)" if summary["peak_memory_gib"] is None else f"{summary['peak_memory_gib']:.1f} GiB"
lines = [f"gpu_check {summary['date']}: {summary['device']}, {summary['setting']}, weights {summary['weights']}",
         "versions: " + ", ".join(f"{k} {v}" for k, v in summary["versions"].items()),
         f"peak GPU memory {peak}, host {summary['peak_host_memory_gib']:.1f} GiB; wall {wall_s} s",
         f"chunk latency ms, p50 / p95 ({summary['chunks']} chunks per mode and case):"]
for case, modes in summary["latency_ms"].items():
    lines.append(f"  {case:<6}" + "  ".join(f"{m} {s['p50']:.1f} / {s['p95']:.1f}" for m, s in modes.items()))
lines += ["speculative over ar_exit, p50: " + ", ".join(
              f"{case} {x:.2f}x" for case, x in summary["speedup_speculative_over_ar_exit_p50"].items()),
          "forward costs, p50 ms: " + ", ".join(f"{k} {v:.2f}" for k, v in summary["forward_costs_ms_p50"].items()),
          "break-even acceptance: " + ", ".join(f"{k} {v:.1%}" for k, v in summary["break_even_acceptance"].items()),
          "ceiling over ar_exit by exit depth (draft / parallel): " + ", ".join(
              f"{d}: {c['draft']:.2f}x / {c['parallel']:.2f}x"
              for d, c in summary["ceiling_over_ar_exit_by_exit_depth"].items()),
          "best possible speedup over ar_exit (the largest over exit depths): "
          + ", ".join(f"{k} {v:.2f}x" for k, v in summary["ceiling_best"].items())]
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2))
(out / "summary.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
print(f"gpu_check: done ({out}/gpu_check.json, summary.txt, worst.json, best.json)")
PY
