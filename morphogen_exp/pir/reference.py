"""Numpy reference for the ChaCha8 DPF page-PIR server: the parity oracle.

Plain numpy (uint32 arithmetic, vectorized over nodes / indices / pages); it imports nothing
from JAX, so it can check every accelerated engine. The algorithm follows
tests/fixtures/README.md (the original morphogenesis `chacha_prg.rs` / `dpf.rs`):

- PRG: ChaCha8 (prg.py, shared with key generation).
- GGM tree, path bits MSB first, corrections applied when the parent's t is 1, and the leaf
  output is seed XOR (t * final_cw), 16 bytes (4 little-endian uint32 words).
- Server answer for one key: XOR over pages i < N of (page_i AND mask_i), the 16-byte mask
  repeated across the 4096-byte page.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .keys import Key
from .pages import PAGE_BYTES
from .prg import OUTPUT_BYTES, prg_rows, seed_bytes_to_words, words_to_u8

# Pages per chunk in answer_numpy: 2^14 pages = 64 MiB of page data, bounded temporaries.
DEFAULT_CHUNK_LOG2 = 14


# --------------------------------------------------------------------------- DPF evaluation


def _key_words(key: Key) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(seed_cw (n, 4) u32, t_cw (n, 2) u32 [left, right], final_cw (4,) u32, root (4,) u32)."""
    n = key.domain_bits
    scw = np.frombuffer(b"".join(key.seed_cw), dtype="<u4").astype(np.uint32).reshape(n, 4)
    tcw = np.stack(
        [np.asarray(key.t_cw_left, dtype=np.uint32), np.asarray(key.t_cw_right, dtype=np.uint32)],
        axis=1,
    )
    return scw, tcw, seed_bytes_to_words(key.final_cw), seed_bytes_to_words(key.root_seed)


