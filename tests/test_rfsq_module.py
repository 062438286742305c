"""RFSQModule + ActionChunkDataModule under Lightning: metrics, figure, checkpoint, export, the real config."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rsd_pl.errors import RsdError
from rsd_pl.lit.action_data import ActionChunkDataModule
from rsd_pl.lit.callbacks import export_to_registry
from rsd_pl.lit.cli import run
from rsd_pl.lit.rfsq_module import RFSQModule
from rsd_pl.models.rfsq import load_tokenizer
from rsd_pl.registry import Registry


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _fit(tmp_path, data_file, **module_args) -> tuple[L.Trainer, RFSQModule, ActionChunkDataModule]:
    torch.manual_seed(0)
    module = RFSQModule(hidden=32, **module_args)
    data = ActionChunkDataModule(str(data_file), batch_size=64, val_fraction=0.2)
    trainer = L.Trainer(
        max_steps=20,
        log_every_n_steps=5,
        logger=TensorBoardLogger(str(tmp_path), name="", version=""),
        default_root_dir=str(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, data)
    return trainer, module, data


def test_fit_logs_metrics_figure_and_table(tmp_path, synthetic_demo_file, one_thread, capsys):
    trainer, module, data = _fit(tmp_path, synthetic_demo_file)
    metrics = module.val_metrics
    for depth in range(1, 9):
        assert metrics[f"val/mae_depth_{depth}"] >= 0 and metrics[f"val/mae_raw_depth_{depth}"] >= 0
        assert 1.0 <= metrics[f"val/perplexity_layer_{depth}"] <= 7.0
    assert 0 < metrics["val/mae_uniform256"] <= 1 / 256
    assert "val/loss" in trainer.callback_metrics
    assert "RFSQ reconstruction MAE" in capsys.readouterr().out
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    assert "val/reconstruction" in events.Tags()["images"]
    assert {"train/loss", "val/mae_depth_8", "val/mae_raw_depth_1"} <= set(events.Tags()["scalars"])


def test_checkpoint_keeps_stats_and_export_round_trips(tmp_path, synthetic_demo_file, one_thread):
    trainer, module, data = _fit(tmp_path, synthetic_demo_file)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    restored = RFSQModule.load_from_checkpoint(tmp_path / "m.ckpt")
    assert restored.normalizer_stats == data.normalizer.to_dict()
    assert restored.data_fingerprint == data.fingerprint()
    payload = restored.export_payload()
    assert set(payload) == {"tensors", "config", "metrics", "lineage", "extra_json"}
    registry = Registry(tmp_path / "checkpoints")
    art = export_to_registry(restored, registry, {}, {}, {})
    ae, normalizer, loaded = load_tokenizer("rfsq@best", tmp_path / "checkpoints")
    assert loaded.spec == art.spec and loaded.lineage["data_fingerprint"] == data.fingerprint()
    chunks = data.val_set.chunks[:16]
    module.ae.eval()
    with torch.no_grad():
        codes = module.ae.tokenize(chunks)
        assert torch.equal(ae.tokenize(chunks), codes)
        assert torch.equal(ae.decode_codes(codes[..., :3]), module.ae.decode_codes(codes[..., :3]))
    assert normalizer.to_dict() == data.normalizer.to_dict()


def test_chunk_len_mismatch_is_an_error(tmp_path, synthetic_demo_file):
    module = RFSQModule(chunk_len=4, hidden=16)
    data = ActionChunkDataModule(str(synthetic_demo_file), chunk_len=8)
    trainer = L.Trainer(max_steps=1, logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path))
    with pytest.raises(RsdError, match="chunk_len"):
        trainer.fit(module, data)


def test_bad_module_args():
    with pytest.raises(RsdError, match="model.loss"):
        RFSQModule(loss="l3")
    with pytest.raises(RsdError, match="quantize_dropout"):
        RFSQModule(quantize_dropout=1.5)


def test_real_config_shrunk(tmp_path, synthetic_demo_file, one_thread):
    """configs/rfsq.yaml through `python -m rsd_pl fit`, one tiny epoch: trains, logs, exports rfsq@best."""
    cli = run([
        "--config", "configs/rfsq.yaml",
        "--data.init_args.data", str(synthetic_demo_file),
        "--trainer.max_epochs", "1",
        "--trainer.check_val_every_n_epoch", "1",
        "--trainer.enable_progress_bar", "false",
        "--model.init_args.hidden", "32",
        "--run_dir", str(tmp_path / "run"),
        "--registry_root", str(tmp_path / "checkpoints"),
    ])
    assert cli.exported is not None and cli.exported.name == "rfsq"
    ae, normalizer, art = load_tokenizer("rfsq@best", tmp_path / "checkpoints")
    assert ae.hidden == 32 and "val/mae_depth_8" in art.metrics
    assert list((tmp_path / "run").glob("events.out.tfevents.*"))
