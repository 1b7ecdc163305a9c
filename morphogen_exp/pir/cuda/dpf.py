"""What the kernel wrappers share with dpf.cuh, the GGM expansion every kernel here includes: its depth bound
and the window of a scan step the kernels take."""

from __future__ import annotations

from typing import Protocol

import jax

__all__ = ["MAX_LEVELS", "Window"]

MAX_LEVELS = 8  # dpf.cuh kMaxLevels: the levels a kernel expands below a subtree root (256 leaves)


class Window(Protocol):
    """A scan step's window (pir.engine.Window is one): leaves [lo, lo + count) of the subtrees mask
    database rows [row, row + count)."""

    @property
    def row(self) -> jax.Array | int: ...

    @property
    def lo(self) -> int: ...

    @property
    def count(self) -> int: ...
