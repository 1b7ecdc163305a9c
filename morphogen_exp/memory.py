"""Device-memory budgeting: estimate what a cell needs before allocating, so a cell that cannot fit
is recorded as "does not fit" with the estimate instead of crashing into an out-of-memory error."""

from __future__ import annotations

import os
from collections.abc import Callable

import jax

from .datasets import PAGE_BYTES
from .queries import KEYS_PER_QUERY

GIB = 2**30


class DoesNotFit(RuntimeError):
    """The estimated device memory of a cell exceeds the budget (a recorded outcome, not a crash)."""

    def __init__(self, what: str, need: int, limit: int):
        super().__init__(f"{what} needs ~{need / GIB:.3g} GiB of device memory, the budget is {limit / GIB:.3g} GiB "
                         "(a larger card or bench.memory_cap_gib, a smaller q or dataset)")
        self.need, self.limit = need, limit


def configure_process() -> None:
    """Device-memory settings read when the JAX backend starts: call before any device use.

    A 64 GiB database on an 80 GB card needs more than JAX's default 75% preallocation. And XLA's
    autotuner runs candidate kernels on scratch copies of a fusion's operands: a fusion reading the
    whole database (the XLA engine's tile loop) then asks for a second 64 GiB and fails out of
    memory. The scan's fusions are integer elementwise and reductions with nothing worth tuning, so
    autotuning is off unless XLA_FLAGS already sets a level."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_gpu_autotune_level" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_gpu_autotune_level=0".strip()


def device_limit_bytes(cap_gib: float | None) -> int | None:
    """The smaller of the device's own allocator limit (where it reports one) and the configured cap."""
    limit = None
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
        limit = stats.get("bytes_limit")
    except Exception:  # CPU backends may not report
        limit = None
    if cap_gib is not None:
        cap = int(cap_gib * GIB)
        limit = cap if limit is None else min(limit, cap)
    return limit


def dataset_bytes(num_pages: int) -> int:
    return num_pages * PAGE_BYTES


def working_set_bytes(live_queries: int, tile_pages: Callable[[int], int]) -> int:
    """Bytes a batch path keeps live besides the database: per live key, one tile of masks and the
    GGM level temporaries (about 4 tile-sized u32x4 arrays), plus its answer and key material.
    ``tile_pages(num_keys)`` is the engine's tile for a batch of that many keys."""
    keys = KEYS_PER_QUERY * live_queries
    return keys * (tile_pages(keys) * 16 * 4 + 2 * PAGE_BYTES + 4096)


def check_fits(what: str, need: int, cap_gib: float | None) -> None:
    limit = device_limit_bytes(cap_gib)
    if limit is not None and need > limit:
        raise DoesNotFit(what, need, limit)


# --- engines with their own database layout (pir EngineOps.layout): what they hold beyond the above ---

BITSLICED = "bitsliced"
FUSED = "fused"


def engine_database_bytes(num_pages: int, engine: str) -> int:
    """The database as the engine scans it: the raw pages, or the bit-sliced layout (rounded up to
    chunks of 256 pages, pir/bitsliced.py): the same size give or take a chunk."""
    if engine == BITSLICED:
        from .pir.bitsliced import padded_pages

        return padded_pages(num_pages) * PAGE_BYTES
    return dataset_bytes(num_pages)


def engine_build_bytes(num_pages: int, engine: str) -> int:
    """Scratch of building the engine's layout beside it (0 for raw pages): the bit-sliced build
    streams one raw group and its sliced copy at a time, the raw database is never resident."""
    if engine == BITSLICED:
        from .pir.bitsliced import build_scratch_bytes

        return build_scratch_bytes(num_pages)
    return 0


def engine_scratch_bytes(live_queries: int, tile_pages: Callable[[int], int], engine: str) -> int:
    """Per-tile scratch of the engine's scan step beyond its stored masks or roots: the bit-sliced CUDA op's
    per-bit page vectors, which its expansion writes and its binary-MMA scan reads (16 bytes per page and
    key, keys padded to its key groups of 8; up to 8 keys, two groups of 8 chunks per SM). 0 for the
    raw-page engines."""
    if engine != BITSLICED:
        return 0
    from .pir.cuda import engine_stages, scratch_words

    keys = KEYS_PER_QUERY * live_queries
    return 4 * scratch_words(keys, tile_pages(keys), None, engine_stages(keys))


def engine_working_set_bytes(live_queries: int, tile_pages: Callable[[int], int], engine: str) -> int:
    """``working_set_bytes`` as the engine keeps it: the fused kernel (up to its key count) and the bit-sliced
    engine store no masks (one subtree root per 256 leaves instead); the fused kernel adds its partial answers,
    the bit-sliced op the per-bit page vectors its expansion writes (``engine_scratch_bytes``)."""
    if engine == FUSED:
        from .pir.fused import KERNEL_MAX_KEYS  # above it, the Pallas ops: masks stored like any raw-page engine

        if KEYS_PER_QUERY * live_queries > KERNEL_MAX_KEYS:
            return working_set_bytes(live_queries, tile_pages)
    if engine in (FUSED, BITSLICED):
        from .pir.xla_ops import SUBTREE_LEVELS

        roots = working_set_bytes(live_queries, lambda k: max(1, tile_pages(k) >> SUBTREE_LEVELS))
        if engine == BITSLICED:
            return roots + engine_scratch_bytes(live_queries, tile_pages, engine)
        from .pir.fused import grid_blocks  # one (1024,) u32 partial answer per block group and key

        return roots + KEYS_PER_QUERY * live_queries * grid_blocks(1 << 30) * PAGE_BYTES
    return working_set_bytes(live_queries, tile_pages) + engine_scratch_bytes(live_queries, tile_pages, engine)


def engine_need_bytes(num_pages: int, live_queries: int, tile_pages: Callable[[int], int], engine: str) -> int:
    """A cell's device bytes on ``engine``: its database, plus the larger of the layout's build scratch
    (before any scan) and the scans' working set with the engine's scratch."""
    scan = engine_working_set_bytes(live_queries, tile_pages, engine)
    return engine_database_bytes(num_pages, engine) + max(engine_build_bytes(num_pages, engine), scan)
