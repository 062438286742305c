"""End to end: the real `fit --config configs/rfsq.yaml`, shrunk by command-line overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_cli_stubs import StepRecorder

from rsd_pl.lit.cli import main
from rsd_pl.models.rfsq import load_tokenizer
from rsd_pl.registry import Registry
from rsd_pl.registry import main as registry_main

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "rfsq.yaml"


def shrunk_fit_argv(tmp_path: Path, demo_file: Path, max_epochs: int) -> list[str]:
    return [
        "--config", str(CONFIG),
        "--data.init_args.data", str(demo_file),
        "--data.init_args.batch_size", "64",
        "--model.init_args.hidden", "32",
        "--model.init_args.num_plot_chunks", "1",
        "--trainer.accelerator", "cpu",
        "--trainer.max_epochs", str(max_epochs),
        "--trainer.limit_train_batches", "4",
        "--trainer.check_val_every_n_epoch", "1",
        "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false",
        "--run_dir", str(tmp_path / "runs" / "rfsq"),
        "--registry_root", str(tmp_path / "checkpoints"),
    ]  # fmt: skip


def test_fit_rfsq_config_exports_rfsq_best(tmp_path: Path, synthetic_demo_file, capsys) -> None:
    torch.manual_seed(0)
    assert main(shrunk_fit_argv(tmp_path, Path(synthetic_demo_file), max_epochs=2)) == 0
    run_dir = tmp_path / "runs" / "rfsq"
    assert list(run_dir.glob("events.out.tfevents.*")), "no TensorBoard events"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert "exported rfsq@1 (best) -> " in capsys.readouterr().out

    registry = Registry(tmp_path / "checkpoints")
    art = registry.resolve("rfsq@best")
    assert art.spec == "rfsq@1"
    assert registry.best_rule("rfsq") == ("val/mae_depth_8", "min")
    assert {f"val/mae_depth_{m}" for m in range(1, 9)} <= art.metrics.keys()
    assert len(art.lineage["data_fingerprint"]) == 16
    assert art.read_json("fit_config")["data"]["init_args"]["data"] == str(synthetic_demo_file)
    model, normalizer, loaded = load_tokenizer("rfsq@best", registry)
    assert loaded.spec == "rfsq@1" and model.num_layers == 8
    chunk = torch.zeros(1, 8, 7)
    assert model.tokenize(chunk).shape == (1, 8, 16, 8)  # codes [B, T, d, L]

    assert registry_main(["--root", str(tmp_path / "checkpoints"), "list"]) == 0
    assert "rfsq  1        latest,best" in capsys.readouterr().out


def test_fit_rfsq_interrupted_run_resumes_with_ckpt_path_last(tmp_path: Path, synthetic_demo_file) -> None:
    argv = [
        *shrunk_fit_argv(tmp_path, Path(synthetic_demo_file), max_epochs=2),
        "--trainer.callbacks+=test_cli_stubs.StepRecorder",
    ]  # fmt: skip
    StepRecorder.steps = []
    crash = ["--trainer.callbacks+=test_cli_stubs.CrashAtStep", "--trainer.callbacks.step=6"]
    with pytest.raises(RuntimeError, match="simulated crash at step 6"):
        main([*argv, *crash])
    last = tmp_path / "runs" / "rfsq" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True, map_location="cpu")["global_step"] == 4  # end of epoch 1
    assert StepRecorder.steps == list(range(7))
    StepRecorder.steps = []
    assert main([*argv, "--ckpt_path", "last"]) == 0
    assert StepRecorder.steps == [4, 5, 6, 7]  # continues at step 4, not 0
    assert torch.load(last, weights_only=True, map_location="cpu")["global_step"] == 8
    art = Registry(tmp_path / "checkpoints").resolve("rfsq@best")
    assert art.lineage["resumed_from"] == str(last.resolve())
