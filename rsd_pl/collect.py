"""`python -m rsd_pl collect`: scripted-expert demonstrations into LIBERO-format HDF5.

One file per task, `<out>/<task_name>_demo.hdf5`, as the official datasets. Only successful episodes
are kept. Episodes start from the task's benchmark init states (`placements: benchmark`, each demo stores
its init-state index) or from fresh placements drawn by LIBERO's own sampler (`placements: sampled`: one
seed per attempt from (seed, task, attempt), recorded in the demo, and a placement equal to one of the
task's benchmark init states refused), so that every benchmark init state stays held out for evaluation.

Worker processes (spawn, one env each) run the episodes and send the arrays back; only this process
writes, and only one collect process writes a folder at a time. Demos are staged as they finish and the
task's file is replaced whole (`rsd_pl.data.demo_writer`), so a kill loses at most the episodes in
flight. A rerun skips the init states (or placement attempts) already collected and collects the rest;
a file with another schema (other cameras, image size or task) or a corrupted one is an error, never
overwritten.
"""

from __future__ import annotations

import atexit
import multiprocessing
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings
from tqdm import tqdm

from rsd_pl.data.demo_writer import DemoWriter
from rsd_pl.durable import FolderLock
from rsd_pl.envs import (
    CAMERAS,
    PLACEMENT_FAR_M,
    PLACEMENT_MATCH_M,
    SHADOWS,
    LiberoEnv,
    check_index,
    env_kwargs,
    num_init_states,
    parse_index_list,
    suite_spec,
    task_info,
)
from rsd_pl.errors import RsdError
from rsd_pl.experts.rollout import ExpertEpisode, run_expert_episode
from rsd_pl.experts.select import SUPPORTED, expert_for, supports


@dataclass
class CollectConfig:
    """Collect scripted-expert demonstrations into LIBERO-format HDF5 files."""

    suite: str = "libero_spatial"
    """LIBERO suite: libero_spatial, libero_object, libero_goal, libero_10 or libero_90."""
    tasks: str = "0-9"
    """Task ids, e.g. '0-9' or '0,1'."""
    episodes: int = 50
    """Successful demos wanted per task (one per benchmark init state, tried in order)."""
    init_states: str | None = None
    """Init-state indices to try, e.g. '0-49' (default: all of the task's, in order)."""
    out: str = "data/libero_spatial"
    """Output directory; one <task_name>_demo.hdf5 per task."""
    image_size: int = 128
    """Side of the rendered camera images (pixels)."""
    cameras: list[str] = field(default_factory=lambda: ["agentview", "eye_in_hand"])
    """Cameras to render: agentview, eye_in_hand."""
    workers: int = 1
    """Worker processes (one env each). 1 runs in this process."""
    max_steps: int | None = None
    """Policy steps per episode (default: the suite's); a timeout is a failure, not kept."""
    seed: int = 0
    """Env seed."""
    placements: str = "benchmark"
    """Where episodes start: `benchmark` (the task's benchmark init states, `init_states` in order) or `sampled`
    (fresh placements drawn by LIBERO's sampler from the task's BDDL regions, attempt k seeded from (seed, task, k),
    never one of the benchmark's init states: every one of them stays held out for evaluation)."""
    attempts: int | None = None
    """With placements `sampled`: placements to try per task (default 2 x episodes); attempts keep their seeds
    across reruns, so a rerun resumes where the last one stopped."""
    grasp_side: str = "+x"
    """Bowls (rim grasps): +x (default), -x, centre (the average of the two, which fails: a control), or random:
    +x or -x per demo, drawn from (seed, task, init state), recorded in each demo's `grasp_side` attribute
    (+1 / -1). `random` gives the bimodal demos of the multimodality experiment."""

    def validate(self) -> None:
        suite_spec(self.suite)
        unknown = [c for c in self.cameras if c not in CAMERAS]
        if unknown or not self.cameras:
            raise RsdError(f"--cameras {self.cameras}: use one or more of {', '.join(CAMERAS)}")
        if self.grasp_side not in GRASP_SIDES:
            raise RsdError(f"--grasp_side {self.grasp_side!r}: use one of {', '.join(GRASP_SIDES)}")
        for name in ("episodes", "image_size", "workers"):
            if getattr(self, name) < 1:
                raise RsdError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.placements not in PLACEMENTS:
            raise RsdError(f"--placements {self.placements!r}: use one of {', '.join(PLACEMENTS)}")
        if self.placements == "sampled" and self.init_states is not None:
            raise RsdError("--init_states picks benchmark init states; with --placements sampled leave it unset")
        if self.attempts is not None and (self.placements != "sampled" or self.attempts < 1):
            raise RsdError(f"--attempts {self.attempts}: a number >= 1, with --placements sampled only")

    def num_attempts(self) -> int:
        return self.attempts if self.attempts is not None else 2 * self.episodes


