"""The card's floors (floors.py) on a CPU: the blocks and bytes a batch must spend, the fractions a cell records
from its batch time and interval, the probe's arithmetic and caching (its CUDA kernels replaced by fakes that
check their arguments), the bench.floors setting, and the report's guard and line from recorded numbers.
The probes themselves run on a GPU only: tests/test_floors_gpu.py."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from morphogen_exp.config import ConfigError
from morphogen_exp.decide import report
from morphogen_exp.measure import floors
from morphogen_exp.measure.timing import TimingSummary
from morphogen_exp.pir.cuda import CudaUnavailable, probe
from morphogen_exp.record import tracking
from morphogen_exp.run import cell as app

from .conftest import mlflow_runs
from .test_report import Sweeps, _metrics

CARD = floors.Floors("card", stream_gbps=80.0, scan_gbps=100.0, expand_blocks_per_s=2e9, read_rows=1 << 16)


def _batch(times_ms: list[float]) -> TimingSummary:
    return TimingSummary.from_samples(0.0, times_ms, confidence=0.95, max_noise=0.5, stopped_by="noise")


def test_a_batch_must_compute_the_nodes_above_its_pages_and_the_fractions_come_from_its_times() -> None:
    assert floors.tree_blocks(1 << 10, 10) == 2 * 1023  # a full tree: 2 blocks per internal node
    # 5 of 8 leaves: 3 parents, 2 grandparents, the root = 6 nodes
    assert floors.tree_blocks(5, 3) == 12
    assert floors.batch_blocks(2, 300, 9) == 2 * 3 * 2 * (150 + 75 + 38 + 19 + 10 + 5 + 3 + 2 + 1)

    batch = _batch([20.0, 19.0, 21.0, 20.0, 22.0, 18.0, 20.0, 20.5, 19.5])
    m = floors.cell_record(CARD, batch, database_bytes=10**9, blocks=4 * 10**7)
    assert set(m) == set(floors.FLOOR_METRICS)
    assert m[floors.READ] == 100.0 and (m[floors.STREAM], m[floors.SCAN]) == (80.0, 100.0)  # the faster probe
    # 1 GB read in 20 ms is 50 GB/s, half of 100; 4e7 blocks in 20 ms is 2e9/s, all of it
    assert m[floors.READ_FRAC] == pytest.approx(0.5) and m[floors.EXPAND_FRAC] == pytest.approx(1.0)
    # the slow end of the batch interval gives the low end of the fraction
    assert m[f"{floors.READ_FRAC}_lo"] == pytest.approx(1 / batch.p50_hi_ms / 0.1)
    assert m[f"{floors.READ_FRAC}_hi"] == pytest.approx(1 / batch.p50_lo_ms / 0.1)
    assert m[f"{floors.READ_FRAC}_lo"] < 0.5 < m[f"{floors.READ_FRAC}_hi"]
    two = floors.cell_record(CARD, batch, database_bytes=10**9, blocks=4 * 10**7, devices=2)
    assert two[floors.READ_FRAC] == pytest.approx(0.25)  # two cards: twice the floor
    assert floors.cell_record(None, batch, database_bytes=10**9, blocks=1) == {}  # not probed: nothing recorded


def test_the_stream_kernels_reference_and_its_argument_check_hold_on_a_cpu() -> None:
    """stream_xor_reference is the GPU test's oracle; the kernel's wrapper refuses what its 16-byte loads cannot read
    before it needs a GPU."""
    words = np.random.default_rng(3).integers(0, 2**32, size=(5, 36), dtype=np.uint32)
    assert np.asarray(probe.stream_xor_reference(jnp.asarray(words))).tolist() == [int(np.bitwise_xor.reduce(words.ravel()))]
    for bad in (jnp.zeros((6,), jnp.uint32), jnp.zeros((8,), jnp.int32)):
        with pytest.raises(ValueError, match="16-byte loads"):
            probe.stream_xor(bad)


def _fake_kernels(monkeypatch, calls: list[str]) -> None:
    """The probe's three kernels as fakes that check what the probe hands them (the real ones need a GPU)."""

    def stream_xor(words: jax.Array) -> jax.Array:
        calls.append(f"stream {words.shape}")
        return probe.stream_xor_reference(words)

    def call_masked_xor(words: jax.Array, offset: int, masks: jax.Array, *, stages: int) -> jax.Array:
        calls.append(f"scan {masks.shape} stages={stages}")
        assert masks.shape[1] == words.shape[0] and masks.dtype == jnp.uint32
        return jnp.zeros((masks.shape[0], 1024), jnp.uint32)

    def call_expand_xor(words: jax.Array, sub: Any, window: Any, *, stages: int) -> jax.Array:
        calls.append(f"expand {sub.seeds.shape} levels={sub.levels} window={window.lo},{window.count} stages={stages}")
        assert window.count == sub.seeds.shape[1] << sub.levels and window.count <= words.shape[0]
        return jnp.zeros((sub.num_keys, 1024), jnp.uint32)

    monkeypatch.setattr(floors, "stream_xor", stream_xor)
    monkeypatch.setattr(floors, "call_masked_xor", call_masked_xor)
    monkeypatch.setattr(floors, "call_expand_xor", call_expand_xor)
    times = iter([1.0, 2.0, 4.0])  # ms: the stream, the scan, the expansion, in the order the probe times them
    monkeypatch.setattr(floors, "_median_ms", lambda fn, *args, repeats: (fn(*args), next(times))[1])


