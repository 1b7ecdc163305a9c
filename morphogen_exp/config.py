"""The config schema (Hydra structured configs: types and defaults declared once, here) and its
validation into a RunConfig before anything runs.

conf/*.yaml only choose values; OmegaConf rejects a value of the wrong type while composing (so
`resume=no` is False and `parity.xor_check=maybe` is refused, never read as truthiness). Range
checks live in `parse`; every failure is a `ConfigError` whose one-line message says what to fix.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from . import identity
from .errors import ConfigError as ConfigError  # re-exported: the error every module raises

MAX_Q = 32
MAX_SEED = 2**32 - 1  # the synthetic pages and query keys take a 32-bit seed: a larger one would alias a smaller one
PAGE_BYTES = 4096     # a dataset.path file holds whole pages (pir.pages.PAGE_BYTES; config stays free of the engine)


def file_pages(path: str | None, default: int) -> int:
    """conf/dataset's `num_pages: ${file_pages:${.path},N}`: a file's own page count (whole 4096-byte pages, the last
    rounded up), else N (synthetic pages, or a file that cannot be read: datasets.plan_pages says why)."""
    if not path:
        return int(default)
    try:
        return -(-os.stat(os.path.expanduser(path)).st_size // PAGE_BYTES)
    except OSError:
        return int(default)


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("abspath"):
        OmegaConf.register_new_resolver("abspath", lambda p: str(Path(p).expanduser().resolve()))
    if not OmegaConf.has_resolver("file_pages"):
        OmegaConf.register_new_resolver("file_pages", file_pages)


_register_resolvers()


# --------------------------------------------------------------------------- the schema
# Optional[...] / Dict / List spellings: OmegaConf reads these annotations at runtime (py3.10).

@dataclass
class DatasetConfig:
    name: str = MISSING           # the conf/dataset/<name>.yaml that chose it (a label; any yaml there is valid)
    num_pages: int = MISSING
    path: str | None = None    # a raw page-matrix file instead of synthetic pages


@dataclass
class EngineConfig:
    name: str = "xla"
    tile_pages: int = 16384       # pages per scan step (power of two)
    unroll: bool | None = None  # ChaCha8 rounds unrolled? null: the engine decides per backend
    mask_budget_mib: int | None = None


PLACEMENTS = ("single", "replicated", "sharded")


@dataclass
class PlacementConfig:
    """Where the database lives (placement.py): one device, a copy per device, or its pages split over devices."""

    name: str = "single"          # single | replicated | sharded
    devices: int | None = None    # how many devices (null: 1 for single, every device for the others)
    distributed: bool = False     # jax.distributed.initialize() first (multi-host: SLURM / Open MPI detected)


@dataclass
class BenchConfig:
    warmup: int = 1                      # untimed calls after the first (compiling) call
    iterations: int = 3                  # the minimum number of timed samples per path
    max_noise: float = 0.01              # stop once the median's relative noise is below this (> 0)...
    confidence: float = 0.95             # ...at this confidence (0 < c < 1)
    min_time_s: float = 0.0              # time each path at least this long
    max_time_s: float = 3.0              # cap per timed path (GPU matrices: 30, scripts/device_matrix.sh)
    system_metrics_s: float | None = 5.0 # MLflow system metrics (CPU, GPU) sampled this often per cell; null: off
    cell_timeout_s: float | None = None
    memory_cap_gib: float | None = None
    compilation_cache_dir: str | None = None
    finals: bool = True                  # after a sweep's cells: the shipped configuration and its ties head to head
    floors: bool | str = "auto"          # the card's read and expansion floors beside each cell (floors.py): auto = a GPU only


@dataclass
class ParityConfig:
    numpy_reference_queries: int = 1
    numpy_reference_max_pages: int = 1 << 20
    xor_check: bool = True


@dataclass
class MlflowConfig:
    tracking_uri: str = MISSING
    experiment: str = "morphogen_exp"


@dataclass
class DecisionConfig:
    """Types only: the rules and their checks are decision.DecisionRules (from_mapping)."""

    require_parity: bool = True
    min_speedup: float = 1.0
    speedup_from_q: int = 4
    latency_budget_ms: float | None = None
    rank_by: str = "batch_qps"
    tie_within: float = 0.02
    prefer: list[str] = field(default_factory=list)


@dataclass
class Schema:
    """The root config: conf/config.yaml's defaults list fills it group by group."""

    q: int = 4
    max_q: int = MAX_Q
    seed: int = 0
    resume: bool = False
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    strategy: dict[str, Any] = field(default_factory=dict)  # name, original, guard_env + the strategy's own knobs
    engine: EngineConfig = field(default_factory=EngineConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    parity: ParityConfig = field(default_factory=ParityConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)


ConfigStore.instance().store(name="schema", node=Schema)


# --------------------------------------------------------------------------- validated settings

@dataclass(frozen=True)
class StrategyConfig:
    name: str
    original: str
    knobs: Mapping[str, Any] = field(default_factory=dict)  # strategy-specific (threshold, chunk, tile...)
    guard_env: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunConfig:
    q: int
    seed: int
    resume: bool
    dataset: DatasetConfig
    strategy: StrategyConfig
    engine: EngineConfig
    bench: BenchConfig
    parity: ParityConfig
    mlflow: MlflowConfig
    decision: Mapping[str, Any]
    placement: PlacementConfig
    resolved: Mapping[str, Any]  # the whole resolved config, for MLflow params and artifacts

    def identity(self, with_q: bool = True) -> dict[str, Any]:
        """What this cell measures (the config without the settings that measure nothing: identity.py), as a plain
        mapping."""
        return identity.identity(self.resolved, with_q)

    @property
    def config_id(self) -> str:
        """The measured configuration without q: what a rollout would ship (the report groups by it)."""
        return digest(self.identity(with_q=False))


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _int(value: Any, name: str, lo: int | None = None, hi: int | None = None, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer{hint}, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ConfigError(f"{name} must be in {bounds}{hint}, got {value}")
    return value


def _positive(value: float | None, name: str, optional: bool = True) -> None:
    if value is None and optional:
        return
    if value is None or value <= 0:
        raise ConfigError(f"{name} must be a positive number{' or null' if optional else ''}, got {value!r}")


MAX_ITERATIONS = 1_000_000  # bench.iterations: more samples than any cell could take within its time cap


def _check_bench(b: BenchConfig) -> None:
    _int(b.warmup, "bench.warmup", 0)
    _int(b.iterations, "bench.iterations", 1, MAX_ITERATIONS, hint=" (the minimum number of timed samples)")
    _positive(b.max_noise, "bench.max_noise", optional=False)
    if not 0 < b.confidence < 1:
        raise ConfigError(f"bench.confidence must be strictly between 0 and 1 (e.g. 0.95), got {b.confidence!r}")
    if b.min_time_s < 0:
        raise ConfigError(f"bench.min_time_s must be >= 0 seconds, got {b.min_time_s!r}")
    _positive(b.max_time_s, "bench.max_time_s", optional=False)
    if b.max_time_s < b.min_time_s:
        raise ConfigError(f"bench.max_time_s ({b.max_time_s}) must be >= bench.min_time_s ({b.min_time_s})")
    _positive(b.cell_timeout_s, "bench.cell_timeout_s")
    _positive(b.system_metrics_s, "bench.system_metrics_s")
    _positive(b.memory_cap_gib, "bench.memory_cap_gib")
    if b.floors not in (True, False, "auto"):
        raise ConfigError(f"bench.floors must be auto, true or false, got {b.floors!r}")
    if b.floors is True and (backend := jax_backend_here()) not in ("gpu", ""):
        raise ConfigError(f"bench.floors=true needs a GPU (its probes are CUDA kernels) and JAX runs on {backend} here: "
                          "use bench.floors=auto (a GPU only) or false")


@functools.cache
def jax_backend_here() -> str:
    """The backend JAX starts on this machine ('' when it cannot tell), asked of a child process so that this one
    starts none (a launcher must not hold the device its cells need)."""
    try:
        res = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"], capture_output=True,
                             text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = res.stdout.split()
    return lines[-1] if res.returncode == 0 and lines else ""


def _check_engine(e: EngineConfig, known_engines: tuple[str, ...]) -> None:
    if known_engines and e.name not in known_engines:
        raise ConfigError(f"unknown engine {e.name!r}; valid: {', '.join(known_engines)}")
    _int(e.tile_pages, "engine.tile_pages", 1)
    if e.tile_pages & (e.tile_pages - 1):
        raise ConfigError(f"engine.tile_pages must be a power of two, got {e.tile_pages}")
    if e.mask_budget_mib is not None:
        _int(e.mask_budget_mib, "engine.mask_budget_mib", 1)


def _check_placement(p: PlacementConfig) -> None:
    if p.name not in PLACEMENTS:
        raise ConfigError(f"unknown placement {p.name!r}; valid: {', '.join(PLACEMENTS)}")
    if p.devices is not None:
        _int(p.devices, "placement.devices", 1, hint=" (or null: every device)")
        if p.name == "single" and p.devices != 1:
            raise ConfigError(f"placement=single uses one device, got placement.devices={p.devices}; "
                              "use placement=replicated or placement=sharded for more")


# A guard_env name: what `set -a; . selected.env` can set and nothing else (rollout writes the .env).
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
# The allow-list: a guard sets the strategies' own variables and nothing else (never LD_PRELOAD, PATH, BASH_ENV...).
ENV_PREFIX = "MORPHOGEN_GPU_"


def env_value(name: Any, value: Any) -> str:
    """A guard_env entry as the text the environment gets ('True' and True -> 'true'); ConfigError (one line) for a
    name that is not `[A-Z_][A-Z0-9_]*` starting with MORPHOGEN_GPU_ (the allow-list) or a value that is not a
    scalar, or holds a line break or NUL."""
    if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
        raise ConfigError(f"strategy.guard_env: {str(name)[:80]!r} is not an environment variable name "
                          "(capitals, digits and _, not starting with a digit)")
    if not name.startswith(ENV_PREFIX):
        raise ConfigError(f"strategy.guard_env: {name!r} is not a guard variable: a guard sets only {ENV_PREFIX}* names "
                          "(the strategies' settings); rename it or drop it")
    if isinstance(value, bool) or str(value) in ("True", "False"):
        return str(value).lower()
    if value is None or not isinstance(value, (str, int, float)):
        raise ConfigError(f"strategy.guard_env.{name} must be a string, number or boolean, got {value!r}")
    text = str(value)
    if any(c in text for c in "\n\r\0"):
        raise ConfigError(f"strategy.guard_env.{name} must be one line without NUL, got {text[:80]!r}")
    return text


def check_env(env: Mapping[str, Any]) -> dict[str, str]:
    """Every guard_env entry checked (`env_value`): name -> the text the environment gets."""
    return {name: env_value(name, value) for name, value in env.items()}


# The names a guard's .env derives itself, saying what ships (rollout.guard_env_lines writes exactly these): reserved,
# so no strategy's guard_env sets one and no line of a .env can silently override another.
RESERVED_ENV = ("MORPHOGEN_GPU_BATCHING", "MORPHOGEN_GPU_STRATEGY", "MORPHOGEN_GPU_ENGINE", "MORPHOGEN_GPU_PLACEMENT",
                "MORPHOGEN_GPU_DEVICES", "MORPHOGEN_GPU_DRY_RUN")
RESERVED_ENV_PREFIX = "MORPHOGEN_GPU_STRATEGY_"  # one per strategy knob: MORPHOGEN_GPU_STRATEGY_TILE


def reserved_env(name: str) -> bool:
    """`name` is one a guard's .env derives itself (RESERVED_ENV, or a knob's RESERVED_ENV_PREFIX name)."""
    return name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIX)


def check_guard_env(env: Mapping[str, Any]) -> dict[str, str]:
    """A strategy's guard_env checked (`check_env`) and free of the reserved names; ConfigError (one line) naming
    each reserved one it sets."""
    taken = sorted(str(name) for name in env if isinstance(name, str) and reserved_env(name))
    if taken:
        raise ConfigError(f"strategy.guard_env sets {', '.join(taken)}: reserved for the lines a guard's .env derives "
                          f"itself ({', '.join(RESERVED_ENV)}, {RESERVED_ENV_PREFIX}<KNOB>); rename it")
    return check_env(env)


def _strategy(st: dict[str, Any], known_strategies: tuple[str, ...]) -> StrategyConfig:
    name = st.pop("name", None)
    if known_strategies and name not in known_strategies:
        raise ConfigError(f"unknown strategy {name!r}; valid: {', '.join(known_strategies)}")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"strategy.name must be a strategy name, got {name!r}")
    env = st.pop("guard_env", None) or {}
    if not isinstance(env, Mapping):
        raise ConfigError(f"strategy.guard_env must be a mapping NAME: value, got {env!r}")
    check_guard_env(env)  # names and values a guard's .env can carry as data, none of the names it derives
    return StrategyConfig(name=name, original=str(st.pop("original", name)), guard_env=dict(env), knobs=st)


