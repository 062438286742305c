"""How precise must a model be before each RFSQ layer is learnable? A noisy-oracle table.

    python scripts/layer_predictability.py --registry checkpoints/quickstart \
        --data data/quickstart/libero_spatial --main main@best

For the validation chunks of `--data` (the same episode split as training: `--val_fraction`, `--seed`),
it adds Gaussian noise of standard deviation sigma to the normalised actions, encodes them with the
tokenizer and predicts every layer teacher-forced (the layers before it are the true codes, as in the
main model's training; `ResidualFSQ.teacher_forced_codes`). The token accuracy of such a predictor,
per layer, shows which layers a model with that action error can learn at all. Chance is 1/K; the
majority column is the accuracy of always predicting the layer's most frequent code.

With `--main`, the main model's own validation accuracy (from its registry metrics) is printed for
comparison, and a row is added at the sigma whose mean absolute error equals the main model's
decoded-action L1 (`val/l1_ar`; for Gaussian noise E|e| = sigma * sqrt(2 / pi)).
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from rsd_pl.data.chunks import ActionChunkDataset, split_episodes
from rsd_pl.data.libero_hdf5 import read_episodes, resolve_demo_files
from rsd_pl.lit.action_data import data_fingerprint
from rsd_pl.models.rfsq import load_tokenizer
from rsd_pl.registry import Registry


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="LIBERO-format HDF5 file, directory or glob")
    parser.add_argument("--registry", default="checkpoints", help="checkpoint registry folder")
    parser.add_argument("--tokenizer", default="rfsq@best", help="tokenizer spec (ignored with --main)")
    parser.add_argument("--main", default=None, help="main model spec: use its tokenizer and compare")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.001, 0.003, 0.01, 0.03])
    parser.add_argument("--val_fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--drop_noops", action="store_true",
                        help="drop OFT's no-op steps, as the fit did with --data.init_args.drop_noops true")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    registry = Registry(args.registry)
    main_metrics, tokenizer_spec = {}, args.tokenizer
    if args.main is not None:
        main_artifact = registry.resolve(args.main)
        main_metrics, tokenizer_spec = main_artifact.metrics, main_artifact.lineage["tokenizer"]
    tokenizer, normalizer, artifact = load_tokenizer(tokenizer_spec, registry)
    tokenizer = tokenizer.double()

    episodes = read_episodes(args.data, image_keys=[], drop_noops=args.drop_noops)
    _, val_ids = split_episodes(len(episodes), args.val_fraction, args.seed)
    chunks = ActionChunkDataset([normalizer.normalize(episodes[i].actions) for i in val_ids], tokenizer.chunk_len)
    actions = chunks.chunks.double()  # (N, T, D)

    quantizer, layout, num_layers = tokenizer.quantizer, tokenizer.layout, tokenizer.num_layers
    num_levels = layout.vocab_size  # codes per token
    with torch.no_grad():
        codes = tokenizer.tokenize(actions)  # (N, P, n, L) token codes
        rows = {}
        sigmas = list(args.sigmas)
        if "val/l1_ar" in main_metrics:
            sigmas.append(main_metrics["val/l1_ar"] * math.sqrt(math.pi / 2))
        generator = torch.Generator().manual_seed(0)
        for sigma in sigmas:
            noisy = actions + sigma * torch.randn(actions.shape, generator=generator, dtype=actions.dtype)
            digits = quantizer.teacher_forced_codes(tokenizer.encode(noisy), layout.split(codes))
            predicted = layout.join(digits)  # a token is right when all its scalars' digits are
            rows[sigma] = (predicted == codes).double().mean(dim=(0, 1, 2)).tolist()
    counts = np.stack([np.bincount(codes[..., layer].flatten().numpy(), minlength=num_levels)
                       for layer in range(num_layers)])
    majority = counts.max(1) / counts.sum(1)

    print(f"tokenizer {artifact.spec}, {len(val_ids)} validation episodes of {args.data}, {len(chunks)} chunks; "
          f"chance = {1 / num_levels:.3f}")
    print("teacher-forced token accuracy of a predictor whose normalised actions carry Gaussian noise sigma")
    header = f"{'sigma':>18} " + " ".join(f"{'L' + str(layer + 1):>6}" for layer in range(num_layers))
    print(header)
    for sigma, accuracy in rows.items():
        label = f"{sigma:.4g}" if sigma in args.sigmas else f"{sigma:.4g} (main L1)"
        print(f"{label:>18} " + " ".join(f"{a:>6.3f}" for a in accuracy))
    print(f"{'majority':>18} " + " ".join(f"{m:>6.3f}" for m in majority))
    if main_metrics:
        key = "val/token_acc_layer_{}"
        if all(key.format(layer + 1) in main_metrics for layer in range(num_layers)):
            print(f"{args.main + ' ar_acc':>18} "
                  + " ".join(f"{main_metrics[key.format(layer + 1)]:>6.3f}" for layer in range(num_layers)))
        print(f"main model {main_artifact.spec}: decoded-action L1 {main_metrics.get('val/l1_ar', float('nan')):.4f}")
        trained_on = main_artifact.lineage.get("data_fingerprint")
        if trained_on != data_fingerprint(resolve_demo_files(args.data), drop_noops=args.drop_noops):
            print(f"warning: {main_artifact.spec} was trained on other data (fingerprint {trained_on}); "
                  "its accuracies come from its own validation split")


if __name__ == "__main__":
    main()
