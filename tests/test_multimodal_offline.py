"""The offline multimodality experiment (rsd_pl.eval.multimodal_offline): tokenizer and main model trained from
scratch on synthetic bimodal chunks (mode A y = +0.6 with p 0.7, mode B y = -0.6), then decoded 400 times.

What holds, and is asserted (the test fails if sampling is replaced by greedy decoding):
- the tokenizer keeps the two modes apart (its reconstructions classify like the data);
- sampled decoding (ar at temperature 1, and self-speculation with the sampling rule) reproduces the data's mean
  action (0.24), where greedy ar collapses onto the majority mode (0.6);
- the L1 regression head predicts the median of the data, i.e. the majority mode here (not an average).
What does not hold, and is measured (README): sampled chunks are mostly neither mode, because the T x d codes of a
layer are drawn independently, so a mode spread over many codes is mixed code by code.
"""

from __future__ import annotations

import pytest
import torch

from rsd_pl.eval.multimodal_offline import OfflineConfig, run
from tests.stubs import single_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")

MEAN_TOLERANCE = 0.08  # |sampled mean y - data mean y|; 400 samples give a standard error of about 0.03


@pytest.fixture(scope="module")
def result():
    torch.manual_seed(0)
    return run(OfflineConfig())


def data_mean(result) -> float:
    cfg = result["config"]
    share_a = result["data"]["A"]
    return cfg["amplitude"] * (share_a - (1 - share_a))


def test_tokenizer_keeps_the_modes_apart(result):
    assert result["data"]["between"] == 0.0
    assert result["tokenizer"]["A"] == pytest.approx(result["data"]["A"], abs=0.02)


def test_sampling_reproduces_the_mean_action_greedy_does_not(result):
    modes, mean = result["modes"], data_mean(result)
    assert 0.15 < mean < 0.35
    for sampled in ("ar_sampled", "speculative_sampled"):
        assert abs(modes[sampled]["mean_y"] - mean) < MEAN_TOLERANCE, (sampled, modes[sampled], mean)
    assert abs(modes["ar"]["mean_y"] - mean) > 0.2  # greedy: every chunk the majority mode
    assert modes["ar"]["A"] == 1.0


def test_l1_head_predicts_the_median_not_the_mean(result):
    l1 = result["modes"]["l1"]
    assert l1["A"] == 1.0 and l1["mean_y"] > data_mean(result) + 0.2


def test_classification():
    from rsd_pl.eval.multimodal_offline import classify

    chunks = torch.zeros(3, 8, 7)
    chunks[0, :, 1], chunks[1, :, 1], chunks[2, :3, 1] = 0.6, -0.6, 0.6
    assert classify(chunks, 0.6) == ["A", "B", "between"]
