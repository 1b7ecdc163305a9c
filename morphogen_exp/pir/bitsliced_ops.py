"""Registers the bit-sliced engine as "bitsliced" (registry.py imports this module the first time the
name is asked for): the database in the layout of pir/bitsliced.py, built once per database by the
``layout`` hook, and the masked XOR as a GF(2) product on it.

- expansion: the Pallas GGM kernel on a GPU backend, the XLA expansion elsewhere (the Pallas one
  would run in interpret mode on CPU: slow, and nothing the CPU tests need);
- ``masked_xor_at``: ``masked_xor_bitsliced`` on the layout (the CUDA binary-MMA kernel on a GPU,
  the jnp formulation elsewhere);
- ``masked_xor`` (a raw tile, the two-argument contract): the XLA op; the scan never calls it, as
  it reads the layout in place through ``masked_xor_at``.

Importing this module compiles nothing and needs no CUDA.
"""

from __future__ import annotations

import jax

from .bitsliced import bitslice_rows, masked_xor_bitsliced
from .pallas_ops import expand_levels_fn as expand_levels_pallas_fn
from .registry import RowReader, register_ops
from .xla_ops import expand_levels_xla, masked_xor_xla

__all__ = ["ENGINE_NAME", "expand_levels_fn", "masked_xor_at_fn", "layout_fn"]

ENGINE_NAME = "bitsliced"


def _gpu() -> bool:
    return jax.default_backend() == "gpu"


def expand_levels_fn(seeds: jax.Array, ts: jax.Array, seed_cw: jax.Array, t_cw: jax.Array, final_cw: jax.Array, *,
                     unroll: bool | None = None, doubling_levels: int | None = None) -> jax.Array:
    """seeds (K,R,4), ts (K,R), seed_cw (K,L,4), t_cw (K,L,2), final_cw (K,4) -> (K, R * 2**L, 4) u32
    leaves: the Pallas kernel on a GPU (the keywords are the XLA expansion's, unused there), else XLA."""
    if _gpu():
        return expand_levels_pallas_fn(seeds, ts, seed_cw, t_cw, final_cw)
    return expand_levels_xla(seeds, ts, seed_cw, t_cw, final_cw, unroll=unroll, doubling_levels=doubling_levels)


def masked_xor_at_fn(words: jax.Array, page_offset: jax.Array | int, masks: jax.Array) -> jax.Array:
    """words (256*C, 1024) u32 bit-sliced (the prepared database), the tile's first page, masks
    (K, T, 4) -> (K, 1024) u32 (engine-interface.md)."""
    return masked_xor_bitsliced(words, page_offset, masks, impl="auto")


def layout_fn(read: RowReader, num_pages: int) -> jax.Array:
    """The bit-sliced database of raw rows [0, num_pages) read group by group (bitslice_rows):
    (num_pages rounded up to 256, 1024) u32 on the default device."""
    return bitslice_rows(read, num_pages).words


register_ops(ENGINE_NAME, expand_levels_fn, masked_xor_xla, masked_xor_at_fn, layout_fn)
