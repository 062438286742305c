"""rsd_pl.eval.stats against known values: Wilson, exact McNemar, Newcombe's paired interval, bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rsd_pl.eval import stats

Z = 1.959963984540054  # the 97.5% normal quantile


def _wilson_closed_form(k: int, n: int) -> tuple[float, float]:
    p = k / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return centre - half, centre + half


def test_wilson_known_values_and_edges():
    assert stats.wilson_interval(8, 16) == pytest.approx((0.27999564, 0.72000436), abs=1e-7)
    assert stats.wilson_interval(12, 16) == pytest.approx((0.50501683, 0.89817933), abs=1e-7)
    for k, n in [(1, 3), (7, 50), (49, 50), (3, 500)]:
        assert stats.wilson_interval(k, n) == pytest.approx(_wilson_closed_form(k, n), abs=1e-12)
    low, high = stats.wilson_interval(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.27753279, abs=1e-7)
    assert stats.wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert all(math.isnan(v) for v in stats.wilson_interval(0, 0))


def test_mcnemar_exact_is_the_binomial_on_discordant_pairs():
    # 1 vs 7 discordant: p = 2 * P(X <= 1), X ~ Bin(8, 1/2) = 2 * (1 + 8) / 256
    assert stats.mcnemar_exact(1, 7) == pytest.approx(18 / 256)
    assert stats.mcnemar_exact(7, 1) == pytest.approx(18 / 256)
    assert stats.mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    assert stats.mcnemar_exact(3, 3) == 1.0 and stats.mcnemar_exact(0, 0) == 1.0
    # 2 vs 10: 2 * (1 + 12 + 66) / 4096
    assert stats.mcnemar_exact(2, 10) == pytest.approx(2 * (1 + 12 + 66) / 4096)


def test_newcombe_paired_interval_known_tables():
    # Tables from Fagerland, Lydersen & Laake's paired 2x2 chapter (R package contingencytables,
    # Newcombe_square_and_add_CI_paired_2x2): values checked against a line-by-line transcription of it.
    # Bentur 2009: both 1, row only 1, column only 7, neither 12.
    assert stats.newcombe_paired_difference(1, 1, 7, 12) == pytest.approx((-6 / 21, -0.50692023, -0.02555912))
    # Cavo 2012: positive association above n/2, so phi is corrected and not zero.
    assert stats.newcombe_paired_difference(59, 6, 16, 80) == pytest.approx((-10 / 161, -0.11862120, -0.00462511))
    # swapping the two modes mirrors the interval
    d, low, high = stats.newcombe_paired_difference(59, 16, 6, 80)
    assert (d, low, high) == pytest.approx((10 / 161, 0.00462511, 0.11862120))
    # no discordant pairs: difference 0, an interval around 0
    d, low, high = stats.newcombe_paired_difference(8, 0, 0, 8)
    assert d == 0.0 and low < 0 < high


def test_paired_success_test_counts_and_verdicts():
    mode = [True, True, False, True, False, True]
    ref = [True, False, False, False, True, True]
    result = stats.paired_success_test(mode, ref)
    assert (result["episodes"], result["both"], result["mode_only"], result["reference_only"], result["neither"]) == (
        6, 2, 2, 1, 1)
    assert result["difference"] == pytest.approx(1 / 6)
    assert result["p_value"] == pytest.approx(1.0)  # 2 vs 1 discordant
    assert result["verdict"] == "within noise" and result["ci_low"] < 0 < result["ci_high"]
    # 40 paired episodes, the reference solves 14 more: clearly worse
    worse = stats.paired_success_test([True] * 20 + [False] * 20, [True] * 34 + [False] * 6)
    assert worse["reference_only"] == 14 and worse["mode_only"] == 0
    assert worse["p_value"] == pytest.approx(2 / 2**14)
    assert worse["ci_high"] < 0 and worse["verdict"] == "worse"
    better = stats.paired_success_test([True] * 34 + [False] * 6, [True] * 20 + [False] * 20)
    assert better["verdict"] == "better" and better["ci_low"] > 0
    assert stats.paired_success_test([], [])["verdict"] == "no paired episodes"
    with pytest.raises(ValueError, match="differ in length"):
        stats.paired_success_test([True], [True, False])


def _episodes(rng: np.random.Generator, count: int, median_ms: float) -> list[list[float]]:
    return [list(rng.lognormal(math.log(median_ms), 0.5, size=rng.integers(5, 30))) for _ in range(count)]


def test_bootstrap_ratio_identical_scaled_and_point_estimate():
    rng = np.random.default_rng(0)
    reference = _episodes(rng, 12, 40.0)
    same = stats.bootstrap_latency_ratio(reference, reference, resamples=200)
    assert same["mean"] == pytest.approx({"ratio": 1.0, "low": 1.0, "high": 1.0})
    assert same["p50"] == pytest.approx({"ratio": 1.0, "low": 1.0, "high": 1.0})
    halved = stats.bootstrap_latency_ratio(reference, [[v / 2 for v in ep] for ep in reference], resamples=200)
    assert halved["mean"] == pytest.approx({"ratio": 2.0, "low": 2.0, "high": 2.0})
    mode = _episodes(rng, 12, 25.0)
    result = stats.bootstrap_latency_ratio(reference, mode)
    pooled_ref, pooled_mode = np.concatenate(reference), np.concatenate(mode)
    assert result["mean"]["ratio"] == pytest.approx(pooled_ref.mean() / pooled_mode.mean())
    assert result["p50"]["ratio"] == pytest.approx(np.median(pooled_ref) / np.median(pooled_mode))
    assert (result["episodes"], result["resamples"]) == (12, 2000)
    for stat in ("mean", "p50"):
        assert result[stat]["low"] < result[stat]["ratio"] < result[stat]["high"]


def test_bootstrap_interval_shrinks_with_episodes_and_is_seeded():
    rng = np.random.default_rng(1)
    few = stats.bootstrap_latency_ratio(_episodes(rng, 10, 40.0), _episodes(rng, 10, 25.0))
    many = stats.bootstrap_latency_ratio(_episodes(rng, 320, 40.0), _episodes(rng, 320, 25.0))
    for stat in ("mean", "p50"):
        assert many[stat]["high"] - many[stat]["low"] < 0.4 * (few[stat]["high"] - few[stat]["low"])
        assert many[stat]["low"] < 1.6 < many[stat]["high"]  # the true ratio 40 / 25
    rng = np.random.default_rng(2)
    reference, mode = _episodes(rng, 20, 40.0), _episodes(rng, 20, 25.0)
    first = stats.bootstrap_latency_ratio(reference, mode, seed=3)
    assert stats.bootstrap_latency_ratio(reference, mode, seed=3) == first
    assert stats.bootstrap_latency_ratio(reference, mode, seed=4)["mean"]["low"] != first["mean"]["low"]
    with pytest.raises(ValueError, match="differ in number"):
        stats.bootstrap_latency_ratio(reference, mode[:-1])


def test_bootstrap_with_no_episodes_is_nan():
    empty = stats.bootstrap_latency_ratio([], [], resamples=10)
    assert empty["episodes"] == 0 and all(math.isnan(v) for v in empty["mean"].values())


def test_mean_rate_interval_is_the_pooled_wilson_with_equal_trials_and_holds_the_mean_otherwise():
    # one group, and groups of equal trials: the Wilson interval of the (pooled) counts, to the digit
    assert stats.mean_rate_interval([(19, 100)]) == pytest.approx((0.19, *stats.wilson_interval(19, 100)))
    for counts in ([(400, 500), (440, 500), (329, 500), (97, 500)], [(0, 50), (0, 50)], [(50, 50), (50, 50)]):
        successes, trials = sum(s for s, _ in counts), sum(n for _, n in counts)
        assert stats.mean_rate_interval(counts) == pytest.approx(
            (successes / trials, *stats.wilson_interval(successes, trials)), abs=1e-12)
    # a suite part-way through: 248/500 and 19/102 average 34.1%, which the pooled counts' interval (40-48%)
    # misses; the effective-sample-size interval holds it, and is wider than either group's alone would suggest
    # of 602 independent trials
    mean, low, high = stats.mean_rate_interval([(248, 500), (19, 102)])
    assert mean == pytest.approx((248 / 500 + 19 / 102) / 2)
    pooled_low, pooled_high = stats.wilson_interval(267, 602)
    assert not pooled_low <= mean <= pooled_high
    assert low < mean < high and high - low > pooled_high - pooled_low
    # its effective sample size: sqrt of the mean's variance is the normal half-width / z, near enough at this n
    sd = math.sqrt((0.496 * 0.504 / 500 + (19 / 102) * (1 - 19 / 102) / 102) / 4)
    assert (high - low) / 2 == pytest.approx(Z * sd, rel=0.05)
    assert all(math.isnan(v) for v in stats.mean_rate_interval([(0, 0)]))
