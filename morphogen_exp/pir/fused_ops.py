"""Engine "fused": each scan step's last GGM levels and its masked XOR in one CUDA kernel (pir/cuda/fused.py).

The raw database is scanned in place, like engine "pallas". For a tile, every key is expanded in XLA
down to subtree roots ``SUBTREE_LEVELS`` (8) above the leaves; the kernel then expands each subtree of
256 leaves in shared memory and XORs its 256 pages (1 MiB) into per-block accumulators for up to 4 keys
at once, so the page masks never go through HBM and the ChaCha8 work of one resident block overlaps the
page reads of the others. Per-block partial answers are XOR-reduced in XLA. It is made for small batches,
where the scan is read-bound (Q=1: 3 keys). A step of more than ``KERNEL_MAX_KEYS`` keys runs engine
"pallas"'s ops instead (the masks expanded to HBM, then its masked XOR): there a block's expansion no
longer hides under the page reads and Pallas is faster, so one engine is the faster of the two at every
batch size (docs/performance.md has the crossover).

On a backend without CUDA (CPU, CI) the same step is the XLA expansion then the XLA masked XOR, so the
engine's wiring is checked everywhere; the kernel itself is checked on a GPU against the numpy oracle
(tests/test_fused_engine.py, its GPU cases skipped elsewhere) and timed by ``python -m morphogen_exp.bench
engine --engines fused,pallas --scan-only``.
"""

from __future__ import annotations

import jax

from . import backend, pallas_ops
from .cuda.fused import grid_blocks, partial_answers_fused
from .engine import Engine, Subtrees, TileFn, Window, mask_working_set_bytes
from .pages import PAGE_BYTES, xor_reduce
from .spec import EngineSpec
from .xla_ops import SUBTREE_LEVELS, kernel_below_subtree_roots, masked_xor_xla

__all__ = ["ENGINE", "KERNEL_MAX_KEYS", "KERNEL_PATH", "PALLAS_PATH", "XLA_PATH", "expand_xor_at_fn", "expand_xor_fused",
           "step_path", "working_set_bytes"]

# Keys per scan step up to which the kernel runs; above, the Pallas ops are faster (docs/performance.md).
KERNEL_MAX_KEYS = 12
KERNEL_PATH, PALLAS_PATH, XLA_PATH = "cuda kernel", "pallas ops", "xla ops (no CUDA backend)"


def expand_xor_fused(pages_words: jax.Array, subtrees: Subtrees, window: Window) -> jax.Array:
    """The CUDA kernel's step: subtree roots expanded by L = subtrees.levels <= 8 levels; leaves [lo, lo + count)
    mask rows [row, row + count) of pages_words (P, 1024) -> (K, 1024) u32 (the XOR of its partial answers)."""
    return xor_reduce(partial_answers_fused(pages_words, subtrees, window), 0)


def step_path(num_keys: int) -> str:
    """What a scan step of num_keys keys runs here: the CUDA kernel (a GPU, <= KERNEL_MAX_KEYS keys), the
    Pallas ops (a GPU, more keys) or the XLA ops (no GPU). The dispatch below and each cell's record use it."""
    if not backend.on_gpu():
        return XLA_PATH
    return KERNEL_PATH if num_keys <= KERNEL_MAX_KEYS else PALLAS_PATH


def expand_xor_at_fn(spec: EngineSpec, pages_words: jax.Array, subtrees: Subtrees, window: Window) -> jax.Array:
    """ExpandXorFn (pir/engine.py): the nodes (K, R) are expanded in XLA to the subtree roots whose leaves
    meet the window, then the kernel does the rest; more than KERNEL_MAX_KEYS keys, the Pallas ops; on a
    backend without CUDA, the XLA ops (``step_path``)."""
    path = step_path(subtrees.num_keys)
    if path != KERNEL_PATH:
        fallback = pallas_ops.ENGINE if path == PALLAS_PATH else ENGINE
        return fallback.expand_then_xor(spec, pages_words, subtrees, window)
    return kernel_below_subtree_roots(expand_xor_fused, pages_words, subtrees, window, unroll=spec.resolved_unroll)


def working_set_bytes(num_keys: int, tile: TileFn) -> int:
    """Up to KERNEL_MAX_KEYS keys no masks are stored: one subtree root per 256 leaves, and one (1024,) u32
    partial answer per block group and key; above, the Pallas ops store their masks like any raw-page engine."""
    if num_keys > KERNEL_MAX_KEYS:
        return mask_working_set_bytes(num_keys, tile)
    roots = mask_working_set_bytes(num_keys, lambda k: max(1, tile(k) >> SUBTREE_LEVELS))
    return roots + num_keys * grid_blocks(1 << 30) * PAGE_BYTES


ENGINE = Engine(
    name="fused",
    expand_levels=pallas_ops.expand_levels_on_backend,  # leaves outside the scan (full evaluations)
    masked_xor=masked_xor_xla,
    expand_xor_at=expand_xor_at_fn,
    step_path=step_path,
    working_set_bytes=working_set_bytes,
)
