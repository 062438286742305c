"""`python -m rsd_pl suites-table`: the users' table, all LIBERO suites side by side, as the papers print it.

Reads `<root>/<suite>/eval/episodes.jsonl` (written by `eval`, one folder per suite, e.g. by
`scripts/four_suites.sh`) and, where present, `<root>/<suite>/pro/episodes.jsonl` (the same model on
LIBERO-PRO's perturbed suites) and `<root>/<suite>/replay/episodes.jsonl` (the blind floor of `rsd_pl replay`, a
row like a mode's). Writes `<root>/suites.md`, `<root>/suites.json` and `<root>/suites.png` (and `suites_pro.png`):

- success per suite and mode (successes / trials, Wilson 95% interval) and the average over the suites
  (the mean of the suites' rates, as the papers average; its interval is the Wilson interval at that mean's
  effective sample size, `stats.mean_rate_interval`: the pooled counts' interval when every suite ran as many
  trials, and centred on the mean when a suite ran fewer);
- each mode against `ar` on the episodes both ran (same suite, task and trial: Newcombe 95% interval,
  exact McNemar p), per suite and pooled; and against the regression baseline `l1`, which with `ar` and `ar_exit`
  runs all 50 init states, so the token modes meet the baseline on 500 episodes per suite;
- p50 chunk latency per suite and mode, and the speed of `speculative` against `ar_exit` measured in the
  same run (p50 latency ratio with its bootstrap 95% interval, episodes resampled in pairs);
- per-task tables; the published OpenVLA-OFT row for reference (not measured here);
- LIBERO-PRO: clean against perturbed success per perturbation, paired on the same task and trial index (LIBERO-PRO
  samples its own init states, so the placements differ; the blind replay's rows, where run, show their effect).

Every figure is computed from the episode logs with the report's own functions (`rsd_pl.eval.report`,
`rsd_pl.eval.stats`), so a suite's row equals its own `report.md`.

Imports: eval.benchmark_table (its writers), eval.episode_log, eval.report, eval.stats, eval.plots (no models, no
LIBERO: it reads run folders).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rsd_pl.envs.suites import PARAPHRASE, PRO_PERTURBATIONS
from rsd_pl.errors import RsdError
from rsd_pl.eval.benchmark_table import DPI, save_table, table_main
from rsd_pl.eval.episode_log import read_episodes
from rsd_pl.eval.plots import mode_color
from rsd_pl.eval.report import _fmt, _p_value, _points, build_report
from rsd_pl.eval.stats import mean_rate_interval, paired_success_test, succeeded, wilson_interval

SUITE_ORDER = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
OFT_PUBLISHED = {"libero_spatial": 97.6, "libero_object": 98.4, "libero_goal": 97.9, "libero_10": 94.5,
                 "average": 97.1}
"""OpenVLA-OFT's published success (%), 500 episodes per suite (Kim et al. 2025, Table I): for reference only."""
ALL_SUITES = "all suites"
"""The suite of the pooled LIBERO-PRO rows: every suite's pairs of one perturbation and mode together."""
PERTURBATIONS = ("lan", PARAPHRASE, *(p for p in PRO_PERTURBATIONS if p != "lan"))  # lan and its control first
REPLAY_NOTE = (" `replay`: the blind floor, one training demo per task replayed open loop from the same init states "
               "without looking (`python -m rsd_pl replay`).")


def load_suites(root: Path) -> dict[str, list[dict[str, Any]]]:
    """suite -> its clean evaluation's records, for every `<root>/<suite>/eval/episodes.jsonl`, papers' order."""
    if not root.is_dir():
        raise RsdError(f"{root}: no such folder (expected <root>/<suite>/eval/episodes.jsonl)")
    found = {p.parent.parent.name: p.parent for p in sorted(root.glob("*/eval/episodes.jsonl"))}
    if not found:
        raise RsdError(f"{root}: no <suite>/eval/episodes.jsonl below it: run the suites' eval first")
    names = [s for s in SUITE_ORDER if s in found] + sorted(set(found) - set(SUITE_ORDER))
    out = {}
    for name in names:
        records = [r for r in read_episodes(found[name]) if r["suite"] == name]
        if not records:
            raise RsdError(f"{found[name]}/episodes.jsonl: no episode of suite {name} (the folder is named after it)")
        records += [r for r in _replays(root, name) if r["suite"] == name]  # the blind floor: a row like a mode's
        out[name] = records
    return out


