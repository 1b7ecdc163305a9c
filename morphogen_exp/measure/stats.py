"""Confidence intervals for timings: the median's (distribution-free), a ratio of medians'
(seeded bootstrap), rates from latency bounds, and one cell's derived metrics with their bounds.

Every interval is deterministic: the same samples give the same interval."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from math import isqrt
from typing import Protocol

import numpy as np
from scipy import stats as sps

BOOTSTRAP_SEED = 20261127
BOOTSTRAP_RESAMPLES = 2000


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r} must be between 0 and 1 (e.g. 0.95)")


def _as_samples(samples: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float64).ravel()
    if x.size < 2:
        raise ValueError(f"{name} needs at least 2 samples, got {x.size}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} has non-finite samples")
    return x


@lru_cache(maxsize=4096)
def order_stat_ranks(n: int, confidence: float) -> tuple[int, int]:
    """0-based ranks (lo, hi) of the order statistics bounding the median with coverage >= confidence:
    lo = the largest k with P(Binomial(n, 1/2) <= k) <= (1 - confidence) / 2, hi = n - 1 - lo.
    Below `min_samples_for(confidence)` samples no such k exists and the ranks are (0, n - 1)."""
    _check_confidence(confidence)
    tail = (1.0 - confidence) / 2.0
    k = int(sps.binom.ppf(tail, n, 0.5))  # smallest k with cdf(k) >= tail
    if sps.binom.cdf(k, n, 0.5) > tail:
        k -= 1                           # largest k with cdf(k) <= tail
    lo = max(k, 0)
    return lo, n - 1 - lo


def coverage(n: int, confidence: float) -> float:
    """The exact coverage of `median_ci` for n samples of a continuous distribution."""
    lo, _ = order_stat_ranks(n, confidence)
    return float(1.0 - 2.0 * sps.binom.cdf(lo, n, 0.5))


@lru_cache(maxsize=64)
def min_samples_for(confidence: float) -> int:
    """The fewest samples whose [min, max] bounds the median with at least `confidence` (6 at 0.95)."""
    _check_confidence(confidence)
    n = 2
    while 1.0 - 2.0 ** (1 - n) < confidence:
        n += 1
    return n


def median_ci(samples: Sequence[float] | np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free interval of the median: a pair of order statistics (conservative: coverage >=
    confidence from `min_samples_for(confidence)` samples on; below that it is [min, max]). O(n)."""
    x = _as_samples(samples, "median_ci")
    lo, hi = order_stat_ranks(x.size, confidence)
    part = np.partition(x, (lo, hi))
    return float(part[lo]), float(part[hi])


def blocked_median_ci(samples: Sequence[float] | np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The median's interval for samples taken in time order, where neighbours share conditions (a load that
    comes and goes): the samples are cut into k consecutive blocks (k = sqrt(n), at least what the confidence
    needs; up to that many samples, one block each) and the interval is `median_ci` of the blocks' medians
    (batch means), widened to hold the median of all samples. A change of conditions within the run widens
    it; steady samples give the same interval as `median_ci`'s order statistics would, at block resolution."""
    x = _as_samples(samples, "blocked_median_ci")
    m = min_samples_for(confidence)
    k = x.size if x.size <= m else max(m, isqrt(x.size))
    meds = np.array([np.median(b) for b in np.array_split(x, k)])
    lo, hi = median_ci(meds, confidence)
    med = float(np.median(x))
    return min(lo, med), max(hi, med)


def relative_noise(samples: Sequence[float] | np.ndarray, confidence: float = 0.95, *, blocked: bool = False) -> float:
    """Half-width of the median's interval (`blocked_median_ci` when blocked) over the median (inf when it is 0)."""
    x = _as_samples(samples, "relative_noise")
    lo, hi = blocked_median_ci(x, confidence) if blocked else median_ci(x, confidence)
    med = float(np.median(x))
    return (hi - lo) / 2.0 / med if med > 0 else float("inf")


