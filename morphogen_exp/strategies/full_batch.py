"""full_batch (original: baseline_full_batch): one jitted call, jax.vmap over all Q queries."""

from __future__ import annotations

import jax

from .base import BatchPath, BuildContext, register


def vmapped_batch(ctx: BuildContext):
    """One program for the whole batch; shared with micro_batch's small-Q path."""
    return ctx.memo("vmapped_batch", lambda: jax.jit(jax.vmap(ctx.single, in_axes=(None, 0))))


@register("full_batch")
def build(knobs, q: int, ctx: BuildContext) -> BatchPath:
    fn = vmapped_batch(ctx)
    return BatchPath(run=lambda keys: fn(ctx.pages, keys), live_queries=q)