_SECTIONS: dict[str, type] = {"dataset": DatasetConfig, "engine": EngineConfig, "placement": PlacementConfig,
                              "bench": BenchConfig, "parity": ParityConfig, "mlflow": MlflowConfig,
                              "decision": DecisionConfig}


def _check_keys(cfg: DictConfig) -> None:
    """A key the schema does not have (`+decision.typo=1`) is refused, never dropped without a word."""
    for section, schema in _SECTIONS.items():
        node = cfg.get(section)
        if not isinstance(node, DictConfig):
            continue
        known = [f.name for f in fields(schema)]
        unknown = sorted(str(k) for k in node.keys() if k not in known)
        if unknown:
            raise ConfigError(f"unknown {section} setting(s) {', '.join(f'{section}.{k}' for k in unknown)}; "
                              f"valid: {', '.join(known)}")


def _check_finite(resolved: Mapping[str, Any]) -> None:
    """NaN and infinity are no setting: every comparison with them is false, so range checks would pass them."""
    for key, value in flatten(resolved).items():
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{key} must be a finite number, got {v}")


def _check_dataset_file(d: DatasetConfig) -> None:
    """dataset.path with `~` expanded (as the loader does); a file that is not whole 4096-byte pages is refused
    (it would be padded with zeros into pages it does not hold), and so is a dataset.num_pages other than the file's
    (conf/dataset's default is the file's own count: `file_pages`). A missing file is left to datasets.plan_pages."""
    if not d.path:
        return
    d.path = os.path.expanduser(d.path)
    try:
        size = os.stat(d.path).st_size if os.path.isfile(d.path) else None
    except OSError:
        size = None
    if size == 0:
        raise ConfigError(f"dataset.path {d.path!r} is empty: a page matrix holds at least one {PAGE_BYTES}-byte page")
    if size is not None and size % PAGE_BYTES:
        raise ConfigError(f"dataset.path {d.path!r} is {size} bytes, not a whole number of {PAGE_BYTES}-byte pages "
                          f"({size // PAGE_BYTES} pages and {size % PAGE_BYTES} bytes): point it at a page-matrix file")
    if size and d.num_pages != size // PAGE_BYTES:  # the file's count is what is scanned and logged
        raise ConfigError(f"dataset.num_pages={d.num_pages} but dataset.path {d.path!r} holds {size // PAGE_BYTES} pages: "
                          f"a file's page count comes from the file; drop dataset.num_pages (or set it to {size // PAGE_BYTES})")


