"""The Lightning predict loop behind `python -m rsd_pl eval`: LIBERO rollouts with the decoding engine.

The episodes (suite, task, trial, seed) still to run are a torch Dataset; `EvalModule.predict_step` runs one
episode in each of its pending decoding modes (one env: `eval.runner`; `num_envs` envs stepped together:
`eval.vector`), both through the policy interface (`eval.policy.RSDPolicy`), so `Trainer(devices=...,
num_nodes=...)` shards episodes across devices and nodes. Every finished (episode, mode) run is appended
(flushed) to `<out>/episodes.jsonl` (one file per rank when there are several, merged at the end); a rerun
skips the runs already there. Then the report (`eval.report`) is written and logged to TensorBoard.

Imports: Lightning, eval.config, eval.episodes (what to run, the lock), eval.episode_log, eval.runner, eval.report;
eval.vector and eval.video lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from torch import nn
from torch.utils.data import DataLoader, Dataset

from rsd_pl.durable import stopped_on_sigterm
from rsd_pl.envs import SHADOWS
from rsd_pl.eval.config import DEFAULT_CAMERA_SIZE, EvalConfig, ObsSpec, models_used
from rsd_pl.eval.episode_log import EPISODES_FILE, EpisodeLog, merge_rank_files
from rsd_pl.eval.episodes import check_same_models, count_runs, episode_list, output_lock, pending_items
from rsd_pl.eval.report import write_report
from rsd_pl.eval.runner import EpisodeResult, new_run_id, run_episode, video_larger_than_cameras


class EpisodeDataset(Dataset):
    """The episodes still to run: one dict per (suite, task, trial) with its pending modes."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]


