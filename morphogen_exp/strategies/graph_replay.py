"""graph_replay (original: cuda_graph_replay): the whole batch compiled ahead of time
(jit(...).lower(...).compile()) and that one executable replayed every iteration.

On the GPU, XLA may wrap parts of the executable in command buffers (CUDA graphs). What ran is read from
a profiler trace of one replay (strategies/tracecount.py), taken once per cell on the first call, after
one untraced replay (XLA records a command buffer on its first run) and apart from the timed samples:
`graph_launches` (CUDA graph launches seen; 0: the batch ran as plain kernel launches; "unknown" with
`trace_note` where no trace could be read), `kernel_launches` (kernels launched one by one), `traced_ops`
(kernels and copies the GPU ran, or the CPU runtime's thunks) and `trace_s`. The executable is compiled with
xla_enable_command_buffers_during_profiling, without which XLA runs command buffers op by op under a
profiler; it changes nothing outside a trace. The knob `trace` (default true) turns the trace off: `graph_launches`
is then "not traced" (the trace starts and stops CUPTI inside the sweep's process; jax-ml/jax#40260).

The knob `command_buffer` sets the command types XLA may capture for this one executable (XLA's
xla_gpu_enable_command_buffer, e.g. `strategy.command_buffer=[FUSION,CUSTOM_CALL,WHILE,CONDITIONAL]`).
When it lists CUSTOM_CALL, the batch is lowered inside `cuda.capture.capturable_targets()`: the CUDA
engines' kernels are called through their command-buffer compatible FFI targets, so XLA may capture them
too; otherwise, as every other strategy, through the default targets. `ffi_targets` lists the CUDA kernels'
FFI targets the program calls (`<target>_graph`: the twins; "none": an engine without CUDA kernels)."""

from __future__ import annotations

import contextlib
import re
import time

import jax

from ..config import ConfigError, first_line
from ..pir.cuda.capture import capturable_targets
from . import tracecount
from .base import BatchPath, BuildContext, register
from .full_batch import vmapped_batch

_OUR_TARGET = re.compile(r"custom_call @(morphogen_\w+)\(")


@register("graph_replay")
def build(knobs, q: int, ctx: BuildContext) -> BatchPath:
    fn = vmapped_batch(ctx)  # full_batch's program, here compiled ahead of time and replayed
    buffers = knobs.get("command_buffer")
    if isinstance(buffers, (list, tuple)):  # strategy.command_buffer=[FUSION,WHILE] on the command line
        buffers = ",".join(map(str, buffers))
    options: dict[str, str | bool] = dict(tracecount.PROFILE_WITH_COMMAND_BUFFERS)
    if buffers is not None:
        options["xla_gpu_enable_command_buffer"] = str(buffers)
    capture_ffi = buffers is not None and "CUSTOM_CALL" in str(buffers).upper().split(",")
    trace = knobs.get("trace", True)
    if not isinstance(trace, bool):
        raise ConfigError(f"strategy.trace must be true or false, got {trace!r}")
    compiled = {}

    def first_call(keys):
        """Compile, replay once untraced, then once traced (what ran, into `info`); the untraced answers."""
        t0 = time.perf_counter()
        try:
            with capturable_targets() if capture_ffi else contextlib.nullcontext():
                lowered = fn.lower(ctx.pages, keys)
            exe = lowered.compile(compiler_options=options)
        except Exception as err:  # XLA names the bad value: say which override to fix
            if buffers is not None and "xla_gpu_enable_command_buffer" in str(err):
                raise ConfigError(f"strategy.command_buffer={buffers!r}: {first_line(err)}") from None
            raise
        info["aot_compile_s"] = round(time.perf_counter() - t0, 4)
        # the CUDA kernels' FFI targets the program calls (the *_graph twins: XLA may capture them)
        info["ffi_targets"] = "+".join(sorted(set(_OUR_TARGET.findall(lowered.as_text())))) or "none"
        compiled["exe"] = exe
        out = jax.block_until_ready(exe(ctx.pages, keys))
        if not trace:
            info["graph_launches"] = "not traced"
            return out
        t0 = time.perf_counter()
        try:
            seen = tracecount.count_launches(lambda: exe(ctx.pages, keys), tracecount.hlo_names(exe.as_text() or ""))
            info.update(graph_launches=seen.graph_launches, kernel_launches=seen.kernel_launches, traced_ops=seen.ops)
        except tracecount.TraceUnreadable as err:
            info.update(graph_launches="unknown", trace_note=str(err))
        info["trace_s"] = round(time.perf_counter() - t0, 4)
        return out

    def run(keys):
        if "exe" not in compiled:  # ahead-of-time, once per cell; replays skip tracing and dispatch checks
            return first_call(keys)
        return compiled["exe"](ctx.pages, keys)

    info: dict = {"backend": jax.default_backend(), "command_buffer_types": buffers or "xla default"}
    return BatchPath(run=run, live_queries=q, info=info)
