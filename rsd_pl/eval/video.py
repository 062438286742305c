"""Rollout videos: mp4 with the instruction and the outcome drawn on every frame.

Imports: imageio / PIL only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# outcome status -> RGB colour of the outcome text
STATUS_COLOURS = {"success": (40, 200, 40), "timeout": (230, 60, 40), "error": (230, 160, 0)}
MIN_SIDE = 256  # frames are upscaled to at least this side so the text is readable


def annotate(frame: np.ndarray, instruction: str, outcome: str, status: str) -> np.ndarray:
    """Upscale a uint8 [h, w, 3] frame and draw the instruction on top, the outcome at the bottom."""
    import cv2

    scale = max(1, -(-MIN_SIDE // frame.shape[0]))
    frame = cv2.resize(frame, (frame.shape[1] * scale, frame.shape[0] * scale),
                       interpolation=cv2.INTER_NEAREST)
    height, width = frame.shape[:2]
    lines = fit_lines(instruction, width - 8, scale=0.45)
    banner = 8 + 16 * len(lines)
    footer_lines = fit_lines(outcome, width - 8, scale=0.45, max_lines=2)
    canvas = np.zeros((height + banner + 8 + 16 * len(footer_lines), width, 3), dtype=np.uint8)  # (h', w, 3)
    canvas[banner:banner + height] = frame
    for i, line in enumerate(lines):
        cv2.putText(canvas, line, (4, 16 + 16 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (255, 255, 255), 1, cv2.LINE_AA)
    for i, line in enumerate(footer_lines):
        cv2.putText(canvas, line, (4, banner + height + 16 + 16 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    STATUS_COLOURS.get(status, (255, 255, 255)), 1, cv2.LINE_AA)
    return canvas


def fit_lines(text: str, max_width: int, scale: float, max_lines: int = 4) -> list[str]:
    """Greedy word wrap by the rendered width of OpenCV's font (pixels), so no line runs off the frame;
    a word too long for a line, or text beyond max_lines, is cut with an ellipsis."""
    import cv2

    def width(line: str) -> int:
        return cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]

    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and width(candidate) <= max_width:
            lines[-1] = candidate
        else:
            lines.append(word)
    lines = lines or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] += " ..."
    for i, line in enumerate(lines):
        while width(line) > max_width and len(line) > 4:
            line = line[:-4] + "..."
        lines[i] = line
    return lines


def write_video(path: str | Path, frames: list[np.ndarray], instruction: str, outcome: str,
                status: str, fps: int = 20) -> Path:
    """Write uint8 [h, w, 3] frames as an H.264 mp4 with the instruction and outcome drawn on them."""
    import imageio.v2 as imageio

    if not frames:
        raise ValueError(f"no frames to write to {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    annotated = [annotate(frame, instruction, outcome, status) for frame in frames]
    # yuv420p needs even sides: crop one pixel row / column when odd; macro_block_size=1 stops resizing
    height, width = annotated[0].shape[:2]
    annotated = [f[: height - height % 2, : width - width % 2] for f in annotated]
    imageio.mimwrite(path, annotated, fps=fps, codec="libx264", macro_block_size=1,
                     quality=7, pixelformat="yuv420p")
    return path
