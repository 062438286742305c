"""The episode log and the evaluation report: success per task / suite / mode with intervals, paired
tests between modes, latency and speedup with intervals, main forwards, acceptance.

Input is the episode log written by the evaluation loop (`<out>/episodes.jsonl`, one JSON object
per finished episode, fields of `rsd_pl.eval.runner.EpisodeResult`). Output: a printed table,
`report.json`, `report.md`, `eval_info.json`, PNGs under `plots/`, and TensorBoard scalars
(`eval/<mode>/...`) and images (`eval/plots/...`).

Counting rules (DESIGN.md section 6; the statistics are in `rsd_pl.eval.stats`):
- `trials` counts every recorded episode, errors included; `successes` only those the environment
  reported as successful. A timeout is a failure; an error is a failure counted separately.
  Every success rate carries a Wilson 95% interval (`success_ci`, fractions).
- Paired tests: each mode against `reference_mode` (default `ar`) on the episodes both ran (same
  suite, task and trial): difference in success rate with Newcombe's 95% interval, exact McNemar
  p-value, and a verdict ("within noise" when the interval holds 0 or p >= 0.05). A reference mode
  missing from the log is said in the report, and the paired columns are left out.
- Latency percentiles pool the per-chunk latencies of all episodes of a mode.
- `speedup`: `ar / speculative` of the mean and p50 chunk latency over all episodes of each in the log.
  `speedups`: `speculative` against each of `ar`, `ar_exit`, `parallel` present, on the paired
  episodes the two ran in the same process (the records' `run`), with percentile-bootstrap 95% intervals
  (episodes resampled, fixed seed).

`eval_info.json` follows LeRobot's `lerobot-eval` (rsd_pl.eval.lerobot). The episode log's reading and
writing are in rsd_pl.eval.episode_log.

Imports: eval.episode_log, eval.stats, eval.plots, eval.lerobot; no models, no LIBERO.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from rsd_pl.decoding.config import MODES
from rsd_pl.durable import atomic_write
from rsd_pl.errors import RsdError
from rsd_pl.eval.episode_log import (  # noqa: F401  (re-exported: the log's names, as before)
    EPISODES_FILE,
    RANK_FILE_GLOB,
    EpisodeLog,
    episode_key,
    merge_rank_files,
    read_episodes,
    read_episodes_file,
    read_jsonl,
)
from rsd_pl.eval.stats import paired_comparisons, speedups, succeeded, wilson_interval

# --- aggregation ---------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def success_counts(records: list[dict[str, Any]]) -> dict[str, Any]:
    """successes / trials with timeouts and errors counted separately."""
    trials = len(records)
    successes = sum(1 for r in records if succeeded(r))
    timeouts = sum(1 for r in records if r["status"] == "timeout")
    errors = sum(1 for r in records if r["status"] == "error")
    rate = successes / trials if trials else math.nan
    return {"successes": successes, "trials": trials, "timeouts": timeouts, "errors": errors,
            "success_rate": rate, "success_ci": list(wilson_interval(successes, trials))}


def acceptance_by_depth(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per residual layer (depth 1..L, the engine's `proposed_by_depth[depth - 1]`): draft layers
    proposed, accepted and their ratio, summed over episodes; depths never proposed are left out
    (layer 1 always: the main model's prefill decides it)."""
    proposed: dict[int, int] = defaultdict(int)
    accepted: dict[int, int] = defaultdict(int)
    for record in records:
        for depth, count in enumerate(record.get("proposed_by_depth") or [], start=1):
            proposed[depth] += count
        for depth, count in enumerate(record.get("accepted_by_depth") or [], start=1):
            accepted[depth] += count
    return [{"depth": depth, "proposed": proposed[depth], "accepted": accepted[depth],
             "rate": accepted[depth] / proposed[depth]}
            for depth in sorted(proposed) if proposed[depth]]


