"""Statistics for the evaluation report: success intervals, paired tests between modes, latency-ratio
intervals. Plain functions on counts, lists and episode records; no Lightning, no environment.

- `wilson_interval`: Wilson score 95% interval of k/n (scipy's `binomtest(...).proportion_ci`).
- `mcnemar_exact`: exact McNemar test, the two-sided binomial test of the discordant pairs at 1/2.
- `newcombe_paired_difference`: Newcombe's (1998, Stat Med 17:2635, method 10) interval for the
  difference of two paired proportions: square-and-add of the two Wilson intervals with the
  correlation between them (phi) corrected as in the paper.
- `paired_success_test`: the two above on per-episode outcomes, with a plain-words verdict.
- `bootstrap_latency_ratio`: percentile bootstrap interval of reference / mode chunk latency (mean
  and p50 of the pooled chunks), resampling whole episodes as pairs (the same suite, task and trial
  in both modes), so chunks of one episode stay together.
- `paired_comparisons`, `speedups`: the two above applied to the episode log's records, paired by
  (suite, task_id, trial) with `pair_by_episode`.

Dependency choice: scipy (already locked; robosuite needs it) supplies the Wilson interval and the
exact binomial test. statsmodels has the same two (`proportion_confint`, `mcnemar`) but not Newcombe's
paired interval, and would add pandas and patsy for two functions, so it is not used. Newcombe's
interval and the paired bootstrap are written here (a few lines each, checked in
tests/test_eval_stats.py). scipy is imported inside the functions: `rsd_pl.eval.runner` imports the
report, and `scipy.stats` takes about a second to import.

Imports: numpy / scipy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
SPEEDUP_BASELINES = ("ar", "ar_exit", "parallel")
"""The modes `speculative` is compared with in the speedup table: full ar, ar with early exit, parallel."""


def wilson_interval(successes: int, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of successes / trials as fractions in [0, 1]; (nan, nan) for no trials."""
    if trials == 0:
        return (math.nan, math.nan)
    from scipy.stats import binomtest

    interval = binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(interval.low), float(interval.high))


