"""micro_batch (original: adaptive_micro_batch): Q <= threshold runs as one batch; larger Q runs as
ordered chunks of `chunk` queries, one jitted call per chunk, dispatched back to back.

One call per chunk (rather than lax.map inside one program) mirrors the original's policy: a server
can answer the first chunk before the last is scheduled, and each chunk's program is the same
shape whatever Q is, so it compiles once for all Q."""

from __future__ import annotations

import jax.numpy as jnp

from .base import BatchPath, BuildContext, knob, register
from .full_batch import vmapped_batch


@register("micro_batch")
def build(knobs, q: int, ctx: BuildContext) -> BatchPath:
    threshold, chunk = knob(knobs, "threshold"), knob(knobs, "chunk")
    fn = vmapped_batch(ctx)
    if q <= threshold:
        return BatchPath(run=lambda keys: fn(ctx.pages, keys), live_queries=q, info={"chunks": 1})

    def run(keys):
        # Ragged last chunk gets its own (smaller) program; no host sync between chunks.
        parts = [fn(ctx.pages, kb) for kb in keys.chunks(chunk)]
        return jnp.concatenate(parts, axis=0)

    chunks = -(-q // chunk)
    return BatchPath(run=run, live_queries=min(q, chunk), passes=chunks, info={"chunks": chunks})
