"""`python -m rsd_pl record`: a benchmark's logs and models kept in a committed folder and restored on another
machine, never mixing two runs. Real registries (exported by `Registry.export`), real JSON-line logs; no LIBERO."""

from __future__ import annotations

import json
import os
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
    _log(runs / "replay" / "episodes.jsonl", ["r"])
    return runs, registry, record


def test_keep_then_restore_on_a_new_machine_gives_the_same_logs_and_models(machine, tmp_path):
    runs, registry, record = machine
    done = keep(runs, registry, record)
    assert (record / "eval" / "episodes.jsonl").read_text() == '{"trial": "a"}\n{"trial": "b"}\n'  # whole lines
    assert (record / "eval" / "report.md").read_text() == "# report\n"
    assert not (record / "pro").exists() and len(done) == 3
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
    _log(record / "eval" / "episodes.jsonl", ["a", "b", "c", "d"])  # another machine went further in the same run
    assert keep(runs, registry, record) == [f"{record / 'replay' / 'episodes.jsonl'} (1 runs)",
                                            f"{record / 'checkpoints'} (rfsq, main)"]
    assert (record / "eval" / "episodes.jsonl").read_text().count("\n") == 4
    restore(runs, registry, record)
    assert (runs / "eval" / "episodes.jsonl").read_bytes() == (record / "eval" / "episodes.jsonl").read_bytes()


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
