"""DPF keys in the morphogenesis byte layout, GGM key generation, and the fixtures' RNG.

Layout (n = domain_bits, 19 + 18n + 16 bytes), as `ChaChaKey::to_bytes` in the original:
  [0,16) root_seed | [16] root_t | [17] party | [18] domain_bits |
  per level L: [19+18L, 35+18L) seed_cw, [35+18L] t_cw_left, [36+18L] t_cw_right |
  [19+18n, 35+18n) final_cw

Key generation is the standard two-party GGM DPF (Boyle-Gilboa-Ishai) over the ChaCha8 PRG of
prg.py; given (domain_bits, target, root_seed0, root_seed1) it is deterministic and
reproduces tests/fixtures/dpf_vectors.json bit for bit.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np

from .prg import prg_expand, seed_bytes_to_words, words_to_bytes

SEED_BYTES = 16
MIN_DOMAIN_BITS = 1
MAX_DOMAIN_BITS = 32
_HEADER_BYTES = 19
_LEVEL_BYTES = 18


def key_length(domain_bits: int) -> int:
    """Bytes of a serialized key of this domain: 19 + 18n + 16."""
    return _HEADER_BYTES + _LEVEL_BYTES * domain_bits + SEED_BYTES


def _check_domain_bits(domain_bits: object) -> int:
    try:
        n = operator.index(domain_bits)  # type: ignore[arg-type]  # ints and numpy ints; rejects floats
    except TypeError:
        raise ValueError(f"domain_bits must be an int in 1..32, got {domain_bits!r}") from None
    if isinstance(domain_bits, bool) or not MIN_DOMAIN_BITS <= n <= MAX_DOMAIN_BITS:
        raise ValueError(f"domain_bits must be an int in 1..32, got {domain_bits!r}")
    return n


def _check_target(target: object, n: int) -> int:
    try:
        x = operator.index(target)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"target must be an int in [0, 2^{n}), got {target!r}") from None
    if isinstance(target, bool) or not 0 <= x < (1 << n):
        raise ValueError(f"target must be in [0, 2^{n}) = [0, {1 << n}) for domain_bits={n}, "
                         f"got {target!r}")
    return x


def _check_bit(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value not in (0, 1):
        raise ValueError(f"{name} must be 0 or 1, got {value!r}")
    return int(value)


def _check_seed(name: str, value: object) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise ValueError(f"{name} must be {SEED_BYTES} bytes, got {type(value).__name__}")
    b = bytes(value)
    if len(b) != SEED_BYTES:
        raise ValueError(f"{name} must be {SEED_BYTES} bytes, got {len(b)} bytes")
    return b


@dataclass(frozen=True)
class Key:
    """One party's DPF key. Both keys of a pair share seed_cw, t_cw_* and final_cw."""

    domain_bits: int
    party: int
    root_seed: bytes
    root_t: int
    seed_cw: tuple[bytes, ...]
    t_cw_left: tuple[int, ...]
    t_cw_right: tuple[int, ...]
    final_cw: bytes

    def __post_init__(self) -> None:
        # Normalize (lists -> tuples, bytearray -> bytes, numpy ints -> int) so keys stay
        # hashable and compare equal regardless of how they were built, then validate.
        n = _check_domain_bits(self.domain_bits)
        set_ = object.__setattr__
        set_(self, "domain_bits", n)
        set_(self, "party", _check_bit("party", self.party))
        set_(self, "root_t", _check_bit("root_t", self.root_t))
        set_(self, "root_seed", _check_seed("root_seed", self.root_seed))
        set_(self, "final_cw", _check_seed("final_cw", self.final_cw))
        for name in ("seed_cw", "t_cw_left", "t_cw_right"):
            value = getattr(self, name)
            if isinstance(value, (bytes, str)) or not hasattr(value, "__len__"):
                raise ValueError(f"{name} must be a sequence of {n} entries (one per level), "
                                 f"got {type(value).__name__}")
            if len(value) != n:
                raise ValueError(f"{name} must have {n} entries (one per level, "
                                 f"domain_bits={n}), got {len(value)}")
        set_(self, "seed_cw",
             tuple(_check_seed(f"seed_cw[{i}]", s) for i, s in enumerate(self.seed_cw)))
        set_(self, "t_cw_left",
             tuple(_check_bit(f"t_cw_left[{i}]", t) for i, t in enumerate(self.t_cw_left)))
        set_(self, "t_cw_right",
             tuple(_check_bit(f"t_cw_right[{i}]", t) for i, t in enumerate(self.t_cw_right)))

    @classmethod
    def from_bytes(cls, b: bytes) -> Key:
        """Parse the morphogenesis layout (`ChaChaKey::from_bytes`)."""
        if not isinstance(b, (bytes, bytearray, memoryview)):
            raise ValueError(f"key must be bytes, got {type(b).__name__}")
        b = bytes(b)
        if len(b) < _HEADER_BYTES:
            raise ValueError(f"key too short: the header alone is {_HEADER_BYTES} bytes "
                             f"(root_seed, root_t, party, domain_bits), got {len(b)} bytes")
        n = b[18]
        if not MIN_DOMAIN_BITS <= n <= MAX_DOMAIN_BITS:
            raise ValueError(f"key byte 18 (domain_bits) must be in 1..32, got {n}")
        expected = key_length(n)
        if len(b) != expected:
            raise ValueError(f"key with domain_bits={n} must be {expected} bytes "
                             f"(19 + 18*{n} + 16), got {len(b)} bytes")
        if b[16] not in (0, 1):
            raise ValueError(f"key byte 16 (root_t) must be 0 or 1, got {b[16]}")
        if b[17] not in (0, 1):
            raise ValueError(f"key byte 17 (party) must be 0 or 1, got {b[17]}")
        seed_cw, t_left, t_right = [], [], []
        for level in range(n):
            off = _HEADER_BYTES + _LEVEL_BYTES * level
            tl, tr = b[off + 16], b[off + 17]
            if tl not in (0, 1) or tr not in (0, 1):
                raise ValueError(f"level {level} t_cw bytes (key bytes {off + 16}, {off + 17}) "
                                 f"must be 0 or 1, got {tl}, {tr}")
            seed_cw.append(b[off : off + 16])
            t_left.append(tl)
            t_right.append(tr)
        fc = _HEADER_BYTES + _LEVEL_BYTES * n
        return cls(domain_bits=n, party=b[17], root_seed=b[0:16], root_t=b[16],
                   seed_cw=tuple(seed_cw), t_cw_left=tuple(t_left), t_cw_right=tuple(t_right),
                   final_cw=b[fc : fc + 16])

    def to_bytes(self) -> bytes:
        """Serialize in the morphogenesis layout (`ChaChaKey::to_bytes`)."""
        parts = [self.root_seed, bytes((self.root_t, self.party, self.domain_bits))]
        for s, tl, tr in zip(self.seed_cw, self.t_cw_left, self.t_cw_right, strict=True):
            parts.append(s)
            parts.append(bytes((tl, tr)))
        parts.append(self.final_cw)
        return b"".join(parts)


