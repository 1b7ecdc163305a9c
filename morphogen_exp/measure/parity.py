"""Parity: every cell's answers checked bit for bit, against each other and against independent truth.

1. batch path == single-query loop (the strategy changed nothing);
2. single == the numpy reference (pir.reference, no JAX) on the first queries. Up to
   parity.numpy_reference_max_pages the whole answer is numpy's; above it (64 GiB of pages would take
   the host hours) numpy evaluates the DPF keys over the whole domain and a plain jnp fold, written
   here apart from the engine, XORs the device's raw pages under those masks (an engine with its own
   database layout, e.g. bitsliced: raw pages regenerated group by group from the dataset's own
   generator or file, `Dataset.raw_rows`, never read through the engine's layout);
3. server0 XOR server1 == the true target pages, read from the dataset's host twin (not the device);
plus the original's checksum columns (sum of answer bytes) beside these stronger checks.

A check that did not run (parity.numpy_reference_queries=0, parity.xor_check=false) is recorded as not
checked (`parity_*_checked` 0, no `parity_*_eq`), never as equal. A file dataset that changed after it
was loaded fails the check with `datasets.DatasetChanged` (the answers are of the old contents)."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from ..config import ParityConfig
from ..pir.pages import PAGE_WORDS, xor_reduce
from ..pir.reference import answer_numpy, eval_prefix
from .datasets import Dataset, verify
from .queries import QuerySet


class ParityError(AssertionError):
    """Answers that are not bit-identical where they must be: the cell fails, loudly."""


@dataclass
class ParityReport:
    checksum_single: int
    checksum_batch: int
    sha256_batch: str
    batch_eq_single: bool
    numpy_checked: int          # queries compared to the numpy oracle (0: not checked, see numpy_note)
    numpy_eq: bool | None       # None: not checked; else every checked query equal
    xor_checked: int            # queries whose server0 XOR server1 was compared to the target pages (0: not checked)
    xor_eq: bool | None         # None: not checked
    numpy_note: str = ""
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def as_metrics(self) -> dict[str, float]:
        """Three states per independent check: `parity_<check>_checked` > 0 with `parity_<check>_eq` 1
        (checked, equal) or 0 (checked, different); `_checked` 0 and no `_eq` metric (not checked)."""
        return {
            "parity_ok": float(self.ok),
            "checksum_match": float(self.checksum_single == self.checksum_batch),
            "parity_batch_eq_single": float(self.batch_eq_single),
            "parity_numpy_checked": float(self.numpy_checked),
            **({} if self.numpy_eq is None else {"parity_numpy_eq": float(self.numpy_eq)}),
            "parity_xor_checked": float(self.xor_checked),
            **({} if self.xor_eq is None else {"parity_xor_eq": float(self.xor_eq)}),
        }


def words_to_bytes(words: np.ndarray) -> np.ndarray:
    """(..., 1024) u32 -> (..., 4096) u8, little-endian like the protocol."""
    w = np.ascontiguousarray(np.asarray(words, dtype=np.uint32)).astype("<u4", copy=False)
    return w.view(np.uint8).reshape(*w.shape[:-1], w.shape[-1] * 4)


OracleCache = dict  # (kind, dataset identity, keys) -> answer; owned by the caller (the session)


def _cached(kind: str, dataset: Dataset, keys: tuple, compute: Callable[[], np.ndarray], cache: OracleCache) -> np.ndarray:
    """An oracle answer for one query, cached by value (not by the device-backed Dataset, which the
    cache must not keep alive): every cell of a sweep re-checks query 0."""
    key = (kind, dataset.name, dataset.num_pages, dataset.seed, str(dataset.path), dataset.fingerprint, keys)
    if key not in cache:
        if len(cache) >= 8:
            cache.clear()
        cache[key] = compute()
    return cache[key]


def _numpy_answer(dataset: Dataset, keys: tuple, cache: OracleCache) -> np.ndarray:
    """The numpy oracle's whole answer: host pages and DPF both from numpy."""
    return _cached("numpy", dataset, keys,
                   lambda: answer_numpy(dataset.host_pages(np.arange(dataset.num_pages)), list(keys)), cache)


_FOLD_PAGES = 1 << 20  # pages per device fold step: (K, 2^20, 4) masks = 16 MiB per key


@functools.partial(jax.jit, static_argnums=2)
def _fold(words: jax.Array, start: jax.Array, size: int, masks: jax.Array) -> jax.Array:
    """XOR over raw pages [start, start + size) of ``words`` of page AND mask: (K, 1024) u32. Plain jnp on purpose."""
    pages = jax.lax.dynamic_slice_in_dim(words, start, size, axis=0).reshape(size, 256, 4)
    return xor_reduce(pages[None] & masks[:, :, None, :], axis=1).reshape(masks.shape[0], PAGE_WORDS)


