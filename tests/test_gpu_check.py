"""scripts/gpu_check.sh and scripts/gpu_wheels.sh as the lent GPU machine will meet them (docs/gpu.md): refusals in
one line (no CUDA, a wheel folder named but missing, a version outside the tested ones), the wheelhouse installed
into a temporary folder ahead of the image's packages, and the CPU run on the tiny checkpoint writing every figure.
The Python 3.12 / device-versions run is scripts/gpu_dryrun.sh (docs/gpu.md has its output)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MODES = {"oft", "parallel", "ar", "ar_exit", "speculative"}
# What the GPU machine's image holds (the device tool's KINDS.md, as read on 2026-11-17), as pip names them.
IMAGE_PACKAGES = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy
seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def gpu_check(tmp_path: Path, *args: str, timeout: int = 120, **env: str) -> subprocess.CompletedProcess:
    """scripts/gpu_check.sh with this interpreter, output under tmp_path/out, no wheelhouse unless `env` names one."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_") and k != "OUT"}
    base.update(PYTHON=sys.executable, GPU_CHECK_OUT=str(tmp_path / "out"), GPU_CHECK_WHEELS=str(tmp_path / "none"),
                TMPDIR=str(tmp_path), OMP_NUM_THREADS="1")
    (tmp_path / "none").mkdir(exist_ok=True)  # an empty wheelhouse: the repo's own .gpu_wheels stays out of it
    return subprocess.run(["bash", "scripts/gpu_check.sh", *args], cwd=REPO, env={**base, **env},
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the refusal cannot happen")
def test_no_cuda_without_the_override_is_one_line_and_nothing_written(tmp_path) -> None:
    done = gpu_check(tmp_path)
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "gpu_check: no CUDA device (set GPU_CHECK_ALLOW_CPU=1 to test the script on a CPU)"]
    assert not (tmp_path / "out").exists()


def test_a_missing_wheel_folder_is_named(tmp_path) -> None:
    missing = tmp_path / "carried" / ".gpu_wheels"
    done = gpu_check(tmp_path, GPU_CHECK_ALLOW_CPU="1", GPU_CHECK_WHEELS=str(missing))
    assert done.returncode != 0
    (line,) = done.stderr.strip().splitlines()
    assert f"'{missing}'" in line and "missing" in line


def fake_wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel whose package only holds `__version__`."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": f'__version__ = "{version}"\n',
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