def mean_rate_interval(counts: Sequence[tuple[int, int]], confidence: float = CONFIDENCE
                       ) -> tuple[float, float, float]:
    """(mean, low, high): the unweighted mean of several groups' success rates (the papers' average over suites),
    given (successes, trials) per group, with a Wilson interval at the mean's effective sample size.

    The mean m = sum(p_i) / K has variance sum(p_i (1 - p_i) / n_i) / K^2. The Wilson interval is taken at
    n_eff = m (1 - m) / variance (Kish's design effect, as Korn and Graubard apply it to survey proportions), capped
    at the total trials N. With as many trials in every group this is the pooled counts' Wilson interval exactly;
    with unequal trials it is centred on m, which the pooled counts' interval need not contain. Hand-written:
    neither scipy nor numpy has it, and scipy's Wilson takes integer counts only.
    """
    counts = [(s, n) for s, n in counts if n > 0]
    if not counts:
        return (math.nan, math.nan, math.nan)
    rates = [s / n for s, n in counts]
    mean, total = sum(rates) / len(rates), sum(n for _, n in counts)
    variance = sum(p * (1 - p) / n for p, (_, n) in zip(rates, counts, strict=True)) / len(counts) ** 2
    n_eff = total if variance <= 0 else min(total, mean * (1 - mean) / variance)
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + confidence / 2))
    shrink = 1 + z * z / n_eff
    centre = (mean + z * z / (2 * n_eff)) / shrink
    half = z / shrink * math.sqrt(mean * (1 - mean) / n_eff + z * z / (4 * n_eff * n_eff))
    return (mean, max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_exact(mode_only: int, reference_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs: episodes only the mode solved
    (`mode_only`) and only the reference solved (`reference_only`); 1.0 when there are none."""
    discordant = mode_only + reference_only
    if discordant == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(mode_only, discordant, 0.5).pvalue)


def newcombe_paired_difference(both: int, mode_only: int, reference_only: int, neither: int,
                               confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(difference, low, high) of success rate mode - reference over n paired episodes, as fractions.

    The 2x2 table of paired outcomes: `both` succeeded, `mode_only`, `reference_only`, `neither`.
    """
    n = both + mode_only + reference_only + neither
    if n == 0:
        return (math.nan, math.nan, math.nan)
    p_mode, p_ref = (both + mode_only) / n, (both + reference_only) / n
    low_mode, high_mode = wilson_interval(both + mode_only, n, confidence)
    low_ref, high_ref = wilson_interval(both + reference_only, n, confidence)
    marginals = (both + mode_only) * (reference_only + neither) * (both + reference_only) * (mode_only + neither)
    cross = both * neither - mode_only * reference_only
    if marginals == 0 or 0 <= cross <= n / 2:
        phi = 0.0  # Newcombe's correction: a small positive association counts as none
    else:
        phi = (cross - n / 2 if cross > 0 else cross) / math.sqrt(marginals)
    difference = p_mode - p_ref
    down = math.sqrt(max((p_mode - low_mode) ** 2 - 2 * phi * (p_mode - low_mode) * (high_ref - p_ref)
                         + (high_ref - p_ref) ** 2, 0.0))
    up = math.sqrt(max((p_ref - low_ref) ** 2 - 2 * phi * (p_ref - low_ref) * (high_mode - p_mode)
                       + (high_mode - p_mode) ** 2, 0.0))
    return (difference, max(difference - down, -1.0), min(difference + up, 1.0))


def verdict(difference: float, low: float, high: float, p_value: float, alpha: float = 1 - CONFIDENCE) -> str:
    """'within noise' when the interval contains 0 or p >= alpha, else 'better' / 'worse'."""
    if math.isnan(difference):
        return "no paired episodes"
    if low <= 0.0 <= high or p_value >= alpha:
        return "within noise"
    return "better" if difference > 0 else "worse"


def paired_success_test(mode_success: Sequence[bool],
                        reference_success: Sequence[bool]) -> dict[str, float | int | str]:
    """Mode against reference on the same episodes (element i of both lists is one episode).

    Returns the 2x2 counts, `difference` (mode - reference success rate, fraction) with its Newcombe
    interval `ci_low` / `ci_high`, the exact McNemar `p_value`, and the `verdict`.
    """
    if len(mode_success) != len(reference_success):
        raise ValueError(f"paired outcomes differ in length: {len(mode_success)} != {len(reference_success)}")
    pairs = list(zip(map(bool, mode_success), map(bool, reference_success), strict=True))
    both = sum(m and r for m, r in pairs)
    mode_only = sum(m and not r for m, r in pairs)
    reference_only = sum(r and not m for m, r in pairs)
    neither = len(pairs) - both - mode_only - reference_only
    difference, low, high = newcombe_paired_difference(both, mode_only, reference_only, neither)
    p_value = mcnemar_exact(mode_only, reference_only) if pairs else math.nan
    return {"episodes": len(pairs), "both": both, "mode_only": mode_only, "reference_only": reference_only,
            "neither": neither, "difference": difference, "ci_low": low, "ci_high": high,
            "p_value": p_value, "verdict": verdict(difference, low, high, p_value)}


def _flatten(episodes: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Chunk latencies of E episodes -> (values (C,), episode index of each value (C,))."""
    values = np.asarray([v for chunk_list in episodes for v in chunk_list], dtype=np.float64)
    owner = np.repeat(np.arange(len(episodes)), [len(chunk_list) for chunk_list in episodes])
    return values, owner


def _pooled_mean_p50(values: np.ndarray, owner: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """Mean and median of the chunks pooled over a resample; `weights` (E,) counts each episode's copies."""
    copies = weights[owner]
    if copies.sum() == 0:
        return (math.nan, math.nan)
    return (float(np.dot(copies, values) / copies.sum()), float(np.median(np.repeat(values, copies))))


def bootstrap_latency_ratio(reference: Sequence[Sequence[float]], mode: Sequence[Sequence[float]], *,
                            resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                            confidence: float = CONFIDENCE) -> dict[str, dict[str, float] | int]:
    """Ratio reference / mode of the mean and of the p50 chunk latency, with percentile-bootstrap intervals.

    reference, mode: E paired episodes; `reference[i]` and `mode[i]` are the chunk latencies (ms) of
    the same (suite, task, trial) in the two modes. Each resample draws E episode indices with
    replacement and pools the chunks of the drawn episodes in each mode (numpy's Generator, `seed`).
    Returns {"mean": {ratio, low, high}, "p50": {ratio, low, high}, "episodes": E, "resamples": R};
    a ratio above 1 means the mode is faster than the reference.
    """
    if len(reference) != len(mode):
        raise ValueError(f"paired episodes differ in number: {len(reference)} != {len(mode)}")
    n_episodes = len(reference)
    ref_values, ref_owner = _flatten(reference)
    mode_values, mode_owner = _flatten(mode)

    def ratio(weights: np.ndarray) -> np.ndarray:  # (2,): mean ratio, p50 ratio
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.divide(_pooled_mean_p50(ref_values, ref_owner, weights),
                             _pooled_mean_p50(mode_values, mode_owner, weights))

    point = ratio(np.ones(n_episodes, dtype=np.int64))
    rng = np.random.default_rng(seed)
    ratios = np.full((resamples, 2), np.nan)  # (R, 2)
    for r in range(resamples if n_episodes else 0):
        ratios[r] = ratio(np.bincount(rng.integers(0, n_episodes, n_episodes), minlength=n_episodes))
    tail = 100 * (1 - confidence) / 2
    out: dict[str, dict[str, float] | int] = {"episodes": n_episodes, "resamples": resamples}
    for column, stat in enumerate(("mean", "p50")):
        finite = ratios[:, column][np.isfinite(ratios[:, column])]
        low, high = np.percentile(finite, [tail, 100 - tail]) if finite.size else (math.nan, math.nan)
        out[stat] = {"ratio": float(point[column]), "low": float(low), "high": float(high)}
    return out


# --- on episode records (fields of rsd_pl.eval.runner.EpisodeResult) ------------------------------


def succeeded(record: dict[str, Any]) -> bool:
    """Success only when the environment reported it (DESIGN.md section 6)."""
    return record["status"] == "success" and bool(record["success"])


def pair_by_episode(records: list[dict[str, Any]], mode: str, other: str) -> list[tuple[dict, dict]]:
    """(mode record, other record) for each episode both modes ran (same suite, task_id, trial), sorted."""
    def key(r: dict[str, Any]) -> tuple[str, int, int]:
        return (r["suite"], int(r["task_id"]), int(r["trial"]))

    others = {key(r): r for r in records if r["mode"] == other}
    return [(r, others[key(r)]) for r in sorted((r for r in records if r["mode"] == mode), key=key)
            if key(r) in others]


def paired_comparisons(records: list[dict[str, Any]], modes: list[str], reference_mode: str) -> dict[str, Any]:
    """Each of `modes` against `reference_mode` on their shared episodes (`paired_success_test`):
    {reference_mode, reference_present, note, modes: {mode: test}}; the note says when the reference
    mode is not in the run (then `modes` is empty)."""
    if reference_mode not in modes:
        return {"reference_mode": reference_mode, "reference_present": False, "modes": {},
                "note": f"reference mode {reference_mode!r} is not in this run (modes: {', '.join(modes)}): "
                        "no paired comparisons"}
    rows = {}
    for mode in modes:
        if mode != reference_mode:
            pairs = pair_by_episode(records, mode, reference_mode)
            rows[mode] = paired_success_test([succeeded(m) for m, _ in pairs], [succeeded(r) for _, r in pairs])
    return {"reference_mode": reference_mode, "reference_present": True, "modes": rows, "note": ""}


def speedups(records: list[dict[str, Any]], modes: dict[str, dict[str, Any]],
             fast: str = "speculative") -> list[dict[str, Any]]:
    """`fast` against each of SPEEDUP_BASELINES in the run: chunk-latency ratio baseline / fast (mean and
    p50) on the paired episodes, with bootstrap 95% intervals `mean_ci` / `p50_ci` = [low, high].
    Only episodes the two modes ran in the same process are paired (the records' `run`; logs written before
    it was recorded pair as before): a resumed or partly redone log holds runs measured at other times, on a
    shared machine under other load. `other_run_episodes` counts the pairs left out.
    `modes` is the report's per-mode summary (for main forwards per chunk)."""
    rows = []
    for slow in SPEEDUP_BASELINES:
        if fast not in modes or slow not in modes:
            continue
        all_pairs = pair_by_episode(records, fast, slow)
        pairs = [(f, s) for f, s in all_pairs if f.get("run") == s.get("run")]
        boot = bootstrap_latency_ratio([s.get("chunk_latency_ms") or [] for _, s in pairs],
                                       [f.get("chunk_latency_ms") or [] for f, _ in pairs])
        rows.append({"fast": fast, "slow": slow, "episodes": boot["episodes"],
                     "other_run_episodes": len(all_pairs) - len(pairs),
                     **{f"{stat}_latency_ratio": boot[stat]["ratio"] for stat in ("mean", "p50")},
                     **{f"{stat}_ci": [boot[stat]["low"], boot[stat]["high"]] for stat in ("mean", "p50")},
                     "main_forwards_per_chunk": {slow: modes[slow]["main_forwards_per_chunk"],
                                                 fast: modes[fast]["main_forwards_per_chunk"]}})
    return rows
