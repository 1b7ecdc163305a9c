"""The one-pass scan: K keys over N pages, the database read once, masks live for one tile at a time.

For K DPF keys over a database of N pages (``pages_words``: (P >= N, 1024) uint32, little-endian
words of 4096-byte pages) the server answer is ``acc[k] = XOR_{i<N} page_i & mask_k(i)``, where
mask_k(i) is key k's 16-byte DPF output at i repeated over the page (page word w is ANDed with mask
word w % 4). ``scan`` expands every key once to the depth of the tile roots, then for each full tile
j of T pages expands the K subtrees under node j by log2(T) levels (the tile's masks, (K, T, 4)) and
XORs ``masked_xor`` of the tile into the (K, 1024) carry. The R < T pages after the full tiles (the
ragged tail) get their own step: the leftmost subtree of next_pow2(R) leaves under tile root
``num_full`` gives their masks, and exactly those R pages are read. So the tail costs what its pages
cost (at most 2R leaves expanded), no page beyond N is read, and the page matrix is never padded or
copied. The plan of a scan (``scan_plan``) says what it reads and expands, for byte accounting.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from .engine import Engine, Subtrees, Window, get
from .keybatch import KeyBatch
from .pages import PAGE_BYTES, PAGE_WORDS, domain_bits_for, shard_rows, xor_reduce
from .spec import EngineSpec
from .xla_ops import descend_left, expand_nodes_xla

__all__ = ["ScanPlan", "scan_plan", "tile_size", "scan_bytes_read", "scan", "query_scan", "make_answer_fn", "full_eval_jax",
           "shard_bounds", "scan_range", "sharded_query_scan", "replicated_query_scan"]


def _next_pow2(x: int) -> int:
    return 1 << max(0, x - 1).bit_length()


def _log2(x: int) -> int:
    return x.bit_length() - 1


def tile_size(num_pages: int, domain_bits: int, spec: EngineSpec, num_keys: int = 1) -> int:
    """Pages per scan step for a batch of ``num_keys`` keys: spec.tile_pages, capped by the domain,
    by the database size (a tiny database must not expand a 4096-leaf subtree to use 5 of its
    leaves) and by spec.mask_budget_mib (the batch's masks, num_keys x tile x 16 bytes)."""
    t = min(spec.tile_pages, 1 << domain_bits, _next_pow2(num_pages))
    if spec.mask_budget_mib is not None:
        fit = (spec.mask_budget_mib << 20) // (max(1, num_keys) * 16)
        t = min(t, 1 << max(0, fit.bit_length() - 1))
    return t


@dataclasses.dataclass(frozen=True)
class ScanPlan:
    """How one scan walks pages [0, num_pages): ``num_full`` tiles of ``tile`` pages, then ``tail``
    pages masked by one subtree of ``tail_tile`` = next_pow2(tail) leaves (0 when there is no tail)."""

    num_pages: int
    domain_bits: int
    tile: int
    num_full: int
    tail: int
    tail_tile: int

    @property
    def depth(self) -> int:
        """Depth of the tile roots: every key is expanded to it once."""
        return self.domain_bits - _log2(self.tile)

    @property
    def tail_depth(self) -> int:
        """Depth of the tail's subtree root (the leftmost descendant of tile root num_full)."""
        return self.domain_bits - _log2(self.tail_tile) if self.tail else self.depth

    @property
    def pages_read(self) -> int:
        """Database rows one scan reads: every page once, the tail exactly (no over-read)."""
        return self.num_full * self.tile + self.tail

    @property
    def leaves_expanded(self) -> int:
        """DPF outputs computed per key below the tile roots (the tail's subtree included)."""
        return self.num_full * self.tile + self.tail_tile


def scan_plan(num_pages: int, domain_bits: int, spec: EngineSpec, num_keys: int = 1) -> ScanPlan:
    """The plan ``scan`` follows for this database, domain, spec and batch size."""
    t = tile_size(num_pages, domain_bits, spec, num_keys)
    num_full, tail = divmod(num_pages, t)
    return ScanPlan(num_pages, domain_bits, t, num_full, tail, _next_pow2(tail) if tail else 0)


def scan_bytes_read(num_pages: int, spec: EngineSpec, num_keys: int, domain_bits: int | None = None) -> int:
    """Database bytes one scan of ``num_keys`` keys reads (a batch of Q queries vmapped through
    ``query_scan`` is one scan of 3Q keys). domain_bits defaults to the smallest domain holding N."""
    n = domain_bits_for(num_pages) if domain_bits is None else domain_bits
    return scan_plan(num_pages, n, spec, num_keys).pages_read * PAGE_BYTES


def _check(pages_words: jax.Array, num_pages: int, n: int) -> None:
    if pages_words.ndim != 2 or pages_words.shape[1] != PAGE_WORDS or pages_words.dtype != jnp.uint32:
        raise ValueError(f"pages_words must be (P, {PAGE_WORDS}) uint32, got {pages_words.shape} {pages_words.dtype}")
    if not 1 <= num_pages <= pages_words.shape[0]:
        raise ValueError(f"{num_pages=} must be in [1, {pages_words.shape[0]}] (rows of pages_words)")
    if num_pages > 1 << n:
        raise ValueError(f"{num_pages=} exceeds the DPF domain 2^{n}: generate keys with more domain_bits")


def _scan(pages_words: jax.Array, keys: KeyBatch, num_pages: int, spec: EngineSpec, engine: Engine) -> jax.Array:
    """Every key to the tile roots once, then the full tiles in a loop and the ragged tail as its own step
    (scan_plan): the page range [0, num_pages) of ``_scan_range``, which also serves shards."""
    _check(pages_words, num_pages, keys.domain_bits)
    return _scan_range(pages_words, keys, 0, num_pages, spec, engine)


def scan(pages_words: jax.Array, keys: KeyBatch, *, num_pages: int, spec: EngineSpec) -> jax.Array:
    """Server answers of K keys over pages [0, num_pages): (K, 1024) uint32.

    Pure; call inside jit with num_pages and spec static (see make_answer_fn). Vmappable over a
    leading query axis of ``keys`` (pages unbatched). Rows of pages_words from num_pages on are
    never read.
    """
    return _scan(pages_words, keys, num_pages, spec, get(spec.name))


def query_scan(num_pages: int, spec: EngineSpec) -> Callable[[jax.Array, KeyBatch], jax.Array]:
    """``scan`` with its static arguments bound, whose vmap over queries is ONE pass.

    Plain vmap would batch every op inside the scan over the query axis; a Pallas masked-XOR then
    gets the query axis as an outer grid axis and re-reads each page tile once per query. Here a
    vmap over keys (Q, K, ...) instead flattens them into Q*K keys of one scan, so whichever way a
    strategy batches (vmap, lax.map with batch_size), a (sub)batch reads the database once.
    Shared per (num_pages, spec, engine)."""
    return _query_scan(num_pages, spec, get(spec.name))


@functools.cache
def _query_scan(num_pages: int, spec: EngineSpec, engine: Engine) -> Callable[[jax.Array, KeyBatch], jax.Array]:
    return _one_pass_vmap(functools.partial(_scan, num_pages=num_pages, spec=spec, engine=engine))


def per_database(base: Callable[[jax.Array, KeyBatch], jax.Array], pages: jax.Array, keys: KeyBatch,
                 keys_batched: KeyBatch) -> jax.Array:
    """A custom_vmap rule's answer when the databases themselves are batched: a plain vmap of ``base``."""
    return jax.vmap(base, in_axes=(0, jax.tree.map(lambda b: 0 if b else None, keys_batched)))(pages, keys)


def queries_batched(axis_size: int, keys: KeyBatch, keys_batched: KeyBatch) -> KeyBatch:
    """Every field of ``keys`` with the vmapped query axis in front (unbatched fields broadcast)."""
    return jax.tree.map(lambda x, b: x if b else jnp.broadcast_to(x, (axis_size, *x.shape)), keys, keys_batched)


def _one_pass_vmap(base: Callable[[jax.Array, KeyBatch], jax.Array]) -> Callable[[jax.Array, KeyBatch], jax.Array]:
    """``base`` whose vmap over a query axis of the keys flattens the queries into one batch of keys."""

    @jax.custom_batching.custom_vmap
    def fn(pages_words: jax.Array, keys: KeyBatch) -> jax.Array:
        return base(pages_words, keys)

    @fn.def_vmap
    def _one_pass(axis_size, in_batched, pages_words, keys):
        pages_batched, keys_batched = in_batched
        if pages_batched:  # several databases: nothing to share
            return per_database(base, pages_words, keys, keys_batched), True
        keys = queries_batched(axis_size, keys, keys_batched)
        per_query = keys.root_t.shape[1]
        flat = jax.tree.map(lambda x: x.reshape(axis_size * per_query, *x.shape[2:]), keys)
        out = fn(pages_words, flat)  # nested vmaps flatten again, level by level
        return out.reshape(axis_size, per_query, out.shape[-1]), True

    return fn


# --------------------------------------------------------------------------- a page range, and sharded scans

def _scan_range(pages_words: jax.Array, keys: KeyBatch, start: int, count: int, spec: EngineSpec, engine: Engine) -> jax.Array:
    """Answers of K keys over global pages [start, start + count), held as rows [0, count) of
    ``pages_words`` (a shard). The shard's own plan: tile T = tile_size(count); an unaligned head
    inside tile start // T (that tile's subtree expanded, its last pages used), full tiles, and the
    ragged tail as its own step (a subtree of next_pow2(tail) leaves). Every key is expanded to the tile
    roots of the whole domain once."""
    n = keys.domain_bits
    if count == 0:
        return jnp.zeros((keys.num_keys, PAGE_WORDS), jnp.uint32)
    if start + count > 1 << n:
        raise ValueError(f"pages [{start}, {start + count}) exceed the DPF domain 2^{n}")
    _check(pages_words, count, n)
    root_seed, root_t, seed_cw, t_cw, final_cw = (jnp.asarray(f) for f in keys)
    tile = tile_size(count, n, spec, keys.num_keys)
    d, end = n - _log2(tile), start + count
    top_seeds, top_ts = expand_nodes_xla(root_seed[:, None, :], root_t[:, None], seed_cw[:, :d], t_cw[:, :d],
                                         unroll=spec.resolved_unroll, doubling_levels=0)

    def tile_xor(nodes: tuple[jax.Array, jax.Array], depth: int, window: Window) -> jax.Array:
        subtrees = Subtrees(*nodes, seed_cw[:, depth:], t_cw[:, depth:], final_cw)
        return engine.expand_xor(spec, pages_words, subtrees, window)

    acc = jnp.zeros((root_t.shape[0], PAGE_WORDS), jnp.uint32)
    first = -(-start // tile)  # the first tile that starts inside the range
    head_end = min(end, first * tile)
    if head_end > start:  # pages before the first aligned tile: part of tile start // tile
        j = start // tile
        acc = acc ^ tile_xor((top_seeds[:, j : j + 1], top_ts[:, j : j + 1]), d, Window(0, start - j * tile, head_end - start))
    if head_end == end:
        return acc
    num_full, tail = divmod(end - first * tile, tile)
    base_row = first * tile - start

    def body(i: jax.Array, a: jax.Array) -> jax.Array:
        j = first + i
        node = (lax.dynamic_slice_in_dim(top_seeds, j, 1, axis=1), lax.dynamic_slice_in_dim(top_ts, j, 1, axis=1))
        return a ^ tile_xor(node, d, Window(base_row + i * tile, 0, tile))

    if num_full:
        acc = lax.fori_loop(0, num_full, body, acc)
    if tail:
        j, td = first + num_full, n - _log2(_next_pow2(tail))
        seeds, ts = descend_left(top_seeds[:, j], top_ts[:, j], seed_cw[:, d:td], t_cw[:, d:td])
        acc = acc ^ tile_xor((seeds[:, None], ts[:, None]), td, Window(base_row + num_full * tile, 0, tail))
    return acc


def scan_range(pages_words: jax.Array, keys: KeyBatch, *, start: int, count: int, spec: EngineSpec) -> jax.Array:
    """Server answers of K keys over global pages [start, start + count) held as rows [0, count) of
    ``pages_words``: (K, 1024) uint32. Pure (start, count, spec static); XOR over a partition of
    [0, N) equals ``scan`` over N pages."""
    return _scan_range(pages_words, keys, start, count, spec, get(spec.name))


def shard_bounds(num_pages: int, num_shards: int) -> tuple[tuple[int, int], ...]:
    """(start, count) of each shard: ceil(N / D) rows per device, the last shard ragged (or empty)."""
    if num_shards < 1:
        raise ValueError(f"{num_shards=} must be >= 1")
    rows = shard_rows(num_pages, num_shards)
    return tuple((i * rows, max(0, min(rows, num_pages - i * rows))) for i in range(num_shards))


def sharded_query_scan(num_pages: int, spec: EngineSpec, mesh: jax.sharding.Mesh, axis: str) -> Callable[[jax.Array, KeyBatch], jax.Array]:
    """``query_scan`` over pages sharded by rows along mesh axis ``axis`` ((D * ceil(N/D), 1024),
    NamedSharding P(axis); rows past N are never read). Each device scans its own page range with
    its own plan (``shard_bounds``; the branch is chosen by the device's index), for all keys; the
    partial answers are all-gathered and XOR-reduced, so the answer is exact and replicated.
    vmap over queries is one pass (per device) like ``query_scan``."""
    return _sharded_query_scan(num_pages, spec, get(spec.name), mesh, axis)


@functools.cache
def _sharded_query_scan(num_pages: int, spec: EngineSpec, engine: Engine, mesh: jax.sharding.Mesh, axis: str
                        ) -> Callable[[jax.Array, KeyBatch], jax.Array]:
    from jax.sharding import PartitionSpec as P

    branches = [functools.partial(_scan_range, start=s, count=c, spec=spec, engine=engine)
                for s, c in shard_bounds(num_pages, mesh.shape[axis])]

    def local(pages_local: jax.Array, keys: KeyBatch) -> jax.Array:
        part = lax.switch(lax.axis_index(axis), branches, pages_local, keys)
        return xor_reduce(lax.all_gather(part, axis), 0)

    return _one_pass_vmap(jax.shard_map(local, mesh=mesh, in_specs=(P(axis), P()), out_specs=P(), check_vma=False))


def make_answer_fn(num_pages: int, spec: EngineSpec) -> Callable[[jax.Array, KeyBatch], jax.Array]:
    """Jitted ``fn(pages_words, keybatch) -> (K, 1024) u32``, shared by every caller with the same
    (num_pages, spec, engine) so compiled executables are reused (jit caches per shape)."""
    return _answer_fn(num_pages, spec, get(spec.name))


@functools.cache
def _answer_fn(num_pages: int, spec: EngineSpec, engine: Engine) -> Callable[[jax.Array, KeyBatch], jax.Array]:
    return jax.jit(_query_scan(num_pages, spec, engine))


def full_eval_jax(keys: KeyBatch, spec: EngineSpec) -> jax.Array:
    """All 2^n DPF outputs of K keys, (K, 2^n, 4) uint32, in index order (tests and benchmarks)."""
    return _full_eval(keys, spec, get(spec.name))


@functools.partial(jax.jit, static_argnames=("spec", "engine"))
def _full_eval(keys: KeyBatch, spec: EngineSpec, engine: Engine) -> jax.Array:
    root_seed, root_t, seed_cw, t_cw, final_cw = (jnp.asarray(f) for f in keys)
    return engine.expand(spec, Subtrees(root_seed[:, None, :], root_t[:, None], seed_cw, t_cw, final_cw))


def replicated_query_scan(num_pages: int, spec: EngineSpec, mesh: jax.sharding.Mesh, axis: str
                          ) -> Callable[[jax.Array, KeyBatch], jax.Array]:
    """``query_scan`` on a database replicated over ``mesh``: one query runs as it is (the same on
    every device); a vmap over Q queries pads Q to a multiple of D (repeating the last query), gives
    each device Q/D of them (shard_map along ``axis``) and runs them as one pass there."""
    return _replicated_query_scan(num_pages, spec, get(spec.name), mesh, axis)


@functools.cache
def _replicated_query_scan(num_pages: int, spec: EngineSpec, engine: Engine, mesh: jax.sharding.Mesh, axis: str
                           ) -> Callable[[jax.Array, KeyBatch], jax.Array]:
    from jax.sharding import PartitionSpec as P

    base = _query_scan(num_pages, spec, engine)
    d = mesh.shape[axis]
    split = jax.shard_map(lambda pages, keys: jax.vmap(base, in_axes=(None, 0))(pages, keys),
                          mesh=mesh, in_specs=(P(), P(axis)), out_specs=P(axis), check_vma=False)

    @jax.custom_batching.custom_vmap
    def fn(pages: jax.Array, keys: KeyBatch) -> jax.Array:
        return base(pages, keys)

    @fn.def_vmap
    def _split(axis_size, in_batched, pages, keys):
        pages_batched, keys_batched = in_batched
        if pages_batched:  # several databases: nothing to share
            return per_database(base, pages, keys, keys_batched), True
        keys = queries_batched(axis_size, keys, keys_batched)
        pad = -axis_size % d
        if pad:
            keys = jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]), keys)
        return split(pages, keys)[:axis_size], True

    return fn
