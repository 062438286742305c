"""Test-only pieces loaded by `fit` subprocesses of tests/test_fault_injection.py (PYTHONPATH=tests): they make
the moments a kill must survive long enough to be hit on purpose. Never used outside the tests."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback

from rsd_pl.lit.rfsq_module import RFSQModule

PADDING = 16_000_000  # float32 values: 64 MB, a write of a few hundred ms


class SlowCheckpoint(Callback):
    """Pads every checkpoint (`padding`, ignored on load) so that writing it takes a while."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        checkpoint["padding"] = torch.zeros(PADDING)


class SlowExportRFSQ(RFSQModule):
    """The RFSQ module with a padded export, so that the registry write takes a while."""

    def export_payload(self) -> dict:
        payload = super().export_payload()
        payload["tensors"] = {**payload["tensors"], "padding": torch.zeros(PADDING)}
        return payload
