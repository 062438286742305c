"""`python -m rsd_pl fit` (LightningCLI): run folder, TensorBoard, checkpoints, registry export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from rsd_pl.errors import RsdError
from rsd_pl.lit.cli import main, run
from rsd_pl.registry import Registry


def write_config(tmp_path: Path, **trainer) -> Path:
    """A fit config for the test stubs (tests/test_cli_stubs.py), run folder and registry in tmp_path."""
    config = {
        "model": {"class_path": "test_cli_stubs.TinyRegressionModule"},
        "data": {"class_path": "test_cli_stubs.TinyRegressionData"},
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 3,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            **trainer,
        },
        "run_dir": str(tmp_path / "runs" / "tiny"),
        "registry_root": str(tmp_path / "checkpoints"),
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_fit_logs_checkpoints_and_exports_the_best(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    cli = run(["--config", str(write_config(tmp_path))])
    run_dir = tmp_path / "runs" / "tiny"
    assert list(run_dir.glob("events.out.tfevents.*")), "no TensorBoard events"
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    best_ckpt = Path(cli.checkpoint.best_model_path)
    assert best_ckpt.parent == run_dir / "checkpoints" and best_ckpt.name.startswith("best-")

    art = Registry(tmp_path / "checkpoints").resolve("tiny@best")
    assert cli.exported is not None and art.spec == cli.exported.spec == "tiny@1"
    assert f"exported tiny@1 (best) -> {art.path}" in capsys.readouterr().out
    # the exported weights are exactly the best checkpoint's, with its validated metrics
    state = torch.load(best_ckpt, weights_only=True, map_location="cpu")["state_dict"]
    tensors = art.load_tensors()
    assert tensors.keys() == {"weight", "bias"}
    assert all(torch.equal(tensors[key], state[f"net.{key}"]) for key in tensors)
    assert art.metrics["val/loss"] == pytest.approx(float(cli.checkpoint.best_model_score))
    assert art.metrics["val/mae"] != 123.0  # validated value overrides the payload's
    assert art.metrics["train/steps"] == 24.0
    assert art.config == {"in_features": 4, "out_features": 1}
    assert art.lineage["data"] == "tiny-linear"
    assert art.lineage["checkpoint"] == str(best_ckpt.resolve())
    assert Path(art.lineage["run_config"]) == (run_dir / "config.yaml").resolve()
    assert art.lineage["resumed_from"] is None
    assert art.read_json("stats") == {"bias_true": 0.5}
    fit_config = art.read_json("fit_config")
    assert fit_config["model"]["class_path"] == "test_cli_stubs.TinyRegressionModule"
    assert fit_config["trainer"]["max_epochs"] == 3


def test_command_line_overrides_and_default_run_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path)
    data = yaml.safe_load(config.read_text())
    del data["run_dir"]
    config.write_text(yaml.safe_dump(data))
    argv = ["--config", str(config), "--trainer.max_epochs", "1", "--model.init_args.artifact_name", "other"]
    cli = run(argv)
    assert cli.trainer.global_step == 8
    assert cli.run_dir == Path("runs") / "other"
    assert list((tmp_path / "runs" / "other").glob("events.out.tfevents.*"))
    assert yaml.safe_load((tmp_path / "runs" / "other" / "config.yaml").read_text())["trainer"]["max_epochs"] == 1
    run([*argv, "--model.init_args.lr", "0.0"])  # a second run: version 2, worse or equal -> best stays
    registry = Registry(tmp_path / "checkpoints")
    assert registry.versions("other") == [1, 2]
    assert registry.resolve("other@latest").read_json("fit_config")["model"]["init_args"]["lr"] == 0.0


def test_export_can_be_disabled(tmp_path: Path) -> None:
    run(["--config", str(write_config(tmp_path, max_epochs=1)), "--export", "false"])
    assert not (tmp_path / "checkpoints").exists()


def test_no_validation_means_no_export_and_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RsdError, match="no best checkpoint .*'val/loss'"):
        run(["--config", str(write_config(tmp_path, max_epochs=1, limit_val_batches=0))])


def test_failed_export_is_raised(tmp_path: Path) -> None:
    with pytest.raises(RsdError, match="simulated failure"):
        run(["--config", str(write_config(tmp_path, max_epochs=1)), "--model.init_args.fail_export", "true"])


def test_model_without_export_protocol_is_refused(tmp_path: Path) -> None:
    argv = ["--config", str(write_config(tmp_path)), "--model", "lightning.pytorch.demos.boring_classes.BoringModel"]
    with pytest.raises(RsdError, match="BoringModel does not implement the export protocol: missing artifact_name"):
        run(argv)


def test_help_lists_options_and_bad_options_exit_2(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--trainer.max_steps", "--model", "--data", "--ckpt_path", "--run_dir", "--registry_root"):
        assert option in out, option
    assert main(["--trainer.max_stepz", "3"]) == 2
    assert "max_stepz" in capsys.readouterr().err


def test_model_help_shows_field_docs(capsys) -> None:
    assert main(["--model.help", "test_cli_stubs.TinyRegressionModule"]) == 0
    out = capsys.readouterr().out
    assert "--model.artifact_name" in out and "--model.lr" in out
    assert "Learning rate of plain SGD." in out  # the field docs of the class docstring


def test_fit_config_is_json_in_the_artifact(tmp_path: Path) -> None:
    run(["--config", str(write_config(tmp_path, max_epochs=1))])
    path = tmp_path / "checkpoints" / "tiny" / "v1" / "fit_config.json"
    assert json.loads(path.read_text())["registry_root"] == str(tmp_path / "checkpoints")
