"""The JAX PIR engine: key batches on the device, GGM expansion, masked XOR, the tiled one-pass scan.

Contracts are in docs/engine-interface.md. In short, for K DPF keys over a database of N pages
(``pages_words``: (P >= N, 1024) uint32, little-endian words of 4096-byte pages), the server answer is
``acc[k] = XOR_{i<N} page_i & mask_k(i)`` where mask_k(i) is key k's 16-byte DPF output at i,
repeated over the page (page word w is ANDed with mask word w % 4).

``scan`` reads the database once for all K keys and never materializes masks for more than one
tile of T pages: every key is expanded once to depth n - log2(T), then each tile j expands the K
subtrees under node j by log2(T) levels (the tile's masks, (K, T, 4)) and XORs ``masked_xor`` of
the tile into the (K, 1024) carry. The ragged last tile runs through the same loop body (it reads
the T pages ending at num_pages and zeroes the masks of pages already counted), so the page matrix
is never padded or copied and the tile expansion appears once in the program.

Compile time is the constraint that shapes the XLA expansion (expand_nodes_xla): every ChaCha8
pair written out as straight-line code costs seconds of XLA compile time (CPU and GPU), so most
levels run in a fixed-shape loop and only the last few are expanded by doubling.

The two inner ops are pluggable (``register_ops`` / ``get_ops``): "xla" is registered here; a Pallas
engine registers its own kernels with the same signatures.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from morphogen_exp.pir.chacha_jax import default_unroll, prg_expand

if TYPE_CHECKING:  # keys.py is numpy-only; imported lazily to keep this module importable alone
    from morphogen_exp.pir.keys import Key

__all__ = [
    "PAGE_BYTES",
    "PAGE_WORDS",
    "KeyBatch",
    "EngineSpec",
    "EngineOps",
    "register_ops",
    "get_ops",
    "registered_engines",
    "available_engines",
    "expand_nodes_xla",
    "expand_levels_xla",
    "masked_xor_xla",
    "tile_size",
    "scan",
    "full_eval_jax",
    "make_answer_fn",
    "pages_to_words",
    "words_to_bytes",
    "answer_jax",
]

PAGE_BYTES = 4096
PAGE_WORDS = PAGE_BYTES // 4


# --------------------------------------------------------------------------------------------
# Keys on the device
# --------------------------------------------------------------------------------------------


def _seed_words(b: bytes) -> np.ndarray:
    return np.frombuffer(bytes(b), dtype="<u4").astype(np.uint32)


class KeyBatch(NamedTuple):
    """K DPF keys as uint32 arrays (a NamedTuple, hence a JAX pytree). Leading axes are free:
    (K, ...) is one batch of keys, (Q, 3, ...) is Q queries of 3 keys (vmap / lax.map over Q)."""

    root_seed: np.ndarray | jax.Array  # (..., K, 4)
    root_t: np.ndarray | jax.Array  # (..., K)
    seed_cw: np.ndarray | jax.Array  # (..., K, n, 4)
    t_cw: np.ndarray | jax.Array  # (..., K, n, 2): [t_cw_left, t_cw_right]
    final_cw: np.ndarray | jax.Array  # (..., K, 4)

    @property
    def domain_bits(self) -> int:
        return int(self.seed_cw.shape[-2])

    @property
    def num_keys(self) -> int:
        """K, the size of the last batch axis."""
        return int(self.root_t.shape[-1])

    @classmethod
    def from_keys(cls, keys: Sequence[Key]) -> KeyBatch:
        """Host (numpy) arrays for a non-empty sequence of keys of one domain size."""
        keys = list(keys)
        if not keys:
            raise ValueError("keys is empty: pass at least one DPF key")
        n = keys[0].domain_bits
        bad = sorted({k.domain_bits for k in keys} - {n})
        if bad:
            raise ValueError(
                f"all keys must share one domain_bits; got {n} and {bad}: batch keys per domain"
            )
        kb = cls(
            root_seed=np.stack([_seed_words(k.root_seed) for k in keys]),
            root_t=np.array([k.root_t for k in keys], dtype=np.uint32),
            seed_cw=np.array(
                [[_seed_words(c) for c in k.seed_cw] for k in keys], dtype=np.uint32
            ).reshape(len(keys), n, 4),
            t_cw=np.array(
                [[(l, r) for l, r in zip(k.t_cw_left, k.t_cw_right)] for k in keys], dtype=np.uint32
            ).reshape(len(keys), n, 2),
            final_cw=np.stack([_seed_words(k.final_cw) for k in keys]),
        )
        # The GGM code applies corrections with branch-free masks (0 - t), which needs t in {0,1}.
        if np.any(kb.root_t > 1) or np.any(kb.t_cw > 1):
            raise ValueError("root_t and t_cw bits must be 0 or 1: the keys are malformed")
        return kb

    @classmethod
    def stack(cls, batches: Sequence[KeyBatch]) -> KeyBatch:
        """Stack Q batches of equal shape into one with a new leading query axis (numpy)."""
        if not batches:
            raise ValueError("batches is empty: pass at least one KeyBatch")
        return cls(*(np.stack([np.asarray(f) for f in fs]) for fs in zip(*batches)))

    def take(self, index: int | slice) -> KeyBatch:
        """Queries ``index`` of a stacked (Q, ...) batch: an int gives one query's keys, a slice a sub-batch."""
        return KeyBatch(*(f[index] for f in self))

    def unstack(self) -> tuple[KeyBatch, ...]:
        """Every query of a stacked (Q, ...) batch as its own KeyBatch, split in one dispatch
        (eager ``take`` costs a dispatch per field per query: milliseconds at Q = 32)."""
        return _unstack(self)

    def chunks(self, size: int) -> tuple[KeyBatch, ...]:
        """Consecutive sub-batches of ``size`` queries (the last may be shorter), split in one dispatch."""
        return _chunks(self, size)

    def to_device(self, device: jax.Device | jax.sharding.Sharding | None = None) -> KeyBatch:
        return jax.device_put(self, device)


