"""What every benchmark shares: synthetic data (the datasets' generator), key batches, the timing
loop (morphogen_exp.measure.timing.measure) over rotating inputs, the device ceilings, CSV output."""

from __future__ import annotations

import csv
import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..measure.datasets import _synthetic_words_device, domain_bits_for, read_rows
from ..measure.synthetic import fmix32
from ..measure.timing import measure
from ..pir import KeyBatch, generate_keys, get
from ..pir.pages import xor_reduce


def pages(num_pages: int, seed: int = 7) -> jax.Array:
    """The synthetic database the orchestrator uses, (num_pages, 1024) u32, built on the device."""
    return jax.block_until_ready(_synthetic_words_device(num_pages, seed))


def database(num_pages: int, engine: str, seed: int = 7) -> tuple[jax.Array, float]:
    """The synthetic database as ``engine``'s scan reads it: the raw pages (``pages``), or the
    engine's own layout built from them group by group, the raw pages never resident (a 64 GiB one
    fits an 80 GB card); and the seconds that layout took to build (0.0 for raw pages)."""
    layout = get(engine).layout
    if layout is None:
        return pages(num_pages, seed), 0.0
    t0 = time.perf_counter()
    out = jax.block_until_ready(layout(read_rows(None, seed), num_pages))
    return out, time.perf_counter() - t0


def mix(x: jax.Array) -> jax.Array:
    """The same generator's hash, for derived synthetic arrays (masks) of any shape."""
    return fmix32(x, jnp)


def keybatches(num_pages: int, k: int, sets: int) -> list[KeyBatch]:
    """``sets`` device batches of k DPF keys for random pages < num_pages (domain: the smallest that holds N)."""
    n, rng = domain_bits_for(num_pages), np.random.default_rng(1234 + k)
    return [KeyBatch.from_keys([generate_keys(n, int(rng.integers(0, num_pages)), rng)[0] for _ in range(k)]).to_device()
            for _ in range(sets)]


def timed(fn: Callable[..., Any], arg_sets: Sequence[tuple[Any, ...]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """compile_s (the first call), median_ms and min_ms of ``fn`` over ``repeats`` calls cycling through
    ``arg_sets`` (so no call repeats the previous one's input), each blocked on its result."""
    cycle = itertools.cycle(arg_sets)
    summary, _ = measure(lambda: fn(*next(cycle)), warmup=warmup, iterations=repeats)
    return {"compile_s": round(summary.first_call_s, 3), "median_ms": round(summary.p50_ms, 4),
            "min_ms": round(min(summary.times_ms), 4)}


COPY_PROBE_ROWS = 1 << 19  # 2 GiB of pages: a copy of the whole database does not fit beside it


def copy_gbps(words: jax.Array, repeats: int = 10) -> float:
    """Device copy rate, bytes read + written (a copy XLA cannot elide), over at most 2 GiB of ``words``."""
    words = words[:COPY_PROBE_ROWS]
    t = timed(jax.jit(lambda x: x ^ jnp.uint32(1)), [(words,)], repeats)
    return 2 * words.nbytes / (t["median_ms"] / 1e3) / 1e9


def read_gbps(words: jax.Array, repeats: int = 5) -> float:
    """Read-only rate: each row XOR-folded to one word (0.1% written), bytes read / time (the scan's
    floor). Pass a few GiB, not a 64 GiB database: XLA's autotuner allocates a scratch copy of the
    operand (out of memory on an 80 GB card)."""
    t = timed(jax.jit(lambda x: xor_reduce(x, 1)), [(words,)], repeats)
    return words.nbytes / (t["median_ms"] / 1e3) / 1e9


def int_ops_per_s(num_words: int = 1 << 24, chain: int = 64, repeats: int = 5) -> float:
    """Integer-throughput ceiling: a fused chain of shift/AND/shift/XOR (4 jnp ops per step) over u32
    words, arithmetic-bound (4*chain ops per 8 bytes moved). Counts jnp ops, not SASS instructions (the
    GPU may fuse AND+XOR into one LOP3): read it as the rate the scan's own AND-XOR pairs can reach."""

    @jax.jit
    def chain_ops(x: jax.Array) -> jax.Array:
        a = x
        for i in range(chain):
            a = (a & (x >> jnp.uint32(i % 7 + 1))) ^ (a << jnp.uint32(1))
        return a

    x = mix(jax.lax.broadcasted_iota(jnp.uint32, (num_words,), 0))
    return 4 * chain * num_words / (timed(chain_ops, [(x,)], repeats)["median_ms"] / 1e3)


def write_csv(path: str | None, rows: list[dict[str, Any]]) -> None:
    """The rows as CSV at path (nothing when no path or no row)."""
    if path and rows:
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
