"""Report aggregation on a hand-made episode log: exact numbers."""

from __future__ import annotations

import json
import math

import numpy as np
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


# --- statistics, eval_info, plots ----------------------------------------------------------------

SPATIAL = ["pick up the black bowl between the plate and the ramekin and place it on the plate",
           "pick up the black bowl next to the ramekin and place it on the plate",
           "pick up the black bowl from table center and place it on the plate",
           "pick up the black bowl on the cookie box and place it on the plate",
           "pick up the black bowl in the top drawer of the wooden cabinet and place it on the plate"]
OBJECT = ["pick up the alphabet soup and place it in the basket", "pick up the cream cheese and place it in the basket",
          "pick up the salad dressing and place it in the basket"]
# mode -> (success probability offset, median chunk latency ms, main forwards per chunk)
REALISTIC_MODES = {"l1": (-0.25, 9.0, 1), "parallel": (-0.1, 14.0, 2), "ar": (0.0, 62.0, 8),
                   "ar_exit": (-0.02, 31.0, 4), "speculative": (0.02, 44.0, 3)}


def _decoding(mode: str) -> dict:
    return {"mode": mode, "acceptance": "relaxed", "draft_len": [1, 7], "tau": 0.05, "temperature": 0.0,
            "early_exit_bound": None, "exit_bound": 0.05, "seed": 0}


def realistic_log(trials: int = 8, seed: int = 0, modes: dict | None = None) -> list[dict]:
    """8 tasks (2 suites) x `trials` x modes with task-dependent success and lognormal latencies."""
    rng = np.random.default_rng(seed)
    records = []
    tasks = [("libero_spatial", i, name) for i, name in enumerate(SPATIAL)]
    tasks += [("libero_object", i, name) for i, name in enumerate(OBJECT)]
    for (suite, task_id, name), base in zip(tasks, rng.uniform(0.2, 0.95, len(tasks)), strict=True):
        for trial in range(trials):
            luck = rng.uniform()  # shared by the modes (outcomes correlate as on real episodes), plus own noise
            for mode, (offset, median_ms, main) in (modes or REALISTIC_MODES).items():
                success = luck + 0.1 * rng.normal() < base + offset
                chunks = int(rng.integers(12, 20)) if success else 35
                proposed = [0, 2 * chunks, 2 * chunks, 2 * chunks] if mode == "speculative" else []
                accepted = [0, int(1.7 * chunks), int(1.1 * chunks), int(0.5 * chunks)] if proposed else []
                record = _episode(mode, task_id, trial, "success" if success else "timeout",
                                  list(np.round(rng.lognormal(np.log(median_ms), 0.25, chunks), 3)), main=main * chunks,
                                  draft=3 * chunks if proposed else 0, proposed=proposed, accepted=accepted,
                                  suite=suite)
                records.append({**record, "task_name": name.replace(" ", "_"), "instruction": name,
                                "seed": 1000 * task_id + trial, "wall_s": round(0.3 * chunks, 3),
                                "decoding": _decoding(mode)})
    return records


def test_success_intervals_and_paired_columns(tmp_path):
    _write(tmp_path, EPISODES)
    report = rep.write_report(tmp_path)
    ar, spec = report["modes"]["ar"], report["modes"]["speculative"]
    assert ar["success_ci"] == pytest.approx([0.20765, 0.93851], abs=1e-5)  # Wilson 2/3
    assert report["tasks"][1]["success_ci"] == pytest.approx([0.20654, 1.0], abs=1e-5)  # ar task 1: 1/1
    paired = report["paired"]["modes"]["speculative"]
    # trial (0,0) both succeed, (0,1) both fail (timeout / error), (1,0) both succeed
    assert (paired["episodes"], paired["both"], paired["neither"], paired["mode_only"], paired["reference_only"]) == (
        3, 2, 1, 0, 0)
    assert paired["difference"] == 0.0 and paired["p_value"] == 1.0 and paired["verdict"] == "within noise"
    md = (tmp_path / "report.md").read_text()
    assert "| speculative | 2/3 (66.7%, 95% CI 20.8-93.9) | 3 | +0.0 (" in md
    assert "| 0 / 0 | 1.000 | within noise |" in md and "| ar | 2/3 (66.7%, 95% CI 20.8-93.9) | reference |" in md
    assert spec["success_ci"] == ar["success_ci"]


