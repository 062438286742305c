"""`python -m rsd_pl multimodal`: the multimodality experiment on real LIBERO.

The demos (configs/multimodal/collect.yaml) grasp the bowl's rim at +x or at -x of its centre, drawn per demo;
grasping at the centre, the average of the two ways, fails (the scripted-expert control arms show it). A main
model trained on them is rolled out in several arms (a decoding mode with its settings: l1, parallel, greedy ar,
ar with temperature sampling, speculative with the sampling rule), each an ordinary resumable `eval` run into
`<out>/<arm>` with the end-effector paths logged. Each rollout is classified by where the gripper first closed,
relative to the picked object at that moment: `+x` / `-x` (more than `side_margin` from the centre along x),
`centre`, or `no grasp`. Writes `<out>/report.md` / `report.json` (success with Wilson intervals and the modes
chosen, per arm; the demos' and the expert controls' rows) and `<out>/paths.png` (top view of the paths, coloured
by mode).

Imports: eval.session, eval.config, eval.episodes, eval.report, eval.stats, the experts (expert controls).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rsd_pl.durable import append_jsonl, atomic_write, repair_torn_tail
from rsd_pl.errors import RsdError
from rsd_pl.eval.config import EvalConfig, validate_config
from rsd_pl.eval.episodes import output_lock
from rsd_pl.eval.report import read_episodes, read_jsonl
from rsd_pl.eval.session import EvalSession
from rsd_pl.eval.stats import wilson_interval

SIDES = ("+x", "-x", "centre", "no grasp")
SIDE_COLORS = {"+x": "tab:blue", "-x": "tab:orange", "centre": "tab:red", "no grasp": "tab:gray"}
EXPERT_FILE = "expert_controls.jsonl"


@dataclass
class Arm:
    name: str
    """Folder name under `out` and the table's row label."""
    mode: str
    """A decoding mode (l1, parallel, ar, ar_exit, speculative)."""
    decoding: dict[str, Any] = field(default_factory=dict)
    """Overrides of eval.decoding for this arm, e.g. {temperature: 1.0}."""


@dataclass
class MultimodalConfig:
    """The multimodality experiment: arms of decoding modes on the same episodes, modes classified from paths."""

    eval: EvalConfig = field(default_factory=EvalConfig)
    """The base evaluation (registry, main, suites, tasks, num_trials, seed, camera_size, ...); modes, out,
    decoding overrides and record_paths are set per arm."""
    arms: list[Arm] = field(default_factory=list)
    expert_sides: list[int] = field(default_factory=lambda: [1, -1, 0])
    """Scripted-expert control arms on the same init states: grasp side +1 (+x), -1 (-x), 0 (centre)."""
    data: str | None = None
    """The demos (file, folder or glob): their grasp sides are counted for the table's data row."""
    side_margin: float = 0.02
    """Metres along x from the object's centre beyond which a grasp counts as +x / -x."""
    out: str = "runs/multimodal"


def classify_path(path: dict[str, Any] | None, margin: float) -> str:
    """'+x' / '-x' / 'centre' by the end effector's x offset from the picked object's centre when the gripper
    first closes; 'no grasp' when it never closes (or no path was logged)."""
    if not path or not path.get("gripper"):
        return "no grasp"
    closing = [i for i, g in enumerate(path["gripper"]) if g > 0]
    if not closing:
        return "no grasp"
    offset = path["eef"][closing[0]][0] - path["object"][closing[0]][0]
    return "+x" if offset > margin else "-x" if offset < -margin else "centre"


def arm_config(cfg: MultimodalConfig, arm: Arm) -> EvalConfig:
    try:
        decoding = dataclasses.replace(cfg.eval.decoding, mode=arm.mode, **arm.decoding)
    except TypeError as error:
        raise RsdError(f"arm {arm.name!r}: decoding {arm.decoding}: {error}") from error
    run = dataclasses.replace(cfg.eval, modes=[arm.mode], reference_mode=arm.mode, decoding=decoding,
                              out=str(Path(cfg.out) / arm.name), record_paths=True, num_envs=1,
                              deviation_reference=None)
    validate_config(run)
    return run


