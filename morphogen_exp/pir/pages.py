"""The page geometry every layer shares, the XOR reduction of partial answers, and the DPF domain of N pages."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["PAGE_BYTES", "PAGE_WORDS", "domain_bits_for", "xor_reduce"]

PAGE_BYTES = 4096
PAGE_WORDS = PAGE_BYTES // 4  # a page as little-endian uint32 words


def domain_bits_for(num_pages: int) -> int:
    """The smallest power-of-two domain that holds N pages (at least 1 bit)."""
    return max(1, (num_pages - 1).bit_length())


def xor_reduce(parts: jax.Array, axis: int = 0) -> jax.Array:
    """XOR of ``parts`` along ``axis`` (exact; a psum would add)."""
    return lax.reduce(parts, jnp.zeros((), parts.dtype), lax.bitwise_xor, (axis,))
