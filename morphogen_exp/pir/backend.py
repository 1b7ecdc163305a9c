"""Which backend the engines run on: the one question their dispatch asks (tests monkeypatch ``on_gpu``)."""

from __future__ import annotations

import jax

__all__ = ["on_gpu"]


def on_gpu() -> bool:
    """Whether the default JAX backend is a GPU (the CUDA and Pallas kernels run; elsewhere the XLA/jnp ops)."""
    return jax.default_backend() == "gpu"
