"""Device-memory budgeting: estimate what a cell needs before allocating, so a cell that cannot fit
is recorded as "does not fit" with the estimate instead of crashing into an out-of-memory error."""

from __future__ import annotations

import jax

from .datasets import PAGE_BYTES

GIB = 2**30


class DoesNotFit(RuntimeError):
    """The estimated device memory of a cell exceeds the budget (a recorded outcome, not a crash)."""

    def __init__(self, what: str, need: int, limit: int):
        super().__init__(f"{what} needs ~{need / GIB:.3g} GiB of device memory, the budget is {limit / GIB:.3g} GiB "
                         "(a larger card or bench.memory_cap_gib, a smaller q or dataset)")
        self.need, self.limit = need, limit


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


def working_set_bytes(live_queries: int, tile_pages: int) -> int:
    """Bytes a batch path keeps live besides the database: per live key, one tile of masks and the
    GGM level temporaries (about 4 tile-sized u32x4 arrays), plus its answer and key material."""
    keys = 3 * live_queries
    return keys * (tile_pages * 16 * 4 + 2 * PAGE_BYTES + 4096)


def check_fits(what: str, need: int, cap_gib: float | None) -> None:
    limit = device_limit_bytes(cap_gib)
    if limit is not None and need > limit:
        raise DoesNotFit(what, need, limit)
