"""graph_replay on a GPU with custom calls in its command buffers: the CUDA engines' kernels called through
their command-buffer compatible FFI targets, answers exact against numpy and equal to full_batch's, and what
ran recorded from the profiler trace. Skipped without a GPU; on a device host, in one call:
``python -m pytest -q tests/test_graph_replay_gpu.py``."""

from __future__ import annotations

import jax
import pytest

from morphogen_exp.run import cell as app
from morphogen_exp.run.session import Session

from .conftest import mlflow_runs

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="CUDA graphs and the CUDA kernels need a GPU")

CAPTURE_ALL = "strategy.command_buffer=[FUSION,CUSTOM_CALL,WHILE,CONDITIONAL]"
# several scan steps (a while loop to capture), pages past a tile edge
SMALL = ("dataset=tiny", "dataset.num_pages=3000", "engine.tile_pages=1024")


@pytest.mark.parametrize("engine", ["bitsliced", "fused"])
@pytest.mark.parametrize("q", [1, 4])  # 3 keys (bitsliced: the pipelined kernel) and 12 keys (two kernels; fused's widest)
def test_captured_kernels_answer_exactly(make_cfg, workdir, engine, q):
    sess = Session()
    out = app.run(make_cfg("strategy=graph_replay", f"engine={engine}", f"q={q}", CAPTURE_ALL, *SMALL), sess)
    assert out.status == "ok", out.error
    base = app.run(make_cfg("strategy=full_batch", f"engine={engine}", f"q={q}", *SMALL), sess)
    assert base.status == "ok", base.error
    runs = {r.data.tags["strategy"]: r.data for r in mlflow_runs(workdir)}
    graph, full = runs["graph_replay"], runs["full_batch"]
    assert graph.metrics["parity_numpy_eq"] == 1 and graph.metrics["parity_xor_eq"] == 1
    assert graph.tags["answers_sha256"] == full.tags["answers_sha256"]
    info = {k.removeprefix("strategy_info."): v for k, v in graph.tags.items() if k.startswith("strategy_info.")}
    assert info["backend"] == "gpu"
    twins = {"bitsliced": "morphogen_bmma_expand_xor_graph", "fused": "morphogen_expand_xor_fused_graph"}[engine]
    assert twins in info["ffi_targets"].split("+") and all(t.endswith("_graph") for t in info["ffi_targets"].split("+"))
    assert info["command_buffer_types"] == "FUSION,CUSTOM_CALL,WHILE,CONDITIONAL"
    # what the trace saw: counts, never a guess (a GPU trace without CUPTI records "unknown" and its reason)
    assert info["graph_launches"].isdigit(), info.get("trace_note")
    assert int(info["graph_launches"]) >= 0 and info["kernel_launches"].isdigit() and int(info["traced_ops"]) > 0
