"""Device-memory budgeting: estimate what a cell needs before allocating, so a cell that cannot fit
is recorded as "does not fit" with the estimate instead of crashing into an out-of-memory error."""

from __future__ import annotations

import os
from collections.abc import Callable

import jax

from ..pir.engine import Engine
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


# --- an engine's own model (pir Engine: database, layout build and scan working set), for Q live queries ---

def engine_need_bytes(engine: Engine, num_pages: int, live_queries: int, tile_pages: Callable[[int], int]) -> int:
    """A cell's device bytes on ``engine``: its database, plus the larger of the layout's build scratch
    (before any scan) and the scans' working set."""
    return engine.device_bytes(num_pages, KEYS_PER_QUERY * live_queries, tile_pages)
