"""Timing: the first (compiling) call apart, warmup, then samples, each blocked on its result, until
the relative noise of the median is low enough or a cap is hit (nvbench's stopping rule).

`measure` times one path. `measure_interleaved` times several paths in rounds (A B, then B A, ...): each
round is one sample of every path taken back to back, so a load that comes and goes hits the paths of a
round alike and their ratio, taken within the round, cancels it. Its stopping rule applies to those
ratios, and it never stops before the confidence has enough rounds to mean what it says.

Results are tagged summaries (`TimingSummary.as_metrics(prefix)`), so trackers and reports only
format them."""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from .stats import blocked_median_ci, median_ci, min_samples_for, paired_ratios, relative_noise

STOPPED_BY = ("noise", "time_cap", "max_samples")


@dataclass(frozen=True)
class SamplingPolicy:
    """When to stop sampling (nvbench's rule): after `min_samples` samples and `min_time_s` seconds of
    sampling, as soon as the relative noise (half-width of the median's interval / median) is at most
    `max_noise`; or at `max_time_s` of sampling or `max_samples` samples, whichever comes first (but
    never before 2 samples). The compiling first call and `warmup` calls are not samples."""

    warmup: int
    min_samples: int
    max_noise: float = 0.01
    min_time_s: float = 0.0
    max_time_s: float = 20.0
    confidence: float = 0.95
    max_samples: int = 10_000

    def __post_init__(self) -> None:
        checks = (
            (self.warmup >= 0, f"warmup={self.warmup} must be >= 0"),
            (self.min_samples >= 1, f"min_samples={self.min_samples} must be >= 1"),
            (self.max_samples >= max(self.min_samples, 2),
             f"max_samples={self.max_samples} must be >= max(min_samples={self.min_samples}, 2)"),
            (self.max_noise > 0, f"max_noise={self.max_noise} must be > 0 (a fraction: 0.01 is 1%)"),
            (0 <= self.min_time_s <= self.max_time_s,
             f"min_time_s={self.min_time_s} and max_time_s={self.max_time_s} must satisfy 0 <= min_time_s <= max_time_s"),
            (0 < self.confidence < 1, f"confidence={self.confidence} must be between 0 and 1 (e.g. 0.95)"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(f"sampling policy: {message}")


@dataclass(frozen=True)
class TimingSummary:
    """One timed path: every sample (ms), the median's interval, the noise reached and why sampling
    stopped (`capped`: stopped before the noise reached the policy's max_noise)."""

    first_call_s: float          # includes tracing + compilation (or a persistent-cache hit)
    times_ms: tuple[float, ...]  # steady-state samples, in order
    p50_lo_ms: float
    p50_hi_ms: float
    noise: float                 # (p50_hi_ms - p50_lo_ms) / 2 / p50_ms
    stopped_by: str              # one of STOPPED_BY
    capped: bool
    confidence: float = 0.95

    @classmethod
    def from_samples(cls, first_call_s: float, times_ms: Sequence[float], *, confidence: float,
                     max_noise: float, stopped_by: str, blocked: bool = False) -> TimingSummary:
        """Summarise samples: the median's interval at `confidence` (over blocks of consecutive samples when
        `blocked`: `stats.blocked_median_ci`), and `capped` when the noise is above `max_noise` or too few
        samples were taken for the interval to reach `confidence`."""
        if stopped_by not in STOPPED_BY:
            raise ValueError(f"stopped_by={stopped_by!r} must be one of {STOPPED_BY}")
        lo, hi = blocked_median_ci(times_ms, confidence) if blocked else median_ci(times_ms, confidence)
        noise = relative_noise(times_ms, confidence, blocked=blocked)
        capped = noise > max_noise or len(times_ms) < min_samples_for(confidence)
        return cls(first_call_s, tuple(float(t) for t in times_ms), lo, hi, noise, stopped_by, capped, confidence)

    @property
    def samples(self) -> int:
        return len(self.times_ms)

    @property
    def p50_ms(self) -> float:
        return float(np.median(self.times_ms))

    @property
    def p90_ms(self) -> float:
        return float(np.percentile(self.times_ms, 90))

    def as_dict(self) -> dict[str, object]:
        """Everything recorded, samples included (the cell's timings.json)."""
        return {**dataclasses.asdict(self), "samples": self.samples, "p50_ms": self.p50_ms}

    def as_metrics(self, prefix: str) -> dict[str, float]:
        t = np.asarray(self.times_ms)
        return {
            f"{prefix}_ms_p50": self.p50_ms,
            f"{prefix}_ms_p50_lo": self.p50_lo_ms,
            f"{prefix}_ms_p50_hi": self.p50_hi_ms,
            f"{prefix}_ms_p90": self.p90_ms,
            f"{prefix}_ms_min": float(t.min()),
            f"{prefix}_ms_max": float(t.max()),
            f"{prefix}_ms_mean": float(t.mean()),
            f"{prefix}_first_call_s": self.first_call_s,
            f"{prefix}_samples": float(self.samples),
            f"{prefix}_noise": self.noise,
            f"{prefix}_capped": float(self.capped),
        }


def _policy(policy: SamplingPolicy | None, warmup: int | None, iterations: int | None) -> SamplingPolicy:
    if policy is not None:
        if warmup is not None or iterations is not None:
            raise TypeError("measure: pass either policy= or warmup=/iterations=, not both")
        return policy
    if warmup is None or iterations is None:
        raise TypeError("measure: pass policy=SamplingPolicy(...) (or warmup= and iterations=)")
    return SamplingPolicy(warmup=warmup, min_samples=iterations)


def _stop(n: int, floor: int, quiet: Callable[[], bool], sampling_s: float, p: SamplingPolicy) -> str | None:
    """Why to stop after n samples (None: go on): never below `floor`; on noise once `quiet()` after the
    minimum samples and time; else at the sample or time cap."""
    if n < floor:
        return None
    if n >= max(p.min_samples, min_samples_for(p.confidence)) and sampling_s >= p.min_time_s and quiet():
        return "noise"
    if n >= p.max_samples:
        return "max_samples"
    if sampling_s >= p.max_time_s:
        return "time_cap"
    return None


def _stop_reason(times_ms: list[float], sampling_s: float, p: SamplingPolicy) -> str | None:
    return _stop(len(times_ms), 2, lambda: relative_noise(times_ms, p.confidence) <= p.max_noise, sampling_s, p)


def measure(fn: Callable[[], Any], *, policy: SamplingPolicy | None = None, warmup: int | None = None,
            iterations: int | None = None) -> tuple[TimingSummary, Any]:
    """Time `fn()` (which dispatches device work and returns arrays), each call blocked on its result:
    the first (compiling) call apart, `policy.warmup` calls, then samples until the policy stops.
    `measure(fn, warmup=w, iterations=n)` is `policy=SamplingPolicy(warmup=w, min_samples=n)`.
    Returns the summary and the last result, so callers check the very answers that were timed."""
    p = _policy(policy, warmup, iterations)
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    for _ in range(p.warmup):
        out = jax.block_until_ready(fn())
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        t1 = time.perf_counter()
        times.append((t1 - t0) * 1e3)
        reason = _stop_reason(times, t1 - start, p)
        if reason is not None:
            break
    return TimingSummary.from_samples(first, times, confidence=p.confidence, max_noise=p.max_noise,
                                      stopped_by=reason), out


@dataclass(frozen=True)
class Interleaved:
    """Paths timed in rounds: each path's summary, and the rounds' ratios against the first path
    (`ratios[i][k]` = path 0's time / path i+1's time in round k: > 1 means path i+1 is faster)."""

    paths: tuple[TimingSummary, ...]
    ratios: tuple[tuple[float, ...], ...]
    stopped_by: str

    @property
    def rounds(self) -> int:
        return len(self.ratios[0]) if self.ratios else self.paths[0].samples


def _interleaved_stop(n: int, series: list[list[float]], sampling_s: float, p: SamplingPolicy) -> str | None:
    """Stop on the rounds' ratios (and the watched paths' own noise), never before the confidence's minimum
    (fewer rounds: an order-statistic interval would be [min, max] with less coverage than it claims)."""
    return _stop(n, max(2, min_samples_for(p.confidence)),
                 lambda: all(relative_noise(r, p.confidence, blocked=True) <= p.max_noise for r in series), sampling_s, p)


def measure_interleaved(fns: Sequence[Callable[[], Any]], *, policy: SamplingPolicy, first_call_s: Sequence[float] | None = None,
                        watch: Sequence[int] = ()) -> tuple[Interleaved, list[Any]]:
    """Time `fns` (each dispatches device work and returns arrays; already compiled) in rounds: round k
    calls every path once, each blocked on its result, in the order 0..n-1 on even rounds and n-1..0 on
    odd ones (no path always goes first). `policy.warmup` untimed rounds first. Sampling stops when the
    ratios to path 0 (and the paths in `watch`) are under `policy.max_noise`, or at a cap, but never
    before `min_samples_for(policy.confidence)` rounds. Returns the summaries with the per-round ratios,
    and each path's last result (the answers that were timed)."""
    if len(fns) < 1:
        raise ValueError("measure_interleaved needs at least one path")
    p = policy
    outs: list[Any] = [None] * len(fns)
    order = list(range(len(fns)))
    for w in range(p.warmup):
        for i in (order if w % 2 == 0 else order[::-1]):
            outs[i] = jax.block_until_ready(fns[i]())
    times: list[list[float]] = [[] for _ in fns]
    start = time.perf_counter()
    while True:
        k = len(times[0])
        for i in (order if k % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            outs[i] = jax.block_until_ready(fns[i]())
            times[i].append((time.perf_counter() - t0) * 1e3)
        ratios = [paired_ratios(times[0], t) for t in times[1:]]
        reason = _interleaved_stop(k + 1, [list(r) for r in ratios] + [times[i] for i in watch], time.perf_counter() - start, p)
        if reason is not None:
            break
    first = list(first_call_s) if first_call_s is not None else [0.0] * len(fns)
    summaries = tuple(TimingSummary.from_samples(first[i], times[i], confidence=p.confidence, max_noise=p.max_noise,
                                                 stopped_by=reason, blocked=True) for i in range(len(fns)))
    return Interleaved(summaries, tuple(tuple(float(x) for x in r) for r in ratios), reason), outs


class CellTimeout(TimeoutError):
    """A cell ran past bench.cell_timeout_s."""


@contextmanager
def time_limit(seconds: float | None, limit: str = "") -> Iterator[None]:
    """Raise CellTimeout in the block after `seconds` (SIGALRM: main thread only); its message names `limit`
    (default bench.cell_timeout_s=<seconds>). A device call in flight finishes first; the exception surfaces as
    soon as Python runs again."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _expire(signum, frame):
        raise CellTimeout(f"cell ran past {limit or f'bench.cell_timeout_s={seconds:g}'}")

    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