def test_missing_reference_mode_is_reported_not_fatal(tmp_path):
    _write(tmp_path, EPISODES)
    report = rep.write_report(tmp_path, reference_mode="ar_exit")
    assert report["paired"]["reference_present"] is False and report["paired"]["modes"] == {}
    md = (tmp_path / "report.md").read_text()
    assert "Note: reference mode 'ar_exit' is not in this run (modes: ar, speculative)" in md
    assert "McNemar" not in md
    info = json.loads((tmp_path / "eval_info.json").read_text())
    assert info["mode"] == "ar"  # the first mode stands in at the top level
    with pytest.raises(RsdError, match="reference mode 'arr'"):
        rep.build_report(EPISODES, reference_mode="arr")


def test_speedup_table_against_each_baseline(tmp_path):
    records = realistic_log(trials=4)
    report = rep.build_report(records)
    rows = {row["slow"]: row for row in report["speedups"]}
    assert list(rows) == ["ar", "ar_exit", "parallel"] and all(r["episodes"] == 32 for r in rows.values())
    # all episodes are paired here, so the bootstrap point equals the all-episode ratio of the old key
    assert rows["ar"]["mean_latency_ratio"] == pytest.approx(report["speedup"]["mean_latency_ratio"])
    assert rows["ar"]["p50_latency_ratio"] == pytest.approx(report["speedup"]["p50_latency_ratio"])
    for row in rows.values():
        for stat in ("mean", "p50"):
            low, high = row[f"{stat}_ci"]
            assert low < row[f"{stat}_latency_ratio"] < high
    assert 1.2 < rows["ar"]["p50_latency_ratio"] < 1.6 and rows["parallel"]["p50_latency_ratio"] < 0.45
    assert rows["ar_exit"]["p50_ci"][1] < 1.0  # ar_exit is faster than speculative in this log
    md = rep.markdown(report)
    assert "## Speedup of speculative" in md and "| ar_exit | 32 | " in md
    scalars = rep.tensorboard_scalars(report)
    assert scalars["eval/speculative/speedup_over_ar_exit_p50"] == pytest.approx(rows["ar_exit"]["p50_latency_ratio"])
    low = scalars["eval/speculative/speedup_over_parallel_mean_ci_low"]
    assert low == pytest.approx(rows["parallel"]["mean_ci"][0])
    assert scalars["eval/ar/success_ci_high"] == pytest.approx(report["modes"]["ar"]["success_ci"][1])
    assert scalars["eval/l1/success_diff_vs_ar"] == pytest.approx(report["paired"]["modes"]["l1"]["difference"])


def test_speedups_pair_only_episodes_of_the_same_run():
    """A redone mode's episodes ran in another process, under other load: they are left out of the speed pairing
    (and counted), while success still pairs them; logs without `run` pair as before."""
    records = realistic_log(trials=4)
    speculative_episodes = sum(r["mode"] == "speculative" for r in records)
    first = [{**r, "run": "2026-12-06T08:00:00-1"} for r in records]
    redone = [{**r, "run": "2026-12-06T09:00:00-2", "chunk_latency_ms": [3 * x for x in r["chunk_latency_ms"]]}
              if r["mode"] == "speculative" and r["trial"] >= 2 else r for r in first]
    rows = {row["slow"]: row for row in rep.build_report(redone)["speedups"]}
    assert rows["ar_exit"]["episodes"] == speculative_episodes // 2
    assert rows["ar_exit"]["other_run_episodes"] == speculative_episodes // 2
    same_run = [r for r in first if r["trial"] < 2]
    expected = {row["slow"]: row for row in rep.build_report(same_run)["speedups"]}
    assert rows["ar_exit"]["p50_latency_ratio"] == pytest.approx(expected["ar_exit"]["p50_latency_ratio"])
    md = rep.markdown(rep.build_report(redone))
    assert f"Left out: episodes the two modes ran in different runs (a resumed or redone log), " \
           f"{speculative_episodes // 2} against ar, " in md
    legacy = {row["slow"]: row for row in rep.build_report(records)["speedups"]}  # no `run`: every pair
    assert legacy["ar_exit"]["episodes"] == speculative_episodes and legacy["ar_exit"]["other_run_episodes"] == 0
    assert rep.build_report(redone)["paired"]["modes"]["speculative"]["episodes"] == speculative_episodes


