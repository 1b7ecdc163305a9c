"""The card's floors (floors.py): the probe, the fractions a cell records from its own times and counts, the
bench.floors switch, and what the report makes of them (its line, matrix.csv's `*_floor_*` columns)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from morphogen_exp import app, floors, report, tracking
from morphogen_exp.config import ConfigError
from morphogen_exp.decision import DecisionRules, context_note, decide
from morphogen_exp.pir import EngineSpec, get

from .conftest import mlflow_runs
from .test_decision import _matrix


def test_fractions_come_from_the_batch_time_and_the_counts() -> None:
    card = floors.Floors("card", "xla", read_gbps=100.0, expand_blocks_per_s=2e9)
    # 2 queries x 3 keys, each a full tree of 2**10 leaves: 2 blocks per internal node, 2 * 1023
    assert floors.batch_blocks(2, 10) == 2 * 3 * 2 * 1023 == 12276
    m = floors.cell_metrics(card, database_bytes=10**9, blocks=12276, batch_ms=20.0)
    assert set(m) == set(floors.FLOOR_METRICS)
    # 1 GB read in 20 ms is 50 GB/s, half of 100; 12276 blocks in 20 ms is 613,800 blocks/s of 2e9
    assert m == pytest.approx({"read_floor_gbps": 100.0, "expand_floor_blocks_per_s": 2e9, "batch_read_floor_frac": 0.5,
                               "batch_expand_floor_frac": 613_800 / 2e9})
    two = floors.cell_metrics(card, database_bytes=10**9, blocks=12276, batch_ms=20.0, devices=2)
    assert two["batch_read_floor_frac"] == pytest.approx(0.25)  # two cards: twice the floor
    assert floors.cell_metrics(None, 10**9, 12276, 20.0) == {}  # not probed: nothing recorded


def test_auto_probes_on_a_gpu_only_the_setting_is_checked_and_no_part_of_a_cells_identity(make_cfg) -> None:
    assert [floors.wanted(s, b) for s, b in (("auto", "cpu"), ("auto", "gpu"), (True, "cpu"), (False, "gpu"))] == \
        [False, True, True, False]
    with pytest.raises(ConfigError, match="^bench.floors must be auto, true or false, got 'maybe'$"):
        app.validate(make_cfg("bench.floors=maybe"))
    on, auto = app.validate(make_cfg("bench.floors=true")), app.validate(make_cfg())
    assert (on.bench.floors, auto.bench.floors) == (True, "auto")
    assert on.config_id == auto.config_id and on.identity() == auto.identity()  # the card's, not the cell's: one cell


def test_the_probe_gives_positive_rates_once_per_device_and_engine(monkeypatch) -> None:
    card = floors.probe(get("xla"), EngineSpec("xla"))
    assert card.engine == "xla" and card.device
    for rate in (card.read_gbps, card.expand_blocks_per_s):
        assert math.isfinite(rate) and rate > 0

    def again(*args: object) -> float:
        raise AssertionError("probed twice")

    monkeypatch.setattr(floors, "_read_floor", again)
    assert floors.probe(get("xla"), EngineSpec("xla", tile_pages=64)) is card  # the same card and engine: cached


def test_a_floors_difference_between_cells_leaves_the_decision_alone() -> None:
    rows = [r | {"_params": {"strategy.name": "full_batch", "bench.floors": str(i % 2 == 0)}}
            for i, r in enumerate(_matrix({"full_batch": (140.0, 0.5)}).to_dict("records"))]
    df = pd.DataFrame(rows)
    assert context_note(df) == "" and decide(df, DecisionRules()).selected == "full_batch"
    noisy = pd.DataFrame([r | {"_params": {**r["_params"], "bench.max_noise": str(i)}} for i, r in enumerate(rows)])
    assert "bench.max_noise" in context_note(noisy)  # a setting that does change a measurement still refuses


def _report_of(workdir: Path, run_id: str) -> report.ReportFiles:
    """The report of one recorded cell, framed as a sweep of its own."""
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/outputs/mlflow.db")
    exp = client.get_experiment_by_name("morphogen_exp")
    assert exp is not None
    parent = client.create_run(exp.experiment_id, tags={tracking.ROLE_TAG: "sweep", tracking.PARENT_TAG: str(workdir)})
    client.set_tag(run_id, "mlflow.parentRunId", parent.info.run_id)
    client.set_terminated(parent.info.run_id)
    return report.build(tracking.Store(client, exp.experiment_id), parent.info.run_id, workdir / "report")


def test_a_cell_with_floors_on_records_them_and_the_report_shows_them(make_cfg, workdir, sess) -> None:
    out = app.run(make_cfg("q=2", "bench.floors=true"), sess)
    assert out.status == "ok", out.error
    (run,) = mlflow_runs(workdir)
    m = run.data.metrics
    assert all(math.isfinite(m[k]) and m[k] > 0 for k in floors.FLOOR_METRICS)
    batch_s = m["batch_ms_p50"] / 1e3  # tiny: 300 raw pages of 4096 bytes, domain 2**9; 2 queries of 3 keys
    assert m["batch_read_floor_frac"] == pytest.approx(300 * 4096 / batch_s / 1e9 / m["read_floor_gbps"])
    assert m["batch_expand_floor_frac"] == pytest.approx(2 * 3 * 2 * 511 / batch_s / m["expand_floor_blocks_per_s"])
    files = _report_of(workdir, run.info.run_id)
    line = next(x for x in files.markdown.read_text().splitlines() if x.startswith("Floors on cpu: read "))
    assert f"q=2 {m['batch_read_floor_frac']:.1%} of the read floor, {m['batch_expand_floor_frac']:.1%} of the expansion" in line
    (row,) = csv.DictReader(files.csv.open())
    assert {k for k in row if "_floor_" in k} == set(floors.FLOOR_METRICS)
    assert float(row["read_floor_gbps"]) == pytest.approx(m["read_floor_gbps"])


def test_auto_on_a_cpu_records_no_floors_and_the_report_has_none(make_cfg, workdir, sess) -> None:
    assert app.run(make_cfg("q=2"), sess).status == "ok"
    (run,) = mlflow_runs(workdir)
    assert not [k for k in run.data.metrics if "_floor_" in k]
    files = _report_of(workdir, run.info.run_id)
    assert "Floors on" not in files.markdown.read_text()
    assert not [k for k in next(csv.DictReader(files.csv.open())) if "_floor_" in k]
