"""`eval_info.json` in LeRobot's `lerobot-eval` layout (plain `json.load`).

LeRobot's multi-task keys, as `lerobot-eval` writes them for LIBERO (`eval_policy_all`):

    "per_task":  [{"task_group": <suite>, "task_id": <int>,
                   "metrics": {"sum_rewards": [...], "max_rewards": [...], "successes": [...],
                               "video_paths": [...]}}, ...]        # per-episode lists, trial order
    "per_group": {<suite>: {"avg_sum_reward", "avg_max_reward", "pc_success", "n_episodes", "video_paths"}}
    "overall":   {the same over every episode, plus "eval_s", "eval_ep_s"}

and its single-task keys `per_episode` / `aggregated`, all for one decoding mode. rsd_pl adds fields
LeRobot's readers ignore: Wilson 95% intervals (`pc_success_ci_low` / `_high`, percent) in every
aggregate; per episode `seed`, `trial`, `task`, `mode`, `status`, `steps`; `mode`; and `per_mode`,
the same blocks for every mode. The top of `eval_info.json` is the reference mode (`ar`, else the
first); `eval_info_<mode>.json` holds each mode's blocks alone, in the same layout.

per_episode: {episode_ix, success, sum_reward, max_reward (1/0 from success: LIBERO's reward is the
success flag), seed, task_group (suite), task_id, task (instruction), trial, mode, status, steps,
eval_s (wall_s), video_path (or null)}, ordered by (suite, task_id, trial), the order of per_task's
lists. eval_s sums the episodes' wall_s (not the run's elapsed time: a resumed run spans sessions);
eval_ep_s is its mean.

Imports: eval.stats only.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from rsd_pl.eval.stats import succeeded, wilson_interval


def _lerobot_block(records: list[dict[str, Any]]) -> dict[str, Any]:
    """LeRobot's per_task / per_group / overall and per_episode / aggregated for the records of one mode."""
    ordered = sorted(records, key=lambda r: (r["suite"], int(r["task_id"]), int(r["trial"])))
    per_episode = [{"episode_ix": i, "success": succeeded(r), "sum_reward": float(succeeded(r)),
                    "max_reward": float(succeeded(r)), "seed": r.get("seed"), "task_group": r["suite"],
                    "task_id": int(r["task_id"]), "task": r.get("instruction") or r.get("task_name", ""),
                    "trial": int(r["trial"]), "mode": r["mode"], "status": r["status"],
                    "steps": int(r.get("steps", 0)), "eval_s": float(r.get("wall_s") or 0.0),
                    "video_path": r.get("video")}
                   for i, r in enumerate(ordered)]
    by_suite: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_task: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for episode in per_episode:
        by_suite[episode["task_group"]].append(episode)
        by_task[(episode["task_group"], episode["task_id"])].append(episode)
    per_task = [{"task_group": suite, "task_id": task_id,
                 "metrics": {"sum_rewards": [e["sum_reward"] for e in episodes],
                             "max_rewards": [e["max_reward"] for e in episodes],
                             "successes": [e["success"] for e in episodes],
                             "video_paths": [e["video_path"] for e in episodes if e["video_path"]]}}
                for (suite, task_id), episodes in by_task.items()]
    overall = _lerobot_aggregate(per_episode)
    return {"per_task": per_task, "per_group": {suite: _lerobot_aggregate(episodes, timing=False)
                                                for suite, episodes in by_suite.items()},
            "overall": overall, "per_episode": per_episode, "aggregated": overall}


def _lerobot_aggregate(per_episode: list[dict[str, Any]], timing: bool = True) -> dict[str, Any]:
    successes, n = sum(e["success"] for e in per_episode), len(per_episode)
    low, high = wilson_interval(successes, n)
    out = {"avg_sum_reward": successes / n, "avg_max_reward": successes / n, "pc_success": 100 * successes / n,
           "n_episodes": n, "video_paths": [e["video_path"] for e in per_episode if e["video_path"]],
           "pc_success_ci_low": 100 * low, "pc_success_ci_high": 100 * high, "ci": "Wilson 95%"}
    if timing:
        eval_s = sum(e["eval_s"] for e in per_episode)
        out.update(eval_s=eval_s, eval_ep_s=eval_s / n)
    return out


def lerobot_eval_info(records: list[dict[str, Any]], reference_mode: str = "ar") -> dict[str, Any]:
    """`eval_info.json` in LeRobot's field names: the reference mode's blocks at the top, every mode's
    under per_mode (layout: module docstring)."""
    per_mode = lerobot_eval_info_per_mode(records)
    top = reference_mode if reference_mode in per_mode else next(iter(per_mode))
    return {"mode": top, **per_mode[top], "per_mode": per_mode}


def lerobot_eval_info_per_mode(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """mode -> that mode's `eval_info_<mode>.json` (LeRobot's layout, `mode` first)."""
    return {mode: {"mode": mode, **_lerobot_block(rs)} for (mode,), rs in _by_mode(records).items()}


def _by_mode(records: list[dict[str, Any]]) -> dict[tuple[str], list[dict[str, Any]]]:
    groups: dict[tuple[str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[(record["mode"],)].append(record)
    return dict(groups)
