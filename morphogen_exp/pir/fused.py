"""Engine "fused": each scan step's last GGM levels and its masked XOR in one CUDA kernel (pir/cuda/fused.cu).

The raw database is scanned in place, like engine "pallas". For a tile, every key is expanded in XLA
down to subtree roots ``SUBTREE_LEVELS`` (8) above the leaves; the kernel then expands each subtree of
256 leaves in shared memory and XORs its 256 pages (1 MiB) into per-block accumulators for up to 4 keys
at once (more keys: more key blocks side by side, the pages read from HBM once and from L2 by the others),
so the page masks never go through HBM and the ChaCha8 work of one resident block overlaps the page reads
of the others. Per-block partial
answers are XOR-reduced in XLA. It is made for small batches, where the scan is read-bound (Q=1: 3 keys).
A step of more than ``KERNEL_MAX_KEYS`` keys runs Engine "pallas"'s ops instead (the masks expanded to HBM,
then its masked XOR): there a block's expansion no longer hides under the page reads and Pallas is faster,
so one engine is the faster of the two at every batch size.

On a backend without CUDA (CPU, CI) the same step is the XLA expansion then the XLA masked XOR, so the
engine's wiring is checked everywhere; the kernel itself is checked on a GPU against the numpy oracle
(tests/test_fused_engine.py, its GPU cases skipped elsewhere) and timed by ``python -m morphogen_exp.bench
engine --engines fused,pallas --scan-only``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .keybatch import PAGE_WORDS
from .pallas_ops import expand_levels_fn as expand_levels_pallas_fn
from .registry import EngineSpec, get_ops, register_ops
from .xla_ops import SUBTREE_LEVELS, expand_levels_xla, kernel_below_subtree_roots, masked_xor_xla

__all__ = ["ENGINE_NAME", "KERNEL_PATH", "PALLAS_PATH", "SUBTREE_LEVELS", "XLA_PATH", "expand_xor_at_fn", "expand_xor_fused",
           "grid_blocks", "step_path"]

ENGINE_NAME = "fused"
MAX_KEYS_PER_BLOCK = 4
# Keys per scan step up to which the kernel runs; above, the Pallas ops. Measured on an H100 at mainnet
# (docs/benchmarks/2026-11-27-h100-mainnet-real-{fused,pallas-A}, full_batch ms): 3/6/12 keys fused 25.2/25.2/37.4
# vs pallas 26.6/32.6/43.5; 24/48/96 keys fused 76.3/158/331 vs pallas 65.6/112/222.
KERNEL_MAX_KEYS = 12
PALLAS = "pallas"
_BLOCKS_PER_SM = 3  # the kernel's __launch_bounds__ minimum


def _gpu() -> bool:
    return jax.default_backend() == "gpu"


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


def expand_xor_fused(pages_words: jax.Array, row: jax.Array | int, roots: jax.Array, root_t: jax.Array, seed_cw: jax.Array,
                     t_cw: jax.Array, final_cw: jax.Array, lo: int, count: int) -> jax.Array:
    """The CUDA kernel: subtree roots (K, S, 4), (K, S) expanded by L = seed_cw.shape[1] <= 8 levels; leaves
    [lo, lo + count) of the S * 2^L mask rows [row, row + count) of pages_words (P, 1024) -> (K, 1024) u32."""
    from .cuda import register  # noqa: PLC0415  (needs CUDA only here)

    register()
    k, s = root_t.shape
    levels = seed_cw.shape[1]
    if levels > SUBTREE_LEVELS:
        raise ValueError(f"subtrees of {levels} levels: the kernel expands at most {SUBTREE_LEVELS}")
    kb = keys_per_block(k)
    g = grid_blocks(s, -(-k // kb))
    call = jax.ffi.ffi_call("morphogen_expand_xor_fused", jax.ShapeDtypeStruct((g, k, PAGE_WORDS), jnp.uint32),
                            vmap_method="sequential")
    partial = call(pages_words, jnp.asarray(row, jnp.int32).reshape(()), roots, root_t.astype(jnp.uint32), seed_cw,
                   t_cw.astype(jnp.uint32), final_cw, lo=np.int64(lo), count=np.int64(count),
                   kb=np.int32(kb))
    return jax.lax.reduce(partial, jnp.uint32(0), jax.lax.bitwise_xor, (0,))


KERNEL_PATH, PALLAS_PATH, XLA_PATH = "cuda kernel", "pallas ops", "xla ops (no CUDA backend)"


def step_path(num_keys: int) -> str:
    """What a scan step of num_keys keys runs here: the CUDA kernel (a GPU, <= KERNEL_MAX_KEYS keys), the
    Pallas ops (a GPU, more keys) or the XLA ops (no GPU). The dispatch below and each cell's record use it."""
    if not _gpu():
        return XLA_PATH
    return KERNEL_PATH if num_keys <= KERNEL_MAX_KEYS else PALLAS_PATH


def expand_xor_at_fn(spec: EngineSpec, pages_words: jax.Array, row: jax.Array | int, seeds: jax.Array, ts: jax.Array,
                     seed_cw: jax.Array, t_cw: jax.Array, final_cw: jax.Array, lo: int, count: int) -> jax.Array:
    """ExpandXorFn (registry.py): the nodes (K, R) are expanded in XLA to the subtree roots whose leaves
    meet [lo, lo + count), then the kernel does the rest; more than KERNEL_MAX_KEYS keys, the Pallas ops; on a
    backend without CUDA, the XLA ops (``step_path``)."""
    path = step_path(seeds.shape[0])
    if path != KERNEL_PATH:
        ops = get_ops(PALLAS if path == PALLAS_PATH else ENGINE_NAME)
        return ops.expand_then_xor(spec, pages_words, row, seeds, ts, seed_cw, t_cw, final_cw, lo, count)
    return kernel_below_subtree_roots(expand_xor_fused, pages_words, row, seeds, ts, seed_cw, t_cw, final_cw, lo, count,
                                      unroll=spec.resolved_unroll)


def expand_levels_fn(seeds: jax.Array, ts: jax.Array, seed_cw: jax.Array, t_cw: jax.Array, final_cw: jax.Array, *,
                     unroll: bool | None = None, doubling_levels: int | None = None) -> jax.Array:
    """Leaves (K, R * 2**L, 4) outside the scan (full evaluations): the Pallas GGM kernel on a GPU, else XLA."""
    if _gpu():
        return expand_levels_pallas_fn(seeds, ts, seed_cw, t_cw, final_cw)
    return expand_levels_xla(seeds, ts, seed_cw, t_cw, final_cw, unroll=unroll, doubling_levels=doubling_levels)


register_ops(ENGINE_NAME, expand_levels_fn, masked_xor_xla, expand_xor_at_fn=expand_xor_at_fn, step_path_fn=step_path)
