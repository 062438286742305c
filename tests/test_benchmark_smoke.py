"""scripts/benchmark.sh --smoke: the benchmark pipeline shrunken (task 0, 2 demos, a few training steps, one short
episode per mode) on real LIBERO, both observation settings, through the same script and configs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from rsd_pl.registry import Registry

pytestmark = [pytest.mark.libero, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


def _run(root: Path) -> str:
    env = {**os.environ, "BENCHMARK_ROOT": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "scripts/benchmark.sh", "--smoke", "libero_spatial"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout


def _episodes(root: Path, setting: str) -> list[dict]:
    path = root / "runs" / "libero_spatial" / setting / "eval" / "episodes.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_benchmark_smoke_both_settings_and_resume(tmp_path):
    _run(tmp_path)
    for setting, object_pos in (("privileged", True), ("images", False)):
        registry = Registry(tmp_path / "checkpoints" / "libero_spatial" / setting)
        main = registry.resolve("main@best")
        assert main.lineage["tokenizer"] == registry.resolve("rfsq@best").spec
        assert main.config["model"]["backbone"]["use_object_pos"] is object_pos  # the setting's observations
        assert sorted(e["mode"] for e in _episodes(tmp_path, setting)) == [
            "ar", "ar_exit", "l1", "parallel", "speculative"]
    table = (tmp_path / "runs" / "libero_spatial" / "benchmark.md").read_text()
    assert "privileged: success (95% CI)" in table and "images: success (95% CI)" in table
    assert "## Per task: images" in table and (tmp_path / "runs" / "libero_spatial" / "benchmark.png").is_file()
    # an interrupted setting (nothing exported, run folders with last.ckpt) resumes; the other is reused
    shutil.rmtree(tmp_path / "checkpoints" / "libero_spatial" / "images")
    second = _run(tmp_path)
    assert second.count("resuming the interrupted run") == 2 and second.count("skipped, ") == 2
    assert Registry(tmp_path / "checkpoints" / "libero_spatial" / "images").resolve("main@best")
    assert len(_episodes(tmp_path, "privileged")) == len(_episodes(tmp_path, "images")) == 5
