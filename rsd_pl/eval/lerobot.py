"""`eval_info.json` in LeRobot's `lerobot-eval` layout (plain `json.load`):

    {"mode": <reference mode, or the first mode when it is absent>,
     "per_episode": [...], "aggregated": {...},             # that mode, where a LeRobot reader looks
     "per_group": {<suite>: {...}}, "overall": {...},       # the same in lerobot-eval's multi-task keys
     "per_mode": {<mode>: {"per_episode": [...], "aggregated": {...}, "per_group": {<suite>: {...}}}}}

per_episode: {episode_ix, success, sum_reward, max_reward (1/0 from success: LIBERO's reward is the
success flag), seed, task_group (suite), task_id, task (instruction), trial, mode, status, steps,
eval_s (wall_s)}, episodes ordered by (suite, task_id, trial). aggregated / per_group: {pc_success,
pc_success_ci_low, pc_success_ci_high (Wilson 95%, percent), avg_sum_reward, avg_max_reward,
n_episodes, eval_s (sum of the episodes' wall_s, not the run's elapsed time), eval_ep_s (mean wall_s)}.

Imports: eval.stats only.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from rsd_pl.eval.stats import succeeded, wilson_interval


def _lerobot_block(records: list[dict[str, Any]]) -> dict[str, Any]:
    """LeRobot's per_episode / aggregated / per_group for the records of one mode (layout: module docstring)."""
    ordered = sorted(records, key=lambda r: (r["suite"], int(r["task_id"]), int(r["trial"])))
    per_episode = [{"episode_ix": i, "success": succeeded(r), "sum_reward": float(succeeded(r)),
                    "max_reward": float(succeeded(r)), "seed": r.get("seed"), "task_group": r["suite"],
                    "task_id": int(r["task_id"]), "task": r.get("instruction") or r.get("task_name", ""),
                    "trial": int(r["trial"]), "mode": r["mode"], "status": r["status"],
                    "steps": int(r.get("steps", 0)), "eval_s": float(r.get("wall_s") or 0.0)}
                   for i, r in enumerate(ordered)]
    by_suite: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for episode in per_episode:
        by_suite[episode["task_group"]].append(episode)
    return {"per_episode": per_episode, "aggregated": _lerobot_aggregate(per_episode),
            "per_group": {suite: _lerobot_aggregate(episodes) for suite, episodes in by_suite.items()}}


def _lerobot_aggregate(per_episode: list[dict[str, Any]]) -> dict[str, Any]:
    successes, n = sum(e["success"] for e in per_episode), len(per_episode)
    low, high = wilson_interval(successes, n)
    eval_s = sum(e["eval_s"] for e in per_episode)
    return {"avg_sum_reward": successes / n, "avg_max_reward": successes / n, "pc_success": 100 * successes / n,
            "pc_success_ci_low": 100 * low, "pc_success_ci_high": 100 * high, "ci": "Wilson 95%",
            "n_episodes": n, "eval_s": eval_s, "eval_ep_s": eval_s / n}


def lerobot_eval_info(records: list[dict[str, Any]], reference_mode: str = "ar") -> dict[str, Any]:
    """`eval_info.json` in LeRobot's field names, one block per mode (layout: module docstring)."""
    per_mode = {mode: _lerobot_block(rs) for (mode,), rs in _by_mode(records).items()}
    top = reference_mode if reference_mode in per_mode else next(iter(per_mode))
    block = per_mode[top]
    return {"mode": top, "per_episode": block["per_episode"], "aggregated": block["aggregated"],
            "per_group": block["per_group"], "overall": block["aggregated"], "per_mode": per_mode}


def _by_mode(records: list[dict[str, Any]]) -> dict[tuple[str], list[dict[str, Any]]]:
    groups: dict[tuple[str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[(record["mode"],)].append(record)
    return dict(groups)
