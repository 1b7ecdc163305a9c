"""The ChaCha8 PRG of the GGM tree in numpy (the original's `chacha_prg.rs`): key seed||seed, zero
nonce, counters 0 and 1; left/right child seeds are block0 words 0..3 / 4..7, left/right t bits are
bit 0 of block1 words 0 / 1. Shared by keys.py (key generation) and reference.py (the oracle).

Arrays of seeds are (M, 4) uint32; numpy uint32 arithmetic wraps mod 2^32 as ChaCha needs.
"""

from __future__ import annotations

import numpy as np

OUTPUT_BYTES = 16

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


def words_to_u8(w: np.ndarray) -> np.ndarray:
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


def prg_rows(
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
    left, right, tl, tr = prg_rows(rows)
    return np.stack(left, axis=1), np.stack(right, axis=1), tl, tr
