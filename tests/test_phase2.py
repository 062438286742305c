"""Phase 2 through Lightning at micro sizes: fit a few steps, export to a registry, reload in a fresh
process (bit-identical logits), and the clear errors (tokenizer shapes, lineage mismatch)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from rsd_pl.data.libero_hdf5 import read_episodes
from rsd_pl.data.normalize import ActionNormalizer
from rsd_pl.errors import RsdError
from rsd_pl.lit.callbacks import export_to_registry
from rsd_pl.lit.draft_module import DraftModule
from rsd_pl.lit.main_module import MainModule
from rsd_pl.lit.vla_data import VLADataModule
from rsd_pl.models.backbone import BackboneConfig
from rsd_pl.models.draft import load_draft
from rsd_pl.models.main_model import MainModel, MainModelConfig, load_main
from rsd_pl.models.rfsq import ActionRFSQAE
from rsd_pl.registry import Registry

MICRO = dict(vision_hidden=16, vision_layers=1, vision_heads=2, vision_mlp=32,
             hidden=32, layers=2, heads=2, kv_heads=1, mlp=64)


@pytest.fixture(scope="module")
def registry(tmp_path_factory, synthetic_demo_file) -> Registry:
    """A registry holding one tokenizer (random-init AE, real stats of the demo file)."""
    registry = Registry(tmp_path_factory.mktemp("registry"))
    torch.manual_seed(0)
    ae = ActionRFSQAE(hidden=16, num_hidden=1)
    actions = np.concatenate([e.actions for e in read_episodes(str(synthetic_demo_file), image_keys=[])])
    stats = ActionNormalizer.fit(actions, 7).to_dict()
    registry.export("rfsq", {k: v.contiguous() for k, v in ae.state_dict().items()}, config={"model": ae.config},
                    metrics={}, lineage={}, extra_json={"stats": stats})
    return registry


def datamodule(demo_file, registry: Registry) -> VLADataModule:
    return VLADataModule(str(demo_file), tokenizer="rfsq@latest", registry_root=str(registry.root),
                         image_size=32, use_object_pos=True, val_fraction=0.25, batch_size=16)


def network(num_layers: int = 8) -> MainModelConfig:
    backbone = BackboneConfig(image_size=32, patch_size=8, image_pool=2, max_text_len=8, extra=MICRO,
                              use_object_pos=True)
    return MainModelConfig(backbone=backbone, num_layers=num_layers)


def fit(module: L.LightningModule, data: VLADataModule, steps: int = 2) -> L.Trainer:
    trainer = L.Trainer(max_steps=steps, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    trainer.validate(module, datamodule=data, verbose=False)
    return trainer


def test_batch_contract(synthetic_demo_file, registry):
    data = datamodule(synthetic_demo_file, registry)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["images"].shape == (16, 1, 3, 32, 32) and batch["images"].dtype == torch.float32
    assert 0 <= batch["images"].min() and batch["images"].max() <= 1
    assert batch["proprio"].shape == (16, 8) and batch["object_pos"].shape == (16, 6)
    assert batch["actions"].shape == (16, 8, 7) and batch["codes"].shape == (16, 8, 16, 8)
    assert len(batch["instruction"]) == 16
    tokenizer = data.load_tokenizer()
    assert tokenizer.spec == "rfsq@1"
    assert torch.equal(tokenizer.model.tokenize(batch["actions"]), batch["codes"])


def test_more_layers_than_tokenizer_raises(synthetic_demo_file, registry):
    module = MainModule(network(num_layers=9))
    with pytest.raises(RsdError, match="num_layers=9 but tokenizer rfsq@1 has only 8"):
        fit(module, datamodule(synthetic_demo_file, registry), steps=1)


def test_image_size_mismatch_raises(synthetic_demo_file, registry):
    data = datamodule(synthetic_demo_file, registry)
    data.image_size = 64
    with pytest.raises(RsdError, match="image_size=32 but the data gives 64"):
        fit(MainModule(network()), data, steps=1)


RELOAD = """
import sys, torch
from rsd_pl.registry import Registry
from rsd_pl.models.main_model import load_main
from rsd_pl.models.draft import load_draft
registry = Registry(sys.argv[1])
batch = torch.load(sys.argv[2])
main, _ = load_main("main@latest", registry)
draft, _ = load_draft("draft@latest", registry, main_spec="main@latest")
with torch.no_grad():
    out = main(batch, batch["codes"])
    drafted = draft(out.query_hidden, batch["codes"])