def _typed(cfg: DictConfig) -> Schema:
    """The composed config merged onto the schema (types checked by OmegaConf) as dataclasses."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Schema), cfg)
        obj = OmegaConf.to_object(merged)
    except Exception as err:  # a wrong type, an interpolation error, a missing value
        raise ConfigError(one_line(err)) from None
    assert isinstance(obj, Schema)
    return obj


def first_line(err: BaseException, limit: int = 300) -> str:
    """An error's first non-blank line, cut at `limit` characters; its type's name when it says nothing."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:limit]


def one_line(err: BaseException) -> str:
    """A Hydra/OmegaConf error as one line: the override and what is wrong with it, or the lines of
    a composition error up to Hydra's search-path listing."""
    cause = err.__cause__ or err.__context__
    if cause is not None and cause is not err and str(cause).strip():
        head = (str(err).strip().splitlines() or [""])[0].removeprefix("Error merging override ")
        msg = str(cause).strip().splitlines()[0]
        key = getattr(cause, "full_key", None)
        return f"{head}: {msg}" + (f" (key {key})" if key and key not in head else "")
    lines = str(err).split("Config search path")[0].splitlines()
    return " ".join(line.strip() for line in lines if line.strip()) or type(err).__name__


def _plain(node: DictConfig) -> dict[str, Any]:
    out = OmegaConf.to_container(node, resolve=True)
    assert isinstance(out, dict)
    return {str(k): v for k, v in out.items()}


