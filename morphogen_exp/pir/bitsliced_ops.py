"""Engine "bitsliced": the database in the layout of pir/bitsliced.py, built once per database by the
``layout`` hook, and the masked XOR as a GF(2) product on it.

- expansion: ``pallas_ops.expand_levels_on_backend`` (the Pallas GGM kernel on a GPU, XLA elsewhere);
- ``masked_xor_at``: ``masked_xor_bitsliced`` on the layout (the CUDA binary-MMA kernel on a GPU,
  the jnp formulation elsewhere);
- ``expand_xor_at`` (what the scan calls for each head, tile and tail): on a GPU, every key expanded in XLA
  to the subtree roots 8 levels above the tile's leaves, then one CUDA call (``expand_xor_bmma``) whose
  expansion writes the per-bit page vectors the binary-MMA scan reads, so the masks never reach HBM (up to 8
  keys one pipelined kernel: the expansion of the next chunks runs beside the scan of these);
  elsewhere the XLA expansion then the jnp GF(2) product (the two ops above, composed);
- ``masked_xor`` (a raw tile, the two-argument contract): the XLA op; the scan never calls it, as
  it reads the layout in place through ``masked_xor_at``.

It runs on every placement: replicated, the layout built once and copied to each device; sharded, each
device the layout of its own ceil(N / D) rows, built there (datasets.load), its scan the shard's own plan.
Importing this module compiles nothing and needs no CUDA.
"""

from __future__ import annotations

import jax

from . import backend, pallas_ops
from .bitsliced import bitslice_rows, build_scratch_bytes, masked_xor_bitsliced, padded_pages
from .cuda.bmma import engine_stages, expand_xor_bmma, pipelined, scratch_words
from .engine import Engine, RowReader, Subtrees, TileFn, Window, mask_working_set_bytes
from .pages import PAGE_BYTES
from .spec import EngineSpec
from .xla_ops import SUBTREE_LEVELS, kernel_below_subtree_roots, masked_xor_xla

__all__ = ["CUDA_PATH", "ENGINE", "JNP_PATH", "PIPELINED_PATH", "database_bytes", "expand_xor_at_fn",
           "expand_xor_kernel", "layout_fn", "masked_xor_at_fn", "step_path", "working_set_bytes"]


def masked_xor_at_fn(words: jax.Array, page_offset: jax.Array | int, masks: jax.Array) -> jax.Array:
    """words (256*C, 1024) u32 bit-sliced (the prepared database), the tile's first page, masks
    (K, T, 4) -> (K, 1024) u32 (engine-interface.md)."""
    return masked_xor_bitsliced(words, page_offset, masks, impl="auto")


def expand_xor_kernel(words: jax.Array, subtrees: Subtrees, window: Window) -> jax.Array:
    """The CUDA op (``expand_xor_bmma``): leaves [lo, lo + count) of the subtrees, expanded by
    subtrees.levels <= 8 levels, mask DB pages [row, row + count) of the layout: (K, 1024) u32."""
    return expand_xor_bmma(words, subtrees, window)


CUDA_PATH, JNP_PATH = "cuda expansion + binary MMA", "xla expansion + jnp GF(2) product (no CUDA backend)"
PIPELINED_PATH = "cuda expansion beside binary MMA (one pipelined kernel)"


def step_path(num_keys: int) -> str:
    """What a scan step of ``num_keys`` keys runs here: on a GPU the CUDA op (one pipelined kernel up to
    8 keys, else the expansion then the scan), else the XLA/jnp ops."""
    if not backend.on_gpu():
        return JNP_PATH
    return PIPELINED_PATH if pipelined(num_keys) else CUDA_PATH


def expand_xor_at_fn(spec: EngineSpec, words: jax.Array, subtrees: Subtrees, window: Window) -> jax.Array:
    """ExpandXorFn (pir/engine.py) on the layout: on a GPU, the subtree roots in XLA, then the CUDA op (the
    expansion writes the per-bit page vectors, the binary-MMA scan reads them); elsewhere the expansion then
    ``masked_xor_at`` (the XLA expansion, the jnp GF(2) product): ``step_path``."""
    if step_path(subtrees.num_keys) != JNP_PATH:
        return kernel_below_subtree_roots(expand_xor_kernel, words, subtrees, window, unroll=spec.resolved_unroll)
    return ENGINE.expand_then_xor(spec, words, subtrees, window)


def layout_fn(read: RowReader, num_pages: int) -> jax.Array:
    """The bit-sliced database of raw rows [0, num_pages) read group by group (bitslice_rows):
    (num_pages rounded up to 256, 1024) u32 on the default device."""
    return bitslice_rows(read, num_pages).words


def database_bytes(num_pages: int) -> int:
    """The bit-sliced layout: the raw pages rounded up to chunks of 256, the same size give or take a chunk."""
    return padded_pages(num_pages) * PAGE_BYTES


def working_set_bytes(num_keys: int, tile: TileFn) -> int:
    """No masks are stored (one subtree root per 256 leaves instead), plus the per-bit page vectors the
    expansion writes and the binary-MMA scan reads (16 bytes per page and key, keys padded to the kernel's
    key groups of 8; up to 8 keys, two groups of 8 chunks per SM)."""
    roots = mask_working_set_bytes(num_keys, lambda k: max(1, tile(k) >> SUBTREE_LEVELS))
    return roots + 4 * scratch_words(num_keys, tile(num_keys), None, engine_stages(num_keys))


ENGINE = Engine(
    name="bitsliced",
    expand_levels=pallas_ops.expand_levels_on_backend,
    masked_xor=masked_xor_xla,
    masked_xor_at=masked_xor_at_fn,
    expand_xor_at=expand_xor_at_fn,
    layout=layout_fn,
    step_path=step_path,
    database_bytes=database_bytes,
    build_bytes=build_scratch_bytes,
    working_set_bytes=working_set_bytes,
)
