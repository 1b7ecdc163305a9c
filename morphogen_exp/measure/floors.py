"""The card's floors, and how far each cell is from them.

Two rates are probed on the device a cell runs on, once per process per device, on a GPU only (the
probes are CUDA kernels; ``probe``). Each is at least as fast as what the engines themselves do there,
so a cell's fraction of it is an upper bound's fraction:

- the read floor, GB/s (1e9 bytes): the larger of (a) a plain stream, probe.cu's 16-byte-per-thread
  XOR-fold over a buffer of ``read_rows`` pages, and (b) the bitsliced engine's own binary-MMA scan stage
  alone (``call_masked_xor(..., stages=2)``, a Q=1 batch's 3 keys) over the same buffer, counting the
  buffer's bytes;
- the expansion floor, ChaCha8 blocks/s: the bitsliced engine's own CUDA expansion stage alone
  (``call_expand_xor(..., stages=1)``) at a Q=32 batch's 96 keys over a tile of 2^20 leaves, 2 blocks per
  GGM node expanded (dpf.cuh: a node's children come from ChaCha8 blocks 0 and 1).

Each is the median of ``repeats`` calls after a warmup, each blocked on its result (timing.measure).
A cell's fractions (``cell_record``) set its batch path's time per batch against them: the bytes a batch
must read at least (the engine's database once, ``Engine.database_bytes``) and the ChaCha8 blocks it must
compute at least (``batch_blocks``: every GGM node above the leaves of pages [0, N), 2 blocks each), each
with the interval of the batch time. A placement over several devices is set against the floor times the
number of devices. 1.0 is at the card's limit; the report's guard (report.py) marks a floor invalid for a
sweep where a cell's whole interval lies above it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import jax

from ..config import first_line
from ..fields import FLOORS, READ_FLOOR_PROBES
from ..pir.cuda import CudaUnavailable
from ..pir.cuda.bmma import call_expand_xor, call_masked_xor, scratch_words
from ..pir.cuda.dpf import MAX_LEVELS
from ..pir.cuda.probe import stream_xor
from ..pir.engine import Subtrees, Window
from ..pir.pages import PAGE_BYTES
from .queries import KEYS_PER_QUERY
from .synthetic import random_u32
from .timing import TimingSummary, measure

log = logging.getLogger(__name__)

# What a cell records where floors were probed (matrix.csv's `*_floor_*` columns; names in tracking, where report reads them).
(READ, READ_FRAC), (EXPAND, EXPAND_FRAC) = FLOORS["read"], FLOORS["expansion"]
STREAM, SCAN = READ_FLOOR_PROBES
FLOOR_METRICS = (READ, STREAM, SCAN, EXPAND, *(f"{f}{b}" for f in (READ_FRAC, EXPAND_FRAC) for b in ("", "_lo", "_hi")))

SUBTREE_LEVELS = MAX_LEVELS  # the expansion kernel's subtrees: 256 leaves under each root


@dataclass(frozen=True)
class ProbeShape:
    """What the probes read and expand: ``read_rows`` pages (4 KiB each) streamed and scanned with ``scan_keys``
    keys; ``expand_keys`` keys x ``expand_leaves`` leaves expanded; ``repeats`` timed calls each. The read buffer
    is halved (down to ``min_rows``) until the probes fit in half the device's free memory."""

    read_rows: int = 1 << 22          # 16 GiB: hundreds of times any L2
    scan_keys: int = KEYS_PER_QUERY   # a Q=1 batch
    expand_keys: int = 32 * KEYS_PER_QUERY  # a Q=32 batch
    expand_leaves: int = 1 << 20      # the bitsliced step at 96 keys
    repeats: int = 10
    min_rows: int = 1 << 16           # 256 MiB


