"""Public API of the ChaCha8 DPF page-PIR engine (morphogenesis-compatible keys and answers)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .keys import Key, generate_keys
from .reference import answer_numpy, eval_points

__all__ = ["Key", "generate_keys", "eval_points", "answer", "BACKENDS"]

BACKENDS = ("numpy", "jax")


def answer(pages: np.ndarray, keys: Sequence[Key], backend: str = "numpy") -> np.ndarray:
    """Server reply for `keys` over `pages` (N, 4096) uint8 -> (K, 4096) uint8.

    backend "numpy" is the reference; "jax" is the accelerated engine (imported lazily so the
    numpy path never pulls in JAX).
    """
    if backend == "numpy":
        return answer_numpy(pages, keys)
    if backend == "jax":
        from .jax_engine import answer_jax

        return np.asarray(answer_jax(pages, keys))
    raise ValueError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
