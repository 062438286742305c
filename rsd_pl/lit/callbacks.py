"""Run-level pieces of `fit`: the export protocol, default callbacks and the registry export.

Export protocol (every LightningModule that `python -m rsd_pl fit` trains implements it)::

    artifact_name: str                      registry name, e.g. "rfsq"; also names runs/<artifact_name>/
    monitor: str                            validation metric that picks the best checkpoint, e.g. "val/loss"
    monitor_mode: "min" | "max"
    export_payload() -> dict with keys
        tensors:    dict[str, Tensor]       weights to save (safetensors)
        config:     dict                    constructor config, enough to rebuild the network
        metrics:    dict[str, float]        metrics of these weights (validated ones are added on top)
        lineage:    dict                    data fingerprint, parent artifacts (e.g. "tokenizer": "rfsq@2")
        extra_json: dict[str, dict]         optional, e.g. {"stats": normaliser statistics}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, LearningRateMonitor

from rsd_pl.errors import RsdError
from rsd_pl.lit.checkpoints import ResumableCheckpoint
from rsd_pl.registry import Artifact, Registry

PAYLOAD_KEYS = ("tensors", "config", "metrics", "lineage")


def check_export_protocol(module: L.LightningModule) -> None:
    """Raise `RsdError` naming what the module lacks of the export protocol (see module docstring)."""
    name = type(module).__qualname__
    missing = [a for a in ("artifact_name", "monitor", "monitor_mode") if not getattr(module, a, None)]
    if not callable(getattr(module, "export_payload", None)):
        missing.append("export_payload()")
    if missing:
        raise RsdError(f"model {name} does not implement the export protocol: missing {', '.join(missing)}")
    if module.monitor_mode not in ("min", "max"):
        raise RsdError(f"model {name}: monitor_mode must be 'min' or 'max', got {module.monitor_mode!r}")


def run_callbacks(module: L.LightningModule, run_dir: Path, with_logger: bool) -> list[Callback]:
    """[ModelCheckpoint (best by monitor + last.ckpt, in `<run_dir>/checkpoints`; `ResumableCheckpoint`), LR
    logging]."""
    checkpoint = ResumableCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best-{epoch}-{step}",
        monitor=module.monitor,
        mode=module.monitor_mode,
        save_top_k=1,
        save_last=True,
    )
    return [checkpoint, LearningRateMonitor(logging_interval="step")] if with_logger else [checkpoint]


def export_to_registry(
    module: L.LightningModule,
    registry: Registry,
    validated: dict[str, float],
    run_lineage: dict[str, Any],
    run_json: dict[str, dict[str, Any]],
) -> Artifact:
    """Export the module's current weights (the best checkpoint, just validated) as a new version.

    `validated` (metrics of the re-validation) override the payload's metrics of the same name;
    `run_lineage` (config and checkpoint paths) is added to the payload's lineage; `run_json`
    adds extra json files (e.g. the full fit config).
    """
    payload = module.export_payload()
    missing = [key for key in PAYLOAD_KEYS if key not in payload]
    if missing:
        raise RsdError(f"{type(module).__qualname__}.export_payload() lacks keys {missing}")
    lineage = {**payload["lineage"], **run_lineage}
    group_keys = getattr(module, "best_group_keys", ())
    best_group = "|".join(f"{key}={lineage.get(key)}" for key in group_keys) if group_keys else None
    return registry.export(
        module.artifact_name,
        payload["tensors"],
        config=payload["config"],
        metrics={**payload["metrics"], **validated},
        lineage=lineage,
        extra_json={**run_json, **payload.get("extra_json", {})},
        best_metric=module.monitor,
        best_mode=module.monitor_mode,
        best_group=best_group,
    )


def export_message(artifact: Artifact, registry: Registry) -> str:
    """`exported rfsq@3 (best) -> checkpoints/rfsq/v3`, or which version is best instead."""
    best = [a.spec for a in registry.artifacts(artifact.name) if "best" in a.aliases]
    status = "best" if "best" in artifact.aliases else f"best is {best[0] if best else 'none'}"
    return f"exported {artifact.spec} ({status}) -> {artifact.path}"
