"""The Lightning evaluation loop: config checks before any episode, episode list, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from rsd_pl.decoding.stats import ChunkStats, StatsAggregator
from rsd_pl.errors import RsdError
from rsd_pl.eval.cli import parse_config
from rsd_pl.eval.config import EvalConfig, ObsSpec, models_used, validate_config
from rsd_pl.eval.episode_log import merge_rank_files
from rsd_pl.eval.episodes import check_same_models, count_runs, episode_list, pending_items
from rsd_pl.eval.loop import run_eval
from rsd_pl.eval.models import load_models, obs_spec_from_config
from rsd_pl.eval.report import EPISODES_FILE, read_episodes
from rsd_pl.registry import Registry, weights_sha256


def _cfg(tmp_path, **overrides) -> EvalConfig:
    base = {"out": str(tmp_path / "run"), "registry": str(tmp_path / "checkpoints"), "tasks": "0",
            "num_trials": 1, "modes": ["ar", "parallel"], "draft": None, "max_steps": 5,
            "videos_per_task": 0, "progress_bar": False, "accelerator": "cpu"}
    return EvalConfig(**{**base, **overrides})


def test_cli_overrides_any_field(tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text("num_trials: 50\nmodes: [l1, ar]\ndecoding:\n  draft_len: 3\n")
    cfg = parse_config(["--config", str(config), "--num_trials", "2", "--tasks", "0-2"])
    assert (cfg.num_trials, cfg.modes, cfg.tasks, cfg.decoding.draft_len) == (2, ["l1", "ar"], "0-2", 3)


@pytest.mark.parametrize("overrides, message", [
    ({"suites": ["libero_spatail"]}, "unknown LIBERO suite 'libero_spatail'"),
    ({"modes": ["ar", "beam"]}, "modes=.*beam"),
    ({"modes": ["ar", "speculative"], "draft": None}, "speculative, which needs a draft"),
    ({"tasks": "0-12"}, "task 10 is out of range for libero_spatial"),
    ({"num_trials": 0}, "num_trials=0"),
    ({"num_trials": 51}, "num_trials=51: must be in 1..50"),
    ({"num_envs": 0}, "num_envs=0: must be >= 1"),
    ({"deviation_reference": "oft"}, "deviation_reference='oft' must be an RSD mode"),
    ({"modes": ["oft"], "main": None}, "reference_mode='ar' is not one of modes"),
    ({"modes": ["oft", "ar"], "main": None}, "include RSD modes, which need a main model"),
])
def test_bad_config_is_refused_before_any_episode(tmp_path, overrides, message):
    with pytest.raises(RsdError, match=message):
        validate_config(_cfg(tmp_path, **overrides))


def test_main_refuses_bad_input_before_any_episode(tmp_path, capsys):
    """Through the CLI entry point: an unknown suite, and an unknown registry name, end before Lightning."""
    from rsd_pl.__main__ import main as cli

    assert cli(["eval", "--suites", "[libero_nope]", "--out", str(tmp_path / "run")]) == 1
    assert "unknown LIBERO suite 'libero_nope'" in capsys.readouterr().err
    assert cli(["eval", "--registry", str(tmp_path / "empty"), "--main", "nosuchmodel@best",
                "--out", str(tmp_path / "run")]) == 1
    assert "nosuchmodel" in capsys.readouterr().err
    assert not (tmp_path / "run" / EPISODES_FILE).exists()


def test_episode_list_one_item_per_episode_with_its_modes(tmp_path):
    items = episode_list(_cfg(tmp_path, tasks="1-2", num_trials=3, modes=["ar", "speculative"],
                                   videos_per_task=1, max_steps=None))
    assert len(items) == 2 * 3 and count_runs(items) == 2 * 3 * 2
    assert {i["max_steps"] for i in items} == {220}
    by_key = {(i["task_id"], i["trial"]): i for i in items}
    assert by_key[(2, 1)]["seed"] == 7 + 2000 + 1 and by_key[(2, 1)]["modes"] == ["ar", "speculative"]
    assert [i["record"] for i in items if i["task_id"] == 1] == [True, False, False]


def test_pending_items_skip_finished_runs_per_mode(tmp_path):
    cfg = _cfg(tmp_path, num_trials=2, modes=["ar", "speculative"], draft="draft@best")
    out = tmp_path / "run"
    out.mkdir()
    done = [{"suite": "libero_spatial", "task_id": 0, "trial": 0, "mode": m, "status": "timeout"}
            for m in ("ar", "speculative")] + [
           {"suite": "libero_spatial", "task_id": 0, "trial": 1, "mode": "speculative", "status": "error"}]
    (out / EPISODES_FILE).write_text("".join(json.dumps(r) + "\n" for r in done))
    items = pending_items(cfg)
    assert [(i["trial"], i["modes"]) for i in items] == [(1, ["ar", "speculative"])]  # the error is retried
    items = pending_items(_cfg(tmp_path, num_trials=2, modes=["ar", "speculative"], draft="draft@best",
                                    retry_errors=False))
    assert [(i["trial"], i["modes"]) for i in items] == [(1, ["ar"])]

    retried = {"suite": "libero_spatial", "task_id": 0, "trial": 1, "mode": "speculative", "status": "success"}
    with open(out / EPISODES_FILE, "a") as log:
        log.write(json.dumps(retried) + "\n")
    statuses = {(r["trial"], r["mode"]): r["status"] for r in read_episodes(out)}
    assert statuses[(1, "speculative")] == "success" and len(statuses) == 3  # the retry replaces the error


def test_merge_rank_files(tmp_path):
    rows = [{"suite": "libero_spatial", "task_id": 0, "trial": t, "mode": "ar", "status": "timeout"}
            for t in range(3)]
    (tmp_path / EPISODES_FILE).write_text(json.dumps(rows[0]) + "\n")
    (tmp_path / "episodes.rank0.jsonl").write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1]) + "\n")
    (tmp_path / "episodes.rank1.jsonl").write_text(json.dumps(rows[2]) + "\n")
    merge_rank_files(tmp_path)
    assert [r["trial"] for r in read_episodes(tmp_path)] == [0, 1, 2]
    assert not list(tmp_path.glob("episodes.rank*.jsonl"))

    # an errored episode retried on some rank: the retry is merged after the error line and wins
    error = {**rows[0], "trial": 3, "status": "error"}
    with open(tmp_path / EPISODES_FILE, "a") as log:
        log.write(json.dumps(error) + "\n")
    (tmp_path / "episodes.rank1.jsonl").write_text(json.dumps({**error, "status": "success"}) + "\n")
    merge_rank_files(tmp_path)
    assert len((tmp_path / EPISODES_FILE).read_text().splitlines()) == 5
    assert {r["trial"]: r["status"] for r in read_episodes(tmp_path)}[3] == "success"


class CountingPolicy:
    """Test-only policy: moves nowhere, counts calls; one ChunkStats per 8 actions."""

    calls = 0

    def __init__(self, mode: str) -> None:
        self.mode, self.stats = mode, StatsAggregator()

    def reset(self) -> None:
        pass

    def select_action(self, batch) -> np.ndarray:
        if CountingPolicy.calls % 8 == 0:  # the runner passes a function that builds the batch
            batch = batch()
            assert batch["proprio"].shape == (1, 8) and "images" not in batch  # cameras off
            self.stats.add(ChunkStats(mode=self.mode, num_layers=8, main_forwards=1, total_s=0.001))
        CountingPolicy.calls += 1
        return np.array([0, 0, 0, 0, 0, 0, -1.0])


@pytest.mark.libero
def test_rerun_resumes_and_skips_finished_episodes(tmp_path):
    """Real LIBERO env (cameras off), 2 modes x 1 episode of 5 steps; the rerun redoes nothing."""
    cfg = _cfg(tmp_path)
    obs = ObsSpec(cameras=(), image_size=16, object_pos=False)
    models = nn.ModuleDict({"main": nn.Linear(1, 1)})
    named = {"main": "main@1 sha256:aaaa", "tokenizer": "rfsq@1 sha256:bb"}
    torch.manual_seed(0)
    CountingPolicy.calls = 0
    report = run_eval(cfg, models, CountingPolicy, obs, named)
    assert CountingPolicy.calls == 2 * 5
    log = tmp_path / "run" / EPISODES_FILE
    first = log.read_text().splitlines()
    records = [json.loads(line) for line in first]
    assert sorted(r["mode"] for r in records) == ["ar", "parallel"]
    assert all(r["models"] == named for r in records)  # each run names the models that decoded it
    assert "Models: main `main@1 sha256:aaaa`" in (tmp_path / "run" / "report.md").read_text()
    assert all(r["status"] == "timeout" and not r["success"] and r["steps"] == 5 for r in records)
    assert all(r["task_name"] and r["instruction"] for r in records)
    assert report["modes"]["ar"]["trials"] == 1 and report["modes"]["ar"]["successes"] == 0
    assert (tmp_path / "run" / "report.md").is_file() and (tmp_path / "run" / "report.json").is_file()

    CountingPolicy.calls = 0
    run_eval(cfg, models, CountingPolicy, obs, named)
    assert CountingPolicy.calls == 0 and log.read_text().splitlines() == first
    refit = {**named, "main": "main@1 sha256:cccc"}  # another machine's main@1
    with pytest.raises(RsdError, match=r"run/episodes.jsonl: libero_spatial task 0 trial 0 ar was decoded by "
                                       r"main main@1 sha256:aaaa, but this run loads main@1 sha256:cccc"):
        run_eval(_cfg(tmp_path, num_trials=2), models, CountingPolicy, obs, refit)
    assert CountingPolicy.calls == 0 and log.read_text().splitlines() == first

    log.write_text(first[0] + "\n")  # as if killed after the first episode
    run_eval(cfg, models, CountingPolicy, obs)
    assert CountingPolicy.calls == 5
    assert len(log.read_text().splitlines()) == 2
    # each line names the process that ran it: speed is compared only within one run
    runs = [json.loads(line)["run"] for line in log.read_text().splitlines()]
    assert runs[0] == records[0]["run"] == records[1]["run"] and runs[1] != runs[0]


def _tiny_registry(root) -> None:
    """rfsq@1, rfsq@2; main@v trained on rfsq@v; draft@v distilled from main@v."""
    from rsd_pl.data.normalize import ActionNormalizer
    from rsd_pl.models.backbone import BackboneConfig
    from rsd_pl.models.draft import DraftConfig, DraftModel
    from rsd_pl.models.main_model import MainModel, MainModelConfig
    from rsd_pl.models.rfsq import ActionRFSQAE
    from rsd_pl.registry import Registry

    torch.manual_seed(0)
    registry = Registry(root)
    stats = {key: [0.0] * 7 for key in ("mean", "min", "q01")}
    stats.update({key: [1.0] * 7 for key in ("std", "max", "q99")}, mask=[True] * 6 + [False])
    tok_cfg = {"hidden": 16, "num_hidden": 1}
    sizes = dict(vision_hidden=16, vision_layers=1, vision_heads=2, vision_mlp=32,
                 hidden=32, layers=1, heads=2, kv_heads=1, mlp=64)
    main_cfg = MainModelConfig(backbone=BackboneConfig(image_size=16, num_cameras=2, use_object_pos=True,
                                                       max_text_len=8, extra=sizes))
    for version in (1, 2):
        registry.export("rfsq", ActionRFSQAE(**tok_cfg).state_dict(), {"model": tok_cfg}, {}, {},
                        extra_json={"stats": ActionNormalizer.from_dict(stats).to_dict()})
        main = MainModel(main_cfg)
        registry.export("main", main.export_tensors(), {"model": main_cfg.to_dict()}, {},
                        {"tokenizer": f"rfsq@{version}"})
        draft_cfg = DraftConfig(main_hidden=main.hidden_size, hidden=16, layers=1, heads=2, mlp=32)
        registry.export("draft", DraftModel(draft_cfg).state_dict(), {"draft": draft_cfg.to_dict()}, {},
                        {"main": f"main@{version}"})


@pytest.fixture(scope="module")
def tiny_registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    _tiny_registry(root)
    return root


def test_load_models_follows_lineage_and_training_obs(tmp_path, tiny_registry):
    cfg = _cfg(tmp_path, registry=str(tiny_registry), main="main@1", draft="draft@1")
    models, obs = load_models(cfg)
    assert models["draft"] is not None and models["tokenizer"].num_layers == 8
    assert obs == ObsSpec(cameras=("agentview", "eye_in_hand"), image_size=16, object_pos=True)
    # named by spec and the weights' sha256: what the episode records carry
    registry = Registry(tiny_registry)
    for key, spec in (("main", "main@1"), ("tokenizer", "rfsq@1"), ("draft", "draft@1")):
        art = registry.resolve(spec)
        assert models["identity"][key] == f"{spec} sha256:{weights_sha256(art.path)[:16]}"
    other, _ = load_models(_cfg(tmp_path, registry=str(tiny_registry), main="main@2", draft=None))
    assert set(other["identity"]) == {"main", "tokenizer"} and other["identity"]["main"].startswith("main@2 ")
    assert other["identity"]["main"].split()[-1] != models["identity"]["main"].split()[-1]


def test_a_rerun_is_checked_only_against_the_models_each_logged_mode_used(tmp_path, capsys):
    """ar runs name no draft, so a new draft may add speculative runs beside them; a speculative run's draft
    must match. Runs logged before records named their models are taken as they are, and counted."""
    out = tmp_path / "run"
    out.mkdir()
    first = {"main": "main@1 sha256:aa", "tokenizer": "rfsq@1 sha256:bb", "draft": "draft@1 sha256:cc"}
    base = {"suite": "libero_spatial", "task_id": 0, "trial": 0, "status": "timeout"}
    lines = [{**base, "mode": "ar", "models": models_used("ar", first)},
             {**base, "mode": "speculative", "models": models_used("speculative", first)},
             {**base, "trial": 1, "mode": "ar"}]  # before models were named
    (out / EPISODES_FILE).write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert lines[0]["models"] == {"main": first["main"], "tokenizer": first["tokenizer"]}
    cfg = _cfg(tmp_path)
    check_same_models(cfg, first)
    assert "1 runs in" in capsys.readouterr().out
    with pytest.raises(RsdError, match="speculative was decoded by draft draft@1 sha256:cc, but this run loads "
                                       "draft@2 sha256:dd"):
        check_same_models(cfg, {**first, "draft": "draft@2 sha256:dd"})
    (out / EPISODES_FILE).write_text("".join(json.dumps(r) + "\n" for r in lines[::2]))
    check_same_models(cfg, {**first, "draft": "draft@2 sha256:dd"})
    with pytest.raises(RsdError, match="ar was decoded by tokenizer rfsq@1 sha256:bb"):
        check_same_models(cfg, {**first, "tokenizer": "rfsq@1 sha256:ee"})
    check_same_models(cfg, {**first, "main": "main@3 sha256:aa"})  # the same weights exported again: the same model


def test_obs_spec_follows_recorded_cameras():
    config = {"model": {"backbone": {"image_size": 64, "num_cameras": 1, "use_object_pos": False}}}
    assert obs_spec_from_config(config, "m@1").cameras == ("agentview",)
    config["data"] = {"cameras": ["eye_in_hand_rgb"]}
    assert obs_spec_from_config(config, "m@1").cameras == ("eye_in_hand",)
    config["data"] = {"cameras": ["agentview_rgb", "eye_in_hand_rgb"]}
    with pytest.raises(RsdError, match="num_cameras=1"):
        obs_spec_from_config(config, "m@1")


@pytest.mark.parametrize("overrides, message", [
    ({"main": "main@1", "tokenizer": "rfsq@2", "draft": None}, "trained on rfsq@1: mismatched lineage"),
    ({"main": "main@1", "draft": "draft@2"}, "distilled from main@2, not from main=main@1"),
    ({"main": "main@latest", "draft": "draft@1"}, r"\(main@2\): mismatched lineage"),
    ({"main": "main@7", "draft": None}, "main@7"),
    ({"main": "main@1", "draft": "drafty"}, "unknown artifact name 'drafty'"),
])
def test_mismatched_lineage_and_unknown_names_are_refused(tmp_path, tiny_registry, overrides, message):
    with pytest.raises(RsdError, match=message):
        load_models(_cfg(tmp_path, registry=str(tiny_registry), **overrides))


@pytest.mark.parametrize("path", ["configs/eval_libero_spatial.yaml", "configs/eval_libero_spatial_cpu.yaml",
                                  "configs/quickstart/eval.yaml", "configs/eval_openvla_libero_spatial.yaml"])
def test_shipped_configs_parse_and_validate(path):
    """Every shipped eval config runs the strongest AR baseline (ar_exit) next to speculative."""
    from pathlib import Path

    cfg = parse_config(["--config", str(Path(__file__).parent.parent / path)])
    validate_config(cfg)
    assert cfg.modes[-3:] == ["ar", "ar_exit", "speculative"] and cfg.draft == "draft@best"
    assert cfg.reference_mode in cfg.modes and cfg.decoding.exit_bound == 0.05


def test_reference_mode_must_be_evaluated(tmp_path):
    with pytest.raises(RsdError, match="reference_mode='ar' is not one of modes"):
        validate_config(_cfg(tmp_path, modes=["l1", "parallel"]))
    validate_config(_cfg(tmp_path, modes=["l1", "parallel"]), logged_modes={"ar", "l1"})  # a run that extends one


def test_extending_a_run_may_leave_out_the_logged_reference_mode(tmp_path, capsys):
    """Through the CLI: modes without `ar` are refused in an empty folder, accepted where the log holds `ar`."""
    from rsd_pl.__main__ import main as cli

    out = tmp_path / "run"
    argv = ["eval", "--modes", "[l1]", "--out", str(out), "--registry", str(tmp_path / "empty"), "--main", "nosuch@1"]
    assert cli(argv) == 1 and "reference_mode='ar' is not one of modes=['l1'] (nor logged in" in capsys.readouterr().err
    out.mkdir()
    (out / EPISODES_FILE).write_text(json.dumps({"suite": "libero_spatial", "task_id": 0, "trial": 0, "mode": "ar",
                                                 "status": "timeout"}) + "\n")
    assert cli(argv) == 1 and "nosuch" in capsys.readouterr().err  # past the mode check, stopped at the registry
