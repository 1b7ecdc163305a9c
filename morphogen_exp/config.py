"""Typed run settings: the Hydra config validated into frozen dataclasses before anything runs.

Every check here fails with a `ConfigError` whose one-line message says what to fix; nothing
downstream (datasets, strategies, jax.jit) ever sees an unvalidated DictConfig.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

MAX_Q = 32
KNOWN_DATASETS = ("tiny", "small", "mainnet")
# Settings that do not change what a cell measures: excluded from its identity (resume).
_NON_IDENTITY_KEYS = ("resume", "mlflow", "hydra")


class ConfigError(ValueError):
    """A setting the user must fix; printed as one line, never as a traceback."""


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("abspath"):
        OmegaConf.register_new_resolver("abspath", lambda p: str(Path(p).expanduser().resolve()))


_register_resolvers()


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    num_pages: int
    path: str | None = None


@dataclass(frozen=True)
class BenchConfig:
    warmup: int = 1
    iterations: int = 3
    memory_cap_gib: float | None = None
    compilation_cache_dir: str | None = None
    cell_timeout_s: float | None = None


@dataclass(frozen=True)
class ParityConfig:
    numpy_reference_queries: int = 1
    numpy_reference_max_pages: int = 1 << 20
    xor_check: bool = True


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str
    experiment: str


@dataclass(frozen=True)
class StrategyConfig:
    name: str
    original: str
    knobs: Mapping[str, Any] = field(default_factory=dict)  # strategy-specific (threshold, chunk, tile...)
    guard_env: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineConfig:
    name: str = "xla"
    tile_pages: int = 4096
    unroll: bool | None = None
    mask_budget_mib: int | None = None


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
    resolved: Mapping[str, Any]  # the whole resolved config, for MLflow params and artifacts

    @property
    def cell_key(self) -> str:
        """Identity of what this cell measures (config minus tracking/resume), for resume."""
        ident = {k: v for k, v in self.resolved.items() if k not in _NON_IDENTITY_KEYS}
        return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _int(value: Any, name: str, lo: int | None = None, hi: int | None = None, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer{hint}, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ConfigError(f"{name} must be in {bounds}{hint}, got {value}")
    return value


def parse(cfg: DictConfig, known_strategies: tuple[str, ...] = (), known_engines: tuple[str, ...] = ()) -> RunConfig:
    """Validate a composed Hydra config into a RunConfig (raises ConfigError)."""
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as err:  # interpolation errors, missing values
        raise ConfigError(f"config does not resolve: {err}".splitlines()[0]) from None
    assert isinstance(resolved, dict)
    resolved.pop("hydra", None)

    max_q = _int(resolved.get("max_q", MAX_Q), "max_q", 1, MAX_Q)
    q = _int(resolved.get("q"), "q", 1, max_q, hint=" (queries per batch, e.g. q=8)")
    seed = _int(resolved.get("seed", 0), "seed", 0)

    bench = dict(resolved.get("bench") or {})
    bench_cfg = BenchConfig(
        warmup=_int(bench.get("warmup", 1), "bench.warmup", 0),
        iterations=_int(bench.get("iterations", 3), "bench.iterations", 1),
        memory_cap_gib=bench.get("memory_cap_gib"),
        compilation_cache_dir=bench.get("compilation_cache_dir"),
        cell_timeout_s=bench.get("cell_timeout_s"),
    )
    if bench_cfg.cell_timeout_s is not None and not (
        isinstance(bench_cfg.cell_timeout_s, (int, float)) and bench_cfg.cell_timeout_s > 0
    ):
        raise ConfigError(f"bench.cell_timeout_s must be a positive number of seconds or null, got {bench_cfg.cell_timeout_s!r}")
    if bench_cfg.memory_cap_gib is not None and not (
        isinstance(bench_cfg.memory_cap_gib, (int, float)) and bench_cfg.memory_cap_gib > 0
    ):
        raise ConfigError(f"bench.memory_cap_gib must be a positive number or null, got {bench_cfg.memory_cap_gib!r}")

    ds = dict(resolved.get("dataset") or {})
    ds_name = ds.get("name")
    if ds_name not in KNOWN_DATASETS:
        raise ConfigError(f"unknown dataset {ds_name!r}; valid: {', '.join(KNOWN_DATASETS)}")
    path = ds.get("path")
    if path is not None and not isinstance(path, str):
        raise ConfigError(f"dataset.path must be a file path, got {path!r}")
    dataset_cfg = DatasetConfig(
        name=ds_name,
        num_pages=_int(ds.get("num_pages"), "dataset.num_pages", 1, 1 << 32),
        path=path,
    )

    st = dict(resolved.get("strategy") or {})
    st_name = st.pop("name", None)
    if known_strategies and st_name not in known_strategies:
        raise ConfigError(f"unknown strategy {st_name!r}; valid: {', '.join(known_strategies)}")
    strategy_cfg = StrategyConfig(
        name=st_name,
        original=str(st.pop("original", st_name)),
        guard_env=dict(st.pop("guard_env", {}) or {}),
        knobs=st,
    )

    en = dict(resolved.get("engine") or {})
    if known_engines and en.get("name") not in known_engines:
        raise ConfigError(f"unknown engine {en.get('name')!r}; valid: {', '.join(known_engines)}")
    tile = _int(en.get("tile_pages", 4096), "engine.tile_pages", 1)
    if tile & (tile - 1):
        raise ConfigError(f"engine.tile_pages must be a power of two, got {tile}")
    budget = en.get("mask_budget_mib")
    budget = None if budget is None else _int(budget, "engine.mask_budget_mib", 1)
    engine_cfg = EngineConfig(name=en.get("name", "xla"), tile_pages=tile, unroll=en.get("unroll"),
                              mask_budget_mib=budget)

    par = dict(resolved.get("parity") or {})
    parity_cfg = ParityConfig(
        numpy_reference_queries=_int(par.get("numpy_reference_queries", 1), "parity.numpy_reference_queries", 0),
        numpy_reference_max_pages=_int(par.get("numpy_reference_max_pages", 1 << 20), "parity.numpy_reference_max_pages", 0),
        xor_check=bool(par.get("xor_check", True)),
    )

    ml = dict(resolved.get("mlflow") or {})
    uri = ml.get("tracking_uri")
    if not uri or not isinstance(uri, str):
        raise ConfigError("mlflow.tracking_uri must be set (e.g. sqlite:///abs/path/mlflow.db or http://host:5000)")
    exp = ml.get("experiment")
    if not exp or not isinstance(exp, str):
        raise ConfigError("mlflow.experiment must be a non-empty name")
    mlflow_cfg = MlflowConfig(tracking_uri=uri, experiment=exp)

    return RunConfig(
        q=q,
        seed=seed,
        resume=bool(resolved.get("resume", False)),
        dataset=dataset_cfg,
        strategy=strategy_cfg,
        engine=engine_cfg,
        bench=bench_cfg,
        parity=parity_cfg,
        mlflow=mlflow_cfg,
        resolved=resolved,
    )


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