def test_the_probe_counts_the_bytes_and_blocks_its_kernels_handle(monkeypatch) -> None:
    calls: list[str] = []
    _fake_kernels(monkeypatch, calls)
    shape = floors.ProbeShape(read_rows=1024, scan_keys=3, expand_keys=5, expand_leaves=512, repeats=2, min_rows=256)
    card = floors._measure(jax.devices("cpu")[0], shape)
    assert calls == ["stream (1024, 1024)", "scan (3, 1024, 4) stages=2", "expand (5, 2, 4) levels=8 window=0,512 stages=1"]
    assert card.read_rows == 1024 and card.stream_gbps == pytest.approx(1024 * 4096 / 1e-3 / 1e9)
    assert card.scan_gbps == pytest.approx(card.stream_gbps / 2) and card.read_gbps == card.stream_gbps
    assert card.expand_blocks_per_s == pytest.approx(5 * 2 * 2 * 255 / 4e-3)  # 2 subtrees of 255 nodes per key


def test_the_read_buffer_shrinks_to_fit_beside_a_resident_database() -> None:
    shape = floors.ProbeShape(read_rows=1 << 20, min_rows=1 << 16)
    roomy = SimpleNamespace(memory_stats=lambda: {"bytes_limit": 1 << 40, "bytes_in_use": 0})
    tight = SimpleNamespace(memory_stats=lambda: {"bytes_limit": 80 << 30, "bytes_in_use": 74 << 30})
    full = SimpleNamespace(memory_stats=lambda: {"bytes_limit": 80 << 30, "bytes_in_use": (80 << 30) - 1})
    assert floors._rows_that_fit(roomy, shape) == 1 << 20
    # 6 GiB free: 2^20 pages (4 GiB, 1.6 GB of expansion scratch) do not fit in half of it, 2^19 do
    assert floors._rows_that_fit(tight, shape) == 1 << 19
    assert floors._rows_that_fit(full, shape) == 1 << 16  # never below min_rows


def test_the_probe_runs_once_per_device_on_a_gpu_only(monkeypatch, caplog) -> None:
    cpu = jax.devices("cpu")[0]
    assert [floors.wanted(s, p) for s, p in (("auto", "cpu"), ("auto", "gpu"), (True, "cpu"), (False, "gpu"))] == \
        [False, True, True, False]
    with pytest.raises(CudaUnavailable, match="CUDA kernels"):
        floors.probe(cpu)
    with caplog.at_level(logging.WARNING, logger="morphogen_exp.measure.floors"):
        assert floors.for_cell(True, cpu) is None and floors.for_cell("auto", cpu) is None
    assert len([r for r in caplog.records if "not probed" in r.getMessage()]) == 1  # auto on a CPU: not even tried

    measured: list[Any] = []
    monkeypatch.setattr(floors, "_measure", lambda device, shape: measured.append(device) or CARD)
    gpu = SimpleNamespace(platform="gpu", id=7, device_kind="fake card")
    assert floors.for_cell("auto", gpu) is CARD and floors.probe(gpu) is CARD and measured == [gpu]  # cached
    broken = SimpleNamespace(platform="gpu", id=8, device_kind="fake card")
    monkeypatch.setattr(floors, "_measure", lambda device, shape: floors.Floors("c", 1.0, 0.0, math.inf, 1))
    assert floors.for_cell("auto", broken) is None  # a non-positive or infinite rate is no floor


