"""`python -m rsd_pl benchmark-table`: one suite's benchmark, every observation setting side by side.

Reads `<root>/<setting>/eval/report.json` (written by `eval`, one per observation setting, e.g.
`runs/benchmark/libero_spatial/{privileged,images}`) and writes `<root>/benchmark.md`,
`<root>/benchmark.json` and `<root>/benchmark.png`: success per mode and setting with Wilson 95%
intervals, the paired difference from `ar` (Newcombe interval, McNemar p), p50 chunk latency, the
speed of `speculative` against each baseline measured in the same run (bootstrap intervals), and
success per task: every figure of a setting is its own report's. One section is computed here: the
first setting against each other one, mode by mode, on the episodes both ran (same task and trial, so the same
init state), from the settings' `episodes.jsonl` (Newcombe interval, exact McNemar p).

Imports: eval.episode_log, eval.report, eval.stats, eval.plots (no models, no LIBERO: it reads run folders).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from rsd_pl.durable import atomic_write
from rsd_pl.errors import RsdError
from rsd_pl.eval.episode_log import read_episodes
from rsd_pl.eval.plots import DPI, mode_color
from rsd_pl.eval.report import _fmt, _p_value, _points, _rate_ci
from rsd_pl.eval.stats import paired_success_test, succeeded

SETTING_ORDER = ("privileged", "images")
"""Settings written by scripts/benchmark.sh, listed first in this order; other folders follow by name."""


def load_settings(root: Path) -> dict[str, dict[str, Any]]:
    """setting name -> its report.json, for every `<root>/<setting>/eval/report.json`."""
    if not root.is_dir():
        raise RsdError(f"{root}: no such folder (expected <root>/<setting>/eval/report.json)")
    found = {p.parent.parent.name: p for p in sorted(root.glob("*/eval/report.json"))}
    if not found:
        raise RsdError(f"{root}: no <setting>/eval/report.json below it: run the settings' eval first")
    names = [s for s in SETTING_ORDER if s in found] + sorted(set(found) - set(SETTING_ORDER))
    reports = {}
    for name in names:
        try:
            reports[name] = json.loads(found[name].read_text())
        except json.JSONDecodeError as error:
            raise RsdError(f"{found[name]}: not valid JSON ({error})") from error
        if "modes" not in reports[name] or "tasks" not in reports[name]:
            raise RsdError(f"{found[name]}: not an eval report (no 'modes' / 'tasks')")
    return reports


def _ci(row: dict[str, Any]) -> str:
    """'4/5 (38-96)': successes / trials with the Wilson 95% interval in percent."""
    low, high = row["success_ci"]
    return f"{row['successes']}/{row['trials']} ({_fmt(100 * low, '.0f')}-{_fmt(100 * high, '.0f')})"


def _num(value: float | None) -> float:
    """report.json holds NaN as null (`report._json_safe`); back to NaN for the formatters."""
    return math.nan if value is None else value


def _versus(report: dict[str, Any], mode: str) -> str:
    paired = report["paired"]
    if mode == paired["reference_mode"]:
        return "reference"
    test = paired["modes"].get(mode)
    if not test:
        return "-"
    return (f"{_points(_num(test['difference']))} ({_points(_num(test['ci_low']))} to "
            f"{_points(_num(test['ci_high']))}), p {_p_value(_num(test['p_value']))}")


def compare_settings(root: Path, names: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """{other setting: {mode: paired test of the first setting against it}} on the episodes both ran (same task and
    trial); empty when there is one setting."""
    def outcomes(name: str) -> dict[tuple[str, int, int, str], bool]:
        return {(r["suite"], int(r["task_id"]), int(r["trial"]), r["mode"]): succeeded(r)
                for r in read_episodes(root / name / "eval")}

    first = outcomes(names[0]) if len(names) > 1 else {}
    tests: dict[str, dict[str, dict[str, Any]]] = {}
    for other_name in names[1:]:
        other = outcomes(other_name)
        shared = sorted(set(first) & set(other))
        modes = list(dict.fromkeys(k[3] for k in first if k in other))  # the run's order (l1, parallel, ar, ...)
        tests[other_name] = {mode: paired_success_test([first[k] for k in shared if k[3] == mode],
                                                       [other[k] for k in shared if k[3] == mode]) for mode in modes}
    return tests


def markdown(suite: str, reports: dict[str, dict[str, Any]],
             settings_tests: dict[str, dict[str, dict[str, Any]]] | None = None) -> str:
    modes = list(dict.fromkeys(m for r in reports.values() for m in r["modes"]))
    lines = [f"# Benchmark: {suite}", "",
             "Each setting's model on the same held-out episodes in every mode. Success with Wilson 95% intervals; "
             "the difference from `ar` is paired on the same episodes (Newcombe 95% interval, exact McNemar p).", ""]
    for name, report in reports.items():
        lines.append(f"- **{name}**: {report['episodes']} episode runs; decoding: "
                     + "; ".join(f"{mode} = {m['decoding']}" for mode, m in report["modes"].items()
                                 if mode in ("ar_exit", "speculative")))
    lines += ["", "## Success per mode", "",
              "| mode | " + " | ".join(f"{n}: success (95% CI) | {n}: vs ar, points | {n}: p50 ms" for n in reports)
              + " |", "|---" * (1 + 3 * len(reports)) + "|"]
    for mode in modes:
        cells = []
        for report in reports.values():
            m = report["modes"].get(mode)
            cells += ([_rate_ci(m), _versus(report, mode), _fmt(m["latency_ms"]["p50"])] if m else ["-"] * 3)
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    baselines = list(dict.fromkeys(r["slow"] for rep in reports.values() for r in rep.get("speedups") or []))
    lines += ["", "## Speed of `speculative`, same run", "",
              "Chunk latency of the baseline / speculative's (p50), bootstrap 95% over episodes; above 1: "
              "speculative is faster.", "", "| setting | " + " | ".join(f"vs {s}" for s in baselines) + " |",
              "|---" * (1 + len(baselines)) + "|"]
    for name, report in reports.items():
        rows = {r["slow"]: r for r in report.get("speedups") or []}
        cells = [f"{_fmt(rows[s]['p50_latency_ratio'], '.2f')}x ({_fmt(rows[s]['p50_ci'][0], '.2f')}-"
                 f"{_fmt(rows[s]['p50_ci'][1], '.2f')})" if s in rows else "-" for s in baselines]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    first = next(iter(reports))
    for other, tests in (settings_tests or {}).items():
        lines += ["", f"## {first} against {other}, same episodes", "",
                  f"Success of {first} minus {other}, paired on the episodes both ran (same task and trial): "
                  "Newcombe 95% interval, exact McNemar p.", "", "| mode | episodes | difference, points | verdict |",
                  "|---|---|---|---|"]
        for mode, t in tests.items():
            lines.append(f"| {mode} | {t['episodes']} | {_points(t['difference'])} ({_points(t['ci_low'])} to "
                         f"{_points(t['ci_high'])}), p {_p_value(t['p_value'])} | {t['verdict']} |")
    for name, report in reports.items():
        lines += ["", f"## Per task: {name}", "", "successes / trials (Wilson 95% interval, %)", "",
                  "| task | " + " | ".join(modes) + " |", "|---" * (1 + len(modes)) + "|"]
        by_task: dict[int, dict[str, Any]] = {}
        for t in report["tasks"]:
            by_task.setdefault(t["task_id"], {"name": t["task_name"]})[t["mode"]] = t
        for task_id, row in sorted(by_task.items()):
            label = f"{task_id} {row['name'].replace('_', ' ')}"
            lines.append(f"| {label} | " + " | ".join(_ci(row[m]) if m in row else "-" for m in modes) + " |")
    lines += ["", "![success per mode and setting](benchmark.png)"]
    return "\n".join(lines) + "\n"


def figure(suite: str, reports: dict[str, dict[str, Any]]):
    """Success per mode (points with Wilson interval bars), one panel per setting."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.2 + 2.6 * len(reports), 3.4), layout="constrained")
    axes = fig.subplots(1, len(reports), sharey=True, squeeze=False)[0]
    for ax, (name, report) in zip(axes, reports.items(), strict=True):
        for i, (mode, m) in enumerate(report["modes"].items()):
            if not m["trials"]:
                continue
            rate, (low, high) = 100 * m["success_rate"], m["success_ci"]
            ax.errorbar([i], [rate], yerr=[[rate - 100 * low], [100 * high - rate]], fmt="o", capsize=4,
                        color=mode_color(mode))
            ax.annotate(f"{m['successes']}/{m['trials']}\n{_fmt(m['latency_ms']['p50'])} ms", (i, 100 * low),
                        textcoords="offset points", xytext=(0, -22), ha="center", fontsize=7)
        ax.set_xticks(range(len(report["modes"])), list(report["modes"]), rotation=30)
        ax.set_xlim(-0.6, len(report["modes"]) - 0.4)
        ax.set_title(f"{name}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("success (%), Wilson 95%")
    axes[0].set_ylim(-25, 105)  # room for the labels under low points
    axes[0].set_yticks(range(0, 101, 20))
    fig.suptitle(f"{suite}: success per mode (k/n, p50 chunk latency)", fontsize=11)
    return fig


def save_table(out: Path, text: str, data: dict[str, Any], fig) -> Path:
    """`out` (.md), its .json and .png, each replaced atomically (the tables of benchmark-table and suites-table)."""
    atomic_write(out, text)
    atomic_write(out.with_suffix(".json"), json.dumps(data, indent=2, default=float) + "\n")
    fig.savefig(out.with_suffix(".png"), dpi=DPI)
    return out


def table_main(argv: list[str], prog: str, doc: str, default_root: str, root_help: str, write) -> int:
    """The command of a table: `--root`, then `write(root)`; prints the markdown and the files written."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    parser.add_argument("--root", default=default_root, help=root_help)
    out = write(Path(parser.parse_args(argv).root))
    print(out.read_text())
    print(f"wrote {out}, {out.with_suffix('.json')}, {out.with_suffix('.png')}")
    return 0


def write(root: Path) -> Path:
    reports = load_settings(root)
    suite = root.name
    tests = compare_settings(root, list(reports))
    return save_table(root / "benchmark.md", markdown(suite, reports, tests),
                      {"suite": suite, "settings": reports, "settings_compared": tests}, figure(suite, reports))


def main(argv: list[str]) -> int:
    return table_main(argv, "python -m rsd_pl benchmark-table", __doc__, "runs/benchmark/libero_spatial",
                      "a suite's benchmark folder holding <setting>/eval/report.json", write)
