"""The multimodality experiment without a simulator: do sampled RFSQ tokens represent two action modes where
the L1 regression head averages them?

Synthetic chunks: every observation is the same (one image, proprio, instruction, object_pos), and the action
chunk is mode A (the y dimension at +amplitude for all T steps) with probability p_a, else mode B (-amplitude),
plus small noise on every dimension. The RFSQ tokenizer and the main model (the same classes and training losses
as the quickstart: quantise-dropout L1 reconstruction; cross-entropy on AR and parallel codes + L1 head) are
trained on them from scratch on the CPU, then every decoding mode decodes the one observation many times.

A decoded chunk is classified by its mean y over the T steps: A above +amplitude / 2, B below -amplitude / 2,
else `between` (an action that is neither mode). Hand-written: a few hundred optimiser steps are not worth a
Trainer, and the losses are the modules' own.

Imports: the models and the decoding engine directly (synthetic bimodal chunks, no registry, no LIBERO).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from rsd_pl.bench import identity_normalizer  # the synthetic chunks are already normalised
from rsd_pl.decoding import DecodingConfig, DecodingEngine
from rsd_pl.durable import atomic_write
from rsd_pl.models.rfsq import ActionRFSQAE, sample_depths

MODE_DIM = 1  # y
LABELS = ("A", "B", "between")


@dataclass
class OfflineConfig:
    p_a: float = 0.7
    """Probability of mode A in the data."""
    amplitude: float = 0.6
    """|y| of both modes (normalised units)."""
    noise: float = 0.03
    """Std of the Gaussian noise on every action value."""
    num_chunks: int = 512
    """Training chunks."""
    tokenizer_steps: int = 400
    main_steps: int = 400
    batch_size: int = 64
    samples: int = 400
    """Chunks decoded per mode."""
    temperature: float = 1.0
    seed: int = 0
    chunk_len: int = 8
    latent_dim: int = 4
    num_layers: int = 4
    num_levels: int = 7
    positions: int | None = None
    """Token positions per layer block (None: one per step); the token layout with latent_dim and group."""
    group: int = 1
    """Latent scalars per token (a token is one of num_levels**group codes)."""
    factored: bool = False
    """Factored token heads (digit logits + a joint correction; `MainModelConfig.factored`)."""
    joint_layers: int | None = None
    """Factored heads: the layers that keep the joint correction (`MainModelConfig.joint_layers`)."""
    out: str | None = None
    """Where the json goes (default runs/multimodal_offline/p<p_a>_steps<main_steps>.json)."""
    modes: list[str] = field(default_factory=lambda: ["l1", "parallel", "ar", "ar_sampled", "speculative_sampled"])
    """ar_sampled: ar at `temperature`; speculative_sampled: self-speculation with the `sampling` rule."""


def bimodal_chunks(cfg: OfflineConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (normalised chunks [N, T, 7], is_a bool [N]). The gripper column stays at -1 (open) as in the data."""
    is_a = torch.rand(cfg.num_chunks, generator=generator) < cfg.p_a
    chunks = cfg.noise * torch.randn(cfg.num_chunks, cfg.chunk_len, 7, generator=generator)
    chunks[..., MODE_DIM] += torch.where(is_a, cfg.amplitude, -cfg.amplitude)[:, None]
    chunks[..., 6] = -1.0
    return chunks, is_a


def classify(chunks: torch.Tensor, amplitude: float) -> list[str]:
    """Chunks [N, T, 7] -> 'A' / 'B' / 'between' by the mean y over the chunk."""
    mean_y = chunks[..., MODE_DIM].float().mean(dim=1)
    return ["A" if y > amplitude / 2 else "B" if y < -amplitude / 2 else "between" for y in mean_y.tolist()]


def on_one_mode(shares: dict[str, float], data_a: float, min_on_mode: float = 0.9, tolerance: float = 0.10) -> bool:
    """The coherence criterion: at least `min_on_mode` of the decoded chunks are one of the two modes, and mode A's
    share among them is within `tolerance` of its share in the data (sampling, not collapsing onto a mode)."""
    on_mode = shares["A"] + shares["B"]
    return on_mode >= min_on_mode and abs(shares["A"] / max(on_mode, 1e-9) - data_a) <= tolerance


def _observation(batch_size: int) -> dict:
    generator = torch.Generator().manual_seed(123)
    image = torch.rand(1, 1, 3, 16, 16, generator=generator)
    return {"images": image.expand(batch_size, -1, -1, -1, -1).contiguous(),
            "proprio": torch.zeros(batch_size, 8), "object_pos": torch.zeros(batch_size, 6),
            "instruction": ["pick up the bowl"] * batch_size}


