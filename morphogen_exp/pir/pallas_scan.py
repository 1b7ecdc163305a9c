"""Pallas (Triton) kernel for the multi-key masked XOR of a page tile.

``masked_xor_pallas(pages (T, 1024) u32, masks (K, T, 4) u32) -> (K, 1024) u32`` with
``out[k, w] = XOR over t of pages[t, w] & masks[k, t, w % 4]`` (docs/engine-interface.md).

Design: a page is viewed as 256 vectors of 4 words (word ``w = 4 * v + j`` is ANDed with mask
word ``j``).  The grid is (key blocks, vector blocks, page splits), key blocks first, so that
the CUDA scheduler (grid x fastest) runs the programs that share a page tile side by side and
the page tile is read from HBM once for all K keys (the other key blocks hit L2).  Each program
loops over its pages with ``lax.fori_loop`` (``unroll`` pages per step, loads first), keeps
its accumulators in registers (one ``(keys, vecs, 4)`` array, ``layout="bcast"``, or one
``(vecs, 4)`` array per key, ``"keyloop"``) and XORs elementwise (Pallas has no XOR
reduction).  The per-split partial results are XOR-reduced in jnp.  Pages beyond the last
full split (``T % pages``) are handled by the jnp reference, fused by XLA.

The page matrix is passed as one whole-array block: the kernel indexes it at
``page_offset + split * pages``, so a scan can hand the full database plus a tile offset and no
page is ever copied (``lax.dynamic_slice`` of the database feeding a custom call would copy it).

Import works on CPU: Triton lowering happens only when a non-interpret call is compiled.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from .pages import PAGE_WORDS, xor_reduce

__all__ = ["ScanBlock", "masked_xor_pallas", "masked_xor_reference"]

PAGE_VECS = PAGE_WORDS // 4
_LAYOUTS = ("bcast", "keyloop")
_COMBINES = ("partials", "atomic")
_TARGET_PROGRAMS = 4 * 132  # about 4 programs per SM of a 132-SM card


def _is_pow2(x: int) -> bool:
    return x > 0 and (x & (x - 1)) == 0


def _pow2_floor(x: int) -> int:
    return 1 << (max(int(x), 1).bit_length() - 1)


def _pow2_ceil(x: int) -> int:
    x = max(int(x), 1)
    return 1 << (x - 1).bit_length()


def triton_compiler_params(num_warps: int, num_stages: int) -> Any:
    """Triton compiler params across JAX versions (CompilerParams / TritonCompilerParams / dict)."""
    plgpu: Any
    try:
        from jax.experimental.pallas import triton as plgpu  # noqa: PLC0415
    except Exception:  # pragma: no cover - very old / very new jax
        plgpu = None
    for name in ("CompilerParams", "TritonCompilerParams"):
        cls = getattr(plgpu, name, None) if plgpu is not None else None
        if cls is not None:
            return cls(num_warps=num_warps, num_stages=num_stages)
    return dict(triton=dict(num_warps=num_warps, num_stages=num_stages))  # pragma: no cover


def squeezed_dim() -> Any:
    """The block-shape marker for a squeezed (size-1, dropped) dimension across JAX versions."""
    return getattr(pl, "squeezed", None)


# --------------------------------------------------------------------------------------------
# Block sizes
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ScanBlock:
    """Static block sizes of the masked-XOR kernel (all powers of two except ``pages``).

    keys:   keys per program (accumulator rows); K is padded with zero masks to a multiple.
    vecs:   16-byte page vectors per program (<= 256; 256 = the whole 4 KiB page).
    pages:  pages per program (one page split); a multiple of ``unroll``.  T / pages partial
            results of (K, 1024) words are written and XOR-reduced in jnp.
    unroll: pages loaded and accumulated per loop step (their loads are issued first).
    num_warps, num_stages: Triton launch parameters.
    layout: "bcast": one (keys, vecs, 4) accumulator, page (1, vecs, 4) & masks (keys, 1, 4);
            "keyloop": ``keys`` separate (vecs, 4) accumulators (a static loop over keys).
    combine: "partials": each split writes its (keys, vecs, 4) result, XOR-reduced in jnp;
             "atomic": each split XORs its result into the output with Triton atomics (no
             partials in HBM; GPU only: interpret mode has no atomic XOR).
    """

    # Defaults: the fastest block of the search at K = 96 (docs/performance.md, "Kernel defaults").
    keys: int = 8
    vecs: int = 256
    pages: int = 2048
    unroll: int = 4
    num_warps: int = 2
    num_stages: int = 1
    layout: str = "keyloop"
    combine: str = "partials"

    def __post_init__(self) -> None:
        for name in ("keys", "vecs", "unroll"):
            v = getattr(self, name)
            if not _is_pow2(v):
                raise ValueError(f"ScanBlock.{name}={v} must be a power of two")
        if self.vecs > PAGE_VECS:
            raise ValueError(f"ScanBlock.vecs={self.vecs} must be <= {PAGE_VECS}")
        if self.pages < self.unroll or self.pages % self.unroll:
            raise ValueError(
                f"ScanBlock.pages={self.pages} must be a positive multiple of {self.unroll=}"
            )
        if self.num_warps not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"ScanBlock.num_warps={self.num_warps} must be a power of two <= 32")
        if self.num_stages < 1:
            raise ValueError(f"ScanBlock.num_stages={self.num_stages} must be >= 1")
        if self.layout not in _LAYOUTS:
            raise ValueError(f"ScanBlock.layout={self.layout!r} must be one of {_LAYOUTS}")
        if self.combine not in _COMBINES:
            raise ValueError(f"ScanBlock.combine={self.combine!r} must be one of {_COMBINES}")

    @classmethod
    def get_default(cls, num_keys: int | None = None, num_pages: int | None = None) -> ScanBlock:
        """Default block for ``num_keys`` keys over a tile of ``num_pages`` pages (None: unknown).

        K <= 4 is memory-bound: whole pages per program, unroll 4 and one warp read at the device's
        read rate.  Up to 31 keys: blocks of 4 or 8 keys (K = 12: 3 blocks of 4), unroll 8, two
        warps; more: 8 keys x the whole page, per-key accumulators.  Pages per program are then
        chosen so that about 4 programs per SM run.  The block searches behind these choices are
        in docs/performance.md ("Kernel defaults").
        """
        if num_keys is not None and num_keys <= 4:
            base = cls(keys=_pow2_ceil(num_keys), vecs=256, pages=4096, unroll=4, num_warps=1,
                       layout="bcast")
        elif num_keys is not None and num_keys < 32:
            # K = 12: 3 blocks of 4 rather than K padded to 16; K = 6: padded to 8
            div = num_keys & -num_keys
            kb = min(8, div) if div >= 4 else min(8, _pow2_ceil(num_keys))
            base = cls(keys=kb, vecs=256, pages=1024, unroll=8, num_warps=2, layout="bcast")
        elif num_keys is not None and (num_keys & -num_keys) < cls.keys:
            div = num_keys & -num_keys
            base = cls(keys=div if div >= 4 else min(cls.keys, _pow2_ceil(num_keys)))
        else:
            base = cls()
        if num_pages is None:
            return base
        nk = -(-(num_keys or base.keys) // base.keys)
        nw = PAGE_VECS // base.vecs
        splits = max(1, -(-_TARGET_PROGRAMS // (nk * nw)))
        pages = _pow2_floor(max(num_pages // splits, base.unroll))
        # Each split writes Kp x 4 KiB of partials per `pages` x 4 KiB read: keep pages >= 8 Kp.
        floor = max(base.unroll, _pow2_ceil(8 * nk * base.keys))
        pages = max(floor, min(base.pages, pages))
        return dataclasses.replace(base, pages=min(pages, max(base.unroll,
                                                               _pow2_floor(num_pages))))

    def replace(self, **kw: Any) -> ScanBlock:
        return dataclasses.replace(self, **kw)


# --------------------------------------------------------------------------------------------
# Kernel
# --------------------------------------------------------------------------------------------
def _masked_xor_kernel(off_ref, pages_ref, masks_ref, *out_refs, pages: int, unroll: int,
                       vecs: int, layout: str, combine: str):
    """One program: key block kb, vector block vb, page split s.

    off_ref:   (1,) int32, the first page of the tile in ``pages_ref``.
    pages_ref: (P, 256, 4) u32, the whole page matrix (unblocked).
    masks_ref: (KB, pages, 4) u32 block of the masks of this key block and split.
    out_refs:  "partials": (KB, vecs, 4) block of this split's partial result;
               "atomic": (zero-initialised input alias, (KB, vecs, 4) output block).
    """
    kb_size = masks_ref.shape[0]
    vb = pl.program_id(1)
    s = pl.program_id(2)
    first = off_ref[0] + s * pages
    v0 = pl.multiple_of(vb * vecs, vecs)
    out_ref = out_refs[-1]

    def load_step(base):
        tiles = [pages_ref[pl.ds(first + base + u, 1), pl.ds(v0, vecs), :] for u in range(unroll)]
        return tiles

    if layout == "bcast":
        def step(i, acc):
            base = i * unroll
            tiles = load_step(base)
            ms = [masks_ref[:, pl.ds(base + u, 1), :] for u in range(unroll)]
            for u in range(unroll):
                acc = acc ^ (tiles[u] & ms[u])  # (1, V, 4) & (KB, 1, 4) -> (KB, V, 4)
            return acc

        acc = lax.fori_loop(0, pages // unroll, step, jnp.zeros((kb_size, vecs, 4), jnp.uint32))
    else:  # keyloop
        def step(i, accs):
            base = i * unroll
            tiles = load_step(base)
            accs = list(accs)
            for k in range(kb_size):
                for u in range(unroll):
                    m = masks_ref[pl.ds(k, 1), pl.ds(base + u, 1), :]  # (1, 1, 4)
                    accs[k] = accs[k] ^ (tiles[u] & m)
            return tuple(accs)

        zero = jnp.zeros((1, vecs, 4), jnp.uint32)
        accs = lax.fori_loop(0, pages // unroll, step, tuple(zero for _ in range(kb_size)))
        for k in range(kb_size):
            _emit(out_ref, (pl.ds(k, 1), slice(None), slice(None)), accs[k], combine)
        return
    _emit(out_ref, (slice(None), slice(None), slice(None)), acc, combine)


def _emit(ref, idx, val, combine: str) -> None:
    if combine == "atomic":
        _atomic_xor(ref, idx, val)
    else:
        ref[idx] = val


def _atomic_xor(ref, idx, val):
    from jax.experimental.pallas import triton as plgpu  # noqa: PLC0415

    plgpu.atomic_xor(ref, idx, val)


@functools.partial(jax.jit, static_argnames=("block", "interpret"))
def _masked_xor_call(pages3, masks, offset, *, block: ScanBlock, interpret: bool):
    """pages3 (P, 256, 4), masks (Kp, S * block.pages, 4) with Kp % block.keys == 0, offset (1,)
    int32 -> "partials": partial XORs (S, Kp, 256, 4); "atomic": the XOR (Kp, 256, 4)."""
    kp, tm, _ = masks.shape
    kb, vv, pp = block.keys, block.vecs, block.pages
    splits = tm // pp
    grid = (kp // kb, PAGE_VECS // vv, splits)
    sq = squeezed_dim()
    kernel = functools.partial(_masked_xor_kernel, pages=pp, unroll=block.unroll, vecs=vv,
                               layout=block.layout, combine=block.combine)
    in_specs = [
        pl.BlockSpec(block_shape=offset.shape, index_map=lambda k, v, s: (0,)),
        pl.BlockSpec(block_shape=pages3.shape, index_map=lambda k, v, s: (0, 0, 0)),
        pl.BlockSpec(block_shape=(kb, pp, 4), index_map=lambda k, v, s: (k, s, 0)),
    ]
    args = [offset, pages3, masks]
    aliases = {}
    if block.combine == "atomic":
        out_shape = jax.ShapeDtypeStruct((kp, PAGE_VECS, 4), jnp.uint32)
        out_spec = pl.BlockSpec(block_shape=(kb, vv, 4), index_map=lambda k, v, s: (k, v, 0))
        in_specs.append(out_spec)
        args.append(jnp.zeros((kp, PAGE_VECS, 4), jnp.uint32))
        aliases = {3: 0}
    else:
        out_shape = jax.ShapeDtypeStruct((splits, kp, PAGE_VECS, 4), jnp.uint32)
        out_spec = pl.BlockSpec(block_shape=(sq, kb, vv, 4),
                                index_map=lambda k, v, s: (s, k, v, 0))
    return pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=grid,
        in_specs=in_specs,
        out_specs=out_spec,
        input_output_aliases=aliases,
        compiler_params=triton_compiler_params(block.num_warps, block.num_stages),
        interpret=interpret,
        name=(f"masked_xor_k{kb}_v{vv}_p{pp}_u{block.unroll}_w{block.num_warps}"
              f"_{block.layout}_{block.combine}"),
    )(*args)


def masked_xor_pallas(
    pages: jax.Array,
    masks: jax.Array,
    *,
    block: ScanBlock | None = None,
    interpret: bool = False,
    page_offset: jax.Array | int | None = None,
) -> jax.Array:
    """pages (P, 1024) u32, masks (K, T, 4) u32 -> (K, 1024) u32.

    out[k, w] = XOR over t < T of pages[page_offset + t, w] & masks[k, t, w % 4].
    With ``page_offset`` None (the engine-interface signature) the tile is pages[0:T] and
    P must be >= T (normally P == T).  ``page_offset`` (int or traced int32 scalar) lets a scan
    pass the whole database without copying a tile; it is not bounds-checked when traced
    (the caller guarantees page_offset + T <= P).
    """
    if pages.ndim != 2 or pages.shape[1] != PAGE_WORDS:
        raise ValueError(f"pages must be (T, {PAGE_WORDS}), got {pages.shape=}")
    if masks.ndim != 3 or masks.shape[2] != 4:
        raise ValueError(f"masks must be (K, T, 4), got {masks.shape=}")
    if pages.dtype != jnp.uint32 or masks.dtype != jnp.uint32:
        raise TypeError(f"pages and masks must be uint32, got {pages.dtype=} {masks.dtype=}")
    k, t, _ = masks.shape
    n_rows = pages.shape[0]
    if page_offset is None:
        page_offset = 0
        if n_rows < t:
            raise ValueError(f"pages has {n_rows=} rows, fewer than the masks' {t=}")
    elif isinstance(page_offset, int) and page_offset + t > n_rows:
        raise ValueError(f"{page_offset=} + {t=} exceeds the {n_rows=} page rows")
    if block is None:
        block = ScanBlock.get_default(k, t)
    if interpret and block.combine == "atomic":
        raise NotImplementedError(
            f"{block.combine=} needs the GPU: Pallas interpret mode has no atomic XOR")
    if k == 0:
        return jnp.zeros((0, PAGE_WORDS), jnp.uint32)

    # Keys per program: never more than K rounded up to a power of two.
    kb = min(block.keys, _pow2_ceil(k))
    pp = block.pages
    if t < pp:  # small tile: one split of the largest multiple of unroll that fits
        pp = (t // block.unroll) * block.unroll
    blk = dataclasses.replace(block, keys=kb, pages=max(pp, block.unroll))
    splits = t // blk.pages if pp > 0 else 0
    t_main = splits * blk.pages

    offset = jnp.asarray(page_offset, jnp.int32)
    out = jnp.zeros((k, PAGE_WORDS), jnp.uint32)
    if t_main > 0:
        kp = -(-k // kb) * kb
        m_main = masks if t_main == t else masks[:, :t_main]
        if kp != k:
            m_main = jnp.pad(m_main, ((0, kp - k), (0, 0), (0, 0)))
        pages3 = pages.reshape(n_rows, PAGE_VECS, 4)
        res = _masked_xor_call(pages3, m_main, offset.reshape(1), block=blk,
                               interpret=interpret)
        if blk.combine == "partials":
            res = xor_reduce(res, 0)
        out = res[:k].reshape(k, PAGE_WORDS)
    if t_main < t:  # remainder pages (< blk.pages): plain jnp, fused by XLA
        rem = t - t_main
        tail = lax.dynamic_slice_in_dim(pages, offset + t_main, rem, axis=0)
        out = out ^ masked_xor_reference(tail, masks[:, t_main:])
    return out


# --------------------------------------------------------------------------------------------
# Reference (plain jnp)
# --------------------------------------------------------------------------------------------
def masked_xor_reference(pages: jax.Array, masks: jax.Array) -> jax.Array:
    """pages (T, 1024) u32, masks (K, T, 4) u32 -> (K, 1024) u32, as one broadcast XOR-reduce."""
    t = masks.shape[1]
    p = pages[:t].reshape(1, t, PAGE_VECS, 4)
    m = masks.reshape(masks.shape[0], t, 1, 4)
    return xor_reduce(p & m, 1).reshape(masks.shape[0], PAGE_WORDS)
