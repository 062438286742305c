"""Training throughput (samples/s) of the main model's teacher-forced step for the tiny presets.

    python scripts/bench_train.py                      # tiny-5m and tiny-30m, batch 32, 64 px, 1 camera
    python scripts/bench_train.py --presets tiny-5m --batch-size 16 --steps 5 --threads 2

Times forward + backward + AdamW step on synthetic inputs of the contract's shapes (the data loader is
not included). Prints one line per preset: parameters, seconds per step, samples per second.
"""

from __future__ import annotations

import argparse
import time

import torch

from rsd_pl.models.backbone import BackboneConfig
from rsd_pl.models.main_model import MainModel, MainModelConfig, token_losses


def make_batch(batch_size: int, cameras: int, image_size: int) -> dict:
    return {"images": torch.rand(batch_size, cameras, 3, image_size, image_size),
            "proprio": torch.randn(batch_size, 8), "object_pos": torch.randn(batch_size, 6),
            "instruction": ["pick up the black bowl next to the plate and place it on the plate"] * batch_size}


def train_step(model: MainModel, optimizer: torch.optim.Optimizer, batch: dict, codes: torch.Tensor) -> float:
    out = model(batch, codes)
    # L1 against zeros: timing only
    loss = sum(token_losses(out, codes, torch.zeros_like(out.l1_actions), model.cfg.group).values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def bench(preset: str, args: argparse.Namespace) -> str:
    torch.manual_seed(0)
    backbone = BackboneConfig(preset=preset, image_size=args.image_size, num_cameras=args.cameras,
                              image_pool=args.image_pool, use_object_pos=True)
    model = MainModel(MainModelConfig(backbone=backbone)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = make_batch(args.batch_size, args.cameras, args.image_size)
    codes = torch.randint(0, 7, (args.batch_size, 8, 16, 8))
    for _ in range(args.warmup):
        train_step(model, optimizer, batch, codes)
    start = time.perf_counter()
    for _ in range(args.steps):
        train_step(model, optimizer, batch, codes)
    per_step = (time.perf_counter() - start) / args.steps
    params = sum(p.numel() for p in model.parameters()) / 1e6
    seq = model.backbone.prefix_len + 8 * 8
    return (f"{preset:>9}: {params:6.2f}M params, sequence {seq} tokens, batch {args.batch_size}: "
            f"{per_step:.3f} s/step, {args.batch_size / per_step:.1f} samples/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny-5m", "tiny-30m"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--image-pool", type=int, default=2)
    parser.add_argument("--cameras", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")
    for preset in args.presets:
        print(bench(preset, args), flush=True)


if __name__ == "__main__":
    main()
