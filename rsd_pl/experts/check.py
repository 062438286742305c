"""`python -m rsd_pl expert-check`: the scripted expert's success rate per task (cameras off)."""

from __future__ import annotations

import time

from jsonargparse import ArgumentParser

from rsd_pl.envs import LiberoEnv, check_index, parse_index_list, suite_spec
from rsd_pl.experts.rollout import run_expert_episode
from rsd_pl.experts.select import expert_for, supports


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m rsd_pl expert-check",
                            description="Success rate of the scripted expert per task (cameras off).")
    parser.add_argument("--suite", type=str, default="libero_spatial", help="LIBERO suite")
    parser.add_argument("--tasks", type=str, default="0-9", help="task ids, e.g. '0-9' or '0,3'")
    parser.add_argument("--init_states", type=str, default="0-9", help="init state indices, e.g. '0-9'")
    parser.add_argument("--max_steps", type=int | None, default=None,
                        help="policy steps per episode (default: the suite's)")
    parser.add_argument("--seed", type=int, default=0, help="env seed")
    parser.add_argument("--grasp_side", type=int, default=1, choices=[1, -1, 0],
                        help="bowls: rim grasp at +x (1, default), at -x (-1), or at the centre (0: the average of "
                             "the two, the multimodality experiment's control)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    spec = suite_spec(args.suite)
    tasks = [check_index(f"task id for {spec.name}", t, spec.num_tasks) for t in parse_index_list(args.tasks)]
    inits = parse_index_list(args.init_states)
    total_ok = total = 0
    for task_id in tasks:
        with LiberoEnv(spec.name, task_id, camera_size=None, seed=args.seed) as env:
            for index in inits:
                check_index(f"init state index for {spec.name} task {task_id}", index, env.num_init_states)
            if not supports(env.goal):
                print(f"{spec.name} task {task_id}: unsupported goal {env.goal} (skipped) {env.instruction}")
                continue
            start, ok, failed = time.time(), 0, []
            for index in inits:
                expert = expert_for(env.goal, args.grasp_side, env=env)
                episode = run_expert_episode(env, index, args.max_steps, expert=expert)
                ok += episode.success
                if not episode.success:
                    failed.append(index)
            total_ok, total = total_ok + ok, total + len(inits)
            print(f"{spec.name} task {task_id}: {ok}/{len(inits)} ({100 * ok / len(inits):.0f}%) "
                  f"failed init states {failed} [{time.time() - start:.0f}s] {env.instruction}", flush=True)
    print(f"{spec.name} overall: {total_ok}/{total} ({100 * total_ok / max(total, 1):.1f}%)", flush=True)
    return 0