def test_wheels_go_ahead_of_the_image_and_versions_outside_the_tested_are_refused(tmp_path) -> None:
    """A carried transformers 4.46.0 replaces the interpreter's own (so a carried 5.23 would too) and is refused by
    name; the temporary install folder is removed afterwards."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    fake_wheel(wheels, "transformers", "4.46.0")
    done = gpu_check(tmp_path, GPU_CHECK_ALLOW_CPU="1", GPU_CHECK_WHEELS=str(wheels))
    assert done.returncode != 0, done.stdout
    assert done.stderr.strip().splitlines()[-1] == (
        "gpu_check: transformers 4.46.0 is outside the tested 5.17 to 5.23 (GPU_CHECK_ANY_VERSION=1 to run anyway)")
    assert not list(tmp_path.glob("gpu_check_site.*"))


def test_gpu_wheels_keeps_exactly_the_listed_wheels(tmp_path) -> None:
    """No wheel is needed beyond the image today: the folder is made, a stale wheel is removed, the total printed."""
    folder = tmp_path / "wheelhouse"
    folder.mkdir()
    fake_wheel(folder, "jsonargparse", "4.53.0")
    env = {**os.environ, "GPU_WHEELS_DIR": str(folder), "PYTHON": sys.executable}
    done = subprocess.run(["bash", "scripts/gpu_wheels.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "gpu_wheels: removing jsonargparse-4.53.0-py3-none-any.whl (not in the list)",
        f"gpu_wheels: 0 wheel(s), 0.0 MiB in {folder}"]
    assert list(folder.iterdir()) == []
    refused = subprocess.run(["bash", "scripts/gpu_wheels.sh", "--everything"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "unknown option '--everything'" in refused.stderr


def test_the_bench_path_imports_none_of_the_projects_packages_the_gpu_image_lacks(oft_fixture, tmp_path) -> None:
    """What gpu_check runs (bench --openvla, every mode, the forward costs) in a fresh interpreter: no module it
    imports comes from a dependency of pyproject.toml that the GPU image lacks (jsonargparse, simplejpeg, crc32c,
    LIBERO, ...), or the first GPU call would die on an import error. New dependencies are covered as they come."""
    argv = ["--openvla", str(oft_fixture / "tiny_checkpoint"), "--modes", *sorted(MODES), "--chunks", "1",
            "--warmup", "0", "--presets", "--forward_costs", "1", "--out", str(tmp_path / "bench.json")]
    code = (f"import json, sys; from rsd_pl.bench import main; main({argv!r}); "
            "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    modules = json.loads(done.stdout.strip().splitlines()[-1])
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    lacking = {canonical(re.split(r"[\[=<>!~ ;]", d)[0]) for d in dependencies} - IMAGE_PACKAGES
    assert {"jsonargparse", "simplejpeg"} <= lacking
    owners = importlib.metadata.packages_distributions()
    imported = {canonical(dist): module for module in modules for dist in owners.get(module, [])}
    assert {"torch", "transformers", "numpy"} <= set(imported)  # the module -> distribution map works
    assert {dist: imported[dist] for dist in lacking & set(imported)} == {}


def test_cpu_run_on_the_tiny_checkpoint_writes_every_figure(tmp_path, oft_fixture) -> None:
    """The whole script on CPU (allowed explicitly), both cases and the forward costs, a few chunks each: the JSON
    has every figure the GPU run must bring back, and they obey the identities of the setting."""
    done = gpu_check(tmp_path, str(oft_fixture / "tiny_checkpoint"), timeout=300, GPU_CHECK_ALLOW_CPU="1",
                     GPU_CHECK_CHUNKS="2", GPU_CHECK_WARMUP="0", GPU_CHECK_COST_OBS="2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {"worst.json", "best.json", "gpu_check.json", "summary.txt"}
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["device"] == "cpu" and summary["peak_memory_gib"] is None and summary["peak_host_memory_gib"] > 0
    assert summary["versions"]["torch"] == torch.__version__ and summary["chunks"] == 2
    for case in ("worst", "best"):
        latency = summary["latency_ms"][case]
        assert set(latency) == MODES
        assert all(0 < s["p50"] <= s["p95"] for s in latency.values())
        assert latency["ar"]["main_forwards"] == 8.0 and latency["oft"]["main_forwards"] == 1.0
    assert summary["latency_ms"]["best"]["speculative"]["main_forwards"] == 2.0  # every proposal accepted
    assert summary["latency_ms"]["worst"]["speculative"]["main_forwards"] == 8.0  # none accepted
    costs = summary["forward_costs_ms_p50"]
    assert set(costs) == {"prefill", "extend_1", "extend_2", "extend_7", "draft_forward", "parallel_head", "decode"}
    expected = (costs["draft_forward"] + costs["extend_2"] - costs["extend_1"]) / costs["extend_1"]
    assert summary["break_even_acceptance"]["draft"] == pytest.approx(expected)
    ceiling = summary["ceiling_over_ar_exit_by_exit_depth"]
    assert list(ceiling) == [str(depth) for depth in range(2, 9)]
    assert ceiling["2"] == pytest.approx({"draft": 1.0, "parallel": 1.0})  # depth 2: nothing proposed, ar's round
    assert summary["ceiling_best"] == {p: max(c[p] for c in ceiling.values()) for p in ("draft", "parallel")}
    text = (out / "summary.txt").read_text()
    assert "break-even acceptance: draft" in text and "best possible speedup over ar_exit" in text
