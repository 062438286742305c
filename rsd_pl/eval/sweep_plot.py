"""The sweep's trade-off figure: success (Wilson bars) and action gap against p50 chunk latency, one point
per (setting, mode) row of `rsd_pl.eval.sweep`, non-dominated settings ringed, labels placed to not overlap.

Imports: eval.plots, eval.plot_labels, matplotlib.
"""

from __future__ import annotations

import math
from typing import Any

from matplotlib.figure import Figure

from rsd_pl.eval.plot_labels import place_labels
from rsd_pl.eval.plots import _log_scale, mode_color


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def tradeoff_figure(rows: list[dict[str, Any]]) -> Figure | None:
    """Success % (Wilson 95% bars) vs p50 chunk latency, and below it mean deviation vs latency when the rows
    carry one (the reference itself, at 0, left out); colour = mode, black ring = not dominated, label = the
    grid values."""
    from matplotlib.lines import Line2D

    points = [r for r in rows if _finite(r["latency_p50_ms"]) and _finite(r["success_rate"])]
    if not points:
        return None
    panels = [(points, lambda r: 100 * r["success_rate"], "success (%)")]
    if with_deviation := [r for r in points if _finite(r["deviation_mean"]) and r["deviation_mean"] > 0]:
        panels.append((with_deviation, lambda r: r["deviation_mean"], "mean action deviation from the reference"))
    fig = Figure(figsize=(10.0, 1.6 + 4.2 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (panel_rows, value, label) in zip(axes, panels, strict=True):
        _panel(ax, panel_rows, value, with_bars=ax is axes[0])
        ax.set_ylabel(label)
    axes[0].set_ylim(-3, 103)
    if not _log_if_spread(axes[0], "x", [r["latency_p50_ms"] for r in points]):
        axes[0].set_xlim(0, 1.12 * max(r["latency_p50_ms"] for r in points))
    if with_deviation:
        _log_if_spread(axes[1], "y", [r["deviation_mean"] for r in with_deviation])
        axes[1].margins(y=0.1)
    axes[-1].set_xlabel("p50 chunk latency (ms)")
    fig.suptitle(f"Decoding sweep: success (bars: Wilson 95%){' and action deviation' if with_deviation else ''} "
                 "vs chunk latency", fontsize=11)
    handles = [Line2D([], [], marker="o", linestyle="", color=mode_color(m), label=m)
               for m in dict.fromkeys(r["mode"] for r in points)]
    handles.append(Line2D([], [], marker="o", linestyle="", color="white", markeredgecolor="black",
                          markeredgewidth=1.5, markersize=9, label="not dominated"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9, frameon=False)
    for ax, (panel_rows, value, _) in zip(axes, panels, strict=True):  # labels last: they need the final layout
        ordered = sorted(panel_rows, key=lambda r: not r["non_dominated"])
        place_labels(ax, [(r["latency_p50_ms"], value(r), r["label"]) for r in ordered], fontsize=8, ground=True)
    return fig


def _panel(ax: Any, rows: list[dict[str, Any]], value: Any, with_bars: bool) -> None:
    """One marker per row at (p50 latency, value), with the Wilson bars when the value is the success rate."""
    from matplotlib.colors import to_rgba

    for row in rows:
        y, color, best = value(row), mode_color(row["mode"]), row["non_dominated"]
        bars = [[y - 100 * row["success_ci"][0]], [100 * row["success_ci"][1] - y]] if with_bars else None
        ax.errorbar(row["latency_p50_ms"], y, yerr=bars, fmt="o", capsize=3, color=color, ecolor=to_rgba(color, 0.35),
                    markersize=10 if best else 6, markeredgecolor="black" if best else color, markeredgewidth=1.5,
                    zorder=3 if best else 2)
    ax.grid(alpha=0.3, which="both")


def _log_if_spread(ax: Any, which: str, values: list[float]) -> bool:
    """Log scale on axis `which` when the values span more than a factor of 10."""
    if spread := min(values) > 0 and max(values) > 10 * min(values):
        _log_scale(ax, which)
    return spread
