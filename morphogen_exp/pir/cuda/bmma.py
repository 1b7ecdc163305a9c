"""The binary-MMA kernels of bmma.cu (engine "bitsliced"), reached through jax.ffi.

- ``masked_xor_bmma(words, page_offset, masks)``: ``masked_xor_at`` (docs/engine-interface.md) on the
  bit-sliced layout of pir/bitsliced.py, on the binary tensor cores (mma.m16n8k256 .b1 .and.popc): the
  masks transposed into per-bit page vectors, then the MMA scan;
- ``expand_xor_bmma(words, subtrees, window)``: the same scan, its per-bit page vectors written by the
  expansion of the tile's subtree roots (the masks never reach HBM); up to ``PIPELINED_MAX_KEYS`` keys in
  one kernel whose expansion runs beside the scan (``pipelined``).

Both take the stages the engine runs; ``call_masked_xor`` / ``call_expand_xor`` launch any stage (one
stage alone is what the benchmarks in morphogen_exp/bench time). The constants below are bmma.cu's. Inside
``capture.capturable_targets()`` (graph_replay) both call the targets' command-buffer compatible twins.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import register
from .capture import target
from .dpf import MAX_LEVELS, Window

__all__ = ["CHUNK_PAGES", "PIPELINED_MAX_KEYS", "call_expand_xor", "call_masked_xor", "chunk_span", "engine_stages",
           "expand_xor_bmma", "key_group", "masked_xor_bmma", "pipelined", "scratch_words"]

CHUNK_PAGES = 256  # kChunk: pages per chunk of the layout, the k-depth of one mma.m16n8k256
# expand_scan_pipelined: one key tile (kPipeMaxKeys), groups of 8 chunks (kGroup), at most 192 blocks
PIPELINED_MAX_KEYS, _GROUP_CHUNKS, _PIPE_MAX_BLOCKS = 8, 8, 192


def chunk_span(tile_pages: int, db_chunks: int) -> int:
    """Chunks a tile of ``tile_pages`` pages at any offset can touch (a static bound)."""
    return min(db_chunks, (tile_pages + CHUNK_PAGES - 1) // CHUNK_PAGES + 1)


def key_group(num_keys: int) -> tuple[int, int]:
    """(kg, ktp): key tiles of 8 per warp (1..4, the least padding, then the largest) and the padded
    key-tile count, a multiple of kg."""
    kt = -(-num_keys // 8)
    if kt <= 4:
        return kt, kt
    kg = min((4, 3), key=lambda g: (-(-kt // g) * g, -g))
    return kg, -(-kt // kg) * kg


def pipelined(num_keys: int) -> bool:
    """Whether ``expand_xor_bmma`` runs one pipelined kernel (the expansion beside the scan) for this many keys."""
    return num_keys <= PIPELINED_MAX_KEYS


def engine_stages(num_keys: int) -> int:
    """The stages ``expand_xor_bmma`` runs: 4 (the pipelined kernel) where ``pipelined``, else 3."""
    return 4 if pipelined(num_keys) else 3


def scratch_words(num_keys: int, tile_pages: int, db_rows: int | None, stages: int = 3) -> int:
    """u32 words of the per-bit page vectors of one call: (chunks read, 128 bits, padded key tiles, 64); for the
    pipelined kernel (stages=4) two groups of 8 chunks (128 bits, num_keys x 8) per block, one block per SM.
    db_rows: the layout's rows (None: a database larger than the tile, the bound a memory plan uses)."""
    db_chunks = -(-tile_pages // CHUNK_PAGES) + 1 if db_rows is None else db_rows // CHUNK_PAGES
    chunks = chunk_span(tile_pages, db_chunks)
    if stages == 4:
        blocks = min(-(-chunks // _GROUP_CHUNKS), _PIPE_MAX_BLOCKS)
        return blocks * 2 * _GROUP_CHUNKS * 128 * num_keys * 8
    return chunks * 128 * key_group(num_keys)[1] * 64


def call_masked_xor(words: jax.Array, page_offset: jax.Array | int, masks: jax.Array, *, stages: int) -> jax.Array:
    """The masked-XOR kernel: words (256*C, 1024) u32 bit-sliced, the tile's first page (int32 scalar), masks
    (K, T, 4) u32 -> (K, 1024) u32. stages: 3 both stages (what the engine runs), 1 only the mask transpose,
    2 only the MMA scan."""
    register()
    k, t, _ = masks.shape
    kg, _ = key_group(k)
    call = jax.ffi.ffi_call(
        target("morphogen_bmma_masked_xor"),
        (jax.ShapeDtypeStruct((k, words.shape[1]), jnp.uint32),
         jax.ShapeDtypeStruct((scratch_words(k, t, words.shape[0]),), jnp.uint32)),  # masks as per-bit page vectors
        vmap_method="sequential",
    )
    out, _ = call(words, jnp.asarray(page_offset, jnp.int32).reshape(()), masks, kg=np.int32(kg),
                  stages=np.int32(stages))
    return out


def masked_xor_bmma(words: jax.Array, page_offset: jax.Array | int, masks: jax.Array) -> jax.Array:
    """words (256*C, 1024) u32 bit-sliced, the tile's first page (int32 scalar), masks (K, T, 4) u32
    -> (K, 1024) u32: XOR over the tile's pages of page & mask, on the binary tensor cores."""
    return call_masked_xor(words, page_offset, masks, stages=3)


def call_expand_xor(words: jax.Array, subtrees: tuple[jax.Array, ...], window: Window, *, stages: int) -> jax.Array:
    """The expansion-and-scan kernel (see ``expand_xor_bmma``). stages: 3 the expansion then the scan, two
    kernels; 4 the pipelined kernel (K <= 8); 1 only the expansion, 2 only the MMA scan (timings)."""
    register()
    roots, root_t, seed_cw, t_cw, final_cw = subtrees
    row, lo, count = window.row, window.lo, window.count
    k, s = root_t.shape
    if seed_cw.shape[1] > MAX_LEVELS or not 0 <= lo or count < 1 or lo + count > s << seed_cw.shape[1]:
        raise ValueError(f"leaves [{lo}, {lo + count}) of {s} subtrees of {seed_cw.shape[1]} (<= {MAX_LEVELS}) levels")
    if stages not in (1, 2, 3, 4) or (stages == 4 and not pipelined(k)):
        raise ValueError(f"{stages=} must be 1, 2, 3, or 4 with at most {PIPELINED_MAX_KEYS} keys ({k} given)")
    kg, _ = key_group(k)
    call = jax.ffi.ffi_call(
        target("morphogen_bmma_expand_xor"),
        (jax.ShapeDtypeStruct((k, words.shape[1]), jnp.uint32),
         jax.ShapeDtypeStruct((scratch_words(k, count, words.shape[0], stages),), jnp.uint32)),
        vmap_method="sequential",
    )
    out, _ = call(words, jnp.asarray(row, jnp.int32).reshape(()), roots, root_t.astype(jnp.uint32), seed_cw,
                  t_cw.astype(jnp.uint32), final_cw, lo=np.int64(lo), count=np.int64(count), kg=np.int32(kg),
                  stages=np.int32(stages))
    return out


def expand_xor_bmma(words: jax.Array, subtrees: tuple[jax.Array, ...], window: Window) -> jax.Array:
    """words (256*C, 1024) u32 bit-sliced; ``subtrees`` (roots (K, S, 4) u32, root_t (K, S), seed_cw (K, L, 4),
    t_cw (K, L, 2), final_cw (K, 4)), each root expanded by L <= 8 levels; ``window`` (row, lo, count): leaves
    [lo, lo + count) of the S * 2^L mask DB pages [row, row + count) -> (K, 1024) u32, their masked XOR. One
    FFI call: the expansion writes the per-bit page vectors (bmma.cu expand_to_bitvectors), then the
    binary-MMA scan reads them; up to 8 keys both in one kernel, pipelined (expand_scan_pipelined)."""
    return call_expand_xor(words, subtrees, window, stages=engine_stages(subtrees[1].shape[0]))
