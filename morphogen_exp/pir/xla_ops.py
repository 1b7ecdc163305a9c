"""The XLA ops of the engine: GGM expansion of DPF subtrees into masks, and the multi-key masked XOR.

Compile time is the constraint that shapes the expansion (expand_nodes_xla): every ChaCha8 pair
written out as straight-line code costs seconds of XLA compile time (CPU and GPU), so most levels
run in a fixed-shape loop and only the last few are expanded by doubling. Signatures are the
engine-interface ones (docs/engine-interface.md); the module ends with engine "xla", the two ops alone.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from .chacha_jax import default_unroll, prg_expand
from .cuda.dpf import MAX_LEVELS
from .engine import Engine, Subtrees, Window
from .pages import PAGE_WORDS, xor_reduce
from .spec import default_doubling_levels

__all__ = ["ENGINE", "SUBTREE_LEVELS", "descend_left", "expand_nodes_xla", "expand_levels_xla", "masked_xor_xla",
           "subtree_roots", "kernel_below_subtree_roots"]

# The CUDA scan steps' subtrees (engines fused and bitsliced): 2^8 = 256 leaves, one shared-memory heap per
# key, one 256-page chunk of the bit-sliced layout.
SUBTREE_LEVELS = MAX_LEVELS


def _on(t: jax.Array) -> jax.Array:
    """All-ones where t == 1, zero where t == 0 (uint32): a branch-free select."""
    return jnp.uint32(0) - t


def _expand_doubling(
    seeds: jax.Array, ts: jax.Array, seed_cw: jax.Array, t_cw: jax.Array, unroll: bool
) -> tuple[jax.Array, jax.Array]:
    """Level by level, every node into its 2 children: 2 ChaCha8 blocks per tree node (the least
    arithmetic). Shapes double per level, so each level is its own (fused) kernel."""
    for lvl in range(seed_cw.shape[-2]):
        left, right, tl, tr = prg_expand(seeds, unroll)
        on = _on(ts)  # (..., R): the parent's t selects whether this level's corrections apply
        cw = seed_cw[..., lvl, None, :] & on[..., None]
        left, right = left ^ cw, right ^ cw
        tl = tl ^ (t_cw[..., lvl, 0, None] & on)
        tr = tr ^ (t_cw[..., lvl, 1, None] & on)
        # Interleave: child index = 2 * parent + bit (MSB-first path bits), left first.
        seeds = jnp.stack([left, right], axis=-2).reshape(*left.shape[:-2], -1, 4)
        ts = jnp.stack([tl, tr], axis=-1).reshape(*tl.shape[:-1], -1)
    return seeds, ts


def _expand_compact(
    seeds: jax.Array, ts: jax.Array, seed_cw: jax.Array, t_cw: jax.Array, unroll: bool = False
) -> tuple[jax.Array, jax.Array]:
    """The same function with fixed shapes, so the levels are one loop whose body holds one ChaCha8
    pair, however many levels there are. Slot p of the final (..., R*2^L) array holds, after level
    l, the ancestor at depth d+l+1 of output p: shared ancestors are recomputed (L PRG pairs per
    output instead of about 2). Why: program size, hence compile time, of the doubling form grows
    with the level count (seconds per level, more when unrolled; docs/performance.md), while this
    stays constant."""
    levels = seed_cw.shape[-2]
    if levels == 0:
        return seeds, ts
    seeds = jnp.repeat(seeds, 1 << levels, axis=-2)
    ts = jnp.repeat(ts, 1 << levels, axis=-1)
    slot = jnp.arange(seeds.shape[-2], dtype=jnp.uint32)

    def level(lvl: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        s, t = carry
        left, right, tl, tr = prg_expand(s, unroll)
        shift = jnp.uint32(levels - 1) - jnp.asarray(lvl, jnp.uint32)
        bit = (slot >> shift) & jnp.uint32(1)  # this level's path bit of every slot: 1 = right child
        cw = lax.dynamic_index_in_dim(seed_cw, lvl, seed_cw.ndim - 2, keepdims=False)  # (..., 4)
        tcw = lax.dynamic_index_in_dim(t_cw, lvl, t_cw.ndim - 2, keepdims=False)  # (..., 2)
        on = _on(t)
        # Selects written as masks, not jnp.where: XLA:CPU can miscompile the where(iota-derived
        # predicate) form of this function (wrong leaves at domain_bits=1; docs/performance.md).
        take_right = _on(bit)
        child = left ^ ((left ^ right) & take_right[:, None])
        t_child = tl ^ ((tl ^ tr) & bit)
        t_corr = tcw[..., 0, None] ^ ((tcw[..., 0, None] ^ tcw[..., 1, None]) & bit)
        return child ^ (cw[..., None, :] & on[..., None]), t_child ^ (t_corr & on)

    return lax.fori_loop(0, levels, level, (seeds, ts))


def expand_nodes_xla(
    seeds: jax.Array,
    ts: jax.Array,
    seed_cw: jax.Array,
    t_cw: jax.Array,
    *,
    unroll: bool | None = None,
    doubling_levels: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """GGM expansion without the final correction: nodes (K, R, 4), (K, R) at depth d and the
    correction words of L levels (K, L, 4), (K, L, 2) -> nodes at depth d + L, (K, R*2^L, 4), (K, R*2^L).

    The first L - c levels run in the compact fixed-shape loop, the last c = min(doubling_levels, L)
    by doubling. Defaults: unroll = default_unroll(); doubling_levels = 3 when unrolled (GPU), else
    0 (CPU: everything compact, rounds looped, compiles in about a second at any depth).
    Do not use unroll=True on the CPU backend: XLA:CPU compiles chained unrolled ChaCha8 for minutes.
    """
    unroll = default_unroll() if unroll is None else unroll
    c = default_doubling_levels(unroll) if doubling_levels is None else doubling_levels
    split = seed_cw.shape[-2] - min(seed_cw.shape[-2], c)
    seeds, ts = _expand_compact(seeds, ts, seed_cw[..., :split, :], t_cw[..., :split, :], unroll)
    return _expand_doubling(seeds, ts, seed_cw[..., split:, :], t_cw[..., split:, :], unroll)


def expand_levels_xla(
    seeds: jax.Array,
    ts: jax.Array,
    seed_cw: jax.Array,
    t_cw: jax.Array,
    final_cw: jax.Array,
    *,
    unroll: bool | None = None,
    doubling_levels: int | None = None,
) -> jax.Array:
    """seeds (K, R, 4), ts (K, R) at depth d; seed_cw (K, L, 4), t_cw (K, L, 2) of levels d..d+L-1;
    final_cw (K, 4) -> leaves (K, R*2^L, 4) in index order with the final correction: DPF outputs."""
    leaves, t = expand_nodes_xla(seeds, ts, seed_cw, t_cw, unroll=unroll, doubling_levels=doubling_levels)
    return leaves ^ (final_cw[..., None, :] & _on(t)[..., None])


def masked_xor_xla(pages: jax.Array, masks: jax.Array) -> jax.Array:
    """pages (T, 1024) u32, masks (K, T, 4) u32 -> (K, 1024) u32:
    out[k, w] = XOR over t of pages[t, w] & masks[k, t, w % 4]. XLA fuses the AND into the reduce,
    so the (K, T, 256, 4) product is never stored."""
    t = pages.shape[0]
    prod = pages.reshape(t, PAGE_WORDS // 4, 4)[None] & masks[:, :, None, :]
    return xor_reduce(prod, 1).reshape(masks.shape[0], PAGE_WORDS)


def subtree_roots(subtrees: Subtrees, window: Window, *, unroll: bool) -> tuple[Subtrees, Window]:
    """Of the nodes (K, R) a scan step is handed (their leaves L = subtrees.levels down), the ones whose leaves
    [window.lo, window.lo + window.count) are used, expanded to the roots of the subtrees of
    min(L, SUBTREE_LEVELS) levels that hold those leaves: those subtrees (with the corrections of the levels
    below them) and the window's leaves counted within them."""
    seeds, ts, seed_cw, t_cw, final_cw = subtrees
    lo, count = window.lo, window.count
    levels = seed_cw.shape[1]
    sub = min(levels, SUBTREE_LEVELS)
    top = levels - sub
    r0, r1 = lo >> levels, (lo + count - 1) >> levels  # nodes whose leaves are used
    roots, root_t = expand_nodes_xla(seeds[:, r0 : r1 + 1], ts[:, r0 : r1 + 1], seed_cw[:, :top], t_cw[:, :top],
                                     unroll=unroll, doubling_levels=0)
    lo -= r0 << levels
    s0, s1 = lo >> sub, (lo + count - 1) >> sub  # subtrees whose leaves are used
    below = Subtrees(roots[:, s0 : s1 + 1], root_t[:, s0 : s1 + 1], seed_cw[:, top:], t_cw[:, top:], final_cw)
    return below, Window(window.row, lo - (s0 << sub), count)


