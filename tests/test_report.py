"""Report aggregation on a hand-made episode log: exact numbers."""

from __future__ import annotations

import json
import math

import pytest

from rsd_pl.errors import RsdError
from rsd_pl.eval import report as rep


def _episode(mode: str, task_id: int, trial: int, status: str, latencies: list[float], main: int,
             draft: int = 0, proposed: list[int] | None = None, accepted: list[int] | None = None,
             suite: str = "libero_spatial") -> dict:
    return {"suite": suite, "task_id": task_id, "task_name": f"task {task_id}", "instruction": "x",
            "trial": trial, "seed": trial, "mode": mode, "success": status == "success",
            "status": status, "steps": 8 * len(latencies), "chunks": len(latencies),
            "chunk_latency_ms": latencies, "main_forwards": main, "draft_forwards": draft,
            "proposed_by_depth": proposed or [], "accepted_by_depth": accepted or [],
            "error": "Traceback ...\nRuntimeError: boom" if status == "error" else None}


EPISODES = [
    # ar: 8 main forwards per chunk; 3 episodes, one timeout
    _episode("ar", 0, 0, "success", [10.0, 20.0], main=16),
    _episode("ar", 0, 1, "timeout", [30.0, 40.0], main=16),
    _episode("ar", 1, 0, "success", [50.0], main=8),
    # speculative: same episodes; one error
    _episode("speculative", 0, 0, "success", [5.0, 7.0], main=5, draft=14,
             proposed=[0, 2, 2, 2], accepted=[0, 2, 1, 0]),
    _episode("speculative", 0, 1, "error", [9.0], main=4, draft=7,
             proposed=[0, 1, 1, 1], accepted=[0, 1, 0, 0]),
    _episode("speculative", 1, 0, "success", [4.0], main=2, draft=7,
             proposed=[0, 1, 1, 1], accepted=[0, 1, 1, 1]),
]


def _write(tmp_path, records, name=rep.EPISODES_FILE):
    with open(tmp_path / name, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def test_success_counts_per_mode_suite_task(tmp_path):
    _write(tmp_path, EPISODES)
    report = rep.build_report(rep.read_episodes(tmp_path))
    ar, spec = report["modes"]["ar"], report["modes"]["speculative"]
    assert list(report["modes"]) == ["ar", "speculative"]
    assert (ar["successes"], ar["trials"], ar["timeouts"], ar["errors"]) == (2, 3, 1, 0)
    assert (spec["successes"], spec["trials"], spec["timeouts"], spec["errors"]) == (2, 3, 0, 1)
    assert ar["success_rate"] == pytest.approx(2 / 3)
    tasks = {(t["mode"], t["task_id"]): (t["successes"], t["trials"], t["errors"]) for t in report["tasks"]}
    assert tasks == {("ar", 0): (1, 2, 0), ("ar", 1): (1, 1, 0),
                     ("speculative", 0): (1, 2, 1), ("speculative", 1): (1, 1, 0)}
    assert [(s["mode"], s["suite"], s["successes"], s["trials"]) for s in report["suites"]] == [
        ("ar", "libero_spatial", 2, 3), ("speculative", "libero_spatial", 2, 3)]
    assert report["errors"] == [{"suite": "libero_spatial", "task_id": 0, "trial": 1,
                                 "mode": "speculative", "error": ["RuntimeError: boom"]}]


def test_latency_forwards_acceptance_speedup(tmp_path):
    _write(tmp_path, EPISODES)
    report = rep.build_report(rep.read_episodes(tmp_path))
    ar, spec = report["modes"]["ar"], report["modes"]["speculative"]
    # ar chunks: 10 20 30 40 50 -> mean 30, p50 30, p95 = 40 + 0.8 * 10 = 48
    assert ar["latency_ms"] == {"mean": 30.0, "p50": 30.0, "p95": pytest.approx(48.0)}
    assert ar["chunks"] == 5 and ar["main_forwards_per_chunk"] == 40 / 5
    # speculative chunks: 4 5 7 9 -> mean 6.25, p50 6.0
    assert spec["latency_ms"]["mean"] == 6.25 and spec["latency_ms"]["p50"] == 6.0
    assert spec["main_forwards_per_chunk"] == 11 / 4 and spec["draft_forwards_per_chunk"] == 28 / 4
    assert [(d["depth"], d["proposed"], d["accepted"]) for d in spec["acceptance_by_depth"]] == [
        (2, 4, 4), (3, 4, 2), (4, 4, 1)]
    assert spec["acceptance_rate"] == 7 / 12
    assert math.isnan(ar["acceptance_rate"]) and ar["acceptance_by_depth"] == []
    assert report["speedup"]["mean_latency_ratio"] == 30.0 / 6.25
    assert report["speedup"]["p50_latency_ratio"] == 5.0


def test_write_report_files_tensorboard_and_rank_files(tmp_path, capsys):
    # half the episodes in the merged file, half left in a rank file by a killed multi-device run
    _write(tmp_path, EPISODES[:3])
    _write(tmp_path, EPISODES[3:] + EPISODES[:1], name="episodes.rank1.jsonl")
    report = rep.write_report(tmp_path, tensorboard_dir=tmp_path / "tb")
    assert report["episodes"] == 6  # the duplicate (same suite, task, trial, mode) counted once
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["modes"]["ar"]["acceptance_rate"] is None  # NaN written as null
    md = (tmp_path / "report.md").read_text()
    assert "| speculative | 2/3 (66.7%) | 0 | 1 | 4 |" in md
    assert "4.80x mean latency, 5.00x p50 latency" in md
    assert "Speedup speculative over ar" in capsys.readouterr().out
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    scalars = rep.tensorboard_scalars(report)
    assert scalars["eval/ar/success_rate"] == pytest.approx(2 / 3)
    assert scalars["eval/speculative/acceptance_depth_3"] == 0.5
    assert "eval/ar/acceptance_rate" not in scalars


def test_torn_last_line_is_dropped_other_bad_lines_raise(tmp_path):
    path = tmp_path / rep.EPISODES_FILE
    path.write_text(json.dumps(EPISODES[0]) + "\n" + '{"suite": "libero_sp')
    assert len(rep.read_jsonl(path)) == 1
    path.write_text('{"broken\n' + json.dumps(EPISODES[0]) + "\n")
    with pytest.raises(RsdError, match="episodes.jsonl:1"):
        rep.read_jsonl(path)


def test_empty_log_is_an_error(tmp_path):
    with pytest.raises(RsdError, match="no finished episodes"):
        rep.build_report(rep.read_episodes(tmp_path))
