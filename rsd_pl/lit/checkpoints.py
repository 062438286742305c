"""Checkpoints that a kill cannot break: what `fit` writes under `<run_dir>/checkpoints/`.

- `AtomicCheckpointIO` writes each `.ckpt` under a temporary name in the same folder, fsyncs it and renames
  it over the target, so `last.ckpt` is always the previous complete checkpoint or the new one (Lightning's
  own writer streams into the final name). A full disk leaves the previous file and says so.
- `ResumableCheckpoint` is Lightning's `ModelCheckpoint` (best by the monitor, plus `last.ckpt`) that writes
  `last.ckpt` at every validation (Lightning 2.6 writes it only with a new best) and, when resumed, finds
  its best checkpoint again if a kill came between removing the old best file and writing `last.ckpt`
  (whose state still names the removed file).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import CheckpointIO, TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

from rsd_pl.durable import atomic_file

BEST_STEP = re.compile(r"step=(\d+)")


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into `.<name>.*.partial` beside the target, fsync, rename (`rsd_pl.durable.atomic_file`;
    local paths only)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in target.parent.glob(".*.ckpt.*.partial"):  # left by a writer killed mid-write (one writer: rank 0)
            stale.unlink(missing_ok=True)
        with atomic_file(target) as f:
            torch.save(checkpoint, f)


def with_atomic_checkpoints(plugins: Any) -> list[Any]:
    """The trainer's plugins plus `AtomicCheckpointIO`, unless the config already names a CheckpointIO."""
    plugins = list(plugins or []) if isinstance(plugins, list | tuple) else ([plugins] if plugins else [])
    if any(isinstance(plugin, CheckpointIO) for plugin in plugins):
        return plugins
    return [*plugins, AtomicCheckpointIO()]


class ResumableCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose resumed state never points at a best checkpoint that is gone."""

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_anyway(trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_anyway(trainer)

    def _save_last_anyway(self, trainer: Any) -> None:
        """Write last.ckpt when the monitor did not improve too: Lightning 2.6 writes it only together with a new
        best, so a kill sent training back to its last improvement, and a finished run resumed from there
        trained the epochs since then again."""
        if (self.save_last and not self._should_skip_saving_checkpoint(trainer)
                and self._last_global_step_saved != trainer.global_step):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    @property
    def state_key(self) -> str:
        """ModelCheckpoint's key, so checkpoints written before this class existed resume with their state."""
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if not self.best_model_path or Path(self.best_model_path).is_file() or self.dirpath is None:
            return
        found = _newest_best(Path(self.dirpath))
        missing = self.best_model_path
        self.best_k_models = {path: score for path, score in self.best_k_models.items() if Path(path).is_file()}
        if found is None:
            self.best_model_path, self.best_model_score = "", None
            rank_zero_warn(f"{missing} (the best checkpoint named in last.ckpt) is gone and no other best-*.ckpt "
                           f"is in {self.dirpath}: the best is chosen again from the next validation")
            return
        score = _saved_best_score(found)
        self.best_model_path, self.best_model_score = str(found), score
        if score is not None:
            self.best_k_models[str(found)] = score
            self.kth_best_model_path, self.kth_value = str(found), score
        rank_zero_warn(f"{missing} (the best checkpoint named in last.ckpt) is gone: a kill came between writing "
                       f"a new best and last.ckpt; resuming with {found.name}, the newest best checkpoint")


def _newest_best(folder: Path) -> Path | None:
    """The best-*.ckpt with the highest step: with save_top_k=1 a best file is only written when it improves."""
    candidates = [(int(m.group(1)), p) for p in folder.glob("best-*.ckpt") if (m := BEST_STEP.search(p.name))]
    return max(candidates)[1] if candidates else None


def _saved_best_score(path: Path) -> torch.Tensor | None:
    """The monitor value a best checkpoint was saved with (its own ModelCheckpoint state)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    for key, state in checkpoint.get("callbacks", {}).items():
        if key.startswith(ModelCheckpoint.__qualname__) and isinstance(state, dict):
            return state.get("best_model_score")
    return None
