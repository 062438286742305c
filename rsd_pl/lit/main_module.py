"""`MainModule`: trains the main model (VLA backbone + RFSQ token heads + L1 baseline), phase 2.

Loss = CE of the autoregressive layer heads (teacher forcing, all L layers) + CE of the parallel head
+ L1 of the regression head (normalised actions). Logged: `train/loss` (and its parts), learning rate,
`val/token_acc_layer_l` (AR heads, teacher forced), `val/parallel_acc_layer_l`, and the decoded-action
L1 per head: `val/l1_ar` (real greedy layer-by-layer decoding with the KV cache, codes decoded with the
tokenizer's decoder), `val/l1_parallel`, `val/l1_regression`, plus `val/l1_tokenizer` (the tokenizer's
own reconstruction error of the ground truth, the floor of the token heads). Exported as `main@<version>`.
"""

from __future__ import annotations

import math

import lightning as L
import torch

from rsd_pl.errors import RsdError
from rsd_pl.lit.vla_data import TokenizerBundle
from rsd_pl.models.main_model import MainModel, MainModelConfig, token_losses


def check_tokenizer(cfg: MainModelConfig, tokenizer, spec: str) -> None:
    """Refuse a tokenizer whose shapes differ from the model config (fewer model layers are a valid prefix)."""
    pairs = [("chunk_len", cfg.chunk_len, tokenizer.chunk_len), ("action_dim", cfg.action_dim, tokenizer.action_dim),
             ("latent_dim", cfg.latent_dim, tokenizer.latent_dim), ("num_levels", cfg.num_levels, tokenizer.num_levels)]
    for key, ours, theirs in pairs:
        if ours != theirs:
            raise RsdError(f"model.network.{key}={ours} but tokenizer {spec} has {key}={theirs}")
    layout = getattr(tokenizer, "layout", None)
    if layout is not None and layout != cfg.layout:
        raise RsdError(f"model.network token layout ({cfg.layout.describe()}) differs from tokenizer {spec}'s "
                       f"({layout.describe()}): set model.network.positions={layout.positions} and "
                       f"group={layout.group}")
    if cfg.num_layers > tokenizer.num_layers:
        raise RsdError(f"model.network.num_layers={cfg.num_layers} but tokenizer {spec} has only "
                       f"{tokenizer.num_layers} layers")


def check_data_matches(backbone_cfg, datamodule) -> None:
    """The data's images / cameras / object_pos must be what the backbone was built for."""
    pairs = [("image_size", backbone_cfg.image_size, datamodule.image_size),
             ("num_cameras", backbone_cfg.num_cameras, len(datamodule.cameras)),
             ("use_object_pos", backbone_cfg.use_object_pos, datamodule.use_object_pos),
             ("image_pipeline", backbone_cfg.image_pipeline, getattr(datamodule, "image_pipeline", "resize"))]
    for key, ours, theirs in pairs:
        if ours != theirs:
            raise RsdError(f"backbone {key}={ours} but the data gives {theirs} "
                           f"(data.init_args: image_size, cameras, use_object_pos, image_pipeline)")