def test_bench_floors_is_checked_and_no_part_of_a_cells_identity(make_cfg, cli_here, workdir) -> None:
    with pytest.raises(ConfigError, match="^bench.floors must be auto, true or false, got 'maybe'$"):
        app.validate(make_cfg("bench.floors=maybe"))
    off, auto = app.validate(make_cfg("bench.floors=false")), app.validate(make_cfg())
    assert (off.bench.floors, auto.bench.floors) == (False, "auto")
    assert off.config_id == auto.config_id and off.identity() == auto.identity()  # the card's, not the cell's
    res = cli_here("-m", "q=1,2", "bench.floors=true")  # this machine's JAX has no GPU: refused before any cell
    assert res.returncode == 2, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "bench.floors=true needs a GPU" in errors[0] and "bench.floors=auto" in errors[0]
    assert "Traceback" not in res.stderr and mlflow_runs(workdir) == []


def _floor_lines(files: report.ReportFiles) -> list[str]:
    """The report's two floor lines (read, expansion), under its "Floors on cpu" line."""
    lines = files.markdown.read_text().splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("Floors on cpu (floors.py; 100% is at the card's limit):"))
    return lines[start + 1: start + 3]


def _report_of(workdir: Path, run_id: str) -> report.ReportFiles:
    """The report of one recorded cell, framed as a sweep of its own."""
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/outputs/mlflow.db")
    exp = client.get_experiment_by_name("morphogen_exp")
    assert exp is not None
    parent = client.create_run(exp.experiment_id, tags={tracking.ROLE_TAG: "sweep", tracking.PARENT_TAG: str(workdir)})
    client.set_tag(run_id, "mlflow.parentRunId", parent.info.run_id)
    client.set_terminated(parent.info.run_id)
    return report.build(tracking.Store(client, exp.experiment_id), parent.info.run_id, workdir / "report")


def test_a_cell_records_its_fractions_of_the_probed_floors_and_the_report_shows_them(make_cfg, workdir, sess,
                                                                                      monkeypatch) -> None:
    """A real tiny cell with the probe's result injected (app.measure_cell calls floors.for_cell and cell_record)."""
    monkeypatch.setattr(floors, "wanted", lambda setting, platform: True)
    monkeypatch.setattr(floors, "probe", lambda device: CARD)
    out = app.run(make_cfg("q=2"), sess)
    assert out.status == "ok", out.error
    (run,) = mlflow_runs(workdir)
    m = run.data.metrics
    assert set(floors.FLOOR_METRICS) <= set(m) and m[floors.READ] == 100.0 and m[floors.EXPAND] == 2e9
    batch_s = m["batch_ms_p50"] / 1e3  # tiny: 300 raw pages of 4096 bytes, domain 2^9; 2 queries of 3 keys
    assert m[floors.READ_FRAC] == pytest.approx(300 * 4096 / batch_s / 1e9 / 100.0)
    assert m[floors.EXPAND_FRAC] == pytest.approx(floors.batch_blocks(2, 300, 9) / batch_s / 2e9)
    assert m[f"{floors.READ_FRAC}_lo"] == pytest.approx(300 * 4096 / (m["batch_ms_p50_hi"] / 1e3) / 1e9 / 100.0)
    files = _report_of(workdir, run.info.run_id)
    read, expand = _floor_lines(files)
    assert read.startswith("- read 100 GB/s (the faster of a plain 16-byte stream, 80 GB/s, and the bitsliced MMA scan alone, 100")
    assert f"reaches q=2 {m[floors.READ_FRAC]:.0%} [{m[f'{floors.READ_FRAC}_lo']:.0%}, " in read
    assert expand.startswith("- expansion 2 G ChaCha8 blocks/s") and f"reaches q=2 {m[floors.EXPAND_FRAC]:.0%} [" in expand
    (row,) = csv.DictReader(files.csv.open())
    assert set(floors.FLOOR_METRICS) | {"read_floor_valid", "expand_floor_valid"} <= set(row)
    assert (row["read_floor_valid"], row["expand_floor_valid"]) == ("True", "True")
    assert float(row[floors.READ]) == pytest.approx(100.0)