def mode_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Success, chunk latency, forwards per chunk and acceptance for the episodes of one mode."""
    latencies = [ms for r in records for ms in r.get("chunk_latency_ms") or []]
    chunks = sum(int(r.get("chunks", 0)) for r in records)
    by_depth = acceptance_by_depth(records)
    proposed = sum(row["proposed"] for row in by_depth)
    accepted = sum(row["accepted"] for row in by_depth)
    return {
        **success_counts(records),
        "chunks": chunks,
        "latency_ms": {"mean": _mean(latencies), "p50": percentile(latencies, 50),
                       "p95": percentile(latencies, 95)},
        "main_forwards_per_chunk": sum(int(r.get("main_forwards", 0)) for r in records) / chunks
        if chunks else math.nan,
        "draft_forwards_per_chunk": sum(int(r.get("draft_forwards", 0)) for r in records) / chunks
        if chunks else math.nan,
        "acceptance_rate": accepted / proposed if proposed else math.nan,
        "acceptance_by_depth": by_depth,
        "deviation_mean": _mean([r["deviation_mean"] for r in records if r.get("deviation_mean") is not None]),
        "decoding": decoding_settings(records),
    }


def decoding_settings(records: list[dict[str, Any]]) -> str:
    """The engine settings that matter for the mode, e.g. 'relaxed, tau 0.05, k 7, greedy'; several
    settings (a resumed run with a changed config) are all listed, separated by ' | '."""
    seen: list[str] = []
    for record in records:
        cfg = record.get("decoding") or {}
        if not cfg:
            text = "not recorded"
        elif cfg.get("mode") == "speculative":
            text = cfg["acceptance"] + (f", tau {cfg['tau']:g}" if cfg["acceptance"] == "relaxed" else "")
            k = cfg["draft_len"]
            text += f", k {','.join(map(str, k)) if isinstance(k, list) else k}"
        elif cfg.get("mode") == "ar_exit":
            text = f"ar_exit, exit {cfg.get('exit_bound', 0.05):g}"
        else:
            text = cfg.get("mode", "?")
        if cfg:
            text += ", greedy" if not cfg.get("temperature") else f", temperature {cfg['temperature']:g}"
            if cfg.get("early_exit_bound") is not None:
                text += f", early exit {cfg['early_exit_bound']:g}"
        if text not in seen:
            seen.append(text)
    return " | ".join(seen)


def _mode_rank(mode: str) -> tuple[int, str]:
    """Modes in the engine's order (oft, l1, parallel, ar, ar_exit, speculative), unknown ones after."""
    return (MODES.index(mode) if mode in MODES else len(MODES), mode)


def _group(records: list[dict[str, Any]], *fields: str) -> dict[tuple, list[dict[str, Any]]]:
    """Records grouped by `fields` (the first is the mode), sorted with modes in engine order."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[tuple(record[f] for f in fields)].append(record)
    return dict(sorted(groups.items(), key=lambda item: (_mode_rank(item[0][0]), item[0][1:])))


def speedup(modes: dict[str, dict[str, Any]], fast: str = "speculative", slow: str = "ar") -> dict | None:
    """Latency ratio slow / fast (mean and p50) when both modes were measured in this run."""
    if fast not in modes or slow not in modes:
        return None
    ratios = {}
    for stat in ("mean", "p50"):
        fast_ms, slow_ms = modes[fast]["latency_ms"][stat], modes[slow]["latency_ms"][stat]
        ratios[stat] = slow_ms / fast_ms if fast_ms and not math.isnan(fast_ms) else math.nan
    return {"fast": fast, "slow": slow, "mean_latency_ratio": ratios["mean"],
            "p50_latency_ratio": ratios["p50"],
            "main_forwards_per_chunk": {slow: modes[slow]["main_forwards_per_chunk"],
                                        fast: modes[fast]["main_forwards_per_chunk"]}}


def build_report(records: list[dict[str, Any]], reference_mode: str = "ar") -> dict[str, Any]:
    """The report as a JSON-ready dict (see module docstring for the counting rules)."""
    if not records:
        raise RsdError("no finished episodes to report on (the episode log is empty)")
    if reference_mode not in MODES:
        raise RsdError(f"reference mode {reference_mode!r} is not one of {MODES}")
    modes = {mode: mode_summary(rs) for (mode,), rs in _group(records, "mode").items()}
    suites = [{"mode": mode, "suite": suite, **success_counts(rs)}
              for (mode, suite), rs in _group(records, "mode", "suite").items()]
    tasks = [{"mode": mode, "suite": suite, "task_id": task_id,
              "task_name": rs[0].get("task_name", ""), **success_counts(rs)}
             for (mode, suite, task_id), rs in _group(records, "mode", "suite", "task_id").items()]
    errors = [{"suite": r["suite"], "task_id": r["task_id"], "trial": r["trial"], "mode": r["mode"],
               "error": (r.get("error") or "").strip().splitlines()[-1:]}
              for r in records if r["status"] == "error"]
    return {"episodes": len(records), "modes": modes, "suites": suites, "tasks": tasks,
            "models": models_named(records),
            "paired": paired_comparisons(records, list(modes), reference_mode),
            "speedup": speedup(modes), "speedups": speedups(records, modes), "errors": errors}


def models_named(records: list[dict[str, Any]]) -> dict[str, Any]:
    """{"main": ["main@1 <created> sha256:..."], ...} over the records that name their models, and how many don't."""
    named: dict[str, list[str]] = {}
    for record in records:
        for key, value in (record.get("models") or {}).items():
            if value not in named.setdefault(key, []):
                named[key].append(value)
    return {"named": named, "unnamed": sum(1 for r in records if r.get("models") is None)}