def check(cfg: MultimodalConfig) -> list[EvalConfig]:
    """Every arm's EvalConfig, validated before any model loads."""
    if not cfg.arms:
        raise RsdError("arms is empty: give at least one {name, mode, decoding}")
    names = [arm.name for arm in cfg.arms]
    if len(set(names)) != len(names) or any(not n or "/" in n for n in names):
        raise RsdError(f"arms: names {names} must be distinct, non-empty folder names")
    if bad := [s for s in cfg.expert_sides if s not in (1, -1, 0)]:
        raise RsdError(f"expert_sides: {bad} are not grasp sides (1 = +x, -1 = -x, 0 = centre)")
    return [arm_config(cfg, arm) for arm in cfg.arms]


def demo_sides(data: str) -> dict[str, int]:
    """Count of the demos' `grasp_side` attributes (+x / -x / centre)."""
    from rsd_pl.data.libero_hdf5 import demo_attributes, resolve_demo_files

    counts = dict.fromkeys(SIDES[:3], 0)
    for path in resolve_demo_files(data):
        for attrs in demo_attributes(path):
            counts[{1: "+x", -1: "-x", 0: "centre"}[int(attrs.get("grasp_side", 1))]] += 1
    return counts


def run_expert_controls(cfg: MultimodalConfig) -> list[dict[str, Any]]:
    """The scripted expert with each grasp side on the arms' init states (resumable: <out>/expert_controls.jsonl)."""
    from rsd_pl.envs import LiberoEnv, parse_index_list, suite_spec
    from rsd_pl.experts.rollout import run_expert_episode
    from rsd_pl.experts.select import expert_for

    log = Path(cfg.out) / EXPERT_FILE
    log.parent.mkdir(parents=True, exist_ok=True)
    repair_torn_tail(log)
    done = read_jsonl(log) if log.exists() else []
    keys = {(r["suite"], r["task_id"], r["trial"], r["grasp_side"]) for r in done}
    for suite in cfg.eval.suites:
        tasks = parse_index_list(cfg.eval.tasks) if cfg.eval.tasks else list(range(suite_spec(suite).num_tasks))
        for task_id in tasks:
            todo = [(trial, side) for side in cfg.expert_sides for trial in range(cfg.eval.num_trials)
                    if (suite, task_id, trial, side) not in keys]
            if not todo:
                continue
            with LiberoEnv(suite, task_id, camera_size=None, seed=cfg.eval.seed) as env:
                for trial, side in todo:
                    episode = run_expert_episode(env, trial, expert=expert_for(env.goal, side, env=env))
                    record = {"suite": suite, "task_id": task_id, "trial": trial, "grasp_side": side,
                              "success": bool(episode.success), "steps": episode.steps}
                    append_jsonl(log, record)
                    done.append(record)
                    print(f"expert control grasp_side {side:+d}: task {task_id} trial {trial}: "
                          f"{'success' if episode.success else 'failure'} in {episode.steps} steps", flush=True)
    return done


def _success_text(successes: int, trials: int) -> str:
    if not trials:
        return "-"
    low, high = wilson_interval(successes, trials)
    return f"{successes}/{trials} ({100 * successes / trials:.0f}%, {100 * low:.0f}-{100 * high:.0f})"


def summarise(cfg: MultimodalConfig, runs: list[EvalConfig], experts: list[dict[str, Any]]) -> dict[str, Any]:
    arms = []
    for arm, run in zip(cfg.arms, runs, strict=True):
        records = [r for r in read_episodes(run.out) if r["mode"] == arm.mode]
        sides = [classify_path(r.get("path"), cfg.side_margin) for r in records]
        arms.append({"name": arm.name, "mode": arm.mode, "decoding": arm.decoding, "trials": len(records),
                     "successes": sum(bool(r["success"]) for r in records),
                     "sides": {s: sides.count(s) for s in SIDES},
                     "success_by_side": {s: sum(bool(r["success"]) for r, c in zip(records, sides, strict=True)
                                                if c == s) for s in SIDES},
                     "records": [{"trial": r["trial"], "task_id": r["task_id"], "success": r["success"], "side": c,
                                  "path": r.get("path")} for r, c in zip(records, sides, strict=True)]})
    controls = []
    for side in cfg.expert_sides:
        rows = [r for r in experts if r["grasp_side"] == side]
        controls.append({"grasp_side": side, "trials": len(rows), "successes": sum(r["success"] for r in rows)})
    return {"arms": arms, "expert_controls": controls,
            "demos": demo_sides(cfg.data) if cfg.data else None, "side_margin": cfg.side_margin}