@jax.jit
def _unstack(keys: KeyBatch) -> tuple[KeyBatch, ...]:
    return tuple(keys.take(i) for i in range(keys.root_t.shape[0]))


@functools.partial(jax.jit, static_argnums=1)
def _chunks(keys: KeyBatch, size: int) -> tuple[KeyBatch, ...]:
    return tuple(keys.take(slice(i, i + size)) for i in range(0, keys.root_t.shape[0], size))


# --------------------------------------------------------------------------------------------
# Engine spec and op registry
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """Static engine configuration (hashable: used as a static argument to jit).

    name: registered op set ("xla", or e.g. "pallas" once registered).
    tile_pages: pages per scan step (power of two); bounds the live masks to (K, tile_pages, 4).
    mask_budget_mib: if set, the tile shrinks (by powers of two) until a batch's masks, K x tile x
        16 bytes, fit this many MiB: one query gets huge tiles (few loop steps), 96 keys smaller ones.
    unroll: ChaCha8 rounds unrolled (GPU) or looped (fast CPU compile); None = default_unroll().
    doubling_levels: XLA expansion only: how many of the last GGM levels of each tile are expanded
        by doubling (least arithmetic, but each level adds a whole ChaCha8 pair to the program and
        to its compile time); the levels above run in a fixed-shape loop. None = 3 when unrolled,
        0 otherwise (see expand_nodes_xla).
    """

    name: str = "xla"
    tile_pages: int = 4096
    unroll: bool | None = None
    doubling_levels: int | None = None
    mask_budget_mib: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"{self.name=} must be a non-empty engine name")
        tp = self.tile_pages
        if isinstance(tp, bool) or not isinstance(tp, (int, np.integer)) or tp < 1 or tp & (tp - 1):
            raise ValueError(f"{self.tile_pages=} must be a power of two (>= 1)")
        if self.unroll is not None and not isinstance(self.unroll, bool):
            raise ValueError(f"{self.unroll=} must be True, False or None")
        mb = self.mask_budget_mib
        if mb is not None and (isinstance(mb, bool) or not isinstance(mb, (int, np.integer)) or mb < 1):
            raise ValueError(f"{self.mask_budget_mib=} must be None or an int >= 1")
        dl = self.doubling_levels
        if dl is not None and (isinstance(dl, bool) or not isinstance(dl, (int, np.integer)) or dl < 0):
            raise ValueError(f"{self.doubling_levels=} must be None or an int >= 0")

    @property
    def resolved_unroll(self) -> bool:
        return default_unroll() if self.unroll is None else self.unroll

    @property
    def resolved_doubling_levels(self) -> int:
        if self.doubling_levels is None:
            return _default_doubling_levels(self.resolved_unroll)
        return self.doubling_levels


