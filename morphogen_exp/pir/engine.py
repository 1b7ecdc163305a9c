"""An engine is one ``Engine`` object, built at the end of its own module; ``get(name)`` imports that module.

An engine owns its two interface ops (docs/engine-interface.md): ``expand_levels`` (subtrees to leaves,
the DPF masks) and ``masked_xor`` (a tile of pages against the masks); optionally an in-place
``masked_xor_at``, a fused ``expand_xor_at`` (a tile's masks expanded and used in one step, never
stored), its own database ``layout``; the placements it runs under, the path a step takes
(``step_path``) and its memory model (``device_bytes``). The scan's compiled programs are cached on the
``Engine`` value (a frozen dataclass: functions compare by identity), so an engine registered again under
a name with other ops never gets a program traced with the old ones.

The module is the registry: ``_MODULES`` names the module of each of the package's engines, imported on
first use; ``register`` adds an engine object under a new name (tests, benchmark variants).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np

from .pages import PAGE_BYTES
from .spec import EngineSpec

__all__ = ["ALL_PLACEMENTS", "Engine", "ExpandFn", "ExpandXorFn", "LayoutFn", "MaskedXorAtFn", "MaskedXorFn",
           "RowReader", "Subtrees", "TileFn", "Window", "available_engines", "get", "mask_working_set_bytes",
           "raw_database_bytes", "register", "unregister"]

ALL_PLACEMENTS = frozenset({"single", "replicated", "sharded"})


class Subtrees(NamedTuple):
    """K keys' nodes at one depth and the corrections of the L levels below them (a JAX pytree):
    seeds (K, R, 4) u32, ts (K, R), seed_cw (K, L, 4), t_cw (K, L, 2), final_cw (K, 4). Their leaves,
    R * 2**L per key in index order, are the DPF outputs (the page masks) below those nodes."""

    seeds: jax.Array
    ts: jax.Array
    seed_cw: jax.Array
    t_cw: jax.Array
    final_cw: jax.Array

    @property
    def num_keys(self) -> int:
        return int(self.ts.shape[0])

    @property
    def levels(self) -> int:
        """L, the levels from the nodes down to their leaves."""
        return int(self.seed_cw.shape[1])


@functools.partial(jax.tree_util.register_dataclass, data_fields=["row"], meta_fields=["lo", "count"])
@dataclasses.dataclass(frozen=True)
class Window:
    """Which leaves mask which pages in one scan step: leaves [lo, lo + count) of the subtrees mask
    database rows [row, row + count). ``row`` may be traced (an int32 scalar); ``lo`` and ``count`` are
    static ints (a pytree whose only leaf is ``row``)."""

    row: jax.Array | int
    lo: int
    count: int


# read(lo, hi) -> rows [lo, hi) of the raw database, (hi - lo, 1024) uint32 (a device or numpy array).
RowReader = Callable[[int, int], jax.Array | np.ndarray]
# layout(read, num_pages) -> the engine's database on the device, built from the raw rows read by ``read``
# (in as many pieces as it likes: the raw database need never be resident), handed to the scan as pages_words.
LayoutFn = Callable[[RowReader, int], jax.Array]
# expand_levels(seeds, ts, seed_cw, t_cw, final_cw[, unroll=, doubling_levels=]) -> leaves (K, R * 2**L, 4) u32.
ExpandFn = Callable[..., jax.Array]
# masked_xor(pages (T, 1024), masks (K, T, 4)) -> (K, 1024) u32.
MaskedXorFn = Callable[[jax.Array, jax.Array], jax.Array]
# masked_xor_at(pages_words, page_offset, masks (K, T, 4)): the tile of T pages at page_offset, read in place.
MaskedXorAtFn = Callable[[jax.Array, jax.Array | int, jax.Array], jax.Array]
# expand_xor_at(spec, pages_words, subtrees, window) -> (K, 1024): what masked_xor_at(pages_words, window.row,
# leaves of subtrees[:, window.lo:window.lo + window.count]) gives, in one step.
ExpandXorFn = Callable[[EngineSpec, jax.Array, Subtrees, Window], jax.Array]
# tile(num_keys) -> pages per scan step for a batch of that many keys.
TileFn = Callable[[int], int]

# Optional keywords of an expand_levels op that the scan fills from the EngineSpec.
_SPEC_KWARGS = ("unroll", "doubling_levels")


def raw_database_bytes(num_pages: int) -> int:
    """The raw pages as they are: what an engine without a layout holds."""
    return num_pages * PAGE_BYTES


def no_build_bytes(num_pages: int) -> int:
    """No layout, nothing to build."""
    return 0


def mask_working_set_bytes(num_keys: int, tile_pages: TileFn) -> int:
    """Bytes a scan of ``num_keys`` keys keeps live besides the database when it stores its masks: per key,
    one tile of masks and the GGM level temporaries (about 4 tile-sized u32x4 arrays), plus its answer and
    key material."""
    return num_keys * (tile_pages(num_keys) * 16 * 4 + 2 * PAGE_BYTES + 4096)


def _expand_kwargs(expand_levels: ExpandFn) -> frozenset[str]:
    params = inspect.signature(expand_levels).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return frozenset(_SPEC_KWARGS)
    return frozenset(k for k in _SPEC_KWARGS if k in params)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Engine:
    """One engine: its ops, layout, placements, step path and memory model (hashable; built with keywords)."""

    name: str
    expand_levels: ExpandFn
    masked_xor: MaskedXorFn
    # Reads the tile in place; without it the scan slices the tile first (free for XLA, a copy before a kernel).
    masked_xor_at: MaskedXorAtFn | None = None
    # The tile's expansion and masked XOR in one step; without it ``expand_xor`` composes the two ops.
    expand_xor_at: ExpandXorFn | None = None
    # The engine's own database layout (None: the raw (N, 1024) pages are scanned as they are).
    layout: LayoutFn | None = None
    placements: frozenset[str] = ALL_PLACEMENTS
    # step_path(num_keys) -> what a scan step of that many keys runs on this backend (recorded on each cell).
    step_path: Callable[[int], str] | None = None
    # The memory model: database_bytes(num_pages), build_bytes(num_pages) (the layout's build scratch),
    # working_set_bytes(num_keys, tile) (what a scan keeps live besides the database).
    database_bytes: Callable[[int], int] = raw_database_bytes
    build_bytes: Callable[[int], int] = no_build_bytes
    working_set_bytes: Callable[[int, TileFn], int] = mask_working_set_bytes
    # Said once before a cell that runs without a GPU, where the timings mean little (e.g. an interpret mode).
    cpu_note: str | None = None
    expand_kwargs: frozenset[str] = dataclasses.field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Engine(name={self.name!r}): the name must be a non-empty string")
        if self.layout is not None and self.masked_xor_at is None:
            raise ValueError(f"engine {self.name!r}: a layout needs a masked_xor_at (the scan reads the layout in place)")
        if not self.placements or not self.placements <= ALL_PLACEMENTS:
            raise ValueError(f"engine {self.name!r}: placements {sorted(self.placements)} must be a non-empty subset of "
                             f"{sorted(ALL_PLACEMENTS)}")
        object.__setattr__(self, "expand_kwargs", _expand_kwargs(self.expand_levels))

    def prepare(self, pages_words: jax.Array, num_pages: int) -> jax.Array:
        """The database this engine's scan reads, from a resident raw one: ``pages_words`` itself, or the
        engine's layout of its first ``num_pages`` rows (a new array: build it once per database, time it
        apart like a compile)."""
        if self.layout is None:
            return pages_words
        return self.layout(lambda lo, hi: pages_words[lo:hi], num_pages)

    def expand(self, spec: EngineSpec, subtrees: Subtrees) -> jax.Array:
        """``expand_levels`` of the subtrees with the spec's values for the keywords this op accepts."""
        values = {"unroll": spec.resolved_unroll, "doubling_levels": spec.resolved_doubling_levels}
        return self.expand_levels(*subtrees, **{k: values[k] for k in self.expand_kwargs})

    def expand_xor(self, spec: EngineSpec, pages_words: jax.Array, subtrees: Subtrees, window: Window) -> jax.Array:
        """XOR over pages [row, row + count) of page & mask, the masks being leaves [lo, lo + count) of the
        subtrees: (K, 1024) u32. The engine's fused op if it has one, else ``expand_then_xor``."""
        if self.expand_xor_at is not None:
            return self.expand_xor_at(spec, pages_words, subtrees, window)
        return self.expand_then_xor(spec, pages_words, subtrees, window)

    def expand_then_xor(self, spec: EngineSpec, pages_words: jax.Array, subtrees: Subtrees, window: Window) -> jax.Array:
        """``expand_xor`` composed from this engine's two ops: its expansion, then its masked XOR (the tile
        read in place where it can). What a fused engine falls back to where its kernel cannot run."""
        masks = self.expand(spec, subtrees)
        lo, count = window.lo, window.count
        if (lo, count) != (0, masks.shape[1]):
            masks = masks[:, lo : lo + count]
        if self.masked_xor_at is not None:
            return self.masked_xor_at(pages_words, window.row, masks)
        return self.masked_xor(jax.lax.dynamic_slice_in_dim(pages_words, window.row, count, axis=0), masks)

    def device_bytes(self, num_pages: int, num_keys: int, tile: TileFn) -> int:
        """A cell's device bytes on this engine: its database, plus the larger of the layout's build scratch
        (before any scan) and a scan's working set for ``num_keys`` keys."""
        return self.database_bytes(num_pages) + max(self.build_bytes(num_pages), self.working_set_bytes(num_keys, tile))