torch.save({"layer_logits": out.layer_logits, "l1": out.l1_actions, "draft": drafted}, sys.argv[3])
"""


def test_fit_export_reload_bit_identical_and_lineage(synthetic_demo_file, registry, tmp_path):
    torch.manual_seed(0)
    data = datamodule(synthetic_demo_file, registry)
    main_module = MainModule(network())
    fit(main_module, data)
    assert set(main_module.val_metrics) >= {"val/token_acc_layer_8", "val/l1_ar", "val/l1_regression"}
    main_art = export_to_registry(main_module, registry, {}, {}, {})
    assert main_art.lineage["tokenizer"] == "rfsq@1" and main_art.lineage["data_fingerprint"]
    frames = read_episodes(synthetic_demo_file)[0].images["agentview_rgb"]  # (N, S0, S0, 3)
    assert main_art.config["data"]["camera_size"] == frames.shape[1]  # eval renders at this side

    draft_module = DraftModule(main=main_art.spec, registry_root=str(registry.root), hidden=16, heads=2, mlp=32)
    fit(draft_module, data)
    assert "val/agreement_layer_2" in draft_module.val_metrics
    draft_art = export_to_registry(draft_module, registry, {}, {}, {})
    assert draft_art.lineage["main"] == main_art.spec

    batch = next(iter(data.val_dataloader()))
    main, _ = load_main(main_art.spec, registry)
    with torch.no_grad():
        out = main(batch, batch["codes"])
        drafted = load_draft(draft_art.spec, registry)[0](out.query_hidden, batch["codes"])
    torch.save(batch, tmp_path / "batch.pt")
    subprocess.run([sys.executable, "-c", RELOAD, str(registry.root), str(tmp_path / "batch.pt"),
                    str(tmp_path / "out.pt")], check=True)
    fresh = torch.load(tmp_path / "out.pt")
    assert torch.equal(fresh["layer_logits"], out.layer_logits)
    assert torch.equal(fresh["l1"], out.l1_actions)
    assert torch.equal(fresh["draft"], drafted)

    # a second main model: the draft was not distilled from it
    registry.export("main", main_art.load_tensors(), config=main_art.config, metrics=main_art.metrics,
                    lineage=main_art.lineage)
    with pytest.raises(RsdError, match=f"distilled from '{main_art.spec}'"):
        load_draft(draft_art.spec, registry, main_spec="main@latest")


def phase2_config(tmp_path, demo_file, registry: Registry, model: dict, name: str):
    """A fit config for the CLI: micro main or draft, 2 steps per epoch, the fixture's registry."""
    config = {
        "seed_everything": 0,
        "run_dir": str(tmp_path / "runs" / name),
        "registry_root": str(registry.root),
        "trainer": {"accelerator": "cpu", "max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1,
                    "enable_progress_bar": False, "logger": False},
        "model": model,
        "data": {"class_path": "rsd_pl.lit.vla_data.VLADataModule",
                 "init_args": {"data": str(demo_file), "tokenizer": "rfsq@1", "image_size": 32,
                               "use_object_pos": True, "val_fraction": 0.25, "batch_size": 16}},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_main_and_draft_resume_with_ckpt_path_last(synthetic_demo_file, registry, tmp_path):
    """`fit --ckpt_path last` continues main and draft runs from their step (2 steps per epoch)."""
    from rsd_pl.lit.cli import run

    main_model = {"class_path": "rsd_pl.lit.main_module.MainModule",
                  "init_args": {"network": dataclasses.asdict(network())}}
    main_config = phase2_config(tmp_path, synthetic_demo_file, registry, main_model, "main")
    first = run(["--config", str(main_config)])
    assert first.trainer.global_step == 2
    resumed = run(["--config", str(main_config), "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert resumed.trainer.global_step == 4 and resumed.trainer.current_epoch == 2
    main_spec = registry.resolve("main@latest").spec
    assert registry.resolve(main_spec).lineage["resumed_from"].endswith("last.ckpt")

    draft_model = {"class_path": "rsd_pl.lit.draft_module.DraftModule",
                   "init_args": {"main": main_spec, "hidden": 16, "layers": 1, "heads": 2, "mlp": 32}}
    draft_config = phase2_config(tmp_path, synthetic_demo_file, registry, draft_model, "draft")
    assert run(["--config", str(draft_config)]).trainer.global_step == 2
    resumed = run(["--config", str(draft_config), "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert resumed.trainer.global_step == 4
    assert registry.resolve("draft@latest").lineage["main"] == main_spec


def test_teacher_cache_returns_stored_rows_only_when_all_are_filled():
    from rsd_pl.lit.draft_module import TeacherCache

    cache = TeacherCache(list(range(6)))
    index = torch.tensor([4, 1])
    assert cache.lookup(index) is None
    query, logits = torch.randn(2, 8, 3), torch.randn(2, 7, 8, 16, 7)
    cache.store(index, query, logits)
    cached_query, cached_logits = cache.lookup(torch.tensor([1, 4]))
    assert torch.equal(cached_query, query.flip(0)) and torch.equal(cached_logits, logits.flip(0))
    assert cache.lookup(torch.tensor([1, 2])) is None  # sample 2 was never computed
    assert cache.nbytes() == 6 * (8 * 3 + 7 * 8 * 16 * 7) * 4


def test_draft_fit_with_teacher_cache_is_identical_and_skips_the_main_model(
        synthetic_demo_file, registry, monkeypatch):
    """Two epochs: with the cache, epoch 2 never runs the main model, and the draft's weights and
    metrics equal those of a fit that recomputes the main model every step."""
    torch.manual_seed(0)
    data = datamodule(synthetic_demo_file, registry)
    main_module = MainModule(network())
    fit(main_module, data)
    main_spec = export_to_registry(main_module, registry, {}, {}, {}).spec
    calls = []
    original = MainModel.forward
    monkeypatch.setattr(MainModel, "forward", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))

    def two_epochs(cache_teacher: bool) -> tuple[DraftModule, int]:
        calls.clear()
        L.seed_everything(0)
        module = DraftModule(main=main_spec, registry_root=str(registry.root), hidden=16, heads=2, mlp=32,
                             cache_teacher=cache_teacher)
        trainer = L.Trainer(max_epochs=2, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(module, datamodule=datamodule(synthetic_demo_file, registry))
        return module, len(calls)

    cached, cached_calls = two_epochs(True)
    plain, plain_calls = two_epochs(False)
    batches = plain_calls // 2  # train + val batches of one epoch
    assert batches > 0 and cached_calls == batches  # only the first epoch ran the main model
    for name, value in plain.draft.state_dict().items():
        torch.testing.assert_close(cached.draft.state_dict()[name], value, rtol=0, atol=0)
    assert cached.val_metrics == plain.val_metrics
