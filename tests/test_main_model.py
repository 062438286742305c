"""MainModel: shapes, teacher forcing == prefill + extend (the engine's exactness relies on it), cache crop."""

from __future__ import annotations

import pytest
import torch

from rsd_pl.errors import RsdError
from rsd_pl.models.backbone import BackboneConfig
from rsd_pl.models.main_model import MainModel, MainModelConfig

MICRO = dict(vision_hidden=32, vision_layers=1, vision_heads=2, vision_mlp=64,
             hidden=32, layers=2, heads=2, kv_heads=1, mlp=64)


def micro_config(**backbone) -> MainModelConfig:
    options = dict(image_size=32, patch_size=8, max_text_len=12, extra=MICRO, use_object_pos=True)
    return MainModelConfig(backbone=BackboneConfig(**{**options, **backbone}))


def make_batch(batch_size: int = 2, cams: int = 1, size: int = 32) -> dict:
    return {
        "images": torch.rand(batch_size, cams, 3, size, size),
        "proprio": torch.randn(batch_size, 8),
        "object_pos": torch.randn(batch_size, 6),
        "instruction": ["pick up the black bowl and place it on the plate", "put the bowl on the stove"][:batch_size],
    }


@pytest.fixture(scope="module")
def model() -> MainModel:
    torch.manual_seed(0)
    return MainModel(micro_config()).eval()


def test_forward_shapes(model):
    codes = torch.randint(0, 7, (2, 8, 16, 8))
    out = model(make_batch(), codes)
    assert out.layer_logits.shape == (2, 8, 8, 16, 7)
    assert out.parallel_logits.shape == (2, 8, 8, 16, 7)
    assert out.l1_actions.shape == (2, 8, 7)
    assert out.query_hidden.shape == (2, 8, model.hidden_size)
    assert model.backbone.embed_prefix(make_batch()).shape[1] == model.backbone.prefix_len


def test_prefill_extend_equals_teacher_forcing(model):
    torch.manual_seed(1)
    batch, codes = make_batch(), torch.randint(0, 7, (2, 8, 16, 8))
    with torch.no_grad():
        reference = model(batch, codes)
    pre = model.prefill(batch)
    torch.testing.assert_close(pre.query_hidden, reference.query_hidden, atol=1e-5, rtol=1e-5)
    logits = [pre.layer1_logits]
    for layer in range(1, 8):  # layer by layer, as the `ar` mode decodes
        logits.append(model.extend(codes[..., layer - 1 : layer], layer, pre.cache)[:, 0])
    torch.testing.assert_close(torch.stack(logits, 1), reference.layer_logits, atol=1e-5, rtol=1e-5)
    assert pre.cache.get_seq_length() == pre.cache_len + 7 * 8
    # crop back to 2 accepted blocks, then verify 3 layers in one forward (speculative verify)
    model.crop_cache(pre.cache, pre.cache_len, 2)
    assert pre.cache.get_seq_length() == pre.cache_len + 16
    verify = model.extend(codes[..., 2:5], 3, pre.cache)
    torch.testing.assert_close(verify, reference.layer_logits[:, 3:6], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.parallel_logits(pre.query_hidden), reference.parallel_logits,
                               atol=1e-5, rtol=1e-5)


def test_later_codes_do_not_change_earlier_logits(model):
    """Causality: the prediction of layer l depends only on layers < l."""
    batch, codes = make_batch(), torch.randint(0, 7, (2, 8, 16, 8))
    changed = codes.clone()
    changed[..., 4:] = (changed[..., 4:] + 1) % 7
    with torch.no_grad():
        a, b = model(batch, codes).layer_logits, model(batch, changed).layer_logits
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_bad_codes_shape_raises(model):
    with pytest.raises(RsdError, match="codes"):
        model(make_batch(), torch.randint(0, 7, (2, 8, 16, 6)))


def test_missing_object_pos_raises(model):
    batch = make_batch()
    del batch["object_pos"]
    with pytest.raises(RsdError, match="object_pos"):
        model.prefill(batch)


def test_two_cameras_and_pooling():
    torch.manual_seed(0)
    model = MainModel(micro_config(num_cameras=2, image_pool=2, use_object_pos=False)).eval()
    batch = make_batch(cams=2)
    assert model.backbone.embed_prefix(batch).shape[1] == model.backbone.prefix_len == 2 * 4 + 12 + 1
    with pytest.raises(RsdError, match="images"):
        model.prefill(make_batch(cams=1))


def test_export_and_load_exported_round_trip(model):
    clone = MainModel(micro_config())
    clone.load_exported(model.export_tensors())
    batch, codes = make_batch(), torch.randint(0, 7, (2, 8, 16, 8))
    with torch.no_grad():
        assert torch.equal(clone.eval()(batch, codes).layer_logits, model(batch, codes).layer_logits)
