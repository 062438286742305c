"""What an evaluation is asked to do: `EvalConfig` (every field documented; the docs become `--help`), its
plain value checks (`validate_config`: no registry, no LIBERO), the observation a model was trained with
(`ObsSpec`) and the render side resolved against it.

Imports: the decoding config and the env suite tables only; everything in `rsd_pl.eval` may import this.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from rsd_pl.decoding.config import MODES, RSD_MODES, DecodingConfig
from rsd_pl.envs import SHADOWS
from rsd_pl.errors import RsdError

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
    """LIBERO suites: libero_spatial, libero_object, libero_goal, libero_10, libero_90; LIBERO-PRO's perturbations of
    the first four: <suite>_lan, <suite>_object, <suite>_swap, <suite>_task (each with its base suite's max steps)."""
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


def validate_config(cfg: EvalConfig, logged_modes: frozenset[str] | set[str] = frozenset()) -> None:
    """Plain value checks (no registry, no LIBERO): RsdError naming the bad key. `logged_modes`: the modes the output
    folder's log already holds (a run that extends an earlier one may leave the reference mode out of `modes`)."""
    from rsd_pl.envs import parse_index_list, suite_spec

    unknown = [m for m in cfg.modes if m not in MODES]
    if not cfg.modes or unknown:
        raise RsdError(f"modes={cfg.modes}: must be a non-empty list of {MODES}")
    if len(set(cfg.modes)) != len(cfg.modes):
        raise RsdError(f"modes={cfg.modes}: a mode is listed twice")
    if cfg.reference_mode not in cfg.modes and cfg.reference_mode not in logged_modes:
        raise RsdError(f"reference_mode={cfg.reference_mode!r} is not one of modes={cfg.modes} (nor logged in "
                       f"{cfg.out}): the report compares every mode with it on the same episodes")
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


def models_used(mode: str, identity: dict[str, str]) -> dict[str, str]:
    """The part of `identity` that decodes `mode`: oft's checkpoint, or main and tokenizer (and the draft for
    the modes that use one)."""
    keys = ("oft",) if mode == "oft" else ("main", "tokenizer", "draft") if mode in DRAFT_MODES else ("main",
                                                                                                     "tokenizer")
    return {key: identity[key] for key in keys if key in identity}
