"""RSD on the native OpenVLA-OFT backbone, end to end on CPU with the fixture's tiny checkpoint (real layout):
the 7B configs shrunk to a few CPU steps: fit rfsq -> fit main (LoRA) -> fit draft -> export -> eval one short
real-LIBERO episode in the oft, parallel, ar and speculative modes. About two minutes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rsd_pl.registry import Registry

pytestmark = [pytest.mark.libero, pytest.mark.slow, pytest.mark.usefixtures("oft_fixture")]
REPO = Path(__file__).resolve().parents[1]
CPU_TRAINER = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
               "--trainer.precision", "32-true", "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
               "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
               "--trainer.enable_progress_bar", "false", "--data.init_args.batch_size", "2",
               "--data.init_args.num_workers", "0"]


def rsd(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    done = subprocess.run([sys.executable, "-m", "rsd_pl", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, f"rsd_pl {args[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done.stdout + done.stderr


def test_openvla_fit_export_and_eval_every_mode(tmp_path, oft_fixture):
    ckpt, registry, runs = oft_fixture / "tiny_checkpoint", tmp_path / "checkpoints", tmp_path / "runs"
    demos = tmp_path / "demos" / "synthetic_demo.hdf5"
    rsd("synthetic", "--out", str(demos), "--num_demos", "6", "--image_size", "64")
    data = ["--data.init_args.data", str(demos), "--registry_root", str(registry)]
    rsd("fit", "--config", "configs/rfsq.yaml", *data, "--run_dir", str(runs / "rfsq"),
        "--trainer.max_steps", "3", "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar",
        "false", "--data.init_args.drop_noops", "true")
    backbone = "--model.init_args.network.backbone."
    rsd("fit", "--config", "configs/main_openvla.yaml", *data, *CPU_TRAINER, "--run_dir", str(runs / "main"),
        f"{backbone}path", str(ckpt), f"{backbone}torch_dtype", "float32", f"{backbone}lora_rank", "4")
    rsd("fit", "--config", "configs/draft_openvla.yaml", *data, *CPU_TRAINER, "--run_dir", str(runs / "draft"),
        "--model.init_args.hidden", "32", "--model.init_args.heads", "2", "--model.init_args.mlp", "64")

    reg = Registry(registry)
    main, draft = reg.resolve("main@best"), reg.resolve("draft@best")
    assert draft.lineage["main"] == main.spec and main.config["model"]["backbone"]["kind"] == "openvla"
    exported = main.load_tensors()
    assert any("lora_" in k for k in exported)  # LoRA travels with the artifact ...
    assert not [k for k in exported if k.startswith("backbone.vla.") and "lora_" not in k]  # ... the base does not
    assert reg.resolve("rfsq@best").lineage["data_fingerprint"] == main.lineage["data_fingerprint"]

    out = tmp_path / "eval"
    rsd("eval", "--config", "configs/eval_openvla_libero_spatial.yaml", "--registry", str(registry),
        "--oft_dtype", "float32", "--accelerator", "cpu", "--tasks", "0", "--num_trials", "1", "--max_steps", "16",
        "--videos_per_task", "0", "--progress_bar", "false", "--out", str(out),
        "--modes", "[oft,parallel,ar,speculative]")
    records = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert sorted(r["mode"] for r in records) == ["ar", "oft", "parallel", "speculative"]
    for record in records:
        assert record["status"] in ("success", "timeout"), record.get("error")
        assert record["chunks"] == 2 and record["steps"] == 16  # two 8-step chunks, executed open loop
    by_mode = {r["mode"]: r for r in records}
    assert by_mode["oft"]["main_forwards"] == 2 and by_mode["ar"]["main_forwards"] == 16
    assert by_mode["speculative"]["draft_forwards"] > 0
    assert (out / "report.md").is_file()
    # each record names what decoded it: OFT's checkpoint by folder and weight files, RSD's models by spec and sha256
    assert list(by_mode["oft"]["models"]) == ["oft"] and str(ckpt.resolve()) in by_mode["oft"]["models"]["oft"]
    assert by_mode["oft"]["models"]["oft"].count(".safetensors ") >= 1
    assert set(by_mode["ar"]["models"]) == {"main", "tokenizer"}
    assert set(by_mode["speculative"]["models"]) == {"main", "tokenizer", "draft"}
    assert by_mode["ar"]["models"]["main"].startswith(f"{main.spec} sha256:")
