"""`python -m rsd_pl layouts` on hand-made outputs of scripts/layouts.sh: exact numbers in the table."""

from __future__ import annotations

import json

import pytest
import torch

from rsd_pl.errors import RsdError
from rsd_pl.eval import layouts
from rsd_pl.eval.episode_log import EPISODES_FILE
from rsd_pl.registry import Registry


def _episode(mode: str, trial: int, success: bool, latencies: list[float], main: int,
             proposed: list[int] | None = None, accepted: list[int] | None = None) -> dict:
    return {"suite": "libero_spatial", "task_id": 0, "task_name": "task 0", "instruction": "x", "trial": trial,
            "seed": trial, "mode": mode, "success": success, "status": "success" if success else "timeout",
            "steps": 8 * len(latencies), "chunks": len(latencies), "chunk_latency_ms": latencies,
            "main_forwards": main, "draft_forwards": 0, "proposed_by_depth": proposed or [],
            "accepted_by_depth": accepted or [], "error": None}


def _write_run(folder, records) -> None:
    folder.mkdir(parents=True)
    (folder / EPISODES_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))


def _sweep_row(mode: str, run: str, baseline: bool, point: dict) -> dict:
    return {"mode": mode, "run": run, "baseline": baseline, "point": point}


def make_layout(tmp_path, name: str = "g4x2") -> None:
    runs, registry = tmp_path / "runs" / name, Registry(tmp_path / "registry" / name)
    model = {"action_dim": 7, "chunk_len": 8, "latent_dim": 4, "num_layers": 3, "num_levels": 7, "hidden": 8,
             "num_hidden": 1, "positions": 2, "group": 4}
    tensors = {"w": torch.zeros(1)}
    registry.export("rfsq", tensors, {"model": model}, {f"val/mae_depth_{m}": 0.1 / m for m in (1, 2, 3)}, {})
    registry.export("main", tensors, {"model": {"num_layers": 3}},
                    {"val/token_acc_layer_1": 0.5, "val/token_acc_layer_2": 0.4, "val/majority_layer_1": 0.2,
                     "val/majority_layer_2": 0.1, "val/l1_ar": 0.05, "val/l1_regression": 0.04}, {})
    registry.export("draft", tensors, {}, {"val/agreement_layer_2": 0.7}, {})
    sweep = runs / "sweep"
    # 4 paired episodes: ar_exit takes 10 ms per chunk, lossless speculation 8 ms (1.25x) and accepts layer 2 in
    # 3 of 4 chunks (proposed / accepted by depth: index 1 = layer 2)
    _write_run(sweep / "baseline", [_episode(m, t, ok, [10.0], main=3) for t, ok in enumerate([1, 1, 0, 1])
                                    for m in ("ar_exit",)]
               + [_episode("ar", t, ok, [15.0], main=3) for t, ok in enumerate([1, 1, 0, 1])]
               + [_episode("l1", t, ok, [5.0], main=1) for t, ok in enumerate([1, 1, 1, 1])])
    _write_run(sweep / "spec", [_episode("speculative", t, True, [8.0], main=2, proposed=[0, 1, 1],
                                         accepted=[0, int(t != 3), 0]) for t in range(4)])
    rows = [_sweep_row("ar_exit", "baseline", True, {}), _sweep_row("ar", "baseline", True, {}),
            _sweep_row("l1", "baseline", True, {}), _sweep_row("speculative", "spec", False, {})]
    (sweep / "sweep.json").write_text(json.dumps({"rows": rows, "episodes": {"per_row": 4},
                                                  "config": {"eval": {"decoding": {"acceptance": "exact"}}}}))
    (runs / "budget.json").write_text(json.dumps({
        "layers": {"layer 2": {"draft": {"exact_rate": 0.6}, "parallel": {"exact_rate": 0.3}}},
        "ceiling": {"exit_bound": 0.05, "exit_depth_mean": 2.5, "ar_exit_ms": 10.0,
                    "draft": {"speedup": 1.6, "perfect_ms": 6.25}, "parallel": {"speedup": 2.0, "perfect_ms": 5.0}}}))
    for p, shares in ((0.7, {"A": 0.72, "B": 0.25, "between": 0.03}), (0.5, {"A": 0.3, "B": 0.3, "between": 0.4})):
        (runs / f"multimodal_offline_p{p:g}.json").write_text(json.dumps(
            {"data": {"A": p}, "modes": {"ar_sampled": shares, "speculative_sampled": shares}}))


def test_the_table_reports_each_piece_of_a_layout(tmp_path, capsys):
    make_layout(tmp_path)
    assert layouts.main(["--runs", str(tmp_path / "runs"), "--registry", str(tmp_path / "registry")]) == 0
    result = json.loads((tmp_path / "runs" / "layouts.json").read_text())
    [row] = result
    assert row["layout"]["tokens_per_layer"] == 2 and row["layout"]["vocab_size"] == 2401
    assert row["tokenizer_mae"] == pytest.approx([0.1, 0.05, 0.1 / 3])
    spec = row["modes"]["lossless"]
    assert spec["speedup_vs_ar_exit"]["ratio"] == pytest.approx(10.0 / 8.0)
    assert spec["speedup_vs_ar_exit"]["episodes"] == 4
    assert spec["layer2_acceptance"] == pytest.approx(0.75)
    assert (row["modes"]["ar_exit"]["successes"], row["modes"]["ar_exit"]["trials"]) == (3, 4)
    assert row["modes"]["ar"]["vs_l1"]["difference"] == pytest.approx(-0.25)
    text = (tmp_path / "runs" / "layouts.md").read_text()
    assert "1.25x" in text and "L2 acc 75%" in text and "78% of ceiling" in text  # 1.25 / 1.6
    assert "| g4x2 | 0.7 | 70% | 72% / 25% / 3% | 72% / 25% / 3% | yes |" in text
    assert "| g4x2 | 0.5 | 50% | 30% / 30% / 40% | 30% / 30% / 40% | no |" in text
    assert (tmp_path / "runs" / "layouts.png").stat().st_size > 10_000


def test_a_layout_still_running_shows_dashes_and_no_results_is_an_error(tmp_path):
    make_layout(tmp_path)
    (tmp_path / "registry" / "g4x1").mkdir()
    Registry(tmp_path / "registry" / "g4x1").export(
        "rfsq", {"w": torch.zeros(1)}, {"model": {"chunk_len": 8, "latent_dim": 4, "num_levels": 7, "positions": 1,
                                                  "group": 4, "num_layers": 3}}, {"val/mae_depth_1": 0.2}, {})
    rows = layouts.collect(tmp_path / "runs", tmp_path / "registry")
    assert [r["name"] for r in rows] == ["g4x1", "g4x2"] and "modes" not in rows[0]
    assert "| g4x1 | - | - | - | - |" in layouts.markdown(rows)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RsdError, match="no layout results"):
        layouts.main(["--runs", str(tmp_path / "empty"), "--registry", str(tmp_path / "nothing")])
