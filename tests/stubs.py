"""Test-only helpers: tiny REAL models (MainModel, ActionRFSQAE, ActionNormalizer) and scripted
drafts that force the accept / reject branches of the speculative engine.

A scripted draft asks the main model itself (teacher-forced forward, not counted by the engine)
what it would predict, then, per target layer, proposes exactly that ("right"), something
certainly different ("wrong"), or a fixed random function of the lower layers ("random").
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from rsd_pl.data.normalize import ActionNormalizer
from rsd_pl.models.backbone import BackboneConfig
from rsd_pl.models.draft import DraftConfig, DraftModel
from rsd_pl.models.main_model import MainModel, MainModelConfig
from rsd_pl.models.rfsq import ActionRFSQAE


@pytest.fixture
def single_thread() -> Iterator[None]:
    """One intra-op thread while a test runs: toy-sized ops on a shared 2-core machine are 10-50x
    slower with 2 threads under contention (measured), and results do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY_BACKBONE = dict(
    vision_hidden=16, vision_layers=1, vision_heads=2, vision_mlp=32,
    hidden=32, layers=2, heads=2, kv_heads=1, mlp=64,
)


def tiny_main(
    seed: int, chunk_len: int = 2, latent_dim: int = 3, num_layers: int = 8, num_levels: int = 5,
    dtype: torch.dtype = torch.float64, positions: int | None = None, group: int = 1, factored: bool = False,
    joint_layers: int | None = None,
) -> MainModel:
    """A real MainModel at toy size, random init, float64 so argmax ties cannot flip between
    batched and one-block-at-a-time forwards. positions / group: the token layout (default: one
    position per step, one scalar per token); factored: digit + joint heads, the joint correction drawn
    at random too (it starts at zero in training) so that both terms count."""
    torch.manual_seed(seed)
    backbone = BackboneConfig(image_size=16, patch_size=8, max_text_len=4, extra=dict(TINY_BACKBONE))
    cfg = MainModelConfig(backbone=backbone, chunk_len=chunk_len, latent_dim=latent_dim, num_layers=num_layers,
                          num_levels=num_levels, positions=positions, group=group, factored=factored,
                          joint_layers=joint_layers)
    model = MainModel(cfg)
    if factored:
        randomise_joint_heads([*model.layer_heads.heads, model.parallel_head.proj])
    return model.to(dtype).eval()


def randomise_joint_heads(heads: list[torch.nn.Module | None]) -> None:
    """Draw the joint corrections of factored heads (zero at init) at random."""
    with torch.no_grad():
        for head in heads:
            if not isinstance(head, torch.nn.Linear):
                continue  # a layer without a joint head
            head.weight.normal_(0, 0.1)
            head.bias.normal_(0, 0.1)


def tiny_batch(seed: int, batch_size: int, dtype: torch.dtype = torch.float64, repeat: bool = False) -> dict:
    """A model batch (docs/contracts.md) for the tiny main; `repeat` copies one observation B times."""
    generator = torch.Generator().manual_seed(seed)
    rows = 1 if repeat else batch_size
    images = torch.rand(rows, 1, 3, 16, 16, generator=generator, dtype=dtype)
    proprio = torch.randn(rows, 8, generator=generator, dtype=dtype)
    if repeat:
        images, proprio = images.expand(batch_size, -1, -1, -1, -1), proprio.expand(batch_size, -1)
    words = ["pick up the bowl", "open the drawer", "put the bowl on the plate"]
    instruction = [words[(seed + (0 if repeat else i)) % len(words)] for i in range(batch_size)]
    return {"images": images, "proprio": proprio, "instruction": instruction}


def tiny_draft(main: MainModel, seed: int) -> DraftModel:
    """A real DraftModel at toy size, random init (so it is mostly wrong), same dtype as the main."""
    torch.manual_seed(seed)
    cfg = DraftConfig(main_hidden=main.hidden_size, hidden=16, layers=1, heads=2, mlp=32, chunk_len=main.chunk_len,
                      latent_dim=main.latent_dim, num_layers=main.num_layers, num_levels=main.num_levels,
                      positions=main.positions, group=main.group, factored=main.cfg.factored,
                      joint_layers=main.cfg.joint_layers)
    draft = DraftModel(cfg)
    if main.cfg.factored:
        randomise_joint_heads(list(draft.heads.heads))
    return draft.to(next(main.parameters()).dtype).eval()


