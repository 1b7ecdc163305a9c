"""Where the database lives and how a batch uses the devices: `single`, `replicated` or `sharded`.

- single: one device holds the database and runs everything (the default).
- replicated: every device holds the whole database; a vmap over queries (every strategy's batch
  path) is split over the devices with shard_map, each device answering its share in one pass
  (pir/scan.py `replicated_query_scan`).
- sharded: the pages are split over the devices by rows (ceil(N/D) each, pir/scan.py
  `sharded_query_scan`); every device scans its range for all keys, the partial answers are XORed.

A placement asks `datasets.load` for the database already laid out over its devices (never a whole
copy on one device first: the 2^25-page database fits only sharded), checks that a device's share
fits, and builds a BuildContext whose `single` / `single_jit` do the placement, so strategies are
unchanged. Per-device memory: the shard, or the whole database.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ..config import ConfigError, DatasetConfig, PlacementConfig, first_line
from ..pir import EngineSpec, KeyBatch, make_answer_fn, query_scan
from ..pir.engine import Engine, LayoutFn, TileFn
from ..pir.pages import shard_rows
from ..pir.scan import replicated_query_scan, sharded_query_scan
from ..strategies.base import BuildContext
from . import datasets, memory

AXIS = "dev"  # the mesh axis the pages (sharded) or the queries (replicated) are split along


@dataclass(frozen=True)
class Placement:
    """A resolved placement: its name and the devices it uses (hashable: a session cache key)."""

    name: str
    devices: tuple[jax.Device, ...]

    @property
    def mesh(self) -> Mesh:
        return _mesh(self.devices)

    def tags(self) -> dict[str, str]:
        return {"placement": self.name, "devices_used": str(len(self.devices))}


@functools.cache
def _mesh(devices: tuple[jax.Device, ...]) -> Mesh:
    return Mesh(np.array(devices), (AXIS,))


def ensure_distributed(cfg: PlacementConfig) -> None:
    """`jax.distributed.initialize()` once, before the backend starts, when the config asks. Under
    SLURM and Open MPI JAX finds the coordinator, process count and id itself; elsewhere set
    JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID.
    CPU processes exchange the partial answers through gloo (tests; GPUs use NCCL)."""
    if not cfg.distributed or _distributed_state["up"]:
        return
    def env_int(name: str) -> int | None:
        return int(os.environ[name]) if os.environ.get(name) else None

    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=os.environ.get("JAX_COORDINATOR_ADDRESS"),
                                   num_processes=env_int("JAX_NUM_PROCESSES"), process_id=env_int("JAX_PROCESS_ID"))
    except Exception as err:  # no cluster environment, or the backend already started
        raise ConfigError(f"placement.distributed=true: jax.distributed.initialize() failed ({first_line(err)}); "
                          "run under SLURM / Open MPI or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID") from None
    _distributed_state["up"] = True


_distributed_state = {"up": False}


def resolve(cfg: PlacementConfig) -> Placement:
    """The devices a placement uses; ConfigError (a setting to fix) when it needs more than exist."""
    if cfg.name == "single":
        return Placement("single", (jax.local_devices()[0],))
    available = jax.devices()
    want = len(available) if cfg.devices is None else cfg.devices
    if want > len(available):
        raise ConfigError(f"placement={cfg.name} needs placement.devices={want} devices, this process sees {len(available)} "
                          f"({available[0].platform}); lower placement.devices or run on a machine with more")
    return Placement(cfg.name, tuple(available[:want]))


# --------------------------------------------------------------------------- memory

def device_pages(num_pages: int, name: str, num_devices: int) -> int:
    """Pages of the database one device holds: its shard's ceil(N / D) rows (sharded), else all N."""
    return shard_rows(num_pages, num_devices) if name == "sharded" else num_pages


def check_fits(what: str, engine: Engine, num_pages: int, plc: tuple[str, int], live_queries: int, tile: TileFn,
               cap_gib: float | None, limit_bytes: int | None = None) -> int:
    """Raise memory.DoesNotFit when one device's share exceeds the device's limit (``limit_bytes``, else the
    first device's allocator limit) or the cap: the engine's memory model (its database, the larger of its
    layout's build scratch and the scan's working set) of the pages the device holds under ``plc`` =
    (placement name, device count). Returns the per-device estimate."""
    name, num_devices = plc
    need = memory.engine_need_bytes(engine, device_pages(num_pages, name, num_devices), live_queries, tile)
    limit = memory.device_limit_bytes(cap_gib)
    if limit_bytes is not None:  # a known device size (tests; a card not started yet)
        limit = limit_bytes if limit is None else min(limit, limit_bytes)
    if limit is not None and need > limit:
        where = f"per device ({name} over {num_devices})" if num_devices > 1 else "on one device"
        raise memory.DoesNotFit(f"{what} {where}", need, limit)
    return need


# --------------------------------------------------------------------------- the database, laid out

def padded_rows(num_pages: int, plc: Placement) -> int:
    """Rows of the device array: D * ceil(N / D) when sharded (rows past N are never read), else N."""
    return datasets.padded_rows(num_pages, None if plc.name == "single" else sharding(plc))


def sharding(plc: Placement) -> NamedSharding:
    return NamedSharding(plc.mesh, P(AXIS) if plc.name == "sharded" else P())


def load(cfg: DatasetConfig, seed: int, plc: Placement, layout: LayoutFn | None = None) -> datasets.Dataset:
    """The dataset laid out for the placement (in the engine's ``layout``, None: raw pages), built in place on
    every device (no whole copy first; a layout built per device from its own rows)."""
    return datasets.load(cfg, seed, layout, None if plc.name == "single" else sharding(plc))


# --------------------------------------------------------------------------- the strategies' context

def new_context(dataset: datasets.Dataset, spec: EngineSpec, plc: Placement) -> BuildContext:
    """The context whose `single` / `single_jit` run under the placement (strategies need no change)."""
    n = dataset.num_pages
    if plc.name == "single":
        single, single_jit = query_scan(n, spec), make_answer_fn(n, spec)
    elif plc.name == "sharded":
        single = sharded_query_scan(n, spec, plc.mesh, AXIS)
        single_jit = jax.jit(single)
    else:
        single = replicated_query_scan(n, spec, plc.mesh, AXIS)
        single_jit = _on_one_copy(jax.jit(single), dataset.words)
    return BuildContext(pages=dataset.words, num_pages=n, spec=spec, single=single, single_jit=single_jit,
                        devices=plc.devices, placement=plc.name)


def _on_one_copy(jitted: Callable[[jax.Array, KeyBatch], jax.Array], words: jax.Array) -> Callable[[jax.Array, KeyBatch], jax.Array]:
    """One query against the replicated database runs on the first device's copy (the serving
    baseline: one device answers it), not redundantly on all; any other array passes through."""
    home = min(words.addressable_shards, key=lambda s: s.device.id).data

    def run(pages: jax.Array, keys: KeyBatch) -> jax.Array:
        return jitted(home if pages is words else pages, keys)

    return run