GRASP_SIDES = ("+x", "-x", "centre", "random")
PLACEMENTS = ("benchmark", "sampled")


def placement_seed(seed: int, task_id: int, attempt: int) -> int:
    """The numpy seed of sampled placement `attempt` of a task: reproducible, independent across tasks."""
    return int(np.random.SeedSequence([seed, task_id, attempt]).generate_state(1)[0])


def grasp_side_for(cfg: CollectConfig, task_id: int, init_state_index: int) -> int:
    """The expert's grasp side (1 = +x, -1 = -x, 0 = centre) for one demo; `random` is reproducible per demo."""
    if cfg.grasp_side == "random":
        return int(np.random.default_rng([cfg.seed, task_id, init_state_index]).choice([1, -1]))
    return {"+x": 1, "-x": -1, "centre": 0}[cfg.grasp_side]


def allowed_sides(cfg: CollectConfig) -> set[int]:
    return {1, -1} if cfg.grasp_side == "random" else {grasp_side_for(cfg, 0, 0)}


@dataclass(frozen=True)
class Job:
    suite: str
    task_id: int
    init_state_index: int
    image_size: int
    cameras: tuple[str, ...]
    max_steps: int | None
    seed: int
    grasp_side: int = 1
    placement_seed: int | None = None
    """Set: start from `LiberoEnv.sample_placement(placement_seed)`; `init_state_index` is then the attempt number."""


# --- worker side -----------------------------------------------------------------------------
_WORKER_ENV: dict[tuple, LiberoEnv] = {}


def _close_worker_envs() -> None:
    for env in _WORKER_ENV.values():
        env.close()
    _WORKER_ENV.clear()


def worker_env(job: Job) -> LiberoEnv:
    """This process's env for the job's task: the one it holds when the task is the same, else a new one."""
    key = (job.suite, job.task_id, job.image_size, job.cameras, job.seed)
    if key not in _WORKER_ENV:
        _close_worker_envs()
        _WORKER_ENV[key] = LiberoEnv(job.suite, job.task_id, camera_size=job.image_size, cameras=job.cameras,
                                     seed=job.seed)
        # close it at exit while EGL still runs: robosuite registers EGL's teardown with atexit on the first render
        # context, and atexit runs last-registered first (left to the garbage collector, a second env's context
        # frees itself after EGL is gone and prints EGLError tracebacks)
        atexit.unregister(_close_worker_envs)
        atexit.register(_close_worker_envs)
    return _WORKER_ENV[key]


def run_job(job: Job) -> ExpertEpisode:
    """Run one recorded expert episode, reusing this process's env when the task is the same."""
    env = worker_env(job)
    expert = expert_for(env.goal, job.grasp_side, env=env)
    if job.placement_seed is None:
        return run_expert_episode(env, job.init_state_index, job.max_steps, record=True, expert=expert)
    state = env.sample_placement(job.placement_seed)
    distance = env.benchmark_distance(state)
    placement = {"placement": "sampled", "placement_index": job.init_state_index,
                 "placement_seed": job.placement_seed, "benchmark_distance_m": distance}
    if distance > PLACEMENT_FAR_M:
        raise RsdError(f"{job.suite} task {job.task_id} placement {job.init_state_index} (seed {job.placement_seed}): "
                       f"an object lies {distance:.3f} m from where every benchmark init state has it (at most "
                       f"{PLACEMENT_FAR_M} m for a placement of the task's regions); not recorded")
    if distance < PLACEMENT_MATCH_M:  # one of the benchmark's init states: never trained on
        return ExpertEpisode(job.init_state_index, False, 0, np.zeros((0, 7)), placement={**placement, "refused": True})
    episode = run_expert_episode(env, None, job.max_steps, record=True, expert=expert,
                                 placement_seed=job.placement_seed)
    episode.init_state_index, episode.placement = job.init_state_index, placement
    return episode


