"""Engines by name: the static ``EngineSpec`` and the registry of op sets (``EngineOps``).

An op set is the two engine-interface ops (docs/engine-interface.md): ``expand_levels`` and
``masked_xor``, plus an optional in-place ``masked_xor_at``, an optional fused ``expand_xor_at`` (a tile's
masks expanded and used in one kernel, never stored) and an optional ``layout`` (the engine's own
database layout, built once per database: ``EngineOps.prepare``). "xla" is registered here; other engines
register on import (``_LAZY_ENGINE_MODULES`` names the module that registers each). Compiled scans
are cached per op set (scan.py keys its caches on the ``EngineOps`` value), so re-registering a
name never serves a program traced with the old ops. Apart from those program caches, the registry
is the package's only module-level mutable state.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable

import jax
import numpy as np

from .chacha_jax import default_unroll
from .xla_ops import default_doubling_levels, expand_levels_xla, masked_xor_xla

__all__ = ["EngineSpec", "EngineOps", "ExpandXorFn", "LayoutFn", "RowReader", "register_ops", "unregister_ops", "registered_engines",
           "available_engines", "get_ops"]


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """Static engine configuration (hashable: used as a static argument to jit).

    name: registered op set ("xla", "pallas", or any name given to register_ops).
    tile_pages: pages per scan step (power of two); bounds the live masks to (K, tile_pages, 4).
    mask_budget_mib: if set, the tile shrinks (by powers of two) until a batch's masks, K x tile x
        16 bytes, fit this many MiB: one query gets huge tiles (few loop steps), 96 keys smaller ones.
    unroll: ChaCha8 rounds unrolled (GPU) or looped (fast CPU compile); None = default_unroll().
    doubling_levels: XLA expansion only: how many of the last GGM levels of each tile are expanded
        by doubling (least arithmetic, but each level adds a whole ChaCha8 pair to the program and
        to its compile time); the levels above run in a fixed-shape loop. None = 3 when unrolled,
        0 otherwise (see xla_ops.expand_nodes_xla).
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
        if not _is_int(tp) or tp < 1 or tp & (tp - 1):
            raise ValueError(f"{self.tile_pages=} must be a power of two (>= 1)")
        if self.unroll is not None and not isinstance(self.unroll, bool):
            raise ValueError(f"{self.unroll=} must be True, False or None")
        mb = self.mask_budget_mib
        if mb is not None and (not _is_int(mb) or mb < 1):
            raise ValueError(f"{self.mask_budget_mib=} must be None or an int >= 1")
        dl = self.doubling_levels
        if dl is not None and (not _is_int(dl) or dl < 0):
            raise ValueError(f"{self.doubling_levels=} must be None or an int >= 0")

    @property
    def resolved_unroll(self) -> bool:
        return default_unroll() if self.unroll is None else self.unroll

    @property
    def resolved_doubling_levels(self) -> int:
        return default_doubling_levels(self.resolved_unroll) if self.doubling_levels is None else self.doubling_levels


# read(lo, hi) -> rows [lo, hi) of the raw database, (hi - lo, 1024) uint32 (a device or numpy array).
RowReader = Callable[[int, int], jax.Array | np.ndarray]
# layout(read, num_pages) -> the engine's database on the device, built from the raw rows read by ``read``
# (in as many pieces as it likes: the raw database need never be resident), handed to the scan as pages_words.
LayoutFn = Callable[[RowReader, int], jax.Array]
# expand_xor_at(spec, pages_words, row, seeds, ts, seed_cw, t_cw, final_cw, lo, count) -> (K, 1024): what
# masked_xor_at(pages_words, row, expand_levels(seeds, ts, seed_cw, t_cw, final_cw)[:, lo:lo + count]) gives,
# in one step (row: int32 scalar, may be traced; lo, count: static ints).
ExpandXorFn = Callable[..., jax.Array]


# Optional keywords of an expand_levels op that the scan fills from the EngineSpec.
_SPEC_KWARGS = ("unroll", "doubling_levels")