def parse(cfg: DictConfig, known_strategies: tuple[str, ...] = (), known_engines: tuple[str, ...] = ()) -> RunConfig:
    """Validate a composed Hydra config into a RunConfig (raises ConfigError)."""
    if "hydra" in cfg:
        cfg = OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k != "hydra"])
    _check_keys(cfg)
    s = _typed(cfg)
    resolved = _plain(OmegaConf.structured(s))
    _check_finite(resolved)

    max_q = _int(s.max_q, "max_q", 1, MAX_Q)
    _int(s.q, "q", 1, max_q, hint=" (queries per batch, e.g. q=8)")
    _int(s.seed, "seed", 0, MAX_SEED, hint=" (the pages and keys take a 32-bit seed)")
    _check_bench(s.bench)
    if not s.dataset.name:
        raise ConfigError("dataset.name must be set (the conf/dataset/<name>.yaml that chose it)")
    _check_dataset_file(s.dataset)  # first: an empty file's count (0) is said as the file's fault, not num_pages'
    _int(s.dataset.num_pages, "dataset.num_pages", 1, 1 << 32)
    _check_engine(s.engine, known_engines)
    _check_placement(s.placement)
    _int(s.parity.numpy_reference_queries, "parity.numpy_reference_queries", 0)
    _int(s.parity.numpy_reference_max_pages, "parity.numpy_reference_max_pages", 0)
    if not s.mlflow.tracking_uri:
        raise ConfigError("mlflow.tracking_uri must be set (e.g. sqlite:///abs/path/mlflow.db or http://host:5000)")
    if not s.mlflow.experiment:
        raise ConfigError("mlflow.experiment must be a non-empty name")
    decision = _plain(OmegaConf.structured(s.decision))
    return RunConfig(q=s.q, seed=s.seed, resume=s.resume, dataset=s.dataset,
                     strategy=_strategy(dict(s.strategy), known_strategies), engine=s.engine, bench=s.bench,
                     parity=s.parity, mlflow=s.mlflow, decision=decision, resolved=resolved, placement=s.placement)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: MLflow params and CSV columns."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
