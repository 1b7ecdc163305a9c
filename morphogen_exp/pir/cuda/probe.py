"""The read-floor probe of probe.cu, reached through jax.ffi: ``stream_xor(words)`` reads every byte of
``words`` once with 16-byte streaming loads, a grid that fills the card, and returns their XOR (so nothing is
optimized away). floors.py times it; its rate is a plain stream's, the card's read floor with the scan's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..pages import xor_reduce
from . import register

__all__ = ["stream_xor", "stream_xor_reference"]


def stream_xor(words: jax.Array) -> jax.Array:
    """words: u32 of any shape, its size a multiple of 4 -> (1,) u32, the XOR of every word (probe.cu)."""
    if words.dtype != jnp.uint32 or words.size % 4:
        raise ValueError(f"stream_xor reads u32 in 16-byte loads: {words.dtype=} {words.size=} (a multiple of 4)")
    register()
    call = jax.ffi.ffi_call("morphogen_probe_stream_xor", jax.ShapeDtypeStruct((1,), jnp.uint32),
                            vmap_method="sequential")
    return call(words)


def stream_xor_reference(words: jax.Array) -> jax.Array:
    """What ``stream_xor`` returns, in jnp: the XOR of every word, shape (1,)."""
    return xor_reduce(words.reshape(-1)).reshape(1)
