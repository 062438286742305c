"""`python -m rsd_pl record`: a benchmark's logs and models kept in a committed folder and restored on another
machine, never mixing two runs. Real registries (exported by `Registry.export`), real JSON-line logs; no LIBERO."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from rsd_pl.errors import RsdError
from rsd_pl.record import check, keep, main, restore
from rsd_pl.registry import Registry

REPO = Path(__file__).resolve().parents[1]


def _export(root: Path, name: str, value: float = 1.0) -> None:
    Registry(root).export(name, {"w": torch.full((3,), value)}, {"kind": name}, {"val_loss": value}, {"data": "x"})


def _log(path: Path, lines: list[str], torn: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"trial": line}) + "\n" for line in lines) + torn)


def _whole(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: data.rfind(b"\n") + 1]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in folder.rglob("*") if f.is_file()}


@pytest.fixture
def machine(tmp_path):
    """One machine's run folders and registry after fit and a stopped eval (a torn last line), and a record."""
    runs, registry, record = tmp_path / "runs", tmp_path / "ckpt", tmp_path / "record"
    _export(registry, "rfsq")
    _export(registry, "main")
    (registry / "main" / ".tmp-v9-crashed").mkdir()  # left by a crashed export: not a model
    _log(runs / "eval" / "episodes.jsonl", ["a", "b"], torn='{"trial": "c')
    (runs / "eval" / "report.md").write_text("# report\n")
    (runs / "eval" / "plots").mkdir()
    (runs / "eval" / "plots" / "task_success.png").write_bytes(b"\x89PNG")
    _log(runs / "replay" / "episodes.jsonl", ["r"])
    return runs, registry, record


def test_keep_then_restore_on_a_new_machine_gives_the_same_logs_and_models(machine, tmp_path):
    runs, registry, record = machine
    done = keep(runs, registry, record)
    assert (record / "eval" / "episodes.jsonl").read_text() == '{"trial": "a"}\n{"trial": "b"}\n'  # whole lines
    assert (record / "eval" / "report.md").read_text() == "# report\n"
    assert (record / "eval" / "plots" / "task_success.png").read_bytes() == b"\x89PNG"  # what report.md shows
    assert not (record / "pro").exists() and len(done) == 5  # two logs, the report, its plot, the models
    kept = _files(record / "checkpoints")
    assert set(kept) == {"registry.json", *(f"{m}/v1/{f}" for m in ("rfsq", "main") for f in (
        "weights.safetensors", "config.json", "metrics.json", "lineage.json"))}  # no lock, no .tmp-*
    assert keep(runs, registry, record) == []  # nothing new: nothing copied

    new_runs, new_registry = tmp_path / "new" / "runs", tmp_path / "new" / "ckpt"
    done = restore(new_runs, new_registry, record)
    assert done == [f"{new_runs / 'eval' / 'episodes.jsonl'} (2 runs)",
                    f"{new_runs / 'replay' / 'episodes.jsonl'} (1 runs)", f"{new_registry} (main, rfsq)"]
    assert _files(new_registry) == kept
    assert Registry(new_registry).resolve("main@latest").load_tensors()["w"].tolist() == [1.0, 1.0, 1.0]
    assert (new_runs / "eval" / "episodes.jsonl").read_bytes() == (record / "eval" / "episodes.jsonl").read_bytes()
    assert restore(new_runs, new_registry, record) == []  # nothing is copied twice


def test_a_log_from_another_run_is_refused_before_anything_is_copied(machine):
    runs, registry, record = machine
    keep(runs, registry, record)
    before = _files(record)
    _log(runs / "eval" / "episodes.jsonl", ["a", "x", "y"])  # same start, then another run
    with pytest.raises(RsdError, match=r"record/eval/episodes.jsonl and .*runs/eval/episodes.jsonl are two different"):
        keep(runs, registry, record)
    with pytest.raises(RsdError, match="two different runs' logs"):
        restore(runs, registry, record)
    assert _files(record) == before


def test_a_retrained_model_is_refused_and_nothing_is_restored_beside_it(machine, tmp_path):
    runs, registry, record = machine
    keep(runs, registry, record)
    other_runs, other_registry = tmp_path / "other" / "runs", tmp_path / "other" / "ckpt"
    _export(other_registry, "rfsq")
    _export(other_registry, "main", 2.0)  # another fit: same names and versions, other times and weights
    with pytest.raises(RsdError, match=r"ckpt/registry.json: main is not the model in .*a new fit"):
        restore(other_runs, other_registry, record)
    assert not other_runs.exists()  # the record's logs were not copied next to another model
    _export(registry, "main", 0.5)  # REDO=main on the same machine: main@best moves to v2
    with pytest.raises(RsdError, match="main is not the model in"):
        keep(runs, registry, record)


def test_a_fit_stopped_between_the_models_keeps_no_checkpoints(tmp_path):
    runs, registry, record = tmp_path / "runs", tmp_path / "ckpt", tmp_path / "record"
    _export(registry, "rfsq")
    assert keep(runs, registry, record) == [] and not (record / "checkpoints").exists()
    _export(registry, "main")  # the rerun finishes the fit: now the pair is kept, and the check passes
    assert keep(runs, registry, record) == [f"{record / 'checkpoints'} (rfsq, main)"]
    check(runs, registry, record)


