"""Which FFI target a CUDA kernel's wrapper calls: the default one, or its twin declared command-buffer
compatible (``<target>_graph``: the same handler with XLA's ``kCmdBufferCompatible`` trait, bmma.cu and
fused.cu), which XLA may record into a CUDA graph when the executable's command buffers include custom calls.

The twins are chosen only inside ``capturable_targets()``, which graph_replay enters while it lowers its own
executable; everywhere else (every other strategy, graph_replay without custom calls in its command buffers)
the wrappers call the default targets, which XLA never captures. The choice is a JAX config state that takes
part in JAX's trace and jit cache keys, so a function traced under one choice is never reused under the other,
and it is thread-local (a context manager), so one thread lowering for graph_replay changes no other thread's
programs. Where this JAX cannot define such a state, ``CAPTURE_SCOPED`` is False and the default targets are
always used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["CAPTURE_SCOPED", "GRAPH_SUFFIX", "capturable_targets", "target"]

GRAPH_SUFFIX = "_graph"

_STATE: Any  # jax._src.config.State[bool], or None where this JAX cannot define it
try:  # a JAX-internal API: bool_state with include_in_trace_context puts the choice in every tracing cache key
    from jax._src import config as _jax_config

    _STATE = _jax_config.bool_state(
        "morphogen_capturable_ffi", False,
        help="morphogen_exp: call the command-buffer compatible twins of the CUDA kernels' FFI targets",
        include_in_jit_key=True, include_in_trace_context=True)
    CAPTURE_SCOPED = True
except Exception:  # a JAX without it: no scoped choice, so never the twins
    _STATE = None
    CAPTURE_SCOPED = False


@contextlib.contextmanager
def capturable_targets() -> Iterator[bool]:
    """Within: the wrappers call the command-buffer compatible targets (this thread only). Yields whether
    they do (False where this JAX cannot scope the choice)."""
    if _STATE is None:
        yield False
        return
    with _STATE(True):
        yield True


def target(name: str) -> str:
    """The FFI target to call for ``name``: its ``_graph`` twin inside ``capturable_targets()``, else ``name``."""
    return name + GRAPH_SUFFIX if _STATE is not None and _STATE.value else name
