"""The synthetic data's one hash: murmur3's 32-bit finalizer, and random-looking uint32 arrays of any shape built
from it (the datasets' synthetic pages, the benchmarks' and the floors' inputs)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp


def fmix32(h: Any, xp: Any) -> Any:
    """murmur3's 32-bit finalizer; xp is numpy (the host twin) or jax.numpy (the device)."""
    h = h ^ (h >> xp.uint32(16))
    h = h * xp.uint32(0x85EBCA6B)
    h = h ^ (h >> xp.uint32(13))
    h = h * xp.uint32(0xC2B2AE35)
    return h ^ (h >> xp.uint32(16))


@functools.partial(jax.jit, static_argnames=("shape", "seed"))
def random_u32(shape: tuple[int, ...], seed: int) -> jax.Array:
    """Random-looking uint32 of any shape from a hash of the index (jax.random's threefry counters do not
    reach 2^32 elements)."""
    idx = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for ax in reversed(range(len(shape))):
        idx = idx + jax.lax.broadcasted_iota(jnp.uint32, shape, ax) * jnp.uint32(stride & 0xFFFFFFFF)
        stride *= shape[ax]
    return fmix32(fmix32(idx ^ jnp.uint32(seed * 0x9E3779B9 & 0xFFFFFFFF), jnp) + jnp.uint32(seed), jnp)
