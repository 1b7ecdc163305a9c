"""The card's floors, and how far each cell is from them.

Two rates are probed on the device a cell runs on, once per process per (device, engine):

- the read floor: bytes per second of a plain streaming read, each row of a large uint32 array
  XOR-folded to one word (`bench.common.read_gbps`); 4 GiB on a GPU (several times its L2), 1 MiB on
  a CPU;
- the expansion floor: ChaCha8 blocks per second of the engine's own `expand_levels` at a fixed shape
  (a few keys, each one node with a deep subtree below it), counting 2 blocks per GGM node expanded.

A cell's fractions (`cell_metrics`) set its batch path's median time per batch against them: the bytes
a batch must read at least (the engine's database once, `Engine.database_bytes`) and the ChaCha8 blocks
it must compute (`batch_blocks`). 1.0 is at the card's limit; a placement over several devices is set
against the floor times the number of devices.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from .bench.common import mix, read_gbps
from .pir import EngineSpec
from .pir.engine import Engine, Subtrees
from .queries import KEYS_PER_QUERY
from .timing import measure

log = logging.getLogger(__name__)

# The four metrics a cell records where bench.floors probes (matrix.csv's `*_floor_*` columns).
FLOOR_METRICS = ("read_floor_gbps", "expand_floor_blocks_per_s", "batch_read_floor_frac", "batch_expand_floor_frac")


@dataclass(frozen=True)
class ProbeShape:
    """What the probe streams and expands: rows of 1024 u32 words (4 KiB each) read, keys x 2**levels leaves expanded."""

    read_rows: int
    keys: int
    levels: int
    repeats: int

    @classmethod
    def for_platform(cls, platform: str) -> ProbeShape:
        """A GPU: 4 GiB read (several times any L2), 3 keys x 2**22 leaves; elsewhere tiny (a CPU only tests the plumbing)."""
        if platform == "gpu":
            return cls(read_rows=1 << 20, keys=3, levels=22, repeats=5)
        return cls(read_rows=256, keys=1, levels=6, repeats=3)


@dataclass(frozen=True)
class Floors:
    """One device's floors: read GB/s (1e9 bytes) and ChaCha8 blocks per second of one engine's expansion."""

    device: str
    engine: str
    read_gbps: float
    expand_blocks_per_s: float


def wanted(setting: bool | str, backend: str | None = None) -> bool:
    """bench.floors: true / false, or "auto": probe only on a GPU backend (on a CPU the fractions mean little)."""
    if setting == "auto":
        return (backend or jax.default_backend()) == "gpu"
    return bool(setting)


def tree_blocks(levels: int) -> int:
    """ChaCha8 blocks to expand one node's subtree of ``levels`` levels: 2 per internal node, 2 * (2**levels - 1)."""
    return 2 * ((1 << levels) - 1)


def batch_blocks(q: int, domain_bits: int) -> int:
    """ChaCha8 blocks one batch must compute: q queries x 3 keys (server 0's batch), each key's full GGM tree over
    the padded domain of 2**domain_bits leaves (`tree_blocks`). The final output correction is not counted."""
    return q * KEYS_PER_QUERY * tree_blocks(domain_bits)


def cell_metrics(floors: Floors | None, database_bytes: int, blocks: int, batch_ms: float, devices: int = 1) -> dict[str, float]:
    """The cell's floor metrics: the probe's two rates and the batch path's fractions of them (``database_bytes``
    read once and ``blocks`` computed per ``batch_ms``, over ``devices`` times each floor). None: nothing."""
    if floors is None:
        return {}
    batch_s = batch_ms / 1e3
    return {
        "read_floor_gbps": floors.read_gbps,
        "expand_floor_blocks_per_s": floors.expand_blocks_per_s,
        "batch_read_floor_frac": database_bytes / batch_s / 1e9 / (devices * floors.read_gbps),
        "batch_expand_floor_frac": blocks / batch_s / (devices * floors.expand_blocks_per_s),
    }


_PROBED: dict[tuple[Any, ...], Floors] = {}


def probe(engine: Engine, spec: EngineSpec, device: Any = None, shape: ProbeShape | None = None) -> Floors:
    """Both floors on ``device`` (default: the first local device) for ``engine``'s expansion with ``spec``'s
    unrolling, measured once per process and cached (a floor is the card's, not a cell's)."""
    device = device or jax.local_devices()[0]
    shape = shape or ProbeShape.for_platform(device.platform)
    key = (device.platform, device.id, device.device_kind, engine, spec.resolved_unroll, spec.resolved_doubling_levels, shape)
    if key not in _PROBED:
        read = _read_floor(device, shape)
        expand = _expand_floor(engine, spec, device, shape)
        for name, value in (("read", read), ("expansion", expand)):
            if not (math.isfinite(value) and value > 0):
                raise RuntimeError(f"the {name} floor probe on {device.device_kind} gave {value}: a timer too coarse for its shape")
        _PROBED[key] = Floors(device.device_kind, engine.name, read, expand)
        log.info("floors on %s: read %.1f GB/s, %s expansion %.3g blocks/s", device.device_kind, read, engine.name, expand)
    return _PROBED[key]


def _read_floor(device: Any, shape: ProbeShape) -> float:
    """GB/s of the XOR-fold of ``shape.read_rows`` pages, sized down to a quarter of the device's free memory
    (the autotuner may copy the operand beside it)."""
    rows = shape.read_rows
    stats = device.memory_stats() if device.platform == "gpu" else None
    if stats and "bytes_limit" in stats:
        free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
        while rows > 1024 and rows * 4096 > free // 4:
            rows //= 2
    words = jax.device_put(jax.lax.broadcasted_iota(jnp.uint32, (rows, 1024), 0), device)
    try:
        return read_gbps(words, shape.repeats)
    finally:
        words.delete()


def _expand_floor(engine: Engine, spec: EngineSpec, device: Any, shape: ProbeShape) -> float:
    """ChaCha8 blocks/s of ``engine.expand`` of ``shape.keys`` random nodes, each ``shape.levels`` levels deep
    (any 128-bit seeds and corrections are valid GGM input)."""
    k, n = shape.keys, shape.levels

    def rand(dims: tuple[int, ...], salt: int) -> jax.Array:
        return mix(jnp.arange(math.prod(dims), dtype=jnp.uint32).reshape(dims) ^ jnp.uint32(salt * 0x9E3779B9 & 0xFFFFFFFF))

    one = jnp.uint32(1)
    sub = jax.device_put(Subtrees(rand((k, 1, 4), 1), rand((k, 1), 2) & one, rand((k, n, 4), 3), rand((k, n, 2), 4) & one,
                                  rand((k, 4), 5)), device)
    fn = jax.jit(lambda s: engine.expand(spec, s))
    summary, _ = measure(lambda: fn(sub), warmup=1, iterations=shape.repeats)
    return k * tree_blocks(n) / (summary.p50_ms / 1e3)


def for_cell(setting: bool | str, engine: Engine, spec: EngineSpec, device: Any) -> Floors | None:
    """The floors a cell on ``device`` records: None where bench.floors is off there, or where the probe fails (a
    warning: the floors are beside the cell's measurement, which goes on)."""
    if not wanted(setting, device.platform):
        return None
    try:
        return probe(engine, spec, device)
    except (RuntimeError, ValueError) as err:  # a compile or out-of-memory error; a CellTimeout is neither and ends the cell
        log.warning("floors on %s not probed (%s: %s); the cell records none", device.device_kind, type(err).__name__,
                    (str(err).strip().splitlines() or [""])[0][:300])
        return None
