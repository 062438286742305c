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
    def files(folder: Path) -> dict[str, bytes]:
        return {str(f.relative_to(folder)): f.read_bytes() for f in folder.rglob("*") if f.is_file()}

    exported = files(tmp_path / "checkpoints" / "libero_spatial")
    assert ".registry.lock" in exported and "main/v1/weights.safetensors" in exported
    del exported[".registry.lock"]  # the exported models, byte for byte, without the registry's lock file
    assert files(record / "libero_spatial" / "checkpoints") == exported

    # another machine: only the demos (made again by collect) and the committed record are there; the replay, rerun
    # after the eval, pairs with it
    shutil.rmtree(tmp_path / "runs")
    shutil.rmtree(tmp_path / "checkpoints")
    out = _smoke(tmp_path, "fit replay eval table")
    assert f"record restore: {tmp_path / 'checkpoints' / 'libero_spatial'} (main, rfsq)" in out
    assert f"record restore: {runs / 'eval' / 'episodes.jsonl'} ({len(records)} runs)" in out
    assert "fit main: skipped" in out and "fit rfsq: skipped" in out
    assert "| l1 | 2 | " in (runs / "replay" / "replay.md").read_text()
    for part in kept:  # restored, nothing run again, the record unchanged
        assert (runs / part / "episodes.jsonl").read_bytes() == kept[part]
        assert (record / "libero_spatial" / part / "episodes.jsonl").read_bytes() == kept[part]
    assert (record / "suites.md").read_text() == table
