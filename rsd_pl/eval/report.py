"""The episode log and the evaluation report: success per task / suite / mode, latency, main forwards,
acceptance.

Input is the episode log written by the evaluation loop (`<out>/episodes.jsonl`, one JSON object
per finished episode, fields of `rsd_pl.eval.runner.EpisodeResult`). Output: a printed table,
`report.json`, `report.md`, and TensorBoard scalars under `eval/<mode>/...`.

Counting rules (DESIGN.md section 6):
- `trials` counts every recorded episode, errors included; `successes` only those the environment
  reported as successful. A timeout is a failure; an error is a failure counted separately.
- Latency percentiles pool the per-chunk latencies of all episodes of a mode.
- Speedup of `speculative` over `ar` is `ar / speculative` of the mean and of the p50 chunk
  latency, both taken from the same run (the same episode log).
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from rsd_pl.decoding.config import MODES
from rsd_pl.errors import RsdError

EPISODES_FILE = "episodes.jsonl"
RANK_FILE_GLOB = "episodes.rank*.jsonl"


def episode_key(record: dict[str, Any]) -> tuple[str, int, int, str]:
    """The identity of an episode for resuming: (suite, task_id, trial, mode)."""
    return (record["suite"], int(record["task_id"]), int(record["trial"]), record["mode"])


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of one JSONL file; a torn last line (a killed writer) is dropped, any other bad line raises."""
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):  # the writer was killed mid-line: that episode is simply redone
                break
            raise RsdError(f"{path}:{number}: not a JSON line ({error})") from error
    return records


def read_episodes(out_dir: str | Path) -> list[dict[str, Any]]:
    """All finished episodes under `out_dir` (merged file and per-rank files), one per key: the first
    record, unless it is an error and a later run of the same episode exists (a retry)."""
    out_dir = Path(out_dir)
    paths = [out_dir / EPISODES_FILE, *sorted(out_dir.glob(RANK_FILE_GLOB))]
    seen: dict[tuple[str, int, int, str], dict[str, Any]] = {}
    for path in paths:
        if path.is_file():
            for record in read_jsonl(path):
                key = episode_key(record)
                if key not in seen or seen[key]["status"] == "error":
                    seen[key] = record
    return list(seen.values())


# --- writing the episode log (the evaluation loop) ------------------------------------------------


class EpisodeLog:
    """Appends one JSON line per finished episode and flushes it (a kill loses at most one line)."""

    def __init__(self, out_dir: Path, rank: int, world_size: int) -> None:
        name = EPISODES_FILE if world_size == 1 else f"episodes.rank{rank}.jsonl"
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / name

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


def merge_rank_files(out_dir: Path) -> None:
    """Fold per-rank logs into episodes.jsonl (skipping episodes already there, unless only as an
    error: a retry is appended after it), then remove them."""
    merged = {episode_key(r) for r in read_episodes_file(out_dir / EPISODES_FILE) if r["status"] != "error"}
    with open(out_dir / EPISODES_FILE, "a") as f:
        for path in sorted(out_dir.glob(RANK_FILE_GLOB)):
            for record in read_episodes_file(path):
                if episode_key(record) not in merged:
                    merged.add(episode_key(record))
                    f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
    for path in sorted(out_dir.glob(RANK_FILE_GLOB)):
        path.unlink()


def read_episodes_file(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path) if path.is_file() else []


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
    successes = sum(1 for r in records if r["status"] == "success" and r["success"])
    timeouts = sum(1 for r in records if r["status"] == "timeout")
    errors = sum(1 for r in records if r["status"] == "error")
    rate = successes / trials if trials else math.nan
    return {"successes": successes, "trials": trials, "timeouts": timeouts, "errors": errors,
            "success_rate": rate}


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


