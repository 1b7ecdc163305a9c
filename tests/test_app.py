"""One cell through app.run (in process): what it measures, checks and records in MLflow."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from morphogen_exp.config import ConfigError
from morphogen_exp.run import cell as app
from morphogen_exp.run.session import Session

from .conftest import mlflow_runs


@pytest.mark.parametrize("strategy", ["full_batch", "micro_batch", "multi_stream", "graph_replay", "tiled"])
def test_each_strategy_cell_is_exact_and_recorded(make_cfg, workdir, sess, strategy):
    # q=8 > micro_batch's threshold, a multiple of tiled's tile and of multi_stream's lanes
    out = app.run(make_cfg(f"strategy={strategy}", "q=8"), sess)
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
    assert t["database_layout"] == "raw pages" and m["database_gib"] * 2**30 == 300 * 4096  # tiny: 300 raw pages
    assert m["batch_qps"] == pytest.approx(8 / (m["batch_ms_per_batch"] / 1e3))
    assert run.data.params["strategy.name"] == strategy and run.data.params["q"] == "8"
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/outputs/mlflow.db")
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "timings.json"} <= arts
    local = client.download_artifacts(run.info.run_id, "timings.json", str(workdir))
    timings = json.loads(Path(local).read_text())
    for path in ("single", "batch"):  # every sample is kept, as many as the stopping rule took
        assert len(timings[path]["times_ms"]) == m[f"{path}_samples"] == m["speedup_pairs"] >= 6  # 0.95 needs 6 rounds
        assert timings[path]["p50_lo_ms"] <= m[f"{path}_ms_p50"] <= timings[path]["p50_hi_ms"]
    assert m["batch_ms_per_batch_lo"] <= m["batch_ms_per_batch"] <= m["batch_ms_per_batch_hi"]
    for path in ("single", "batch"):  # one interval per quantity: the cell's latency bounds are its summary's own
        assert (m[f"{path}_ms_per_batch_lo"], m[f"{path}_ms_per_batch_hi"]) == (timings[path]["p50_lo_ms"], timings[path]["p50_hi_ms"])
    # the speedup is paired: the median of the rounds' single / batch ratios, from the recorded samples
    ratios = np.asarray(timings["single"]["times_ms"]) / np.asarray(timings["batch"]["times_ms"])
    assert m["batch_vs_single_speedup"] == pytest.approx(float(np.median(ratios)))
    assert m["batch_vs_single_speedup_lo"] <= m["batch_vs_single_speedup"] <= m["batch_vs_single_speedup_hi"]
    assert m["batch_passes"] == {"full_batch": 1, "graph_replay": 1, "tiled": 2, "micro_batch": 4, "multi_stream": 8}[strategy]
    # keys of one scan: multi_stream's lanes each scan one query (3 keys), not their 4 queries in flight
    assert m["scan_keys"] == {"full_batch": 24, "graph_replay": 24, "tiled": 12, "micro_batch": 6, "multi_stream": 3}[strategy]
    assert not any(k.startswith("engine_path.") for k in t)  # engine xla has one path: nothing to record
    assert run.data.tags["mlflow.source.name"] == "python -m morphogen_exp"
    assert [i.dataset.name for i in run.inputs.dataset_inputs] == ["tiny"]


def test_large_database_oracle_numpy_dpf_and_device_fold(make_cfg, workdir, sess):
    # Above numpy_reference_max_pages the oracle is numpy's DPF with the pages folded on the device
    # (mainnet: 64 GiB of pages are out of the host's reach); on tiny both oracles can run and agree.
    out = app.run(make_cfg("strategy=full_batch", "q=2", "parity.numpy_reference_max_pages=64"), sess)
    assert out.status == "ok", out.error
    (run,) = mlflow_runs(workdir)
    assert run.data.metrics["parity_numpy_checked"] == 1 and run.data.metrics["parity_numpy_eq"] == 1
    assert run.data.tags["parity_numpy_note"].startswith("numpy DPF, pages folded on the device")

    from morphogen_exp.measure import parity
    from morphogen_exp.measure.queries import make_queries

    cfg = app.parse(make_cfg(), known_strategies=(), known_engines=())
    ds = sess.database(cfg.dataset, cfg.seed)
    keys = make_queries(ds.domain_bits, ds.num_pages, cfg.seed, 2).keys[0][1]
    assert parity._numpy_dpf_answer(ds, keys, {}).tobytes() == parity._numpy_answer(ds, keys, {}).tobytes()


def test_corrupted_answer_fails_the_cell_loudly(make_cfg, workdir, sess):
    out = app.run(make_cfg("strategy=corrupt", "q=2"), sess)
    assert out.status == "failed" and "ParityError" in out.error and "queries [1]" in out.error
    (run,) = mlflow_runs(workdir)
    assert run.info.status == "FAILED"
    assert run.data.tags["error_class"] == "ParityError"
    assert run.data.metrics["parity_batch_eq_single"] == 0 and run.data.metrics["checksum_match"] == 0
    assert out.name == "corrupt-q2"


def test_cell_past_its_time_limit_fails_with_the_reason(make_cfg, workdir, sess):
    out = app.run(make_cfg("strategy=sleepy", "strategy.seconds=30", "q=1", "bench.cell_timeout_s=3"), sess)
    assert out.status == "failed" and "CellTimeout" in out.error
    (run,) = mlflow_runs(workdir)
    assert run.info.status == "FAILED" and run.data.tags["error_class"] == "CellTimeout"
    assert "bench.cell_timeout_s=3" in run.data.tags["error_message"]


def test_the_wait_for_the_device_lock_counts_against_the_cells_timeout(make_cfg, workdir, sess, monkeypatch):
    """A cell that waited 3 s for its device gets what is left of bench.cell_timeout_s=5, not 5 more; its error and
    its tags say how long it waited and what was left."""
    import fcntl
    import threading
    import time

    from morphogen_exp.measure import devlock

    monkeypatch.setenv(devlock.ENV_VAR, str(workdir))
    (key,) = devlock.device_keys()
    fd = os.open(workdir / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another cell holds the device until this one has waited 3 s for it
    lock_one, asked = devlock._lock_one, []

    def waited_3_s(*args):
        asked.append(time.monotonic())
        threading.Timer(3.0, os.close, (fd,)).start()
        return lock_one(*args)

    monkeypatch.setattr(devlock, "_lock_one", waited_3_s)
    out = app.run(make_cfg("strategy=sleepy", "strategy.seconds=30", "q=1", "bench.cell_timeout_s=5"), sess)
    took = time.monotonic() - asked[0]
    assert out.status == "failed" and "CellTimeout" in out.error
    (run,) = mlflow_runs(workdir)
    tags = run.data.tags
    waited, left = float(tags["device_lock_wait_s"]), float(tags["cell_timeout_left_s"])
    assert 2.5 <= waited < 4.5 and abs(waited + left - 5) < 0.2, tags  # the wait came out of the 5 s
    assert f"bench.cell_timeout_s=5, {waited:.0f} s of it waiting for the device lock" in tags["error_message"], tags
    assert took < 7, took  # 5 s from asking for the device, not 3 s + 5 s


def test_cell_over_memory_cap_is_recorded_as_does_not_fit(make_cfg, workdir, sess):
    # tiny is 1.2 MB; 32 live queries' masks need ~4 MB more: 3 MB fits q=1 only.
    assert app.run(make_cfg("q=1", "bench.memory_cap_gib=0.003"), sess).status == "ok"
    out = app.run(make_cfg("q=32", "bench.memory_cap_gib=0.003"), sess)
    assert out.status == "does_not_fit" and "GiB" in out.error
    runs = {r.data.tags["q"]: r for r in mlflow_runs(workdir)}
    assert runs["32"].data.tags["cell_status"] == "does_not_fit"
    assert runs["32"].data.metrics["memory_estimate_gib"] > 0.003


@pytest.mark.parametrize(
    "override, message",
    [
        ("q=0", "q must be in 1..32"),
        ("q=33", "q must be in 1..32"),
        ("bench.max_noise=0", "bench.max_noise must be a positive number"),
        ("bench.confidence=1.0", "bench.confidence must be strictly between 0 and 1"),
        ("bench.max_time_s=-1", "bench.max_time_s must be a positive number"),
        ("engine.tile_pages=3", "engine.tile_pages must be a power of two"),
        ("decision.rank_by=nope", "decision.rank_by='nope' is not a metric"),
        ("bench.iterations=0", "bench.iterations must be in"),
        ("bench.warmup=-1", "bench.warmup must be in"),
        ("engine.name=cuda", "unknown engine 'cuda'; valid: xla, pallas"),
        ("dataset.path=/nonexistent/matrix.bin", "does not exist"),
        ("strategy.tile=0", "strategy.tile must be an integer >= 1"),
    ],
)
def test_bad_settings_raise_one_line_config_errors(make_cfg, workdir, sess, override, message):
    cfg = make_cfg("strategy=tiled", override)
    with pytest.raises(ConfigError, match=message) as err:
        app.run(cfg, sess)
    assert "\n" not in str(err.value)
    if not override.startswith("strategy."):
        assert mlflow_runs(workdir) == []  # rejected before anything was recorded


def test_graph_replay_command_buffer_knob_reaches_xla(make_cfg, workdir, sess):
    # XLA parses the option on every backend: a valid set compiles (applied on a GPU), a bad one
    # is a one-line setting to fix, recorded on its run.
    out = app.run(make_cfg("strategy=graph_replay", "q=2", "strategy.command_buffer=[FUSION,CUSTOM_CALL,WHILE]"), sess)
    assert out.status == "ok", out.error
    (run,) = mlflow_runs(workdir)
    assert run.data.tags["strategy_info.command_buffer_types"] == "FUSION,CUSTOM_CALL,WHILE"
    with pytest.raises(ConfigError, match="strategy.command_buffer='GRAPHS'.*not a valid enum value") as err:
        app.run(make_cfg("strategy=graph_replay", "q=2", "strategy.command_buffer=GRAPHS"), sess)
    assert "\n" not in str(err.value)


def test_pallas_engine_cell_is_exact(make_cfg, workdir, sess):
    """engine=pallas through the whole cell (interpret mode on CPU): same answers as the oracle."""
    out = app.run(make_cfg("engine=pallas", "q=2"), sess)
    assert out.status == "ok", out.error
    (run,) = mlflow_runs(workdir)
    assert run.data.tags["engine"] == "pallas"
    assert run.data.metrics["parity_numpy_eq"] == 1 and run.data.metrics["parity_xor_eq"] == 1


def test_a_cuda_engine_that_cannot_build_here_is_a_setup_to_fix(make_cfg, workdir, sess, monkeypatch):
    """engine=fused on a GPU host whose kernels cannot be built (no nvcc, no CUDA backend): one line naming the engine
    and what is missing, the cell recorded FAILED (the sweep stops instead of failing every cell the same way)."""
    from morphogen_exp.pir import backend, cuda

    monkeypatch.setattr(backend, "on_gpu", lambda: True)  # the GPU path on this CPU: register() refuses the backend
    with pytest.raises(ConfigError, match=r"^engine=fused: the CUDA kernels need a CUDA GPU backend") as err:
        app.run(make_cfg("engine=fused", "q=1", "strategy=full_batch"), sess)
    assert "\n" not in str(err.value) and cuda.CudaUnavailable.__name__ in mlflow_runs(workdir)[0].data.tags["error_class"]
    assert mlflow_runs(workdir)[0].info.status == "FAILED"


def test_a_new_database_releases_the_previous_one(make_cfg, workdir):
    """A sweep over datasets must not keep the old database (64 GiB at mainnet) alive on the device."""
    import gc
    import weakref

    own = Session()
    assert app.run(make_cfg("q=1", "dataset.num_pages=300"), own).status == "ok"
    old = weakref.ref(own.dataset)
    assert app.run(make_cfg("q=1", "dataset.num_pages=200"), own).status == "ok"
    gc.collect()
    assert old() is None
    assert own.dataset is not None and own.dataset.num_pages == 200 and len(own.contexts) == 1


# --------------------------------------------------------------------------- one schema, strict types

def test_booleans_are_parsed_strictly_never_by_truthiness(make_cfg):
    from morphogen_exp.config import one_line, parse

    assert parse(make_cfg("resume=no")).resume is False
    assert parse(make_cfg("resume=true")).resume is True
    assert parse(make_cfg("decision.require_parity=yes")).decision["require_parity"] is True
    assert parse(make_cfg("decision.require_parity=false")).decision["require_parity"] is False
    for bad in ("parity.xor_check=maybe", "resume=sometimes", "engine.unroll=abc", "q=abc"):
        with pytest.raises(Exception) as err:
            make_cfg(bad)
        assert one_line(err.value).startswith(bad + ": Value '")
        assert "not a valid bool" in one_line(err.value) or "could not be converted to Integer" in one_line(err.value)


def test_schema_declares_defaults_once_and_yaml_only_chooses(make_cfg):
    from dataclasses import asdict

    from morphogen_exp.config import BenchConfig, DecisionConfig, ParityConfig, parse

    rc = parse(make_cfg())
    assert dict(rc.decision) == asdict(DecisionConfig()) | {"prefer": list(rc.decision["prefer"])}
    assert rc.decision["tie_within"] == DecisionConfig().tie_within
    assert asdict(rc.parity) == asdict(ParityConfig())
    b = asdict(rc.bench)
    assert {k: b[k] for k in ("max_noise", "min_time_s", "max_time_s", "confidence")} == {
        "max_noise": 0.01, "min_time_s": 0.0, "max_time_s": 3.0, "confidence": 0.95}
    assert asdict(BenchConfig()) | {"compilation_cache_dir": b["compilation_cache_dir"], "iterations": 2, "warmup": 0} == b


def test_a_new_dataset_yaml_is_accepted(make_cfg, workdir):
    extra = workdir / "outputs"  # on the search path (file://outputs), like any config folder a user adds
    (extra / "dataset").mkdir(parents=True)
    (extra / "dataset" / "custom.yaml").write_text("name: custom\nnum_pages: 77\npath: null\n")
    rc = app.validate(make_cfg("dataset=custom"))
    assert rc.dataset.name == "custom" and rc.dataset.num_pages == 77


def test_mainnet_is_the_originals_shape_and_its_memory_estimate_is_right(make_cfg, workdir, sess):
    from morphogen_exp.measure import datasets
    from morphogen_exp.pir.engine import raw_database_bytes

    rc = app.validate(make_cfg("dataset=mainnet"))
    assert rc.dataset.num_pages == 16817159 and datasets.domain_bits_for(rc.dataset.num_pages) == 25
    assert raw_database_bytes(rc.dataset.num_pages) == 68_883_083_264  # 68.88 GB
    out = app.run(make_cfg("dataset=mainnet", "q=1", "bench.memory_cap_gib=64"), sess)  # refused before allocating
    assert out.status == "does_not_fit"
    (run,) = mlflow_runs(workdir)
    assert run.data.metrics["memory_estimate_gib"] > 68_883_083_264 / 2**30
    assert app.validate(make_cfg("dataset=mainnet", "dataset.num_pages=16777216")).dataset.num_pages == 1 << 24


# --------------------------------------------------------------------------- identity (resume, config_id)

def test_cell_identity_covers_dataset_contents_and_device(make_cfg, workdir, monkeypatch):
    a, b = workdir / "a.bin", workdir / "b.bin"
    a.write_bytes(bytes(4096 * 3))
    b.write_bytes(bytes(4096) + b"\x01" + bytes(4096 * 2 - 1))  # same size, other contents
    ia = app.identity_tags(app.validate(make_cfg(f"dataset.path={a}", "q=1")))
    ib = app.identity_tags(app.validate(make_cfg(f"dataset.path={b}", "q=1")))
    assert ia["dataset.fingerprint"] != ib["dataset.fingerprint"] and ia["cell_key"] != ib["cell_key"]
    q2 = app.identity_tags(app.validate(make_cfg(f"dataset.path={a}", "q=2")))
    assert q2["config_id"] == ia["config_id"] and q2["cell_key"] != ia["cell_key"]  # config_id is without q
    tile = app.identity_tags(app.validate(make_cfg(f"dataset.path={a}", "q=1", "strategy=tiled", "strategy.tile=2")))
    assert tile["config_id"] != ia["config_id"]
    real = app.device_tags()
    monkeypatch.setattr(app, "device_tags", lambda: {**real, "device_kind": "NVIDIA H100 80GB HBM3"})
    other = app.identity_tags(app.validate(make_cfg(f"dataset.path={a}", "q=1")))
    assert other["cell_key"] != ia["cell_key"] and other["config_id"] == ia["config_id"]


# --------------------------------------------------------------------------- runs never left RUNNING

def test_failure_while_logging_config_ends_the_run(make_cfg, workdir, sess, monkeypatch):
    from morphogen_exp.record.tracking import Tracker

    real = Tracker.log_text

    def broken(self, run_id, text, artifact_file):
        if artifact_file == "config.yaml":
            raise OSError(28, "No space left on device")
        return real(self, run_id, text, artifact_file)

    monkeypatch.setattr(Tracker, "log_text", broken)
    out = app.run(make_cfg("q=1"), sess)
    assert out.status == "failed" and "No space left" in out.error
    (run,) = mlflow_runs(workdir)
    assert run.info.status == "FAILED" and run.data.tags["error_class"] == "OSError"


def test_stale_runs_of_a_sweep_are_closed_only_when_their_process_is_gone(workdir):
    import subprocess
    import sys

    from morphogen_exp.config import MlflowConfig
    from morphogen_exp.fields import PARENT_TAG, PID_TAG
    from morphogen_exp.record.tracking import Tracker

    tr = Tracker(MlflowConfig(f"sqlite:///{workdir}/outputs/mlflow.db", "morphogen_exp"))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    sweep = str(workdir / "it's a \"sweep\"")  # both quote kinds in the folder name (no filter string can hold it)
    gone = tr.start_run("gone", {PARENT_TAG: sweep, "morphogen.role": "cell"})
    tr.log(gone, tags={PID_TAG: dead.stdout.strip()})
    tr.start_run("alive", {PARENT_TAG: sweep})  # this process: alive
    other = tr.start_run("other sweep", {PARENT_TAG: str(workdir / "other")})
    tr.log(other, tags={PID_TAG: dead.stdout.strip()})
    assert tr.close_stale(sweep) == [gone]
    status = {r.info.run_name: (r.info.status, r.data.tags.get("cell_status")) for r in mlflow_runs(workdir)}
    assert status == {"gone": ("KILLED", "killed"), "alive": ("RUNNING", None), "other sweep": ("RUNNING", None)}


@pytest.mark.fresh_store
def test_interrupted_store_creation_leaves_no_store(workdir, monkeypatch):
    import mlflow.store.db.utils as dbutils

    from morphogen_exp.config import MlflowConfig
    from morphogen_exp.record.tracking import Tracker

    db = workdir / "outputs" / "fresh.db"
    cfg = MlflowConfig(f"sqlite:///{db}", "morphogen_exp")
    real = dbutils._upgrade_db

    def interrupted(engine):
        real(engine)
        raise KeyboardInterrupt  # Ctrl-C after the migrations began

    monkeypatch.setattr(dbutils, "_upgrade_db", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Tracker(cfg)
    assert not db.exists() and not list(db.parent.glob(".fresh.db.creating-*"))
    monkeypatch.setattr(dbutils, "_upgrade_db", real)
    assert Tracker(cfg).experiment_id  # the next run creates it whole
    assert os.path.getsize(db) > 0


def test_half_created_store_says_what_to_do(workdir):
    import sqlite3

    from morphogen_exp.config import MlflowConfig
    from morphogen_exp.record.tracking import Tracker

    db = workdir / "outputs" / "broken.db"
    with sqlite3.connect(db) as con:  # what an interrupted in-place migration leaves behind
        con.execute("CREATE TABLE _alembic_tmp_experiments (x INTEGER)")
    with pytest.raises(ConfigError, match=r"half-created by an interrupted run; move it away \(mv ") as err:
        Tracker(MlflowConfig(f"sqlite:///{db}", "morphogen_exp"))
    assert "\n" not in str(err.value)


def test_a_resumed_cell_keeps_every_timed_sample_and_its_files(workdir):
    from morphogen_exp.config import MlflowConfig
    from morphogen_exp.fields import PARENT_TAG, ROLE_TAG
    from morphogen_exp.record.tracking import Tracker
    from morphogen_exp.run import cell as app
    from morphogen_exp.run.session import SweepRef

    tr = Tracker(MlflowConfig(f"sqlite:///{workdir}/outputs/mlflow.db", "morphogen_exp"))
    sweep = str(workdir / "sweep")
    old = tr.start_run("sweep", {ROLE_TAG: "sweep", PARENT_TAG: sweep})
    prev = tr.start_run("tiled-q4", {ROLE_TAG: "cell", PARENT_TAG: sweep, "cell_key": "k1", "cell_status": "ok", "q": "4",
                                     "params_digest": "d1"}, old)
    legacy = tr.start_run("tiled-q2", {ROLE_TAG: "cell", PARENT_TAG: sweep, "cell_key": "k2", "cell_status": "ok"}, old)
    tr.end(legacy, "FINISHED")  # recorded before cells logged their params digest
    tr.log(prev, metrics={"batch_qps": 5.0, "parity_ok": 1.0})  # an older cell: every metric at step 0
    tr.log_series(prev, "batch_ms_iter", [1.0, 2.0, 3.0])
    tr.log_text(prev, '{"batch": [1, 2, 3]}', "timings.json")
    tr.end(prev, "FINISHED")
    tr.end(old, "KILLED")
    new = tr.start_run("sweep", {ROLE_TAG: "sweep", PARENT_TAG: sweep})
    out = app._resume(None, tr, {"cell_key": "k1"}, SweepRef(sweep, new), "tiled-q4")
    assert out is not None and out.status == "resumed"
    history = tr.client.get_metric_history(out.run_id, "batch_ms_iter")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(0, 1.0), (1, 2.0), (2, 3.0)]
    assert tr.client.get_run(out.run_id).data.metrics["batch_qps"] == 5.0
    # the copy draws in the chart view as a measured cell does: its charted metrics at step = q
    assert [m.step for m in tr.client.get_metric_history(out.run_id, "batch_qps")] == [4]
    assert [m.step for m in tr.client.get_metric_history(out.run_id, "parity_ok")] == [0]
    assert [a.path for a in tr.client.list_artifacts(out.run_id)] == ["timings.json"]
    assert app._resume(None, tr, {"cell_key": "k2"}, SweepRef(sweep, new), "tiled-q2") is None  # legacy: measured again


@pytest.mark.parametrize("dataset", ["tiny", "small", "mainnet"])
def test_a_files_page_count_comes_from_the_file_and_another_num_pages_is_one_line(make_cfg, workdir, dataset):
    (workdir / "m.bin").write_bytes(b"\1" * (5 * 4096))
    path = f"dataset.path={workdir / 'm.bin'}"
    rc = app.validate(make_cfg(f"dataset={dataset}", path))  # the yaml's own count (300, 65536...) yields to the file's
    assert rc.dataset.num_pages == 5 and rc.resolved["dataset"]["num_pages"] == 5  # what is logged is what is scanned
    assert app.validate(make_cfg(f"dataset={dataset}", path, "dataset.num_pages=5")).dataset.num_pages == 5
    with pytest.raises(ConfigError) as err:
        app.validate(make_cfg(f"dataset={dataset}", path, "dataset.num_pages=7"))
    assert str(err.value) == (f"dataset.num_pages=7 but dataset.path '{workdir / 'm.bin'}' holds 5 pages: a file's page "
                              "count comes from the file; drop dataset.num_pages (or set it to 5)")
    assert app.validate(make_cfg(f"dataset={dataset}")).dataset.num_pages == {"tiny": 300, "small": 65536,
                                                                              "mainnet": 16817159}[dataset]
