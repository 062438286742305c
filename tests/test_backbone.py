"""Backbones: tiny presets and text tokenizer; openvla directory checks, LoRA placement and the prefix/run
path, exercised with a stand-in of OpenVLA's structure (vision_backbone, projector, language_model)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rsd_pl.errors import RsdError
from rsd_pl.models import backbone as backbone_mod
from rsd_pl.models.backbone import BackboneConfig, build_backbone, build_text_tokenizer, check_openvla_dir
from rsd_pl.models.main_model import MainModel, MainModelConfig


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


def test_openvla_missing_or_incomplete_dir(tmp_path):
    with pytest.raises(RsdError, match="not set"):
        check_openvla_dir(None)
    with pytest.raises(RsdError, match="no such directory"):
        build_backbone(BackboneConfig(kind="openvla", path=str(tmp_path / "nope")))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(RsdError, match=r"missing preprocessor_config.json, model weights"):
        build_backbone(BackboneConfig(kind="openvla", path=str(tmp_path)))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "shard-1.safetensors"}}))
    (tmp_path / "model-0.safetensors").write_bytes(b"")
    with pytest.raises(RsdError, match="weight shard shard-1.safetensors"):
        check_openvla_dir(str(tmp_path))


class StandInPrismatic(nn.Module):
    """Same attribute names and call signatures as OpenVLA's PrismaticForConditionalGeneration."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.config = LlamaConfig(hidden_size=hidden)
        patch = nn.Conv2d(6, 16, kernel_size=8, stride=8)
        self.vision_backbone = nn.Sequential(patch, nn.Flatten(2), Transpose())  # (B, N, 16)
        self.vision_backbone.add_module("q_proj", nn.Identity())  # a vision module LoRA must not touch
        self.projector = nn.Linear(16, hidden)
        self.language_model = LlamaForCausalLM(LlamaConfig(
            vocab_size=600, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1))

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()


class Transpose(nn.Module):
    def forward(self, x):
        return x.transpose(1, 2)


@pytest.fixture()
def openvla_dir(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "tokenizer.json").write_text(build_text_tokenizer(512).to_str())
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "input_sizes": [[3, 32, 32], [3, 32, 32]],
        "means": [[0.485, 0.456, 0.406], [0.5, 0.5, 0.5]], "stds": [[0.229, 0.224, 0.225], [0.5, 0.5, 0.5]]}))
    monkeypatch.setattr(backbone_mod, "load_openvla_model", lambda root, dtype: StandInPrismatic().to(dtype))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=build_text_tokenizer(512), pad_token="<pad>")
    monkeypatch.setattr(backbone_mod, "load_openvla_tokenizer", lambda root: tokenizer)
    return tmp_path


def test_openvla_lora_only_on_language_model(openvla_dir):
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(kind="openvla", path=str(openvla_dir), torch_dtype="float32",
                                             lora_rank=4, max_text_len=20))
    trainable = [name for name, p in backbone.named_parameters() if p.requires_grad]
    lora = [name for name in trainable if "lora_" in name]
    assert lora and all("language_model" in name for name in lora)
    assert not [name for name in trainable if "vision_backbone" in name or "projector" in name.split(".")[-2:]]
    assert {n.split(".")[0] for n in trainable if "lora_" not in n} == {"proprio_proj"}


def test_openvla_lora_regex_outside_language_model_raises(openvla_dir):
    with pytest.raises(RsdError, match="outside the language model"):
        build_backbone(BackboneConfig(kind="openvla", path=str(openvla_dir), torch_dtype="float32",
                                      lora_target_regex=r".*q_proj"))


def test_openvla_main_model_prefill_extend(openvla_dir):
    torch.manual_seed(0)
    cfg = MainModelConfig(backbone=BackboneConfig(kind="openvla", path=str(openvla_dir), torch_dtype="float32",
                                                  lora_rank=4, max_text_len=20))
    model = MainModel(cfg).eval()
    batch = {"images": torch.rand(2, 1, 3, 64, 64), "proprio": torch.randn(2, 8),
             "instruction": ["put the bowl on the plate", "open the drawer"]}
    codes = torch.randint(0, 7, (2, 8, 16, 8))
    with torch.no_grad():
        reference = model(batch, codes)
    pre = model.prefill(batch)
    assert pre.cache_len == 16 + 20 + 1 + 8  # patches + prompt + proprio + Q
    step = model.extend(codes[..., :7], 1, pre.cache)
    torch.testing.assert_close(step, reference.layer_logits[:, 1:], atol=1e-5, rtol=1e-5)
    exported = model.export_tensors()
    assert not [k for k in exported if k.startswith("backbone.vla.") and "lora_" not in k]