def _ratio_of_medians(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.median(a, axis=axis) / np.median(b, axis=axis)


def ratio_ci(num_samples: Sequence[float] | np.ndarray, den_samples: Sequence[float] | np.ndarray,
             confidence: float = 0.95, *, seed: int = BOOTSTRAP_SEED,
             n_resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """Interval of median(num) / median(den): a seeded percentile bootstrap, each sample resampled on
    its own (the two paths are timed independently). Both constant -> the exact ratio, twice."""
    _check_confidence(confidence)
    a = _as_samples(num_samples, "ratio_ci numerator")
    b = _as_samples(den_samples, "ratio_ci denominator")
    if np.median(b) <= 0 or np.min(b) <= 0:
        raise ValueError("ratio_ci denominator samples must all be > 0")
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        r = float(a[0] / b[0])
        return r, r
    res = sps.bootstrap((a, b), _ratio_of_medians, vectorized=True, paired=False, confidence_level=confidence,
                        method="percentile", n_resamples=n_resamples, batch=100, rng=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    point = float(_ratio_of_medians(a, b))
    return min(lo, point), max(hi, point)   # the point estimate always lies inside its interval


def paired_ratios(num_samples: Sequence[float] | np.ndarray, den_samples: Sequence[float] | np.ndarray) -> np.ndarray:
    """num[k] / den[k] for each pair k (two paths timed in the same round)."""
    a, b = np.asarray(num_samples, dtype=np.float64), np.asarray(den_samples, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal counts, got {a.size} and {b.size}")
    if np.any(b <= 0):
        raise ValueError("paired ratio denominators must all be > 0")
    return a / b


def paired_ratio_ci(num_samples: Sequence[float] | np.ndarray, den_samples: Sequence[float] | np.ndarray,
                    confidence: float = 0.95) -> tuple[float, float, float]:
    """The median of the per-pair ratios num[k] / den[k] and its distribution-free interval over blocks of
    consecutive pairs (`blocked_median_ci`): the paired estimate of how many times slower num is than den. A
    load that scales both samples of a pair alike cancels in its ratio; one that changes the ratio itself
    while it lasts widens the interval instead of biasing it unseen."""
    r = paired_ratios(num_samples, den_samples)
    lo, hi = blocked_median_ci(r, confidence)
    return float(np.median(r)), lo, hi


def rate_ci(q: int, ms_lo: float, ms_hi: float) -> tuple[float, float]:
    """Queries/s bounds from the bounds of the time for q queries (the slow end gives the low rate)."""
    if q < 1:
        raise ValueError(f"q={q} must be >= 1")
    if not 0 < ms_lo <= ms_hi:
        raise ValueError(f"latency bounds must satisfy 0 < ms_lo <= ms_hi, got {ms_lo=}, {ms_hi=}")
    return q * 1e3 / ms_hi, q * 1e3 / ms_lo


class PathTimes(Protocol):
    """What `cell_metrics` reads of one timed path (a `timing.TimingSummary`): its samples, their median and
    that median's interval."""

    @property
    def times_ms(self) -> Sequence[float]: ...
    @property
    def p50_ms(self) -> float: ...
    @property
    def p50_lo_ms(self) -> float: ...
    @property
    def p50_hi_ms(self) -> float: ...
    @property
    def samples(self) -> int: ...


def _with_bounds(name: str, value: float, bounds: tuple[float, float]) -> dict[str, float]:
    return {name: value, f"{name}_lo": bounds[0], f"{name}_hi": bounds[1]}


def cell_metrics(q: int, single: PathTimes, batch: PathTimes, confidence: float = 0.95, *,
                 paired: bool = True) -> dict[str, float]:
    """One cell's derived metrics, each with `_lo`/`_hi` bounds: the single-query loop's and the batch
    path's time per batch of q queries (each summary's median and its own interval: blocked when the paths
    were timed in rounds), the speedup and both rates in queries/s. `paired`
    (the two paths timed in rounds, `timing.measure_interleaved`): the speedup is the median of the
    rounds' ratios single / batch with its order-statistic interval, and `speedup_pairs` says how many
    rounds it rests on; unpaired, median(single) / median(batch) with a bootstrap interval."""
    s_ms, b_ms = single.p50_ms, batch.p50_ms
    s_ci, b_ci = (single.p50_lo_ms, single.p50_hi_ms), (batch.p50_lo_ms, batch.p50_hi_ms)  # each summary's own interval
    out: dict[str, float] = {}
    out |= _with_bounds("single_ms_per_batch", s_ms, s_ci)
    out |= _with_bounds("batch_ms_per_batch", b_ms, b_ci)
    if paired:
        sp, sp_lo, sp_hi = paired_ratio_ci(single.times_ms, batch.times_ms, confidence)
        out |= _with_bounds("batch_vs_single_speedup", sp, (sp_lo, sp_hi))
        out["speedup_pairs"] = float(single.samples)
        out["speedup_noise"] = (sp_hi - sp_lo) / 2.0 / sp  # the stopping rule's noise: the same blocked interval
    else:
        out |= _with_bounds("batch_vs_single_speedup", s_ms / b_ms, ratio_ci(single.times_ms, batch.times_ms, confidence))
    out["confidence"] = confidence
    out |= _with_bounds("single_qps", q * 1e3 / s_ms, rate_ci(q, *s_ci))
    out |= _with_bounds("batch_qps", q * 1e3 / b_ms, rate_ci(q, *b_ci))
    return out
