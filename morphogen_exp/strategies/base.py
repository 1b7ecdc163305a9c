"""What a batching strategy is: a builder, registered by name, that turns the shared single-query
engine function into a batch path for Q queries.

A strategy module defines one `build(knobs, ctx) -> BatchPath` decorated with `@register(name)`;
`conf/strategy/<name>.yaml` carries its knobs. Nothing else needs to change to add one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import jax

from ..pir import EngineSpec, KeyBatch

# (pages_words, keys (3, ...)) -> (3, 1024) u32: traceable, not jitted; strategies compose it.
SingleFn = Callable[[jax.Array, KeyBatch], jax.Array]


@dataclass(frozen=True, eq=False)  # hashed by identity: one context per (dataset, engine), a cache key
class BuildContext:
    """Everything a strategy may use: the device database, the engine, and its shared functions."""

    pages: jax.Array            # (N, 1024) u32, device resident
    num_pages: int
    spec: EngineSpec
    single: SingleFn            # traceable single-query function
    single_jit: Callable[[jax.Array, KeyBatch], jax.Array]  # the same, jitted and shared by all cells
    devices: tuple[jax.Device, ...] = field(default_factory=lambda: tuple(jax.local_devices()[:1]))  # the placement's
    placement: str = "single"   # single | replicated | sharded (placement.py): `single` / `single_jit` already do it
    cache: dict[Any, Any] = field(default_factory=dict)  # strategies' compiled functions, per context

    def lane_pages(self) -> tuple[Any, ...]:
        """The database as per-query lanes may use it, one entry per independent device group: each
        device's own copy (replicated), else the one placed array (single: one device; sharded: every
        device takes part in every query)."""
        if self.placement != "replicated" or self.pages is None:
            return (self.pages,)
        return self.memo("lane_pages", lambda: tuple(s.data for s in sorted(self.pages.addressable_shards, key=lambda s: s.device.id)))

    def memo(self, key: Any, make: Callable[[], Any]) -> Any:
        """One object per key for this context (jitted programs, replicas): shared by every cell on
        this database and engine, and dropped with the context when the database changes."""
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]


@dataclass
class BatchPath:
    """A strategy's batch path: `run(keys (Q, 3, ...)) -> answers (Q, 3, 1024)`, asynchronous
    (callers block). `live_queries` bounds how many queries' keys are in flight at once (memory
    estimate); `passes` is how many times one batch reads the database (bytes read = passes x one
    scan's bytes); `info` is what the strategy wants recorded (e.g. what XLA captured)."""

    run: Callable[[KeyBatch], Any]
    live_queries: int
    passes: int = 1
    info: dict[str, Any] = field(default_factory=dict)


class Builder(Protocol):
    def __call__(self, knobs: Mapping[str, Any], q: int, ctx: BuildContext) -> BatchPath: ...


_REGISTRY: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"strategy {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def registered() -> dict[str, Builder]:
    return dict(_REGISTRY)


def knob(knobs: Mapping[str, Any], name: str, lo: int = 1) -> int:
    """An integer strategy knob, validated with a message naming the override to fix."""
    from ..config import ConfigError

    value = knobs.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"strategy.{name} must be an integer >= {lo}, got {value!r}")
    return value


def check_knobs(name: str, knobs: Mapping[str, Any], q: int) -> None:
    """Build the strategy once on a stub context (no device, nothing compiled): a bad knob raises its
    ConfigError here, when a sweep validates its cells, instead of when the cell runs."""
    def nothing(pages: Any, keys: Any) -> Any:
        return None

    stub = BuildContext(pages=None, num_pages=1, spec=None, single=nothing, single_jit=nothing, devices=())  # type: ignore[arg-type]
    _REGISTRY[name](knobs, q, stub)
