"""An eval folder whose episode log a kill tore mid-line resumes, reports every episode and resumes again;
the render side is the training frames' unless overridden on purpose."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_eval_loop import CountingPolicy, _cfg
from torch import nn

from rsd_pl.errors import RsdError
from rsd_pl.eval import session as eval_session
from rsd_pl.eval.config import ObsSpec, resolve_camera_size
from rsd_pl.eval.loop import run_eval
from rsd_pl.eval.models import load_models
from rsd_pl.eval.report import EPISODES_FILE


@pytest.mark.libero
def test_a_torn_episode_log_is_repaired_reported_in_full_and_resumable_again(tmp_path):
    """The two reproductions: (1) the redone episode used to be glued to the fragment and dropped again (the
    report counted one episode less); (2) the next rerun then failed on that line, for good."""
    cfg = _cfg(tmp_path, num_trials=2)  # 2 trials x 2 modes, real LIBERO (cameras off), 5 steps each
    obs = ObsSpec(cameras=(), image_size=16, object_pos=False)
    models = nn.ModuleDict({"main": nn.Linear(1, 1)})
    torch.manual_seed(0)
    run_eval(cfg, models, CountingPolicy, obs)
    log = tmp_path / "run" / EPISODES_FILE
    lines = log.read_text().splitlines()
    assert len(lines) == 4
    log.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])  # killed mid-line

    CountingPolicy.calls = 0
    report = run_eval(cfg, models, CountingPolicy, obs)
    assert CountingPolicy.calls == 5  # only the torn episode is redone
    assert sum(mode["trials"] for mode in report["modes"].values()) == 4
    records = [json.loads(line) for line in log.read_text().splitlines()]  # every line is whole again
    assert sorted((r["trial"], r["mode"]) for r in records) == [(0, "ar"), (0, "parallel"), (1, "ar"),
                                                                 (1, "parallel")]

    CountingPolicy.calls = 0
    report = run_eval(cfg, models, CountingPolicy, obs)  # used to fail: "episodes.jsonl:4: not a JSON line"
    assert CountingPolicy.calls == 0 and sum(mode["trials"] for mode in report["modes"].values()) == 4


@pytest.mark.parametrize("asked, allow, trained, expected", [
    (None, False, 64, 64),    # default: the training frames' side
    (64, False, 64, 64),      # the same, said explicitly
    (128, True, 64, 128),     # another side on purpose
    (None, False, None, 128),  # an artifact that predates the record: LIBERO's 128
    (96, False, None, 96),
])
def test_camera_size_follows_the_training_frames(tmp_path, asked, allow, trained, expected):
    cfg = _cfg(tmp_path, camera_size=asked, allow_obs_mismatch=allow)
    assert resolve_camera_size(cfg, trained, "main@1") == expected


def test_a_camera_size_other_than_the_training_frames_is_refused_before_any_episode(tmp_path, tiny_registry):
    """main@1 says it was trained on 64 px frames; `--camera_size 128` is the mistake that used to run silently."""
    config_path = tiny_registry / "main" / "v1" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "data": {"camera_size": 64}}))
    try:
        cfg = _cfg(tmp_path, registry=str(tiny_registry), main="main@1", draft="draft@1", camera_size=128)
        with pytest.raises(RsdError, match="camera_size=128, but main@1 was trained on 64 px frames"):
            load_models(cfg)
        _, obs = load_models(_cfg(tmp_path, registry=str(tiny_registry), main="main@1", draft="draft@1"))
        assert obs.camera_size == 64
    finally:
        config_path.write_text(json.dumps(config))


@pytest.fixture(scope="module")
def tiny_registry(tmp_path_factory):
    from test_eval_loop import _tiny_registry

    root = tmp_path_factory.mktemp("checkpoints")
    _tiny_registry(root)
    return root


HOLD = """
import sys, time
from rsd_pl.durable import FolderLock
with FolderLock(sys.argv[1], sys.argv[2]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.mark.parametrize("command, argv", [
    ("collect", ["--suite", "libero_spatial", "--tasks", "0", "--episodes", "1"]),
    ("eval", ["--config", "configs/quickstart/eval.yaml"]),
    ("sweep", ["--config", "configs/quickstart/sweep.yaml"]),
])
def test_a_second_process_writing_the_same_folder_is_refused(tmp_path, capsys, monkeypatch, command, argv):
    """Another process (a real one) holds the folder: the command stops before any work, naming both."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from rsd_pl.__main__ import main as cli

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    monkeypatch.setattr(eval_session, "load_models", lambda cfg: pytest.fail("models loaded by the refused process"))
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out), command], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert cli([command, *argv, "--out", str(out)]) == 1
        error = capsys.readouterr().err
        assert f"{out}: another rsd_pl process is writing this folder ({command}, pid {holder.pid}" in error
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert sorted(p.name for p in out.iterdir()) == [".rsd_pl.lock"]  # nothing else was written


class QueryingPolicy:
    """Test-only policy: stands still; queries (builds a batch, so the cameras' frames are read) every 8 steps."""

    def __init__(self) -> None:
        self.calls, self.queries = 0, 0
        self.stats = type("Stats", (), {"chunks": []})()

    @property
    def will_query(self) -> bool:
        return self.calls % 8 == 0

    def reset(self) -> None:
        self.calls = 0

    def select_action(self, batch):
        if self.will_query:
            batch()
            self.queries += 1
        self.calls += 1
        return np.array([0, 0, 0, 0, 0, 0, -1.0])


@pytest.mark.libero
@pytest.mark.parametrize("video_size, renders_per_step", [(64, 1), (32, 1)])
def test_a_recorded_episode_renders_its_cameras_once_per_step(monkeypatch, video_size, renders_per_step):
    """Camera renders (MjSim.render calls, one per camera) of a recorded 24-step episode, one 32 px camera:
    a video larger than the camera used to render twice per step (the step's own frame, then the video's);
    now the video frame is the only render of a step, plus the observation's before each query."""
    from rsd_pl.envs import LiberoEnv
    from rsd_pl.eval.runner import run_episode

    with LiberoEnv("libero_spatial", 0, camera_size=32, cameras=("agentview",), render_every_step=False) as env:
        sim_type = type(env.raw.sim)
        count = {"renders": 0}
        real_render = sim_type.render

        def counting(self, *args, **kwargs):
            count["renders"] += 1
            return real_render(self, *args, **kwargs)

        monkeypatch.setattr(sim_type, "render", counting)
        env.reset(0, wait=True)
        reset_renders, count["renders"] = count["renders"], 0  # a reset's own renders, the same in every setting
        policy = QueryingPolicy()
        result = run_episode(env, policy, 24, trial=0, seed=7, mode="ar", image_size=16, record_frames=True,
                             video_size=video_size)
    assert result.steps == 24 and len(result.frames) == 24 and policy.queries == 3
    extra = policy.queries if video_size > 32 else 0  # a query's 32 px frame, beside that step's 64 px video frame
    per_step = (count["renders"] - reset_renders) / result.steps
    print(f"camera renders per step (video {video_size} px, camera 32 px): {per_step:.3f}")
    assert count["renders"] - reset_renders == renders_per_step * result.steps + extra
