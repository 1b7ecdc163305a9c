"""DPF keys as device arrays: ``KeyBatch``, a JAX pytree of K keys."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import jax
import numpy as np

if TYPE_CHECKING:  # keys.py is numpy-only; only its type is needed here
    from .keys import Key

__all__ = ["KeyBatch"]


def _seed_words(b: bytes) -> np.ndarray:
    return np.frombuffer(bytes(b), dtype="<u4").astype(np.uint32)


class KeyBatch(NamedTuple):
    """K DPF keys as uint32 arrays (a NamedTuple, hence a JAX pytree). Leading axes are free:
    (K, ...) is one batch of keys, (Q, 3, ...) is Q queries of 3 keys (vmap / lax.map over Q)."""

    root_seed: np.ndarray | jax.Array  # (..., K, 4)
    root_t: np.ndarray | jax.Array  # (..., K)
    seed_cw: np.ndarray | jax.Array  # (..., K, n, 4)
    t_cw: np.ndarray | jax.Array  # (..., K, n, 2): [t_cw_left, t_cw_right]
    final_cw: np.ndarray | jax.Array  # (..., K, 4)

    @property
    def domain_bits(self) -> int:
        return int(self.seed_cw.shape[-2])

    @property
    def num_keys(self) -> int:
        """K, the size of the last batch axis."""
        return int(self.root_t.shape[-1])

    @classmethod
    def from_keys(cls, keys: Sequence[Key]) -> KeyBatch:
        """Host (numpy) arrays for a non-empty sequence of keys of one domain size."""
        keys = list(keys)
        if not keys:
            raise ValueError("keys is empty: pass at least one DPF key")
        n = keys[0].domain_bits
        bad = sorted({k.domain_bits for k in keys} - {n})
        if bad:
            raise ValueError(f"all keys must share one domain_bits; got {n} and {bad}: batch keys per domain")
        kb = cls(
            root_seed=np.stack([_seed_words(k.root_seed) for k in keys]),
            root_t=np.array([k.root_t for k in keys], dtype=np.uint32),
            seed_cw=np.array([[_seed_words(c) for c in k.seed_cw] for k in keys], dtype=np.uint32).reshape(len(keys), n, 4),
            t_cw=np.array([list(zip(k.t_cw_left, k.t_cw_right, strict=True)) for k in keys], dtype=np.uint32).reshape(len(keys), n, 2),
            final_cw=np.stack([_seed_words(k.final_cw) for k in keys]),
        )
        # The GGM code applies corrections with branch-free masks (0 - t), which needs t in {0,1}.
        if np.any(np.asarray(kb.root_t) > 1) or np.any(np.asarray(kb.t_cw) > 1):
            raise ValueError("root_t and t_cw bits must be 0 or 1: the keys are malformed")
        return kb

    @classmethod
    def stack(cls, batches: Sequence[KeyBatch]) -> KeyBatch:
        """Stack Q batches of equal shape into one with a new leading query axis (numpy)."""
        if not batches:
            raise ValueError("batches is empty: pass at least one KeyBatch")
        return cls(*(np.stack([np.asarray(f) for f in fs]) for fs in zip(*batches, strict=True)))

    def take(self, index: int | slice) -> KeyBatch:
        """Queries ``index`` of a stacked (Q, ...) batch: an int gives one query's keys, a slice a sub-batch."""
        return KeyBatch(*(f[index] for f in self))

    def unstack(self) -> tuple[KeyBatch, ...]:
        """Every query of a stacked (Q, ...) batch as its own KeyBatch, split in one dispatch
        (eager ``take`` costs a dispatch per field per query: milliseconds at Q = 32)."""
        return _unstack(self)

    def chunks(self, size: int) -> tuple[KeyBatch, ...]:
        """Consecutive sub-batches of ``size`` queries (the last may be shorter), split in one dispatch."""
        return _chunks(self, size)

    def to_device(self, device: jax.Device | jax.sharding.Sharding | None = None) -> KeyBatch:
        return jax.device_put(self, device)


@jax.jit
def _unstack(keys: KeyBatch) -> tuple[KeyBatch, ...]:
    return tuple(keys.take(i) for i in range(keys.root_t.shape[0]))


@functools.partial(jax.jit, static_argnums=1)
def _chunks(keys: KeyBatch, size: int) -> tuple[KeyBatch, ...]:
    return tuple(keys.take(slice(i, i + size)) for i in range(0, keys.root_t.shape[0], size))
