"""graph_replay records what ran from a real profiler trace (tracecount), the report says when no CUDA graph
was launched, and the CUDA kernels' command-buffer compatible FFI targets are chosen only inside
capture.capturable_targets(). On a GPU: tests/test_graph_replay_gpu.py."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import pytest

from morphogen_exp.config import ConfigError
from morphogen_exp.decide import report
from morphogen_exp.pir import cuda
from morphogen_exp.pir.cuda import capture
from morphogen_exp.record import tracking
from morphogen_exp.run import cell as app
from morphogen_exp.strategies import graph_replay, tracecount
from morphogen_exp.strategies.base import check_knobs

from .conftest import mlflow_runs
from .test_cli import _sweep_dir


@pytest.fixture(scope="module")
def tiny_exe():
    """One small compiled CPU executable, shared (compiles are slow here)."""
    x = jnp.arange(64.0).reshape(8, 8)
    exe = jax.jit(lambda a: jnp.sin(a) @ a + 1).lower(x).compile(compiler_options=tracecount.PROFILE_WITH_COMMAND_BUFFERS)
    return exe, x


def test_a_real_cpu_trace_is_parsed_and_counts_what_ran(tiny_exe):
    exe, x = tiny_exe
    names = tracecount.hlo_names(exe.as_text())
    assert names, "the executable's HLO names"
    once = tracecount.count_launches(lambda: exe(x), names)
    assert once.ops > 0 and once.graph_launches == 0 and once.kernel_launches == 0
    # the count follows what ran: two replays in one trace are twice the ops of one
    twice = tracecount.count_launches(lambda: (exe(x), exe(x)), names)
    assert twice.ops == 2 * once.ops
    # the ops are the host events named after HLO instructions, not every event of the trace
    assert tracecount.count_launches(lambda: exe(x), frozenset()).ops == 0


def test_hlo_names_reads_both_printings():
    text = "ENTRY %main {\n  %p = f32[2] parameter(0)\n  ROOT add.3 = f32[2] add(p, p)\n}\n"
    assert tracecount.hlo_names(text) == {"p", "add.3"}


def _plane(name, lines):
    return SimpleNamespace(name=name, lines=[SimpleNamespace(name=ln, events=[SimpleNamespace(name=e) for e in evs])
                                            for ln, evs in lines.items()])


def test_gpu_planes_count_graph_and_kernel_launches_and_device_ops():
    # the shape of a GPU trace: CUPTI's API calls on /host:CUPTI, kernels on the device's stream lines
    planes = [_plane("/host:CUPTI", {"thread 1": ["cuGraphLaunch", "cuGraphLaunch_ptsz", "cuLaunchKernel", "cuLaunchKernelEx",
                                                  "cuMemcpyAsync"]}),
              _plane("/device:GPU:0", {"Stream #13(compute)": ["bmma_scan<1>", "loop_add_fusion", "MemcpyD2H"],
                                       "XLA Ops": ["fusion.1"]})]
    seen = tracecount.count(planes, gpu=True)
    assert seen == tracecount.Launches(graph_launches=2, kernel_launches=2, ops=3)
    with pytest.raises(tracecount.TraceUnreadable, match="no GPU stream activity"):
        tracecount.count([planes[0]], gpu=True)  # CUPTI's device records missing: nothing is known


def test_a_trace_that_cannot_be_taken_is_unreadable_not_a_crash(tiny_exe):
    exe, x = tiny_exe
    with pytest.raises(tracecount.TraceUnreadable, match="profiler trace not taken"):
        tracecount.count_launches(lambda: tracecount.count_launches(lambda: exe(x)))  # a trace inside a trace


def test_graph_replay_cell_records_the_traced_launches(make_cfg, workdir, sess):
    out = app.run(make_cfg("strategy=graph_replay", "q=2"), sess)
    assert out.status == "ok", out.error
    (run,) = mlflow_runs(workdir)
    info = {k.removeprefix("strategy_info."): v for k, v in run.data.tags.items() if k.startswith("strategy_info.")}
    assert info["backend"] == "cpu" and info["graph_launches"] == "0" and info["kernel_launches"] == "0"
    assert int(info["traced_ops"]) > 0 and float(info["trace_s"]) > 0
    assert info["ffi_targets"] == "none"  # engine=xla calls no CUDA kernel
    assert "command_buffers" not in info and "while_loops" not in info  # no HLO-text counts
    assert run.data.metrics["parity_numpy_eq"] == 1


def test_without_a_trace_reader_the_cell_records_unknown_and_the_report_says_so(make_cfg, workdir, sess, monkeypatch):
    monkeypatch.delattr(jax.profiler, "ProfileData")  # a JAX without the trace reader
    out = app.run(make_cfg("strategy=graph_replay", "q=1"), sess)
    assert out.status == "ok", out.error  # never a crash: the cell is measured and checked as always
    runs = mlflow_runs(workdir)
    tags = runs[0].data.tags
    assert tags["strategy_info.graph_launches"] == "unknown"
    assert tags["strategy_info.trace_note"].startswith("jax.profiler.ProfileData is not available")
    assert "strategy_info.traced_ops" not in tags
    notes = report._graph_replay_notes(tracking.cells_frame(runs))
    assert notes.startswith("- **graph_replay ran without a readable trace (whether a CUDA graph was launched is unknown)** "
                            "on cpu (graph_launches=unknown") and "cannot be read as CUDA-graph replay" in notes


def test_trace_false_takes_no_trace_and_the_report_says_so(make_cfg, workdir, sess, monkeypatch):
    def no_trace(*args, **kwargs):
        raise AssertionError("strategy.trace=false took a profiler trace")

    monkeypatch.setattr(tracecount, "count_launches", no_trace)
    out = app.run(make_cfg("strategy=graph_replay", "strategy.trace=false", "q=1"), sess)
    assert out.status == "ok", out.error
    runs = mlflow_runs(workdir)
    tags = runs[0].data.tags
    assert tags["strategy_info.graph_launches"] == "not traced" and "strategy_info.trace_s" not in tags
    assert runs[0].data.metrics["parity_numpy_eq"] == 1
    notes = report._graph_replay_notes(tracking.cells_frame(runs))
    assert notes.startswith("- **graph_replay was not traced (whether a CUDA graph was launched is unknown)** on cpu "
                            "(graph_launches=not traced, strategy.trace=false, at q=1)")
    with pytest.raises(ConfigError, match="strategy.trace must be true or false, got 'maybe'"):
        check_knobs("graph_replay", {"command_buffer": None, "trace": "maybe"}, 1)


def test_report_says_graph_replay_ran_as_plain_launches(cli_here, workdir):
    res = cli_here("-m", "strategy=graph_replay", "q=1,2")
    assert res.returncode == 0, res.stderr[-3000:]
    report = (_sweep_dir(workdir) / "report.md").read_text()
    notes = report[report.index("## Notes"):]
    assert ("- **graph_replay ran as plain kernel launches (no CUDA graph captured)** on cpu "
            "(graph_launches=0, from a profiler trace of one replay, at q=1, 2)") in notes
    assert "graph_launches=0" in report[report.index("## Strategies compared"):report.index("## Batch latency")]


def test_the_graph_targets_are_chosen_only_inside_the_scope():
    # inside capturable_targets the twin, outside (before and after) the default target, even for one shared
    # jitted function: the choice is part of JAX's trace cache key, so nothing traced inside leaks out
    def body(x):
        return jax.ffi.ffi_call(capture.target("morphogen_probe_target"), jax.ShapeDtypeStruct(x.shape, x.dtype))(x)

    fn = jax.jit(body)
    x = jnp.zeros(4, jnp.uint32)
    assert "@morphogen_probe_target(" in fn.lower(x).as_text()
    with capture.capturable_targets() as twins:
        assert twins and "@morphogen_probe_target_graph(" in fn.lower(x).as_text()
        assert capture.target("morphogen_bmma_expand_xor") == "morphogen_bmma_expand_xor_graph"
    assert "@morphogen_probe_target(" in fn.lower(x).as_text()
    assert capture.target("morphogen_bmma_expand_xor") == "morphogen_bmma_expand_xor"


def test_graph_replay_asks_for_the_graph_targets_only_with_custom_calls(make_cfg, workdir, sess, monkeypatch):
    entered: list[bool] = []

    @contextlib.contextmanager
    def recorded():
        with capture.capturable_targets() as twins:
            entered.append(twins)
            yield twins

    monkeypatch.setattr(graph_replay, "capturable_targets", recorded)
    for knob, asked in (("strategy.command_buffer=[FUSION,WHILE]", []), ("strategy.command_buffer=[FUSION,CUSTOM_CALL]", [True])):
        entered.clear()
        out = app.run(make_cfg("strategy=graph_replay", "q=1", knob), sess)
        assert out.status == "ok", out.error
        assert entered == asked, knob


# Reads each named handler's traits as XLA does when it registers one: a call frame carrying the metadata extension.
_TRAITS_READER = r"""
#include <dlfcn.h>
#include <cstdio>
#include "xla/ffi/api/c_api.h"
int main(int argc, char** argv) {
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!lib) { std::printf("dlopen: %s\n", dlerror()); return 2; }
  for (int i = 2; i < argc; ++i) {
    auto* fn = reinterpret_cast<XLA_FFI_Handler*>(dlsym(lib, argv[i]));
    if (!fn) return 3;
    XLA_FFI_Metadata metadata = {XLA_FFI_Metadata_STRUCT_SIZE};
    XLA_FFI_Metadata_Extension ext = {{XLA_FFI_Metadata_Extension_STRUCT_SIZE, XLA_FFI_Extension_Metadata, nullptr},
                                      &metadata};
    XLA_FFI_CallFrame frame = {};
    frame.struct_size = XLA_FFI_CallFrame_STRUCT_SIZE;
    frame.extension_start = &ext.extension_base;
    if (fn(&frame) != nullptr) return 4;
    std::printf("%s %u\n", argv[i], metadata.traits);
  }
  return 0;
}
"""


@pytest.mark.skipif(shutil.which("nm") is None or shutil.which("g++") is None, reason="needs nm and g++")
def test_the_library_exports_the_command_buffer_compatible_handlers(tmp_path):
    """nvcc compiles the kernels (no GPU needed); every registered symbol is exported (the twins, the floors' read
    probe and the rest: what register() loads on a GPU), and each twin declares
    XLA's command-buffer trait (XLA_FFI_HANDLER_TRAITS_COMMAND_BUFFER_COMPATIBLE, 1) where its default does not."""
    try:
        lib = cuda.build()
    except cuda.CudaUnavailable as err:
        pytest.skip(str(err))
    exported = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True, check=True).stdout
    symbols = {line.split()[-1] for line in exported.splitlines() if line.strip()}
    graph = {t: s for t, s in cuda.TARGETS.items() if t.endswith(capture.GRAPH_SUFFIX)}
    assert graph == {"morphogen_bmma_masked_xor_graph": "MorphogenBmmaMaskedXorGraph",
                     "morphogen_bmma_expand_xor_graph": "MorphogenBmmaExpandXorGraph",
                     "morphogen_expand_xor_fused_graph": "MorphogenExpandXorFusedGraph"}
    assert set(cuda.TARGETS.values()) <= symbols

    (tmp_path / "traits.cc").write_text(_TRAITS_READER)
    subprocess.run(["g++", "-std=c++17", f"-I{jax.ffi.include_dir()}", str(tmp_path / "traits.cc"), "-o",
                    str(tmp_path / "traits"), "-ldl"], check=True)
    pairs = [(t.removesuffix(capture.GRAPH_SUFFIX), t) for t in graph]
    names = [cuda.TARGETS[n] for pair in pairs for n in pair]
    res = subprocess.run([str(tmp_path / "traits"), str(lib), *names], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    traits = dict(line.split() for line in res.stdout.splitlines())
    assert traits == {cuda.TARGETS[n]: ("1" if n.endswith(capture.GRAPH_SUFFIX) else "0") for n in {*graph, *(d for d, _ in pairs)}}
