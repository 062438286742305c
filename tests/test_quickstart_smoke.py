"""The README's main command, shrunken: collect -> fit rfsq -> fit main -> fit draft -> eval, on
real LIBERO, through the same script and configs (scripts/quickstart.sh --smoke). A few minutes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from rsd_pl.registry import Registry

pytestmark = [pytest.mark.libero, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


def _run(root: Path) -> str:
    env = {**os.environ, "QUICKSTART_ROOT": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "scripts/quickstart.sh", "--smoke"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout


def test_quickstart_smoke_end_to_end(tmp_path):
    first = _run(tmp_path)
    registry = Registry(tmp_path / "checkpoints")
    main, draft = registry.resolve("main@best"), registry.resolve("draft@best")
    assert draft.lineage["main"] == main.spec and main.lineage["tokenizer"] == registry.resolve("rfsq@best").spec
    assert list((tmp_path / "runs" / "main").rglob("events.out.tfevents.*"))
    report = json.loads((tmp_path / "runs" / "eval" / "report.json").read_text())
    assert "speculative" in first and (tmp_path / "runs" / "eval" / "report.md").is_file()
    lines = (tmp_path / "runs" / "eval" / "episodes.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["mode"] for line in lines) == ["ar", "ar_exit", "l1", "parallel", "speculative"]
    assert report  # a report was built from those episodes
    # a second run reuses the registry (no retraining) and the finished episodes
    second = _run(tmp_path)
    assert second.count("skipped, ") == 3 and "already in" in second
    assert len((tmp_path / "runs" / "eval" / "episodes.jsonl").read_text().splitlines()) == 5
    assert registry.resolve("main@latest").version == main.version
