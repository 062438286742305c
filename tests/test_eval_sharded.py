"""`eval --devices 2` on CPU: two Lightning processes share the episodes, their logs are merged into one
episodes.jsonl and one report; `--num_envs 2` inside a rank works under DDP too. Real LIBERO, tiny models."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_eval_loop import _tiny_registry

pytestmark = [pytest.mark.libero, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


def eval_subprocess(argv: list[str]) -> subprocess.CompletedProcess:
    """DDP relaunches `sys.argv` per rank, so it must run as `python -m rsd_pl eval`, not in pytest."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "rsd_pl", "eval", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


def test_two_devices_share_episodes_and_merge_one_report(tmp_path):
    registry = tmp_path / "checkpoints"
    _tiny_registry(registry)
    out = tmp_path / "eval"
    argv = ["--registry", str(registry), "--main", "main@1", "--draft", "null", "--modes", "[ar,parallel]",
            "--tasks", "0", "--num_trials", "4", "--max_steps", "8", "--camera_size", "16", "--videos_per_task", "0",
            "--accelerator", "cpu", "--devices", "2", "--num_envs", "2", "--progress_bar", "false",
            "--out", str(out)]
    done = eval_subprocess(argv)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-4000:]
    records = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert sorted((r["trial"], r["mode"]) for r in records) == sorted(
        (trial, mode) for trial in range(4) for mode in ("ar", "parallel"))
    assert not list(out.glob("episodes.rank*.jsonl"))  # merged and removed
    report = json.loads((out / "report.json").read_text())
    assert report["modes"]["ar"]["trials"] == 4 and report["modes"]["parallel"]["trials"] == 4
    assert all(r["deviation_mean"] is not None for r in records if r["mode"] == "parallel")
    assert json.loads((out / "eval_info.json").read_text())["aggregated"]["pc_success"] == 0.0
