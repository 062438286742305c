"""`python -m rsd_pl bench`: runs every requested mode in one run and writes the JSON report.
No timing assertions (shared machines are noisy): only structure and forward counts."""

from __future__ import annotations

import json

import pytest
import torch

from rsd_pl.bench import main
from rsd_pl.errors import RsdError
from tests.stubs import single_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")


def test_bench_writes_a_report_with_every_mode(tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    argv = ["--presets", "tiny-5m", "--modes", "parallel", "ar", "speculative", "--chunks", "2", "--warmup", "0",
            "--draft_len", "7", "--acceptance", "relaxed", "--tau", "1e9", "--scale_7b", "off", "--out", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    (result,) = report["results"]
    assert result["weights"] == "random"
    assert set(result["modes"]) == {"parallel", "ar", "speculative"}
    assert result["modes"]["ar"]["main_forwards_per_chunk"] == 8.0
    assert result["modes"]["parallel"]["main_forwards_per_chunk"] == 1.0
    assert result["modes"]["speculative"]["main_forwards_per_chunk"] == 2.0  # tau = 1e9 accepts every layer
    assert result["decoding"]["acceptance"] == "relaxed"
    assert result["speedup_speculative_over_ar_p50"] > 0
    printed = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in printed and "speculative vs ar" in printed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--main", "main@best"], "--main and --draft"),
        (["--presets", "tiny-7b"], "unknown"),
        (["--chunks", "0"], "--chunks"),
        (["--modes", "oft"], "needs --openvla"),
        (["--openvla", "random", "--main", "main@best", "--draft", "draft@best"], "separate settings"),
    ],
)
def test_bench_bad_arguments(argv: list[str], message: str) -> None:
    with pytest.raises(RsdError, match=message):
        main(argv)


def test_7b_shaped_setting_builds_with_llama2_7b_dimensions() -> None:
    """The GPU setting, built on the meta device (no memory, no GPU): the sizes are Llama-2-7B's."""
    from rsd_pl.bench import scale_7b_setting

    setting = scale_7b_setting(torch.device("meta"))
    params = sum(p.numel() for p in setting.main.parameters())
    assert 6.5e9 < params < 7.5e9, params
    assert setting.main.hidden_size == 4096
    assert next(setting.main.parameters()).dtype == torch.bfloat16
    assert setting.draft.cfg.main_hidden == 4096 and setting.draft.cfg.hidden == 512


def test_random_openvla_is_the_real_7b_architecture(oft_fixture) -> None:
    """What gpu_check.sh builds without a checkpoint: OpenVLA-OFT 7B's tensors exactly (meta device, no memory)."""
    from rsd_pl.models.openvla.parts import random_openvla_parts

    manifest = json.loads((oft_fixture / "manifest_7b.json").read_text())
    parts = random_openvla_parts(torch.device("meta"))
    tensors = manifest["files"]["model-0000{1..4}-of-00004.safetensors"]["tensors"]
    assert {k: list(v.shape) for k, v in parts.vla.state_dict().items()} == {k: v["shape"] for k, v in tensors.items()}
    assert next(parts.vla.parameters()).dtype == torch.bfloat16
    assert sum(p.numel() for p in parts.head.parameters()) == manifest["param_counts"][
        "action_head (L1RegressionActionHead)"]