# Optional keywords of an expand_levels op that the scan fills from the EngineSpec.
_SPEC_KWARGS = ("unroll", "doubling_levels")


@dataclasses.dataclass(frozen=True)
class EngineOps:
    expand_levels: Callable[..., jax.Array]
    masked_xor: Callable[[jax.Array, jax.Array], jax.Array]
    expand_kwargs: frozenset[str]  # which of _SPEC_KWARGS expand_levels accepts
    # Optional: masked_xor_at(pages_words, page_offset, masks) reads the tile in place; without it
    # the scan slices the tile first (free for XLA, which fuses the slice; a copy before a kernel).
    masked_xor_at: Callable[[jax.Array, jax.Array, jax.Array], jax.Array] | None = None


_OPS: dict[str, EngineOps] = {}
# Engines living in other modules, imported on first use so EngineSpec(name=...) just works.
_LAZY_ENGINE_MODULES = {"pallas": "morphogen_exp.pir.pallas_ops"}


def register_ops(
    name: str,
    expand_levels_fn: Callable[..., jax.Array],
    masked_xor_fn: Callable[[jax.Array, jax.Array], jax.Array],
    masked_xor_at_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array] | None = None,
) -> None:
    """Register an op set under ``name`` (re-registering replaces it).

    Signatures (docs/engine-interface.md): ``expand_levels_fn(seeds, ts, seed_cw, t_cw, final_cw)``,
    optionally with keywords ``unroll`` / ``doubling_levels`` (then the EngineSpec's values are
    passed), and ``masked_xor_fn(pages, masks)``. Both must be traceable under jit and vmap.
    """
    params = inspect.signature(expand_levels_fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        kwargs = frozenset(_SPEC_KWARGS)
    else:
        kwargs = frozenset(k for k in _SPEC_KWARGS if k in params)
    _OPS[name] = EngineOps(expand_levels_fn, masked_xor_fn, kwargs, masked_xor_at_fn)
    make_answer_fn.cache_clear()  # a cached answer fn may have traced the old ops
    query_scan.cache_clear()


def registered_engines() -> list[str]:
    return sorted(_OPS)


def available_engines() -> list[str]:
    """Engines a config may name: registered ones, then those imported on first use."""
    return list(dict.fromkeys([*_OPS, *_LAZY_ENGINE_MODULES]))


def get_ops(name: str) -> EngineOps:
    if name not in _OPS and name in _LAZY_ENGINE_MODULES:
        try:
            importlib.import_module(_LAZY_ENGINE_MODULES[name])
        except ImportError as e:
            raise ValueError(f"engine {name!r} could not be loaded ({e})") from e
    if name not in _OPS:
        raise ValueError(f"unknown engine {name!r}; registered engines: {registered_engines()}")
    return _OPS[name]


# --------------------------------------------------------------------------------------------
# The XLA ops
# --------------------------------------------------------------------------------------------


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
    with the level count (XLA:CPU, 2 cores: ~0.4 s per level with looped rounds, 12 s for a
    16-level full eval; XLA:GPU: ~4 s per unrolled level), while this stays constant."""
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
        # Selects written as masks, not jnp.where: XLA:CPU (jax 0.10.2) miscompiled the
        # where(iota-derived predicate) form of this function (wrong leaves at domain_bits=1).
        take_right = _on(bit)
        child = left ^ ((left ^ right) & take_right[:, None])
        t_child = tl ^ ((tl ^ tr) & bit)
        t_corr = tcw[..., 0, None] ^ ((tcw[..., 0, None] ^ tcw[..., 1, None]) & bit)
        return child ^ (cw[..., None, :] & on[..., None]), t_child ^ (t_corr & on)

    return lax.fori_loop(0, levels, level, (seeds, ts))


# Default doubling levels when unrolled. Measured with JAX 0.11.2, 2^20 pages, K = 3, tile 4096:
# each unrolled ChaCha8 pair in the program costs about 4 s of compile time (H100); on an H200 all
# 12 tile levels by doubling compiled in 105 s and ran in 26.9 ms, 3 doubling levels in 13.2 s /
# 35.1 ms, none in 5.4 s / 39.9 ms (the scan is launch-bound at K = 3; tile 16384 with 3 levels:
# 16.3 s / 15.9 ms). At K = 96 the compact loop's extra arithmetic (about L/2 times the
# doubling's) would dominate; 3 levels keep it near 1.6x for 12-level tiles.
_UNROLLED_DOUBLING_LEVELS = 3


def _default_doubling_levels(unroll: bool) -> int:
    return _UNROLLED_DOUBLING_LEVELS if unroll else 0


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
    c = _default_doubling_levels(unroll) if doubling_levels is None else doubling_levels
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
    return jnp.bitwise_xor.reduce(prod, axis=1).reshape(masks.shape[0], PAGE_WORDS)


# --------------------------------------------------------------------------------------------
# The scan
# --------------------------------------------------------------------------------------------


def _next_pow2(x: int) -> int:
    return 1 << max(0, x - 1).bit_length()


def tile_size(num_pages: int, domain_bits: int, spec: EngineSpec, num_keys: int = 1) -> int:
    """Pages per scan step for a batch of ``num_keys`` keys: spec.tile_pages, capped by the domain,
    by the database size (a tiny database must not expand a 4096-leaf subtree to use 5 of its
    leaves) and by spec.mask_budget_mib (the batch's masks, num_keys x tile x 16 bytes)."""
    t = min(spec.tile_pages, 1 << domain_bits, _next_pow2(num_pages))
    if spec.mask_budget_mib is not None:
        fit = (spec.mask_budget_mib << 20) // (max(1, num_keys) * 16)
        t = min(t, 1 << max(0, fit.bit_length() - 1))
    return t


def _expand(ops: EngineOps, spec: EngineSpec, *args: jax.Array) -> jax.Array:
    values = {"unroll": spec.resolved_unroll, "doubling_levels": spec.resolved_doubling_levels}
    return ops.expand_levels(*args, **{k: values[k] for k in ops.expand_kwargs})


def _shift_rows(masks: jax.Array, shift: jax.Array) -> jax.Array:
    """masks (K, T, 4) moved down by ``shift`` rows along T, zeros shifted in at the top."""
    keep = _on((jnp.arange(masks.shape[1], dtype=jnp.int32) >= shift).astype(jnp.uint32))  # not where
    return jnp.roll(masks, shift, axis=1) & keep[None, :, None]


def scan(pages_words: jax.Array, keys: KeyBatch, *, num_pages: int, spec: EngineSpec) -> jax.Array:
    """Server answers of K keys over pages [0, num_pages): (K, 1024) uint32.

    Pure; call inside jit with num_pages and spec static (see make_answer_fn). Vmappable over a
    leading query axis of ``keys`` (pages unbatched). Rows of pages_words from num_pages on are
    never read.
    """
    n = keys.domain_bits
    if pages_words.ndim != 2 or pages_words.shape[1] != PAGE_WORDS or pages_words.dtype != jnp.uint32:
        raise ValueError(
            f"pages_words must be (P, {PAGE_WORDS}) uint32, got {pages_words.shape} {pages_words.dtype}"
        )
    if not 1 <= num_pages <= pages_words.shape[0]:
        raise ValueError(f"{num_pages=} must be in [1, {pages_words.shape[0]}] (rows of pages_words)")
    if num_pages > 1 << n:
        raise ValueError(f"{num_pages=} exceeds the DPF domain 2^{n}: generate keys with more domain_bits")
    ops = get_ops(spec.name)
    k = keys.root_t.shape[-1]
    T = tile_size(num_pages, n, spec, k)
    d = n - (T.bit_length() - 1)  # depth of the tile roots; each tile expands log2(T) levels
    num_full, rem = divmod(num_pages, T)

    # Every key to depth d once. Always the XLA compact form: 2^d nodes per key is small next to
    # the tiles' 2^n leaves, and it adds only one ChaCha8 pair to the program.
    top_seeds, top_ts = expand_nodes_xla(
        keys.root_seed[:, None, :], keys.root_t[:, None], keys.seed_cw[:, :d], keys.t_cw[:, :d],
        unroll=spec.resolved_unroll, doubling_levels=0,
    )
    sub_cw, sub_tcw = keys.seed_cw[:, d:], keys.t_cw[:, d:]

    def tile_masks(j: jax.Array | int) -> jax.Array:
        # The K subtrees under node j at depth d: their leaves are the DPF outputs of pages j*T + [0, T).
        seeds = lax.dynamic_slice_in_dim(top_seeds, j, 1, axis=1)
        ts = lax.dynamic_slice_in_dim(top_ts, j, 1, axis=1)
        return _expand(ops, spec, seeds, ts, sub_cw, sub_tcw, keys.final_cw)  # (K, T, 4)

    if num_full == 0:  # num_pages < T (a database smaller than one tile): one static partial tile
        return ops.masked_xor(pages_words[:num_pages], tile_masks(0)[:, :num_pages])

    def body(j: jax.Array, acc: jax.Array) -> jax.Array:
        masks, start = tile_masks(j), j * T
        if rem:
            # The ragged last tile (j == num_full) shares this body, so its expansion is not
            # compiled twice: it reads the T pages that end at num_pages (in bounds, no padding),
            # the first T - rem of which the previous tile already covered, so their masks are
            # zeroed and the tile's first rem leaves are moved under its last rem pages.
            last = j == num_full
            start = jnp.where(last, num_pages - T, start)
            masks = _shift_rows(masks, jnp.where(last, T - rem, 0))
        if ops.masked_xor_at is not None:
            return acc ^ ops.masked_xor_at(pages_words, start, masks)
        tile = lax.dynamic_slice_in_dim(pages_words, start, T, axis=0)
        return acc ^ ops.masked_xor(tile, masks)

    acc = jnp.zeros((k, PAGE_WORDS), jnp.uint32)
    return lax.fori_loop(0, num_full + (rem > 0), body, acc)


@functools.partial(jax.jit, static_argnames=("spec",))
def full_eval_jax(keys: KeyBatch, spec: EngineSpec) -> jax.Array:
    """All 2^n DPF outputs of K keys, (K, 2^n, 4) uint32, in index order (tests and benchmarks)."""
    roots = (keys.root_seed[:, None, :], keys.root_t[:, None])
    return _expand(get_ops(spec.name), spec, *roots, keys.seed_cw, keys.t_cw, keys.final_cw)


@functools.lru_cache(maxsize=None)
def query_scan(num_pages: int, spec: EngineSpec) -> Callable[[jax.Array, KeyBatch], jax.Array]:
    """``scan`` with its static arguments bound, whose vmap over queries is ONE pass.

    Plain vmap would batch every op inside the scan over the query axis; a Pallas masked-XOR then
    gets the query axis as an outer grid axis and re-reads each page tile once per query. Here a
    vmap over keys (Q, K, ...) instead flattens them into Q*K keys of one scan, so whichever way a
    strategy batches (vmap, lax.map with batch_size), a (sub)batch reads the database once."""
    base = functools.partial(scan, num_pages=num_pages, spec=spec)

    @jax.custom_batching.custom_vmap
    def fn(pages_words: jax.Array, keys: KeyBatch) -> jax.Array:
        return base(pages_words, keys)

    @fn.def_vmap
    def _one_pass(axis_size, in_batched, pages_words, keys):  # type: ignore[no-untyped-def]
        pages_batched, keys_batched = in_batched
        if pages_batched:  # several databases: nothing to share
            axes = jax.tree.map(lambda b: 0 if b else None, keys_batched)
            return jax.vmap(base, in_axes=(0, axes))(pages_words, keys), True
        keys = jax.tree.map(
            lambda x, b: x if b else jnp.broadcast_to(x, (axis_size, *x.shape)), keys, keys_batched)
        per_query = keys.root_t.shape[1]
        flat = jax.tree.map(lambda x: x.reshape(axis_size * per_query, *x.shape[2:]), keys)
        out = fn(pages_words, flat)  # nested vmaps flatten again, level by level
        return out.reshape(axis_size, per_query, out.shape[-1]), True

    return fn


@functools.lru_cache(maxsize=None)
def make_answer_fn(num_pages: int, spec: EngineSpec) -> Callable[[jax.Array, KeyBatch], jax.Array]:
    """Jitted ``fn(pages_words, keybatch) -> (K, 1024) u32``, shared by every caller with the same
    (num_pages, spec) so compiled executables are reused (jit further caches per input shape)."""
    return jax.jit(query_scan(num_pages, spec))


# --------------------------------------------------------------------------------------------
# Host conversions and the numpy-in / numpy-out entry point
# --------------------------------------------------------------------------------------------


def pages_to_words(pages_u8: np.ndarray) -> np.ndarray:
    """(N, 4096) uint8 pages -> (N, 1024) uint32 little-endian words (a view when possible)."""
    _check_pages(pages_u8)
    return np.ascontiguousarray(pages_u8).view("<u4").reshape(pages_u8.shape[0], PAGE_WORDS)


def words_to_bytes(words: np.ndarray | jax.Array) -> np.ndarray:
    """(..., 1024) uint32 words -> (..., 4096) uint8, little-endian."""
    w = np.asarray(words)
    if w.dtype != np.uint32 or w.shape[-1:] != (PAGE_WORDS,):
        raise ValueError(f"words must be (..., {PAGE_WORDS}) uint32, got {w.shape} {w.dtype}")
    return np.ascontiguousarray(w.astype("<u4", copy=False)).view(np.uint8).reshape(*w.shape[:-1], PAGE_BYTES)


def _check_pages(pages: np.ndarray) -> None:
    if not isinstance(pages, np.ndarray) or pages.dtype != np.uint8:
        raise ValueError(
            f"pages must be a numpy uint8 array, got {type(pages).__name__} "
            f"{getattr(pages, 'dtype', None)}: convert with np.asarray(pages, dtype=np.uint8)"
        )
    if pages.ndim != 2 or pages.shape[1] != PAGE_BYTES or pages.shape[0] < 1:
        raise ValueError(f"pages must have shape (N >= 1, {PAGE_BYTES}), got {pages.shape}")


def answer_jax(pages: np.ndarray, keys: Sequence[Key], spec: EngineSpec | None = None) -> np.ndarray:
    """Server answers (K, 4096) uint8 for ``keys`` over ``pages`` (N, 4096) uint8, on the default
    JAX device; same contract and validation as the numpy reference ``answer_numpy``."""
    _check_pages(pages)
    kb = KeyBatch.from_keys(keys)
    n_pages, n = pages.shape[0], kb.domain_bits
    if n_pages > 1 << n:
        raise ValueError(
            f"{n_pages} pages exceed the DPF domain 2^{n} = {1 << n}: use keys with domain_bits >= "
            f"{(n_pages - 1).bit_length()}"
        )
    spec = EngineSpec() if spec is None else spec
    fn = make_answer_fn(n_pages, spec)
    out = fn(jax.device_put(pages_to_words(pages)), kb.to_device())
    return words_to_bytes(jax.device_get(out))


register_ops("xla", expand_levels_xla, masked_xor_xla)
