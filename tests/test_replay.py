"""`replay`: the blind floor (a demo's actions open loop from the benchmark init states). The policy and the paired
summary without LIBERO, then a real demo collected and replayed from its own init state, resumed, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rsd_pl.errors import RsdError
from rsd_pl.eval.replay import ReplayPolicy, main, markdown, summary


def test_replay_plays_the_demo_then_holds_still_with_its_last_gripper_command():
    actions = np.array([[0.5, 0, 0, 0, 0, 0, -1.0], [0, 0.5, 0, 0, 0, 0, 1.0]], dtype=np.float32)
    policy = ReplayPolicy(actions)

    def no_observation():
        raise AssertionError("the replay must never ask for an observation")

    played = [policy.select_action(no_observation) for _ in range(4)]
    np.testing.assert_array_equal(played[:2], actions)
    np.testing.assert_array_equal(played[2], [0, 0, 0, 0, 0, 0, 1.0])
    np.testing.assert_array_equal(played[3], played[2])
    policy.reset()
    np.testing.assert_array_equal(policy.select_action(no_observation), actions[0])
    assert policy.will_query is False and policy.stats.chunks == []


def test_a_replay_needs_seven_dimensional_actions():
    with pytest.raises(RsdError, match=r"\(N, 7\) actions"):
        ReplayPolicy(np.zeros((5, 6)))
    with pytest.raises(RsdError, match=r"\(N, 7\) actions"):
        ReplayPolicy(np.zeros((0, 7)))


def _line(task: int, trial: int, mode: str, success: bool) -> str:
    return json.dumps({"suite": "libero_object", "task_id": task, "trial": trial, "mode": mode, "success": success,
                       "status": "success" if success else "timeout"})


def test_summary_pairs_each_mode_with_the_replay_on_the_same_episodes(tmp_path):
    out, compare = tmp_path / "replay", tmp_path / "eval"
    out.mkdir(), compare.mkdir()
    replay = {(0, 0): True, (0, 1): True, (1, 0): True, (1, 1): False}
    (out / "episodes.jsonl").write_text("\n".join(_line(t, i, "replay", s) for (t, i), s in replay.items()) + "\n")
    l1 = {(0, 0): False, (0, 1): True, (1, 0): False, (1, 1): True, (1, 2): True}  # (1, 2): no replay to pair
    (compare / "episodes.jsonl").write_text("\n".join(_line(t, i, "l1", s) for (t, i), s in l1.items()) + "\n")
    result = summary(out, "libero_object", compare)
    assert (result["successes"], result["episodes"]) == (3, 4)
    assert {t: (r["successes"], r["episodes"]) for t, r in result["per_task"].items()} == {0: (2, 2), 1: (1, 2)}
    test = result["modes"]["l1"]
    assert test["episodes"] == 4 and (test["both"], test["mode_only"], test["reference_only"]) == (1, 1, 2)
    assert test["difference"] == pytest.approx((2 - 3) / 4)
    text = markdown(result)
    assert "All tasks: 3/4 (75.0%" in text and "| l1 | 4 | 2 | 3 | -25.0 (" in text
    assert "from the benchmark init states" in text
    pro = markdown({**result, "suite": "libero_object_lan"})  # LIBERO-PRO samples its own placements
    assert "from libero_object_lan's own init states (LIBERO-PRO's placements, not libero_object's)" in pro
    assert "from the benchmark init states" in markdown({**result, "suite": "libero_object_paraphrase"})
    with pytest.raises(RsdError, match="no replay episodes of libero_spatial"):
        summary(out, "libero_spatial", None)
    other = tmp_path / "pro"  # a second evaluation folder, of another suite: pooled, and named only where it counts
    other.mkdir()
    (other / "episodes.jsonl").write_text(_line(0, 0, "ar", True).replace("libero_object", "libero_object_lan") + "\n")
    both = summary(out, "libero_object", [compare, other])
    assert both["compared_with"] == str(compare) and both["modes"] == result["modes"]
    assert summary(out, "libero_object", [other])["compared_with"] is None


def test_several_suites_read_their_demos_once_before_any_episode_and_summarise_suite_by_suite(tmp_path, monkeypatch):
    """`main` without LIBERO (the episode runner and the demo reader stubbed): LIBERO-PRO suites share their base
    suite's demos, read once and before any episode; a missing demo stops the command before any episode; the
    summary has one section per suite of the log, each paired with the compared folders that ran it."""
    import rsd_pl.envs
    import rsd_pl.eval.replay as replay

    reads, runs = [], []

    def demos(data, suite, tasks, demo):
        reads.append(suite)
        if suite.startswith("libero_spatial"):
            raise RsdError(f"{data}: no demo file for libero_spatial task(s) {tasks}")
        return {t: (f"f.hdf5:data/demo_{demo}", np.zeros((3, 7))) for t in tasks}

    def episodes(sources, suite, trials, out):
        runs.append(suite)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "episodes.jsonl", "a") as f:
            f.writelines(_line(t, i, "replay", t == 0).replace("libero_object", suite) + "\n"
                         for t in sorted(sources) for i in trials)

    monkeypatch.setattr(replay, "demo_actions", demos)
    monkeypatch.setattr(replay, "run", episodes)
    monkeypatch.setattr(rsd_pl.envs, "num_init_states", lambda suite, task: 50)
    out, clean, pro = tmp_path / "replay", tmp_path / "eval", tmp_path / "pro"
    clean.mkdir(), pro.mkdir()
    (clean / "episodes.jsonl").write_text(_line(0, 0, "l1", False) + "\n" + _line(1, 0, "l1", True) + "\n")
    lan = _line(0, 0, "ar", True).replace("libero_object", "libero_object_lan")
    (pro / "episodes.jsonl").write_text(lan + "\n")
    common = ["--data", "d", "--tasks", "0,1", "--num_trials", "1", "--out", str(out)]

    with pytest.raises(RsdError, match="no demo file for libero_spatial"):
        replay.main(["--suite", "libero_object_lan,libero_spatial_swap", *common])
    assert reads == ["libero_object_lan", "libero_spatial_swap"] and runs == []  # stopped before any episode
    with pytest.raises(RsdError, match="no episodes of libero_object_swap to compare with"):
        replay.main(["--suite", "libero_object_swap", "--compare", str(pro), *common])
    assert runs == []
    assert replay.main(["--suite", "libero_object_swap", *common]) == 0  # alone: no comparison asked
    with pytest.raises(RsdError, match="no episodes of libero_object_swap to compare with"):  # nor in the folder
        replay.main(["--suite", "libero_object_swap", "--compare", str(pro), *common])

    reads.clear()
    assert replay.main(["--suite", "libero_object,libero_object_lan", "--compare", str(clean), str(pro), str(pro),
                        *common]) == 0
    assert reads == ["libero_object"] and runs == ["libero_object_swap", "libero_object", "libero_object_lan"]
    # a later run of one suite with the clean eval only: it pairs with the clean suite already in the folder, and
    # replay.md keeps every section's pairing
    assert replay.main(["--suite", "libero_object_swap", "--compare", str(clean), str(pro), *common]) == 0
    text = (out / "replay.md").read_text()
    assert text.count("## Against the modes of") == 2 and f"## Against the modes of {clean}" in text
    sections = {r["suite"]: r for r in json.loads((out / "replay.json").read_text())["suites"]}
    assert list(sections) == ["libero_object_swap", "libero_object", "libero_object_lan"]  # the log's order
    assert sections["libero_object_swap"]["compared_with"] is None
    assert sections["libero_object"]["compared_with"] == str(clean)
    assert sections["libero_object"]["modes"]["l1"]["episodes"] == 2
    assert sections["libero_object_lan"]["compared_with"] == str(pro)
    assert sections["libero_object_lan"]["modes"]["ar"]["episodes"] == 1  # the folder given twice counts once
    assert "# Blind replay floor: libero_object_lan" in (out / "replay.md").read_text()


@pytest.mark.libero
def test_a_collected_demo_replayed_from_its_own_init_state_succeeds_and_a_rerun_resumes(tmp_path, capsys, monkeypatch):
    from rsd_pl.collect import main as collect

    data, out = tmp_path / "demos", tmp_path / "replay"
    assert collect(["--suite", "libero_spatial", "--tasks", "0", "--episodes", "1", "--init_states", "0",
                    "--image_size", "32", "--cameras", "[agentview]", "--out", str(data)]) == 0
    assert main(["--data", str(data), "--suite", "libero_spatial", "--tasks", "0", "--num_trials", "2",
                 "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert [(r["task_id"], r["trial"], r["mode"]) for r in records] == [(0, 0, "replay"), (0, 1, "replay")]
    first = records[0]
    assert first["status"] == "success" and first["success"] is True  # the demo's own init state: same physics
    assert first["decoding"]["demo"].endswith(":data/demo_0") and first["chunks"] == 0
    assert [r["episodes"] for r in json.loads((out / "replay.json").read_text())["suites"]] == [2]
    capsys.readouterr()
    assert main(["--data", str(data), "--suite", "libero_spatial", "--tasks", "0", "--num_trials", "2",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "replay: 2 episodes already in" in printed and ", 0 to run" in printed
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 2
    # LIBERO-PRO: the paraphrased suite replays the base task's demo, matched by the base suite's instruction (its own
    # is a paraphrase). Its init states are its own placements, so the outcome may differ from the clean trial's.
    assert main(["--data", str(data), "--suite", "libero_spatial_lan", "--tasks", "0", "--num_trials", "1",
                 "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    lan = [r for r in records if r["suite"] == "libero_spatial_lan"]
    assert len(lan) == 1 and lan[0]["decoding"]["demo"] == first["decoding"]["demo"] and lan[0]["chunks"] == 0
    assert lan[0]["instruction"] != first["instruction"]
    sections = json.loads((out / "replay.json").read_text())["suites"]
    assert [(r["suite"], r["episodes"]) for r in sections] == [("libero_spatial", 2), ("libero_spatial_lan", 1)]
    assert "# Blind replay floor: libero_spatial_lan" in (out / "replay.md").read_text()
    with pytest.raises(RsdError, match=r"no demo file for libero_spatial task\(s\) \[1\]"):
        main(["--data", str(data), "--suite", "libero_spatial_swap", "--tasks", "1", "--out", str(out)])
    with pytest.raises(RsdError, match="--num_trials 51"):
        main(["--data", str(data), "--suite", "libero_spatial", "--tasks", "0", "--num_trials", "51",
              "--out", str(out)])
    # SIGTERM (`kill`, a scheduler's preemption) stops it between two episodes: the one in flight is logged, the
    # command says where, the handler is given back, and a rerun runs the rest
    import os
    import signal

    from rsd_pl.eval import runner

    def unhandled(signum, frame):  # what reaches the test when replay installs no handler of its own
        raise AssertionError("SIGTERM was not handled by replay (it would have died mid-episode)")

    real, handler = runner.run_episode, signal.signal(signal.SIGTERM, unhandled)

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal, during the episode
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "run_episode", signalled)
    argv = ["--data", str(data), "--suite", "libero_spatial", "--tasks", "0", "--num_trials", "4", "--out", str(out)]
    try:
        with pytest.raises(RsdError, match=r"stopped on SIGTERM; every finished episode is in .*episodes.jsonl: rerun"):
            main(argv)
        assert signal.getsignal(signal.SIGTERM) is unhandled  # given back
    finally:
        signal.signal(signal.SIGTERM, handler)
    trials = [json.loads(line)["trial"] for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert trials == [0, 1, 0, 2]  # libero_spatial 0, 1, libero_spatial_lan 0, then trial 2 finished; 3 not begun
    monkeypatch.setattr(runner, "run_episode", real)
    capsys.readouterr()
    assert main(argv) == 0
    assert "replay: 4 episodes already in" in capsys.readouterr().out
    trials = [json.loads(line)["trial"] for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert trials == [0, 1, 0, 2, 3]
