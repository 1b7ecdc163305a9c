"""What a batching strategy is: a builder, registered by name, that turns the shared single-query
engine function into a batch path for Q queries.

A strategy module defines one `build(knobs, ctx) -> BatchPath` decorated with `@register(name)`;
`conf/strategy/<name>.yaml` carries its knobs. Nothing else needs to change to add one.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import jax

from .. import paths
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


CONF_DIR = paths.conf_dir()
_NOT_KNOBS = ("name", "original", "guard_env")


def knobs_of(name: str) -> list[str]:
    """The knobs a strategy declares: its conf/strategy/<name>.yaml keys but name, original and guard_env."""
    f = CONF_DIR / "strategy" / f"{name}.yaml"
    if not f.is_file():
        return []
    from omegaconf import OmegaConf

    return [str(k) for k in OmegaConf.load(f) if k not in _NOT_KNOBS]


def _knobs_text(name: str, known: list[str]) -> str:
    return f"{name}'s knobs: {', '.join(f'strategy.{k}' for k in known)}" if known else f"{name} has no knobs"


class _Reads(Mapping[str, Any]):
    """The knobs, recording which ones the builder reads."""

    def __init__(self, knobs: Mapping[str, Any]) -> None:
        self.knobs, self.read = knobs, set[str]()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return self.knobs[key]

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return self.knobs.get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self.knobs)

    def __len__(self) -> int:
        return len(self.knobs)


def check_knobs(name: str, knobs: Mapping[str, Any], q: int) -> None:
    """Build the strategy once on a stub context (no device, nothing compiled): a bad knob raises its
    ConfigError here, when a sweep validates its cells, instead of when the cell runs. A key that is not one
    of the strategy's knobs (`+strategy.tiel=8`) is a setting to fix too, naming the knobs there are."""
    from ..config import ConfigError

    def nothing(pages: Any, keys: Any) -> Any:
        return None

    stub = BuildContext(pages=None, num_pages=1, spec=None, single=nothing, single_jit=nothing, devices=())  # type: ignore[arg-type]
    reads = _Reads(knobs)
    error: ConfigError | None = None
    try:
        _REGISTRY[name](reads, q, stub)
    except ConfigError as err:
        error = err
    known = sorted(set(knobs_of(name)) | reads.read)
    unknown = sorted(str(k) for k in knobs if k not in known)
    if unknown:
        raise ConfigError(f"{', '.join(f'strategy.{k}' for k in unknown)}: not a knob of strategy {name}; "
                          f"{_knobs_text(name, known)}")
    if error is not None:
        raise error


def knob_error(err: BaseException, args: list[str]) -> str | None:
    """Hydra's "Key 'tiel' is not in struct" for `strategy.tiel=8` as one line naming the strategies' knobs
    (the strategies named by `strategy=` on the command line, else the default one); None for other errors."""
    text = f"{err}\n{err.__cause__ or err.__context__ or ''}"
    found = re.search(r"override '\+*strategy\.([\w.]+)'", text) or re.search(r"full_key: strategy\.([\w.]+)", text)
    if not found or "not in struct" not in text:
        return None
    names = sorted(_REGISTRY) or sorted(p.stem for p in (CONF_DIR / "strategy").glob("*.yaml"))
    chosen = [a.split("=", 1)[1] for a in args if a.startswith("strategy=")]
    if chosen:
        value = chosen[-1].strip()
        glob = re.fullmatch(r"glob\((.*)\)", value)
        patterns = [p.strip() for p in (glob.group(1) if glob else value).split(",")]
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)] or patterns
    else:
        default = re.search(r"^\s*-\s*strategy:\s*(\w+)", (CONF_DIR / "config.yaml").read_text(), re.M)
        names = [default.group(1)] if default else names
    return (f"strategy.{found.group(1)}: not a knob of strategy {', '.join(names)}; "
            + "; ".join(_knobs_text(n, knobs_of(n)) for n in names))