def _raw_pages(dataset: Dataset, start: int, size: int) -> tuple[jax.Array, jax.Array]:
    """(raw words holding pages [start, start + size), the row of page ``start`` in them): pages
    regenerated / re-read when the device holds an engine's layout instead of the raw database."""
    return dataset.raw_rows(start, start + size), jnp.int32(0)


def _row_blocks(words: jax.Array) -> list[tuple[int, jax.Array]]:
    """(first row, rows on one device) of a database split by rows over devices (placement=sharded),
    else [(0, one device's copy)]: folding a sharded array by dynamic slices would gather it whole."""
    blocks = {s.index[0].start or 0: s.data for s in words.addressable_shards}
    return sorted(blocks.items()) if len(blocks) > 1 else [(0, next(iter(blocks.values())))]


def _numpy_dpf_answer(dataset: Dataset, keys: tuple, cache: OracleCache) -> np.ndarray:
    """Answers (K, 4096) u8 from numpy's full-domain DPF outputs and a device fold of the pages."""

    def compute() -> np.ndarray:
        n = dataset.num_pages
        masks = np.stack([eval_prefix(k, n) for k in keys]).view("<u4")  # (K, N, 4): 16 output bytes per page
        acc = np.zeros((len(keys), PAGE_WORDS), np.uint32)
        if not dataset.is_raw:  # an engine's layout on the device: fold raw pages regenerated apart from it
            for start in range(0, n, _FOLD_PAGES):
                size = min(_FOLD_PAGES, n - start)
                part = _fold(*_raw_pages(dataset, start, size), size, jax.device_put(masks[:, start : start + size]))
                acc ^= np.asarray(part)
        for base, local in (_row_blocks(dataset.words) if dataset.is_raw else []):  # sharded: each device its rows
            for start in range(base, min(n, base + local.shape[0]), _FOLD_PAGES):
                size = min(_FOLD_PAGES, n - start, base + local.shape[0] - start)
                part = _fold(local, jnp.int32(start - base), size, jax.device_put(masks[:, start : start + size]))
                acc ^= np.asarray(part)
        return words_to_bytes(acc)

    return _cached("dpf", dataset, keys, compute, cache)


def check(
    cfg: ParityConfig,
    dataset: Dataset,
    queries: QuerySet,
    single: np.ndarray,      # (Q, 3, 1024) u32, party 0
    batch: np.ndarray,       # (Q, 3, 1024) u32, party 0
    single_party1: np.ndarray | None,  # (Q, 3, 1024) u32, or None when the XOR check is off
    cache: OracleCache,      # oracle answers already computed in this process
) -> ParityReport:
    single_b, batch_b = words_to_bytes(single), words_to_bytes(batch)
    rep = ParityReport(
        checksum_single=int(single_b.sum(dtype=np.uint64)),
        checksum_batch=int(batch_b.sum(dtype=np.uint64)),
        sha256_batch=hashlib.sha256(batch_b.tobytes()).hexdigest(),
        batch_eq_single=bool(np.array_equal(single_b, batch_b)),
        numpy_checked=0,
        numpy_eq=None,
        xor_checked=0,
        xor_eq=None,
    )
    if not rep.batch_eq_single:
        bad = np.nonzero(np.any(single_b != batch_b, axis=(1, 2)))[0]
        rep.failures.append(f"batch != single-query loop on queries {bad.tolist()}")

    n_ref = min(cfg.numpy_reference_queries, queries.q)
    large = dataset.num_pages > cfg.numpy_reference_max_pages
    if not n_ref:
        rep.numpy_note = "not checked (parity.numpy_reference_queries=0)"
    elif large:
        rep.numpy_note = (f"numpy DPF, pages folded on the device ({dataset.num_pages} pages > "
                          "parity.numpy_reference_max_pages)")
    for i in range(n_ref):
        ref = (_numpy_dpf_answer if large else _numpy_answer)(dataset, queries.keys[0][i], cache)
        rep.numpy_checked += 1
        equal = bool(np.array_equal(ref, single_b[i]))
        rep.numpy_eq = equal and rep.numpy_eq is not False
        if not equal:
            rep.failures.append(f"query {i}: JAX answer != numpy reference")

    if single_party1 is not None:
        truth = dataset.host_pages(queries.targets.reshape(-1)).reshape(queries.q, 3, -1)
        got = single_b ^ words_to_bytes(single_party1)
        rep.xor_checked = queries.q
        rep.xor_eq = bool(np.array_equal(got, truth))
        if not rep.xor_eq:
            bad = np.nonzero(np.any(got != truth, axis=(1, 2)))[0]
            rep.failures.append(f"server0 XOR server1 != target pages on queries {bad.tolist()}")
    # Last, after every read of the file: the answers are of the contents the cell loaded and records.
    verify(dataset)
    return rep
