"""The page geometry every layer shares, the DPF domain of N pages, and the XOR reduction of partial answers.

Importing it imports no JAX (the numpy reference uses the geometry too).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import jax

__all__ = ["PAGE_BYTES", "PAGE_WORDS", "domain_bits_for", "shard_rows", "xor_reduce"]

PAGE_BYTES = 4096
PAGE_WORDS = PAGE_BYTES // 4  # a page as little-endian uint32 words


def domain_bits_for(num_pages: int) -> int:
    """The smallest power-of-two domain that holds N pages (at least 1 bit)."""
    return max(1, (num_pages - 1).bit_length())


def shard_rows(num_pages: int, num_shards: int) -> int:
    """Rows of one shard when N pages are split by rows over D devices: ceil(N / D) (the last shard ragged)."""
    return -(-num_pages // num_shards)


def xor_reduce(parts: jax.Array, axis: int = 0) -> jax.Array:
    """XOR of ``parts`` along ``axis`` (exact; a psum would add)."""
    from jax import lax  # noqa: PLC0415  (this module stays importable without JAX)

    return lax.reduce(parts, np.zeros((), parts.dtype), lax.bitwise_xor, (axis,))
