"""`python -m rsd_pl fit --config configs/<phase>.yaml [--section.key value ...]` (LightningCLI).

Every value of the config can be overridden on the command line (`--trainer.max_steps 50`,
`--model.init_args.lr 1e-3`, `--data.init_args.data demos/`). Help:

    python -m rsd_pl fit --help                                        all options
    python -m rsd_pl fit --model.help rsd_pl.lit.rfsq_module.RFSQModule  a model's fields and docs
    python -m rsd_pl fit --config configs/rfsq.yaml --print_config      the resolved config

What a run writes (`<run_dir>` defaults to `runs/<model.artifact_name>`, one stable folder per
artifact name, so a resumed run continues its logs):

    <run_dir>/events.out.tfevents.*        TensorBoard (`tensorboard --logdir runs`)
    <run_dir>/config.yaml                  the resolved config
    <run_dir>/checkpoints/best-*.ckpt      best by the model's `monitor`, and last.ckpt (resume format)

Resume an interrupted run with the same command plus `--ckpt_path last` (checkpoints are written
under a temporary name and renamed, so a kill never leaves a torn `last.ckpt`). After fit, rank 0
re-validates the best checkpoint and exports it to the registry (`--registry_root`, default
`$RSD_CHECKPOINTS` or `checkpoints`), printing `exported rfsq@3 (best) -> checkpoints/rfsq/v3`; a
rerun whose export is already written (same best checkpoint file, same final step) exports nothing new.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn

from rsd_pl.errors import RsdError
from rsd_pl.lit.callbacks import check_export_protocol, export_message, export_to_registry, run_callbacks
from rsd_pl.lit.checkpoints import with_atomic_checkpoints
from rsd_pl.registry import Artifact, Registry


class RsdCLI(LightningCLI):
    """LightningCLI with the `fit` subcommand only, per-artifact run folders and registry export."""

    run_dir: Path
    exported: Artifact | None = None

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"fit": LightningCLI.subcommands()["fit"]}

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument(
            "--run_dir",
            type=str | None,
            default=None,
            help="Folder for TensorBoard logs, config.yaml and checkpoints (default: runs/<artifact_name>).",
        )
        parser.add_argument(
            "--registry_root",
            type=str | None,
            default=None,
            help="Checkpoint registry folder: where inputs (e.g. rfsq@best) are read and the export goes "
            "(default: $RSD_CHECKPOINTS, else checkpoints).",
        )
        parser.add_argument(
            "--export",
            type=bool,
            default=True,
            help="After fit, validate the best checkpoint and export it to the registry.",
        )

    def before_instantiate_classes(self) -> None:
        """One registry per run: `--registry_root` also tells the model and data where to read artifacts."""
        root = self.config[self.subcommand].registry_root
        if root is not None:
            os.environ["RSD_CHECKPOINTS"] = str(root)

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """Defaults that need the model: run folder, TensorBoard logger, checkpoints, LR monitor."""
        check_export_protocol(self.model)
        options = self.config[self.subcommand]
        self.run_dir = Path(options.run_dir or Path("runs") / self.model.artifact_name)
        trainer_config = self._get(self.config_init, "trainer", default={})
        logger = trainer_config.get("logger")
        if logger is None or logger is True:
            logger = TensorBoardLogger(save_dir=str(self.run_dir), name="", version="")
        ours = run_callbacks(self.model, self.run_dir, with_logger=logger is not False)
        self.checkpoint = ours[0]
        callbacks = [*(trainer_config.get("callbacks") or []), *ours]
        root = trainer_config.get("default_root_dir") or str(self.run_dir)
        plugins = with_atomic_checkpoints(trainer_config.get("plugins"))  # a kill never leaves a torn last.ckpt
        return super().instantiate_trainer(logger=logger, callbacks=callbacks, default_root_dir=root,
                                           plugins=plugins, **kwargs)

    def before_fit(self) -> None:
        last = self.run_dir / "checkpoints" / "last.ckpt"
        if self.config.fit.ckpt_path is None and last.is_file():
            rank_zero_warn(f"{last} exists: starting from scratch; add `--ckpt_path last` to resume it")

    def after_fit(self) -> None:
        """Validate the best checkpoint, then (rank 0) export it through the module's export protocol."""
        if not self.config.fit.export:
            return
        best = self.checkpoint.best_model_path
        if not best:
            raise RsdError(
                f"no best checkpoint in {self.run_dir / 'checkpoints'}: validation never logged "
                f"{self.model.monitor!r}; nothing exported"
            )
        resumed_from = self.trainer.ckpt_path
        log_dir = Path(self.trainer.log_dir or self.run_dir)  # a collective under DDP: on every rank
        validated = self._validate(best)
        run_lineage = {
            "checkpoint": str(Path(best).resolve()),
            "checkpoint_id": checkpoint_id(best, self.trainer.global_step),
            "run_config": str((log_dir / "config.yaml").resolve()),
            "run_dir": str(self.run_dir.resolve()),
            "resumed_from": str(Path(resumed_from).resolve()) if resumed_from else None,
        }
        failure: Exception | None = None
        try:
            if self.trainer.is_global_zero:
                self._export(validated, run_lineage)
        except Exception as error:  # re-raised below, after telling the other ranks (no DDP hang)
            failure = error
        message = self.trainer.strategy.broadcast(None if failure is None else f"{type(failure).__name__}: {failure}")
        if failure is not None:
            raise failure
        if message is not None:
            raise RsdError(f"registry export failed on rank 0: {message}")

    def _export(self, validated: dict[str, float], run_lineage: dict[str, Any]) -> None:
        registry = Registry(self.config.fit.registry_root)
        done = exported_before(registry, self.model.artifact_name, run_lineage["checkpoint_id"])
        if done is not None:  # a rerun after a kill that came once the export was written
            self.exported = done
            print(f"{run_lineage['checkpoint']} is already exported as {done.spec}: nothing new to export")
            return
        self.exported = export_to_registry(self.model, registry, validated, run_lineage, self._fit_config())
        print(export_message(self.exported, registry))

    def _validate(self, ckpt_path: str) -> dict[str, float]:
        """Metrics of the best checkpoint (its weights stay loaded); not logged a second time."""
        loggers = self.trainer.loggers
        self.trainer.loggers = []
        try:
            results = self.trainer.validate(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path, verbose=False)
        finally:
            self.trainer.loggers = loggers
        return {key: float(value) for key, value in results[0].items()}

    def _fit_config(self) -> dict[str, dict[str, Any]]:
        """The resolved fit config, stored with the artifact as fit_config.json."""
        dumped = self._parser(self.subcommand).dump(self.config[self.subcommand], skip_none=False)
        return {"fit_config": yaml.safe_load(dumped)}


