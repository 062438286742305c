"""DraftModel: shapes, one-step == teacher forcing (block-causal), bad inputs."""

from __future__ import annotations

import pytest
import torch

from rsd_pl.errors import RsdError
from rsd_pl.models.draft import DraftConfig, DraftModel


@pytest.fixture(scope="module")
def draft() -> DraftModel:
    torch.manual_seed(0)
    return DraftModel(DraftConfig(main_hidden=32, hidden=32, layers=2, heads=2, mlp=64)).eval()


def test_forward_and_next_layer_agree(draft):
    query_hidden, codes = torch.randn(2, 8, 32), torch.randint(0, 7, (2, 8, 16, 8))
    with torch.no_grad():
        full = draft(query_hidden, codes)
        assert full.shape == (2, 7, 8, 16, 7)
        for known in range(1, 8):
            step = draft.extend(codes[..., :known], 1, draft.start(query_hidden))[:, -1]  # a fresh cache
            torch.testing.assert_close(step, full[:, known - 1], atol=1e-5, rtol=1e-5)


def test_cached_steps_match_teacher_forcing(draft):
    """The engine's path: start, feed blocks in uneven groups, crop, re-feed changed layers."""
    query_hidden, codes = torch.randn(3, 8, 32), torch.randint(0, 7, (3, 8, 16, 8))
    with torch.no_grad():
        full = draft(query_hidden, codes)  # [B, 7, T, d, K]: layers 2..8
        cache = draft.start(query_hidden)
        torch.testing.assert_close(draft.extend(codes[..., :3], 1, cache), full[:, :3], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(draft.extend(codes[..., 3:4], 4, cache), full[:, 3:4], atol=1e-5, rtol=1e-5)
        assert cache.num_blocks == 4 and cache.keys[0].shape[2] == 5 * 8
        other = (codes + 1) % 7
        other_full = draft(query_hidden, torch.cat([codes[..., :2], other[..., 2:]], dim=-1))
        draft.crop_cache(cache, 2)  # layers 3 and 4 were rejected: re-feed different codes
        torch.testing.assert_close(draft.extend(other[..., 2:7], 3, cache), other_full[:, 2:], atol=1e-5, rtol=1e-5)


def test_cache_refuses_a_gap(draft):
    cache = draft.start(torch.randn(1, 8, 32))
    with pytest.raises(RsdError, match="cache holds layers 1..0"):
        draft.extend(torch.randint(0, 7, (1, 8, 16, 1)), 2, cache)


def test_prediction_ignores_later_layers(draft):
    query_hidden, codes = torch.randn(2, 8, 32), torch.randint(0, 7, (2, 8, 16, 8))
    changed = codes.clone()
    changed[..., 3:] = (changed[..., 3:] + 1) % 7
    with torch.no_grad():
        a, b = draft(query_hidden, codes), draft(query_hidden, changed)
    torch.testing.assert_close(a[:, :3], b[:, :3])  # predictions of layers 2..4 use layers 1..3 only
    assert not torch.allclose(a[:, 3:], b[:, 3:])


def test_bad_inputs_raise(draft):
    with pytest.raises(RsdError, match="query_hidden"):
        draft(torch.randn(2, 8, 64), torch.randint(0, 7, (2, 8, 16, 8)))
    with pytest.raises(RsdError, match="known layers"):
        draft.extend(torch.randint(0, 7, (2, 8, 16, 8)), 1, draft.start(torch.randn(2, 8, 32)))


def test_a_draft_from_before_the_kv_cache_is_refused_with_a_hint(tmp_path):
    from rsd_pl.models.draft import load_draft
    from rsd_pl.registry import Registry

    cfg = DraftConfig(main_hidden=32, hidden=32, layers=1, heads=2, mlp=64)
    tensors = {k: v.contiguous() for k, v in DraftModel(cfg).state_dict().items() if not k.startswith("blocks.")}
    tensors["transformer.layers.0.linear1.weight"] = torch.zeros(64, 32)  # the old nn.TransformerEncoder layout
    registry = Registry(tmp_path)
    registry.export("draft", tensors, config={"draft": cfg.to_dict()}, metrics={}, lineage={})
    with pytest.raises(RsdError, match="older rsd_pl whose draft had no KV cache"):
        load_draft("draft@1", registry)
