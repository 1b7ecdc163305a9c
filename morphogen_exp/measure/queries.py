"""Queries: Q batches of 3 DPF key pairs (cuckoo hashing puts a record in one of 3 pages).

Query i depends only on (seed, i), never on Q, so the first 8 queries of a Q=32 cell are those of
the Q=8 cell and the numpy oracle's answer for query 0 can be shared by every cell of a sweep."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ..pir import Key, KeyBatch, generate_keys

KEYS_PER_QUERY = 3


@dataclass(frozen=True, eq=False)
class QuerySet:
    targets: np.ndarray                  # (Q, 3) page indices
    keys: tuple[tuple[tuple[Key, ...], ...], tuple[tuple[Key, ...], ...]]  # [party][query] -> 3 keys
    batches: tuple[KeyBatch, KeyBatch]   # [party] -> (Q, 3, ...) host arrays

    @property
    def q(self) -> int:
        return len(self.targets)


@functools.lru_cache(maxsize=64)
def _query(domain_bits: int, num_pages: int, seed: int, i: int) -> tuple[np.ndarray, tuple[Key, ...], tuple[Key, ...]]:
    rng = np.random.default_rng([seed, 0x5155, i])
    targets = rng.integers(0, num_pages, size=KEYS_PER_QUERY)
    pairs = [generate_keys(domain_bits, int(t), rng) for t in targets]
    return targets, tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)


def make_queries(domain_bits: int, num_pages: int, seed: int, q: int) -> QuerySet:
    parts = [_query(domain_bits, num_pages, seed, i) for i in range(q)]
    keys0 = tuple(p[1] for p in parts)
    keys1 = tuple(p[2] for p in parts)
    return QuerySet(
        targets=np.stack([p[0] for p in parts]),
        keys=(keys0, keys1),
        batches=tuple(KeyBatch.stack([KeyBatch.from_keys(k) for k in ks]) for ks in (keys0, keys1)),  # type: ignore[arg-type]
    )