def test_a_machine_behind_the_record_is_brought_forward_and_never_moves_the_record_back(machine):
    runs, registry, record = machine
    keep(runs, registry, record)
    _log(record / "eval" / "episodes.jsonl", ["a", "b", "c", "d"], torn='{"tri')  # another machine went further
    (runs / "eval" / "report.md").write_text("# older report\n")
    assert keep(runs, registry, record) == []  # neither its log nor its reports go back
    assert (record / "eval" / "episodes.jsonl").read_text().count("\n") == 4
    assert (record / "eval" / "report.md").read_text() == "# report\n"
    assert restore(runs, registry, record) == [f"{runs / 'eval' / 'episodes.jsonl'} (4 runs)"]
    assert (runs / "eval" / "episodes.jsonl").read_bytes() == _whole(record / "eval" / "episodes.jsonl")


def test_a_rerun_with_the_same_log_still_keeps_its_new_reports(machine):
    """Rerunning the replay step after the eval adds no episode but rewrites replay.md with the new pairings."""
    runs, registry, record = machine
    (runs / "replay" / "replay.md").write_text("# replay alone\n")
    keep(runs, registry, record)
    (runs / "replay" / "replay.md").write_text("# replay, paired with eval\n")
    assert keep(runs, registry, record) == [str(record / "replay" / "replay.md")]
    assert (record / "replay" / "replay.md").read_text() == "# replay, paired with eval\n"


def test_a_copy_killed_midway_leaves_no_model_to_mix_with(machine, tmp_path, monkeypatch):
    """keep's copy of the models dies after the first version folder: the record has no index, so another
    machine's fit is refused next to the record's eval log, and the next keep completes the copy."""
    import rsd_pl.record as record_module

    runs, registry, record = machine
    (record / "eval").mkdir(parents=True)
    (record / "eval" / "episodes.jsonl").write_bytes(_whole(runs / "eval" / "episodes.jsonl"))
    real_copytree, calls = record_module.shutil.copytree, []

    def dying_copytree(src, dst, **kwargs):
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt  # a kill
        return real_copytree(src, dst, **kwargs)

    monkeypatch.setattr(record_module.shutil, "copytree", dying_copytree)
    with pytest.raises(KeyboardInterrupt):
        record_module._copy_registry(registry, record / "checkpoints", ["rfsq", "main"])
    monkeypatch.setattr(record_module.shutil, "copytree", real_copytree)
    assert not (record / "checkpoints" / "registry.json").exists()
    other = tmp_path / "other"
    _export(other / "ckpt", "rfsq", 3.0)
    _export(other / "ckpt", "main", 3.0)
    with pytest.raises(RsdError, match=r"record/eval/episodes.jsonl was evaluated with a model that .* does not hold"):
        restore(other / "runs", other / "ckpt", record)
    assert not (other / "runs").exists()
    with pytest.raises(RsdError, match="does not hold"):  # the same record cannot be completed from this machine
        keep(runs, registry, record)
    shutil.rmtree(record / "eval")  # once the log is moved away, the copy completes over the leftovers
    keep(runs, registry, record)
    assert _files(record / "checkpoints") == {k: v for k, v in _files(registry).items()
                                              if k != ".registry.lock" and not k.startswith("main/.tmp-")}


def test_restore_never_overwrites_a_registry_folder_without_an_index(machine, tmp_path):
    runs, registry, record = machine
    keep(runs, registry, record)
    other = tmp_path / "other" / "ckpt"
    (other / "main" / "v1").mkdir(parents=True)  # unindexed work of some other kind
    with pytest.raises(RsdError, match=r"ckpt: has no registry.json but holds main: not overwritten"):
        restore(tmp_path / "other" / "runs", other, record)
    assert not (tmp_path / "other" / "runs").exists()
    assert list(other.rglob("*")) == [other / "main", other / "main" / "v1"]


def test_the_same_index_with_other_weights_is_another_model(machine):
    runs, registry, record = machine
    keep(runs, registry, record)
    weights = record / "checkpoints" / "main" / "v1" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x00\x40")  # 1.0 -> 2.0, index unchanged
    with pytest.raises(RsdError, match="main is not the model in"):
        check(runs, registry, record)


def test_cli_names_the_files_and_four_suites_refuses_before_any_step(machine, tmp_path, capsys):
    runs, registry, record = machine
    assert main(["keep", "--runs", str(runs), "--registry", str(registry), "--record", str(record)]) == 0
    assert f"record keep: {record / 'eval' / 'episodes.jsonl'} (2 runs)" in capsys.readouterr().out
    (record / "checkpoints" / "registry.json").write_text("{")
    with pytest.raises(RsdError, match=r"checkpoints/registry.json: not a readable registry index"):
        main(["check", "--runs", str(runs), "--registry", str(registry), "--record", str(record)])

    # the script: a record whose log is another run's stops it before any step, and nothing is kept over it
    root = tmp_path / "smoke"
    _log(root / "results" / "libero_spatial" / "eval" / "episodes.jsonl", ["l1"])
    _log(root / "runs" / "libero_spatial" / "eval" / "episodes.jsonl", ["ar"])
    env = {**os.environ, "FOUR_SUITES_ROOT": str(root), "STEPS": "collect table"}
    done = subprocess.run(["bash", "scripts/four_suites.sh", "--smoke", "libero_spatial"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and "are two different runs' logs" in done.stderr
    assert "collect libero_spatial" not in done.stdout
    assert (root / "results" / "libero_spatial" / "eval" / "episodes.jsonl").read_text() == '{"trial": "l1"}\n'
    assert not (root / "data").exists()
