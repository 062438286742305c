"""`python -m rsd_pl sweep`: one resumable evaluation over a grid of decoding settings on the same episodes.

The grid (e.g. tau x draft_len x exit_bound) expands to points; each point runs `modes` through `EvalSession.run`
into `<out>/<point name>` (e.g. `tau0.05_draft_len1-7_exit_bound0.05`); `baseline_modes` run once, with the base
decoding settings, into `<out>/baseline`. A mode runs once per distinct setting of the keys it reads
(`MODE_KEYS`): in a tau x exit_bound grid ar_exit runs once per exit_bound, in the first point that has it.
All runs share suites, tasks, trials and seed (the same episodes in every row); each resumes on its own.
Checked before the models load: grid keys and values, modes, every point's DecodingConfig and EvalConfig,
and that episodes already logged in a run folder were decoded with the same settings.

Output: `<out>/sweep.json` and `<out>/sweep.md`, one row per (setting, mode): success with its Wilson 95%
interval, p50 / mean chunk latency, main forwards per chunk, mean action deviation where the episode records
carry `deviation_mean` (0 for eval.deviation_reference's own greedy row), latency ratio to the `ar` baseline,
not-dominated flag; `<out>/plots/sweep_tradeoff.png`.

Imports: eval.session, eval.config, eval.episodes, eval.report, eval.sweep_plot.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rsd_pl.decoding.config import MODES, DecodingConfig
from rsd_pl.durable import atomic_write
from rsd_pl.errors import RsdError
from rsd_pl.eval.config import EvalConfig, decoding_for, validate_config
from rsd_pl.eval.episodes import episode_list, output_lock
from rsd_pl.eval.plots import DPI
from rsd_pl.eval.report import _json_safe, episode_key, mode_summary, read_episodes
from rsd_pl.eval.session import EvalSession, quiet_library_notices
from rsd_pl.eval.sweep_plot import _finite, tradeoff_figure

GRID_KEYS = ("tau", "draft_len", "exit_bound", "early_exit_bound", "temperature", "acceptance", "draft_source")
NUMBER_KEYS = ("tau", "exit_bound", "early_exit_bound", "temperature")
MODE_KEYS: dict[str, tuple[str, ...]] = {
    "oft": (), "l1": (), "parallel": ("temperature",), "ar": ("temperature",),
    "ar_exit": ("temperature", "exit_bound"),
    "speculative": ("acceptance", "tau", "draft_len", "temperature", "early_exit_bound", "draft_source"),
}
"""The decoding keys each mode reads (rsd_pl.decoding.engine); tau only under relaxed acceptance."""
SHORT = {"tau": "tau ", "draft_len": "k ", "exit_bound": "exit ", "early_exit_bound": "early exit ",
         "temperature": "T ", "acceptance": "", "draft_source": "draft "}  # plot labels: 'tau 0.05, k 1-7'
BASELINE = "baseline"
PLOT = "plots/sweep_tradeoff.png"


@dataclass
class SweepConfig:
    """A grid of decoding settings evaluated on the same LIBERO episodes."""

    eval: EvalConfig = field(default_factory=EvalConfig)
    """The base evaluation (registry, main, draft, suites, tasks, num_trials, seed, camera_size, decoding, ...);
    its modes, reference_mode and out are replaced per run."""
    grid: dict[str, list] = field(default_factory=dict)
    """Decoding key -> values; the points are all combinations. Keys: tau, draft_len, exit_bound,
    early_exit_bound, temperature, acceptance, draft_source."""
    points: list[dict[str, Any]] = field(default_factory=list)
    """Extra points after the grid's, each a dict of the same keys (variants no product grid gives, e.g.
    {draft_source: parallel, acceptance: exact, early_exit_bound: 0.05})."""
    modes: list[str] = field(default_factory=lambda: ["speculative", "ar_exit"])
    """The modes every grid point runs (each once per distinct setting of the keys it reads)."""
    baseline_modes: list[str] = field(default_factory=lambda: ["ar", "parallel"])
    """Modes run once with eval.decoding, into <out>/baseline; `ar` gives the latency ratio column."""
    out: str = "runs/sweep"
    """Output folder: one eval run folder per point, baseline/, sweep.json, sweep.md, plots/."""


@dataclass
class Run:
    """One evaluation run (`EvalSession.run`): a grid point's new (mode, setting) pairs, or the baselines."""

    title: str  # 'point 3/18' or 'baseline'
    point: dict[str, Any]
    cfg: EvalConfig | None  # None when every mode of the point already ran in an earlier run
    earlier: dict[str, str] = field(default_factory=dict)  # mode -> title of the earlier run that has its setting


