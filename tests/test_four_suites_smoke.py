"""scripts/four_suites.sh --smoke: the four-suite protocol shrunken (task 0, two demos from sampled placements, a few
training steps, 1-2 short trials, the blind replay on trials 0-1, no LIBERO-PRO step) on real LIBERO, through the same
script and configs, ending in the suites table."""

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
    assert [(r["task_id"], r["trial"], r["mode"]) for r in replay] == [(0, 0, "replay"), (0, 1, "replay")]
    assert "| l1 | 2 | " in (runs / "replay" / "replay.md").read_text()  # paired with the eval's trials 0-1
    assert not (runs / "pro").exists()  # the smoke leaves LIBERO-PRO out (tests/test_libero_pro.py runs it)
    table = (tmp_path / "runs" / "suites.md").read_text()
    assert "| l1 | " in table and "| replay | " in table and "| OpenVLA-OFT (published) | 97.6 | 97.1 |" in table
    assert (tmp_path / "runs" / "suites.png").is_file()
