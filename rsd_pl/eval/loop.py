"""`python -m rsd_pl eval`: LIBERO rollouts with the decoding engine, as a Lightning predict loop.

The episodes (suite, task, trial, seed) are a torch Dataset; `EvalModule.predict_step` runs one
episode in each of its decoding modes, so `Trainer(devices=..., num_nodes=...)` shards episodes
across devices and nodes. Every finished (episode, mode) run is appended (flushed) to
`<out>/episodes.jsonl` (one file per rank when there are several, merged at the end); a rerun
skips the (suite, task, trial, mode) runs already there. Then the report (`rsd_pl.eval.report`)
is printed, written and logged to TensorBoard.

Everything a run needs is checked before the first episode: suites, tasks, modes, registry names,
lineage of tokenizer -> main -> draft, a draft for speculative mode.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from rsd_pl.decoding.config import MODES, RSD_MODES, DecodingConfig
from rsd_pl.envs import SHADOWS
from rsd_pl.errors import RsdError
from rsd_pl.eval.episode_log import EPISODES_FILE, EpisodeLog, episode_key, merge_rank_files, read_episodes
from rsd_pl.eval.report import write_report
from rsd_pl.eval.runner import EpisodeResult, run_episode

DRAFT_MODES = ("speculative",)
OFT_CAMERA_SIZE = 256  # OpenVLA-OFT renders LIBERO at 256 px, then JPEG + resizes to 224
INIT_STATES_PER_TASK = 50  # every LIBERO benchmark task ships 50 init states


@dataclass
class EvalConfig:
    """LIBERO evaluation of one main model (and its draft) in several decoding modes."""

    main: str | None = "main@best"
    """Registry spec of the main model (name, name@best, name@latest or name@<version>); null when the
    only mode is `oft`."""
    draft: str | None = "draft@best"
    """Registry spec of the draft model; null when no mode needs one."""
    tokenizer: str | None = None
    """Registry spec of the RFSQ tokenizer; null = the one named in the main model's lineage."""
    registry: str = "checkpoints"
    """Checkpoint registry folder."""
    suites: list[str] = field(default_factory=lambda: ["libero_spatial"])
    """LIBERO suites: libero_spatial, libero_object, libero_goal, libero_10, libero_90."""
    tasks: str | None = None
    """Task ids per suite, e.g. '0-9' or '0,3,5'; null = all tasks of each suite."""
    num_trials: int = 50
    """Trials per task: benchmark init states 0 .. num_trials-1."""
    modes: list[str] = field(default_factory=lambda: list(RSD_MODES))
    """Decoding modes, each evaluated on the same episodes: oft, l1, parallel, ar, ar_exit, speculative."""
    deviation_reference: str | None = "ar"
    """Decode every observation of the other RSD modes with this mode too (untimed) and record how far their
    actions are (max abs, normalised units; `deviation_mean` per episode, a report column). null = off."""
    reference_mode: str = "ar"
    """The mode every other mode is compared with in the report (paired exact McNemar test, difference in
    success with its interval); must be one of `modes`."""
    oft_checkpoint: str | None = None
    """`oft` mode: a local OpenVLA-OFT checkpoint directory (e.g. openvla-7b-oft-finetuned-libero-spatial);
    null = the main model's backbone.path (an openvla main model). OFT's own weights, head and proprio
    projector, never the LoRA-tuned ones."""
    oft_unnorm_key: str | None = None
    """`oft` mode: the dataset_statistics.json entry (e.g. libero_spatial_no_noops); null = the only one."""
    oft_dtype: str = "bfloat16"
    """`oft` mode: dtype of OFT's weights (bfloat16 as OFT deploys; float32 for the reference precision)."""
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    """Engine settings shared by all modes (decoding.mode is replaced by each entry of `modes`)."""
    camera_size: int | None = None
    """Side of the rendered camera images before resizing to the model's image size; null = the side of the
    frames the main model was trained on (recorded in its artifact; 128, the LIBERO datasets', for artifacts
    that predate the record; 256 for `oft` alone). A value other than the recorded one is refused unless
    allow_obs_mismatch."""
    allow_obs_mismatch: bool = False
    """Evaluate with a camera_size other than the training demos' (a loud warning instead of an error)."""
    shadows: bool = SHADOWS
    """Render MuJoCo shadows and reflections. Off by default (1.6x faster CPU rendering), as in
    `collect`; turn on for models trained on the official LIBERO datasets."""
    max_steps: int | None = None
    """Policy steps per episode after the wait steps; null = the suite's (220/280/300/520/400)."""
    seed: int = 7
    """Base seed; episode seed = seed + 1000 * task_id + trial (the same for every mode)."""
    out: str = "runs/eval/libero_spatial"
    """Output folder: episodes.jsonl, report.json, report.md, videos/, tensorboard/."""
    videos_per_task: int = 2
    """Trials 0 .. videos_per_task-1 of each task and mode are saved as mp4 (0 = none)."""
    video_fps: int = 20
    video_size: int = 128
    """Side of each camera in the videos: rendered anew at this size when the model's camera is smaller."""
    record_paths: bool = False
    """Log each episode's end-effector, gripper and picked-object path in episodes.jsonl (`path`); num_envs 1."""
    accelerator: str = "auto"
    """Lightning accelerator: auto, cpu, gpu."""
    devices: int | str = 1
    """Lightning devices per node; episodes are sharded across devices x num_nodes."""
    num_nodes: int = 1
    num_envs: int = 1
    """LIBERO environments per device, each in its own worker process, stepped together; the engine decodes
    their observations as one batch (B = num_envs). 1 = one env in the evaluating process. With B > 1,
    ar_exit and speculative decide early exit / acceptance for the whole batch (a layer is accepted only
    when every env's is), so their latency and depth are those of batched decoding."""
    torch_threads: int | None = None
    """CPU threads for torch (null = torch's default). On a shared CPU use 1: an oversubscribed
    OpenMP pool makes chunk latencies 10-100x slower and erratic."""
    progress_bar: bool = True
    retry_errors: bool = True
    """On a rerun, run again the episodes whose logged run ended in an error (a crashed renderer, a
    killed worker). The error lines stay in the log; the report counts the newer record."""