# --------------------------------------------------------------------------- the registry

_MODULES = {"xla": "morphogen_exp.pir.xla_ops", "pallas": "morphogen_exp.pir.pallas_ops",
            "bitsliced": "morphogen_exp.pir.bitsliced_ops", "fused": "morphogen_exp.pir.fused_ops"}
_ADDED: dict[str, Engine] = {}  # engines registered as objects (tests, benchmark variants)


def available_engines() -> list[str]:
    """Engines a config may name: the package's, then those registered as objects."""
    return list(dict.fromkeys([*_MODULES, *_ADDED]))


def get(name: str) -> Engine:
    """The engine named ``name`` (its module imported on first use); ValueError (one line) if unknown."""
    if name in _ADDED:
        return _ADDED[name]
    if name not in _MODULES:
        raise ValueError(f"unknown engine {name!r}; engines: {', '.join(map(repr, available_engines()))}")
    try:
        engine = importlib.import_module(_MODULES[name]).ENGINE
    except ImportError as e:
        raise ValueError(f"engine {name!r} could not be loaded ({e})") from e
    if not isinstance(engine, Engine) or engine.name != name:
        raise ValueError(f"module {_MODULES[name]} must end with ENGINE = Engine(name={name!r}, ...)")
    return engine


def register(engine: Engine) -> Engine:
    """Add ``engine`` under its name (registering the name again replaces it) and return it. The
    package's own engine names are taken: a variant of one gets a name of its own."""
    if not isinstance(engine, Engine):
        raise TypeError(f"register takes an Engine, got {type(engine).__name__}")
    if engine.name in _MODULES:
        raise ValueError(f"engine name {engine.name!r} is one of the package's engines: give the variant another name")
    _ADDED[engine.name] = engine
    return engine


def unregister(name: str) -> None:
    """Forget an engine added with ``register`` (no error if absent): tests clean up with it."""
    _ADDED.pop(name, None)
