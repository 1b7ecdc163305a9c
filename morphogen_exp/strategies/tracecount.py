"""What one execution actually ran, counted from a JAX profiler trace (not from the HLO text).

``count_launches(run, op_names)`` runs ``run()`` once under ``jax.profiler.trace`` (into a temporary folder),
reads the trace back with ``jax.profiler.ProfileData`` and counts:

- ``graph_launches``: CUDA graph launches, the host API calls ``cuGraphLaunch`` / ``cudaGraphLaunch`` (and their
  ``_ptsz`` forms) that XLA's CUPTI tracer records by their function names on the ``/host:CUPTI`` plane (XLA
  xla/backends/profiler/gpu/cupti_tracer.cc: SetCudaGraphEventUponApiExit names the event
  ``cbdata->functionName``; XLA's CommandBufferThunk launches its graph with the driver's cuGraphLaunch);
- ``kernel_launches``: kernels launched one by one (``cuLaunchKernel*`` / ``cudaLaunchKernel*`` calls); a kernel
  inside a graph is not launched this way;
- ``ops``: what the trace saw execute: on a GPU the events of the ``/device:GPU:N`` planes' ``Stream #N`` lines
  (CUPTI's kernel and copy records, inside a graph or not; XLA cupti_collector.cc GetDeviceXLineName names those
  lines; the other lines of a device plane, such as "XLA Ops", are derived summaries and not counted); on the CPU
  the host events named after the executable's HLO instructions (``op_names``: the CPU runtime's thunks trace
  under their instruction's name).

Caveat built in: XLA runs a command buffer as plain thunks while a profiler session is active unless the
executable was compiled with ``xla_enable_command_buffers_during_profiling`` (XLA's CommandBufferThunk, bug
b/290773547), so a caller that wants graph launches counted compiles with that option
(``PROFILE_WITH_COMMAND_BUFFERS``). A trace that cannot be taken or read, or a GPU trace without any device
activity (no CUPTI), raises ``TraceUnreadable`` with the reason: the caller records "unknown", never a guess.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax

from ..config import first_line

__all__ = ["PROFILE_WITH_COMMAND_BUFFERS", "Launches", "TraceUnreadable", "count", "count_launches", "hlo_names"]

# compiler option: keep command buffers (CUDA graphs) while profiling, so the trace shows what runs untraced
PROFILE_WITH_COMMAND_BUFFERS = {"xla_enable_command_buffers_during_profiling": True}
_GRAPH_LAUNCH = ("cuGraphLaunch", "cudaGraphLaunch")
_KERNEL_LAUNCH = ("cuLaunchKernel", "cudaLaunchKernel", "cuLaunchCooperativeKernel", "cudaLaunchCooperativeKernel")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=", re.M)


class TraceUnreadable(RuntimeError):
    """The trace could not be taken or read, or shows nothing of the device: what ran is unknown."""


@dataclass(frozen=True)
class Launches:
    """Counts of one traced execution (see the module docstring)."""

    graph_launches: int
    kernel_launches: int
    ops: int


def hlo_names(hlo_text: str) -> frozenset[str]:
    """The instruction names of an HLO module's text (``name = shape op(...)``, ``%`` optional)."""
    return frozenset(_INSTRUCTION.findall(hlo_text))


def count(planes: Iterable[Any], op_names: Collection[str] = (), gpu: bool = False) -> Launches:
    """Count the launches and executed ops in a trace's planes (``ProfileData.planes``); ``gpu``: the trace must
    show GPU stream activity (else TraceUnreadable)."""
    graphs = kernels = device_ops = host_ops = 0
    saw_device = False
    for plane in planes:
        on_device = plane.name.startswith("/device:GPU:")
        for line in plane.lines:
            stream = on_device and line.name.startswith("Stream")
            for event in line.events:
                name = event.name
                if stream:
                    saw_device = True
                    device_ops += 1
                elif name.startswith(_GRAPH_LAUNCH):
                    graphs += 1
                elif name.startswith(_KERNEL_LAUNCH):
                    kernels += 1
                elif not on_device and name in op_names:
                    host_ops += 1
    if gpu and not saw_device:
        raise TraceUnreadable("the trace holds no GPU stream activity (is CUPTI available to the profiler?)")
    return Launches(graph_launches=graphs, kernel_launches=kernels, ops=device_ops if saw_device else host_ops)


def count_launches(run: Callable[[], Any], op_names: Collection[str] = ()) -> Launches:
    """Run ``run()`` once under the profiler (blocking on its result) and count what the trace saw.
    Raises TraceUnreadable (one line) when the trace cannot be taken or read."""
    try:
        from jax.profiler import ProfileData
    except ImportError as err:  # a JAX without the trace reader
        raise TraceUnreadable(f"jax.profiler.ProfileData is not available in JAX {jax.__version__}") from err
    with tempfile.TemporaryDirectory(prefix="morphogen-trace-") as tmp:
        try:
            with jax.profiler.trace(tmp):
                jax.block_until_ready(run())
        except RuntimeError as err:  # e.g. another profiler session is already running
            raise TraceUnreadable(f"profiler trace not taken: {first_line(err)}") from err
        files = sorted(Path(tmp).rglob("*.xplane.pb"))
        if not files:
            raise TraceUnreadable("the profiler wrote no .xplane.pb trace")
        try:
            data = ProfileData.from_file(str(files[-1]))
            return count(data.planes, op_names, gpu=jax.default_backend() == "gpu")
        except TraceUnreadable:
            raise
        except Exception as err:  # a trace format this reader does not parse
            raise TraceUnreadable(f"trace not readable: {type(err).__name__}: {first_line(err)}") from err
