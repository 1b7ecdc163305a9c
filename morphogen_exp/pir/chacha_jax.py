"""ChaCha8 PRG expansion in jnp, over arrays of seeds (the GGM tree's node expansion).

Bit-exact with the morphogenesis `chacha_prg.rs` (see tests/fixtures/README.md): the ChaCha key
is seed||seed, zero nonce, block counters 0 and 1, 8 rounds, feed-forward add.
    left  = block0 words 0..3,   right = block0 words 4..7,
    t_left = block1 word 0 & 1,  t_right = block1 word 1 & 1.

The state is a tuple of 16 uint32 arrays (one per ChaCha word, any common shape), so every op is
elementwise and a whole GGM level is one fused kernel on the GPU.

Two forms of the same arithmetic (``unroll``):
- ``False``: ``lax.fori_loop`` over the 4 double rounds. XLA's CPU backend compiles the fully
  unrolled 16-word form for minutes; the loop form compiles in well under a second, and the GGM expansion calls this once per tree level.
- ``True``: a Python loop, i.e. straight-line code; on the GPU XLA fuses it into one elementwise
  kernel per level, with no while-loop overhead.
Everything stays in uint32: constants and shift amounts are jnp.uint32 so nothing promotes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["prg_expand", "default_unroll", "chacha8_block_words"]

# "expand 32-byte k"
_SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)
_DOUBLE_ROUNDS = 4  # ChaCha8 = 8 rounds

_COLUMNS = ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15))
_DIAGONALS = ((0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14))

State = tuple[jax.Array, ...]


def default_unroll() -> bool:
    """Unrolled rounds everywhere except on the CPU backend (where they compile too slowly)."""
    return jax.default_backend() != "cpu"


def _rotl(x: jax.Array, r: int) -> jax.Array:
    # uint32 shift amounts: a Python int here could promote under some dtype configurations.
    return (x << jnp.uint32(r)) | (x >> jnp.uint32(32 - r))


def _quarter_round(s: list[jax.Array], a: int, b: int, c: int, d: int) -> None:
    s[a] = s[a] + s[b]
    s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = s[c] + s[d]
    s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = s[a] + s[b]
    s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = s[c] + s[d]
    s[b] = _rotl(s[b] ^ s[c], 7)


def _double_round(state: State) -> State:
    s = list(state)
    for q in _COLUMNS:
        _quarter_round(s, *q)
    for q in _DIAGONALS:
        _quarter_round(s, *q)
    return tuple(s)


def _rounds(state: State, unroll: bool) -> State:
    if unroll:
        out = state
        for _ in range(_DOUBLE_ROUNDS):
            out = _double_round(out)
        return out
    return lax.fori_loop(0, _DOUBLE_ROUNDS, lambda _, st: _double_round(st), state)


def chacha8_block_words(seed_words: State, counter: int, unroll: bool) -> State:
    """The 16 output words of ChaCha8 with key seed||seed, the given block counter, zero nonce.

    ``seed_words``: 4 uint32 arrays of one common shape. Returns 16 arrays of that shape.
    """
    shape = seed_words[0].shape
    full = lambda v: jnp.full(shape, v, dtype=jnp.uint32)  # noqa: E731
    key = tuple(jnp.asarray(w, dtype=jnp.uint32) for w in seed_words)
    init = (
        tuple(full(c) for c in _SIGMA)
        + key
        + key
        + (full(counter), full(0), full(0), full(0))
    )
    mixed = _rounds(init, unroll)
    return tuple(m + i for m, i in zip(mixed, init, strict=True))


def prg_expand(
    seeds: jax.Array, unroll: bool | None = None
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Expand seeds (..., 4) uint32 into (left (...,4), right (...,4), t_left (...), t_right (...)).

    ``unroll=None`` means ``default_unroll()``.
    """
    seeds = jnp.asarray(seeds)
    if seeds.dtype != jnp.uint32 or seeds.ndim < 1 or seeds.shape[-1] != 4:
        raise ValueError(f"seeds must be uint32 with last axis 4, got {seeds.dtype} {seeds.shape}")
    if unroll is None:
        unroll = default_unroll()
    words = tuple(seeds[..., i] for i in range(4))
    b0 = chacha8_block_words(words, 0, unroll)
    # Block 1 only contributes its first two words (the control bits); XLA drops the rest of
    # the feed-forward, but all rounds are needed.
    b1 = chacha8_block_words(words, 1, unroll)
    one = jnp.uint32(1)
    left = jnp.stack(b0[0:4], axis=-1)
    right = jnp.stack(b0[4:8], axis=-1)
    return left, right, b1[0] & one, b1[1] & one
