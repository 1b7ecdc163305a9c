"""graph_replay (original: cuda_graph_replay): the whole batch compiled ahead of time
(jit(...).lower(...).compile()) and that one executable replayed every iteration.

On the GPU, XLA wraps eligible parts of the executable in command buffers (CUDA graphs); what it
captured is read from the optimized HLO and recorded (`command_buffers`), not assumed. With XLA's
default set an H100 captured none (the scan is a while loop of Pallas calls); the knob
`command_buffer` sets the command types for this one executable (XLA's
xla_gpu_enable_command_buffer, e.g. `strategy.command_buffer=[FUSION,CUSTOM_CALL,WHILE,CONDITIONAL]`) for a rollout trial."""

from __future__ import annotations

import time

import jax

from ..config import ConfigError
from .base import BatchPath, BuildContext, register
from .full_batch import vmapped_batch


@register("graph_replay")
def build(knobs, q: int, ctx: BuildContext) -> BatchPath:
    fn = vmapped_batch(ctx)  # full_batch's program, here compiled ahead of time and replayed
    buffers = knobs.get("command_buffer")
    if isinstance(buffers, (list, tuple)):  # strategy.command_buffer=[FUSION,WHILE] on the command line
        buffers = ",".join(map(str, buffers))
    options = None if buffers is None else {"xla_gpu_enable_command_buffer": str(buffers)}
    compiled = {}

    def run(keys):
        if "exe" not in compiled:  # ahead-of-time, once per cell; replays skip tracing and dispatch checks
            t0 = time.perf_counter()
            try:
                exe = fn.lower(ctx.pages, keys).compile(compiler_options=options)
            except Exception as err:  # XLA names the bad value: say which override to fix
                if options and "xla_gpu_enable_command_buffer" in str(err):
                    raise ConfigError(f"strategy.command_buffer={buffers!r}: {str(err).splitlines()[0]}") from None
                raise
            compiled["exe"] = exe
            text = exe.as_text() or ""
            info["aot_compile_s"] = round(time.perf_counter() - t0, 4)
            info["command_buffers"] = text.count("command_buffer")
            info["while_loops"] = text.count(" while(")
        return compiled["exe"](ctx.pages, keys)

    info: dict = {"backend": jax.default_backend(), "command_buffer_types": buffers or "xla default"}
    return BatchPath(run=run, live_queries=q, info=info)
