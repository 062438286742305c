"""Kill- and full-disk-safe files (rsd_pl.durable, the demo writer, fit's checkpoints, the registry): torn
log lines, folder locks held by other processes, ENOSPC on a real (tiny tmpfs) full disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from rsd_pl.data.demo_writer import DemoWriter
from rsd_pl.data.libero_hdf5 import read_episodes
from rsd_pl.data.synthetic import synthetic_demo
from rsd_pl.durable import FolderLock, append_jsonl, atomic_write, repair_torn_tail
from rsd_pl.errors import RsdError
from rsd_pl.eval.episode_log import EpisodeLog, read_jsonl
from rsd_pl.registry import Registry

HEADER = dict(env_name="Synthetic", problem_info={"language_instruction": "put the bowl on the plate"},
              bddl_file_name="x.bddl", env_args={"image_size": 32})


# --- torn lines ----------------------------------------------------------------------------------------


def test_a_torn_last_line_is_cut_before_the_next_append(tmp_path, capsys):
    log = tmp_path / "episodes.jsonl"
    log.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "stat')  # a writer killed mid-line
    assert [r["a"] for r in read_jsonl(log)] == [1, 2]  # readers skip the fragment
    EpisodeLog(tmp_path, rank=0, world_size=1).append({"a": 3})
    assert log.read_text() == '{"a": 1}\n{"a": 2}\n{"a": 3}\n'
    assert "dropped a torn last line" in capsys.readouterr().err and str(log) in capsys.readouterr().err + str(log)
    assert not repair_torn_tail(log)  # nothing left to cut
    log.write_text('{"a": 1')  # no newline at all: everything is the fragment
    assert repair_torn_tail(log) and log.read_text() == ""


def test_a_bad_line_other_than_the_last_stays_an_error_naming_file_and_line(tmp_path):
    log = tmp_path / "episodes.jsonl"
    log.write_text('{"a": 1}\nnot json\n{"a": 3}\n')
    with pytest.raises(RsdError, match=rf"{log}:2: not a JSON line"):
        read_jsonl(log)


# --- one writer per folder -----------------------------------------------------------------------------

HOLD = """
import sys, time
from rsd_pl.durable import FolderLock
with FolderLock(sys.argv[1], "eval"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_writer_is_refused_naming_the_folder_and_the_holder_until_it_dies(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RsdError) as refused:
            with FolderLock(tmp_path, "eval"):
                pass
        assert str(tmp_path) in str(refused.value) and f"pid {holder.pid}" in str(refused.value)
        assert "eval" in str(refused.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with FolderLock(tmp_path, "eval"), FolderLock(tmp_path, "eval"):  # free again; re-entrant in a process
        pass


# --- a full disk (a 256 KiB tmpfs filled up) -----------------------------------------------------------


@pytest.fixture
def full_disk(tmp_path):
    """A tiny tmpfs; `fill()` takes all its free space. Skipped where mounting is not permitted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}): ENOSPC tests need one")

    def fill() -> None:
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)

    try:
        yield mount, fill
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_keeps_every_earlier_state_and_says_so(full_disk):
    disk, fill = full_disk
    log, index = disk / "episodes.jsonl", disk / "report.json"
    append_jsonl(log, {"trial": 0})
    small = disk / "small.jsonl"
    append_jsonl(small, {"pad": "x" * 4084})  # exactly one 4 KiB page: the next byte needs a new page
    atomic_write(index, '{"old": true}')
    fill()
    with pytest.raises(RsdError, match=rf"{log}: disk full .*keeps its first"):
        append_jsonl(log, {"trial": 1, "padding": "x" * 8192})  # larger than a write buffer
    assert read_jsonl(log) == [{"trial": 0}] and log.read_text().endswith("\n")
    with pytest.raises(RsdError, match=rf"{small}: disk full .*keeps its first 4096 bytes"):
        append_jsonl(small, {"trial": 1})  # a small record (a buffered write's error used to escape as OSError)
    assert read_jsonl(small) == [{"pad": "x" * 4084}] and small.stat().st_size == 4096
    with pytest.raises(RsdError, match="disk full .*previous version is intact"):
        atomic_write(index, "x" * 65536)
    assert json.loads(index.read_text()) == {"old": True}
    assert sorted(p.name for p in disk.iterdir()) == ["episodes.jsonl", "filler", "report.json", "small.jsonl"]


def test_a_full_disk_during_checkpoint_and_export_keeps_the_previous_ones(full_disk):
    from rsd_pl.lit.checkpoints import AtomicCheckpointIO

    disk, fill = full_disk
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, disk / "last.ckpt")
    registry = Registry(disk / "registry")
    registry.export("tiny", {"w": torch.zeros(2)}, {}, {}, {})
    fill()
    with pytest.raises(RsdError, match="disk full .*previous version is intact"):
        io.save_checkpoint({"step": 2, "weights": torch.zeros(100_000)}, disk / "last.ckpt")
    assert torch.load(disk / "last.ckpt", weights_only=False) == {"step": 1}
    with pytest.raises(RsdError, match="disk full .*registry.json is unchanged"):
        registry.export("tiny", {"w": torch.zeros(100_000)}, {}, {}, {})
    assert registry.versions("tiny") == [1] and registry.resolve("tiny@latest").version == 1
    assert not [p for p in disk.rglob("*") if p.name.startswith(".") and "lock" not in p.name]


def test_a_full_disk_while_collecting_keeps_the_demo_file(full_disk):
    disk, fill = full_disk
    path = disk / "task_demo.hdf5"
    with DemoWriter(path, **HEADER) as writer:
        writer.add_demo(**synthetic_demo(np.random.default_rng(0), image_size=8), attrs={"init_state_index": 0})
    fill()
    full = pytest.raises(RsdError, match="(?s)disk full .*1 earlier demos are kept")
    with full, DemoWriter(path, **HEADER) as writer:
        writer.add_demo(**synthetic_demo(np.random.default_rng(1), image_size=8), attrs={"init_state_index": 1})
    assert [e.attrs["init_state_index"] for e in read_episodes(path)] == [0]


# --- demo files: staged demos, folded whole ------------------------------------------------------------


def test_staged_demos_of_a_killed_writer_are_folded_once(tmp_path):
    path = tmp_path / "task_demo.hdf5"
    with DemoWriter(path, **HEADER) as writer:
        writer.add_demo(**synthetic_demo(np.random.default_rng(0), image_size=8), attrs={"init_state_index": 0})
        writer.add_demo(**synthetic_demo(np.random.default_rng(1), image_size=8), attrs={"init_state_index": 1})
        staged = sorted(writer.staging.glob("*.hdf5"))
        assert len(staged) == 2
        with h5py.File(path) as f:
            assert not [k for k in f["data"] if k.startswith("demo_")]  # not in the file until the fold
        # as if killed here: the staged files stay; a kill after the fold's rename keeps copies of them too
        saved = {p.name: p.read_bytes() for p in staged}
        writer._entered = False
    writer._fold()
    for name, data in saved.items():  # the staged files restored: a kill between rename and their removal
        writer.staging.mkdir(exist_ok=True)
        (writer.staging / name).write_bytes(data)
    again = DemoWriter(path, **HEADER)
    again._fold()  # a second kill in the same window: folded again, the staged files not yet removed
    again.staging.mkdir(exist_ok=True)
    for name, data in saved.items():
        (again.staging / name).write_bytes(data)
    with DemoWriter(path, **HEADER) as again:
        assert [int(a["init_state_index"]) for a in again.existing_demos()] == [0, 1]
    assert [e.attrs["init_state_index"] for e in read_episodes(path)] == [0, 1]  # each once
    assert not again.staging.exists()
    with h5py.File(path) as f:
        assert sorted(k for k in f["data"]) == ["demo_0", "demo_1"] and f["data"].attrs["num_demos"] == 2


# --- fit: a best checkpoint removed before last.ckpt was written -------------------------------------


def test_resumed_checkpoint_callback_finds_its_best_again(tmp_path):
    from rsd_pl.lit.checkpoints import ResumableCheckpoint

    callback = ResumableCheckpoint(dirpath=tmp_path, filename="best-{epoch}-{step}", monitor="val/loss",
                                   save_top_k=1, save_last=True)
    newest = tmp_path / "best-epoch=2-step=24.ckpt"
    torch.save({"callbacks": {callback.state_key: {"best_model_score": torch.tensor(0.25)}}}, newest)
    torch.save({"callbacks": {}}, tmp_path / "best-epoch=1-step=16.ckpt")
    gone = str(tmp_path / "best-epoch=0-step=8.ckpt")
    state = {"dirpath": str(tmp_path), "best_model_path": gone, "best_model_score": torch.tensor(0.5),
             "best_k_models": {gone: torch.tensor(0.5)}, "kth_best_model_path": gone, "kth_value": 0.5,
             "last_model_path": str(tmp_path / "last.ckpt")}
    with pytest.warns(UserWarning, match="is gone: a kill came between"):
        callback.load_state_dict(state)
    assert callback.best_model_path == str(newest) and float(callback.best_model_score) == 0.25
    assert list(callback.best_k_models) == [str(newest)]
    assert callback.state_key.startswith("ModelCheckpoint{")  # checkpoints of earlier runs keep their state


def test_checkpoints_are_written_under_a_temporary_name_then_renamed(tmp_path, monkeypatch):
    from rsd_pl.lit.checkpoints import AtomicCheckpointIO

    seen = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (seen.append((Path(src).name, Path(dst).name)),
                                                         real_replace(src, dst)))
    AtomicCheckpointIO().save_checkpoint({"step": 3, "time": time.time()}, tmp_path / "ckpts" / "last.ckpt")
    ((tmp, target),) = seen
    assert tmp.startswith(".last.ckpt.") and tmp.endswith(".partial") and target == "last.ckpt"
    assert torch.load(tmp_path / "ckpts" / "last.ckpt", weights_only=False)["step"] == 3


def test_stop_on_sigterm_turns_the_signal_into_a_stop_between_units_and_gives_the_handler_back(tmp_path):
    from rsd_pl.durable import StopOnSigterm

    before = signal.getsignal(signal.SIGTERM)
    with StopOnSigterm(tmp_path / "episodes.jsonl") as stop:
        stop.check()  # nothing received: goes on
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal: the process lives on, the flag is set
        with pytest.raises(RsdError, match=r"stopped on SIGTERM; every finished episode is in .*episodes.jsonl"):
            stop.check()
    assert signal.getsignal(signal.SIGTERM) == before

    seen = []

    def in_a_thread():  # signals are delivered to the main thread only: elsewhere it installs nothing
        with StopOnSigterm(tmp_path) as other:
            seen.append(signal.getsignal(signal.SIGTERM))
            other.check()
        seen.append(signal.getsignal(signal.SIGTERM))

    worker = threading.Thread(target=in_a_thread)
    worker.start()
    worker.join()
    assert seen == [before, before]