def generate_keys_from_seeds(
    domain_bits: int, target: int, root_seed0: bytes, root_seed1: bytes
) -> tuple[Key, Key]:
    """Deterministic GGM DPF keygen: eval0 XOR eval1 is ff*16 at `target`, zero elsewhere.

    Per level L with path bit b (MSB first): both parties' current seeds are expanded; the
    seed correction is the XOR of the two "lose" children (so off-path the parties' states
    become equal and stay equal), and the t corrections make the on-path t bits differ
    (t_cw_left = tL0^tL1^b^1, t_cw_right = tR0^tR1^b) so exactly one party keeps t = 1.
    Each party then moves to its "keep" child, corrected if its own t was 1. At the leaf
    t0 XOR t1 = 1, so final_cw = s0 XOR s1 XOR ff*16 makes the outputs XOR to all ones.
    """
    n = _check_domain_bits(domain_bits)
    x = _check_target(target, n)
    r0 = _check_seed("root_seed0", root_seed0)
    r1 = _check_seed("root_seed1", root_seed1)

    s = np.stack([seed_bytes_to_words(r0), seed_bytes_to_words(r1)])  # (2, 4): party 0, 1
    t = np.array([0, 1], dtype=np.uint32)
    seed_cw: list[bytes] = []
    t_left: list[int] = []
    t_right: list[int] = []
    for level in range(n):
        bit = (x >> (n - 1 - level)) & 1
        left, right, tl, tr = prg_expand(s)  # both parties at once
        keep, lose = (right, left) if bit else (left, right)
        scw = lose[0] ^ lose[1]
        tcw_l = int(tl[0] ^ tl[1]) ^ bit ^ 1
        tcw_r = int(tr[0] ^ tr[1]) ^ bit
        tcw_keep = tcw_r if bit else tcw_l
        t_keep = tr if bit else tl
        on = (np.uint32(0) - t)[:, None]  # all-ones rows where the party's t is 1
        s = keep ^ (on & scw[None, :])
        t = t_keep ^ (t & np.uint32(tcw_keep))
        seed_cw.append(words_to_bytes(scw))
        t_left.append(tcw_l)
        t_right.append(tcw_r)
    final_cw = words_to_bytes(s[0] ^ s[1] ^ np.uint32(0xFFFFFFFF))
    def key(party: int, root_seed: bytes) -> Key:
        return Key(domain_bits=n, party=party, root_seed=root_seed, root_t=party, seed_cw=tuple(seed_cw),
                   t_cw_left=tuple(t_left), t_cw_right=tuple(t_right), final_cw=final_cw)

    return key(0, r0), key(1, r1)


def generate_keys(domain_bits: int, target: int, rng: np.random.Generator) -> tuple[Key, Key]:
    """A fresh key pair for point `target`; the two root seeds are 16 bytes each from `rng`."""
    # Validate before drawing so a bad call does not advance the caller's RNG stream.
    n = _check_domain_bits(domain_bits)
    x = _check_target(target, n)
    root_seed0 = rng.bytes(SEED_BYTES)
    root_seed1 = rng.bytes(SEED_BYTES)
    return generate_keys_from_seeds(n, x, root_seed0, root_seed1)


class SplitMix64:
    """splitmix64, the deterministic stand-in for `Seed128::random()` in the fixtures.

    SplitMix64(20260618) yields root_seed0, root_seed1 of every dpf_vectors.json case in order.
    """

    _M64 = (1 << 64) - 1

    def __init__(self, state: int) -> None:
        self.state = operator.index(state) & self._M64

    def next_u64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & self._M64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & self._M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self._M64
        return z ^ (z >> 31)

    def seed128(self) -> bytes:
        """Two outputs a, b -> a (8 bytes LE) || b (8 bytes LE)."""
        a = self.next_u64()
        b = self.next_u64()
        return a.to_bytes(8, "little") + b.to_bytes(8, "little")
