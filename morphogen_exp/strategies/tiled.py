"""tiled (original: tiled_tile4): one jitted program that walks tiles of `tile` queries with
jax.lax.map (each tile vmapped), so only `tile` queries' working set is live at a time."""

from __future__ import annotations

import jax

from .base import BatchPath, BuildContext, knob, register


def _tiled(ctx: BuildContext, tile: int):
    def batch(pages, keys):
        return jax.lax.map(lambda kb: ctx.single(pages, kb), keys, batch_size=tile)

    return ctx.memo(("tiled", tile), lambda: jax.jit(batch))


@register("tiled")
def build(knobs, q: int, ctx: BuildContext) -> BatchPath:
    tile = knob(knobs, "tile")
    fn = _tiled(ctx, tile)
    tiles = -(-q // tile)
    return BatchPath(run=lambda keys: fn(ctx.pages, keys), live_queries=min(q, tile), passes=tiles, info={"tiles": tiles})
