"""The fused kernel of fused.cu (engine "fused"), reached through jax.ffi: a tile's last GGM levels expanded
in shared memory and the masked XOR of the raw pages in the same kernel, so the masks never reach HBM.

Each block expands subtrees of up to 256 leaves and XORs their pages into accumulators for up to
``MAX_KEYS_PER_BLOCK`` keys; more keys run as more key blocks side by side, walking the same subtrees (the
pages read from HBM once, from L2 by the other key blocks). ``partial_answers_fused`` returns one partial
answer per block group; their XOR is the step's answer. Inside ``capture.capturable_targets()`` (graph_replay)
it calls the target's command-buffer compatible twin.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from . import register
from .capture import target
from .dpf import MAX_LEVELS, Window

__all__ = ["MAX_KEYS_PER_BLOCK", "grid_blocks", "keys_per_block", "partial_answers_fused"]

MAX_KEYS_PER_BLOCK = 4
_BLOCKS_PER_SM = 3  # the kernel's __launch_bounds__ minimum


@functools.cache
def _sm_count() -> int:
    return int(getattr(jax.devices()[0], "core_count", 0) or 132)


def grid_blocks(num_subtrees: int, key_blocks: int = 1) -> int:
    """Block groups of one launch (a group = one block per key block, walking the same subtrees): all
    blocks resident at once on every SM, no more groups than subtrees."""
    return max(1, min(num_subtrees, _BLOCKS_PER_SM * _sm_count() // key_blocks))


def keys_per_block(num_keys: int) -> int:
    """Keys of one block (1..4): as few key blocks as possible, then as even as possible."""
    blocks = -(-num_keys // MAX_KEYS_PER_BLOCK)
    return -(-num_keys // blocks)


def partial_answers_fused(pages_words: jax.Array, subtrees: tuple[jax.Array, ...], window: Window) -> jax.Array:
    """``subtrees`` (roots (K, S, 4), root_t (K, S), seed_cw (K, L, 4), t_cw (K, L, 2), final_cw (K, 4)), each
    root expanded by L <= 8 levels; ``window`` (row, lo, count): leaves [lo, lo + count) of the S * 2^L mask
    rows [row, row + count) of pages_words (P, 1024) -> (G, K, 1024) u32, one partial answer per block group."""
    register()
    roots, root_t, seed_cw, t_cw, final_cw = subtrees
    k, s = root_t.shape
    levels = seed_cw.shape[1]
    if levels > MAX_LEVELS:
        raise ValueError(f"subtrees of {levels} levels: the kernel expands at most {MAX_LEVELS}")
    kb = keys_per_block(k)
    g = grid_blocks(s, -(-k // kb))
    call = jax.ffi.ffi_call(target("morphogen_expand_xor_fused"),  # or its command-buffer compatible twin (capture.py)
                            jax.ShapeDtypeStruct((g, k, pages_words.shape[1]), jnp.uint32), vmap_method="sequential")
    return call(pages_words, jnp.asarray(window.row, jnp.int32).reshape(()), roots, root_t.astype(jnp.uint32), seed_cw,
                t_cw.astype(jnp.uint32), final_cw, lo=np.int64(window.lo), count=np.int64(window.count),
                kb=np.int32(kb))
