"""One cell through app.run (in process): what it measures, checks and records in MLflow."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from morphogen_exp import app
from morphogen_exp.config import ConfigError

from .conftest import mlflow_runs


@pytest.fixture(autouse=True)
def _fresh_failures():
    app.FAILED_CELLS.clear()
    yield
    app.FAILED_CELLS.clear()


@pytest.mark.parametrize("strategy", ["full_batch", "micro_batch", "multi_stream", "graph_replay", "tiled"])
def test_each_strategy_cell_is_exact_and_recorded(make_cfg, workdir, strategy):
    # q=8 > micro_batch's threshold, a multiple of tiled's tile and of multi_stream's lanes
    out = app.run(make_cfg(f"strategy={strategy}", "q=8"))
    assert out.status == "ok", out.error
    (run,) = mlflow_runs(workdir)
    m, t = run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED"
    assert t["strategy"] == strategy and t["q"] == "8" and t["dataset"] == "tiny"
    assert t["original_strategy"] in {"baseline_full_batch", "adaptive_micro_batch", "multi_stream_4", "cuda_graph_replay", "tiled_tile4"}
    for key in ("jax_version", "device_kind", "git_commit", "cell_key"):
        assert t[key]
    assert m["parity_ok"] == 1 and m["parity_batch_eq_single"] == 1
    assert m["parity_numpy_checked"] == 1 and m["parity_numpy_eq"] == 1
    assert m["parity_xor_checked"] == 8 and m["parity_xor_eq"] == 1
    assert t["checksum_single"] == t["checksum_batch"] and int(t["checksum_single"]) > 0
    assert m["batch_qps"] == pytest.approx(8 / (m["batch_ms_per_batch"] / 1e3))
    assert m["batch_vs_single_speedup"] == pytest.approx(m["single_ms_per_batch"] / m["batch_ms_per_batch"])
    assert run.data.params["strategy.name"] == strategy and run.data.params["q"] == "8"
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/outputs/mlflow.db")
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "timings.json"} <= arts
    timings = json.loads(client.download_artifacts(run.info.run_id, "timings.json", str(workdir)) and (workdir / "timings.json").read_text())
    assert len(timings["batch_ms"]) == 2 and len(timings["single_ms"]) == 2


def test_large_database_oracle_numpy_dpf_and_device_fold(make_cfg, workdir):
    # Above numpy_reference_max_pages the oracle is numpy's DPF with the pages folded on the device
    # (mainnet: 64 GiB of pages are out of the host's reach); on tiny both oracles can run and agree.
    out = app.run(make_cfg("strategy=full_batch", "q=2", "parity.numpy_reference_max_pages=64"))
    assert out.status == "ok", out.error
    (run,) = mlflow_runs(workdir)
    assert run.data.metrics["parity_numpy_checked"] == 1 and run.data.metrics["parity_numpy_eq"] == 1
    assert run.data.tags["parity_numpy_note"].startswith("numpy DPF, pages folded on the device")

    from morphogen_exp import datasets, parity
    from morphogen_exp.queries import make_queries

    cfg = app.parse(make_cfg(), known_strategies=(), known_engines=())
    ds = datasets.load(cfg.dataset, cfg.seed)
    keys = make_queries(ds.domain_bits, ds.num_pages, cfg.seed, 2).keys[0][1]
    assert parity._numpy_dpf_answer(ds, keys).tobytes() == parity._numpy_answer(ds, keys).tobytes()


def test_corrupted_answer_fails_the_cell_loudly(make_cfg, workdir):
    out = app.run(make_cfg("strategy=corrupt", "q=2"))
    assert out.status == "failed" and "ParityError" in out.error and "queries [1]" in out.error
    (run,) = mlflow_runs(workdir)
    assert run.info.status == "FAILED"
    assert run.data.tags["error_class"] == "ParityError"
    assert run.data.metrics["parity_batch_eq_single"] == 0 and run.data.metrics["checksum_match"] == 0
    assert app.FAILED_CELLS and "corrupt-q2" in app.FAILED_CELLS[0]


def test_cell_past_its_time_limit_fails_with_the_reason(make_cfg, workdir):
    out = app.run(make_cfg("strategy=sleepy", "strategy.seconds=30", "q=1", "bench.cell_timeout_s=3"))
    assert out.status == "failed" and "CellTimeout" in out.error
    (run,) = mlflow_runs(workdir)
    assert run.info.status == "FAILED" and run.data.tags["error_class"] == "CellTimeout"
    assert "bench.cell_timeout_s=3" in run.data.tags["error_message"]


def test_cell_over_memory_cap_is_recorded_as_does_not_fit(make_cfg, workdir):
    # tiny is 1.2 MB; 32 live queries' masks need ~4 MB more: 3 MB fits q=1 only.
    assert app.run(make_cfg("q=1", "bench.memory_cap_gib=0.003")).status == "ok"
    out = app.run(make_cfg("q=32", "bench.memory_cap_gib=0.003"))
    assert out.status == "does_not_fit" and "GiB" in out.error
    runs = {r.data.tags["q"]: r for r in mlflow_runs(workdir)}
    assert runs["32"].data.tags["cell_status"] == "does_not_fit"
    assert runs["32"].data.metrics["memory_estimate_gib"] > 0.003


@pytest.mark.parametrize(
    "override, message",
    [
        ("q=0", "q must be in 1..32"),
        ("q=33", "q must be in 1..32"),
        ("q=abc", "q must be an integer"),
        ("bench.iterations=0", "bench.iterations must be in"),
        ("bench.warmup=-1", "bench.warmup must be in"),
        ("engine.name=cuda", "unknown engine 'cuda'; valid: xla, pallas"),
        ("dataset.path=/nonexistent/matrix.bin", "does not exist"),
        ("strategy.tile=0", "strategy.tile must be an integer >= 1"),
    ],
)
def test_bad_settings_raise_one_line_config_errors(make_cfg, workdir, override, message):
    cfg = make_cfg("strategy=tiled", override)
    with pytest.raises(ConfigError, match=message) as err:
        app.run(cfg)
    assert "\n" not in str(err.value)
    if not override.startswith("strategy."):
        assert mlflow_runs(workdir) == []  # rejected before anything was recorded


def test_graph_replay_command_buffer_knob_reaches_xla(make_cfg, workdir):
    # XLA parses the option on every backend: a valid set compiles (applied on a GPU), a bad one
    # is a one-line setting to fix, recorded on its run.
    out = app.run(make_cfg("strategy=graph_replay", "q=2", "strategy.command_buffer=[FUSION,CUSTOM_CALL,WHILE]"))
    assert out.status == "ok", out.error
    (run,) = mlflow_runs(workdir)
    assert run.data.tags["strategy_info.command_buffer_types"] == "FUSION,CUSTOM_CALL,WHILE"
    with pytest.raises(ConfigError, match="strategy.command_buffer='GRAPHS'.*not a valid enum value") as err:
        app.run(make_cfg("strategy=graph_replay", "q=2", "strategy.command_buffer=GRAPHS"))
    assert "\n" not in str(err.value)


def test_pallas_engine_cell_is_exact(make_cfg, workdir):
    """engine=pallas through the whole cell (interpret mode on CPU): same answers as the oracle."""
    out = app.run(make_cfg("engine=pallas", "q=2"))
    assert out.status == "ok", out.error
    (run,) = mlflow_runs(workdir)
    assert run.data.tags["engine"] == "pallas"
    assert run.data.metrics["parity_numpy_eq"] == 1 and run.data.metrics["parity_xor_eq"] == 1


def test_a_new_database_releases_the_previous_one(make_cfg, workdir):
    """A sweep over datasets must not keep the old database (64 GiB at mainnet) alive on the device."""
    import gc
    import weakref

    from morphogen_exp import datasets

    assert app.run(make_cfg("q=1", "dataset.num_pages=300")).status == "ok"
    old = weakref.ref(datasets.load.cache_info() and app._CONTEXT_DATASET[0])
    assert app.run(make_cfg("q=1", "dataset.num_pages=200")).status == "ok"
    gc.collect()
    assert old() is None
    assert app._CONTEXT_DATASET[0].num_pages == 200 and len(app._CONTEXTS) == 1
