"""The one label placer of the scatter plots (eval's success vs latency, the sweep's trade-off).

Each label goes at the first of `OFFSETS` from its point that keeps it inside the axes and clear of the markers,
the error bars and the labels placed before it (text extents measured by matplotlib after the final layout);
else clear of the markers and labels only; else at the first offset. A leader line joins a label moved off its
point's height. Hand-written: matplotlib places annotations where told and has no overlap avoidance, and
adjustText (iterative repulsion) is not a dependency.
"""

from __future__ import annotations

from typing import Any

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) pixels

OFFSETS = [(dx, sign * 12 * step) for step in range(9) for sign in (1, -1) for dx in (7, -7)][2:]
"""(dx, dy) offsets of a label from its point, in points, tried in order: beside it, then stacked above / below."""


def place_labels(ax: Any, points: list[tuple[float, float, str]], bars: list[tuple[float, float]] | None = None,
                 fontsize: float = 9, ground: bool = False) -> None:
    """Label each point (x, y, text), in the order given (the most important first). `bars`: each point's
    error bar (low, high) in data units, kept clear when possible; `ground`: a white box behind each label."""
    fig = ax.get_figure()
    fig.draw_without_rendering()  # final layout and limits, so data -> pixel transforms are right
    px = fig.dpi / 72  # pixels per point
    centres = ax.transData.transform([(x, y) for x, y, _ in points])  # (N, 2) pixels
    markers: list[Box] = [(cx - 7, cy - 7, cx + 7, cy + 7) for cx, cy in centres]
    bar_boxes: list[Box] = []
    for (x, _, _), (low, high) in zip(points, bars or [], strict=False):
        (x0, y0), (x1, y1) = ax.transData.transform([(x, low), (x, high)])
        bar_boxes.append((x0 - 6 * px, y0, x1 + 6 * px, y1))
    labels: list[Box] = []
    for (x, y, text), centre in zip(points, centres, strict=True):
        probe = ax.text(0, 0, text, fontsize=fontsize)
        size = probe.get_window_extent().size + 4  # (w, h) pixels, with a margin
        probe.remove()
        candidates = [(offset, _box(centre, size, offset, px)) for offset in OFFSETS]
        (dx, dy), box = next((c for c in candidates if _clear(ax, c[1], labels + markers + bar_boxes)),
                             next((c for c in candidates if _clear(ax, c[1], labels + markers)), candidates[0]))
        labels.append(box)
        ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha="left" if dx > 0 else "right",
                    va="center", fontsize=fontsize,
                    bbox={"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 0.5} if ground else None,
                    arrowprops={"arrowstyle": "-", "color": "0.4", "lw": 0.6, "shrinkB": 5} if dy else None)


def _box(centre: Any, size: Any, offset: tuple[float, float], px: float) -> Box:
    """Pixel box of a text of `size` (w, h) placed `offset` points from `centre`, left- or right-aligned."""
    dx, dy = offset
    x0 = centre[0] + dx * px - (size[0] if dx < 0 else 0)
    y = centre[1] + dy * px
    return (x0, y - size[1] / 2, x0 + size[0], y + size[1] / 2)


def _clear(ax: Any, box: Box, obstacles: list[Box]) -> bool:
    inside = ax.bbox.x0 <= box[0] and box[2] <= ax.bbox.x1 and ax.bbox.y0 <= box[1] and box[3] <= ax.bbox.y1
    return inside and all(box[2] < b[0] or b[2] < box[0] or box[3] < b[1] or b[3] < box[1] for b in obstacles)
