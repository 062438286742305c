"""`python -m rsd_pl multimodal`: grasp-side classification from a path, config checks, the report and figure
from hand-made episode logs, and one shrunken real run on LIBERO (a random tiny model, one arm, one episode, and
the centre-grasp expert control)."""

from __future__ import annotations

import json

import pytest
from test_eval_loop import _tiny_registry

from rsd_pl.errors import RsdError
from rsd_pl.eval import multimodal as mm
from rsd_pl.eval.config import EvalConfig
from rsd_pl.eval.report import EPISODES_FILE


def _path(offset: float, close_at: int | None = 2) -> dict:
    steps = 4
    return {"object_name": "bowl", "eef": [[0.1 + offset, 0.0, 0.9]] * steps, "object": [[0.1, 0.0, 0.9]] * steps,
            "gripper": [1.0 if close_at is not None and i >= close_at else -1.0 for i in range(steps)]}


def test_classify_path():
    assert mm.classify_path(_path(0.047), 0.02) == "+x"
    assert mm.classify_path(_path(-0.047), 0.02) == "-x"
    assert mm.classify_path(_path(0.005), 0.02) == "centre"
    assert mm.classify_path(_path(0.047, close_at=None), 0.02) == "no grasp"
    assert mm.classify_path(None, 0.02) == "no grasp"


def _cfg(tmp_path, **overrides) -> mm.MultimodalConfig:
    base = EvalConfig(registry=str(tmp_path / "checkpoints"), main="main@1", draft=None, tasks="0", num_trials=2,
                      max_steps=5, videos_per_task=0, progress_bar=False, accelerator="cpu")
    arms = [mm.Arm("greedy", "ar"), mm.Arm("sampled", "ar", {"temperature": 1.0})]
    return mm.MultimodalConfig(**{"eval": base, "arms": arms, "expert_sides": [0], "out": str(tmp_path / "mm"),
                                  **overrides})


@pytest.mark.parametrize("overrides, message", [
    ({"arms": []}, "arms is empty"),
    ({"arms": [mm.Arm("a", "ar"), mm.Arm("a", "l1")]}, "must be distinct"),
    ({"arms": [mm.Arm("a", "ar", {"temprature": 1.0})]}, "arm 'a': decoding"),
    ({"arms": [mm.Arm("a", "speculative", {"acceptance": "sampling"})]}, "needs decoding.temperature > 0"),
    ({"expert_sides": [2]}, "not grasp sides"),
])
def test_bad_config_is_refused(tmp_path, overrides, message):
    with pytest.raises(RsdError, match=message):
        mm.check(_cfg(tmp_path, **overrides))


def test_report_and_figure_from_episode_logs(tmp_path):
    cfg = _cfg(tmp_path)
    runs = mm.check(cfg)
    assert [r.out for r in runs] == [str(tmp_path / "mm" / "greedy"), str(tmp_path / "mm" / "sampled")]
    assert runs[1].decoding.temperature == 1.0 and runs[1].record_paths and runs[0].decoding.temperature == 0.0
    logs = {"greedy": [(0.005, False), (0.005, False)], "sampled": [(0.047, True), (-0.047, True)]}
    for name, episodes in logs.items():
        folder = tmp_path / "mm" / name
        folder.mkdir(parents=True)
        lines = [json.dumps({"suite": "libero_spatial", "task_id": 0, "trial": i, "seed": 7 + i, "mode": "ar",
                             "success": ok, "status": "success" if ok else "timeout", "path": _path(offset)})
                 for i, (offset, ok) in enumerate(episodes)]
        (folder / EPISODES_FILE).write_text("\n".join(lines) + "\n")
    experts = [{"grasp_side": 0, "success": False}, {"grasp_side": 0, "success": False}]
    summary = mm.summarise(cfg, runs, experts)
    greedy, sampled = summary["arms"]
    assert greedy["sides"] == {"+x": 0, "-x": 0, "centre": 2, "no grasp": 0} and greedy["successes"] == 0
    assert sampled["sides"]["+x"] == 1 and sampled["sides"]["-x"] == 1
    assert sampled["success_by_side"] == {"+x": 1, "-x": 1, "centre": 0, "no grasp": 0}
    text = mm.markdown(summary, cfg)
    assert "| scripted expert, grasp centre (the average) | 0/2 (0%" in text
    assert "| sampled (`ar`, temperature 1.0) | 2/2 (100%" in text
    fig = mm.paths_figure(summary)
    assert len(fig.axes) == 2


def test_real_run_logs_paths_and_expert_controls(tmp_path, capsys):
    _tiny_registry(tmp_path / "checkpoints")
    cfg = _cfg(tmp_path, arms=[mm.Arm("sampled", "ar", {"temperature": 1.0})])
    cfg.eval.num_trials = 1
    argv = ["--eval.registry", cfg.eval.registry, "--eval.main", "main@1", "--eval.draft", "null",
            "--eval.tasks", "0", "--eval.num_trials", "1", "--eval.max_steps", "5", "--eval.videos_per_task", "0",
            "--eval.progress_bar", "false", "--eval.accelerator", "cpu",
            "--arms", json.dumps([{"name": "sampled", "mode": "ar", "decoding": {"temperature": 1.0}}]),
            "--expert_sides", "[0]", "--out", cfg.out]
    assert mm.main(argv) == 0
    record = json.loads((tmp_path / "mm" / "sampled" / EPISODES_FILE).read_text().splitlines()[0])
    path = record["path"]
    assert len(path["eef"]) == len(path["gripper"]) == len(path["object"]) == record["steps"] == 5
    assert path["object_name"] == "akita_black_bowl_1"
    assert record["decoding"]["temperature"] == 1.0
    controls = [json.loads(line) for line in (tmp_path / "mm" / mm.EXPERT_FILE).read_text().splitlines()]
    assert controls == [{"suite": "libero_spatial", "task_id": 0, "trial": 0, "grasp_side": 0, "success": False,
                         "steps": 220}]  # the average of the two grasps fails
    assert (tmp_path / "mm" / "paths.png").exists() and "scripted expert, grasp centre" in capsys.readouterr().out
