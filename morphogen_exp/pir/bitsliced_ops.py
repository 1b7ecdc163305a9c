"""Registers the bit-sliced engine as "bitsliced" (registry.py imports this module the first time the
name is asked for): the database in the layout of pir/bitsliced.py, built once per database by the
``layout`` hook, and the masked XOR as a GF(2) product on it.

- expansion: the Pallas GGM kernel on a GPU backend, the XLA expansion elsewhere (the Pallas one
  would run in interpret mode on CPU: slow, and nothing the CPU tests need);
- ``masked_xor_at``: ``masked_xor_bitsliced`` on the layout (the CUDA binary-MMA kernel on a GPU,
  the jnp formulation elsewhere);
- ``expand_xor_at`` (what the scan calls for each head, tile and tail): on a GPU, every key expanded in XLA
  to the subtree roots 8 levels above the tile's leaves, then one CUDA call (``expand_xor_bmma``) whose
  expansion writes the per-bit page vectors the binary-MMA scan reads, so the masks never reach HBM (up to 8
  keys, Q <= 2, one pipelined kernel: the expansion of the next chunks runs beside the scan of these);
  elsewhere the XLA expansion then the jnp GF(2) product (the two ops above, composed);
- ``masked_xor`` (a raw tile, the two-argument contract): the XLA op; the scan never calls it, as
  it reads the layout in place through ``masked_xor_at``.

Importing this module compiles nothing and needs no CUDA.
"""

from __future__ import annotations

import jax

from .bitsliced import bitslice_rows, masked_xor_bitsliced
from .pallas_ops import expand_levels_fn as expand_levels_pallas_fn
from .registry import EngineSpec, RowReader, get_ops, register_ops
from .xla_ops import SUBTREE_LEVELS, expand_levels_xla, kernel_below_subtree_roots, masked_xor_xla

__all__ = ["CUDA_PATH", "ENGINE_NAME", "JNP_PATH", "PIPELINED_PATH", "SUBTREE_LEVELS", "expand_levels_fn", "expand_xor_at_fn",
           "expand_xor_kernel", "layout_fn", "masked_xor_at_fn", "step_path"]

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


def expand_xor_kernel(words: jax.Array, row: jax.Array | int, roots: jax.Array, root_t: jax.Array, seed_cw: jax.Array,
                      t_cw: jax.Array, final_cw: jax.Array, lo: int, count: int) -> jax.Array:
    """The CUDA op (pir/cuda ``expand_xor_bmma``): leaves [lo, lo + count) of the subtrees (roots, root_t)
    expanded by seed_cw.shape[1] <= 8 levels mask DB pages [row, row + count) of the layout: (K, 1024) u32."""
    from .cuda import expand_xor_bmma  # noqa: PLC0415  (needs CUDA only here)

    return expand_xor_bmma(words, row, roots, root_t, seed_cw, t_cw, final_cw, lo, count)


CUDA_PATH, JNP_PATH = "cuda expansion + binary MMA", "xla expansion + jnp GF(2) product (no CUDA backend)"
PIPELINED_PATH = "cuda expansion beside binary MMA (one pipelined kernel)"


def step_path(num_keys: int) -> str:
    """What a scan step of ``num_keys`` keys runs here: on a GPU the CUDA op (one pipelined kernel up to
    8 keys, else the expansion then the scan), else the XLA/jnp ops."""
    if not _gpu():
        return JNP_PATH
    from .cuda import pipelined  # noqa: PLC0415  (importing it needs no CUDA; kept beside the op's import)

    return PIPELINED_PATH if pipelined(num_keys) else CUDA_PATH


def expand_xor_at_fn(spec: EngineSpec, words: jax.Array, row: jax.Array | int, seeds: jax.Array, ts: jax.Array,
                     seed_cw: jax.Array, t_cw: jax.Array, final_cw: jax.Array, lo: int, count: int) -> jax.Array:
    """ExpandXorFn (registry.py) on the layout: on a GPU, the subtree roots in XLA, then the CUDA op (the
    expansion writes the per-bit page vectors, the binary-MMA scan reads them); elsewhere the expansion then
    ``masked_xor_at`` (the XLA expansion, the jnp GF(2) product): ``step_path``."""
    if step_path(seeds.shape[0]) != JNP_PATH:
        return kernel_below_subtree_roots(expand_xor_kernel, words, row, seeds, ts, seed_cw, t_cw, final_cw, lo, count,
                                          unroll=spec.resolved_unroll)
    return get_ops(ENGINE_NAME).expand_then_xor(spec, words, row, seeds, ts, seed_cw, t_cw, final_cw, lo, count)


def layout_fn(read: RowReader, num_pages: int) -> jax.Array:
    """The bit-sliced database of raw rows [0, num_pages) read group by group (bitslice_rows):
    (num_pages rounded up to 256, 1024) u32 on the default device."""
    return bitslice_rows(read, num_pages).words


register_ops(ENGINE_NAME, expand_levels_fn, masked_xor_xla, masked_xor_at_fn, layout_fn, expand_xor_at_fn, step_path)