def markdown(summary: dict[str, Any], cfg: MultimodalConfig) -> str:
    names = {1: "+x", -1: "-x", 0: "centre (the average)"}
    lines = ["# Multimodality experiment", "",
             f"{cfg.eval.suites} tasks {cfg.eval.tasks}, init states 0-{cfg.eval.num_trials - 1}, seed "
             f"{cfg.eval.seed}; the same episodes in every arm. Grasp side = the end effector's x offset from the "
             f"picked object when the gripper first closes (beyond +-{summary['side_margin']} m: +x / -x).", "",
             "| arm | success (Wilson 95%) | +x | -x | centre | no grasp | success by side (+x / -x / centre) |",
             "|---|---|---|---|---|---|---|"]
    if summary["demos"]:
        d = summary["demos"]
        lines.append(f"| demos (data) | - | {d['+x']} | {d['-x']} | {d['centre']} | - | - |")
    for c in summary["expert_controls"]:
        lines.append(f"| scripted expert, grasp {names[c['grasp_side']]} | {_success_text(c['successes'], c['trials'])}"
                     " | | | | | |")
    for a in summary["arms"]:
        s, w = a["sides"], a["success_by_side"]
        setting = ", ".join(f"{k} {v}" for k, v in a["decoding"].items())
        lines.append(f"| {a['name']} (`{a['mode']}`{', ' + setting if setting else ''}) | "
                     f"{_success_text(a['successes'], a['trials'])} | {s['+x']} | {s['-x']} | {s['centre']} | "
                     f"{s['no grasp']} | {w['+x']} / {w['-x']} / {w['centre']} |")
    lines += ["", "![end-effector paths, top view, coloured by grasp side](paths.png)"]
    return "\n".join(lines) + "\n"


def paths_figure(summary: dict[str, Any]):
    """One top-view panel per arm: end-effector paths (x, y) coloured by grasp side; o = success, x = failure at
    the path's end; the picked object's start as a black square."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = summary["arms"]
    fig, axes = plt.subplots(1, len(arms), figsize=(3.6 * len(arms), 4.6), sharex=True, sharey=True, squeeze=False)
    for ax, arm in zip(axes[0], arms, strict=True):
        for record in arm["records"]:
            path = record["path"]
            if not path or not path["eef"]:
                continue
            eef, color = np.asarray(path["eef"]), SIDE_COLORS[record["side"]]
            ax.plot(eef[:, 0], eef[:, 1], color=color, lw=1, alpha=0.8)
            ax.plot(*eef[-1, :2], "o" if record["success"] else "x", color=color, ms=4)
            ax.plot(*np.asarray(path["object"])[0, :2], "s", color="black", ms=3)
        ax.set_title(f"{arm['name']}: {arm['successes']}/{arm['trials']} success", fontsize=9)
        ax.set_xlabel("x (m)")
        ax.set_aspect("equal", adjustable="box")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("y (m)")
    handles = [plt.Line2D([], [], color=c, label=s) for s, c in SIDE_COLORS.items()]
    fig.suptitle("End-effector paths (top view), coloured by the side the gripper first closed on; "
                 "o success, x failure, squares: the bowl at the start", fontsize=10)
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.95), ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.88))
    return fig


def parse_config(argv: list[str]) -> MultimodalConfig:
    """`--config file.yaml` plus any field on the command line (e.g. `--eval.num_trials 2`)."""
    from jsonargparse import auto_cli, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    return auto_cli(MultimodalConfig, args=argv, as_positional=False, prog="python -m rsd_pl multimodal")


def main(argv: list[str]) -> int:
    cfg = parse_config(argv)
    runs = check(cfg)
    with output_lock(cfg.out, "multimodal"):
        return _main(cfg, runs)


def _main(cfg: MultimodalConfig, runs: list[EvalConfig]) -> int:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    experts = run_expert_controls(cfg) if cfg.expert_sides else []
    session = EvalSession.open(runs[0], modes=[arm.mode for arm in cfg.arms])
    for arm, run in zip(cfg.arms, runs, strict=True):
        print(f"multimodal: arm {arm.name} ({arm.mode} {arm.decoding}) -> {run.out}", flush=True)
        session.run(run)
    summary = summarise(cfg, runs, experts)
    fig = paths_figure(summary)
    fig.savefig(out / "paths.png", dpi=130, bbox_inches="tight")
    atomic_write(out / "report.json", json.dumps(summary))
    text = markdown(summary, cfg)
    atomic_write(out / "report.md", text)
    print(text + f"\nwritten: {out / 'report.md'}, {out / 'paths.png'}")
    return 0
