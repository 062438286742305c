"""`python -m rsd_pl sweep`: checks before anything runs, grid expansion and run plan, Pareto selection,
aggregation from hand-made episode logs, and one real resumable sweep on LIBERO."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_eval_loop import _tiny_registry

from rsd_pl.eval import session as eval_session
from rsd_pl.eval import sweep
from rsd_pl.eval.config import DecodingConfig, EvalConfig, decoding_for
from rsd_pl.eval.report import EPISODES_FILE

ROOT = Path(__file__).parent.parent


def _cfg(tmp_path, grid=None, eval_overrides=None, **overrides) -> sweep.SweepConfig:
    base = {"registry": str(tmp_path / "checkpoints"), "main": "main@1", "draft": "draft@1", "tasks": "0",
            "num_trials": 2, "max_steps": 5, "videos_per_task": 0, "progress_bar": False, "accelerator": "cpu"}
    eval_cfg = EvalConfig(**{**base, **(eval_overrides or {})})
    eval_cfg.decoding.acceptance = "relaxed"
    fields = {"eval": eval_cfg, "grid": {"tau": [0.02, 0.1]} if grid is None else grid, "modes": ["speculative"],
              "baseline_modes": ["ar"], "out": str(tmp_path / "sweep")}
    return sweep.SweepConfig(**{**fields, **overrides})


@pytest.mark.parametrize("overrides, message", [
    ({"grid": {"taus": [0.1]}}, "grid key 'taus' is not a decoding key"),
    ({"grid": {"tau": []}}, r"grid.tau=\[\]: must be a non-empty list"),
    ({"grid": {}}, "grid and points are empty"),
    ({"grid": {}, "points": [{"beam": 2}]}, r"points\[1\]: key 'beam' is not a decoding key"),
    ({"grid": {}, "points": [{}]}, r"points\[1\]=\{\}: must be a non-empty mapping"),
    ({"grid": {}, "points": [{"draft_source": "oracle"}]}, "point 1/1 .*draft_source='oracle' is not one of"),
    ({"grid": {"tau": [0.1, 0.1]}}, "listed twice"),
    ({"grid": {"tau": ["high"]}}, "grid.tau: 'high' is not a number"),
    ({"modes": ["speculative", "beam"]}, "modes=.*unknown mode 'beam'"),
    ({"baseline_modes": ["ar", "greedy"]}, "baseline_modes=.*unknown mode 'greedy'"),
    ({"modes": []}, r"modes=\[\]: empty"),
    ({"grid": {"temperature": [0.0, 0.5]}}, r"point 2/2 \(temperature0.5\): decoding.acceptance='relaxed' compares"),
    ({"grid": {"tau": [-1.0]}}, "decoding.tau=-1.0 must be >= 0"),
    ({"grid": {"exit_bound": [0.02, 0.1]}}, "grid key 'exit_bound' changes none of modes=\\['speculative'\\]"),
    ({"eval": EvalConfig(draft=None)}, "speculative, which needs a draft"),
])
def test_bad_sweep_is_refused_before_anything_runs(tmp_path, overrides, message):
    with pytest.raises(sweep.RsdError, match=message):
        sweep.plan(_cfg(tmp_path, **overrides))


def test_cli_refuses_bad_grid_before_loading_models(tmp_path, monkeypatch, capsys):
    from rsd_pl.__main__ import main as cli

    def no_loading(cfg):
        raise AssertionError("models loaded before the sweep was checked")

    monkeypatch.setattr(eval_session, "load_models", no_loading)
    out = tmp_path / "sweep"
    assert cli(["sweep", "--config", str(ROOT / "configs/quickstart/sweep.yaml"), "--out", str(out),
                "--grid", "{tau: [0.1], beam_width: [2]}"]) == 1
    assert "grid key 'beam_width' is not a decoding key" in capsys.readouterr().err
    assert cli(["sweep", "--config", str(ROOT / "configs/quickstart/sweep.yaml"), "--out", str(out),
                "--grid", "{temperature: [0.7]}"]) == 1  # relaxed acceptance is greedy only
    assert "needs decoding.temperature=0 (got 0.7)" in capsys.readouterr().err
    assert not out.exists()


def test_point_names_and_grid_expansion():
    assert sweep.point_name({"tau": 0.05, "draft_len": [1, 7]}) == "tau0.05_draft_len1-7"
    assert sweep.point_name({"early_exit_bound": None, "acceptance": "exact"}) == "early_exit_boundnone_acceptanceexact"
    points = sweep.expand_grid({"tau": [0.02, 0.1], "draft_len": [[1, 7], [7], 3]})
    assert len(points) == 6 and points[:2] == [{"tau": 0.02, "draft_len": [1, 7]}, {"tau": 0.02, "draft_len": [7]}]
    assert points[-1] == {"tau": 0.1, "draft_len": 3}


def test_quickstart_sweep_plans_each_setting_once():
    """24 points; speculative runs once per (tau, draft_len), ar_exit once per exit_bound: 11 runs + baseline."""
    shipped = sweep.plan(sweep.parse_config(["--config", str(ROOT / "configs/quickstart/sweep.yaml")]))
    assert len(shipped) == 1 + 9 + 5 and sum(len(r.cfg.modes) for r in shipped if r.cfg is not None) == 2 + 3 + 3 + 5
    variant = shipped[-1]  # the last extra point: lossless self-speculation with early exit
    assert variant.cfg.modes == ["speculative"] and variant.point == {
        "draft_source": "parallel", "acceptance": "exact", "early_exit_bound": 0.05}
    assert decoding_for(variant.cfg, "speculative").draft_len == [1, 7]  # the base setting it did not change
    grid = "{tau: [0.02, 0.05, 0.1, 0.2], draft_len: [[1, 7], [7]], exit_bound: [0.02, 0.05, 0.1]}"
    cfg = sweep.parse_config(["--config", str(ROOT / "configs/quickstart/sweep.yaml"), "--grid", grid,
                              "--points", "[]"])
    runs = sweep.plan(cfg)
    assert [r.title for r in runs][:3] == ["baseline", "point 1/24", "point 2/24"] and len(runs) == 25
    ran = {r.title: r.cfg.modes for r in runs if r.cfg is not None}
    assert ran["baseline"] == ["ar", "parallel"] and ran["point 1/24"] == ["speculative", "ar_exit"]
    assert ran["point 2/24"] == ["ar_exit"] and ran["point 4/24"] == ["speculative"]
    assert sum(map(len, ran.values())) == 2 + 8 + 3 and len(ran) == 11
    assert runs[5].cfg is None and runs[5].earlier == {"speculative": "point 4/24", "ar_exit": "point 2/24"}
    point = runs[4]  # tau 0.02, draft_len [7], exit_bound 0.02
    assert point.cfg.out == "runs/quickstart/sweep/tau0.02_draft_len7_exit_bound0.02"
    assert point.cfg.decoding.draft_len == [7] and point.cfg.decoding.tau == 0.02
    assert point.cfg.reference_mode == "speculative" and runs[0].cfg.reference_mode == "ar"
    assert (point.cfg.num_trials, point.cfg.tasks, point.cfg.camera_size) == (8, "0,1", 64)
    assert "sweep: point 4/24 tau=0.02 draft_len=[7] exit_bound=0.02: [speculative] -> " in sweep._progress(point)
    assert sweep._progress(runs[5]).endswith("nothing new (speculative as in point 4/24; ar_exit as in point 2/24)")


def _row(latency, success, deviation=math.nan):
    return {"latency_p50_ms": latency, "success_rate": success, "deviation_mean": deviation}


def test_pareto_selection_on_hand_made_rows():
    rows = [_row(10, 0.8), _row(20, 0.8), _row(5, 0.5), _row(30, 0.9), _row(10, 0.8),  # 1: slower, same success
            _row(32, 0.95, 0.01), _row(31, 0.95, 0.05), _row(33, 0.95, 0.02), _row(math.nan, 1.0)]
    assert sweep.non_dominated(rows) == [True, False, True, True, True, True, True, False, False]
    assert sweep.dominates(rows[0], rows[1]) and not sweep.dominates(rows[0], rows[4])  # a tie dominates nothing
    assert sweep.dominates(_row(10, 0.8), _row(11, 0.8, 0.0))  # deviation is compared only when both carry one
    assert sweep.dominates(rows[5], rows[7]) and not sweep.dominates(rows[6], rows[5])


def _episode(mode, trial, status, latencies, main, decoding, deviation=None):
    record = {"suite": "libero_spatial", "task_id": 0, "task_name": "task 0", "instruction": "x", "trial": trial,
              "seed": 7 + trial, "mode": mode, "success": status == "success", "status": status,
              "steps": 8 * len(latencies), "chunks": len(latencies), "chunk_latency_ms": latencies,
              "main_forwards": main, "draft_forwards": 0, "decoding": decoding}
    return record if deviation is None else {**record, "deviation_mean": deviation}


PROFILES = {"ar": ([20.0, 20.0], 8, ["success", "timeout"], None), "parallel": ([25.0], 1, ["timeout"] * 2, 0.3),
            0.02: ([8.0, 12.0], 3, ["success", "success"], 0.02), 0.1: ([5.0, 5.0], 2, ["timeout", "success"], 0.1)}
"""Baselines by mode, points by tau: chunk latencies of each episode, main forwards per chunk, statuses of trials
0 and 1, deviation scale (trial t deviates by scale * (t + 1))."""


def _write_logs(runs, deviations=True) -> None:
    """One episode log per run folder, trials 0-1 and a stray trial 5 that is not in the sweep."""
    for run in runs:
        records = []
        for mode in run.cfg.modes:
            latencies, main, statuses, scale = PROFILES[mode if run.title == "baseline" else run.point["tau"]]
            decoding = decoding_for(run.cfg, mode).to_dict()
            records += [_episode(mode, t, s, latencies, main * len(latencies), decoding,
                                 scale * (t + 1) if deviations and scale else None)
                        for t, s in [*enumerate(statuses), (5, "success")]]
        Path(run.cfg.out).mkdir(parents=True)
        (Path(run.cfg.out) / EPISODES_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))


def test_aggregation_table_and_plot_from_episode_logs(tmp_path):
    cfg = _cfg(tmp_path, baseline_modes=["ar", "parallel"])
    runs = sweep.plan(cfg)
    _write_logs(runs)
    result = sweep.write_sweep(cfg, runs)
    rows = {r["setting"]: r for r in result["rows"]}
    assert list(rows) == ["parallel (baseline)", "ar (baseline)", "speculative tau=0.02", "speculative tau=0.1"]
    parallel, ar, slow, fast = rows.values()
    assert (ar["successes"], ar["trials"], slow["successes"], fast["successes"]) == (1, 2, 2, 1)
    assert slow["success_ci"] == pytest.approx([0.342, 1.0], abs=1e-3)  # Wilson 95% for 2/2
    assert (slow["latency_p50_ms"], slow["latency_mean_ms"], slow["main_forwards_per_chunk"]) == (10.0, 10.0, 3.0)
    assert slow["speedup_vs_ar_p50"] == 2.0 and fast["speedup_vs_ar_mean"] == 4.0 and ar["speedup_vs_ar_p50"] == 1.0
    assert slow["deviation_mean"] == pytest.approx(0.03) and fast["deviation_mean"] == pytest.approx(0.15)
    assert ar["deviation_mean"] == 0.0  # eval.deviation_reference (ar) against itself, greedy
    # parallel is slower than ar, never succeeds and deviates: dominated; ar is the only row at deviation 0
    assert [r["non_dominated"] for r in rows.values()] == [False, True, True, True]
    saved = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert saved["non_dominated"] == ["ar (baseline)", "speculative tau=0.02", "speculative tau=0.1"]
    assert saved["rows"][0]["success_rate"] == 0.0 and saved["episodes"]["per_row"] == 2
    text = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "| **speculative tau=0.02** | 2/2 (100.0%, 34.2-100.0) | 10.0 | 10.0 | 3.00 | 0.0300 | 2.00x |" in text
    assert "| **ar (baseline)** | 1/2 (50.0%, 9.5-90.5) | 20.0 | 20.0 | 8.00 | 0.0000 | 1.00x | `baseline` |" in text
    assert "| parallel (baseline) | 0/2 (0.0%, 0.0-65.8) | 25.0 | 25.0 | 1.00 | 0.4500 | 0.80x | `baseline` |" in text
    assert "![success and deviation vs p50 chunk latency](plots/sweep_tradeoff.png)" in text
    assert (tmp_path / "sweep" / sweep.PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_deviation_and_without_ar_baseline(tmp_path):
    cfg = _cfg(tmp_path)
    runs = sweep.plan(cfg)
    _write_logs(runs, deviations=False)
    figure = sweep.tradeoff_figure(sweep.collect_rows(runs))
    assert len(figure.axes) == 1  # no deviation panel
    rows = sweep.collect_rows(runs[1:])  # no ar baseline: no ratio
    assert all(math.isnan(r["speedup_vs_ar_p50"]) for r in rows)
    assert sweep.tradeoff_figure([]) is None


def test_resume_refuses_episodes_logged_with_other_settings(tmp_path):
    runs = sweep.plan(_cfg(tmp_path))
    _write_logs(runs)
    for run in runs:
        sweep.check_logged_settings(run)
    runs = sweep.plan(_cfg(tmp_path, eval_overrides={"decoding": DecodingConfig(acceptance="relaxed",
                                                                                     draft_len=[1, 7])}))
    with pytest.raises(sweep.RsdError, match=r"tau0.02: speculative episodes there were decoded with .*\[7\]"):
        sweep.check_logged_settings(runs[1])


@pytest.fixture(scope="module")
def tiny_registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    _tiny_registry(root)
    return root


@pytest.mark.libero
def test_real_sweep_resumes(tmp_path, tiny_registry, capsys):
    """Real LIBERO, tiny models: ar baseline + speculative at 2 taus, 1 episode of 5 steps each; the rerun
    runs nothing and rewrites the same table."""
    from rsd_pl.__main__ import main as cli

    config = {"eval": {"registry": str(tiny_registry), "main": "main@1", "draft": "draft@1", "tasks": "0",
                       "num_trials": 1, "max_steps": 5, "camera_size": 32, "videos_per_task": 0,
                       "progress_bar": False, "accelerator": "cpu", "decoding": {"acceptance": "relaxed"}},
              "grid": {"tau": [0.02, 0.1]}, "modes": ["speculative"], "baseline_modes": ["ar"],
              "out": str(tmp_path / "sweep")}
    (tmp_path / "sweep.yaml").write_text(json.dumps(config))
    assert cli(["sweep", "--config", str(tmp_path / "sweep.yaml")]) == 0
    assert "sweep: point 2/2 tau=0.1: [speculative] -> " in capsys.readouterr().out
    logs = {name: (tmp_path / "sweep" / name / EPISODES_FILE).read_text() for name in ("baseline", "tau0.02", "tau0.1")}
    records = [json.loads(line) for text in logs.values() for line in text.splitlines()]
    assert [(r["mode"], r["steps"], r["decoding"]["tau"]) for r in records] == [
        ("ar", 5, 0.05), ("speculative", 5, 0.02), ("speculative", 5, 0.1)]
    first = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [r["trials"] for r in first["rows"]] == [1, 1, 1]
    assert all(r["latency_p50_ms"] > 0 and r["chunks"] >= 1 for r in first["rows"])

    assert cli(["sweep", "--config", str(tmp_path / "sweep.yaml")]) == 0
    assert "0 to run" in capsys.readouterr().out
    assert {name: (tmp_path / "sweep" / name / EPISODES_FILE).read_text() for name in logs} == logs
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text()) == first