def _replays(root: Path, suite: str) -> list[dict[str, Any]]:
    """The `replay` episodes in `<root>/<suite>/replay` (the suite's and its LIBERO-PRO suites'), [] if none."""
    folder = root / suite / "replay"
    if not (folder / "episodes.jsonl").is_file():
        return []
    return [r for r in read_episodes(folder) if r["mode"] == "replay"]


def _key(record: dict[str, Any]) -> tuple[str, int, int]:
    return record["suite"], int(record["task_id"]), int(record["trial"])


def _rate(successes: int, trials: int) -> dict[str, Any]:
    low, high = wilson_interval(successes, trials)
    return {"successes": successes, "trials": trials, "rate": successes / trials if trials else float("nan"),
            "ci": [low, high]}


def _paired(records: list[dict[str, Any]], mode: str, reference: str = "ar") -> dict[str, Any] | None:
    """`mode` against `reference` on the episodes both ran (same suite, task, trial)."""
    ours = {_key(r): succeeded(r) for r in records if r["mode"] == mode}
    theirs = {_key(r): succeeded(r) for r in records if r["mode"] == reference}
    shared = sorted(set(ours) & set(theirs))
    if mode == reference or not shared:
        return None
    return paired_success_test([ours[k] for k in shared], [theirs[k] for k in shared])


def build(root: Path) -> dict[str, Any]:
    suites = load_suites(root)
    modes = list(dict.fromkeys(r["mode"] for records in suites.values() for r in records))
    table: dict[str, Any] = {"suites": {}, "average": {}, "modes": modes}
    everything: list[dict[str, Any]] = []
    for suite, records in suites.items():
        report = build_report(records)
        everything += records
        speed = {r["slow"]: r for r in report.get("speedups") or []}.get("ar_exit")
        table["suites"][suite] = {
            "modes": {mode: {**_rate(m["successes"], m["trials"]), "p50_ms": m["latency_ms"]["p50"],
                             "vs_ar": _paired(records, mode), "vs_l1": _paired(records, mode, "l1")}
                      for mode, m in report["modes"].items()},
            "speculative_over_ar_exit": None if speed is None else
            {"p50_ratio": speed["p50_latency_ratio"], "ci": speed["p50_ci"], "episodes": speed.get("episodes")},
            "tasks": report["tasks"],
        }
    for mode in modes:
        rows = [s["modes"][mode] for s in table["suites"].values() if mode in s["modes"]]
        rate, low, high = mean_rate_interval([(r["successes"], r["trials"]) for r in rows])
        table["average"][mode] = {"successes": sum(r["successes"] for r in rows),
                                  "trials": sum(r["trials"] for r in rows), "rate": rate, "ci": [low, high],
                                  "suites": len(rows), "vs_ar": _paired(everything, mode),
                                  "vs_l1": _paired(everything, mode, "l1")}
    table["pro"] = pro_comparison(root, suites)
    return table


