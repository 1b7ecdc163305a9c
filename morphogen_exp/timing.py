"""Timing: the first (compiling) call apart, warmup, then timed iterations, each blocked on its result.

Results are tagged summaries (`TimingSummary.as_metrics(prefix)`), so trackers and reports only
format them."""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import jax
import numpy as np


@dataclass(frozen=True)
class TimingSummary:
    first_call_s: float          # includes tracing + compilation (or a persistent-cache hit)
    times_ms: tuple[float, ...]  # steady-state iterations

    @property
    def p50_ms(self) -> float:
        return float(np.median(self.times_ms))

    @property
    def p90_ms(self) -> float:
        return float(np.percentile(self.times_ms, 90))

    def as_metrics(self, prefix: str) -> dict[str, float]:
        t = np.asarray(self.times_ms)
        return {
            f"{prefix}_ms_p50": self.p50_ms,
            f"{prefix}_ms_p90": self.p90_ms,
            f"{prefix}_ms_min": float(t.min()),
            f"{prefix}_ms_max": float(t.max()),
            f"{prefix}_ms_mean": float(t.mean()),
            f"{prefix}_first_call_s": self.first_call_s,
        }


def measure(fn: Callable[[], Any], *, warmup: int, iterations: int) -> tuple[TimingSummary, Any]:
    """Time `fn()` (which dispatches device work and returns arrays). Returns the summary and the
    last result, so callers check the very answers that were timed."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    for _ in range(warmup):
        out = jax.block_until_ready(fn())
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append((time.perf_counter() - t0) * 1e3)
    return TimingSummary(first_call_s=first, times_ms=tuple(times)), out


class CellTimeout(TimeoutError):
    """A cell ran past bench.cell_timeout_s."""


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise CellTimeout in the block after `seconds` (SIGALRM: main thread only). A device call
    in flight finishes first; the exception surfaces as soon as Python runs again."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _expire(signum, frame):
        raise CellTimeout(f"cell ran past bench.cell_timeout_s={seconds:g}")

    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