@dataclass(frozen=True)
class ObsSpec:
    """The observation the main model was trained with (from its artifact config)."""

    cameras: tuple[str, ...]
    """LIBERO camera names fed to the model; () = no rendering."""
    image_size: int
    """Side S of the model's images."""
    object_pos: bool
    """Whether the model takes the privileged object_pos [B, 6]."""
    image_pipeline: str = "resize"
    """How frames become the model's images (`resize` for tiny, `oft` for openvla)."""
    camera_size: int | None = field(default=None, compare=False)
    """Side the cameras render at in this evaluation, resolved against the training frames by
    `resolve_camera_size` (None: EvalConfig.camera_size, else 128). Not part of equality: two models that
    observe the same cameras and images render at one side."""


DEFAULT_CAMERA_SIZE = 128  # the official LIBERO datasets' renders


def resolve_camera_size(cfg: EvalConfig, trained: int | None, source: str) -> int:
    """The render side of this evaluation: the training demos' unless cfg says otherwise, which is refused
    (or, with allow_obs_mismatch, warned about) when it differs from what the model was trained on."""
    if trained is None:
        if cfg.camera_size is None:
            print(f"eval: {source} does not record the side of its training frames (exported before that was "
                  f"recorded): rendering at {DEFAULT_CAMERA_SIZE} px; set camera_size if its demos differ")
        return cfg.camera_size or DEFAULT_CAMERA_SIZE
    if cfg.camera_size is None or cfg.camera_size == trained:
        return trained
    message = (f"camera_size={cfg.camera_size}, but {source} was trained on {trained} px frames: the model would "
               f"see frames rendered at {cfg.camera_size} and resized, not what it was trained on")
    if not cfg.allow_obs_mismatch:
        raise RsdError(f"{message}; leave camera_size unset (= {trained}) or set allow_obs_mismatch: true")
    print(f"WARNING: {message} (allow_obs_mismatch is set)")
    return cfg.camera_size


