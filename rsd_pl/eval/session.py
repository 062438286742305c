"""The one set-up path of every evaluation command (`eval`, `sweep`, `multimodal`, `budget`; `benchmark` runs
`eval`): an `EvalSession` holds the torch threads, the models (loaded once, lineage checked) and what they
observe, and builds each run's policies with every engine pre-built, so shape / mode / draft errors surface
before any episode. Which episodes a run still has to do, and its output folder's lock, are `eval.episodes`.

Imports: eval.config, eval.models, eval.loop (Lightning).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from rsd_pl.eval.config import EvalConfig, ObsSpec
from rsd_pl.eval.loop import run_eval
from rsd_pl.eval.models import load_models, policy_factory


@dataclass
class EvalSession:
    """Models loaded once for one or several evaluation runs over the same weights."""

    models: dict[str, Any]
    """{"tokenizer", "normalizer", "main", "draft", "oft"} (absent ones None) and "identity", their names:
    `eval.models.load_models`."""
    obs: ObsSpec
    """What the models observe (cameras, image side, object_pos, image pipeline, render side)."""

    @classmethod
    def open(cls, cfg: EvalConfig, modes: list[str] | None = None) -> EvalSession:
        """Threads, quiet library notices, then the models for `cfg` (or for `modes`, when several runs of
        other modes share this session: a sweep, the multimodality arms)."""
        import torch

        quiet_library_notices()
        if cfg.torch_threads is not None:
            torch.set_num_threads(cfg.torch_threads)
        models, obs = load_models(dataclasses.replace(cfg, modes=modes) if modes else cfg)
        return cls(models, obs)

    @property
    def modules(self) -> nn.ModuleDict:
        """The torch modules, for Lightning to place on the device."""
        return nn.ModuleDict({k: v for k, v in self.models.items() if isinstance(v, nn.Module)})

    def policies(self, cfg: EvalConfig) -> Any:
        """`mode -> RSDPolicy` for one run; every engine of cfg.modes is built once here (errors surface now)."""
        make_policy = policy_factory(cfg, self.models)
        for mode in cfg.modes:
            make_policy(mode)
        return make_policy

    def run(self, cfg: EvalConfig, make_policy: Any | None = None) -> dict[str, Any] | None:
        """One evaluation run (resumable, under the output folder's lock); the report on rank 0, else None."""
        return run_eval(cfg, self.modules, make_policy or self.policies(cfg), self.obs, self.models.get("identity"))


def quiet_library_notices() -> None:
    """One line per episode and a progress bar: Lightning's device / tip lines and a deprecation notice of
    its own internals are not shown (warnings from our code and real errors still are)."""
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