def checkpoint_id(path: str | Path, global_step: int) -> str:
    """Identity of an export: the best checkpoint file (path, size, mtime) and the step the fit ended at. A
    rerun after a kill that came once the export was written finds it (same file, same final step); a run
    extended with more epochs exports again even when its best checkpoint did not change."""
    stat = Path(path).stat()
    return f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}@step{global_step}"


def exported_before(registry: Registry, name: str, identity: str) -> Artifact | None:
    """The version of `name` exported from the checkpoint `identity`, if any."""
    if name not in registry.names():
        return None
    return next((art for art in registry.artifacts(name) if art.lineage.get("checkpoint_id") == identity), None)


def run(argv: list[str]) -> RsdCLI:
    """Parse `argv` (the options after `fit`), train, export; returns the CLI (model, trainer, exported)."""
    with warnings.catch_warnings():  # argv comes from rsd_pl.__main__, which also left it in sys.argv
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return _make_cli(argv)


def _make_cli(argv: list[str]) -> RsdCLI:
    return RsdCLI(
        model_class=L.LightningModule,
        subclass_mode_model=True,
        datamodule_class=None,
        subclass_mode_data=True,
        args=["fit", *argv],
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "python -m rsd_pl", "fit": {"description": __doc__.split("\n")[0]}},
    )


def main(argv: list[str]) -> int:
    """`python -m rsd_pl fit ...`: 0 on success; parser errors and `--help` exit as argparse does."""
    try:
        run(argv)
    except SystemExit as exit_:
        if isinstance(exit_.code, str):
            print(exit_.code, file=sys.stderr)
            return 1
        return exit_.code or 0
    _close_process_group()
    return 0


def _close_process_group() -> None:
    """Under DDP, leave together: a rank that exits while another still holds its gloo connections
    can make that one abort ('terminate called without an active exception'; seen in
    tests/test_cli_ddp.py). Lightning leaves the process group open, so close it here."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