def build_report(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The report as a JSON-ready dict (see module docstring for the counting rules)."""
    if not records:
        raise RsdError("no finished episodes to report on (the episode log is empty)")
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
            "speedup": speedup(modes), "errors": errors}


def _fmt(value: float, spec: str = ".1f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f}%"


def _rate(row: dict[str, Any]) -> str:
    return f"{row['successes']}/{row['trials']} ({_fmt(100 * row['success_rate'])}%)"


def markdown(report: dict[str, Any]) -> str:
    """Markdown tables: modes, suites, tasks, acceptance by depth, speedup, errors."""
    lines = ["# Evaluation report", "", f"{report['episodes']} episodes.", "",
             "| mode | success | timeouts | errors | chunks | latency mean ms | p50 ms | p95 ms "
             "| main fwd/chunk | draft fwd/chunk | acceptance | decoding |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode, m in report["modes"].items():
        lat = m["latency_ms"]
        lines.append(f"| {mode} | {_rate(m)} | {m['timeouts']} | {m['errors']} | {m['chunks']} "
                     f"| {_fmt(lat['mean'])} | {_fmt(lat['p50'])} | {_fmt(lat['p95'])} "
                     f"| {_fmt(m['main_forwards_per_chunk'], '.2f')} "
                     f"| {_fmt(m['draft_forwards_per_chunk'], '.2f')} "
                     f"| {_pct(m['acceptance_rate'])} | {m['decoding']} |")
    lines += ["", "| mode | suite | success | timeouts | errors |", "|---|---|---|---|---|"]
    lines += [f"| {s['mode']} | {s['suite']} | {_rate(s)} | {s['timeouts']} | {s['errors']} |"
              for s in report["suites"]]
    lines += ["", "| mode | suite | task | name | success | timeouts | errors |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {t['mode']} | {t['suite']} | {t['task_id']} | {t['task_name']} | {_rate(t)} "
              f"| {t['timeouts']} | {t['errors']} |" for t in report["tasks"]]
    lines += _acceptance_lines(report["modes"]) + _speedup_lines(report["speedup"])
    if report["errors"]:
        lines += ["", "Errors (last traceback line):", ""]
        lines += [f"- {e['mode']} {e['suite']} task {e['task_id']} trial {e['trial']}: "
                  f"{' '.join(e['error'])}" for e in report["errors"]]
    return "\n".join(lines) + "\n"


def _acceptance_lines(modes: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for mode, m in modes.items():
        if m["acceptance_by_depth"]:
            lines += ["", f"Acceptance by draft depth ({mode}):", "",
                      "| depth | proposed | accepted | rate |", "|---|---|---|---|"]
            lines += [f"| {row['depth']} | {row['proposed']} | {row['accepted']} "
                      f"| {_pct(row['rate'])} |" for row in m["acceptance_by_depth"]]
    return lines


def _speedup_lines(ratio: dict[str, Any] | None) -> list[str]:
    if ratio is None:
        return []
    forwards = ratio["main_forwards_per_chunk"]
    return ["", f"Speedup {ratio['fast']} over {ratio['slow']} (same run): "
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
    for mode, m in report["modes"].items():
        scalars[f"eval/{mode}/success_rate"] = m["success_rate"]
        scalars[f"eval/{mode}/errors"] = m["errors"]
        scalars[f"eval/{mode}/latency_mean_ms"] = m["latency_ms"]["mean"]
        scalars[f"eval/{mode}/latency_p50_ms"] = m["latency_ms"]["p50"]
        scalars[f"eval/{mode}/latency_p95_ms"] = m["latency_ms"]["p95"]
        scalars[f"eval/{mode}/main_forwards_per_chunk"] = m["main_forwards_per_chunk"]
        scalars[f"eval/{mode}/acceptance_rate"] = m["acceptance_rate"]
        for row in m["acceptance_by_depth"]:
            scalars[f"eval/{mode}/acceptance_depth_{row['depth']}"] = row["rate"]
    for s in report["suites"]:
        scalars[f"eval/{s['mode']}/{s['suite']}/success_rate"] = s["success_rate"]
    if report["speedup"]:
        scalars["eval/speculative/speedup_over_ar_mean"] = report["speedup"]["mean_latency_ratio"]
        scalars["eval/speculative/speedup_over_ar_p50"] = report["speedup"]["p50_latency_ratio"]
    return {k: float(v) for k, v in scalars.items() if not math.isnan(float(v))}


def log_tensorboard(report: dict[str, Any], log_dir: str | Path, step: int = 0) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for tag, value in tensorboard_scalars(report).items():
            writer.add_scalar(tag, value, global_step=step)
        writer.add_text("eval/report", markdown(report), global_step=step)
    finally:
        writer.close()


def write_report(out_dir: str | Path, tensorboard_dir: str | Path | None = None) -> dict[str, Any]:
    """Read `<out_dir>` episodes, write report.json / report.md, log TensorBoard, print the tables."""
    out_dir = Path(out_dir)
    report = build_report(read_episodes(out_dir))
    (out_dir / "report.json").write_text(json.dumps(_json_safe(report), indent=2) + "\n")
    text = markdown(report)
    (out_dir / "report.md").write_text(text)
    if tensorboard_dir is not None:
        log_tensorboard(report, tensorboard_dir)
    print(text)
    return report