def test_eval_info_is_lerobot_shaped(tmp_path):
    records = realistic_log(trials=4)
    _write(tmp_path, records)
    rep.write_report(tmp_path)
    with open(tmp_path / "eval_info.json") as f:
        info = json.load(f)
    assert info["mode"] == "ar" and info["per_episode"] == info["per_mode"]["ar"]["per_episode"]
    assert info["overall"] == info["aggregated"] and info["per_group"] == info["per_mode"]["ar"]["per_group"]
    assert list(info["per_mode"]) == ["l1", "parallel", "ar", "ar_exit", "speculative"]
    ar_records = sorted((r for r in records if r["mode"] == "ar"), key=lambda r: (r["suite"], r["task_id"], r["trial"]))
    successes = sum(r["success"] for r in ar_records)
    aggregated = info["aggregated"]
    assert aggregated["n_episodes"] == 32 and aggregated["pc_success"] == pytest.approx(100 * successes / 32)
    assert aggregated["eval_s"] == pytest.approx(sum(r["wall_s"] for r in ar_records))
    assert aggregated["eval_ep_s"] == pytest.approx(aggregated["eval_s"] / 32)
    low, high = rep.wilson_interval(successes, 32)
    assert (aggregated["pc_success_ci_low"], aggregated["pc_success_ci_high"]) == pytest.approx((100 * low, 100 * high))
    first = info["per_episode"][0]
    assert first == {"episode_ix": 0, "success": ar_records[0]["success"],
                     "sum_reward": float(ar_records[0]["success"]), "max_reward": float(ar_records[0]["success"]),
                     "seed": ar_records[0]["seed"], "task_group": "libero_object", "task_id": 0, "task": OBJECT[0],
                     "trial": 0, "mode": "ar", "status": ar_records[0]["status"], "steps": ar_records[0]["steps"],
                     "eval_s": ar_records[0]["wall_s"], "video_path": ar_records[0].get("video")}
    assert [e["episode_ix"] for e in info["per_episode"]] == list(range(32))
    assert info["per_mode"]["ar"]["per_group"]["libero_object"]["n_episodes"] == 12


def test_eval_info_has_lerobots_multi_task_keys_agreeing_with_the_episode_log(tmp_path):
    """lerobot-eval's multi-task layout (per_task / per_group / overall), at the top for the reference mode and
    in eval_info_<mode>.json for each mode; per_task's per-episode lists agree with episodes.jsonl."""
    records = realistic_log(trials=3)
    for r in records:  # two recorded videos per (task, mode), as videos_per_task 2 writes them
        r["video"] = f"videos/{r['suite']}_task{r['task_id']:02d}_trial{r['trial']:02d}_{r['mode']}.mp4" \
            if r["trial"] < 2 else None
    _write(tmp_path, records)
    rep.write_report(tmp_path)
    top = json.loads((tmp_path / "eval_info.json").read_text())
    for mode in ("l1", "parallel", "ar", "ar_exit", "speculative"):
        info = json.loads((tmp_path / f"eval_info_{mode}.json").read_text())
        assert info == top["per_mode"][mode] and info["mode"] == mode
        assert {"per_task", "per_group", "overall"} <= set(info)
        mine = sorted((r for r in records if r["mode"] == mode), key=lambda r: (r["suite"], r["task_id"], r["trial"]))
        tasks = sorted({(r["suite"], r["task_id"]) for r in mine})
        assert [(t["task_group"], t["task_id"]) for t in info["per_task"]] == tasks
        for task in info["per_task"]:
            log = [r for r in mine if (r["suite"], r["task_id"]) == (task["task_group"], task["task_id"])]
            metrics = task["metrics"]
            assert set(metrics) == {"sum_rewards", "max_rewards", "successes", "video_paths"}
            assert metrics["successes"] == [r["status"] == "success" for r in log]
            assert metrics["sum_rewards"] == metrics["max_rewards"] == [float(r["status"] == "success") for r in log]
            assert metrics["video_paths"] == [r["video"] for r in log if r["video"]]
            assert len(metrics["video_paths"]) == 2
        for suite, group in info["per_group"].items():
            log = [r for r in mine if r["suite"] == suite]
            assert group["n_episodes"] == len(log) > 0
            assert group["pc_success"] == pytest.approx(100 * np.mean([r["status"] == "success" for r in log]))
            assert {"avg_sum_reward", "avg_max_reward", "video_paths"} <= set(group)
        overall = info["overall"]
        assert overall["n_episodes"] == len(mine) and {"eval_s", "eval_ep_s", "video_paths"} <= set(overall)
        assert overall["pc_success"] == pytest.approx(100 * np.mean([r["status"] == "success" for r in mine]))
    assert top["mode"] == "ar" and top["per_task"] == top["per_mode"]["ar"]["per_task"]