# --- parent side -----------------------------------------------------------------------------
def demo_path(out: str | Path, task_name: str) -> Path:
    return Path(out) / f"{task_name}_demo.hdf5"


def open_writer(cfg: CollectConfig, task_id: int) -> DemoWriter:
    """The task's DemoWriter (not yet entered); its header is what a rerun must match."""
    info = task_info(cfg.suite, task_id)
    kwargs = env_kwargs(cfg.image_size, cfg.cameras)
    env_args = {"type": 1, "env_name": info.problem_name, "problem_name": info.problem_name,
                "bddl_file": info.bddl_relpath, "env_kwargs": kwargs,
                "rsd_render": {"shadows": SHADOWS}}  # LiberoEnv renders the demos with its default
    return DemoWriter(demo_path(cfg.out, info.name), env_name=info.problem_name,
                      problem_info={"language_instruction": info.instruction, "problem_name": info.problem_name,
                                    "suite": cfg.suite, "task_id": task_id},
                      bddl_file_name=info.bddl_relpath, env_args=env_args)


def pending_init_states(init_states: str | None, done: set[int], count: int, where: str) -> list[int]:
    """Init states still to try, in order, excluding those already in the file (`count` available)."""
    wanted = parse_index_list(init_states) if init_states is not None else list(range(count))
    return [check_index(f"init state index for {where}", i, count) for i in wanted if i not in done]


def _run_jobs(jobs: list[Job], needed: int, submit: Callable[[Job], Future]) -> Iterator[ExpertEpisode]:
    """Keep `workers` jobs in flight; yield episodes until `needed` successes or no jobs are left.

    Episodes are yielded in submission (init-state) order, not completion order, so demo_i names the
    same init state in every run and the train/val split by demo is reproducible with any `workers`.
    """
    queue, running, successes = list(jobs), deque(), 0
    width = getattr(submit, "width", 1)
    while (queue or running) and successes < needed:
        while queue and len(running) < width and successes + len(running) < needed:
            running.append(submit(queue.pop(0)))
        episode = running.popleft().result()
        successes += episode.success
        yield episode
    for future in running:
        future.cancel()


def collect_task(cfg: CollectConfig, task_id: int, submit, progress: tqdm) -> tuple[int, int]:
    """Collect the missing demos of one task. Returns (new demos, failed episodes).

    A file this call created is removed again if it ends without a demo (all episodes failed or an
    interrupt came first), so a data directory never holds an empty demo file.
    """
    writer = open_writer(cfg, task_id)
    created, empty = not writer.path.exists(), False
    try:
        with writer:
            try:
                added, failed = _fill(cfg, task_id, writer, submit, progress)
            finally:
                empty = created and not writer.existing_demos()
    finally:
        if empty:
            writer.path.unlink()
    return added, failed


def _fill(cfg: CollectConfig, task_id: int, writer: DemoWriter, submit, progress: tqdm) -> tuple[int, int]:
    existing = writer.existing_demos()
    sampled = cfg.placements == "sampled"
    key = "placement_index" if sampled else "init_state_index"
    if other := [a for a in existing if key not in a]:
        kind = "benchmark init states" if sampled else "sampled placements"
        raise RsdError(f"{writer.path}: holds {len(other)} demos started from {kind}, but --placements is "
                       f"{cfg.placements!r}: use another --out, or the same --placements to resume")
    if far := [int(a[key]) for a in existing if a.get("benchmark_distance_m", 0.0) > PLACEMENT_FAR_M]:
        raise RsdError(f"{writer.path}: placements {far} lie more than {PLACEMENT_FAR_M} m from every benchmark "
                       "init state (objects on a fixture started in the air, as collections before 2026-12-06 "
                       "placed them): delete the file and collect it again")
    done = {int(a[key]) for a in existing}
    if unexpected := sorted({int(a.get("grasp_side", 1)) for a in existing} - allowed_sides(cfg)):
        raise RsdError(f"{writer.path}: holds demos with grasp_side {unexpected}, but --grasp_side is "
                       f"{cfg.grasp_side!r}: use another --out, or the same --grasp_side to resume")
    progress.update(min(len(done), cfg.episodes))
    needed = cfg.episodes - len(done)
    if needed <= 0:
        return 0, 0
    if sampled:
        starts = [k for k in range(cfg.num_attempts()) if k not in done]
    else:
        starts = pending_init_states(cfg.init_states, done, num_init_states(cfg.suite, task_id),
                                     f"{cfg.suite} task {task_id}")
    jobs = [Job(cfg.suite, task_id, i, cfg.image_size, tuple(cfg.cameras), cfg.max_steps, cfg.seed,
                grasp_side_for(cfg, task_id, i), placement_seed(cfg.seed, task_id, i) if sampled else None)
            for i in starts]
    added = failed = 0
    for episode in _run_jobs(jobs, needed, submit):
        if not episode.success:
            failed += 1
            refused = " (a benchmark init state: refused)" if episode.placement.get("refused") else ""
            progress.set_postfix(task=task_id, failed=failed)
            if refused:
                progress.write(f"{cfg.suite} task {task_id} placement {episode.init_state_index}{refused}")
            continue
        start = episode.placement if sampled else {"init_state_index": episode.init_state_index}
        writer.add_demo(actions=episode.actions, states=episode.states, robot_states=episode.robot_states,
                        rewards=_rewards(episode), dones=_rewards(episode).astype(np.uint8), obs=episode.obs,
                        attrs={**start, "expert": episode.expert,
                               "grasp_side": grasp_side_for(cfg, task_id, episode.init_state_index)})
        added += 1
        progress.update(1)
    return added, failed