def _descend(key: Key, nodes: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeds and t bits of tree nodes at `depth` (node = the top `depth` path bits of an index).

    nodes: (M,) uint64. Returns seeds (4 rows of (M,) u32) stacked as (M, 4) and t (M,) u32.
    Every lane walks its own path, one vectorized PRG call per level.
    """
    scw, tcw, _, root = _key_words(key)
    m = nodes.shape[0]
    seeds = [np.full(m, root[i], dtype=np.uint32) for i in range(4)]
    t = np.full(m, key.root_t, dtype=np.uint32)
    for level in range(depth):
        bit = ((nodes >> np.uint64(depth - 1 - level)) & np.uint64(1)).astype(bool)
        left, right, tl, tr = prg_rows(seeds)
        child = [np.where(bit, right[i], left[i]) for i in range(4)]
        child_t = np.where(bit, tr, tl)
        # Corrections apply only where the parent's t is 1: multiply by t (0 or 1) as a mask.
        on = np.uint32(0) - t  # 0x00000000 or 0xFFFFFFFF
        seeds = [child[i] ^ (on & scw[level, i]) for i in range(4)]
        t = child_t ^ (t & np.where(bit, tcw[level, 1], tcw[level, 0]))
    return np.stack(seeds, axis=1), t


def _expand_subtrees(
    key: Key, seeds: np.ndarray, t: np.ndarray, depth: int, levels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Expand nodes at `depth` by `levels` full levels.

    seeds (R, 4), t (R,) -> seeds (R * 2^levels, 4), t (R * 2^levels,).

    Children are interleaved (child = 2*parent + bit, left first), so leaves come out in
    index order.
    """
    scw, tcw, _, _ = _key_words(key)
    rows = [np.ascontiguousarray(seeds[:, i]) for i in range(4)]
    for level in range(depth, depth + levels):
        left, right, tl, tr = prg_rows(rows)
        on = np.uint32(0) - t
        new_rows = []
        for i in range(4):
            c = on & scw[level, i]
            pair = np.empty((t.shape[0], 2), dtype=np.uint32)
            pair[:, 0] = left[i] ^ c
            pair[:, 1] = right[i] ^ c
            new_rows.append(pair.reshape(-1))
        tpair = np.empty((t.shape[0], 2), dtype=np.uint32)
        tpair[:, 0] = tl ^ (t & tcw[level, 0])
        tpair[:, 1] = tr ^ (t & tcw[level, 1])
        rows, t = new_rows, tpair.reshape(-1)
    return np.stack(rows, axis=1), t


def _finalize(key: Key, seeds: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Leaf seeds (M,4) u32, t (M,) -> DPF outputs (M, 16) uint8 (XOR final_cw where t == 1)."""
    fcw = seed_bytes_to_words(key.final_cw)
    on = (np.uint32(0) - t)[:, None]
    return words_to_u8(seeds ^ (on & fcw[None, :]))


def eval_points(key: Key, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """DPF outputs of `key` at `indices` -> (len(indices), 16) uint8, one row per index."""
    idx = np.asarray(indices)
    if idx.ndim != 1:
        raise ValueError(f"indices must be a 1-D sequence of ints, got shape {idx.shape}")
    if idx.size == 0:
        return np.zeros((0, OUTPUT_BYTES), dtype=np.uint8)
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"indices must be integers, got dtype {idx.dtype}")
    n = key.domain_bits
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= (1 << n):
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"index {bad} is outside the key's domain [0, 2^{n}) = [0, {1 << n}); "
            "use indices below 2**domain_bits"
        )
    seeds, t = _descend(key, idx.astype(np.uint64), n)
    return _finalize(key, seeds, t)


def full_eval(key: Key) -> np.ndarray:
    """All 2^n DPF outputs of `key` in index order -> (2^n, 16) uint8 (memory: 2^n * ~40 bytes)."""
    seeds, t = _descend(key, np.zeros(1, dtype=np.uint64), 0)
    seeds, t = _expand_subtrees(key, seeds, t, 0, key.domain_bits)
    return _finalize(key, seeds, t)


def eval_range(key: Key, start: int, stop: int, chunk_log2: int = DEFAULT_CHUNK_LOG2) -> np.ndarray:
    """Outputs for indices [start, stop) where [start, stop) lies inside one aligned block of
    2^c indices (c = min(chunk_log2, n)): descend to that block's subtree root once, then expand
    the subtree level by level (2 PRG blocks per node instead of n levels per index)."""
    n = key.domain_bits
    c = min(chunk_log2, n)
    block = start >> c
    if not (0 <= start < stop <= (1 << n)) or (stop - 1) >> c != block:
        raise ValueError(f"[{start}, {stop}) is not inside one aligned block of 2^{c} indices")
    seeds, t = _descend(key, np.array([block], dtype=np.uint64), n - c)
    seeds, t = _expand_subtrees(key, seeds, t, n - c, c)
    off = start - (block << c)
    return _finalize(key, seeds[off : off + (stop - start)], t[off : off + (stop - start)])


def eval_prefix(key: Key, count: int, block_log2: int = 18, workers: int | None = None) -> np.ndarray:
    """Outputs for indices [0, count) -> (count, 16) uint8, the same values as full_eval(key)[:count]
    without the leaves past ``count``: aligned blocks of 2^block_log2 indices on a thread pool (numpy's
    ufuncs release the GIL on arrays this size, so the blocks run on all cores)."""
    n = key.domain_bits
    if not 0 < count <= (1 << n):
        raise ValueError(f"count must be in [1, 2^{n}] = [1, {1 << n}], got {count}")
    c = min(block_log2, n)
    out = np.empty((count, OUTPUT_BYTES), dtype=np.uint8)

    def block(start: int) -> None:
        stop = min(count, start + (1 << c))
        out[start:stop] = eval_range(key, start, stop, chunk_log2=c)

    starts = range(0, count, 1 << c)
    with ThreadPoolExecutor(max_workers=workers or min(len(starts), os.cpu_count() or 1)) as pool:
        list(pool.map(block, starts))  # list(): re-raise a block's error here
    return out


# --------------------------------------------------------------------------- server answer


def _masked_xor(pages: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """pages (C, 4096) u8, masks (C, 16) u8 -> (4096,) u8: XOR over c of page_c AND mask_c.

    Viewed as uint64 (both sides, same byte order), page word w pairs with mask word w % 2,
    which is exactly byte j with mask byte j % 16.
    """
    c = pages.shape[0]
    p64 = np.ascontiguousarray(pages).view(np.uint64).reshape(c, PAGE_BYTES // 16, 2)
    m64 = np.ascontiguousarray(masks).view(np.uint64).reshape(c, 1, 2)
    acc = np.bitwise_xor.reduce(p64 & m64, axis=0)
    return acc.reshape(-1).view(np.uint8)


def answer_numpy(
    pages: np.ndarray, keys: Sequence[Key], chunk_log2: int = DEFAULT_CHUNK_LOG2
) -> np.ndarray:
    """Server reply: (K, 4096) uint8, row k = XOR over pages i < N of (page_i AND mask_k(i)).

    pages: (N, 4096) uint8, any N in [1, 2^n]. Works through the database in aligned chunks
    of 2^chunk_log2 pages so neither masks nor temporaries ever cover the whole database.
    """
    if not (isinstance(pages, np.ndarray) and pages.dtype == np.uint8 and pages.ndim == 2
            and pages.shape[1] == PAGE_BYTES):
        got = (f"{type(pages).__name__} {getattr(pages, 'dtype', '?')} "
               f"of shape {getattr(pages, 'shape', '?')}")
        raise ValueError(f"pages must be uint8 of shape (N, 4096), got {got}")
    num_pages = pages.shape[0]
    if num_pages < 1:
        raise ValueError("pages must hold at least one page (N >= 1), got N = 0")
    keys = list(keys)
    if not keys:
        raise ValueError("keys must be a non-empty sequence of Key (one per accumulator)")
    domains = sorted({k.domain_bits for k in keys})
    if len(domains) != 1:
        raise ValueError(
            f"keys of different domains in one answer: domain_bits {domains}; "
            "answer each domain separately"
        )
    n = domains[0]
    if num_pages > (1 << n):
        raise ValueError(
            f"database has N = {num_pages} pages but the keys' domain holds only 2^{n} = {1 << n}; "
            f"use keys with domain_bits >= {(num_pages - 1).bit_length()}"
        )
    c = min(chunk_log2, n)
    out = np.zeros((len(keys), PAGE_BYTES), dtype=np.uint8)
    for start in range(0, num_pages, 1 << c):
        stop = min(start + (1 << c), num_pages)
        chunk = pages[start:stop]
        for k, key in enumerate(keys):
            out[k] ^= _masked_xor(chunk, eval_range(key, start, stop, c))
    return out