def train_models(cfg: OfflineConfig) -> tuple[ActionRFSQAE, object, torch.Tensor]:
    """-> (tokenizer, main model, the training chunks), both trained from scratch on the bimodal chunks."""
    from rsd_pl.models.backbone import BackboneConfig
    from rsd_pl.models.main_model import MainModel, MainModelConfig, token_losses

    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    chunks, _ = bimodal_chunks(cfg, generator)
    layout = dict(chunk_len=cfg.chunk_len, latent_dim=cfg.latent_dim, num_layers=cfg.num_layers,
                  num_levels=cfg.num_levels, positions=cfg.positions, group=cfg.group)
    tokenizer = ActionRFSQAE(action_dim=7, hidden=64, num_hidden=2, **layout)
    optimizer = torch.optim.AdamW(tokenizer.parameters(), lr=3e-3)
    for _ in range(cfg.tokenizer_steps):
        batch = chunks[torch.randint(len(chunks), (cfg.batch_size,), generator=generator)]
        recon, _ = tokenizer(batch, depths=sample_depths(len(batch), cfg.num_layers, 0.5, generator))
        loss = F.l1_loss(recon, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    tokenizer.eval().requires_grad_(False)
    codes = tokenizer.tokenize(chunks)  # [N, P, n, L]
    sizes = dict(vision_hidden=32, vision_layers=1, vision_heads=2, vision_mlp=64, hidden=64, layers=2, heads=4,
                 kv_heads=2, mlp=128)
    backbone = BackboneConfig(image_size=16, patch_size=8, num_cameras=1, use_object_pos=True, max_text_len=8,
                              extra=sizes)
    main = MainModel(MainModelConfig(backbone=backbone, factored=cfg.factored,
                                     joint_layers=cfg.joint_layers, **layout))
    optimizer = torch.optim.AdamW(main.parameters(), lr=2e-3)
    obs = _observation(cfg.batch_size)
    for _ in range(cfg.main_steps):
        pick = torch.randint(len(chunks), (cfg.batch_size,), generator=generator)
        loss = sum(token_losses(main(obs, codes[pick]), codes[pick], chunks[pick], cfg.group).values())  # as MainModule
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return tokenizer, main.eval(), chunks


def decoding_for(mode: str, cfg: OfflineConfig, seed: int) -> DecodingConfig:
    if mode == "ar_sampled":
        return DecodingConfig(mode="ar", temperature=cfg.temperature, seed=seed)
    if mode == "speculative_sampled":
        return DecodingConfig(mode="speculative", acceptance="sampling", temperature=cfg.temperature,
                              draft_source="parallel", draft_len=cfg.num_layers - 1, seed=seed)
    return DecodingConfig(mode=mode, seed=seed)


@torch.inference_mode()
def decode_modes(cfg: OfflineConfig, tokenizer, main) -> dict[str, dict]:
    """Per mode: the share of decoded chunks in A / B / between, and the mean y of the chunks."""
    results = {}
    obs = _observation(cfg.samples)
    for index, mode in enumerate(cfg.modes):
        engine = DecodingEngine(main, tokenizer, identity_normalizer(), decoding_for(mode, cfg, seed=cfg.seed + index))
        chunks = engine.decode_chunk(obs).normalized_actions
        labels = classify(chunks, cfg.amplitude)
        results[mode] = {label: labels.count(label) / len(labels) for label in LABELS}
        results[mode]["mean_y"] = float(chunks[..., MODE_DIM].mean())
    return results


def run(cfg: OfflineConfig | None = None) -> dict:
    """Train and decode; -> {'config', 'data' (share of A in the training chunks), 'modes'}."""
    cfg = cfg or OfflineConfig()
    tokenizer, main, chunks = train_models(cfg)
    data = classify(chunks, cfg.amplitude)
    reconstructed = classify(tokenizer(chunks)[0], cfg.amplitude)
    return {"config": asdict(cfg), "data": {label: data.count(label) / len(data) for label in LABELS},
            "tokenizer": {label: reconstructed.count(label) / len(reconstructed) for label in LABELS},
            "modes": decode_modes(cfg, tokenizer, main)}


def markdown(result: dict) -> str:
    cfg = result["config"]
    lines = [f"# Offline multimodality (p_a {cfg['p_a']}, amplitude {cfg['amplitude']}, {cfg['samples']} decodes per "
             "mode)", "", "| decoded by | A | B | between (neither mode) | mean y |", "|---|---|---|---|---|"]
    rows = {"training data": result["data"], "tokenizer reconstruction": result["tokenizer"], **result["modes"]}
    for name, shares in rows.items():
        mean = f"{shares['mean_y']:.3f}" if "mean_y" in shares else "-"
        lines.append(f"| {name} | {shares['A']:.1%} | {shares['B']:.1%} | {shares['between']:.1%} | {mean} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """`python -m rsd_pl multimodal-offline [--p_a 0.5 --main_steps 1000 ...]`: train, decode, print the table."""
    import json
    from pathlib import Path

    from jsonargparse import auto_cli, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parsed = auto_cli(OfflineConfig, args=argv, as_positional=False, prog="python -m rsd_pl multimodal-offline")
    torch.set_num_threads(1)
    result = run(parsed)
    out = Path(parsed.out or f"runs/multimodal_offline/p{parsed.p_a:g}_steps{parsed.main_steps}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, json.dumps(result, indent=2))
    print(markdown(result) + f"\nwritten: {out}")
    return 0