def _rewards(episode: ExpertEpisode) -> np.ndarray:
    rewards = np.zeros(episode.steps, dtype=np.float64)
    rewards[-1] = 1.0  # the last action made the env report success
    return rewards


def build_parser() -> ArgumentParser:
    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # field docstrings -> --help
    parser = ArgumentParser(prog="python -m rsd_pl collect", description=CollectConfig.__doc__)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with these fields (configs/collect*.yaml)")
    parser.add_class_arguments(CollectConfig, nested_key=None, as_positional=False)
    return parser


def _make_submit(cfg: CollectConfig, pool: ProcessPoolExecutor | None):
    if pool is None:
        def submit(job: Job) -> Future:
            future: Future = Future()
            future.set_result(run_job(job))
            return future
    else:
        def submit(job: Job) -> Future:
            return pool.submit(run_job, job)
    submit.width = cfg.workers
    return submit


def main(argv: list[str]) -> int:
    parser = build_parser()
    values = parser.parse_args(argv).as_dict()
    values.pop("config", None)
    cfg = CollectConfig(**values)
    cfg.validate()
    tasks = check_tasks(cfg)
    with FolderLock(cfg.out, "collect"):  # a second collect into the same folder is refused
        return _collect(cfg, tasks)


def check_tasks(cfg: CollectConfig) -> list[int]:
    """Task ids, init states, expert support, and the schema and integrity of existing files, before any
    simulation (read-only: bad input writes nothing)."""
    spec = suite_spec(cfg.suite)
    tasks = [check_index(f"task id for {spec.name}", t, spec.num_tasks) for t in parse_index_list(cfg.tasks)]
    for task_id in tasks:
        where, info = f"{cfg.suite} task {task_id}", task_info(cfg.suite, task_id)
        if not supports(info.goal):
            raise RsdError(f"{where} ({info.instruction!r}): goal {info.goal}: no scripted expert for it "
                           f"(they handle {SUPPORTED})")
        if cfg.placements == "benchmark":
            pending_init_states(cfg.init_states, set(), num_init_states(cfg.suite, task_id), where)
        open_writer(cfg, task_id).check_existing()
    return tasks


def _collect(cfg: CollectConfig, tasks: list[int]) -> int:
    start, summary = time.time(), []
    pool = (ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn"))
            if cfg.workers > 1 else None)
    try:
        with tqdm(total=cfg.episodes * len(tasks), desc=f"collect {cfg.suite}", unit="demo") as progress:
            submit = _make_submit(cfg, pool)
            for task_id in tasks:
                summary.append((task_id, *collect_task(cfg, task_id, submit, progress)))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        _close_worker_envs()  # workers=1 ran the jobs in this process
    minutes = (time.time() - start) / 60
    episodes = sum(added + failed for _, added, failed in summary)
    for task_id, added, failed in summary:
        print(f"{cfg.suite} task {task_id}: +{added} demos, {failed} failed episodes")
    print(f"{episodes} episodes in {minutes:.2f} min ({episodes / max(minutes, 1e-9):.2f} episodes/min), "
          f"files in {cfg.out}")
    return 0