def layer_accuracy(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """logits [B, L, P, n, V], codes [B, L, P, n] -> correct counts per layer [L]."""
    return (logits.argmax(-1) == codes).flatten(2).sum(-1).sum(0)


@torch.no_grad()
def greedy_ar_codes(model: MainModel, batch: dict) -> torch.Tensor:
    """Greedy layer-by-layer decoding with the KV cache (the `ar` mode): -> codes [B, P, n, L]."""
    pre = model.prefill(batch)
    codes = [pre.layer1_logits.argmax(-1)]  # L x (B, P, n)
    for layer in range(1, model.num_layers):
        logits = model.extend(codes[-1].unsqueeze(-1), layer, pre.cache)  # (B, 1, P, n, V)
        codes.append(logits[:, 0].argmax(-1))
    return torch.stack(codes, dim=-1)


def warmup_cosine(optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class MainModule(L.LightningModule):
    """Phase 2: the main model, trained on a `VLADataModule` (which owns the frozen tokenizer).

    Args:
        network: Backbone and token shapes (`MainModelConfig`; shapes must match the tokenizer).
        lr: Peak AdamW learning rate (linear warmup, cosine decay to 5%).
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warmup steps.
        ar_weight: Weight of the CE of the autoregressive layer heads.
        parallel_weight: Weight of the CE of the parallel head.
        l1_weight: Weight of the L1 regression head.
    """

    artifact_name = "main"
    monitor = "val/token_acc"
    monitor_mode = "max"
    best_group_keys = ("tokenizer", "data_fingerprint")  # token accuracy depends on both

    def __init__(self, network: MainModelConfig | None = None, lr: float = 1e-3, weight_decay: float = 0.01,
                 warmup_steps: int = 50, ar_weight: float = 1.0, parallel_weight: float = 1.0,
                 l1_weight: float = 1.0) -> None:
        super().__init__()
        self.cfg = network or MainModelConfig()
        self.save_hyperparameters(ignore=["network"])
        self.hparams["network"] = self.cfg.to_dict()  # plain dict in checkpoints
        self.model = MainModel(self.cfg)
        self.frozen: dict[str, TokenizerBundle] = {}  # not a submodule: never trained or saved here
        self.tokenizer_spec: str | None = None
        self.data_fingerprint: str | None = None
        self.data_cameras: list[str] | None = None
        self.data_camera_size: int | None = None
        self.val_metrics: dict[str, float] = {}
        self._sums: dict[str, torch.Tensor] = {}

    # ---- data hand-over -------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None or not hasattr(datamodule, "load_tokenizer"):
            raise RsdError("MainModule needs data: class_path rsd_pl.lit.vla_data.VLADataModule")
        check_data_matches(self.cfg.backbone, datamodule)
        bundle = datamodule.load_tokenizer()
        check_tokenizer(self.cfg, bundle.model, bundle.spec)
        datamodule.setup(stage)
        self.frozen["tokenizer"] = bundle
        self.tokenizer_spec, self.data_fingerprint = bundle.spec, datamodule.fingerprint()
        self.data_cameras = list(datamodule.cameras)  # eval renders these cameras (config["data"])
        self.data_camera_size = datamodule.camera_size()  # ... at this side
        self.model.backbone.set_state_stats("proprio", *datamodule.state_stats("proprio"))
        if self.model.cfg.backbone.use_object_pos:
            self.model.backbone.set_state_stats("object_pos", *datamodule.state_stats("object_pos"))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rsd_pl"] = {"tokenizer": self.tokenizer_spec, "data_fingerprint": self.data_fingerprint,
                                "val_metrics": self.val_metrics}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("rsd_pl", {})
        if self.tokenizer_spec is not None and saved.get("tokenizer") not in (None, self.tokenizer_spec):
            raise RsdError(f"the checkpoint was trained with tokenizer {saved['tokenizer']} but the data now "
                           f"resolves {self.tokenizer_spec}; set data.init_args.tokenizer: {saved['tokenizer']}")
        self.val_metrics = dict(saved.get("val_metrics") or {})

    def _tokenizer(self):
        if "tokenizer" not in self.frozen:
            raise RsdError("MainModule has no tokenizer: fit it with a VLADataModule")
        return self.frozen["tokenizer"].model.to(self.device)

    # ---- training -------------------------------------------------------------------------------

    def _losses(self, batch: dict):
        codes = batch["codes"][..., : self.cfg.num_layers]  # (B, P, n, L)
        out = self.model(batch, codes)
        parts = token_losses(out, codes, batch["actions"], self.cfg.group)
        hp = self.hparams
        loss = hp.ar_weight * parts["ce_ar"] + hp.parallel_weight * parts["ce_parallel"] + hp.l1_weight * parts["l1"]
        return loss, parts, out, codes.permute(0, 3, 1, 2)  # targets (B, L, P, n)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, parts, _, _ = self._losses(batch)
        size = batch["actions"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        for key, value in parts.items():
            self.log(f"train/{key}", value, batch_size=size)
        return loss

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = warmup_cosine(optimizer, self.hparams.warmup_steps, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- validation -------------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        num_layers = self.cfg.num_layers
        shapes = {"count": 1, "tokens": 1, "loss": 1, "acc_ar": num_layers, "acc_parallel": num_layers,
                  "l1_ar": 1, "l1_parallel": 1, "l1_regression": 1, "l1_tokenizer": 1,
                  "code_counts": num_layers * self.model.vocab_size}
        self._sums = {k: torch.zeros(n, dtype=torch.float64, device=self.device) for k, n in shapes.items()}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, _, out, target = self._losses(batch)
        sums, tokenizer, actions = self._sums, self._tokenizer(), batch["actions"]
        size = actions.shape[0]
        sums["count"] += size
        sums["tokens"] += target[:, 0].numel()  # tokens per layer
        sums["loss"] += loss.double() * size
        sums["acc_ar"] += layer_accuracy(out.layer_logits, target)
        sums["acc_parallel"] += layer_accuracy(out.parallel_logits, target)
        levels = self.model.vocab_size
        layer_offsets = torch.arange(self.cfg.num_layers, device=self.device) * levels
        flat = (batch["codes"][..., : self.cfg.num_layers] + layer_offsets).flatten()
        sums["code_counts"] += torch.bincount(flat, minlength=self.cfg.num_layers * levels).double()
        decoded = {
            "l1_ar": tokenizer.decode_codes(greedy_ar_codes(self.model, batch)),
            "l1_parallel": tokenizer.decode_codes(out.parallel_logits.argmax(-1).permute(0, 2, 3, 1)),
            "l1_regression": out.l1_actions,
            "l1_tokenizer": tokenizer.decode_codes(batch["codes"][..., : self.cfg.num_layers]),
        }
        for key, predicted in decoded.items():
            sums[key] += (predicted.float() - actions).abs().mean(dim=(1, 2)).sum()

    def on_validation_epoch_end(self) -> None:
        sums = {k: self.all_gather(v).reshape(-1, *v.shape).sum(0) for k, v in self._sums.items()}
        count, tokens = sums["count"].clamp(min=1), sums["tokens"].clamp(min=1)
        metrics = {"loss": sums["loss"] / count, "token_acc": sums["acc_ar"].mean() / tokens,
                   "parallel_acc": sums["acc_parallel"].mean() / tokens}
        # the majority baseline: always predict the layer's most frequent code (fine layers are not uniform)
        majority = sums["code_counts"].view(self.cfg.num_layers, -1).amax(dim=1) / tokens
        for layer in range(self.cfg.num_layers):
            metrics[f"token_acc_layer_{layer + 1}"] = sums["acc_ar"][layer] / tokens
            metrics[f"parallel_acc_layer_{layer + 1}"] = sums["acc_parallel"][layer] / tokens
            metrics[f"majority_layer_{layer + 1}"] = majority[layer]
        for key in ("l1_ar", "l1_parallel", "l1_regression", "l1_tokenizer"):
            metrics[key] = sums[key] / count
        self.val_metrics = {f"val/{k}": float(v) for k, v in metrics.items()}
        for key, value in metrics.items():
            self.log(f"val/{key}", value.float().squeeze(), prog_bar=key in ("token_acc", "l1_ar"))

    def on_validation_end(self) -> None:
        if self.trainer.state.fn == "validate" and self.trainer.is_global_zero and self.val_metrics:
            print(summary_table(self.val_metrics, self.cfg.num_layers, self.model.vocab_size,
                                "validated checkpoint"))

    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero and self.val_metrics:
            print(summary_table(self.val_metrics, self.cfg.num_layers, self.model.vocab_size,
                                "last validation of the fit"))

    # ---- export ---------------------------------------------------------------------------------

    def export_payload(self) -> dict:
        if self.tokenizer_spec is None:
            raise RsdError("MainModule.export_payload: no tokenizer lineage (was it fitted?)")
        training = {k: self.hparams[k] for k in ("lr", "weight_decay", "warmup_steps", "ar_weight",
                                                 "parallel_weight", "l1_weight")}
        return {
            "tensors": self.model.export_tensors(),
            "config": {"model": self.cfg.to_dict(), "hidden_size": self.model.hidden_size, "training": training,
                       "data": {"cameras": self.data_cameras, "camera_size": self.data_camera_size}},
            "metrics": dict(self.val_metrics),
            "lineage": {"tokenizer": self.tokenizer_spec, "data_fingerprint": self.data_fingerprint},
            "extra_json": {},
        }


def summary_table(metrics: dict[str, float], num_layers: int, vocab_size: int, title: str) -> str:
    """Per layer: validation token accuracy of the AR heads and the parallel head; decoded-action L1."""
    lines = [f"main model, validation ({title}); chance = {1 / vocab_size:.3g} ({vocab_size} codes per token); "
             "majority = always the layer's most frequent code",
             f"{'layer':>6} {'ar_acc':>8} {'parallel_acc':>13} {'majority':>9}"]
    for layer in range(1, num_layers + 1):
        majority = metrics.get(f"val/majority_layer_{layer}", float("nan"))
        lines.append(f"{layer:>6} {metrics[f'val/token_acc_layer_{layer}']:>8.3f} "
                     f"{metrics[f'val/parallel_acc_layer_{layer}']:>13.3f} {majority:>9.3f}")
    lines.append(f"{'mean':>6} {metrics['val/token_acc']:>8.3f} {metrics['val/parallel_acc']:>13.3f}")
    l1 = ", ".join(f"{k}={metrics[f'val/{k}']:.4f}" for k in ("l1_ar", "l1_parallel", "l1_regression",
                                                                "l1_tokenizer"))
    lines.append(f"decoded-action L1 (normalised units): {l1}")
    lines.append("fine layers encode residuals below the model's precision and stay near the majority baseline; "
                 "scripts/layer_predictability.py shows the accuracy any model of a given precision can reach")
    return "\n".join(lines)