@dataclass(frozen=True)
class Floors:
    """One device's floors: read GB/s (the max of a stream and the bitsliced scan, both given) and ChaCha8
    blocks/s of the bitsliced CUDA expansion; ``read_rows`` pages were read."""

    device: str
    stream_gbps: float
    scan_gbps: float
    expand_blocks_per_s: float
    read_rows: int

    @property
    def read_gbps(self) -> float:
        return max(self.stream_gbps, self.scan_gbps)


def wanted(setting: bool | str, platform: str) -> bool:
    """bench.floors: true / false, or "auto": probe only on a GPU (the probes are CUDA kernels)."""
    return platform == "gpu" if setting == "auto" else bool(setting)


def tree_blocks(num_leaves: int, levels: int) -> int:
    """ChaCha8 blocks that compute the leaves [0, num_leaves) of a GGM tree of ``levels`` levels at least: 2 per
    node above them (ceil(num_leaves / 2^d) nodes d levels up, d = 1..levels). A full tree: 2 * (2^levels - 1)."""
    return 2 * sum(-(-num_leaves // (1 << d)) for d in range(1, levels + 1))


def batch_blocks(q: int, num_pages: int, domain_bits: int) -> int:
    """ChaCha8 blocks one batch must compute at least: q queries x 3 keys (server 0's batch), each key's tree
    over pages [0, num_pages) of the domain of 2^domain_bits leaves (``tree_blocks``; the final correction is
    not a block)."""
    return q * KEYS_PER_QUERY * tree_blocks(num_pages, domain_bits)


def _fractions(name: str, work: float, rate: float, batch: TimingSummary) -> dict[str, float]:
    """``work`` per batch over ``rate``: the batch median's fraction and its interval's (the slower end of the batch
    time gives the lower fraction)."""
    def frac(ms: float) -> float:
        return work / (ms / 1e3) / rate

    return {name: frac(batch.p50_ms), f"{name}_lo": frac(batch.p50_hi_ms), f"{name}_hi": frac(batch.p50_lo_ms)}


def cell_record(card: Floors | None, batch: TimingSummary, *, database_bytes: int, blocks: int,
                devices: int = 1) -> dict[str, float]:
    """The cell's floor metrics (``FLOOR_METRICS``): the card's floors and the batch path's fractions of them,
    ``database_bytes`` read once and ``blocks`` ChaCha8 blocks computed per batch, over ``devices`` times each floor,
    each fraction with its interval (from the batch time's). None (nothing probed): nothing."""
    if card is None:
        return {}
    return {READ: card.read_gbps, STREAM: card.stream_gbps, SCAN: card.scan_gbps, EXPAND: card.expand_blocks_per_s,
            **_fractions(READ_FRAC, database_bytes / 1e9, devices * card.read_gbps, batch),
            **_fractions(EXPAND_FRAC, blocks, devices * card.expand_blocks_per_s, batch)}


_PROBED: dict[tuple[Any, ...], Floors] = {}


def for_cell(setting: bool | str, device: Any) -> Floors | None:
    """The floors a cell on ``device`` records: None where bench.floors is off there, or where a probe fails (a
    warning: the floors are beside the cell's measurement, which goes on)."""
    if not wanted(setting, device.platform):
        return None
    try:
        return probe(device)
    except (RuntimeError, ValueError) as err:  # no nvcc, a compile or out-of-memory error; a CellTimeout is neither
        log.warning("floors on %s not probed (%s: %s); the cell records none", device.device_kind, type(err).__name__,
                    first_line(err))
        return None


def probe(device: Any, shape: ProbeShape | None = None) -> Floors:
    """Both floors on ``device``, measured once per process per device and shape, then cached (a floor is the
    card's, not a cell's). A GPU only: the probes are CUDA kernels (CudaUnavailable elsewhere)."""
    shape = shape or ProbeShape()
    key = (device.platform, device.id, device.device_kind, shape)
    if key in _PROBED:
        return _PROBED[key]
    if device.platform != "gpu":
        raise CudaUnavailable(f"the floors' probes are CUDA kernels; {device.device_kind} is a {device.platform}")
    card = _measure(device, shape)
    for name, value in (("stream", card.stream_gbps), ("scan", card.scan_gbps), ("expansion", card.expand_blocks_per_s)):
        if not (math.isfinite(value) and value > 0):
            raise RuntimeError(f"the {name} floor probe on {device.device_kind} gave {value}: a timer too coarse for its shape")
    log.info("floors on %s: read %.1f GB/s (stream %.1f, bitsliced scan %.1f), expansion %.3g ChaCha8 blocks/s",
             card.device, card.read_gbps, card.stream_gbps, card.scan_gbps, card.expand_blocks_per_s)
    _PROBED[key] = card
    return card


def _measure(device: Any, shape: ProbeShape) -> Floors:
    """The three probes on ``device`` (see the module docstring), their buffers freed after."""
    rows = _rows_that_fit(device, shape)
    leaves = min(shape.expand_leaves, rows)  # the expansion's chunks lie inside the buffer
    words = _random(device, (rows, PAGE_BYTES // 4), 1)
    try:
        masks = _random(device, (shape.scan_keys, rows, 4), 2)
        stream_ms = _median_ms(jax.jit(stream_xor), words, repeats=shape.repeats)
        scan_ms = _median_ms(jax.jit(lambda w, m: call_masked_xor(w, 0, m, stages=2)), words, masks, repeats=shape.repeats)
        del masks
        k, s = shape.expand_keys, leaves >> SUBTREE_LEVELS
        sub = Subtrees(_random(device, (k, s, 4), 3), _random(device, (k, s), 4) & 1,
                       _random(device, (k, SUBTREE_LEVELS, 4), 5), _random(device, (k, SUBTREE_LEVELS, 2), 6) & 1,
                       _random(device, (k, 4), 7))
        expand = jax.jit(lambda w, sub: call_expand_xor(w, sub, Window(0, 0, leaves), stages=1))
        expand_ms = _median_ms(expand, words, sub, repeats=shape.repeats)
    finally:
        words.delete()
    nbytes = rows * PAGE_BYTES
    return Floors(device.device_kind, nbytes / stream_ms / 1e6, nbytes / scan_ms / 1e6,
                  k * s * tree_blocks(1 << SUBTREE_LEVELS, SUBTREE_LEVELS) / (expand_ms / 1e3), rows)


def _rows_that_fit(device: Any, shape: ProbeShape) -> int:
    """The read buffer's pages: ``shape.read_rows``, halved (down to ``shape.min_rows``) until the buffer, the scan's
    masks and scratch and the expansion's scratch fit in half the device's free memory (a cell's database stays
    resident beside them)."""
    stats = device.memory_stats() or {}
    free = stats.get("bytes_limit", 0) - stats.get("bytes_in_use", 0)

    def need(rows: int) -> int:
        leaves = min(shape.expand_leaves, rows)
        return rows * PAGE_BYTES + shape.scan_keys * rows * 16 + 4 * (
            scratch_words(shape.scan_keys, rows, rows) + scratch_words(shape.expand_keys, leaves, rows, 1))

    rows = shape.read_rows
    while free and rows > shape.min_rows and need(rows) > free // 2:
        rows //= 2
    return rows


def _random(device: Any, dims: tuple[int, ...], salt: int) -> jax.Array:
    """Random-looking u32 built on ``device`` (bench's hash of the index: a card that compresses zeros reads no faster)."""
    with jax.default_device(device):
        return jax.block_until_ready(random_u32(dims, salt))


def _median_ms(fn: Any, *args: Any, repeats: int) -> float:
    """Median ms of ``fn(*args)`` over ``repeats`` calls after a warmup, each blocked on its result."""
    summary, _ = measure(lambda: fn(*args), warmup=1, iterations=repeats)
    return summary.p50_ms