def test_auto_on_a_cpu_records_no_floors_and_the_report_has_none(make_cfg, workdir, sess, monkeypatch) -> None:
    def never(device: Any) -> floors.Floors:
        raise AssertionError("probed on a CPU")

    monkeypatch.setattr(floors, "probe", never)
    assert app.run(make_cfg("q=2"), sess).status == "ok"
    (run,) = mlflow_runs(workdir)
    assert not [k for k in run.data.metrics if "_floor_" in k]
    files = _report_of(workdir, run.info.run_id)
    assert "Floors on" not in files.markdown.read_text()
    assert not [k for k in next(csv.DictReader(files.csv.open())) if "_floor_" in k]


def _floor_metrics(read: tuple[float, float, float], expand: tuple[float, float, float]) -> dict[str, float]:
    """A cell's recorded floors (the card's) and its fractions (median, lo, hi) of each."""
    m = {floors.READ: 3255.0, floors.STREAM: 3255.0, floors.SCAN: 3100.0, floors.EXPAND: 3.0e10}
    for name, (mid, lo, hi) in ((floors.READ_FRAC, read), (floors.EXPAND_FRAC, expand)):
        m |= {name: mid, f"{name}_lo": lo, f"{name}_hi": hi}
    return m


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> Sweeps:
    return Sweeps(tmp_path_factory.mktemp("store"))


def test_a_cell_above_a_floor_beyond_its_interval_marks_that_floor_invalid(sweeps, tmp_path, monkeypatch) -> None:
    """The withdrawn probe's numbers: the cells read at 117% of its read floor and expanded at 233% of its
    expansion floor. The report names the cell instead of printing fractions, matrix.csv keeps the raw columns and
    says which floor held; a cell within its interval of 100%, or a failed one above it, invalidates nothing."""
    monkeypatch.setenv("MORPHOGEN_ROLLOUT_DIR", str(tmp_path / "guards"))
    cells = [(["strategy=full_batch"], 1, _metrics(55.0, 1.0) | _floor_metrics((1.17, 1.16, 1.18), (0.20, 0.19, 0.21)), {}),
             (["strategy=full_batch"], 32, _metrics(348.0, 1.0) | _floor_metrics((0.70, 0.69, 0.71), (2.33, 2.31, 2.35)), {}),
             (["strategy=tiled", "strategy.tile=2"], 32, _metrics(340.0, 1.0) | _floor_metrics((0.69, 0.68, 0.70), (2.40, 2.20, 2.6)),
              {})]
    files = report.build(tracking.Store(sweeps.client, sweeps.exp), sweeps.sweep(tmp_path / "withdrawn", cells), tmp_path / "a")
    read, expand = _floor_lines(files)
    assert read.endswith("): read floor probe invalid: full_batch q=1 reached 117% of it (at least 116%, the low end of its "
                         "interval)") and "reaches" not in read
    assert expand.endswith("): expansion floor probe invalid: full_batch q=32 reached 233% of it (at least 231%, the low end of "
                           "its interval)")  # the cell furthest above it, beyond its interval
    assert "reaches" not in expand
    rows = list(csv.DictReader(files.csv.open()))
    assert {(r["read_floor_valid"], r["expand_floor_valid"]) for r in rows} == {("False", "False")}
    assert sorted(float(r[floors.READ_FRAC]) for r in rows) == [0.69, 0.70, 1.17]  # the raw numbers stay

    edge = [(["strategy=full_batch"], 1, _metrics(55.0, 1.0) | _floor_metrics((1.02, 0.98, 1.06), (0.2, 0.19, 0.21)), {}),
            (["strategy=full_batch"], 32, _metrics(348.0, 1.0) | _floor_metrics((0.7, 0.69, 0.71), (0.66, 0.65, 0.67)), {}),
            (["strategy=tiled", "strategy.tile=2"], 32, _metrics(340.0, 1.0) | _floor_metrics((0.7, 0.69, 0.71), (1.5, 1.4, 1.6)),
             {"cell_status": "failed"})]
    files = report.build(tracking.Store(sweeps.client, sweeps.exp), sweeps.sweep(tmp_path / "edge", edge), tmp_path / "b")
    read, expand = _floor_lines(files)
    assert "full_batch (ships) reaches q=1 102% [98%, 106%], q=32 70% [69%, 71%] (the database read once a batch)" in read
    assert "full_batch (ships) reaches q=1 20% [19%, 21%], q=32 66% [65%, 67%] (3 keys a query" in expand
    assert {(r["read_floor_valid"], r["expand_floor_valid"]) for r in csv.DictReader(files.csv.open())} == {("True", "True")}
