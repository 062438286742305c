"""Rollout videos: an mp4 that reads back with the right frame count, text drawn on the frames."""

from __future__ import annotations

import numpy as np
import pytest

from rsd_pl.eval.video import annotate, write_video


def test_write_video_reads_back(tmp_path):
    import imageio.v2 as imageio

    frames = [np.full((64, 128, 3), 10 * i, dtype=np.uint8) for i in range(6)]
    path = write_video(tmp_path / "v" / "ep.mp4", frames, "put the bowl on the plate", "ar: success",
                       "success")
    video = imageio.mimread(path)
    assert len(video) == 6
    assert video[0].shape[1] == 512 and video[0].shape[0] % 2 == 0  # upscaled to >= 256 px high


def test_annotate_draws_instruction_and_outcome():
    frame = np.zeros((32, 32, 3), dtype=np.uint8)
    out = annotate(frame, "pick up the black bowl", "speculative: timeout after 220 steps", "timeout")
    banner, footer = out[:20], out[-24:]
    assert banner.min(axis=-1).max() > 200  # white (anti-aliased) instruction text
    assert footer[..., 0].max() > footer[..., 1].max()  # red outcome text for a failure


def test_no_frames_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no frames"):
        write_video(tmp_path / "x.mp4", [], "i", "o", "error")


def test_text_fits_the_frame():
    """Every wrapped line of a long instruction, and the outcome, stays inside the frame's width."""
    import cv2

    from rsd_pl.eval.video import fit_lines

    text = "put the white mug on the left plate and put the yellow and white mug on the right plate"
    lines = fit_lines(text, 248, scale=0.45)
    assert len(lines) >= 2 and " ".join(lines).replace(" ...", "").startswith("put the white mug")
    assert all(cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)[0][0] <= 248 for line in lines)
    assert fit_lines("x" * 300, 100, scale=0.5)[0].endswith("...")
    frame = np.zeros((128, 256, 3), dtype=np.uint8)
    out = annotate(frame, text, "speculative: timeout after 220 steps", "timeout")
    assert out.shape[1] == 256 * 2 and out.shape[0] > 2 * 128  # 128 px cameras upscaled to >= 256 high
