"""Test-only strategies: real strategies that really misbehave, loaded through
MORPHOGEN_EXTRA_STRATEGIES (configs in tests/support/conf/strategy/)."""

from __future__ import annotations

import time

import jax

from morphogen_exp.strategies.base import BatchPath, BuildContext, knob, register
from morphogen_exp.strategies.full_batch import vmapped_batch


@register("corrupt")
def build_corrupt(knobs, q: int, ctx: BuildContext) -> BatchPath:
    """The full batch, with one bit of the last query's answer flipped: parity must catch it."""
    fn = vmapped_batch(ctx)

    def run(keys):
        out = fn(ctx.pages, keys)
        return out.at[q - 1, 2, 7].set(out[q - 1, 2, 7] ^ jax.numpy.uint32(1 << 5))

    return BatchPath(run=run, live_queries=q)


@register("sleepy")
def build_sleepy(knobs, q: int, ctx: BuildContext) -> BatchPath:
    """The full batch after a sleep of ``seconds`` + ``millis`` / 1000: a cell still running when a signal arrives,
    or one slower than another by a known gap."""
    fn, seconds = vmapped_batch(ctx), knob(knobs, "seconds", lo=0) + knob(knobs, "millis", lo=0) / 1000

    def run(keys):
        time.sleep(seconds)
        return fn(ctx.pages, keys)

    return BatchPath(run=run, live_queries=q)


@register("stall")
def build_stall(knobs, q: int, ctx: BuildContext) -> BatchPath:
    """The full batch, held while the file named by $MORPHOGEN_TEST_STALL exists: a cell that is running when its
    sweep is killed, and runs at once when the same sweep is resumed (the file gone; nothing in the config changed)."""
    import os

    fn, flag = vmapped_batch(ctx), os.environ.get("MORPHOGEN_TEST_STALL")

    def run(keys):
        while flag and os.path.exists(flag):
            time.sleep(0.1)
        return fn(ctx.pages, keys)

    return BatchPath(run=run, live_queries=q)