def first_item(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate for batch_size=1: the episode dict itself (no tensor stacking)."""
    return items[0]


class EvalModule(L.LightningModule):
    """Runs one LIBERO episode per predict step. Holds the models (so Lightning places them on the
    device) and builds one policy per mode over the same weights, lazily, once they are placed."""

    def __init__(self, models: nn.ModuleDict, make_policy: Any, obs: ObsSpec, out_dir: str | Path,
                 camera_size: int = 128, video_fps: int = 20, shadows: bool = SHADOWS, num_envs: int = 1,
                 video_size: int | None = None, record_paths: bool = False,
                 identity: dict[str, str] | None = None) -> None:
        super().__init__()
        self.identity = identity or {}
        """The loaded models' names (`eval.models.load_models`); each record gets those its mode used."""
        self.record_paths = record_paths
        self.models = models
        self.make_policy = make_policy
        """make_policy(mode) -> policy with reset() / select_action(batch) / stats.chunks (RSDPolicy)."""
        self.obs = obs
        self.out_dir = Path(out_dir)
        self.camera_size = camera_size
        self.shadows = shadows
        self.video_fps = video_fps
        self._policies: dict[str, Any] = {}
        self._env: Any = None
        self._env_key: tuple[str, int] | None = None
        self._log: EpisodeLog | None = None
        self.num_envs, self.video_size = num_envs, video_size
        self._pool: Any = None

    def on_predict_start(self) -> None:
        self._log = EpisodeLog(self.out_dir, self.global_rank, self.trainer.world_size)
        self._run_id = new_run_id()

    def predict_step(self, item: dict[str, Any] | list[dict[str, Any]], batch_idx: int) -> list[dict[str, Any]]:
        """One episode (suite, task, trial, seed) in each of its pending modes; one log line per mode.
        With num_envs > 1, `item` is a list of up to num_envs episodes run together (rsd_pl.eval.vector)."""
        if isinstance(item, list):
            return self._run_group(item)
        records = []
        for mode in item["modes"]:
            self._stop_on_sigterm()
            records.append(self._run_mode(item, mode))
        return records

    def _stop_on_sigterm(self) -> None:
        """Stop between episodes once the process got SIGTERM (`kill <pid>`, a scheduler's preemption). Lightning's
        signal connector catches SIGTERM and only sets `trainer.received_sigterm`, which its predict loop never
        reads: without this check an eval ran on to its end. Every finished episode is already in the log."""
        if getattr(self._trainer, "received_sigterm", False):
            raise stopped_on_sigterm(self._log.path)

    def _run_group(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each mode in turn on the episodes that still need it, one env per worker, decoded as one batch."""
        from rsd_pl.eval.vector import EnvPool, EnvSpec, run_batched

        if self._pool is None:
            camera_size = self.camera_size if self.obs.cameras else None
            self._pool = EnvPool(self.num_envs, EnvSpec(camera_size, tuple(self.obs.cameras), self.shadows,
                                                        self.obs.image_size, self.obs.image_pipeline,
                                                        self.video_size))
        records = []
        for mode in dict.fromkeys(m for item in items for m in item["modes"]):
            if mode not in self._policies:
                self._policies[mode] = self.make_policy(mode)
            policy = self._policies[mode]
            group = [item for item in items if mode in item["modes"]]
            self._stop_on_sigterm()
            larger = bool(self.obs.cameras) and video_larger_than_cameras(self.video_size, self.camera_size)
            for result in run_batched(self._pool, policy, group, mode, video_from_obs=not larger):
                result.decoding = policy.decoding
                records.append(self._log_result(result))
        return records

    def _run_mode(self, item: dict[str, Any], mode: str) -> dict[str, Any]:
        env = self._env_for(item["suite"], item["task_id"])
        if mode not in self._policies:
            self._policies[mode] = self.make_policy(mode)
        result = run_episode(env, self._policies[mode], item["max_steps"], trial=item["trial"],
                             seed=item["seed"], mode=mode, image_size=self.obs.image_size,
                             image_pipeline=self.obs.image_pipeline, video_size=self.video_size,
                             record_frames=item["record"], record_path=self.record_paths)
        decoding = getattr(self._policies[mode], "decoding", None)
        if decoding is not None:
            result.decoding = decoding
        if result.status == "error":
            self._close_env()  # the simulator may be left in a bad state: the next episode gets a fresh env
        return self._log_result(result)

    def _log_result(self, result: EpisodeResult) -> dict[str, Any]:
        if result.frames:
            result.video = str(self._write_video(result))
        result.run = self._run_id
        if self.identity:
            result.models = models_used(result.mode, self.identity)
        record = result.to_json()
        self._log.append(record)
        self._announce(result)
        return record

    def on_predict_end(self) -> None:
        self._close_env()
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _env_for(self, suite: str, task_id: int) -> Any:
        """One env at a time, reused by the consecutive episodes (trials, modes) of a task."""
        from rsd_pl.envs import LiberoEnv

        if self._env_key != (suite, task_id):
            self._close_env()
            camera_size = self.camera_size if self.obs.cameras else None
            self._env = LiberoEnv(suite, task_id, camera_size=camera_size, cameras=self.obs.cameras, seed=0,
                                  shadows=self.shadows, render_every_step=False)
            self._env_key = (suite, task_id)
        return self._env

    def _close_env(self) -> None:
        if self._env is not None:
            self._env.close()
        self._env, self._env_key = None, None

    def _write_video(self, result: EpisodeResult) -> Path:
        from rsd_pl.eval.video import write_video

        outcome = f"{result.mode}: {result.status} after {result.steps} steps"
        name = (f"{result.suite}_task{result.task_id:02d}_trial{result.trial:02d}_"
                f"{result.mode}_{result.status}.mp4")
        return write_video(self.out_dir / "videos" / name, result.frames, result.instruction, outcome,
                           result.status, fps=self.video_fps)

    def _announce(self, result: EpisodeResult) -> None:
        from tqdm import tqdm

        latency = result.latency_ms.get("p50", float("nan"))
        tqdm.write(f"[rank {self.global_rank}] {result.suite} task {result.task_id} trial {result.trial} "
                   f"{result.mode}: {result.status} in {result.steps} steps, {result.chunks} chunks, "
                   f"p50 {latency:.1f} ms/chunk")



def run_eval(cfg: EvalConfig, models: nn.ModuleDict, make_policy: Any, obs: ObsSpec,
             identity: dict[str, str] | None = None) -> dict[str, Any] | None:
    """Run the pending episodes through a Lightning predict loop, merge logs, write the report; one process
    at a time per output folder. `identity` names the loaded models: each record names those that decoded it,
    and a folder whose runs name other ones is refused before any episode."""
    with output_lock(cfg.out, "eval"):
        return _run_eval(cfg, models, make_policy, obs, identity or {})


def _run_eval(cfg: EvalConfig, models: nn.ModuleDict, make_policy: Any, obs: ObsSpec,
              identity: dict[str, str]) -> dict[str, Any] | None:
    out_dir = Path(cfg.out)
    if identity:
        check_same_models(cfg, identity)
    items = pending_items(cfg)
    total, pending = count_runs(episode_list(cfg)), count_runs(items)
    print(f"eval: {total - pending}/{total} episode runs (episode x mode) already in "
          f"{out_dir / EPISODES_FILE}, {pending} to run on {len(items)} episodes")
    trainer = L.Trainer(accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes,
                        logger=False, enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=cfg.progress_bar)
    if items:
        collate = first_item if cfg.num_envs == 1 else list
        loader = DataLoader(EpisodeDataset(items), batch_size=cfg.num_envs, shuffle=False, collate_fn=collate)
        camera_size = obs.camera_size or cfg.camera_size or DEFAULT_CAMERA_SIZE
        module = EvalModule(models, make_policy, obs, out_dir, camera_size, cfg.video_fps, cfg.shadows,
                            num_envs=cfg.num_envs, video_size=cfg.video_size, record_paths=cfg.record_paths,
                            identity=identity)
        trainer.predict(module, dataloaders=loader, return_predictions=False)
    trainer.strategy.barrier()
    if not trainer.is_global_zero:
        return None
    merge_rank_files(out_dir)
    return write_report(out_dir, tensorboard_dir=out_dir / "tensorboard", reference_mode=cfg.reference_mode)