def validate_config(cfg: EvalConfig) -> None:
    """Plain value checks (no registry, no LIBERO): RsdError naming the bad key."""
    from rsd_pl.envs import parse_index_list, suite_spec

    unknown = [m for m in cfg.modes if m not in MODES]
    if not cfg.modes or unknown:
        raise RsdError(f"modes={cfg.modes}: must be a non-empty list of {MODES}")
    if len(set(cfg.modes)) != len(cfg.modes):
        raise RsdError(f"modes={cfg.modes}: a mode is listed twice")
    if cfg.reference_mode not in cfg.modes:
        raise RsdError(f"reference_mode={cfg.reference_mode!r} is not one of modes={cfg.modes}: the report "
                       "compares every mode with it on the same episodes")
    if cfg.deviation_reference is not None and cfg.deviation_reference not in RSD_MODES:
        raise RsdError(f"deviation_reference={cfg.deviation_reference!r} must be an RSD mode {RSD_MODES} or null")
    if not cfg.main and any(m in RSD_MODES for m in cfg.modes):
        raise RsdError(f"modes={cfg.modes} include RSD modes, which need a main model: set main (e.g. main@best) "
                       "or evaluate only modes=[oft]")
    if any(m in DRAFT_MODES for m in cfg.modes) and cfg.decoding.draft_source == "model" and not cfg.draft:
        raise RsdError(f"modes={cfg.modes} include speculative, which needs a draft model: set draft "
                       "(e.g. draft@best), decoding.draft_source=parallel, or remove speculative from modes")
    if not 1 <= cfg.num_trials <= INIT_STATES_PER_TASK:
        raise RsdError(f"num_trials={cfg.num_trials}: must be in 1..{INIT_STATES_PER_TASK} "
                       "(the benchmark's init states per task)")
    if cfg.num_envs < 1:
        raise RsdError(f"num_envs={cfg.num_envs}: must be >= 1 (LIBERO environments per device)")
    if cfg.record_paths and cfg.num_envs != 1:
        raise RsdError(f"record_paths needs num_envs=1 (got {cfg.num_envs}): paths are logged by the in-process "
                       "episode runner")
    if cfg.torch_threads is not None and cfg.torch_threads < 1:
        raise RsdError(f"torch_threads={cfg.torch_threads}: must be >= 1 or null")
    if cfg.camera_size is not None and cfg.camera_size < 1:
        raise RsdError(f"camera_size={cfg.camera_size}: must be >= 1")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise RsdError(f"max_steps={cfg.max_steps}: must be >= 1 or null")
    if not cfg.suites:
        raise RsdError("suites is empty")
    for suite in cfg.suites:
        spec = suite_spec(suite)  # RsdError for an unknown suite
        for task_id in parse_index_list(cfg.tasks) if cfg.tasks else []:
            if not 0 <= task_id < spec.num_tasks:
                raise RsdError(f"tasks={cfg.tasks!r}: task {task_id} is out of range for {suite} "
                               f"(0..{spec.num_tasks - 1})")
    for mode in cfg.modes:
        decoding_for(cfg, mode)  # DecodingConfig.validate names the bad decoding.* value


def decoding_for(cfg: EvalConfig, mode: str) -> DecodingConfig:
    """The shared engine settings with this mode. decoding.early_exit_bound applies to speculative only: in an
    eval, `ar` is always all L layers (the reference of the report and of the action gap) and ar with early
    exit is the `ar_exit` mode (its own `exit_bound`)."""
    early_exit = cfg.decoding.early_exit_bound if mode == "speculative" else None
    return dataclasses.replace(cfg.decoding, mode=mode, early_exit_bound=early_exit)


def episode_list(cfg: EvalConfig) -> list[dict[str, Any]]:
    """One item per episode (suite, task, trial, seed), task-major, carrying the modes to run on it.

    All modes of an episode run back to back in one predict step, so they share the rank (device),
    the env and the seed: per-mode latencies are comparable even when episodes are sharded.
    """
    from rsd_pl.envs import parse_index_list, suite_spec

    items = []
    for suite in cfg.suites:
        spec = suite_spec(suite)
        tasks = parse_index_list(cfg.tasks) if cfg.tasks else list(range(spec.num_tasks))
        max_steps = cfg.max_steps or spec.max_steps
        for task_id in tasks:
            for trial in range(cfg.num_trials):
                seed = cfg.seed + 1000 * task_id + trial
                items.append({"suite": suite, "task_id": task_id, "trial": trial, "seed": seed,
                              "modes": list(cfg.modes), "max_steps": max_steps,
                              "record": trial < cfg.videos_per_task})
    return items


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
                 video_size: int | None = None, record_paths: bool = False) -> None:
        super().__init__()
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

    def predict_step(self, item: dict[str, Any] | list[dict[str, Any]], batch_idx: int) -> list[dict[str, Any]]:
        """One episode (suite, task, trial, seed) in each of its pending modes; one log line per mode.
        With num_envs > 1, `item` is a list of up to num_envs episodes run together (rsd_pl.eval.vector)."""
        if isinstance(item, list):
            return self._run_group(item)
        return [self._run_mode(item, mode) for mode in item["modes"]]

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
            engine = self._policies[mode].engine
            group = [item for item in items if mode in item["modes"]]
            for result in run_batched(self._pool, engine, group, mode):
                result.decoding = engine.config.to_dict()
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
        engine = getattr(self._policies[mode], "engine", None)
        if engine is not None:
            result.decoding = engine.config.to_dict()
        if result.status == "error":
            self._close_env()  # the simulator may be left in a bad state: the next episode gets a fresh env
        return self._log_result(result)

    def _log_result(self, result: EpisodeResult) -> dict[str, Any]:
        if result.frames:
            result.video = str(self._write_video(result))
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


