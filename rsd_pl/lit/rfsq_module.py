"""`RFSQModule`: trains the phase-1 RFSQ action tokenizer (`ActionRFSQAE`) with quantise-dropout.

Logged (TensorBoard): `train/loss`, `val/loss`, `val/mae_depth_m` and `val/mae_raw_depth_m` (prefix
depth m = 1..L, normalised and raw env units), `val/perplexity_layer_l` and `val/codes_used_layer_l`
(code usage of a token per layer: perplexity of the layer's code distribution, at most K**g, and how
many of the K**g codes occur), `val/mae_uniform256` / `val/mae_raw_uniform256` (the 256-bin baseline on the same
chunks) and a figure of original vs reconstructed chunks. At the end of fit a per-depth table is
printed. `export_payload()` is what the checkpoint registry stores as `rfsq@<version>`.
"""

from __future__ import annotations

import math

import lightning as L
import torch

from rsd_pl.data.normalize import ActionNormalizer
from rsd_pl.errors import RsdError
from rsd_pl.models.rfsq import ActionRFSQAE, UniformBinTokenizer, sample_depths

NUM_BINS = 256


class RFSQModule(L.LightningModule):
    """Phase 1: the RFSQ autoencoder over normalised action chunks.

    Args:
        action_dim: Action dims per step (D); LIBERO: 7.
        chunk_len: Steps per chunk (T); must equal the data's chunk_len.
        latent_dim: Latent scalars per token position (d; per step when positions is unset).
        num_layers: Residual quantiser layers (L).
        num_levels: Levels per scalar and layer (K, odd).
        positions: Token positions per layer block (P, divides T; unset: T, one per step). The latent
            has P x d scalars.
        group: Latent scalars per token (g, divides d): a token is one of K**g codes.
        hidden: Width of the encoder/decoder MLPs.
        num_hidden: Hidden layers in each of the encoder and decoder MLPs.
        lr: Peak AdamW learning rate (linear warm-up over 10% of the steps, then cosine decay).
        weight_decay: AdamW weight decay.
        quantize_dropout: Probability that a training sample is reconstructed from a random prefix
            depth 1..L instead of all L layers (makes coarse prefixes decode well on their own).
        loss: Reconstruction loss, "l1" or "mse" (normalised units).
        num_plot_chunks: Validation chunks drawn in the original-vs-reconstruction figure (0 = none).
    """

    artifact_name = "rfsq"
    monitor = "val/mae_depth_8"  # best checkpoint and rfsq@best: lowest full-depth error (set per L in __init__)
    monitor_mode = "min"
    best_group_keys = ("data_fingerprint",)  # reconstruction error is comparable on the same data only

    def __init__(
        self,
        action_dim: int = 7,
        chunk_len: int = 8,
        latent_dim: int = 16,
        num_layers: int = 8,
        num_levels: int = 7,
        hidden: int = 128,
        num_hidden: int = 2,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        quantize_dropout: float = 0.5,
        loss: str = "l1",
        num_plot_chunks: int = 4,
        positions: int | None = None,
        group: int = 1,
    ) -> None:
        super().__init__()
        if loss not in ("l1", "mse"):
            raise RsdError(f"model.loss must be 'l1' or 'mse', got {loss!r}")
        if not 0.0 <= quantize_dropout <= 1.0:
            raise RsdError(f"model.quantize_dropout must be in [0, 1], got {quantize_dropout}")
        self.save_hyperparameters()
        self.ae = ActionRFSQAE(action_dim, chunk_len, latent_dim, num_layers, num_levels, hidden, num_hidden,
                               positions=positions, group=group)
        self.monitor = f"val/mae_depth_{num_layers}"
        self.baseline = UniformBinTokenizer(NUM_BINS)
        self.normalizer_stats: dict | None = None  # from the datamodule; saved in checkpoints
        self.data_fingerprint: str | None = None
        self.val_metrics: dict[str, float] = {}  # latest validation figures (exported, printed)
        self._val_sums: dict[str, torch.Tensor] = {}

    # ---- data hand-over ---------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            return
        if datamodule.chunk_len != self.ae.chunk_len:
            raise RsdError(
                f"data.chunk_len={datamodule.chunk_len} differs from model.chunk_len={self.ae.chunk_len}"
            )
        datamodule.setup(stage)
        self.normalizer_stats = datamodule.normalizer.to_dict()
        self.data_fingerprint = datamodule.fingerprint()

    @property
    def normalizer(self) -> ActionNormalizer:
        if self.normalizer_stats is None:
            raise RsdError("RFSQModule has no normalisation statistics: fit it on an ActionChunkDataModule")
        return ActionNormalizer.from_dict(self.normalizer_stats)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rsd_pl"] = {
            "normalizer_stats": self.normalizer_stats,
            "data_fingerprint": self.data_fingerprint,
            "val_metrics": self.val_metrics,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("rsd_pl", {})
        self.normalizer_stats = saved.get("normalizer_stats")
        self.data_fingerprint = saved.get("data_fingerprint")
        self.val_metrics = dict(saved.get("val_metrics") or {})

    # ---- training ----------------------------------------------------------------------------

    def _loss(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.hparams.loss == "mse":
            return torch.nn.functional.mse_loss(recon, target)
        return torch.nn.functional.l1_loss(recon, target)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        # batch: [B, T, D] normalised chunks
        depths = sample_depths(batch.shape[0], self.ae.num_layers, self.hparams.quantize_dropout)
        recon, _ = self.ae(batch, depths=depths.to(batch.device))
        loss = self._loss(recon, batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch.shape[0])
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        # Recomputed from the trainer on every (re)start, so a resumed run may also extend max_epochs.
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- validation: per-depth error, code usage, the 256-bin baseline -------------------------

    def on_validation_epoch_start(self) -> None:
        num_layers, vocab = self.ae.num_layers, self.ae.vocab_size
        shapes = {
            "count": (1,),  # scalars compared, B * T * D
            "loss": (1,),
            "abs_err": (num_layers,),  # per prefix depth, normalised units
            "abs_err_raw": (num_layers,),  # per prefix depth, raw env units
            "abs_err_uniform": (1,),
            "abs_err_uniform_raw": (1,),
            "code_counts": (num_layers, vocab),
        }
        self._val_sums = {k: torch.zeros(s, dtype=torch.float64, device=self.device) for k, s in shapes.items()}

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        sums, normalizer = self._val_sums, self.normalizer
        codes = self.ae.tokenize(batch)  # [B, P, n, L] token codes
        raw = normalizer.unnormalize(batch)  # [B, T, D]
        recons = [self.ae.decode_codes(codes[..., :m]) for m in range(1, self.ae.num_layers + 1)]
        for layer, recon in enumerate(recons):
            sums["abs_err"][layer] += (recon - batch).abs().sum()
            sums["abs_err_raw"][layer] += (normalizer.unnormalize(recon) - raw).abs().sum()
        sums["loss"] += self._loss(recons[-1], batch).double() * batch.numel()
        sums["count"] += batch.numel()
        uniform = self.baseline.detokenize(self.baseline.tokenize(batch))  # [B, T, D]
        sums["abs_err_uniform"] += (uniform - batch).abs().sum()
        sums["abs_err_uniform_raw"] += (normalizer.unnormalize(uniform) - raw).abs().sum()
        layer_codes = codes.movedim(-1, 0).reshape(self.ae.num_layers, -1)  # [L, B*P*n]
        offsets = torch.arange(self.ae.num_layers, device=codes.device).view(-1, 1) * self.ae.vocab_size
        counts = torch.bincount((layer_codes + offsets).flatten(), minlength=self.ae.num_layers * self.ae.vocab_size)
        sums["code_counts"] += counts.view(self.ae.num_layers, -1).double()
        if batch_idx == 0 and self.hparams.num_plot_chunks > 0:
            self._log_figure(raw, [normalizer.unnormalize(r) for r in recons])

    def on_validation_epoch_end(self) -> None:
        # sum the accumulators over ranks (all_gather adds a leading world-size dim under DDP)
        sums = {k: self.all_gather(v).reshape(-1, *v.shape).sum(0) for k, v in self._val_sums.items()}
        count = sums["count"].clamp(min=1)
        metrics = {"loss": sums["loss"] / count}
        for layer in range(self.ae.num_layers):
            metrics[f"mae_depth_{layer + 1}"] = sums["abs_err"][layer] / count
            metrics[f"mae_raw_depth_{layer + 1}"] = sums["abs_err_raw"][layer] / count
        probs = sums["code_counts"] / sums["code_counts"].sum(-1, keepdim=True).clamp(min=1)  # [L, V]
        entropy = -(probs * probs.clamp(min=1e-12).log()).sum(-1)  # [L]
        for layer in range(self.ae.num_layers):
            metrics[f"perplexity_layer_{layer + 1}"] = entropy[layer].exp()
            metrics[f"codes_used_layer_{layer + 1}"] = (sums["code_counts"][layer] > 0).sum().double()
        metrics["mae_uniform256"] = sums["abs_err_uniform"] / count
        metrics["mae_raw_uniform256"] = sums["abs_err_uniform_raw"] / count
        self.val_metrics = {f"val/{key}": float(value) for key, value in metrics.items()}
        for key, value in metrics.items():
            self.log(f"val/{key}", value.float().squeeze(), prog_bar=key in ("loss", self.monitor[4:]))

    def on_validation_end(self) -> None:
        if self.trainer.state.fn == "validate" and self.trainer.is_global_zero and self.val_metrics:
            print(depth_table(self.val_metrics, self.ae.num_layers, "validated checkpoint", self.ae.layout))

    def _log_figure(self, raw: torch.Tensor, recons_raw: list[torch.Tensor]) -> None:
        experiment = getattr(self.logger, "experiment", None) if self.logger is not None else None
        if not hasattr(experiment, "add_figure") or self.trainer.sanity_checking:
            return
        figure = plot_chunks(raw, recons_raw, self.hparams.num_plot_chunks)
        experiment.add_figure("val/reconstruction", figure, global_step=self.global_step)

    # ---- summary and export ------------------------------------------------------------------

    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero and self.val_metrics:
            print(depth_table(self.val_metrics, self.ae.num_layers, "last validation of the fit", self.ae.layout))

    def export_payload(self) -> dict:
        """What the registry stores: AE weights, its config, validation metrics, lineage and stats."""
        if self.normalizer_stats is None:
            raise RsdError("RFSQModule.export_payload: no normalisation statistics (was it fitted?)")
        training = {k: self.hparams[k] for k in ("lr", "weight_decay", "quantize_dropout", "loss")}
        return {
            "tensors": {k: v.detach().cpu().contiguous() for k, v in self.ae.state_dict().items()},
            "config": {"model": self.ae.config, "training": training},
            "metrics": dict(self.val_metrics),
            "lineage": {"data_fingerprint": self.data_fingerprint},
            "extra_json": {"stats": self.normalizer_stats},
        }


def warmup_cosine(step: int, total_steps: int, warmup_fraction: float = 0.1, floor: float = 0.01) -> float:
    """LR factor: linear warm-up over the first `warmup_fraction`, cosine decay to `floor`; flat after the end."""
    warmup = max(1, int(total_steps * warmup_fraction))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def depth_table(metrics: dict[str, float], num_layers: int, title: str, layout=None) -> str:
    """Per prefix depth: MAE in normalised and raw units, plus the 256-bin baseline, as text."""
    lines = [
        f"RFSQ reconstruction MAE on validation chunks ({title})"
        + (f"; token layout: {layout.describe()}" if layout is not None else ""),
        f"{'depth':>10} {'normalised':>12} {'raw':>12}",
    ]
    for depth in range(1, num_layers + 1):
        norm, raw = metrics[f"val/mae_depth_{depth}"], metrics[f"val/mae_raw_depth_{depth}"]
        lines.append(f"{depth:>10} {norm:>12.6f} {raw:>12.6f}")
    norm, raw = metrics["val/mae_uniform256"], metrics["val/mae_raw_uniform256"]
    lines.append(f"{'uniform256':>10} {norm:>12.6f} {raw:>12.6f}")
    usage = " ".join(f"{metrics[f'val/perplexity_layer_{i}']:.2f}" for i in range(1, num_layers + 1))
    lines.append(f"code perplexity per layer: {usage}")
    if all(f"val/codes_used_layer_{i}" in metrics for i in range(1, num_layers + 1)):
        used = " ".join(f"{metrics[f'val/codes_used_layer_{i}']:.0f}" for i in range(1, num_layers + 1))
        total = f" of {layout.vocab_size}" if layout is not None else ""
        lines.append(f"codes used per layer{total}: {used}")
    return "\n".join(lines)


def plot_chunks(raw: torch.Tensor, recons_raw: list[torch.Tensor], num_chunks: int):
    """Figure: rows = chunks, columns = the D action dims; original vs depth-1 and full-depth recon."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_chunks = min(num_chunks, raw.shape[0])
    action_dim = raw.shape[-1]
    size = (2.2 * action_dim, 1.8 * num_chunks)
    figure, axes = plt.subplots(num_chunks, action_dim, figsize=size, squeeze=False)
    full = len(recons_raw)
    series = [("original", raw, "k-"), ("depth 1", recons_raw[0], "C1--"), (f"depth {full}", recons_raw[-1], "C0:")]
    for row in range(num_chunks):
        for dim in range(action_dim):
            axis = axes[row][dim]
            for label, values, style in series:
                axis.plot(values[row, :, dim].detach().cpu().numpy(), style, label=label)
            if row == 0:
                axis.set_title(f"dim {dim}")
    axes[0][0].legend(fontsize=6)
    figure.tight_layout()
    return figure
