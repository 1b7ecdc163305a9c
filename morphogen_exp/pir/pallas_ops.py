"""Registers the Pallas (Triton) kernels as the engine ops named "pallas" (registry.py imports this
module the first time "pallas" is asked for).

Importing this module never compiles anything (Triton lowering happens at call time), so it
is safe on a CPU-only machine; there the kernels run in interpret mode.
"""

from __future__ import annotations

import jax

from .pallas_ggm import GGMBlock, expand_levels_pallas
from .pallas_scan import ScanBlock, masked_xor_pallas
from .registry import register_ops

__all__ = ["ENGINE_NAME", "expand_levels_fn", "masked_xor_fn", "masked_xor_at_fn"]

ENGINE_NAME = "pallas"


def _interpret() -> bool:
    """Interpret mode where no GPU is present (CPU tests of the engine wiring)."""
    return jax.default_backend() != "gpu"


def masked_xor_fn(pages: jax.Array, masks: jax.Array) -> jax.Array:
    """pages (T, 1024) u32, masks (K, T, 4) u32 -> (K, 1024) u32 (engine-interface.md)."""
    block = ScanBlock.get_default(masks.shape[0], masks.shape[1])
    return masked_xor_pallas(pages, masks, block=block, interpret=_interpret())


def masked_xor_at_fn(pages_words: jax.Array, page_offset: jax.Array | int, masks: jax.Array) -> jax.Array:
    """The tile of T = masks.shape[1] pages at ``page_offset`` of the whole database, read in
    place: (P, 1024), int32 scalar, (K, T, 4) -> (K, 1024).  A scan that slices the tile with
    lax.dynamic_slice before a Pallas call pays a copy of the tile; this does not."""
    block = ScanBlock.get_default(masks.shape[0], masks.shape[1])
    return masked_xor_pallas(pages_words, masks, block=block, page_offset=page_offset,
                             interpret=_interpret())


def expand_levels_fn(seeds: jax.Array, ts: jax.Array, seed_cw: jax.Array, t_cw: jax.Array, final_cw: jax.Array) -> jax.Array:
    """seeds (K,R,4), ts (K,R), seed_cw (K,L,4), t_cw (K,L,2), final_cw (K,4)
    -> (K, R * 2**L, 4) u32 leaves (engine-interface.md)."""
    return expand_levels_pallas(seeds, ts, seed_cw, t_cw, final_cw,
                                block=GGMBlock.get_default(), interpret=_interpret())


register_ops(ENGINE_NAME, expand_levels_fn, masked_xor_fn, masked_xor_at_fn)
