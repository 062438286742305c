"""scripts/four_suites.sh --smoke: the four-suite protocol shrunken (task 0, two demos from sampled placements, a few
training steps, 1-2 short trials, the blind replay on trials 0-1, LIBERO-PRO's `_lan` and rsd_pl's `_paraphrase` on
trial 0 and the replay on `_lan`) on real LIBERO, through the same script and configs, ending in the suites table
built from the record (`<root>/results`); then a second machine's run: the run folders and checkpoints gone, the
script restores them from the record and goes on without running anything twice."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from rsd_pl.data.libero_hdf5 import demo_attributes

pytestmark = [pytest.mark.libero, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


def _smoke(tmp_path: Path, steps: str | None = None) -> str:
    env = {**os.environ, "FOUR_SUITES_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    if steps is not None:
        env["STEPS"] = steps
    done = subprocess.run(["bash", "scripts/four_suites.sh", "--smoke", "libero_spatial"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout


def test_four_suites_smoke_one_suite(tmp_path):
    _smoke(tmp_path)
    (demos,) = (tmp_path / "data" / "libero_spatial").glob("*.hdf5")
    assert all(a["placement"] == "sampled" and "init_state_index" not in a for a in demo_attributes(demos))
    runs = tmp_path / "runs" / "libero_spatial"
    records = [json.loads(line) for line in (runs / "eval" / "episodes.jsonl").read_text().splitlines()]
    by_mode = {m: sorted(r["trial"] for r in records if r["mode"] == m) for m in {r["mode"] for r in records}}
    assert by_mode == {"l1": [0, 1], "ar": [0, 1], "ar_exit": [0, 1], "parallel": [0], "speculative": [0]}
    replay = [json.loads(line) for line in (runs / "replay" / "episodes.jsonl").read_text().splitlines()]
    assert [(r["suite"], r["trial"]) for r in replay if r["mode"] == "replay" and r["task_id"] == 0] == [
        ("libero_spatial", 0), ("libero_spatial", 1), ("libero_spatial_lan", 0)]  # no replay of the paraphrase
    assert "# Blind replay floor: libero_spatial_lan" in (runs / "replay" / "replay.md").read_text()
    pro = [json.loads(line) for line in (runs / "pro" / "episodes.jsonl").read_text().splitlines()]
    assert sorted({(r["suite"], r["mode"]) for r in pro}) == sorted(
        (suite, mode) for suite in ("libero_spatial_lan", "libero_spatial_paraphrase")
        for mode in ("l1", "parallel", "ar", "ar_exit", "speculative"))
    record = tmp_path / "results"
    table = (record / "suites.md").read_text()
    assert "| l1 | " in table and "| replay | " in table and "| OpenVLA-OFT (published) | 97.6 | 97.1 |" in table
    assert "| libero_spatial | paraphrase | l1 |" in table and "| libero_spatial | lan | replay |" in table
    assert (record / "suites_pro.png").is_file() and (record / "suites.png").is_file()
    parts = ("eval", "replay", "pro")
    kept = {part: (record / "libero_spatial" / part / "episodes.jsonl").read_bytes() for part in parts}
    assert all(kept[part] == (runs / part / "episodes.jsonl").read_bytes() for part in kept)
    assert (record / "libero_spatial" / "eval" / "report.md").is_file()
    assert (record / "libero_spatial" / "checkpoints" / "registry.json").read_bytes() == (
        tmp_path / "checkpoints" / "libero_spatial" / "registry.json").read_bytes()
    assert sorted(p.name for p in (record / "libero_spatial" / "checkpoints").glob("*/v1/weights.safetensors")) == [
        "weights.safetensors"] * 2  # rfsq and main, without the registry's lock file
    assert not list((record / "libero_spatial" / "checkpoints").glob(".*"))

    # another machine: only the demos (made again by collect) and the committed record are there
    shutil.rmtree(tmp_path / "runs")
    shutil.rmtree(tmp_path / "checkpoints")
    out = _smoke(tmp_path, "fit eval table")
    assert "restored the checkpoints" in out and "fit main: skipped" in out and "fit rfsq: skipped" in out
    for part in kept:  # restored, nothing run again, the record unchanged
        assert (runs / part / "episodes.jsonl").read_bytes() == kept[part]
        assert (record / "libero_spatial" / part / "episodes.jsonl").read_bytes() == kept[part]
    assert (record / "suites.md").read_text() == table


def test_four_suites_keeps_nothing_when_the_record_holds_another_runs_log(tmp_path):
    """A log in the record that is not the start of the run folder's (another run's): the script refuses to
    overwrite it, names the file and fails, before any step runs."""
    record = tmp_path / "results" / "libero_spatial" / "eval"
    record.mkdir(parents=True)
    (record / "episodes.jsonl").write_text('{"suite": "libero_spatial", "mode": "l1"}\n')
    runs = tmp_path / "runs" / "libero_spatial" / "eval"
    runs.mkdir(parents=True)
    (runs / "episodes.jsonl").write_text('{"suite": "libero_spatial", "mode": "ar"}\n')
    env = {**os.environ, "FOUR_SUITES_ROOT": str(tmp_path), "STEPS": "table"}
    done = subprocess.run(["bash", "scripts/four_suites.sh", "--smoke", "libero_spatial"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert f"{record / 'episodes.jsonl'} is not the start of" in done.stderr
    assert (record / "episodes.jsonl").read_text() == '{"suite": "libero_spatial", "mode": "l1"}\n'
