"""benchmark-table: two settings' real eval reports (written by report.write_report) side by side."""

from __future__ import annotations

import json

import pytest

from rsd_pl.errors import RsdError
from rsd_pl.eval import benchmark_table as bt
from rsd_pl.eval import report as rep


def _episode(mode: str, task_id: int, trial: int, success: bool, latency: float) -> dict:
    return {"suite": "libero_spatial", "task_id": task_id, "task_name": f"put_bowl_{task_id}", "instruction": "x",
            "trial": trial, "seed": trial, "mode": mode, "success": success,
            "status": "success" if success else "timeout", "steps": 16, "chunks": 2,
            "chunk_latency_ms": [latency, latency + 1.0], "main_forwards": 2 if mode != "ar" else 16,
            "draft_forwards": 0, "proposed_by_depth": [], "accepted_by_depth": [], "error": None}


def _setting(root, name: str, ar_wins: list[bool], spec_wins: list[bool], spec_ms: float) -> None:
    """A setting's eval folder: tasks 0-1 x 2 trials, modes ar and speculative, report written for real."""
    out = root / name / "eval"
    out.mkdir(parents=True)
    with open(out / rep.EPISODES_FILE, "w") as f:
        for i, (a, s) in enumerate(zip(ar_wins, spec_wins, strict=True)):
            f.write(json.dumps(_episode("ar", i // 2, i % 2, a, 20.0)) + "\n")
            f.write(json.dumps(_episode("speculative", i // 2, i % 2, s, spec_ms)) + "\n")
    rep.write_report(out)


def test_two_settings_side_by_side(tmp_path, capsys):
    root = tmp_path / "libero_spatial"
    _setting(root, "images", [True, False, False, False], [False, False, False, False], spec_ms=40.0)
    _setting(root, "privileged", [True, True, True, False], [True, True, True, True], spec_ms=10.0)
    out = bt.write(root)
    text = out.read_text()
    assert (root / "benchmark.png").stat().st_size > 1000
    saved = json.loads((root / "benchmark.json").read_text())
    assert list(saved["settings"]) == ["privileged", "images"]  # benchmark.sh's order, not the folders'
    rows: dict[str, str] = {}  # first table row per label (the success table comes before the others)
    for line in text.splitlines():
        if line.startswith("| "):
            rows.setdefault(line.split(" | ")[0].lstrip("| "), line)
    # success with the Wilson interval, the paired difference from ar, p50 latency: privileged then images
    assert rows["ar"].startswith("| ar | 3/4 (75.0%, 95% CI 30.1-95.4) | reference | 20.5 | 1/4 (25.0%")
    assert "| speculative | 4/4 (100.0%, 95% CI 51.0-100.0) | +25.0 (" in rows["speculative"]
    assert "0/4 (0.0%" in rows["speculative"] and "-25.0 (" in rows["speculative"]
    # speed of speculative against ar, same run: 20.5 / 10.5 ms (privileged), 20.5 / 40.5 ms (images)
    assert rows["privileged"].startswith("| privileged | 1.95x (")
    assert rows["images"].startswith("| images | 0.51x (")
    # the settings against each other on the same episodes: ar 3/4 vs 1/4 (privileged only 2, images only 0)
    assert "## privileged against images, same episodes" in text
    assert "| ar | 4 | +50.0 (" in text and "p 0.500 | within noise |" in text
    assert saved["settings_compared"]["images"]["speculative"]["mode_only"] == 4
    # per task, per setting, every mode
    assert "## Per task: privileged" in text and "## Per task: images" in text
    assert "| 1 put bowl 1 | 1/2 (9-91) | 2/2 (34-100) |" in text


def test_missing_reports_are_named(tmp_path):
    with pytest.raises(RsdError, match="no such folder"):
        bt.write(tmp_path / "nowhere")
    (tmp_path / "libero_goal" / "privileged" / "eval").mkdir(parents=True)
    with pytest.raises(RsdError, match="run the settings' eval first"):
        bt.write(tmp_path / "libero_goal")
    (tmp_path / "libero_goal" / "privileged" / "eval" / "report.json").write_text("{\"episodes\": 3}")
    with pytest.raises(RsdError, match="not an eval report"):
        bt.write(tmp_path / "libero_goal")
