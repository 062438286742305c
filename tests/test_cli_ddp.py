"""`fit` under DDP (2 CPU processes, gloo): only rank 0 exports, and nothing hangs after fit."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from test_cli import write_config

from rsd_pl.registry import Registry

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent


def fit_subprocess(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """DDP relaunches `sys.argv` per rank, so it must run as `python -m rsd_pl fit`, not in pytest."""
    with socket.socket() as probe:  # a port free right now, so ranks of parallel test runs never meet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    command = [sys.executable, "-m", "rsd_pl", "fit", *argv]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_ddp_two_ranks_export_once(tmp_path: Path) -> None:
    config = write_config(tmp_path, max_epochs=2, devices=2, strategy="ddp")
    done = fit_subprocess(["--config", str(config)], tmp_path)
    # A rank used to abort at exit ('terminate called without an active exception', 2 runs in 5) until fit
    # closed the process group (rsd_pl.lit.cli._close_process_group); one loud retry stays as a guard.
    if done.returncode != 0:
        warnings.warn(f"DDP fit failed once, retrying in a fresh folder:\n{done.stderr[-2000:]}", stacklevel=1)
        tmp_path = tmp_path / "retry"
        tmp_path.mkdir()
        config = write_config(tmp_path, max_epochs=2, devices=2, strategy="ddp")
        done = fit_subprocess(["--config", str(config)], tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("exported tiny@1 (best)") == 1, done.stdout[-3000:]
    registry = Registry(tmp_path / "checkpoints")
    assert registry.versions("tiny") == [1]
    assert registry.resolve("tiny@best").lineage["checkpoint"].endswith(".ckpt")
