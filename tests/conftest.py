"""Shared fixtures: small LIBERO-format demo files written by the tests themselves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from rsd_pl.data.synthetic import INSTRUCTIONS, write_synthetic_demos

os.environ.setdefault("MUJOCO_GL", "egl")
# one thread per pytest-xdist worker (scripts/test.sh runs two on two cores), else at most two
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def synthetic_demo_file(tmp_path_factory):
    """One file, 12 smooth pick-and-place-like demos, 32 px images."""
    return write_synthetic_demos(tmp_path_factory.mktemp("demos") / "synthetic_demo.hdf5", num_demos=12, seed=0)


@pytest.fixture(scope="session")
def synthetic_demo_dir(tmp_path_factory):
    """A directory with two task files (two instructions), 8 demos each, 32 px images."""
    root = tmp_path_factory.mktemp("demo_dir")
    for i, text in enumerate(INSTRUCTIONS):
        write_synthetic_demos(root / f"task{i}_demo.hdf5", num_demos=8, seed=10 + i, instruction=text)
    return root


OFT_FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "openvla_oft"
"""Reference outputs of the genuine OpenVLA-OFT (shared/ beside the repo, as in CI): required, never skipped."""


@pytest.fixture(scope="session")
def oft_fixture() -> Path:
    if not (OFT_FIXTURE / "tiny_checkpoint" / "config.json").is_file():
        pytest.fail(f"{OFT_FIXTURE} is missing: the OpenVLA tests need ../shared/fixtures/openvla_oft beside the repo")
    return OFT_FIXTURE
