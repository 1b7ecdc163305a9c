"""``EngineSpec``: the static configuration of one scan (engine name, tile, unrolling), hashable for jit."""

from __future__ import annotations

import dataclasses

import numpy as np

from .chacha_jax import default_unroll

__all__ = ["EngineSpec", "default_doubling_levels"]

# GGM levels expanded by doubling when ChaCha8 is unrolled: each unrolled ChaCha8 pair costs seconds of
# compile time, while the compact loop's recomputation grows with the levels it covers; 3 balances the
# two (docs/performance.md has the measurements).
_UNROLLED_DOUBLING_LEVELS = 3


def default_doubling_levels(unroll: bool) -> int:
    """Levels of a tile expanded by doubling: 3 when unrolled (GPU), 0 otherwise (CPU: all compact)."""
    return _UNROLLED_DOUBLING_LEVELS if unroll else 0


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """Static engine configuration (hashable: used as a static argument to jit).

    name: the engine (``pir.get(name)``: "xla", "pallas", "bitsliced", "fused", or one added with register).
    tile_pages: pages per scan step (power of two); bounds the live masks to (K, tile_pages, 4).
    mask_budget_mib: if set, the tile shrinks (by powers of two) until a batch's masks, K x tile x
        16 bytes, fit this many MiB: one query gets huge tiles (few loop steps), 96 keys smaller ones.
    unroll: ChaCha8 rounds unrolled (GPU) or looped (fast CPU compile); None = default_unroll().
    doubling_levels: XLA expansion only: how many of the last GGM levels of each tile are expanded
        by doubling (least arithmetic, but each level adds a whole ChaCha8 pair to the program and
        to its compile time); the levels above run in a fixed-shape loop. None = 3 when unrolled,
        0 otherwise (see xla_ops.expand_nodes_xla).
    """

    name: str = "xla"
    tile_pages: int = 4096
    unroll: bool | None = None
    doubling_levels: int | None = None
    mask_budget_mib: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"{self.name=} must be a non-empty engine name")
        tp = self.tile_pages
        if not _is_int(tp) or tp < 1 or tp & (tp - 1):
            raise ValueError(f"{self.tile_pages=} must be a power of two (>= 1)")
        if self.unroll is not None and not isinstance(self.unroll, bool):
            raise ValueError(f"{self.unroll=} must be True, False or None")
        mb = self.mask_budget_mib
        if mb is not None and (not _is_int(mb) or mb < 1):
            raise ValueError(f"{self.mask_budget_mib=} must be None or an int >= 1")
        dl = self.doubling_levels
        if dl is not None and (not _is_int(dl) or dl < 0):
            raise ValueError(f"{self.doubling_levels=} must be None or an int >= 0")

    @property
    def resolved_unroll(self) -> bool:
        return default_unroll() if self.unroll is None else self.unroll

    @property
    def resolved_doubling_levels(self) -> int:
        return default_doubling_levels(self.resolved_unroll) if self.doubling_levels is None else self.doubling_levels
