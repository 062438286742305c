"""The episodes of an evaluation run and its output folder: `episode_list` (every (suite, task, trial, seed)
with the modes to run on it), `pending_items` (without the runs the folder's `episodes.jsonl` already has: a
rerun resumes), `check_same_models` (a rerun that loads other models than the logged runs name is refused) and
`output_lock` (one writing process per folder).

Imports: eval.config, eval.episode_log, rsd_pl.durable, rsd_pl.envs (suite tables); Lightning's
rank only.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

from rsd_pl.errors import RsdError
from rsd_pl.eval.config import EvalConfig, models_used
from rsd_pl.eval.episode_log import EPISODES_FILE, episode_key, read_episodes


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


def check_same_models(cfg: EvalConfig, identity: dict[str, str]) -> None:
    """Refuse to resume into cfg.out when a logged run was decoded by other weights than this run loads (a refit,
    another machine's registry, another OFT checkpoint): its success rates would mix two models.
    Runs logged before the records named their models cannot be checked; they are counted, and said."""
    unnamed = 0
    for record in read_episodes(cfg.out):
        logged = record.get("models")
        if logged is None:
            unnamed += 1
            continue
        now = models_used(record["mode"], identity)
        for key in logged.keys() & now.keys():
            if not same_model(logged[key], now[key]):
                raise RsdError(
                    f"{Path(cfg.out) / EPISODES_FILE}: {record['suite']} task {record['task_id']} trial "
                    f"{record['trial']} {record['mode']} was decoded by {key} {logged[key]}, but this run loads "
                    f"{now[key]}: evaluate into another out folder, or load the same {key}")
    if unnamed:
        print(f"eval: {unnamed} runs in {Path(cfg.out) / EPISODES_FILE} predate the records naming their models; "
              "they are taken to be this run's")


def same_model(logged: str, loaded: str) -> bool:
    """Two model names of `eval.models.load_models` name the same weights: the same sha256 where both carry one (a
    re-export of the same weights under another version is the same model), else the same text (OFT's folder)."""
    digests = [name.split("sha256:")[-1] if "sha256:" in name else None for name in (logged, loaded)]
    return digests[0] == digests[1] if None not in digests else logged == loaded


def count_runs(items: list[dict[str, Any]]) -> int:
    return sum(len(item["modes"]) for item in items)


def output_lock(out: str | Path, command: str) -> Any:
    """The folder lock of an output folder (`rsd_pl.durable.FolderLock`), taken by the launching process only:
    the ranks Lightning starts for DDP write their own files under the lock their launcher holds."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from rsd_pl.durable import FolderLock

    return FolderLock(out, command) if getattr(rank_zero_only, "rank", 0) == 0 else nullcontext()

