"""Bit-sliced database and the masked XOR as a GF(2) matrix product (plain JAX; the GPU kernel is pir/cuda).

For key k, mask bit j (0..127) and repeat r (0..255), answer bit b = r*128 + j is the parity over
pages i of mask_k(i)[j] AND page_i[b] (page bit b meets mask bit b % 128). Stored bit-sliced (for
each bit position, a bit vector over pages), that is 128 GF(2) products (256 x N) @ (N x K) over
the page axis: popcount(AND) on a binary tensor core, whose low bit is the answer.

Layout (``BitslicedDB.words``, (P_pad, 1024) uint32, P_pad = num_pages rounded up to 256, the same
size as the database): pages come in chunks of CHUNK_PAGES = 256 (the k-depth of one
``mma.m16n8k256.b1``), each chunk is 1 MiB = 256 rows, so rows [256c, 256c + 256) are chunk c.
Inside a chunk the words are ordered [j (128), rt (16), g (8), tig (4), reg (4)]: the A fragment of
lane g*4 + tig for bit j and rows r = rt*16 + g (+8) of the m16n8k256 product, 16 contiguous bytes
per lane. Register reg = qh*2 + hi holds bit position b = (rt*16 + hi*8 + g)*128 + j for the 32
pages 32*(qh*4 + tig) + [0, 32) of the chunk (bit i = page 32*q + i).

``masked_xor_bitsliced(db, page_offset, masks)`` is the engines' ``masked_xor_at`` contract
(docs/engine-interface.md) on this layout; on a GPU it calls the kernel (pir/cuda/bmma.py),
elsewhere the jnp formulation below (what CPU tests check bit for bit against the numpy oracle).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import backend
from .cuda.bmma import CHUNK_PAGES, chunk_span, masked_xor_bmma
from .pages import PAGE_WORDS, xor_reduce

__all__ = [
    "CHUNK_PAGES",
    "GROUP_PAGES",
    "BitslicedDB",
    "bitslice_pages",
    "bitslice_host",
    "bitslice_rows",
    "build_scratch_bytes",
    "padded_pages",
    "masked_xor_bitsliced",
    "masked_xor_bitsliced_jnp",
    "unslice_pages",
    "chunk_span",
]

GROUP_PAGES = 1 << 18  # pages per step of a streamed layout build (1 GiB raw): bounds its scratch
_IMPLS = ("auto", "jnp", "bmma")
# (shift, mask of the bit columns kept by the lower row) of the 5 stages of a 32x32 bit transpose
_STAGES = ((16, 0x0000FFFF), (8, 0x00FF00FF), (4, 0x0F0F0F0F), (2, 0x33333333), (1, 0x55555555))


@functools.partial(jax.tree_util.register_dataclass, data_fields=["words"], meta_fields=["num_pages"])
@dataclasses.dataclass(frozen=True)
class BitslicedDB:
    """The bit-sliced database: ``words`` (P_pad, 1024) uint32 in the layout of the module
    docstring, over ``num_pages`` real pages (rows past them are zero pages). A JAX pytree whose
    only leaf is ``words``, so it passes through jit; ``words`` alone is what a scan hands the op."""

    words: jax.Array
    num_pages: int


def transpose32(x: jax.Array) -> jax.Array:
    """32x32 bit transpose along the last axis (size 32, uint32): bit i of out[..., s] = bit s of
    x[..., i]. Five butterfly stages (the same as the CUDA kernel's shuffles)."""
    lead = x.shape[:-1]
    for s, m in _STAGES:
        x = x.reshape(*lead, 32 // (2 * s), 2, s)
        lo, hi = x[..., 0, :], x[..., 1, :]
        m32, nm = jnp.uint32(m), jnp.uint32(~m & 0xFFFFFFFF)
        new_lo = (lo & m32) | ((hi & m32) << s)
        new_hi = (hi & nm) | ((lo & nm) >> s)
        x = jnp.stack([new_lo, new_hi], axis=-2).reshape(*lead, 32)
    return x


def _slice_chunks(x: jax.Array) -> jax.Array:
    """(C, 256, 1024) page words -> (C, 256, 1024) bit-sliced words in the fragment layout."""
    c = x.shape[0]
    x = x.reshape(c, 8, 32, PAGE_WORDS).transpose(0, 1, 3, 2)  # [c, q, w, i]
    s = transpose32(x)  # [c, q, w, s]: bit i = bit s of word w of page 32q + i; b = 32w + s
    s = s.reshape(c, 2, 4, 16, 2, 8, 128)  # [c, qh, tig, rt, hi, g, j]  (q = 4qh + tig, b = 128r + j)
    s = s.transpose(0, 6, 3, 5, 2, 1, 4)  # [c, j, rt, g, tig, qh, hi]
    return s.reshape(c, CHUNK_PAGES, PAGE_WORDS)


def _unslice_chunks(s: jax.Array) -> jax.Array:
    """Inverse of _slice_chunks."""
    c = s.shape[0]
    s = s.reshape(c, 128, 16, 8, 4, 2, 2).transpose(0, 5, 4, 2, 6, 3, 1)  # [c, qh, tig, rt, hi, g, j]
    s = s.reshape(c, 8, PAGE_WORDS, 32)  # [c, q, w, s]
    return transpose32(s).transpose(0, 1, 3, 2).reshape(c, CHUNK_PAGES, PAGE_WORDS)


@functools.partial(jax.jit, static_argnames=("num_pages", "chunks_per_step"))
def _bitslice(pages_words: jax.Array, num_pages: int, chunks_per_step: int) -> jax.Array:
    chunks = -(-num_pages // CHUNK_PAGES)
    x = pages_words[:num_pages]
    pad = chunks * CHUNK_PAGES - num_pages
    if pad:
        x = jnp.concatenate([x, jnp.zeros((pad, PAGE_WORDS), jnp.uint32)])
    x = x.reshape(chunks, CHUNK_PAGES, PAGE_WORDS)
    # A few MiB of chunks per step bounds the temporaries at any database size.
    out = lax.map(lambda ch: _slice_chunks(ch[None])[0], x, batch_size=min(chunks_per_step, chunks))
    return out.reshape(chunks * CHUNK_PAGES, PAGE_WORDS)


def bitslice_pages(pages_words: jax.Array, num_pages: int, chunks_per_step: int = 64) -> BitslicedDB:
    """The one-time layout transform: pages_words (P >= num_pages, 1024) uint32 -> BitslicedDB of
    ceil(num_pages / 256) * 256 rows (the database's size, rounded up to a chunk). Time it apart
    (block_until_ready on ``.words``), like a compile."""
    if pages_words.ndim != 2 or pages_words.shape[1] != PAGE_WORDS or pages_words.dtype != jnp.uint32:
        raise ValueError(f"pages_words must be (P, {PAGE_WORDS}) uint32, got {pages_words.shape} "
                         f"{pages_words.dtype}")
    if not 1 <= num_pages <= pages_words.shape[0]:
        raise ValueError(f"{num_pages=} must be in [1, {pages_words.shape[0]}] (rows of pages_words)")
    if chunks_per_step < 1:
        raise ValueError(f"{chunks_per_step=} must be >= 1")
    return BitslicedDB(_bitslice(pages_words, num_pages, chunks_per_step), int(num_pages))


@functools.partial(jax.jit, donate_argnums=0)
def _put_rows(buf: jax.Array, rows: jax.Array, start: jax.Array) -> jax.Array:
    return lax.dynamic_update_slice_in_dim(buf, rows, start, axis=0)


def bitslice_rows(read: Callable[[int, int], jax.Array | np.ndarray], num_pages: int, group_pages: int | None = None,
                  chunks_per_step: int = 64) -> BitslicedDB:
    """The layout transform built group by group: ``read(lo, hi)`` gives raw rows [lo, hi) as a
    (hi - lo, 1024) uint32 array (numpy or device; each group is generated, streamed or sliced by the
    caller), each group is bit-sliced on the default device and written into one preallocated
    buffer. The raw database is never resident: peak = the bit-sliced buffer + one raw group + its
    sliced copy (``build_scratch_bytes``). Equal to ``bitslice_pages`` of the whole matrix.
    group_pages: pages per group (rounded down to whole chunks of 256), default GROUP_PAGES."""
    group_pages = GROUP_PAGES if group_pages is None else group_pages
    if num_pages < 1:
        raise ValueError(f"{num_pages=} must be >= 1")
    if group_pages < CHUNK_PAGES:
        raise ValueError(f"{group_pages=} must be >= {CHUNK_PAGES}")
    group = group_pages // CHUNK_PAGES * CHUNK_PAGES  # groups start on chunk boundaries
    buf = jnp.zeros((padded_pages(num_pages), PAGE_WORDS), jnp.uint32)
    for lo in range(0, num_pages, group):
        hi = min(num_pages, lo + group)
        words = read(lo, hi)
        if tuple(words.shape) != (hi - lo, PAGE_WORDS) or words.dtype != np.uint32:
            raise ValueError(f"read({lo}, {hi}) gave {tuple(words.shape)} {words.dtype}, expected "
                             f"({hi - lo}, {PAGE_WORDS}) uint32")
        sliced = _bitslice(jax.device_put(words), hi - lo, chunks_per_step)
        buf = _put_rows(buf, sliced, jnp.int32(lo))
    return BitslicedDB(buf, int(num_pages))


def bitslice_host(pages: np.ndarray, group_pages: int = 1 << 20, chunks_per_step: int = 64) -> BitslicedDB:
    """The layout transform of a host page matrix, (N, 4096) uint8 or (N, 1024) uint32 (a memmap
    works), streamed to the default device ``group_pages`` at a time (``bitslice_rows``): the device
    never holds the raw database, so a 64 GiB database fits an 80 GB card."""
    if not isinstance(pages, np.ndarray) or pages.ndim != 2 or (pages.dtype, pages.shape[1]) not in (
            (np.dtype(np.uint8), 4 * PAGE_WORDS), (np.dtype(np.uint32), PAGE_WORDS)) or pages.shape[0] < 1:
        raise ValueError(f"pages must be a numpy (N >= 1, 4096) uint8 or (N, 1024) uint32 array, got "
                         f"{getattr(pages, 'shape', None)} {getattr(pages, 'dtype', None)}")

    def read(lo: int, hi: int) -> np.ndarray:
        part = np.ascontiguousarray(pages[lo:hi])
        return part.view("<u4").reshape(hi - lo, PAGE_WORDS).astype(np.uint32, copy=False)

    return bitslice_rows(read, pages.shape[0], group_pages, chunks_per_step)


def padded_pages(num_pages: int) -> int:
    """Rows of the bit-sliced database of ``num_pages`` pages: rounded up to whole chunks of 256."""
    return -(-num_pages // CHUNK_PAGES) * CHUNK_PAGES


def build_scratch_bytes(num_pages: int, group_pages: int | None = None) -> int:
    """Device bytes ``bitslice_rows`` needs beside its output: one raw group and its sliced copy."""
    group_pages = GROUP_PAGES if group_pages is None else group_pages
    return 2 * min(group_pages // CHUNK_PAGES * CHUNK_PAGES, padded_pages(num_pages)) * PAGE_WORDS * 4


def unslice_pages(db: BitslicedDB) -> jax.Array:
    """The inverse transform, (num_pages, 1024) uint32 (tests; proves the layout loses nothing)."""
    c = db.words.shape[0] // CHUNK_PAGES
    out = _unslice_chunks(db.words.reshape(c, CHUNK_PAGES, PAGE_WORDS))
    return out.reshape(-1, PAGE_WORDS)[: db.num_pages]


def _on(pred: jax.Array) -> jax.Array:
    """All-ones uint32 where pred, else 0 (branch-free select, as in xla_ops)."""
    return jnp.uint32(0) - pred.astype(jnp.uint32)


def masked_xor_bitsliced_jnp(words: jax.Array, page_offset: jax.Array | int, masks: jax.Array) -> jax.Array:
    """The GF(2) product in jnp: words (P_pad, 1024) bit-sliced, masks (K, T, 4) of the T pages
    starting at ``page_offset`` -> (K, 1024) u32, out[k, w] = XOR_t page_{offset+t}[w] & masks[k, t, w % 4].

    Reads the whole chunks the tile touches; pages of them outside the tile get zero masks."""
    k, t, _ = masks.shape
    db_chunks = words.shape[0] // CHUNK_PAGES
    nch = chunk_span(t, db_chunks)
    off = jnp.asarray(page_offset, jnp.int32)
    start = jnp.clip(off // CHUNK_PAGES, 0, db_chunks - nch)  # first chunk read (clamped in bounds)
    a = lax.dynamic_slice_in_dim(words, start * CHUNK_PAGES, nch * CHUNK_PAGES, axis=0)
    a = a.reshape(nch, 128, 16, 8, 4, 2, 2).transpose(0, 1, 2, 6, 3, 5, 4)  # [c, j, rt, hi, g, qh, tig]
    a = a.reshape(nch, 128, 256, 8)  # [c, j, r, q]
    # Masks of every page of the chunks read, zero outside the tile.
    idx = start * CHUNK_PAGES + jnp.arange(nch * CHUNK_PAGES, dtype=jnp.int32) - off
    keep = _on((idx >= 0) & (idx < t))
    mp = jnp.take(masks, jnp.clip(idx, 0, t - 1), axis=1) & keep[None, :, None]  # (K, nch*256, 4)
    mp = mp.reshape(k, nch, 8, 32, 4).transpose(0, 1, 2, 4, 3)  # [k, c, q, w, i]
    m = transpose32(mp).reshape(k, nch, 8, 128).transpose(0, 1, 3, 2)  # [k, c, j, q]: pages of bit j
    x = a[None] & m[:, :, :, None, :]  # [k, c, j, r, q]
    x = xor_reduce(xor_reduce(x, 4), 1)  # [k, j, r]
    par = lax.population_count(x) & jnp.uint32(1)
    bits = par.transpose(0, 2, 1).reshape(k, 256, 4, 32)  # [k, r, j // 32, j % 32]
    word = jnp.bitwise_or.reduce(bits << jnp.arange(32, dtype=jnp.uint32), axis=-1)
    return word.reshape(k, PAGE_WORDS)


def _words(db: BitslicedDB | jax.Array) -> jax.Array:
    words = db.words if isinstance(db, BitslicedDB) else db
    if (words.ndim != 2 or words.shape[1] != PAGE_WORDS or words.shape[0] % CHUNK_PAGES
            or words.dtype != jnp.uint32):
        raise ValueError(f"a bit-sliced database is (256*C, {PAGE_WORDS}) uint32, got {words.shape} "
                         f"{words.dtype}: build it with bitslice_pages")
    return words


def masked_xor_bitsliced(
    db: BitslicedDB | jax.Array, page_offset: jax.Array | int, masks: jax.Array, impl: str = "auto"
) -> jax.Array:
    """``masked_xor_at`` on a bit-sliced database: db (BitslicedDB or its ``words``), the tile's
    first page (int32 scalar, any alignment), masks (K, T, 4) u32 -> (K, 1024) u32.

    impl: "bmma" the CUDA binary-MMA kernel (GPU, built on first use), "jnp" the portable
    formulation, "auto" the kernel on a GPU backend, else jnp."""
    if impl not in _IMPLS:
        raise ValueError(f"{impl=} must be one of {', '.join(_IMPLS)}")
    words = _words(db)
    if masks.ndim != 3 or masks.shape[2] != 4 or masks.dtype != jnp.uint32 or masks.shape[1] < 1:
        raise ValueError(f"masks must be (K, T >= 1, 4) uint32, got {masks.shape} {masks.dtype}")
    if impl == "bmma" or (impl == "auto" and backend.on_gpu()):
        return masked_xor_bmma(words, page_offset, masks)
    return masked_xor_bitsliced_jnp(words, page_offset, masks)
