"""`fit ... --ckpt_path last` continues an interrupted run from its step, in the same run folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from test_cli import write_config
from test_cli_stubs import StepRecorder

from rsd_pl.lit.cli import run
from rsd_pl.registry import Registry

RECORDER = {"class_path": "test_cli_stubs.StepRecorder"}


def test_crashed_run_resumes_from_last_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    crash = {"class_path": "test_cli_stubs.CrashAtStep", "init_args": {"step": 13}}
    config = write_config(tmp_path, callbacks=[RECORDER, crash])  # 8 steps per epoch, 3 epochs
    StepRecorder.steps = []
    with pytest.raises(RuntimeError, match="simulated crash at step 13"):
        run(["--config", str(config)])
    run_dir = tmp_path / "runs" / "tiny"
    assert StepRecorder.steps == list(range(14))
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()  # written at the end of epoch 1 (step 8)
    assert not (tmp_path / "checkpoints").exists()  # a crashed run exports nothing

    data = yaml.safe_load(config.read_text())
    data["trainer"]["callbacks"] = [RECORDER]
    config.write_text(yaml.safe_dump(data))
    StepRecorder.steps = []
    cli = run(["--config", str(config), "--ckpt_path", "last"])
    assert StepRecorder.steps == list(range(8, 24))  # continues at step 8, not 0
    assert cli.trainer.global_step == 24
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2  # both runs log to one folder
    art = Registry(tmp_path / "checkpoints").resolve("tiny@best")
    assert art.lineage["resumed_from"] == str((run_dir / "checkpoints" / "last.ckpt").resolve())


def test_ckpt_path_last_without_a_checkpoint_starts_from_scratch(tmp_path: Path) -> None:
    config = write_config(tmp_path, max_epochs=1, callbacks=[RECORDER])
    StepRecorder.steps = []
    with pytest.warns(UserWarning, match="no last checkpoint available"):
        run(["--config", str(config), "--ckpt_path", "last"])
    assert StepRecorder.steps == list(range(8))


def test_finished_run_extended_with_more_epochs(tmp_path: Path) -> None:
    config = write_config(tmp_path, max_epochs=1, callbacks=[RECORDER])
    run(["--config", str(config)])
    StepRecorder.steps = []
    cli = run(["--config", str(config), "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert StepRecorder.steps == list(range(8, 16))
    assert cli.trainer.global_step == 16
    assert Registry(tmp_path / "checkpoints").versions("tiny") == [1, 2]
