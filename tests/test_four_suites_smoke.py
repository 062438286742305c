"""scripts/four_suites.sh --smoke: the four-suite protocol shrunken (task 0, two demos from sampled placements, a few
training steps, 1-2 short trials, the blind replay on trials 0-1, LIBERO-PRO's `_lan` and rsd_pl's `_paraphrase` on
trial 0 and the replay on `_lan`) on real LIBERO, through the same script and configs, ending in the suites table."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from rsd_pl.data.libero_hdf5 import demo_attributes

pytestmark = [pytest.mark.libero, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


def test_four_suites_smoke_one_suite(tmp_path):
    env = {**os.environ, "FOUR_SUITES_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "scripts/four_suites.sh", "--smoke", "libero_spatial"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    (demos,) = (tmp_path / "data" / "libero_spatial").glob("*.hdf5")
    assert all(a["placement"] == "sampled" and "init_state_index" not in a for a in demo_attributes(demos))
    runs = tmp_path / "runs" / "libero_spatial"
    records = [json.loads(line) for line in (runs / "eval" / "episodes.jsonl").read_text().splitlines()]
    by_mode = {m: sorted(r["trial"] for r in records if r["mode"] == m) for m in {r["mode"] for r in records}}
    assert by_mode == {"l1": [0, 1], "ar": [0, 1], "ar_exit": [0, 1], "parallel": [0], "speculative": [0]}
    replay = [json.loads(line) for line in (runs / "replay" / "episodes.jsonl").read_text().splitlines()]
    assert [(r["suite"], r["trial"]) for r in replay if r["mode"] == "replay" and r["task_id"] == 0] == [
        ("libero_spatial", 0), ("libero_spatial", 1), ("libero_spatial_lan", 0)]  # no replay of the paraphrase
    replay_md = (runs / "replay" / "replay.md").read_text()
    assert "| l1 | 2 | " in replay_md and "# Blind replay floor: libero_spatial_lan" in replay_md
    pro = [json.loads(line) for line in (runs / "pro" / "episodes.jsonl").read_text().splitlines()]
    assert sorted({(r["suite"], r["mode"]) for r in pro}) == sorted(
        (suite, mode) for suite in ("libero_spatial_lan", "libero_spatial_paraphrase")
        for mode in ("l1", "parallel", "ar", "ar_exit", "speculative"))
    table = (tmp_path / "runs" / "suites.md").read_text()
    assert "| l1 | " in table and "| replay | " in table and "| OpenVLA-OFT (published) | 97.6 | 97.1 |" in table
    assert "| libero_spatial | paraphrase | l1 |" in table and "| libero_spatial | lan | replay |" in table
    assert (tmp_path / "runs" / "suites_pro.png").is_file()
    assert (tmp_path / "runs" / "suites.png").is_file()