def tiny_tokenizer(main: MainModel, seed: int = 0) -> ActionRFSQAE:
    torch.manual_seed(seed)
    return ActionRFSQAE(action_dim=7, chunk_len=main.chunk_len, latent_dim=main.latent_dim,
                        num_layers=main.num_layers, num_levels=main.num_levels, hidden=16, num_hidden=1,
                        positions=main.positions, group=main.group)


def tiny_normalizer() -> ActionNormalizer:
    q01 = np.array([-0.9, -0.8, -0.7, -0.1, -0.2, -0.3, -1.0])
    q99 = np.array([0.9, 0.7, 0.8, 0.2, 0.1, 0.3, 1.0])
    return ActionNormalizer(q01=q01, q99=q99, mean=np.zeros(7), std=np.ones(7), min=q01 - 0.1, max=q99 + 0.1)


class ScriptedDraft(nn.Module):
    """The DraftModel cache interface (`start` / `extend` / `crop_cache`) with a per-target-layer behaviour:
    "right" = the main model's own logits, "wrong" = a peak on (main argmax + 1) mod V (V codes per token),
    "random" = a fixed random function of the lower layers' codes."""

    def __init__(self, main: MainModel, batch: dict, plan: dict[int, str] | None = None, default: str = "right",
                 seed: int = 0) -> None:
        super().__init__()
        self.main, self.batch, self.plan, self.default = main, batch, plan or {}, default
        generator = torch.Generator().manual_seed(seed)
        width = main.num_layers * main.tokens_per_position * main.vocab_size
        out = main.tokens_per_position * main.vocab_size
        self.random_weight = 2.0 * torch.randn(main.num_layers, width, out, generator=generator, dtype=torch.float64)
        self.calls = 0

    # The draft cache protocol; the stub's "cache" is just the codes fed so far.
    def start(self, query_hidden: Tensor) -> SimpleNamespace:
        return SimpleNamespace(query_hidden=query_hidden, codes=None, num_blocks=0)

    def extend(self, codes: Tensor, first_layer: int, cache: SimpleNamespace) -> Tensor:
        assert first_layer == cache.num_blocks + 1, (first_layer, cache.num_blocks)
        cache.codes = codes if cache.codes is None else torch.cat([cache.codes, codes], dim=-1)
        cache.num_blocks = cache.codes.shape[-1]
        first = cache.num_blocks - codes.shape[-1] + 1
        return torch.stack([self.next_layer_logits(cache.query_hidden, cache.codes[..., :m])
                            for m in range(first, cache.num_blocks + 1)], dim=1)

    def crop_cache(self, cache: SimpleNamespace, num_blocks: int) -> None:
        cache.codes, cache.num_blocks = cache.codes[..., :num_blocks], num_blocks

    def next_layer_logits(self, query_hidden: Tensor, codes: Tensor) -> Tensor:
        """codes [B, P, n, m] -> logits of layer m+1 [B, P, n, V]."""
        self.calls += 1
        m = codes.shape[-1]
        behaviour = self.plan.get(m + 1, self.default)
        if behaviour == "random":
            return self._random_logits(codes)
        main_logits = self._main_logits(codes)  # [B, P, n, V]
        if behaviour == "right":
            return main_logits
        wrong = (main_logits.argmax(-1) + 1) % self.main.vocab_size  # [B, P, n]
        return 10.0 * nn.functional.one_hot(wrong, self.main.vocab_size).to(main_logits.dtype)

    def _main_logits(self, codes: Tensor) -> Tensor:
        m, num_layers = codes.shape[-1], self.main.num_layers
        padded = torch.cat([codes, codes.new_zeros(*codes.shape[:-1], num_layers - m)], dim=-1)  # [B, P, n, L]
        return self.main(self.batch, padded).layer_logits[:, m]  # causal: padding does not leak back

    def _random_logits(self, codes: Tensor) -> Tensor:
        batch, steps, dims, m = codes.shape
        levels, num_layers = self.main.vocab_size, self.main.num_layers
        onehot = nn.functional.one_hot(codes, levels).permute(0, 1, 3, 2, 4)  # [B, P, m, n, V]
        padded = torch.zeros(batch, steps, num_layers, dims, levels, dtype=torch.float64)
        padded[:, :, :m] = onehot.double()
        logits = padded.flatten(2) @ self.random_weight[m]  # [B, P, n*V]
        return logits.view(batch, steps, dims, levels)
