"""A fifth engine in one module, as docs/engine-interface.md describes: engine "tiny", the XLA ops with a fused
step of its own (the composed ops, counted), its own step path, one placement and its own memory model.

Not one of the package's engines: a test registers it with ``pir.register(tiny_engine.ENGINE)``.
"""

from __future__ import annotations

import jax

from morphogen_exp.pir import Engine, EngineSpec, Subtrees, Window
from morphogen_exp.pir.engine import TileFn, mask_working_set_bytes
from morphogen_exp.pir.xla_ops import expand_levels_xla, masked_xor_xla

STEPS: list[int] = []  # keys of each scan step traced through the fused op (what a test checks it was called)
PATH = "tiny: xla expansion, then xla masked XOR"


def expand_xor_at(spec: EngineSpec, pages_words: jax.Array, subtrees: Subtrees, window: Window) -> jax.Array:
    """The step: this engine's expansion, then its masked XOR of the window's rows (what a kernel would fuse)."""
    STEPS.append(subtrees.num_keys)
    masks = expand_levels_xla(*subtrees, unroll=spec.resolved_unroll)[:, window.lo : window.lo + window.count]
    return masked_xor_xla(jax.lax.dynamic_slice_in_dim(pages_words, window.row, window.count, axis=0), masks)


def step_path(num_keys: int) -> str:
    return PATH


def working_set_bytes(num_keys: int, tile: TileFn) -> int:
    """The stored masks, plus a fixed 1 GiB of scratch (a model that is plainly this engine's own)."""
    return mask_working_set_bytes(num_keys, tile) + (1 << 30)


ENGINE = Engine(
    name="tiny",
    expand_levels=expand_levels_xla,
    masked_xor=masked_xor_xla,
    expand_xor_at=expand_xor_at,
    placements=frozenset({"single"}),
    step_path=step_path,
    working_set_bytes=working_set_bytes,
)
