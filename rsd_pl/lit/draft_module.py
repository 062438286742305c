"""`DraftModule`: distils the draft model from a FROZEN main model (phase 2, DESIGN.md section 4).

Per batch the main model runs teacher-forced (no grad) on the ground-truth codes; the draft sees the
main model's Q-block hidden states and the same codes and predicts layers 2..L. Loss = KL(main || draft)
per code (temperature `temperature`) + `ce_weight` x CE on the ground-truth codes. Logged:
`val/agreement_layer_l` (argmax of draft == argmax of main, l = 2..L), `val/agreement`,
`val/agreement_coarse` (layers 2..coarse_layers), `val/draft_acc_layer_l` (vs ground truth).
Exported as `draft@<version>` with lineage {"main": "main@<v>", "tokenizer": "rfsq@<v>"}.

The main model is frozen and sees the same inputs every epoch, so with `cache_teacher` its outputs
(Q-block hidden states and layer logits) are kept per sample after the first time they are computed;
later epochs run only the draft (about 2.7x faster per step for the quickstart's models).
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info

from rsd_pl.errors import RsdError
from rsd_pl.lit.main_module import check_data_matches, layer_accuracy, warmup_cosine
from rsd_pl.models.draft import DraftConfig, DraftModel
from rsd_pl.models.main_model import MainModel, load_main
from rsd_pl.registry import Registry


class TeacherCache:
    """The frozen main model's outputs for each sample of one dataset split, filled as batches arrive.

    Hand-written: Lightning and torch have no cache of a frozen module's outputs keyed by sample.
    Tensors are stored as computed (same dtype and device), so a cached step is bit-identical to
    recomputing it; the first batch sets the shapes.
    """

    def __init__(self, dataset) -> None:
        self.dataset = dataset  # the cache is valid for this dataset object only
        self.query: torch.Tensor | None = None  # [N, T, H_main]
        self.logits: torch.Tensor | None = None  # [N, L-1, P, n, V]
        self.filled: torch.Tensor | None = None  # bool [N]

    def lookup(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.filled is None or not bool(self.filled[index].all()):
            return None
        return self.query[index], self.logits[index]

    def store(self, index: torch.Tensor, query: torch.Tensor, logits: torch.Tensor) -> None:
        if self.filled is None:
            size = len(self.dataset)
            self.query = query.new_empty((size, *query.shape[1:]))
            self.logits = logits.new_empty((size, *logits.shape[1:]))
            self.filled = torch.zeros(size, dtype=torch.bool, device=index.device)
        self.query[index], self.logits[index] = query, logits
        self.filled[index] = True

    def nbytes(self) -> int:
        if self.filled is None:
            return 0
        return self.query.nbytes + self.logits.nbytes


class DraftModule(L.LightningModule):
    """Phase 2: the draft model, trained on a `VLADataModule` with the main model's tokenizer.

    Args:
        main: Registry spec of the frozen main model (`main@best`, `main@3`, ...).
        registry_root: Registry folder to read the main model from (default: $RSD_CHECKPOINTS, else checkpoints).
        hidden: Draft hidden size (512 at 7B scale).
        layers: Transformer layers of the draft.
        heads: Attention heads.
        mlp: MLP width.
        kl_weight: Weight of KL(main || draft).
        ce_weight: Weight of the CE on ground-truth codes.
        temperature: Softmax temperature of the distillation targets and the draft.
        coarse_layers: `val/agreement_coarse` averages layers 2..coarse_layers.
        lr: Peak AdamW learning rate (warmup + cosine).
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warmup steps.
        cache_teacher: Keep the frozen main model's outputs per sample on the training device after
            their first forward (per sample: T x H_main + (L-1) x P x n x K**g values, about 30 KB for the
            tiny presets in fp32, about 77 KB at 7B in bf16). Turn off when that does not fit.
    """

    artifact_name = "draft"
    monitor = "val/agreement"
    monitor_mode = "max"
    best_group_keys = ("main",)  # agreement is only comparable between drafts of the same main model

    def __init__(self, main: str = "main@best", registry_root: str | None = None, hidden: int = 128,
                 layers: int = 2, heads: int = 4, mlp: int = 512, kl_weight: float = 1.0, ce_weight: float = 0.5,
                 temperature: float = 1.0, coarse_layers: int = 3, lr: float = 1e-3, weight_decay: float = 0.01,
                 warmup_steps: int = 50, cache_teacher: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters()
        main_model, artifact = load_main(main, Registry(registry_root))
        self.frozen: dict[str, MainModel] = {"main": main_model.requires_grad_(False)}  # not a submodule
        self.main_spec, self.main_lineage = artifact.spec, dict(artifact.lineage)
        cfg = main_model.cfg
        self.draft_cfg = DraftConfig(main_hidden=main_model.hidden_size, hidden=hidden, layers=layers, heads=heads,
                                     mlp=mlp, chunk_len=cfg.chunk_len, latent_dim=cfg.latent_dim,
                                     num_layers=cfg.num_layers, num_levels=cfg.num_levels,
                                     positions=cfg.layout.positions, group=cfg.group,
                                     factored=cfg.factored, joint_layers=cfg.joint_layers)
        self.draft = DraftModel(self.draft_cfg)
        self.data_fingerprint: str | None = None
        self.val_metrics: dict[str, float] = {}
        self._sums: dict[str, torch.Tensor] = {}
        self._teacher_caches: dict[str, TeacherCache] = {}

    @property
    def main(self) -> MainModel:
        return self.frozen["main"].to(self.device).eval()

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None or not hasattr(datamodule, "load_tokenizer"):
            raise RsdError("DraftModule needs data: class_path rsd_pl.lit.vla_data.VLADataModule")
        check_data_matches(self.frozen["main"].cfg.backbone, datamodule)
        tokenizer = datamodule.load_tokenizer().spec
        if tokenizer != self.main_lineage.get("tokenizer"):
            raise RsdError(f"main model {self.main_spec} was trained with tokenizer "
                           f"{self.main_lineage.get('tokenizer')!r} but data.init_args.tokenizer resolves "
                           f"{tokenizer}; use the main model's tokenizer")
        datamodule.setup(stage)
        self.data_fingerprint = datamodule.fingerprint()
        if self.hparams.cache_teacher:
            for split in ("train", "val"):
                dataset = getattr(datamodule, f"{split}_set", None)
                cache = self._teacher_caches.get(split)
                if dataset is not None and (cache is None or cache.dataset is not dataset):
                    self._teacher_caches[split] = TeacherCache(dataset)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rsd_pl"] = {"main": self.main_spec, "val_metrics": self.val_metrics}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("rsd_pl", {})
        if saved.get("main") not in (None, self.main_spec):
            raise RsdError(f"the checkpoint distils {saved['main']} but model.init_args.main resolves "
                           f"{self.main_spec}; set model.init_args.main: {saved['main']}")
        self.val_metrics = dict(saved.get("val_metrics") or {})

    # ---- training ---------------------------------------------------------------------------------

    def _teacher(self, batch: dict, codes: torch.Tensor, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen main model's Q-block hidden states [B, T, H] and logits of layers 2..L."""
        index = batch.get("index")
        cache = self._teacher_caches.get(split) if index is not None else None
        if cache is not None and (cached := cache.lookup(index)) is not None:
            return cached
        with torch.no_grad():
            main_out = self.main(batch, codes)
        query, logits = main_out.query_hidden, main_out.layer_logits[:, 1:]  # (B, L-1, P, n, V) layers 2..L
        if cache is not None:
            cache.store(index, query, logits)
        return query, logits

    def _forward(self, batch: dict, split: str):
        codes = batch["codes"][..., : self.draft_cfg.num_layers]  # (B, P, n, L)
        query, logits = self._teacher(batch, codes, split)
        student = self.draft(query, codes)  # (B, L-1, P, n, V)
        return logits.float(), student, codes.permute(0, 3, 1, 2)[:, 1:]  # targets (B, L-1, P, n)

    def _losses(self, teacher, student, target):
        temp, vocab = self.hparams.temperature, self.draft_cfg.layout.vocab_size  # one softmax per token
        log_q = F.log_softmax(student / temp, -1).reshape(-1, vocab)
        log_p = F.log_softmax(teacher / temp, -1).reshape(-1, vocab)
        kl = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean") * temp**2
        ce = F.cross_entropy(student.reshape(-1, vocab), target.reshape(-1))
        return self.hparams.kl_weight * kl + self.hparams.ce_weight * ce, kl, ce

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, kl, ce = self._losses(*self._forward(batch, "train"))
        size = batch["codes"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/kl", kl, batch_size=size)
        self.log("train/ce", ce, batch_size=size)
        return loss

    def on_train_epoch_end(self) -> None:
        if self.current_epoch == 0 and self._teacher_caches:
            sizes = ", ".join(f"{split} {int(c.filled.sum()) if c.filled is not None else 0}/{len(c.dataset)}"
                              for split, c in self._teacher_caches.items())
            megabytes = sum(c.nbytes() for c in self._teacher_caches.values()) / 2**20
            rank_zero_info(f"draft: the main model's outputs are cached for {sizes} samples ({megabytes:.0f} MB); "
                           "later epochs run only the draft (model.init_args.cache_teacher)")

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.draft.parameters(), lr=self.hparams.lr,
                                      weight_decay=self.hparams.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = warmup_cosine(optimizer, self.hparams.warmup_steps, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- validation -------------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        drafted = self.draft_cfg.num_layers - 1
        shapes = {"count": 1, "tokens": 1, "loss": 1, "agree": drafted, "acc": drafted}
        self._sums = {k: torch.zeros(n, dtype=torch.float64, device=self.device) for k, n in shapes.items()}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        teacher, student, target = self._forward(batch, "val")
        loss, _, _ = self._losses(teacher, student, target)
        size = target.shape[0]
        self._sums["count"] += size
        self._sums["tokens"] += target[:, 0].numel()
        self._sums["loss"] += loss.double() * size
        self._sums["agree"] += layer_accuracy(student, teacher.argmax(-1))
        self._sums["acc"] += layer_accuracy(student, target)

    def on_validation_epoch_end(self) -> None:
        sums = {k: self.all_gather(v).reshape(-1, *v.shape).sum(0) for k, v in self._sums.items()}
        tokens = sums["tokens"].clamp(min=1)
        agree, acc = sums["agree"] / tokens, sums["acc"] / tokens  # index 0 = layer 2
        coarse = max(1, self.hparams.coarse_layers - 1)
        metrics = {"loss": sums["loss"] / sums["count"].clamp(min=1), "agreement": agree.mean(),
                   "agreement_coarse": agree[:coarse].mean()}
        for i in range(agree.shape[0]):
            metrics[f"agreement_layer_{i + 2}"] = agree[i]
            metrics[f"draft_acc_layer_{i + 2}"] = acc[i]
        self.val_metrics = {f"val/{k}": float(v) for k, v in metrics.items()}
        for key, value in metrics.items():
            self.log(f"val/{key}", value.float().squeeze(), prog_bar=key in ("agreement", "agreement_coarse"))

    def on_validation_end(self) -> None:
        if self.trainer.state.fn == "validate" and self.trainer.is_global_zero and self.val_metrics:
            print(agreement_table(self.val_metrics, self.draft_cfg.num_layers, "validated checkpoint"))

    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero and self.val_metrics:
            print(agreement_table(self.val_metrics, self.draft_cfg.num_layers, "last validation of the fit"))

    # ---- export -----------------------------------------------------------------------------------

    def export_payload(self) -> dict:
        training = {k: self.hparams[k] for k in ("kl_weight", "ce_weight", "temperature", "lr", "weight_decay")}
        return {
            "tensors": {k: v.detach().cpu().contiguous() for k, v in self.draft.state_dict().items()},
            "config": {"draft": self.draft_cfg.to_dict(), "training": training},
            "metrics": dict(self.val_metrics),
            "lineage": {"main": self.main_spec, "tokenizer": self.main_lineage.get("tokenizer"),
                        "data_fingerprint": self.data_fingerprint},
            "extra_json": {},
        }


def agreement_table(metrics: dict[str, float], num_layers: int, title: str) -> str:
    lines = [f"draft model, validation ({title}): agreement with the main model (argmax) and accuracy",
             f"{'layer':>6} {'agreement':>10} {'draft_acc':>10}"]
    for layer in range(2, num_layers + 1):
        lines.append(f"{layer:>6} {metrics[f'val/agreement_layer_{layer}']:>10.3f} "
                     f"{metrics[f'val/draft_acc_layer_{layer}']:>10.3f}")
    lines.append(f"mean agreement {metrics['val/agreement']:.3f}, coarse {metrics['val/agreement_coarse']:.3f}")
    return "\n".join(lines)
