"""full_batch (original: baseline_full_batch): one jitted call, jax.vmap over all Q queries."""

from __future__ import annotations

import functools

import jax

from .base import BatchPath, BuildContext, register


@functools.lru_cache(maxsize=None)
def vmapped_batch(ctx: BuildContext):
    """One program for the whole batch; shared with micro_batch's small-Q path."""
    return jax.jit(jax.vmap(ctx.single, in_axes=(None, 0)))


@register("full_batch")
def build(knobs, q: int, ctx: BuildContext) -> BatchPath:
    fn = vmapped_batch(ctx)
    return BatchPath(run=lambda keys: fn(ctx.pages, keys), live_queries=q)