def test_plots_written_linked_and_logged(tmp_path):
    _write(tmp_path, realistic_log())
    rep.write_report(tmp_path, tensorboard_dir=tmp_path / "tb")
    names = ["success_vs_latency.png", "acceptance_by_depth.png", "task_success.png", "chunk_latency.png"]
    md = (tmp_path / "report.md").read_text()
    for name in names:
        png = (tmp_path / "plots" / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
        assert f"](plots/{name})" in md
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0}).Reload()
    assert sorted(events.Tags()["images"]) == sorted(f"eval/plots/{name[:-4]}" for name in names)
    assert "eval/speculative/success_ci_low" in events.Tags()["scalars"]


def test_acceptance_plot_skipped_without_a_draft(tmp_path):
    _write(tmp_path, [r for r in realistic_log(trials=2) if r["mode"] in ("ar", "ar_exit")])
    report = rep.write_report(tmp_path)
    assert not (tmp_path / "plots" / "acceptance_by_depth.png").exists()
    assert "acceptance by draft depth" not in report["plots"] and report["speedups"] == []
    assert (tmp_path / "plots" / "success_vs_latency.png").is_file()


def test_trade_off_labels_do_not_overlap_when_points_crowd():
    """oft far right (log axis); speculative next to ar, its right side taken by ar's bar and label."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from rsd_pl.eval import plots

    modes = {"oft": (0.05, 140.0, 1), "l1": (-0.05, 9.0, 1), "parallel": (-0.03, 10.5, 2), "ar": (0.0, 60.0, 8),
             "ar_exit": (0.0, 31.0, 4), "speculative": (0.02, 52.0, 3)}
    records = realistic_log(trials=3, seed=5, modes=modes)
    fig = plots.success_vs_latency(rep.build_report(records), records)
    renderer = FigureCanvasAgg(fig).get_renderer()
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and len(ax.texts) == 6
    boxes = [text.get_window_extent(renderer) for text in ax.texts]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert all(ax.bbox.contains(*box.p0) and ax.bbox.contains(*box.p1) for box in boxes)  # inside the axes


def test_report_on_errors_without_chunks(tmp_path):
    records = [_episode(mode, 0, trial, "error", [], main=0) for mode in ("ar", "speculative") for trial in (0, 1)]
    _write(tmp_path, records)
    report = rep.write_report(tmp_path, tensorboard_dir=tmp_path / "tb")
    assert report["modes"]["ar"]["success_ci"][0] == 0.0 and report["speedups"][0]["episodes"] == 2
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["task_success.png"]
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["speedups"][0]["mean_latency_ratio"] is None  # no latency: NaN written as null
    info = json.loads((tmp_path / "eval_info.json").read_text())
    assert info["aggregated"]["pc_success"] == 0.0 and info["aggregated"]["eval_s"] == 0.0