def pro_comparison(root: Path, suites: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Clean against each LIBERO-PRO perturbation, per suite and mode, paired on the same task and trial; then, for
    a perturbation and mode that two or more suites ran, an `all suites` row over their pairs pooled."""
    rows = []
    pooled: dict[tuple[str, str], list[tuple[bool, bool]]] = {}
    for suite, clean_records in suites.items():
        folder = root / suite / "pro"
        if not (folder / "episodes.jsonl").is_file():
            continue
        evaluated = read_episodes(folder)
        replayed = [r for r in _replays(root, suite) if r["suite"] != suite]  # the blind floor at PRO's placements
        perturbed = evaluated + replayed
        clean = {(int(r["task_id"]), int(r["trial"]), r["mode"]): succeeded(r) for r in clean_records}
        # The plan of each step, read from its own log: every clean task on every trial that the step reached in any
        # perturbation. A row with fewer paired episodes is a run still under way, and says so.
        reached = {"eval": {int(r["trial"]) for r in evaluated}, "replay": {int(r["trial"]) for r in replayed}}
        for perturbation in PERTURBATIONS:
            name = f"{suite}_{perturbation}"
            mine = {(int(r["task_id"]), int(r["trial"]), r["mode"]): succeeded(r) for r in perturbed
                    if r["suite"] == name}
            for mode in dict.fromkeys(k[2] for k in mine):
                shared = sorted(k for k in mine if k[2] == mode and k in clean)
                if not shared:
                    continue
                test = paired_success_test([mine[k] for k in shared], [clean[k] for k in shared])
                trials = reached["replay" if mode == "replay" else "eval"]
                planned = sum(1 for k in clean if k[2] == mode and k[1] in trials)
                rows.append({"suite": suite, "perturbation": perturbation, "mode": mode, "planned": planned,
                             "clean": _rate(sum(clean[k] for k in shared), len(shared)),
                             "perturbed": _rate(sum(mine[k] for k in shared), len(shared)), "vs_clean": test})
                pooled.setdefault((perturbation, mode), []).extend((mine[k], clean[k]) for k in shared)
    for perturbation in PERTURBATIONS:
        for mode in dict.fromkeys(row["mode"] for row in rows):
            mine = [row for row in rows if row["perturbation"] == perturbation and row["mode"] == mode]
            if len(mine) < 2:
                continue
            pairs = pooled[perturbation, mode]
            rows.append({"suite": ALL_SUITES, "perturbation": perturbation, "mode": mode,
                         "planned": sum(row["planned"] for row in mine),
                         "clean": _rate(sum(c for _, c in pairs), len(pairs)),
                         "perturbed": _rate(sum(p for p, _ in pairs), len(pairs)),
                         "vs_clean": paired_success_test([p for p, _ in pairs], [c for _, c in pairs])})
    return rows


def _cell(row: dict[str, Any]) -> str:
    low, high = row["ci"]
    return f"{_fmt(100 * row['rate'])} ({_fmt(100 * low, '.0f')}-{_fmt(100 * high, '.0f')}) [{row['trials']}]"


def _versus(test: dict[str, Any] | None) -> str:
    if test is None:
        return "-"
    return (f"{_points(test['difference'])} ({_points(test['ci_low'])} to {_points(test['ci_high'])}), "
            f"p {_p_value(test['p_value'])}, {test['episodes']} ep.")


def markdown(table: dict[str, Any]) -> str:
    suites, modes = list(table["suites"]), table["modes"]
    lines = ["# LIBERO: all suites", "",
             "Success (%) with the Wilson 95% interval and [episodes]. Average: the mean of the suites' rates (the "
             "papers' average); its interval is the Wilson interval at the mean's effective sample size (the "
             "pooled counts' when every suite ran as many episodes). OpenVLA-OFT: published, not measured here."
             + (REPLAY_NOTE if "replay" in modes else ""), "",
             "| mode | " + " | ".join(suites) + " | average |", "|---" * (2 + len(suites)) + "|"]
    for mode in modes:
        cells = [_cell(table["suites"][s]["modes"][mode]) if mode in table["suites"][s]["modes"] else "-"
                 for s in suites]
        lines.append(f"| {mode} | " + " | ".join(cells) + f" | {_cell(table['average'][mode])} |")
    lines.append("| OpenVLA-OFT (published) | " + " | ".join(f"{OFT_PUBLISHED[s]:.1f}" if s in OFT_PUBLISHED else "-"
                                                         for s in suites) + f" | {OFT_PUBLISHED['average']:.1f} |")
    for reference, why in (("ar", ""), ("l1", " (the regression baseline, run on every episode)")):
        key = f"vs_{reference}"
        lines += ["", f"## Against `{reference}`, same episodes{why}", "",
                  "Difference in success (points), Newcombe 95% interval, exact McNemar p, paired episodes.", "",
                  "| mode | " + " | ".join(suites) + " | all suites |", "|---" * (2 + len(suites)) + "|"]
        for mode in modes:
            if mode == reference:
                continue
            cells = [_versus(table["suites"][s]["modes"].get(mode, {}).get(key)) for s in suites]
            lines.append(f"| {mode} | " + " | ".join(cells) + f" | {_versus(table['average'][mode].get(key))} |")
    lines += ["", "## Latency and speed", "",
              "p50 chunk latency (ms) per suite; `speculative` vs `ar_exit`: ar_exit's p50 latency / speculative's, "
              "measured in the same run (bootstrap 95%); above 1: speculative is faster.", "",
              "| suite | " + " | ".join(f"{m} p50 ms" for m in modes) + " | speculative vs ar_exit |",
              "|---" * (2 + len(modes)) + "|"]
    for suite in suites:
        s = table["suites"][suite]
        speed = s["speculative_over_ar_exit"]
        ratio = "-" if speed is None else (f"{_fmt(speed['p50_ratio'], '.2f')}x ({_fmt(speed['ci'][0], '.2f')}-"
                                           f"{_fmt(speed['ci'][1], '.2f')})")
        lines.append(f"| {suite} | " + " | ".join(_fmt(s["modes"][m]["p50_ms"]) if m in s["modes"] else "-"
                                                  for m in modes) + f" | {ratio} |")
    if table["pro"]:
        lines += ["", "## LIBERO-PRO: clean against perturbed", "",
                  "The same model on LIBERO-PRO's perturbation of each suite, paired with the clean run on the same "
                  "task and trial index (Newcombe 95% interval, exact McNemar p). lan: paraphrased instruction; "
                  "object: object appearance; swap: object positions swapped; task: another task in the scene. "
                  "LIBERO-PRO ships its own init states, so trial k of a perturbed suite places the objects anew "
                  "(1.5-3 cm from clean trial k for lan and object): a difference mixes the perturbation with new "
                  "placements. paraphrase: lan's words in the clean scene at the clean init states, so trial k is "
                  "clean trial k with only the words changed. The `replay` rows (the blind floor, which ignores the "
                  "instruction) show what the new placements alone do to a policy that does not look. `all suites`: "
                  "the pairs of every suite that ran the perturbation in that mode, pooled (a mean over the pairs, so "
                  "a suite weighs by its episodes). A row marked partial has not yet run every task on the trials the "
                  "step runs.", "",
                  "| suite | perturbation | mode | clean | perturbed | difference |", "|---|---|---|---|---|---|"]
        for row in table["pro"]:
            done, planned = row["perturbed"]["trials"], row["planned"]
            partial = f" (partial: {done} of {planned})" if done < planned else ""
            lines.append(f"| {row['suite']} | {row['perturbation']}{partial} | {row['mode']} | {_cell(row['clean'])} | "
                         f"{_cell(row['perturbed'])} | {_versus(row['vs_clean'])} |")
    for suite in suites:
        lines += ["", f"## Per task: {suite}", "", "successes / trials", "",
                  "| task | " + " | ".join(modes) + " |", "|---" * (1 + len(modes)) + "|"]
        by_task: dict[int, dict[str, Any]] = {}
        for t in table["suites"][suite]["tasks"]:
            by_task.setdefault(t["task_id"], {"name": t["task_name"]})[t["mode"]] = t
        for task_id, row in sorted(by_task.items()):
            cells = [f"{row[m]['successes']}/{row[m]['trials']}" if m in row else "-" for m in modes]
            lines.append(f"| {task_id} {row['name'].replace('_', ' ')} | " + " | ".join(cells) + " |")
    lines += ["", "![success per suite and mode](suites.png)"]
    if table["pro"]:
        lines += ["", "![LIBERO-PRO: clean against perturbed](suites_pro.png)"]
    return "\n".join(lines) + "\n"


def figure(table: dict[str, Any]):
    """Success per suite (groups) and mode (points with Wilson bars), the average last."""
    from matplotlib.figure import Figure

    groups = [*table["suites"], "average"]
    modes = table["modes"]
    fig = Figure(figsize=(3.6 + 1.6 * len(groups), 3.6), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(len(modes), 1)
    for j, mode in enumerate(modes):
        for i, group in enumerate(groups):
            row = table["average"][mode] if group == "average" else table["suites"][group]["modes"].get(mode)
            if row is None or not row["trials"]:
                continue
            x, rate = i - 0.4 + width * (j + 0.5), 100 * row["rate"]
            low, high = 100 * row["ci"][0], 100 * row["ci"][1]
            ax.errorbar([x], [rate], yerr=[[max(rate - low, 0)], [max(high - rate, 0)]], fmt="o", capsize=3,
                        color=mode_color(mode), label=mode if i == 0 else None)
    for i, group in enumerate(groups):
        if group in OFT_PUBLISHED:
            ax.hlines(OFT_PUBLISHED[group], i - 0.45, i + 0.45, colors="grey", linestyles="dashed",
                      label="OpenVLA-OFT (published)" if i == 0 else None)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("success (%), Wilson 95%")
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: never over a point
    fig.suptitle("LIBERO: success per suite and mode", fontsize=11)
    return fig


def pro_figure(table: dict[str, Any]):
    """LIBERO-PRO: one panel per suite; per perturbation and mode, the clean success (hollow) joined to the perturbed
    one (filled, Wilson bar) on the same paired episodes."""
    from matplotlib.figure import Figure

    suites = list(dict.fromkeys(row["suite"] for row in table["pro"]))
    modes = [m for m in table["modes"] if any(row["mode"] == m for row in table["pro"])]
    fig = Figure(figsize=(2.0 + 3.4 * len(suites), 3.6), layout="constrained")
    axes = fig.subplots(1, len(suites), squeeze=False, sharey=True)[0]
    width = 0.8 / max(len(modes), 1)
    for ax, suite in zip(axes, suites, strict=True):
        rows = [row for row in table["pro"] if row["suite"] == suite]
        perturbations = [p for p in PERTURBATIONS if any(row["perturbation"] == p for row in rows)]
        for row in rows:
            i, j = perturbations.index(row["perturbation"]), modes.index(row["mode"])
            x = i - 0.4 + width * (j + 0.5)
            clean, perturbed = 100 * row["clean"]["rate"], 100 * row["perturbed"]["rate"]
            low, high = 100 * row["perturbed"]["ci"][0], 100 * row["perturbed"]["ci"][1]
            color = mode_color(row["mode"])
            ax.plot([x, x], [clean, perturbed], color=color, alpha=0.5, linewidth=1)
            ax.plot([x], [clean], "o", mfc="none", color=color)
            ax.errorbar([x], [perturbed], yerr=[[max(perturbed - low, 0)], [max(high - perturbed, 0)]], fmt="o",
                        capsize=2, color=color, label=row["mode"] if i == 0 else None)
        ax.set_xticks(range(len(perturbations)), perturbations)
        ax.set_title(suite, fontsize=10)
        ax.set_ylim(0, 105)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("success (%): clean (hollow) -> perturbed")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("LIBERO-PRO: clean against perturbed, same task and trial index", fontsize=11)
    return fig


def write(root: Path) -> Path:
    """suites.md/.json/.png, and suites_pro.png where a suite ran LIBERO-PRO."""
    table = build(root)
    out = save_table(root / "suites.md", markdown(table), table, figure(table))
    if table["pro"]:
        pro_figure(table).savefig(root / "suites_pro.png", dpi=DPI)
    return out


def main(argv: list[str]) -> int:
    return table_main(argv, "python -m rsd_pl suites-table", __doc__, "runs/four_suites",
                      "folder holding <suite>/eval/episodes.jsonl (and <suite>/pro/episodes.jsonl)", write)
