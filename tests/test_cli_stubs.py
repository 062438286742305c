"""Test-only Lightning stubs for the `fit` CLI tests (imported by class path `test_cli_stubs.*`).

A tiny linear regression that implements the export protocol of `rsd_pl.lit.callbacks`, so the
CLI, resume and export logic is tested apart from the real phase modules. No tests live here.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rsd_pl.errors import RsdError


class TinyRegressionData(L.LightningDataModule):
    """y = x @ w_true + 0.5 with x [N, 4]; 8 train batches of 8, 2 val batches of 8."""

    def __init__(self, num_train: int = 64, num_val: int = 16, batch_size: int = 8) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        w_true = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
        x = torch.randn(num_train + num_val, 4, generator=generator)
        y = x @ w_true + 0.5  # [N, 1]
        self.train_set = TensorDataset(x[:num_train], y[:num_train])
        self.val_set = TensorDataset(x[num_train:], y[num_train:])
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


class TinyRegressionModule(L.LightningModule):
    """Linear 4 -> 1 trained with MSE; implements artifact_name / monitor / export_payload().

    Args:
        artifact_name: Registry name of the export.
        lr: Learning rate of plain SGD.
        monitor_mode: "min" (val/loss is minimised).
        fail_export: Make export_payload() raise (tests the error path).
    """

    monitor = "val/loss"

    def __init__(
        self, artifact_name: str = "tiny", lr: float = 0.05, monitor_mode: str = "min", fail_export: bool = False
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.artifact_name = artifact_name
        self.monitor_mode = monitor_mode
        self.net = nn.Linear(4, 1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", nn.functional.mse_loss(self.net(x), y))
        self.log("val/mae", (self.net(x) - y).abs().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    def export_payload(self) -> dict:
        if self.hparams.fail_export:
            raise RsdError("export_payload: simulated failure")
        return {
            "tensors": dict(self.net.state_dict()),
            "config": {"in_features": 4, "out_features": 1},
            "metrics": {"val/mae": 123.0, "train/steps": float(self.global_step)},
            "lineage": {"data": "tiny-linear"},
            "extra_json": {"stats": {"bias_true": 0.5}},
        }


class StepRecorder(L.Callback):
    """Records the global step at every train batch start (class-level, read by the tests)."""

    steps: list[int] = []

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        StepRecorder.steps.append(trainer.global_step)


class CrashAtStep(L.Callback):
    """Simulates a killed run: raises at the start of global step `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")
