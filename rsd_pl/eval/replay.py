"""`python -m rsd_pl replay`: the blind floor of a suite. For each task, one training demo's actions are replayed open
loop from the benchmark's init states, with no observation used, then the arm holds still (zero motion, the demo's
last gripper command) until the suite's step limit. A learned policy that does not beat this on the same episodes is
not using what it sees.

Where the demos vary little (libero_object's placement regions are a few mm), the replay is strong; where layouts vary
(libero_spatial), it is weak. The episodes are the eval's: same suite, task, trial (benchmark init state), same wait
steps and success check (`rsd_pl.eval.runner.run_episode`), logged as mode `replay` in `<out>/episodes.jsonl`, one line
per finished episode (a rerun resumes). `--compare <eval folder> ...` pairs every mode of those evaluations with the
replay on the episodes both ran (Newcombe interval, exact McNemar p), in `<out>/replay.md` and `replay.json`, one
section per suite in the folder's log.

`--suite` takes several suites, e.g. a benchmark suite and its LIBERO-PRO perturbations: a perturbed suite's task k
replays the demo of its base suite's task k (LIBERO-PRO keeps the task order; its `_lan` instructions are paraphrases,
so the demo is matched by the base suite's instruction). LIBERO-PRO ships its own init states, which place the
objects anew (1.5-3 cm from the clean trial of the same index for `_lan` and `_object`), so the blind floor under a
perturbation shows what its new placements alone do to a policy that does not look.

  python -m rsd_pl replay --data data/four_suites/libero_object --suite libero_object --num_trials 10 \\
      --out runs/four_suites/libero_object/replay --compare runs/four_suites/libero_object/eval
  python -m rsd_pl replay --data data/four_suites/libero_object --suite libero_object_lan,libero_object_swap \\
      --num_trials 10 --out runs/four_suites/libero_object/replay --compare runs/four_suites/libero_object/pro
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from rsd_pl.decoding import StatsAggregator
from rsd_pl.durable import FolderLock, StopOnSigterm, atomic_write
from rsd_pl.envs.suites import suite_spec
from rsd_pl.errors import RsdError
from rsd_pl.eval.episode_log import EpisodeLog, episode_key, read_episodes
from rsd_pl.eval.report import _p_value, _points
from rsd_pl.eval.stats import pair_by_episode, paired_success_test, succeeded, wilson_interval

MODE = "replay"


class ReplayPolicy:
    """The episode runner's policy protocol over a fixed action sequence: action t of the demo at step t, never
    looking at the observation (it never asks for a batch, so the env renders nothing), then holding still."""

    will_query = False  # no observation is ever needed: the env renders no camera frame

    def __init__(self, actions: np.ndarray) -> None:
        actions = np.asarray(actions, dtype=np.float32)
        if actions.ndim != 2 or actions.shape[1] != 7 or not len(actions):
            raise RsdError(f"a replay needs (N, 7) actions with N >= 1, got shape {actions.shape}")
        self.actions = actions
        self.hold = np.zeros(7, dtype=np.float32)
        self.hold[6] = actions[-1, 6]  # keep the gripper as the demo left it
        self.stats = StatsAggregator()  # never fed: a replay decodes no chunk
        self._step = 0

    def reset(self) -> None:
        self._step = 0

    def select_action(self, batch: Any) -> np.ndarray:
        step, self._step = self._step, self._step + 1
        return self.actions[step] if step < len(self.actions) else self.hold


def demo_actions(data: str | Path, suite: str, tasks: list[int], demo: int) -> dict[int, tuple[str, np.ndarray]]:
    """task id -> (source "file:data/demo_k", actions (N, 7)) of demo `demo` of each task's file under `data`,
    matched to the task by its instruction (a LIBERO-PRO suite's: its base suite's, same task id). RsdError naming
    the task or file when one is missing."""
    from rsd_pl.data.libero_hdf5 import read_episodes as read_demos
    from rsd_pl.data.libero_hdf5 import resolve_demo_files
    from rsd_pl.envs.libero import task_info

    source_suite = suite_spec(suite).base or suite  # LIBERO-PRO keeps its base suite's task order
    wanted = {" ".join(task_info(source_suite, t).instruction.lower().split()): t for t in tasks}
    found: dict[int, tuple[str, np.ndarray]] = {}
    for path in resolve_demo_files(data):
        episodes = read_demos(path, image_keys=[])  # actions and proprio only
        task = wanted.get(" ".join(episodes[0].instruction.lower().split())) if episodes else None
        if task is None:
            continue
        if demo >= len(episodes):
            raise RsdError(f"{path}: --demo {demo} asked, but the file has {len(episodes)} complete demos")
        found[task] = (episodes[demo].source, episodes[demo].actions)
    missing = [t for t in tasks if t not in found]
    if missing:
        raise RsdError(f"{data}: no demo file for {source_suite} task(s) {missing} "
                       f"({'; '.join(repr(task_info(source_suite, t).instruction) for t in missing)})")
    return found


def run(sources: dict[int, tuple[str, np.ndarray]], suite: str, trials: list[int], out: Path) -> None:
    """Replay each task's demo (`sources`, from `demo_actions`) from each trial's init state; episodes already in
    `<out>/episodes.jsonl` are kept. A SIGTERM stops it between two episodes, with a message (a rerun resumes)."""
    from rsd_pl.envs.libero import LiberoEnv
    from rsd_pl.eval.runner import new_run_id, run_episode

    tasks = sorted(sources)
    done = {episode_key(r) for r in read_episodes(out) if r["status"] != "error"}
    todo = [(t, i) for t in tasks for i in trials if (suite, t, i, MODE) not in done]
    print(f"replay: {len(done)} episodes already in {out}, {len(todo)} to run")
    log = EpisodeLog(out, 0, 1)
    run_id = new_run_id()
    with StopOnSigterm(log.path) as stop:
        for task in sorted({t for t, _ in todo}):
            source, actions = sources[task]
            policy = ReplayPolicy(actions)
            with LiberoEnv(suite, task, camera_size=None) as env:
                for trial in [i for t, i in todo if t == task]:
                    stop.check()
                    result = run_episode(env, policy, env.max_steps, trial=trial, seed=trial, mode=MODE,
                                         image_size=0)
                    result.latency_ms, result.decoding, result.run = {}, {"mode": MODE, "demo": source}, run_id
                    log.append(result.to_json())
                    done.add((suite, task, trial, MODE))
                    print(f"[{len(done)}] {suite} task {task} trial {trial} {MODE}: {result.status} in "
                          f"{result.steps} steps", flush=True)


def summary(out: Path, suite: str, compare: Path | list[Path] | None) -> dict[str, Any]:
    """Replay success per task and in all (Wilson 95%), and each mode of the `compare` folders' logs (pooled)
    paired with the replay."""
    folders = [] if compare is None else [compare] if isinstance(compare, Path) else list(compare)
    records = [r for r in read_episodes(out) if r["suite"] == suite and r["mode"] == MODE]
    if not records:
        raise RsdError(f"{out}: no {MODE} episodes of {suite}")
    per_task = {}
    for task in sorted({int(r["task_id"]) for r in records}):
        wins = [succeeded(r) for r in records if int(r["task_id"]) == task]
        per_task[task] = {"successes": sum(wins), "episodes": len(wins), "interval": wilson_interval(sum(wins),
                                                                                                       len(wins))}
    wins = [succeeded(r) for r in records]
    result: dict[str, Any] = {"suite": suite, "successes": sum(wins), "episodes": len(wins),
                              "interval": wilson_interval(sum(wins), len(wins)), "per_task": per_task,
                              "compared_with": None, "modes": {}}
    logs = {str(f): [r for r in read_episodes(f) if r["suite"] == suite and r["mode"] != MODE] for f in folders}
    # an episode in two compared folders counts once (the first folder's)
    others = list({episode_key(r): r for log in reversed(logs.values()) for r in log}.values())
    if others:  # a suite the compared evaluations never ran is summarised alone
        result["compared_with"] = ", ".join(folder for folder, log in logs.items() if log)
        for mode in sorted({r["mode"] for r in others}):
            pairs = pair_by_episode([*others, *records], mode, MODE)
            if pairs:
                result["modes"][mode] = paired_success_test([succeeded(m) for m, _ in pairs],
                                                            [succeeded(r) for _, r in pairs])
    return result


def markdown(result: dict[str, Any]) -> str:
    def rate(s: int, n: int, interval: tuple[float, float]) -> str:
        return f"{s}/{n} ({100 * s / n:.1f}%, 95% CI {100 * interval[0]:.1f}-{100 * interval[1]:.1f})"

    spec = suite_spec(result["suite"])
    own = spec.base is not None and spec.libero == spec.name  # a LIBERO-PRO suite with its own init states
    states = f"{spec.name}'s own init states (LIBERO-PRO's placements, not {spec.base}'s)" if own else (
        "the benchmark init states")
    lines = [f"# Blind replay floor: {result['suite']}", "",
             f"One training demo's actions per task, replayed open loop from {states} (no "
             "observation used). Success with Wilson 95% intervals.", "",
             f"All tasks: {rate(result['successes'], result['episodes'], result['interval'])}", "",
             "| task | replay success |", "|---|---|"]
    lines += [f"| {t} | {rate(r['successes'], r['episodes'], r['interval'])} |" for t, r in result["per_task"].items()]
    if result["compared_with"]:
        lines += ["", f"## Against the modes of {result['compared_with']}", "",
                  "Paired on the episodes both ran (same task and init state): mode minus replay in points, "
                  "Newcombe 95% interval, exact McNemar p.", "",
                  "| mode | episodes | mode success | replay success | difference (95% CI) | only mode / only replay "
                  "| McNemar p | verdict |", "|---|---|---|---|---|---|---|---|"]
        for mode, t in result["modes"].items():
            n = t["episodes"]
            lines.append(f"| {mode} | {n} | {t['both'] + t['mode_only']} | {t['both'] + t['reference_only']} | "
                         f"{_points(t['difference'])} ({_points(t['ci_low'])} to {_points(t['ci_high'])}) | "
                         f"{t['mode_only']} / {t['reference_only']} | {_p_value(t['p_value'])} | {t['verdict']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    from rsd_pl.envs import check_index, num_init_states, parse_index_list, suite_spec

    parser = argparse.ArgumentParser(prog="python -m rsd_pl replay", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder (or file) of the suite's training demos (LIBERO HDF5)")
    parser.add_argument("--suite", required=True,
                        help="the LIBERO suite(s), e.g. libero_object or libero_object_lan,libero_object_swap")
    parser.add_argument("--tasks", default=None, help="task ids, e.g. 0-9 or 0,3 (default: every task)")
    parser.add_argument("--num_trials", type=int, default=10, help="benchmark init states 0..N-1 per task")
    parser.add_argument("--demo", type=int, default=0, help="which demo of each task's file to replay (demo order)")
    parser.add_argument("--out", required=True, help="output folder: episodes.jsonl, replay.md, replay.json")
    parser.add_argument("--compare", nargs="+", default=[],
                        help="eval folder(s) whose modes are paired with the replay, suite by suite")
    args = parser.parse_args(argv)
    suites = [name.strip() for name in args.suite.split(",") if name.strip()]
    specs = [suite_spec(name) for name in suites]
    if not specs:
        raise RsdError(f"--suite {args.suite!r}: name at least one suite")
    tasks = list(range(specs[0].num_tasks)) if args.tasks is None else parse_index_list(args.tasks)
    for spec in specs:
        for task in tasks:
            check_index(f"task id for {spec.name}", task, spec.num_tasks)
            if not 1 <= args.num_trials <= (count := num_init_states(spec.name, task)):
                raise RsdError(f"--num_trials {args.num_trials}: {spec.name} task {task} has {count} init states")
    if args.demo < 0:
        raise RsdError(f"--demo {args.demo}: a demo index is >= 0")
    compare = [Path(folder) for folder in args.compare]
    for folder in compare:
        if not (folder / "episodes.jsonl").is_file():
            raise RsdError(f"--compare {folder}: no episodes.jsonl there")
    out = Path(args.out)
    # replay.md summarises every suite the folder holds, this run's and earlier runs': a compare folder must pair
    # with one of them
    summarised = sorted({*suites, *(r["suite"] for r in read_episodes(out) if r["mode"] == MODE)}
                        if (out / "episodes.jsonl").is_file() else set(suites))
    if compare and not any(r["suite"] in summarised for folder in compare for r in read_episodes(folder)):
        raise RsdError(f"--compare {' '.join(args.compare)}: no episodes of {', '.join(summarised)} to compare with")
    sources: dict[str, dict[int, tuple[str, np.ndarray]]] = {}  # one read per base suite, all before any episode
    for spec in specs:
        if (spec.base or spec.name) not in sources:
            sources[spec.base or spec.name] = demo_actions(args.data, spec.name, tasks, args.demo)
    with FolderLock(out, "replay"):
        for spec in specs:
            run(sources[spec.base or spec.name], spec.name, list(range(args.num_trials)), out)
        logged = dict.fromkeys(r["suite"] for r in read_episodes(out) if r["mode"] == MODE)  # earlier runs' too
        results = [summary(out, suite, compare) for suite in logged]
        text = "\n".join(markdown(result) for result in results)
        atomic_write(out / "replay.md", text)
        atomic_write(out / "replay.json", json.dumps({"suites": results}, indent=2))
    print(text)
    print(f"wrote {out / 'replay.md'}, {out / 'replay.json'}")
    return 0
