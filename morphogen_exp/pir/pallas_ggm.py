"""Pallas (Triton) kernel for the ChaCha8 GGM tree expansion of DPF keys.

``expand_levels_pallas(seeds (K,R,4), ts (K,R), seed_cw (K,L,4), t_cw (K,L,2), final_cw (K,4))
-> (K, R * 2**L, 4) u32``: the leaves in index order (child = 2 * parent + bit, left first),
with the final correction word applied where the final t == 1 (docs/engine-interface.md,
tests/fixtures/README.md).

Design: one node per lane.  A program takes ``NB`` nodes of one key, holds each of their four
seed words as a (NB,) vector, and runs ``levels`` tree levels in registers: per level two
ChaCha8 blocks per node (16 u32 word vectors each, 4 double rounds: a ``fori_loop`` over double
rounds by default, about as fast as the unrolled form on a GPU and compiled in seconds, or
unrolled), then the correction words of that level (scalars of the program's key).
The children are kept as separate groups per path suffix and written either as one
(n, 4 * 2**levels) row block assembled with broadcasts and selects (``store="select"``, the
default) or with strided stores (``"split"``), so that no join / reshape reaches Triton
(``"join"`` / ``"strided"`` interleave in registers with ``stack`` + ``reshape``, which can crash
the Triton compiler: docs/performance.md).  The last call of an expansion applies
``final_cw`` and writes no t.  ``levels`` > 1 saves intermediate HBM round trips and launches;
L levels take ceil(L / levels) ``pallas_call``s in one jitted program (the first level of a call
is an operand, so the calls share kernels).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from morphogen_exp.pir.chacha_jax import chacha8_block_words as _chacha8_block_words
from morphogen_exp.pir.pallas_scan import squeezed_dim, triton_compiler_params

__all__ = ["GGMBlock", "expand_levels_pallas", "expand_levels_reference", "chacha8_block_words"]

_STORES = ("split", "select", "join", "strided")


def _is_pow2(x: int) -> bool:
    return x > 0 and (x & (x - 1)) == 0


def _pow2_divisor(x: int) -> int:
    """Largest power of two dividing x (x > 0)."""
    return x & -x


# --------------------------------------------------------------------------------------------
# Block sizes
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GGMBlock:
    """Static parameters of the GGM expansion kernel.

    nodes:  parent nodes per program at the widest (last) level of one call (power of two);
            a call of ``levels`` levels starts from nodes / 2**(levels-1) nodes per program.
    levels: tree levels per ``pallas_call`` (kept in registers in between).
    num_warps, num_stages: Triton launch parameters.
    unroll: unroll the 4 ChaCha double rounds (False: a loop; None: unrolled on the GPU, a
            loop in interpret mode, whose compile is much faster on a CPU).
    store:  "select" (the 2**levels children of a node are assembled into one (n, 4 * 2**levels)
            row block with broadcasts and selects, then stored contiguously), "split" (children
            groups stored with strided slices: only loads, stores and elementwise ops), "join"
            (children interleaved in registers with Triton's join + reshape) or "strided" (join
            interleave, one strided store per word).  "join" and "strided" can crash the Triton
            compiler (SIGSEGV; docs/performance.md): CPU / interpret mode only.
    """

    # Defaults: the best rate for its compile time over the bench shapes; unrolled or deeper
    # blocks gain a little rate for much longer compiles (docs/performance.md, "Kernel defaults").
    nodes: int = 256
    levels: int = 2
    num_warps: int = 4
    num_stages: int = 1
    unroll: bool | None = False
    store: str = "select"

    def __post_init__(self) -> None:
        if not _is_pow2(self.nodes):
            raise ValueError(f"GGMBlock.nodes={self.nodes} must be a power of two")
        if self.levels < 1:
            raise ValueError(f"GGMBlock.levels={self.levels} must be >= 1")
        if self.store not in _STORES:
            raise ValueError(f"GGMBlock.store={self.store!r} must be one of {_STORES}")
        if self.num_warps not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"GGMBlock.num_warps={self.num_warps} must be a power of two <= 32")

    @classmethod
    def get_default(cls) -> GGMBlock:
        return cls()

    def replace(self, **kw: Any) -> GGMBlock:
        return dataclasses.replace(self, **kw)


# --------------------------------------------------------------------------------------------
# ChaCha8 on word vectors: the same jnp code as the XLA engine (it traces inside a kernel too)
# --------------------------------------------------------------------------------------------
def chacha8_block_words(seed: list, counter: int, *, unroll: bool) -> list:
    """ChaCha8 block ``counter`` of key seed||seed, zero nonce: 16 output word arrays."""
    return list(_chacha8_block_words(tuple(seed), counter, unroll))


def _expand_node_words(seed: list, t, cw: list, t_cw_l, t_cw_r, *, unroll: bool):
    """One GGM level for word vectors: returns (left seed words, right seed words, tl, tr)."""
    b0 = chacha8_block_words(seed, 0, unroll=unroll)
    b1 = chacha8_block_words(seed, 1, unroll=unroll)
    t = t & np.uint32(1)
    tmask = np.uint32(0) - t  # all ones where t == 1
    left = [b0[w] ^ (cw[w] & tmask) for w in range(4)]
    right = [b0[4 + w] ^ (cw[w] & tmask) for w in range(4)]
    tl = (b1[0] & np.uint32(1)) ^ (t_cw_l & t)
    tr = (b1[1] & np.uint32(1)) ^ (t_cw_r & t)
    return left, right, tl, tr


def _interleave(a, b):
    """(..., n), (..., n) -> (..., 2n) with out[..., 2i] = a[i], out[..., 2i+1] = b[i]."""
    st = jnp.stack([a, b], axis=-1)
    return st.reshape(*a.shape[:-1], 2 * a.shape[-1])


# --------------------------------------------------------------------------------------------
# Kernel
# --------------------------------------------------------------------------------------------
def _ggm_kernel(lvl_ref, seeds_ref, t_ref, scw_ref, tcw_ref, fcw_ref, *out_refs, levels: int,
                final: bool, unroll: bool, store: str):
    """lvl_ref (1,) int32: the first level of this call (an operand, so that the calls of one
    expansion share kernels); seeds_ref (NB, 4), t_ref (NB,), scw_ref (L, 4), tcw_ref (L, 2),
    fcw_ref (4,) of one key; out: seeds (NB * 2**levels, 4) [, t (NB * 2**levels,) unless final].
    """
    level0 = lvl_ref[0]
    s = [seeds_ref[:, w] for w in range(4)]
    t = t_ref[...]
    out_seeds = out_refs[0]
    if store in ("split", "select"):
        # No in-register interleave: one group of (NB,) word vectors per path suffix q (MSB
        # first); child i * 2**levels + q is stored with a stride-2**levels slice.
        groups = [(s, t)]
        for j in range(levels):
            lvl = level0 + j
            cw = [scw_ref[lvl, w] for w in range(4)]
            tcl, tcr = tcw_ref[lvl, 0], tcw_ref[lvl, 1]
            nxt = []
            for sg, tg in groups:
                left, right, tl, tr = _expand_node_words(sg, tg, cw, tcl, tcr, unroll=unroll)
                nxt += [(left, tl), (right, tr)]
            groups = nxt
        n, stride = s[0].shape[0], 1 << levels
        if store == "select":
            # (n, G * 4) leaf words of each node's G = 2**levels children, assembled with
            # broadcasts and selects (no join / reshape), then one contiguous store.
            g = len(groups)
            if final:
                groups = [([sg[w] ^ (fcw_ref[w] & (np.uint32(0) - (tg & np.uint32(1))))
                            for w in range(4)], tg) for sg, tg in groups]
            col = lax.broadcasted_iota(jnp.int32, (n, 4 * g), 1)
            val = jnp.zeros((n, 4 * g), jnp.uint32)
            for q, (sg, _) in enumerate(groups):
                for w in range(4):
                    val = jnp.where(col == 4 * q + w, sg[w][:, None], val)
            out_seeds[...] = val
            if not final:
                colt = lax.broadcasted_iota(jnp.int32, (n, g), 1)
                tv = jnp.zeros((n, g), jnp.uint32)
                for q, (_, tg) in enumerate(groups):
                    tv = jnp.where(colt == q, tg[:, None], tv)
                out_refs[1][...] = tv
            return
        for q, (sg, tg) in enumerate(groups):
            if final:
                tmask = np.uint32(0) - (tg & np.uint32(1))
                sg = [sg[w] ^ (fcw_ref[w] & tmask) for w in range(4)]
            for w in range(4):  # out_seeds is the flat (NB * 2**levels * 4,) block
                out_seeds[pl.ds(4 * q + w, n, stride=4 * stride)] = sg[w]
            if not final:
                out_refs[1][pl.ds(q, n, stride=stride)] = tg
        return
    for j in range(levels):
        lvl = level0 + j
        cw = [scw_ref[lvl, w] for w in range(4)]
        left, right, tl, tr = _expand_node_words(s, t, cw, tcw_ref[lvl, 0], tcw_ref[lvl, 1],
                                                 unroll=unroll)
        s = [_interleave(left[w], right[w]) for w in range(4)]
        t = _interleave(tl, tr)
    if final:
        tmask = np.uint32(0) - (t & np.uint32(1))
        s = [s[w] ^ (fcw_ref[w] & tmask) for w in range(4)]
    if store == "join":
        n = s[0].shape[0]
        a = jnp.stack([s[0], s[2]], axis=-1)
        b = jnp.stack([s[1], s[3]], axis=-1)
        out_seeds[...] = jnp.stack([a, b], axis=-1).reshape(n, 4)
    else:
        for w in range(4):
            out_seeds[:, w] = s[w]
    if not final:
        out_refs[1][...] = t


@functools.partial(jax.jit, static_argnames=("level0", "levels", "final", "block", "interpret"))
def _ggm_call(seeds, ts, seed_cw, t_cw, final_cw, *, level0: int, levels: int, final: bool,
              block: GGMBlock, interpret: bool):
    k, r, _ = seeds.shape
    big_l = seed_cw.shape[1]
    nb = min(max(block.nodes >> (levels - 1), 1), _pow2_divisor(r))
    nout = nb << levels
    grid = (k, r // nb)
    sq = squeezed_dim()
    unroll = (not interpret) if block.unroll is None else block.unroll
    kernel = functools.partial(_ggm_kernel, levels=levels, final=final, unroll=unroll,
                               store=block.store)
    g = 1 << levels
    if block.store == "split":  # flat leaf words: strided 1-D stores only
        out_shape = [jax.ShapeDtypeStruct((k, (r << levels) * 4), jnp.uint32)]
        out_specs = [pl.BlockSpec(block_shape=(sq, nout * 4), index_map=lambda a, i: (a, i))]
    elif block.store == "select":  # (node, child * 4 + word): contiguous 2-D stores
        out_shape = [jax.ShapeDtypeStruct((k, r, 4 * g), jnp.uint32)]
        out_specs = [pl.BlockSpec(block_shape=(sq, nb, 4 * g), index_map=lambda a, i: (a, i, 0))]
    else:
        out_shape = [jax.ShapeDtypeStruct((k, r << levels, 4), jnp.uint32)]
        out_specs = [pl.BlockSpec(block_shape=(sq, nout, 4), index_map=lambda a, i: (a, i, 0))]
    if not final and block.store == "select":
        out_shape.append(jax.ShapeDtypeStruct((k, r, g), jnp.uint32))
        out_specs.append(pl.BlockSpec(block_shape=(sq, nb, g), index_map=lambda a, i: (a, i, 0)))
    elif not final:
        out_shape.append(jax.ShapeDtypeStruct((k, r << levels), jnp.uint32))
        out_specs.append(pl.BlockSpec(block_shape=(sq, nout), index_map=lambda a, i: (a, i)))
    outs = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=grid,
        in_specs=[
            pl.BlockSpec(block_shape=(1,), index_map=lambda a, i: (0,)),
            pl.BlockSpec(block_shape=(sq, nb, 4), index_map=lambda a, i: (a, i, 0)),
            pl.BlockSpec(block_shape=(sq, nb), index_map=lambda a, i: (a, i)),
            pl.BlockSpec(block_shape=(sq, big_l, 4), index_map=lambda a, i: (a, 0, 0)),
            pl.BlockSpec(block_shape=(sq, big_l, 2), index_map=lambda a, i: (a, 0, 0)),
            pl.BlockSpec(block_shape=(sq, 4), index_map=lambda a, i: (a, 0)),
        ],
        out_specs=out_specs,
        compiler_params=triton_compiler_params(block.num_warps, block.num_stages),
        interpret=interpret,
        name=f"ggm_l{levels}_n{nb}_w{block.num_warps}_{block.store}",
    )(jnp.full((1,), level0, jnp.int32), seeds, ts, seed_cw, t_cw, final_cw)
    return (outs[0].reshape(k, r << levels, 4),
            None if final else outs[1].reshape(k, r << levels))


@functools.partial(jax.jit, static_argnames=("block", "interpret"))
def _expand_levels_jit(seeds, ts, seed_cw, t_cw, final_cw, *, block: GGMBlock, interpret: bool):
    big_l = seed_cw.shape[1]
    if big_l == 0:
        tmask = jnp.uint32(0) - (ts & jnp.uint32(1))
        return seeds ^ (final_cw[:, None, :] & tmask[..., None])
    level = 0
    while level < big_l:
        m = min(block.levels, big_l - level)
        final = level + m == big_l
        seeds, ts = _ggm_call(seeds, ts, seed_cw, t_cw, final_cw, level0=level, levels=m,
                              final=final, block=block, interpret=interpret)
        level += m
    return seeds


def expand_levels_pallas(
    seeds: jax.Array,
    ts: jax.Array,
    seed_cw: jax.Array,
    t_cw: jax.Array,
    final_cw: jax.Array,
    *,
    block: GGMBlock | None = None,
    interpret: bool = False,
) -> jax.Array:
    """seeds (K,R,4) u32, ts (K,R) u32 (0/1): nodes at depth d; seed_cw (K,L,4), t_cw (K,L,2)
    [left, right]: correction words of levels d..d+L-1; final_cw (K,4)
    -> leaves (K, R * 2**L, 4) u32 in index order, final correction applied."""
    if seeds.ndim != 3 or seeds.shape[2] != 4:
        raise ValueError(f"seeds must be (K, R, 4), got {seeds.shape=}")
    k, r, _ = seeds.shape
    if ts.shape != (k, r):
        raise ValueError(f"ts must be {(k, r)=}, got {ts.shape=}")
    if seed_cw.ndim != 3 or seed_cw.shape[0] != k or seed_cw.shape[2] != 4:
        raise ValueError(f"seed_cw must be (K={k}, L, 4), got {seed_cw.shape=}")
    big_l = seed_cw.shape[1]
    if t_cw.shape != (k, big_l, 2):
        raise ValueError(f"t_cw must be {(k, big_l, 2)=}, got {t_cw.shape=}")
    if final_cw.shape != (k, 4):
        raise ValueError(f"final_cw must be {(k, 4)=}, got {final_cw.shape=}")
    for name, a in (("seeds", seeds), ("ts", ts), ("seed_cw", seed_cw), ("t_cw", t_cw),
                    ("final_cw", final_cw)):
        if a.dtype != jnp.uint32:
            raise TypeError(f"{name} must be uint32, got {a.dtype=}")
    if block is None:
        block = GGMBlock.get_default()
    if k == 0 or r == 0:
        return jnp.zeros((k, r << big_l, 4), jnp.uint32)
    return _expand_levels_jit(seeds, ts, seed_cw, t_cw, final_cw, block=block,
                              interpret=interpret)


# --------------------------------------------------------------------------------------------
# Reference (plain jnp)
# --------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("unroll",))
def expand_levels_reference(seeds, ts, seed_cw, t_cw, final_cw, *, unroll: bool = False):
    """Plain-jnp GGM expansion with the same contract as ``expand_levels_pallas``."""
    s = [seeds[..., w] for w in range(4)]  # (K, R) each
    t = ts
    for lvl in range(seed_cw.shape[1]):
        cw = [seed_cw[:, lvl, w][:, None] for w in range(4)]
        left, right, tl, tr = _expand_node_words(s, t, cw, t_cw[:, lvl, 0][:, None],
                                                 t_cw[:, lvl, 1][:, None], unroll=unroll)
        s = [_interleave(left[w], right[w]) for w in range(4)]
        t = _interleave(tl, tr)
    tmask = jnp.uint32(0) - (t & jnp.uint32(1))
    return jnp.stack([s[w] ^ (final_cw[:, w][:, None] & tmask) for w in range(4)], axis=-1)
