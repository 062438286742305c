"""Backbones: tiny presets and text tokenizer; the openvla backbone on the fixture's tiny OpenVLA-OFT checkpoint
(real layout): directory checks, LoRA placement, block-causal prefill + extend, export."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import OFT_FIXTURE

from rsd_pl.errors import RsdError
from rsd_pl.models.backbone import BackboneConfig, build_text_tokenizer
from rsd_pl.models.factory import build_backbone
from rsd_pl.models.main_model import MainModel, MainModelConfig
from rsd_pl.models.openvla.backbone import block_causal_mask, check_openvla_dir


def test_text_tokenizer_is_deterministic_across_processes():
    here = build_text_tokenizer(512).to_str()
    code = "from rsd_pl.models.backbone import build_text_tokenizer; print(build_text_tokenizer(512).to_str())"
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert here == there.strip()
    ids = build_text_tokenizer(512).encode("pick up the zebra").ids  # unseen word: byte fallback, no <unk>
    assert 2 not in ids and len(ids) > 3


def test_bad_backbone_config_raises():
    with pytest.raises(RsdError, match="preset"):
        build_backbone(BackboneConfig(preset="tiny-1b"))
    with pytest.raises(RsdError, match="image_size"):
        build_backbone(BackboneConfig(image_size=60))
    with pytest.raises(RsdError, match="kind"):
        build_backbone(BackboneConfig(kind="gpt"))


FIXTURE_CKPT = OFT_FIXTURE / "tiny_checkpoint"
needs_fixture = pytest.mark.usefixtures("oft_fixture")  # fails (never skips) when shared/ is not beside the repo


def openvla_config(**kw) -> BackboneConfig:
    fields = dict(kind="openvla", path=str(FIXTURE_CKPT), torch_dtype="float32", image_size=224, num_cameras=2,
                  lora_rank=4, max_text_len=48)
    return BackboneConfig(**{**fields, **kw})


def test_openvla_missing_or_incomplete_dir(tmp_path):
    with pytest.raises(RsdError, match="not set"):
        check_openvla_dir(None)
    with pytest.raises(RsdError, match="no such directory"):
        build_backbone(BackboneConfig(kind="openvla", path=str(tmp_path / "nope")))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(RsdError, match=r"missing preprocessor_config.json, tokenizer.json, dataset_statistics.json"):
        build_backbone(BackboneConfig(kind="openvla", path=str(tmp_path)))


def test_block_causal_mask():
    mask = block_causal_mask(prefix_len=3, block_len=2, past=0, new=7, batch=1, device=torch.device("cpu"))[0, 0]
    expected = torch.tensor([[1, 1, 1, 0, 0, 0, 0],   # prefix: bidirectional, never sees the blocks
                             [1, 1, 1, 0, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0, 0],
                             [1, 1, 1, 1, 1, 0, 0],   # block 0 (Q): prefix + itself
                             [1, 1, 1, 1, 1, 0, 0],
                             [1, 1, 1, 1, 1, 1, 1],   # block 1: prefix + blocks 0..1
                             [1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    extend = block_causal_mask(prefix_len=3, block_len=2, past=5, new=2, batch=2, device=torch.device("cpu"))
    assert extend.shape == (2, 1, 2, 7) and torch.equal(extend[1, 0], expected[5:])


@needs_fixture
def test_openvla_lora_only_on_language_model():
    backbone = build_backbone(openvla_config())
    trainable = [name for name, p in backbone.named_parameters() if p.requires_grad]
    lora = [name for name in trainable if "lora_" in name]
    assert lora and all(".language_model." in name for name in lora)
    assert {n.split(".")[0] for n in trainable if "lora_" not in n} == {"proprio_proj"}
    with pytest.raises(RsdError, match="outside the language model"):
        build_backbone(openvla_config(lora_target_regex=r".*(q_proj|qkv)"))


@needs_fixture
def test_openvla_main_model_prefill_extend_equals_teacher_forcing():
    torch.manual_seed(0)
    model = MainModel(MainModelConfig(backbone=openvla_config())).eval()
    batch = {"images": torch.rand(2, 2, 3, 224, 224), "proprio": torch.randn(2, 8),
             "instruction": ["put the bowl on the plate", "open the top drawer of the cabinet"]}
    codes = torch.randint(0, 7, (2, 8, 16, 8))
    with torch.no_grad():
        reference = model(batch, codes)
    pre = model.prefill(batch)
    assert pre.cache_len == model.backbone.prefix_len + 8 == 1 + 512 + 1 + 47 + 8
    torch.testing.assert_close(pre.layer1_logits, reference.layer_logits[:, 0], atol=1e-5, rtol=1e-5)
    step = model.extend(codes[..., :3], 1, pre.cache)  # three blocks in one forward (a verify pass)
    torch.testing.assert_close(step, reference.layer_logits[:, 1:4], atol=1e-5, rtol=1e-5)
    model.crop_cache(pre.cache, pre.cache_len, 1)  # keep block 1 only, then re-extend from layer 2
    step = model.extend(codes[..., 1:7], 2, pre.cache)
    torch.testing.assert_close(step, reference.layer_logits[:, 2:], atol=1e-5, rtol=1e-5)
    exported = model.export_tensors()
    assert not [k for k in exported if k.startswith("backbone.vla.") and "lora_" not in k]
    assert any("lora_" in k for k in exported) and "backbone.proprio_proj.fc1.weight" in exported


@needs_fixture
def test_openvla_prompt_longer_than_max_text_len_is_refused():
    backbone = build_backbone(openvla_config(max_text_len=12))
    with pytest.raises(RsdError, match="more than backbone.max_text_len=12"):
        backbone.text_ids(["pick up the black bowl between the plate and the ramekin and place it on the plate"])