def kernel_below_subtree_roots(kernel: Callable[[jax.Array, Subtrees, Window], jax.Array], pages_words: jax.Array,
                               subtrees: Subtrees, window: Window, *, unroll: bool) -> jax.Array:
    """A CUDA engine's scan step: the nodes expanded in XLA to their ``subtree_roots``, then
    ``kernel(pages_words, roots, window)`` expands the subtrees' levels (the corrections below the roots)
    and XORs the masked pages: (K, 1024) u32."""
    roots, sub_window = subtree_roots(subtrees, window, unroll=unroll)
    return kernel(pages_words, roots, sub_window)


def descend_left(seeds: jax.Array, ts: jax.Array, seed_cw: jax.Array, t_cw: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Nodes (K, 4), (K,) at depth d -> their leftmost descendants L = seed_cw.shape[-2] levels down
    (path bits 0). One ChaCha8 pair in a loop with looped rounds: K nodes, so the arithmetic is
    nothing and the program stays small (an unrolled pair costs seconds of compile time)."""
    if seed_cw.shape[-2] == 0:
        return seeds, ts

    def level(lvl: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        s, t = carry
        left, _, tl, _ = prg_expand(s, False)
        cw = lax.dynamic_index_in_dim(seed_cw, lvl, seed_cw.ndim - 2, keepdims=False)  # (K, 4)
        tcw = lax.dynamic_index_in_dim(t_cw, lvl, t_cw.ndim - 2, keepdims=False)[..., 0]  # (K,) left
        on = _on(t)
        return left ^ (cw & on[..., None]), tl ^ (tcw & on)

    return lax.fori_loop(0, seed_cw.shape[-2], level, (seeds, ts))


ENGINE = Engine(name="xla", expand_levels=expand_levels_xla, masked_xor=masked_xor_xla)
