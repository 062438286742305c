"""Figures of the evaluation report: PNGs under `<out>/plots/`, linked from report.md, logged to TensorBoard.

- `success_vs_latency.png`: success rate against p50 chunk latency per mode, Wilson 95% bars (the
  trade-off view: up and to the left is better).
- `acceptance_by_depth.png`: share of proposed draft layers accepted, per residual layer (modes
  with a draft only; skipped when there are none).
- `task_success.png`: per-task success heatmap, tasks x modes, each cell annotated k/n.
- `chunk_latency.png`: chunk-latency distribution per mode (box: quartiles, whiskers: 5th-95th
  percentile, dot: mean), log scale when the modes span more than a factor of 10.

Figures are drawn on `matplotlib.figure.Figure` (the Agg canvas), never through pyplot, so no global
backend or figure state is touched.

Imports: eval.plot_labels, matplotlib; no models, no LIBERO.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from rsd_pl.decoding.config import MODES
from rsd_pl.eval.plot_labels import place_labels

DPI = 130
LABEL_CHARS = 50
"""Task labels on the heatmap wrap at this many characters, two lines at most."""


def mode_color(mode: str) -> tuple[float, float, float, float]:
    """One colour per mode, the same in every figure (tab10 in the engine's mode order)."""
    from matplotlib import colormaps

    return colormaps["tab10"](MODES.index(mode) if mode in MODES else len(MODES))


def success_vs_latency(report: dict[str, Any], records: list[dict[str, Any]]) -> Figure | None:
    """Success % (Wilson 95% bars) against p50 chunk latency (ms) per mode; modes without latency are left out."""
    points = [(mode, m) for mode, m in report["modes"].items() if not math.isnan(m["latency_ms"]["p50"])]
    if not points:
        return None
    fig = Figure(figsize=(7.0, 4.6), layout="constrained")
    ax = fig.subplots()
    for mode, m in points:
        rate, (low, high) = 100 * m["success_rate"], m["success_ci"]
        ax.errorbar(m["latency_ms"]["p50"], rate, yerr=[[rate - 100 * low], [100 * high - rate]], fmt="o",
                    markersize=7, capsize=4, color=mode_color(mode))
    latencies = [m["latency_ms"]["p50"] for _, m in points]
    if max(latencies) > 10 * min(latencies):
        _log_scale(ax, "x")
        ax.margins(x=0.15)
    else:
        ax.set_xlim(0, 1.2 * max(latencies))
    ax.set_ylim(-3, 103)
    ax.set_xlabel("p50 chunk latency (ms)")
    ax.set_ylabel("success (%)")
    ax.set_title("Success vs chunk latency per mode (bars: Wilson 95% interval)", fontsize=11)
    ax.grid(alpha=0.3)
    labels = [(m["latency_ms"]["p50"], 100 * m["success_rate"], f"{mode}\n{m['successes']}/{m['trials']}")
              for mode, m in points]
    place_labels(ax, labels, bars=[(100 * m["success_ci"][0], 100 * m["success_ci"][1]) for _, m in points])
    return fig


def _log_scale(ax: Any, which: str) -> None:
    """Log scale on axis `which` ('x' or 'y'), ticks at 1, 2 and 5 of each decade as plain numbers (ms)."""
    from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

    getattr(ax, f"set_{which}scale")("log")
    axis = getattr(ax, f"{which}axis")
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(StrMethodFormatter("{x:g}"))
    axis.set_minor_formatter(NullFormatter())


def acceptance_by_depth(report: dict[str, Any], records: list[dict[str, Any]]) -> Figure | None:
    """Accepted / proposed draft layers per residual layer (depth 2..L), one bar group per drafting mode."""
    modes = {mode: m["acceptance_by_depth"] for mode, m in report["modes"].items() if m["acceptance_by_depth"]}
    if not modes:
        return None
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(modes)
    for index, (mode, rows) in enumerate(modes.items()):
        depths = np.array([row["depth"] for row in rows]) + (index - (len(modes) - 1) / 2) * width
        bars = ax.bar(depths, [100 * row["rate"] for row in rows], width=width * 0.95, color=mode_color(mode),
                      label=mode)
        ax.bar_label(bars, labels=[f"{row['accepted']}/{row['proposed']}" for row in rows], fontsize=8, padding=2)
    ax.set_xticks(sorted({row["depth"] for rows in modes.values() for row in rows}))
    ax.set_ylim(0, 112)
    ax.set_xlabel("residual layer (draft depth)")
    ax.set_ylabel("accepted (% of proposed)")
    ax.set_title("Draft acceptance by depth (labels: accepted/proposed)", fontsize=11)
    ax.legend(loc="upper right", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _task_label(task: dict[str, Any]) -> str:
    """'spatial 3: pick up the black bowl on the\ncookie box and place it on the plate' (two lines at most)."""
    name = (task["task_name"] or "").replace("_", " ")
    lines = textwrap.wrap(f"{task['suite'].removeprefix('libero_')} {task['task_id']}: {name}", LABEL_CHARS,
                          max_lines=2, placeholder="...")
    return "\n".join(lines)


def task_success(report: dict[str, Any], records: list[dict[str, Any]]) -> Figure | None:
    """Heatmap of success per task (rows) and mode (columns), cells annotated k/n; blank where a mode did not run."""
    modes = list(report["modes"])
    tasks = sorted({(t["suite"], t["task_id"]): t for t in report["tasks"]}.values(),
                   key=lambda t: (t["suite"], t["task_id"]))
    rows = {(t["suite"], t["task_id"]): i for i, t in enumerate(tasks)}
    rate = np.full((len(tasks), len(modes)), np.nan)  # (tasks, modes)
    fig = Figure(figsize=(4.2 + 1.0 * len(modes), 1.4 + 0.4 * len(tasks)), layout="constrained")
    ax = fig.subplots()
    for t in report["tasks"]:
        row, column = rows[(t["suite"], t["task_id"])], modes.index(t["mode"])
        rate[row, column] = t["success_rate"]
        ax.text(column, row, f"{t['successes']}/{t['trials']}", ha="center", va="center", fontsize=8,
                color="white" if t["success_rate"] < 0.2 or t["success_rate"] > 0.85 else "black")
    image = ax.imshow(100 * rate, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(modes)), modes)
    ax.set_yticks(range(len(tasks)), [_task_label(t) for t in tasks], fontsize=8)
    ax.tick_params(length=0)
    fig.colorbar(image, ax=ax, label="success (%)", shrink=min(1.0, 6 / max(len(tasks), 1)) if len(tasks) > 6
                 else 1.0)
    ax.set_title("Success per task and mode (k/n)", fontsize=11)
    return fig


def chunk_latency(report: dict[str, Any], records: list[dict[str, Any]]) -> Figure | None:
    """Box plot of the pooled chunk latencies (ms) per mode: quartiles, 5th-95th whiskers, mean dot."""
    per_mode = {mode: np.asarray([ms for r in records if r["mode"] == mode for ms in r.get("chunk_latency_ms") or []])
                for mode in report["modes"]}
    per_mode = {mode: values for mode, values in per_mode.items() if values.size}
    if not per_mode:
        return None
    fig = Figure(figsize=(1.6 + 1.2 * len(per_mode), 4.4), layout="constrained")
    ax = fig.subplots()
    boxes = ax.boxplot(list(per_mode.values()), whis=(5, 95), showfliers=False, showmeans=True, patch_artist=True,
                       meanprops={"marker": "o", "markerfacecolor": "black", "markeredgecolor": "black",
                                  "markersize": 4}, medianprops={"color": "black"})
    for patch, mode in zip(boxes["boxes"], per_mode, strict=True):
        patch.set_facecolor(mode_color(mode))
        patch.set_alpha(0.7)
    ax.set_xticks(range(1, len(per_mode) + 1), [f"{mode}\n{values.size} chunks" for mode, values in per_mode.items()],
                  fontsize=9)
    lows = [np.percentile(values, 5) for values in per_mode.values()]
    highs = [np.percentile(values, 95) for values in per_mode.values()]
    if min(lows) > 0 and max(highs) > 10 * min(lows):
        _log_scale(ax, "y")
    ax.set_ylabel("chunk latency (ms)")
    ax.set_title("Chunk latency per mode (box: quartiles, whiskers: 5th-95th percentile, dot: mean)", fontsize=10)
    ax.grid(axis="y", alpha=0.3, which="both")
    return fig


FIGURES: dict[str, tuple[str, Callable[[dict[str, Any], list[dict[str, Any]]], Figure | None]]] = {
    "success vs p50 chunk latency": ("success_vs_latency.png", success_vs_latency),
    "acceptance by draft depth": ("acceptance_by_depth.png", acceptance_by_depth),
    "success per task and mode": ("task_success.png", task_success),
    "chunk latency per mode": ("chunk_latency.png", chunk_latency),
}
"""Title (the markdown alt text) -> (file name, figure function)."""


def write_plots(report: dict[str, Any], records: list[dict[str, Any]], plot_dir: Path) -> dict[str, Path]:
    """Draw every figure that has data into `plot_dir`; returns title -> PNG path of those written."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for title, (name, draw) in FIGURES.items():
        fig = draw(report, records)
        if fig is not None:
            fig.savefig(plot_dir / name, dpi=DPI)
            written[title] = plot_dir / name
    return written


def log_images(writer: Any, images: dict[str, Path], step: int = 0) -> None:
    """Each PNG as a TensorBoard image `eval/plots/<file stem>` (a `SummaryWriter`)."""
    from matplotlib.image import imread

    for path in images.values():
        pixels = imread(path)[..., :3]  # (H, W, 3) float in [0, 1]; the alpha channel dropped
        writer.add_image(f"eval/plots/{path.stem}", pixels, global_step=step, dataformats="HWC")
