"""The stopping rule on a fake clock (each call advances it by a scripted duration), the summary's
metrics, the old call, policy errors, and one real jitted function."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from morphogen_exp.measure import stats, timing
from morphogen_exp.measure.stats import median_ci, min_samples_for, relative_noise
from morphogen_exp.measure.timing import SamplingPolicy, TimingSummary, measure


class FakeClock:
    """perf_counter for timing.py; each fn() call advances it by the next scripted duration (ms)."""

    def __init__(self, durations_ms: Iterable[float]) -> None:
        self.now = 0.0
        self.calls = 0
        self._durations = iter(durations_ms)

    def perf_counter(self) -> float:
        return self.now

    def fn(self) -> int:
        self.now += next(self._durations) / 1e3
        self.calls += 1
        return self.calls


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch):
    def make(durations_ms: Iterable[float]) -> FakeClock:
        c = FakeClock(durations_ms)
        monkeypatch.setattr(timing, "time", c)
        return c
    return make


def test_first_call_and_warmup_are_not_samples_and_steady_timings_stop_on_noise(clock) -> None:
    c = clock(itertools.chain([900.0, 50.0, 50.0], itertools.repeat(5.0)))
    s, out = measure(c.fn, policy=SamplingPolicy(warmup=2, min_samples=10))
    assert s.first_call_s == pytest.approx(0.9)
    assert s.times_ms == pytest.approx((5.0,) * 10)
    assert (s.stopped_by, s.capped, s.noise) == ("noise", False, 0.0)
    assert out == c.calls == 1 + 2 + 10           # the last output is returned


def test_stops_as_soon_as_the_noise_is_low_enough(clock) -> None:
    rng = np.random.default_rng(0)
    c = clock(itertools.chain([1.0], rng.lognormal(np.log(5.0), 0.05, 100_000)))
    s, _ = measure(c.fn, policy=SamplingPolicy(warmup=0, min_samples=6, max_noise=0.01))
    assert s.stopped_by == "noise" and not s.capped
    assert s.noise <= 0.01 < relative_noise(s.times_ms[:-1])
    assert s.samples > 20
    assert (s.p50_lo_ms, s.p50_hi_ms) == median_ci(s.times_ms, 0.95)


def test_noisy_timings_hit_the_time_cap_and_say_so(clock) -> None:
    c = clock(itertools.cycle([1.0, 9.0]))
    s, _ = measure(c.fn, policy=SamplingPolicy(warmup=0, min_samples=2, max_time_s=0.5))
    assert (s.stopped_by, s.capped) == ("time_cap", True)
    assert s.noise > 0.01
    assert sum(s.times_ms) == pytest.approx(500.0, abs=10.0)


def test_max_samples_and_min_time(clock) -> None:
    c = clock(itertools.cycle([1.0, 9.0]))
    s, _ = measure(c.fn, policy=SamplingPolicy(warmup=0, min_samples=2, max_samples=7))
    assert (s.samples, s.stopped_by, s.capped) == (7, "max_samples", True)
    c = clock(itertools.repeat(5.0))
    s, _ = measure(c.fn, policy=SamplingPolicy(warmup=0, min_samples=2, min_time_s=0.1))
    assert (s.samples, s.stopped_by) == (20, "noise")   # 20 x 5 ms reaches min_time_s


def test_too_few_samples_for_the_interval_are_capped(clock) -> None:
    c = clock(itertools.repeat(5.0))
    s, _ = measure(c.fn, policy=SamplingPolicy(warmup=0, min_samples=2, max_time_s=0.008))
    assert (s.samples, s.stopped_by, s.capped) == (2, "time_cap", True)


def test_old_call_keeps_working(clock) -> None:
    c = clock(itertools.repeat(5.0))
    s, out = measure(c.fn, warmup=3, iterations=8)
    assert (s.samples, s.stopped_by, out) == (8, "noise", 1 + 3 + 8)
    with pytest.raises(TypeError, match="not both"):
        measure(c.fn, policy=SamplingPolicy(warmup=0, min_samples=2), warmup=1)
    with pytest.raises(TypeError, match="policy="):
        measure(c.fn, warmup=1)


def test_as_metrics_keys_and_values() -> None:
    s = TimingSummary.from_samples(0.25, [4.0, 5.0, 6.0, 5.0, 5.0, 7.0, 5.0], confidence=0.95, max_noise=0.01,
                                   stopped_by="time_cap")
    m = s.as_metrics("batch")
    assert list(m) == [f"batch_{k}" for k in ("ms_p50", "ms_p50_lo", "ms_p50_hi", "ms_p90", "ms_min", "ms_max", "ms_mean",
                                              "first_call_s", "samples", "noise", "capped")]
    assert (m["batch_ms_p50"], m["batch_ms_p50_lo"], m["batch_ms_p50_hi"]) == (5.0, 4.0, 7.0)
    assert (m["batch_ms_min"], m["batch_ms_max"], m["batch_samples"], m["batch_capped"]) == (4.0, 7.0, 7.0, 1.0)
    assert m["batch_noise"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="stopped_by"):
        TimingSummary.from_samples(0.1, [1.0, 2.0], confidence=0.95, max_noise=0.01, stopped_by="luck")


@pytest.mark.parametrize("kwargs, message", [
    ({"warmup": -1, "min_samples": 2}, "warmup=-1"),
    ({"warmup": 0, "min_samples": 0}, "min_samples=0"),
    ({"warmup": 0, "min_samples": 20, "max_samples": 10}, "max_samples=10"),
    ({"warmup": 0, "min_samples": 2, "max_noise": 0.0}, "max_noise=0.0"),
    ({"warmup": 0, "min_samples": 2, "min_time_s": 5.0, "max_time_s": 1.0}, "min_time_s=5.0"),
    ({"warmup": 0, "min_samples": 2, "confidence": 95.0}, "confidence=95.0"),
])
def test_policy_errors_name_the_setting(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingPolicy(**kwargs)


def test_real_jitted_function() -> None:
    x = jnp.arange(1024, dtype=jnp.uint32)
    f = jax.jit(lambda v: jnp.bitwise_xor(v, v[::-1]))
    s, out = measure(lambda: f(x), policy=SamplingPolicy(warmup=1, min_samples=5, max_noise=0.5, max_time_s=2.0))
    np.testing.assert_array_equal(np.asarray(out), np.arange(1024, dtype=np.uint32) ^ np.arange(1023, -1, -1, dtype=np.uint32))
    assert s.samples >= 5 and s.first_call_s > 0 and min(s.times_ms) > 0
    assert s.p50_lo_ms <= s.p50_ms <= s.p50_hi_ms


class LoadedClock:
    """A fake clock under a bursty load: while the load is on (one 100 ms window in three), every call
    takes `factor` times longer. Paths are named; each call advances the clock by base_ms x load."""

    def __init__(self, base_ms: dict[str, float], factor: float = 3.0) -> None:
        self.now, self.base, self.factor, self.calls = 0.0, base_ms, factor, []

    def perf_counter(self) -> float:
        return self.now

    def path(self, name: str):
        def fn() -> str:
            load = self.factor if int(self.now / 0.1) % 3 == 0 else 1.0
            self.now += self.base[name] * load / 1e3
            self.calls.append(name)
            return name
        return fn


def test_interleaved_rounds_cancel_a_bursty_load_in_the_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    c = LoadedClock({"single": 8.0, "batch": 2.0})
    monkeypatch.setattr(timing, "time", c)
    policy = SamplingPolicy(warmup=1, min_samples=3, max_noise=0.01, max_time_s=5.0)
    res, outs = timing.measure_interleaved([c.path("single"), c.path("batch")], policy=policy, watch=(1,))
    assert outs == ["single", "batch"]
    # the rounds alternate the order: single batch, batch single, ... (warmup round first)
    assert c.calls[:6] == ["single", "batch", "single", "batch", "batch", "single"]
    single, batch = res.paths
    assert single.samples == batch.samples == res.rounds >= 6
    sp, lo, hi = stats.paired_ratio_ci(single.times_ms, batch.times_ms)
    assert lo <= 4.0 <= hi and hi - lo < 0.2           # the load cancels within a round: x4 exactly, most rounds
    assert max(single.times_ms) / min(single.times_ms) == pytest.approx(3.0)  # the load itself was there


def test_interleaved_never_stops_before_the_confidence_has_enough_rounds(clock) -> None:
    c = clock(itertools.repeat(5.0))
    policy = SamplingPolicy(warmup=0, min_samples=1, max_time_s=0.001, confidence=0.99)
    res, _ = timing.measure_interleaved([c.fn, c.fn], policy=policy)
    assert res.rounds == min_samples_for(0.99) == 8 and res.stopped_by == "noise"
    res, _ = timing.measure_interleaved([c.fn, c.fn], policy=SamplingPolicy(warmup=0, min_samples=1, max_time_s=0.001))
    assert res.rounds == 6