@dataclasses.dataclass(frozen=True)
class EngineOps:
    """One registered op set. Hashable (functions by identity): the scan's caches key on it."""

    expand_levels: Callable[..., jax.Array]
    masked_xor: Callable[[jax.Array, jax.Array], jax.Array]
    expand_kwargs: frozenset[str]  # which of _SPEC_KWARGS expand_levels accepts
    # Optional: masked_xor_at(pages_words, page_offset, masks) reads the tile in place; without it
    # the scan slices the tile first (free for XLA, which fuses the slice; a copy before a kernel).
    masked_xor_at: Callable[[jax.Array, jax.Array | int, jax.Array], jax.Array] | None = None
    # Optional: the engine's own database layout (None: the raw (N, 1024) pages are scanned as they are).
    layout: LayoutFn | None = None
    # Optional: the tile's expansion and masked XOR fused (ExpandXorFn); without it ``expand_xor`` composes the two.
    expand_xor_at: ExpandXorFn | None = None
    # Optional: step_path(num_keys) -> what a scan step of that many keys runs on this backend, for engines
    # whose step takes one of several paths (fused: its CUDA kernel or the Pallas ops); recorded on each cell.
    step_path: Callable[[int], str] | None = None

    def prepare(self, pages_words: jax.Array, num_pages: int) -> jax.Array:
        """The database the scan of this op set reads, from a resident raw one: ``pages_words`` itself,
        or the engine's layout of its first ``num_pages`` rows (a new array: build it once per
        database, time it apart like a compile)."""
        if self.layout is None:
            return pages_words
        return self.layout(lambda lo, hi: pages_words[lo:hi], num_pages)

    def expand(self, spec: EngineSpec, *args: jax.Array) -> jax.Array:
        """``expand_levels(*args)`` with the spec's values for the keywords this op accepts."""
        values = {"unroll": spec.resolved_unroll, "doubling_levels": spec.resolved_doubling_levels}
        return self.expand_levels(*args, **{k: values[k] for k in self.expand_kwargs})

    def expand_xor(self, spec: EngineSpec, pages_words: jax.Array, row: jax.Array | int, seeds: jax.Array, ts: jax.Array,
                   seed_cw: jax.Array, t_cw: jax.Array, final_cw: jax.Array, lo: int, count: int) -> jax.Array:
        """XOR over pages [row, row + count) of page & mask, the masks being leaves [lo, lo + count) of the
        subtrees (seeds, ts) expanded by seed_cw.shape[1] levels: (K, 1024) u32. The engine's fused op if it
        has one, else ``expand_then_xor``."""
        if self.expand_xor_at is not None:
            return self.expand_xor_at(spec, pages_words, row, seeds, ts, seed_cw, t_cw, final_cw, lo, count)
        return self.expand_then_xor(spec, pages_words, row, seeds, ts, seed_cw, t_cw, final_cw, lo, count)

    def expand_then_xor(self, spec: EngineSpec, pages_words: jax.Array, row: jax.Array | int, seeds: jax.Array,
                        ts: jax.Array, seed_cw: jax.Array, t_cw: jax.Array, final_cw: jax.Array, lo: int,
                        count: int) -> jax.Array:
        """``expand_xor`` composed from this engine's two ops: its expansion, then its masked XOR (the tile
        read in place where it can). What a fused engine falls back to where its kernel cannot run."""
        masks = self.expand(spec, seeds, ts, seed_cw, t_cw, final_cw)
        if (lo, count) != (0, masks.shape[1]):
            masks = masks[:, lo : lo + count]
        if self.masked_xor_at is not None:
            return self.masked_xor_at(pages_words, row, masks)
        return self.masked_xor(jax.lax.dynamic_slice_in_dim(pages_words, row, count, axis=0), masks)


_OPS: dict[str, EngineOps] = {}
# Engines living in other modules, imported on first use so EngineSpec(name=...) just works.
_LAZY_ENGINE_MODULES = {"pallas": "morphogen_exp.pir.pallas_ops", "bitsliced": "morphogen_exp.pir.bitsliced_ops",
                        "fused": "morphogen_exp.pir.fused"}


def register_ops(
    name: str,
    expand_levels_fn: Callable[..., jax.Array],
    masked_xor_fn: Callable[[jax.Array, jax.Array], jax.Array],
    masked_xor_at_fn: Callable[[jax.Array, jax.Array | int, jax.Array], jax.Array] | None = None,
    layout_fn: LayoutFn | None = None,
    expand_xor_at_fn: ExpandXorFn | None = None,
    step_path_fn: Callable[[int], str] | None = None,
) -> EngineOps:
    """Register an op set under ``name`` (re-registering replaces it) and return it.

    Signatures (docs/engine-interface.md): ``expand_levels_fn(seeds, ts, seed_cw, t_cw, final_cw)``,
    optionally with keywords ``unroll`` / ``doubling_levels`` (then the EngineSpec's values are
    passed), and ``masked_xor_fn(pages, masks)``. Both must be traceable under jit and vmap.
    ``masked_xor_at_fn(pages_words, page_offset, masks)`` reads the tile in place; ``layout_fn(read,
    num_pages)`` builds the engine's own database (then the scan's pages_words is that array, and
    ``masked_xor_at_fn`` must be given: a tile cut from a layout is not a tile of pages).
    ``expand_xor_at_fn`` (ExpandXorFn) fuses a tile's expansion and masked XOR; the scan then calls it instead.
    ``step_path_fn(num_keys)`` names the path a step of that many keys takes (the engine's dispatch reads it too).
    """
    if layout_fn is not None and masked_xor_at_fn is None:
        raise ValueError(f"engine {name!r}: a layout_fn needs a masked_xor_at_fn (the scan reads the layout in place)")
    params = inspect.signature(expand_levels_fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        kwargs = frozenset(_SPEC_KWARGS)
    else:
        kwargs = frozenset(k for k in _SPEC_KWARGS if k in params)
    ops = EngineOps(expand_levels_fn, masked_xor_fn, kwargs, masked_xor_at_fn, layout_fn, expand_xor_at_fn, step_path_fn)
    _OPS[name] = ops
    return ops


def unregister_ops(name: str) -> None:
    """Forget ``name`` (no error if absent): tests that register throwaway engines clean up with it."""
    _OPS.pop(name, None)


def registered_engines() -> list[str]:
    return sorted(_OPS)


def available_engines() -> list[str]:
    """Engines a config may name: registered ones, then those imported on first use."""
    return list(dict.fromkeys([*_OPS, *_LAZY_ENGINE_MODULES]))


def get_ops(name: str) -> EngineOps:
    """The op set registered as ``name`` (importing its module on first use); ValueError if unknown."""
    if name not in _OPS and name in _LAZY_ENGINE_MODULES:
        try:
            importlib.import_module(_LAZY_ENGINE_MODULES[name])
        except ImportError as e:
            raise ValueError(f"engine {name!r} could not be loaded ({e})") from e
    if name not in _OPS:
        raise ValueError(f"unknown engine {name!r}; registered engines: {', '.join(map(repr, available_engines()))}")
    return _OPS[name]


register_ops("xla", expand_levels_xla, masked_xor_xla)