def pending_items(cfg: EvalConfig) -> list[dict[str, Any]]:
    """The episode list without the (suite, task, trial, mode) runs already logged under cfg.out
    (errored runs count as not done when cfg.retry_errors)."""
    done = {episode_key(r) for r in read_episodes(cfg.out) if not (cfg.retry_errors and r["status"] == "error")}
    items = []
    for item in episode_list(cfg):
        modes = [m for m in item["modes"] if episode_key({**item, "mode": m}) not in done]
        if modes:
            items.append({**item, "modes": modes})
    return items


def count_runs(items: list[dict[str, Any]]) -> int:
    return sum(len(item["modes"]) for item in items)


def output_lock(out: str | Path, command: str) -> Any:
    """The folder lock of an output folder (`rsd_pl.durable.FolderLock`), taken by the launching process only:
    the ranks Lightning starts for DDP write their own files under the lock their launcher holds."""
    from contextlib import nullcontext

    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from rsd_pl.durable import FolderLock

    return FolderLock(out, command) if getattr(rank_zero_only, "rank", 0) == 0 else nullcontext()


def run_eval(cfg: EvalConfig, models: nn.ModuleDict, make_policy: Any, obs: ObsSpec) -> dict[str, Any] | None:
    """Run the pending episodes through a Lightning predict loop, merge logs, write the report; one process
    at a time per output folder."""
    with output_lock(cfg.out, "eval"):
        return _run_eval(cfg, models, make_policy, obs)


def _run_eval(cfg: EvalConfig, models: nn.ModuleDict, make_policy: Any, obs: ObsSpec) -> dict[str, Any] | None:
    out_dir = Path(cfg.out)
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
                            num_envs=cfg.num_envs, video_size=cfg.video_size, record_paths=cfg.record_paths)
        trainer.predict(module, dataloaders=loader, return_predictions=False)
    trainer.strategy.barrier()
    if not trainer.is_global_zero:
        return None
    merge_rank_files(out_dir)
    return write_report(out_dir, tensorboard_dir=out_dir / "tensorboard", reference_mode=cfg.reference_mode)


# --- loading from the registry (everything checked before the first episode) ---------------------


def _lineage_parent(artifact: Any, key: str, registry: Any) -> str:
    """The resolved spec of the artifact this one was trained on (`lineage[key]`)."""
    parent = artifact.lineage.get(key)
    if not parent:
        raise RsdError(f"{artifact.spec}: lineage.json has no {key!r} entry, so its {key} cannot be "
                       f"checked (lineage: {artifact.lineage})")
    return registry.resolve(str(parent)).spec


def load_models(cfg: EvalConfig) -> tuple[dict[str, Any], ObsSpec]:
    """The models the modes need: the RSD ones from the registry (lineage checked), OFT's from its directory.

    Returns ({"tokenizer", "normalizer", "main", "draft", "oft"}, ObsSpec); absent models are None.
    RsdError for an unknown name, a tokenizer other than the one main was trained on, a draft
    distilled from another main, an `oft` checkpoint missing or observing differently from main.
    """
    models: dict[str, Any] = {"tokenizer": None, "normalizer": None, "main": None, "draft": None, "oft": None}
    obs, main_config = None, None
    if cfg.main:
        models = load_rsd_models(cfg)
        main_config = models.pop("main_config")
        obs = obs_spec_from_config(main_config, cfg.main)
        trained = (main_config.get("data") or {}).get("camera_size")
        obs = dataclasses.replace(obs, camera_size=resolve_camera_size(cfg, trained, cfg.main))
        models["oft"] = None
    if "oft" in cfg.modes:
        models["oft"], oft_obs = load_oft_model(cfg, main_config)
        if obs is not None and obs != oft_obs:
            raise RsdError(f"modes include oft, which observes {oft_obs}, but main={cfg.main} was trained on "
                           f"{obs}: evaluate them in separate runs")
        obs = oft_obs
    return models, obs