def _fmt(value: float, spec: str = ".1f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f}%"


def _rate(row: dict[str, Any]) -> str:
    return f"{row['successes']}/{row['trials']} ({_fmt(100 * row['success_rate'])}%)"


def _rate_ci(row: dict[str, Any]) -> str:
    """'12/16 (75.0%, 95% CI 50.5-89.8)'."""
    if not row["trials"]:
        return _rate(row)
    low, high = row["success_ci"]
    return (f"{row['successes']}/{row['trials']} ({_fmt(100 * row['success_rate'])}%, "
            f"95% CI {_fmt(100 * low)}-{_fmt(100 * high)})")


def _points(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:+.1f}"


def _p_value(p: float) -> str:
    return "-" if math.isnan(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


def markdown(report: dict[str, Any]) -> str:
    """Markdown: success with intervals and paired tests, decoding cost, speedups, plots, suites,
    tasks, acceptance by depth, errors."""
    lines = ["# Evaluation report", "", f"{report['episodes']} episodes. Success rates with Wilson 95% intervals."]
    lines += _models_lines(report.get("models") or {})
    lines += _success_lines(report["modes"], report["paired"])
    lines += ["", "## Decoding cost", "",
              "| mode | success | timeouts | errors | chunks | latency mean ms | p50 ms | p95 ms "
              "| main fwd/chunk | draft fwd/chunk | acceptance | action gap vs reference | decoding |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode, m in report["modes"].items():
        lat = m["latency_ms"]
        lines.append(f"| {mode} | {_rate(m)} | {m['timeouts']} | {m['errors']} | {m['chunks']} "
                     f"| {_fmt(lat['mean'])} | {_fmt(lat['p50'])} | {_fmt(lat['p95'])} "
                     f"| {_fmt(m['main_forwards_per_chunk'], '.2f')} "
                     f"| {_fmt(m['draft_forwards_per_chunk'], '.2f')} "
                     f"| {_pct(m['acceptance_rate'])} | {_fmt(m.get('deviation_mean', math.nan), '.4f')} "
                     f"| {m['decoding']} |")
    lines += ["", "Action gap: mean over chunks of the max abs difference (normalised units) between a mode's actions "
              "and the deviation reference's (eval `deviation_reference`, default `ar`) decoded from the same "
              "observation; '-' where not measured."]
    lines += _speedups_lines(report["speedups"]) + _speedup_lines(report["speedup"])
    lines += _plot_lines(report.get("plots") or {})
    lines += ["", "## Per suite", "", "| mode | suite | success | timeouts | errors |", "|---|---|---|---|---|"]
    lines += [f"| {s['mode']} | {s['suite']} | {_rate_ci(s)} | {s['timeouts']} | {s['errors']} |"
              for s in report["suites"]]
    lines += ["", "## Per task", "", "| mode | suite | task | name | success | timeouts | errors |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {t['mode']} | {t['suite']} | {t['task_id']} | {t['task_name']} | {_rate_ci(t)} "
              f"| {t['timeouts']} | {t['errors']} |" for t in report["tasks"]]
    lines += _acceptance_lines(report["modes"])
    if report["errors"]:
        lines += ["", "## Errors (last traceback line)", ""]
        lines += [f"- {e['mode']} {e['suite']} task {e['task_id']} trial {e['trial']}: "
                  f"{' '.join(e['error'])}" for e in report["errors"]]
    return "\n".join(lines) + "\n"


def _models_lines(models: dict[str, Any]) -> list[str]:
    named = models.get("named") or {}
    if not named:
        return []
    lines = ["", "Models: " + "; ".join(f"{key} `{v}`" for key, values in named.items() for v in values) + "."]
    if models.get("unnamed"):
        lines[-1] += f" {models['unnamed']} earlier runs do not name theirs."
    return lines


def _success_lines(modes: dict[str, dict[str, Any]], paired: dict[str, Any]) -> list[str]:
    """Success per mode; with the reference present, the paired difference, McNemar p and verdict."""
    ref = paired["reference_mode"]
    if not paired["reference_present"]:
        return ["", "## Success", "", f"Note: {paired['note']}.", "", "| mode | success |", "|---|---|",
                *[f"| {mode} | {_rate_ci(m)} |" for mode, m in modes.items()]]
    lines = ["", "## Success", "",
             f"Paired against `{ref}` on the episodes both modes ran (same suite, task, trial): difference "
             "in points with Newcombe's 95% interval, exact McNemar p on the discordant episodes.", "",
             f"| mode | success | paired episodes | difference vs {ref} (95% CI) | only mode / only {ref} "
             "| McNemar p | verdict |", "|---|---|---|---|---|---|---|"]
    for mode, m in modes.items():
        if mode == ref:
            lines.append(f"| {mode} | {_rate_ci(m)} | reference | | | | |")
            continue
        t = paired["modes"][mode]
        lines.append(f"| {mode} | {_rate_ci(m)} | {t['episodes']} | {_points(t['difference'])} "
                     f"({_points(t['ci_low'])} to {_points(t['ci_high'])}) | {t['mode_only']} / {t['reference_only']} "
                     f"| {_p_value(t['p_value'])} | {t['verdict']} |")
    return lines


def _speedups_lines(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    fast = rows[0]["fast"]
    lines = ["", f"## Speedup of {fast}", "",
             f"Chunk latency of the baseline / {fast} on the episodes both ran in the same run (process); 95% "
             "intervals from a bootstrap over episodes.", "",
             "| against | episodes | mean latency ratio (95% CI) | p50 latency ratio (95% CI) | main fwd/chunk |",
             "|---|---|---|---|---|"]
    for r in rows:
        forwards = r["main_forwards_per_chunk"]
        lines.append(f"| {r['slow']} | {r['episodes']} "
                     f"| {_fmt(r['mean_latency_ratio'], '.2f')}x ({_fmt(r['mean_ci'][0], '.2f')}-"
                     f"{_fmt(r['mean_ci'][1], '.2f')}) | {_fmt(r['p50_latency_ratio'], '.2f')}x "
                     f"({_fmt(r['p50_ci'][0], '.2f')}-{_fmt(r['p50_ci'][1], '.2f')}) "
                     f"| {_fmt(forwards[r['slow']], '.2f')} -> {_fmt(forwards[fast], '.2f')} |")
    left_out = {r["slow"]: r["other_run_episodes"] for r in rows if r.get("other_run_episodes")}
    if left_out:
        lines += ["", "Left out: episodes the two modes ran in different runs (a resumed or redone log), "
                  + ", ".join(f"{n} against {slow}" for slow, n in left_out.items()) + "."]
    return lines


def _plot_lines(plots: dict[str, str]) -> list[str]:
    lines = ["", "## Plots", ""] if plots else []
    for title, path in plots.items():
        lines += [f"![{title}]({path})", ""]
    return lines[:-1]


def _acceptance_lines(modes: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for mode, m in modes.items():
        if m["acceptance_by_depth"]:
            lines += ["", f"## Acceptance by draft depth ({mode})", "",
                      "| depth | proposed | accepted | rate |", "|---|---|---|---|"]
            lines += [f"| {row['depth']} | {row['proposed']} | {row['accepted']} "
                      f"| {_pct(row['rate'])} |" for row in m["acceptance_by_depth"]]
    return lines


def _speedup_lines(ratio: dict[str, Any] | None) -> list[str]:
    if ratio is None:
        return []
    forwards = ratio["main_forwards_per_chunk"]
    return ["", f"Speedup {ratio['fast']} over {ratio['slow']} (all episodes of each in this log): "
            f"{_fmt(ratio['mean_latency_ratio'], '.2f')}x mean latency, "
            f"{_fmt(ratio['p50_latency_ratio'], '.2f')}x p50 latency; main forwards per chunk "
            f"{_fmt(forwards[ratio['slow']], '.2f')} -> {_fmt(forwards[ratio['fast']], '.2f')}."]


def _json_safe(value: Any) -> Any:
    """NaN -> None so the file is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def tensorboard_scalars(report: dict[str, Any]) -> dict[str, float]:
    """Flat `eval/<mode>/...` scalars (NaNs left out)."""
    scalars: dict[str, float] = {}
    ref = report["paired"]["reference_mode"]
    for mode, m in report["modes"].items():
        scalars[f"eval/{mode}/success_rate"] = m["success_rate"]
        scalars[f"eval/{mode}/success_ci_low"], scalars[f"eval/{mode}/success_ci_high"] = m["success_ci"]
        scalars[f"eval/{mode}/errors"] = m["errors"]
        scalars[f"eval/{mode}/latency_mean_ms"] = m["latency_ms"]["mean"]
        scalars[f"eval/{mode}/latency_p50_ms"] = m["latency_ms"]["p50"]
        scalars[f"eval/{mode}/latency_p95_ms"] = m["latency_ms"]["p95"]
        scalars[f"eval/{mode}/main_forwards_per_chunk"] = m["main_forwards_per_chunk"]
        scalars[f"eval/{mode}/acceptance_rate"] = m["acceptance_rate"]
        for row in m["acceptance_by_depth"]:
            scalars[f"eval/{mode}/acceptance_depth_{row['depth']}"] = row["rate"]
    for mode, t in report["paired"]["modes"].items():
        scalars[f"eval/{mode}/success_diff_vs_{ref}"] = t["difference"]
        scalars[f"eval/{mode}/success_diff_vs_{ref}_ci_low"] = t["ci_low"]
        scalars[f"eval/{mode}/success_diff_vs_{ref}_ci_high"] = t["ci_high"]
        scalars[f"eval/{mode}/mcnemar_p_vs_{ref}"] = t["p_value"]
    for s in report["suites"]:
        scalars[f"eval/{s['mode']}/{s['suite']}/success_rate"] = s["success_rate"]
        scalars[f"eval/{s['mode']}/{s['suite']}/success_ci_low"] = s["success_ci"][0]
        scalars[f"eval/{s['mode']}/{s['suite']}/success_ci_high"] = s["success_ci"][1]
    if report["speedup"]:
        scalars["eval/speculative/speedup_over_ar_mean"] = report["speedup"]["mean_latency_ratio"]
        scalars["eval/speculative/speedup_over_ar_p50"] = report["speedup"]["p50_latency_ratio"]
    for r in report["speedups"]:
        for stat in ("mean", "p50"):
            tag = f"eval/{r['fast']}/speedup_over_{r['slow']}_{stat}"
            scalars.setdefault(tag, r[f"{stat}_latency_ratio"])  # ar: the all-episode value above
            scalars[f"{tag}_ci_low"], scalars[f"{tag}_ci_high"] = r[f"{stat}_ci"]
    return {k: float(v) for k, v in scalars.items() if v is not None and not math.isnan(float(v))}


def log_tensorboard(report: dict[str, Any], log_dir: str | Path, step: int = 0,
                    images: dict[str, Path] | None = None) -> None:
    """Scalars, the markdown report as text, and `images` (title -> PNG path) as `eval/plots/<stem>`."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for tag, value in tensorboard_scalars(report).items():
            writer.add_scalar(tag, value, global_step=step)
        writer.add_text("eval/report", markdown(report), global_step=step)
        if images:
            from rsd_pl.eval.plots import log_images

            log_images(writer, images, step)
    finally:
        writer.close()


def write_report(out_dir: str | Path, tensorboard_dir: str | Path | None = None,
                 reference_mode: str = "ar") -> dict[str, Any]:
    """Read `<out_dir>` episodes; write report.json / report.md / eval_info.json (+ eval_info_<mode>.json)
    and plots/*.png; log
    TensorBoard scalars and images when `tensorboard_dir` is given; print the markdown."""
    from rsd_pl.eval.lerobot import lerobot_eval_info
    from rsd_pl.eval.plots import write_plots

    out_dir = Path(out_dir)
    records = read_episodes(out_dir)
    report = build_report(records, reference_mode)
    images = write_plots(report, records, out_dir / "plots")
    report["plots"] = {title: path.relative_to(out_dir).as_posix() for title, path in images.items()}
    atomic_write(out_dir / "report.json", json.dumps(_json_safe(report), indent=2) + "\n")
    info = lerobot_eval_info(records, reference_mode)
    atomic_write(out_dir / "eval_info.json", json.dumps(_json_safe(info), indent=2) + "\n")
    for mode, block in info["per_mode"].items():  # one LeRobot-shaped file per mode, for tools that read one
        atomic_write(out_dir / f"eval_info_{mode}.json", json.dumps(_json_safe(block), indent=2) + "\n")
    text = markdown(report)
    atomic_write(out_dir / "report.md", text)
    if tensorboard_dir is not None:
        log_tensorboard(report, tensorboard_dir, images=images)
    print(text)
    return report
