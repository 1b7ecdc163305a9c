"""Engine "pallas": the Pallas (Triton) kernels of pallas_ggm.py and pallas_scan.py as the engine's ops.

Importing this module never compiles anything (Triton lowering happens at call time), so it
is safe on a CPU-only machine; there the kernels run in interpret mode.
"""

from __future__ import annotations

import jax

from . import backend
from .engine import Engine
from .pallas_ggm import GGMBlock, expand_levels_pallas
from .pallas_scan import ScanBlock, masked_xor_pallas
from .xla_ops import expand_levels_xla

__all__ = ["ENGINE", "expand_levels_fn", "expand_levels_on_backend", "masked_xor_at_fn", "masked_xor_fn"]


def masked_xor_fn(pages: jax.Array, masks: jax.Array) -> jax.Array:
    """pages (T, 1024) u32, masks (K, T, 4) u32 -> (K, 1024) u32 (engine-interface.md)."""
    block = ScanBlock.get_default(masks.shape[0], masks.shape[1])
    return masked_xor_pallas(pages, masks, block=block, interpret=not backend.on_gpu())


def masked_xor_at_fn(pages_words: jax.Array, page_offset: jax.Array | int, masks: jax.Array) -> jax.Array:
    """The tile of T = masks.shape[1] pages at ``page_offset`` of the whole database, read in
    place: (P, 1024), int32 scalar, (K, T, 4) -> (K, 1024).  A scan that slices the tile with
    lax.dynamic_slice before a Pallas call pays a copy of the tile; this does not."""
    block = ScanBlock.get_default(masks.shape[0], masks.shape[1])
    return masked_xor_pallas(pages_words, masks, block=block, page_offset=page_offset,
                             interpret=not backend.on_gpu())


def expand_levels_fn(seeds: jax.Array, ts: jax.Array, seed_cw: jax.Array, t_cw: jax.Array, final_cw: jax.Array) -> jax.Array:
    """seeds (K,R,4), ts (K,R), seed_cw (K,L,4), t_cw (K,L,2), final_cw (K,4)
    -> (K, R * 2**L, 4) u32 leaves (engine-interface.md)."""
    return expand_levels_pallas(seeds, ts, seed_cw, t_cw, final_cw,
                                block=GGMBlock.get_default(), interpret=not backend.on_gpu())


def expand_levels_on_backend(seeds: jax.Array, ts: jax.Array, seed_cw: jax.Array, t_cw: jax.Array, final_cw: jax.Array,
                             *, unroll: bool | None = None, doubling_levels: int | None = None) -> jax.Array:
    """Leaves (K, R * 2**L, 4): the Pallas GGM kernel on a GPU (the keywords are the XLA expansion's, unused
    there), else the XLA expansion (the Pallas one would run in interpret mode: slow, and nothing a CPU
    check needs). The expansion of the engines whose scan step has its own kernel."""
    if backend.on_gpu():
        return expand_levels_fn(seeds, ts, seed_cw, t_cw, final_cw)
    return expand_levels_xla(seeds, ts, seed_cw, t_cw, final_cw, unroll=unroll, doubling_levels=doubling_levels)


ENGINE = Engine(
    name="pallas",
    expand_levels=expand_levels_fn,
    masked_xor=masked_xor_fn,
    masked_xor_at=masked_xor_at_fn,
    cpu_note="Triton's interpret mode (slow; the timings say nothing about a GPU)",
)