def load_oft_model(cfg: EvalConfig, main_config: dict[str, Any] | None) -> tuple[Any, ObsSpec]:
    """OpenVLA-OFT's own network, head, proprio projector and statistics (the `oft` mode), and what it observes:
    agentview + wrist at 224 px through OFT's image pipeline (rendered at `camera_size`, 256 as OFT)."""
    from rsd_pl.models.openvla.parts import load_oft_policy

    root = cfg.oft_checkpoint
    backbone = (main_config or {}).get("model", {}).get("backbone", {})
    if root is None and backbone.get("kind") == "openvla":
        root = backbone.get("path")
    if root is None:
        raise RsdError("modes include oft but no OpenVLA-OFT checkpoint is known: set oft_checkpoint to a local "
                       "OpenVLA-OFT directory (or evaluate an openvla main model, whose backbone.path is used)")
    dtype = getattr(torch, cfg.oft_dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise RsdError(f"oft_dtype={cfg.oft_dtype!r} is not a torch dtype")
    camera_size = cfg.camera_size or OFT_CAMERA_SIZE
    if camera_size != OFT_CAMERA_SIZE:
        print(f"WARNING: camera_size={camera_size}, but OpenVLA-OFT was trained and evaluated on "
              f"{OFT_CAMERA_SIZE} px LIBERO renders: the oft baseline will not be OFT's protocol")
    model = load_oft_policy(root, dtype, cfg.oft_unnorm_key)
    print(f"eval: oft from {root} ({model.stats.key}, {cfg.oft_dtype})")
    obs = ObsSpec(cameras=("agentview", "eye_in_hand"), image_size=model.vla.spec.towers[0].image_size,
                  object_pos=False, image_pipeline="oft", camera_size=camera_size)
    return model, obs


def load_rsd_models(cfg: EvalConfig) -> dict[str, Any]:
    """Tokenizer, normaliser, main and draft from the registry, with their lineage checked, and main's config."""
    from rsd_pl.models.main_model import load_main
    from rsd_pl.models.rfsq import load_tokenizer
    from rsd_pl.registry import Registry

    registry = Registry(cfg.registry)
    # 1. lineage from the small json files, before any weights are read (a 7B main takes minutes)
    main_art = registry.resolve(cfg.main)
    trained_on = _lineage_parent(main_art, "tokenizer", registry)
    tok_art = registry.resolve(cfg.tokenizer or trained_on)
    if tok_art.spec != trained_on:
        raise RsdError(f"tokenizer={cfg.tokenizer} resolves to {tok_art.spec}, but main={cfg.main} "
                       f"({main_art.spec}) was trained on {trained_on}: mismatched lineage")
    draft_art = registry.resolve(cfg.draft) if cfg.draft else None
    if draft_art is not None and _lineage_parent(draft_art, "main", registry) != main_art.spec:
        raise RsdError(f"draft={cfg.draft} ({draft_art.spec}) was distilled from "
                       f"{draft_art.lineage['main']}, not from main={cfg.main} ({main_art.spec}): "
                       "mismatched lineage")
    # 2. the weights
    tokenizer, normalizer, _ = load_tokenizer(tok_art.spec, registry)
    main, _ = load_main(main_art.spec, registry)
    draft = None
    if draft_art is not None:
        from rsd_pl.models.draft import load_draft

        draft, _ = load_draft(draft_art.spec, registry, main_spec=main_art.spec)
    draft_spec = draft_art.spec if draft_art else None
    print(f"eval: main {main_art.spec}, tokenizer {tok_art.spec}, draft {draft_spec}")
    return {"tokenizer": tokenizer, "normalizer": normalizer, "main": main, "draft": draft,
            "main_config": main_art.config}


def obs_spec_from_config(config: dict[str, Any], source: str) -> ObsSpec:
    """Cameras, image side and object_pos as the main model was trained.

    From config['model']['backbone'] (image_size, num_cameras, use_object_pos). The cameras are the
    artifact's config['data']['cameras'] (HDF5 keys such as 'agentview_rgb') when it records them,
    otherwise the backbone's convention: agentview first, then the wrist camera.
    """
    from rsd_pl.envs import CAMERAS

    backbone = config.get("model", {}).get("backbone")
    if not isinstance(backbone, dict):
        raise RsdError(f"{source}: config has no model.backbone section")
    num_cameras = int(backbone.get("num_cameras", 1))
    by_key = {hdf5_key: name for name, (_, hdf5_key) in CAMERAS.items()}
    recorded = (config.get("data") or {}).get("cameras")
    cameras = tuple(by_key.get(key, key) for key in recorded) if recorded else tuple(CAMERAS)[:num_cameras]
    if len(cameras) != num_cameras or any(c not in CAMERAS for c in cameras):
        raise RsdError(f"{source}: cameras {list(cameras)} do not fit "
                       f"model.backbone.num_cameras={num_cameras} "
                       f"(LIBERO cameras: {', '.join(CAMERAS)})")
    return ObsSpec(cameras=cameras, image_size=int(backbone["image_size"]),
                   object_pos=bool(backbone.get("use_object_pos", False)),
                   image_pipeline="oft" if backbone.get("kind") == "openvla" else "resize")


def policy_factory(cfg: EvalConfig, models: dict[str, Any]) -> Any:
    """mode -> RSDPolicy over the shared weights (draft only where the mode uses it)."""
    from rsd_pl.decoding import DecodingEngine, ReferenceCheckedEngine
    from rsd_pl.eval.policy import RSDPolicy

    def make_policy(mode: str) -> RSDPolicy:
        if mode == "oft":
            from rsd_pl.decoding import OFTEngine

            return RSDPolicy(OFTEngine(models["oft"], decoding_for(cfg, mode)))
        draft = models["draft"] if mode in DRAFT_MODES else None
        engine = DecodingEngine(models["main"], models["tokenizer"], models["normalizer"],
                                decoding_for(cfg, mode), draft=draft)
        reference = cfg.deviation_reference
        if reference is not None and reference != mode:
            reference_draft = models["draft"] if reference in DRAFT_MODES else None
            engine = ReferenceCheckedEngine(engine, DecodingEngine(
                models["main"], models["tokenizer"], models["normalizer"], decoding_for(cfg, reference),
                draft=reference_draft))
        return RSDPolicy(engine)

    return make_policy


# --- CLI ------------------------------------------------------------------------------------------


def quiet_library_notices() -> None:
    """One line per episode and a progress bar: Lightning's device / tip lines and a deprecation notice of
    its own internals are not shown (warnings from our code and real errors still are)."""
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def parse_config(argv: list[str]) -> EvalConfig:
    """`--config file.yaml` plus any field on the command line (e.g. `--num_trials 5 --modes [ar]`)."""
    from jsonargparse import auto_cli, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # field docstrings become --help
    return auto_cli(EvalConfig, args=argv, as_positional=False, prog="python -m rsd_pl eval")


def main(argv: list[str]) -> int:
    """`python -m rsd_pl eval --config configs/eval_libero_spatial.yaml [--field value ...]`."""
    cfg = parse_config(argv)
    validate_config(cfg)
    with output_lock(cfg.out, "eval"):  # before the models load: a second writer is refused at once
        return _main(cfg)


def _main(cfg: EvalConfig) -> int:
    quiet_library_notices()
    if cfg.torch_threads is not None:
        torch.set_num_threads(cfg.torch_threads)
    models, obs = load_models(cfg)
    make_policy = policy_factory(cfg, models)
    for mode in cfg.modes:  # builds each engine once: shape / mode / draft errors surface here
        make_policy(mode)
    modules = nn.ModuleDict({k: v for k, v in models.items() if isinstance(v, nn.Module)})
    report = run_eval(cfg, modules, make_policy, obs)
    if report is not None and report["errors"]:
        print(f"eval: {len(report['errors'])} episode(s) ended in an error (tracebacks in {cfg.out}/"
              f"{EPISODES_FILE}); exit code 1")
        return 1
    return 0