def value_text(value: Any) -> str:
    """0.05 -> '0.05', [1, 7] -> '1-7', None -> 'none'."""
    if isinstance(value, list | tuple):
        return "-".join(value_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return "none" if value is None else str(value)


def point_name(point: dict[str, Any]) -> str:
    """{'tau': 0.05, 'draft_len': [1, 7]} -> 'tau0.05_draft_len1-7' (the run folder)."""
    return "_".join(f"{key}{value_text(value)}" for key, value in point.items())


def expand_grid(grid: dict[str, list]) -> list[dict[str, Any]]:
    """All combinations, the last key varying fastest."""
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def settings_of(decoding: DecodingConfig) -> dict[str, Any]:
    """The values of the keys decoding.mode reads (all keys for a mode missing from MODE_KEYS)."""
    keys = MODE_KEYS.get(decoding.mode, GRID_KEYS)
    if decoding.mode == "speculative" and decoding.acceptance != "relaxed":
        keys = tuple(k for k in keys if k != "tau")
    return {k: decoding.draft_lengths if k == "draft_len" else getattr(decoding, k) for k in keys}


def _check_names(cfg: SweepConfig) -> None:
    for what, modes in (("modes", cfg.modes), ("baseline_modes", cfg.baseline_modes)):
        unknown = [m for m in modes if m not in MODES]
        if problem := (f"unknown mode {unknown[0]!r}" if unknown else "a mode is listed twice"
                       if len(set(modes)) != len(modes) else "empty" if what == "modes" and not modes else ""):
            raise RsdError(f"{what}={modes}: {problem}; {what} are distinct modes of {MODES}")
    if not cfg.grid and not cfg.points:
        raise RsdError(f"grid and points are empty: give at least one of {GRID_KEYS} with its values")
    for index, point in enumerate(cfg.points, start=1):
        if not isinstance(point, dict) or not point:
            raise RsdError(f"points[{index}]={point!r}: must be a non-empty mapping of {GRID_KEYS} to one value each")
        if unknown := [k for k in point if k not in GRID_KEYS]:
            raise RsdError(f"points[{index}]: key {unknown[0]!r} is not a decoding key the sweep varies: {GRID_KEYS}")
    for key, values in cfg.grid.items():
        if key not in GRID_KEYS:
            raise RsdError(f"grid key {key!r} is not a decoding key the sweep varies: {GRID_KEYS}")
        if not isinstance(values, list) or not values:
            raise RsdError(f"grid.{key}={values!r}: must be a non-empty list of values")
        if len({value_text(v) for v in values}) != len(values):
            raise RsdError(f"grid.{key}={values}: a value is listed twice")
        for value in (v for v in values if key in NUMBER_KEYS and not (v is None and key == "early_exit_bound")):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise RsdError(f"grid.{key}: {value!r} is not a number")


def _run_cfg(cfg: SweepConfig, name: str, modes: list[str], decoding: DecodingConfig) -> EvalConfig:
    reference = cfg.eval.reference_mode if cfg.eval.reference_mode in modes else modes[0]
    run = dataclasses.replace(cfg.eval, out=str(Path(cfg.out) / name), modes=modes, reference_mode=reference,
                              decoding=decoding)
    validate_config(run)  # e.g. speculative without a draft
    return run


def plan(cfg: SweepConfig) -> list[Run]:
    """The baseline run and one run per grid point, all configs built and validated (no registry, no LIBERO).
    RsdError naming the bad key, value, mode or point."""
    _check_names(cfg)
    done: dict[str, str] = {}  # json of (mode, settings) -> title of the run that has it
    runs = []
    if cfg.baseline_modes:
        runs.append(Run(BASELINE, {}, _run_cfg(cfg, BASELINE, cfg.baseline_modes, cfg.eval.decoding)))
        for mode in cfg.baseline_modes:
            done[json.dumps([mode, settings_of(decoding_for(cfg.eval, mode))])] = BASELINE
    grid_points = expand_grid(cfg.grid) if cfg.grid else []
    points, used = grid_points + [dict(p) for p in cfg.points], set()
    for index, point in enumerate(points, start=1):
        title, name = f"point {index}/{len(points)}", point_name(point)
        try:
            decoding = dataclasses.replace(cfg.eval.decoding, **point)
            per_mode = {m: settings_of(decoding_for(dataclasses.replace(cfg.eval, decoding=decoding), m))
                        for m in cfg.modes}
        except RsdError as error:
            raise RsdError(f"sweep {title} ({name}): {error}") from error
        if index <= len(grid_points):
            used |= {k for settings in per_mode.values() for k in settings}
        owner = {m: done.setdefault(json.dumps([m, settings]), title) for m, settings in per_mode.items()}
        new = [m for m in cfg.modes if owner[m] == title]
        runs.append(Run(title, point, _run_cfg(cfg, name, new, decoding) if new else None,
                        {m: earlier for m, earlier in owner.items() if earlier != title}))
    if unused := [k for k in cfg.grid if k not in used]:
        raise RsdError(f"grid key {unused[0]!r} changes none of modes={cfg.modes} (with acceptance="
                       f"{cfg.eval.decoding.acceptance!r}); remove it or add a mode that reads it")
    reference = cfg.eval.deviation_reference
    if reference and (shared := [k for k in cfg.grid if k in settings_of(decoding_for(cfg.eval, reference))]):
        print(f"sweep: WARNING: the grid varies {shared}, which the deviation reference {reference} reads: each "
              f"point's deviations are measured from its own {reference}")
    return runs


def check_logged_settings(run: Run) -> None:
    """RsdError when episodes already in the run folder were decoded with other settings (a resumed sweep
    whose base decoding changed: its folder names would not show it)."""
    for record in read_episodes(run.cfg.out):
        logged, mode = record.get("decoding") or {}, record["mode"]
        if not logged or mode not in run.cfg.modes:
            continue
        expected = settings_of(decoding_for(run.cfg, mode))
        found = {k: logged.get(k) for k in expected}
        if isinstance(found.get("draft_len"), int):
            found["draft_len"] = [found["draft_len"]]
        if found != expected:
            raise RsdError(f"{run.cfg.out}: {mode} episodes there were decoded with {found}, this sweep runs "
                           f"{expected}: use another out, or remove that folder to redo it")


# --- aggregation ----------------------------------------------------------------------------------


def summary_row(run: Run, mode: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row: the (setting, mode)'s success, latency, forwards and deviation."""
    summary = mode_summary(records)
    varied = {k: v for k, v in run.point.items() if k in settings_of(decoding_for(run.cfg, mode))}
    deviation = summary["deviation_mean"]  # mean over the episodes that carry one
    if records and not _finite(deviation) and mode == run.cfg.deviation_reference and \
            decoding_for(run.cfg, mode).greedy:
        deviation = 0.0  # the reference itself
    return {"setting": " ".join([mode, *(f"{k}={v}" for k, v in varied.items())]) + (
                " (baseline)" if run.title == BASELINE else ""),
            "label": ", ".join(f"{SHORT[k]}{value_text(v)}" for k, v in varied.items()) or mode,
            "mode": mode, "run": Path(run.cfg.out).name, "baseline": run.title == BASELINE, "point": varied,
            **{k: summary[k] for k in ("successes", "trials", "errors", "success_rate", "success_ci", "chunks",
                                       "main_forwards_per_chunk")},
            "latency_p50_ms": summary["latency_ms"]["p50"], "latency_mean_ms": summary["latency_ms"]["mean"],
            "deviation_mean": deviation}


def collect_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """Rows of every run's modes, on the episodes of the sweep's config only, with the ratio to ar and the
    Pareto flag."""
    rows = []
    for run in runs:
        if run.cfg is None:
            continue
        expected = {episode_key({**item, "mode": m}) for item in episode_list(run.cfg) for m in item["modes"]}
        records = [r for r in read_episodes(run.cfg.out) if episode_key(r) in expected]
        rows += [summary_row(run, mode, [r for r in records if r["mode"] == mode]) for mode in run.cfg.modes]
    ar = next((r for r in rows if r["baseline"] and r["mode"] == "ar"), None)
    for row in rows:
        for stat in ("p50", "mean"):
            slow, fast = (ar or {}).get(f"latency_{stat}_ms", math.nan), row[f"latency_{stat}_ms"]
            row[f"speedup_vs_ar_{stat}"] = slow / fast if _finite(slow) and _finite(fast) and fast else math.nan
    for row, flag in zip(rows, non_dominated(rows), strict=True):
        row["non_dominated"] = flag
    return sorted(rows, key=lambda r: (not r["baseline"], MODES.index(r["mode"])))  # stable: grid order per mode


def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """a is at least as good as b on p50 latency (lower), success rate (higher) and deviation (lower, compared
    only when both carry one), and better on one of them."""
    pairs = [(b["latency_p50_ms"], a["latency_p50_ms"]), (a["success_rate"], b["success_rate"])]
    if _finite(a["deviation_mean"]) and _finite(b["deviation_mean"]):
        pairs.append((b["deviation_mean"], a["deviation_mean"]))
    return all(worse <= better for better, worse in pairs) and any(worse < better for better, worse in pairs)


def non_dominated(rows: list[dict[str, Any]]) -> list[bool]:
    """Per row: measured (latency and success known) and dominated by no other measured row."""
    measured = [r for r in rows if _finite(r["latency_p50_ms"]) and _finite(r["success_rate"])]
    return [row in measured and not any(dominates(other, row) for other in measured) for row in rows]


# --- writing --------------------------------------------------------------------------------------


def _fmt(value: float, spec: str = ".1f", suffix: str = "") -> str:
    return format(value, spec) + suffix if _finite(value) else "-"


def _success(row: dict[str, Any]) -> str:
    if not row["trials"]:
        return "-"
    low, high = row["success_ci"]
    return f"{row['successes']}/{row['trials']} ({100 * row['success_rate']:.1f}%, {100 * low:.1f}-{100 * high:.1f})"


def markdown(sweep: dict[str, Any]) -> str:
    """sweep.md: the episodes, the grid, every row, the rows not dominated, the plot."""
    rows, episodes = sweep["rows"], sweep["episodes"]
    grid = " x ".join(f"{key} {values}" for key, values in sweep["grid"].items()) or "none"
    if sweep.get("points"):
        grid += "; extra points: " + "; ".join(", ".join(f"{k} {value_text(v)}" for k, v in p.items())
                                               for p in sweep["points"])
    lines = ["# Decoding sweep", "",
             f"{episodes['per_row']} episode(s) per row ({', '.join(episodes['suites'])}, tasks {episodes['tasks']}, "
             f"trials 0-{episodes['num_trials'] - 1}, seed {episodes['seed']}), the same episodes in every row.",
             f"Grid: {grid}; modes {', '.join(sweep['modes'])} (each once per distinct setting of the keys it "
             f"reads); baselines {', '.join(sweep['baseline_modes']) or 'none'} with the base settings.",
             "Success with its Wilson 95% interval; latency pools the chunks of all episodes; deviation: mean over "
             f"episodes of the max action deviation from `{sweep['deviation_reference']}` decoding the same "
             "observations (`-` where the episode log does not carry it); **bold** = not dominated.",
             _noise_line(rows),
             "", "| setting | success (95% CI) | p50 ms | mean ms | main fwd/chunk | deviation | speedup vs ar "
             "(p50) | run |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        setting = f"**{row['setting']}**" if row["non_dominated"] else row["setting"]
        lines.append(f"| {setting} | {_success(row)} | {_fmt(row['latency_p50_ms'])} | "
                     f"{_fmt(row['latency_mean_ms'])} | {_fmt(row['main_forwards_per_chunk'], '.2f')} | "
                     f"{_fmt(row['deviation_mean'], '.4f')} | {_fmt(row['speedup_vs_ar_p50'], '.2f', 'x')} | "
                     f"`{row['run']}` |")
    best = sorted((r for r in rows if r["non_dominated"]), key=lambda r: r["latency_p50_ms"])
    lines += ["", "## Not dominated", "", "Faster first. No other row is at least as fast, as successful (point "
              "estimate) and as close to the reference, and better on one of them.", "",
              "| setting | success (95% CI) | p50 ms | deviation | speedup vs ar (p50) |", "|---|---|---|---|---|"]
    lines += [f"| {r['setting']} | {_success(r)} | {_fmt(r['latency_p50_ms'])} | {_fmt(r['deviation_mean'], '.4f')} "
              f"| {_fmt(r['speedup_vs_ar_p50'], '.2f', 'x')} |" for r in best]
    if sweep.get("plot"):
        lines += ["", f"![success and deviation vs p50 chunk latency]({sweep['plot']})"]
    return "\n".join(lines) + "\n"


def _noise_line(rows: list[dict[str, Any]]) -> str:
    """How wide the success intervals are, so nobody reads a one-episode difference as a finding."""
    widths = sorted(50 * (r["success_ci"][1] - r["success_ci"][0]) for r in rows if r["trials"])
    return (f"The success intervals are about +-{widths[len(widths) // 2]:.0f} points wide: success differences "
            "between rows whose intervals overlap are within noise.") if widths else ""


def write_sweep(cfg: SweepConfig, runs: list[Run]) -> dict[str, Any]:
    """sweep.json, sweep.md and the trade-off plot from the run folders' episode logs; prints the markdown."""
    out = Path(cfg.out)
    rows = collect_rows(runs)
    first = next(run.cfg for run in runs if run.cfg is not None)
    sweep = {"episodes": {"suites": first.suites, "tasks": first.tasks, "num_trials": first.num_trials,
                          "seed": first.seed, "per_row": len(episode_list(first))},
             "deviation_reference": first.deviation_reference, "grid": cfg.grid,
             "points": cfg.points, "modes": cfg.modes, "baseline_modes": cfg.baseline_modes, "rows": rows,
             "non_dominated": [r["setting"] for r in rows if r["non_dominated"]], "plot": None}
    fig = tradeoff_figure(rows)
    if fig is not None:
        (out / PLOT).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out / PLOT, dpi=DPI)
        sweep["plot"] = PLOT
    atomic_write(out / "sweep.json", json.dumps(_json_safe(sweep), indent=2) + "\n")
    text = markdown(sweep)
    atomic_write(out / "sweep.md", text)
    print(text)
    return sweep


# --- CLI ------------------------------------------------------------------------------------------


def parse_config(argv: list[str]) -> SweepConfig:
    """`--config file.yaml` plus any field on the command line (e.g. `--eval.num_trials 2 --grid '{tau: [0.1]}'`)."""
    from jsonargparse import auto_cli, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    return auto_cli(SweepConfig, args=argv, as_positional=False, prog="python -m rsd_pl sweep")


def _progress(run: Run) -> str:
    point = " ".join(f"{k}={v}" for k, v in run.point.items())
    earlier = "; ".join(f"{m} as in {title}" for m, title in run.earlier.items())
    modes = f"[{', '.join(run.cfg.modes)}] -> {run.cfg.out}" if run.cfg else "nothing new"
    return f"sweep: {run.title} {point}".rstrip() + f": {modes}" + (f" ({earlier})" if earlier else "")


def run_sweep(cfg: SweepConfig, runs: list[Run]) -> bool:
    """One session (models loaded once, every run's engines pre-built), then each run in turn; False on a
    non-zero rank (no aggregation)."""
    todo = [run for run in runs if run.cfg is not None]
    all_modes = list(dict.fromkeys(m for run in todo for m in run.cfg.modes))
    session = EvalSession.open(todo[0].cfg, modes=all_modes)
    policies = {run.title: session.policies(run.cfg) for run in todo}  # errors surface before any episode
    is_zero = True
    for run in runs:
        print(_progress(run), flush=True)
        if run.cfg is not None:
            is_zero = session.run(run.cfg, policies[run.title]) is not None and is_zero
    return is_zero


def main(argv: list[str]) -> int:
    """`python -m rsd_pl sweep --config configs/quickstart/sweep.yaml [--field value ...]`."""
    cfg = parse_config(argv)
    quiet_library_notices()
    runs = plan(cfg)
    for run in (run for run in runs if run.cfg is not None):
        check_logged_settings(run)
    with output_lock(cfg.out, "sweep"):  # after the checks: bad input never creates the folder
        return _main(cfg, runs)


def _main(cfg: SweepConfig, runs: list[Run]) -> int:
    if not run_sweep(cfg, runs):
        return 0
    sweep = write_sweep(cfg, runs)
    errors = sum(row["errors"] for row in sweep["rows"])
    if errors:
        print(f"sweep: {errors} episode run(s) ended in an error (tracebacks in the run folders' episodes.jsonl); "
              "exit code 1")
    return 1 if errors else 0
