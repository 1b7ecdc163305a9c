"""Numpy reference for the ChaCha8 DPF page-PIR server: the parity oracle.

Plain numpy (uint32 arithmetic, vectorized over nodes / indices / pages); it imports nothing
from JAX, so it can check every accelerated engine. The algorithm follows
../shared/fixtures/README.md (the original morphogenesis `chacha_prg.rs` / `dpf.rs`):

- PRG: ChaCha8 with key seed||seed, zero nonce, counters 0 and 1. left/right child seeds are
  block0 words 0..3 / 4..7; left/right t bits are bit 0 of block1 words 0 / 1.
- GGM tree, path bits MSB first, corrections applied when the parent's t is 1, and the leaf
  output is seed XOR (t * final_cw), 16 bytes (4 little-endian uint32 words).
- Server answer for one key: XOR over pages i < N of (page_i AND mask_i), the 16-byte mask
  repeated across the 4096-byte page.

Arrays of seeds are (M, 4) uint32; numpy uint32 arithmetic wraps mod 2^32 as ChaCha needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # keys.py imports this module (keygen needs the PRG); avoid a runtime cycle.
    from .keys import Key

PAGE_BYTES = 4096
OUTPUT_BYTES = 16
# Pages per chunk in answer_numpy: 2^14 pages = 64 MiB of page data, bounded temporaries.
DEFAULT_CHUNK_LOG2 = 14

# "expand 32-byte k"
_SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)


# --------------------------------------------------------------------------- byte <-> word helpers


def seed_bytes_to_words(b: bytes) -> np.ndarray:
    """16 bytes -> (4,) uint32, each word little-endian (Seed128::from_bytes)."""
    if len(b) != 16:
        raise ValueError(f"a seed is 16 bytes, got {len(b)}")
    return np.frombuffer(bytes(b), dtype="<u4").astype(np.uint32)


def words_to_bytes(w: np.ndarray) -> bytes:
    """(..., 4) uint32 words -> little-endian bytes (Seed128::to_bytes for one seed)."""
    return np.ascontiguousarray(np.asarray(w, dtype=np.uint32)).astype("<u4").tobytes()


def _words_to_u8(w: np.ndarray) -> np.ndarray:
    """(M, 4) uint32 -> (M, 16) uint8, little-endian per word."""
    w = np.ascontiguousarray(w, dtype=np.uint32).astype("<u4", copy=False)
    return w.view(np.uint8).reshape(w.shape[0], OUTPUT_BYTES)


# --------------------------------------------------------------------------- ChaCha8 PRG


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def _quarter_round(s: list[np.ndarray], a: int, b: int, c: int, d: int) -> None:
    s[a] = s[a] + s[b]
    s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = s[c] + s[d]
    s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = s[a] + s[b]
    s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = s[c] + s[d]
    s[b] = _rotl(s[b] ^ s[c], 7)


def _chacha8_block_rows(seed_rows: list[np.ndarray], counter: int) -> list[np.ndarray]:
    """One ChaCha8 block per lane. seed_rows: 4 arrays (M,) uint32 -> 16 arrays (M,) uint32.

    Kept as 16 separate row arrays (structure of arrays) so every ARX step is one
    contiguous vector op over all M lanes.
    """
    m = seed_rows[0].shape[0]
    const = [np.full(m, c, dtype=np.uint32) for c in _SIGMA]
    ctr = np.full(m, counter, dtype=np.uint32)
    zero = np.zeros(m, dtype=np.uint32)
    init = const + list(seed_rows) + list(seed_rows) + [ctr, zero, zero, zero]
    s = list(init)
    with np.errstate(over="ignore"):
        for _ in range(4):  # 4 double rounds = 8 rounds
            _quarter_round(s, 0, 4, 8, 12)
            _quarter_round(s, 1, 5, 9, 13)
            _quarter_round(s, 2, 6, 10, 14)
            _quarter_round(s, 3, 7, 11, 15)
            _quarter_round(s, 0, 5, 10, 15)
            _quarter_round(s, 1, 6, 11, 12)
            _quarter_round(s, 2, 7, 8, 13)
            _quarter_round(s, 3, 4, 9, 14)
        return [s[i] + init[i] for i in range(16)]


def _as_seed_array(seeds: np.ndarray) -> np.ndarray:
    seeds = np.asarray(seeds)
    if seeds.ndim != 2 or seeds.shape[1] != 4:
        raise ValueError(f"seeds must have shape (M, 4), got {seeds.shape}")
    if seeds.dtype != np.uint32:
        raise ValueError(f"seeds must be uint32, got {seeds.dtype}")
    return seeds


def chacha8_blocks(seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """seeds (M, 4) uint32 -> (block0 (M, 16), block1 (M, 16)) uint32, counters 0 and 1."""
    seeds = _as_seed_array(seeds)
    rows = [np.ascontiguousarray(seeds[:, i]) for i in range(4)]
    b0 = np.stack(_chacha8_block_rows(rows, 0), axis=1)
    b1 = np.stack(_chacha8_block_rows(rows, 1), axis=1)
    return b0, b1


def _prg_rows(
    rows: list[np.ndarray],
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    """PRG on row form -> (left rows, right rows, t_left, t_right).

    Only words 0 and 1 of block1 are used (the t bits); the rest of it is discarded.
    """
    b0 = _chacha8_block_rows(rows, 0)
    b1 = _chacha8_block_rows(rows, 1)
    one = np.uint32(1)
    return b0[0:4], b0[4:8], b1[0] & one, b1[1] & one


def prg_expand(seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """seeds (M, 4) u32 -> (left (M, 4), right (M, 4), t_left (M,), t_right (M,)) uint32."""
    seeds = _as_seed_array(seeds)
    rows = [np.ascontiguousarray(seeds[:, i]) for i in range(4)]
    left, right, tl, tr = _prg_rows(rows)
    return np.stack(left, axis=1), np.stack(right, axis=1), tl, tr


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
        left, right, tl, tr = _prg_rows(seeds)
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
        left, right, tl, tr = _prg_rows(rows)
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
    return _words_to_u8(seeds ^ (on & fcw[None, :]))


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
