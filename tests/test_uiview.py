"""What the MLflow UI shows of a sweep without expanding it: the sweep run's metrics (the shipped configuration per
q) and its matrix table, published only; every cell's name with its knobs and its description; the plots' titles;
matrix.csv's "-" for a knob a strategy does not have; and a CPU sweep called a dry run."""

from __future__ import annotations

import copy
import csv
import json
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from morphogen_exp.decide import report, rollout
from morphogen_exp.decide.decision import DecisionRules, decide
from morphogen_exp.record import tracking, uiview
from morphogen_exp.run.sweep import review_hint

from .test_report import Sweeps, _metrics


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> Sweeps:
    return Sweeps(tmp_path_factory.mktemp("ui-store"))


@pytest.fixture(autouse=True)
def guard_store(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(rollout.ENV_VAR, str(tmp_path / "guards"))


def _cells(device: str = "cpu") -> list:
    tags = {"device_kind": device}
    cells = [(["strategy=tiled", f"strategy.tile={t}"], q, _metrics(qps * q / 32, 1.0), tags)
             for t, qps in (("2", 146.0), ("4", 120.0)) for q in (4, 32)]
    cells += [(["strategy=micro_batch"], q, _metrics(100.0 * q / 32, 1.0), tags) for q in (4, 32)]
    return cells


def _store(sweeps: Sweeps) -> tracking.Store:
    return tracking.Store(sweeps.client, sweeps.exp)


def test_a_published_report_puts_the_shipped_numbers_and_the_matrix_on_the_sweep_run(sweeps, tmp_path) -> None:
    parent = sweeps.sweep(tmp_path / "sweep", _cells())
    report.build(_store(sweeps), parent, tmp_path / "whatif")  # a what-if: nothing on the run
    run = sweeps.client.get_run(parent)
    assert not any(k.startswith("shipped.") for k in run.data.metrics)
    assert "matrix.json" not in {a.path for a in sweeps.client.list_artifacts(parent)}

    files = report.build(_store(sweeps), parent, tmp_path / "pub", publish=True)
    assert files.decision.selected == "tiled[tile=2]"
    cells = sweeps.client.search_runs([sweeps.exp], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert {(r.data.tags["strategy"], r.data.tags["verdict"], r.data.tags["shipped"]) for r in cells} == {
        ("tiled", "GO", "true"), ("tiled", "GO", "false"), ("micro_batch", "GO", "false")}  # each cell: its verdict
    m = sweeps.client.get_run(parent).data.metrics
    assert m["shipped.batch_qps.q32"] == 146.0 and m["shipped.batch_qps.q4"] == pytest.approx(146.0 / 8)
    assert m["shipped.batch_ms.q32"] == pytest.approx(1e3 / 146.0) and m["shipped.speedup.q4"] == 2.0
    assert {k for k in m if k.startswith("shipped.")} == {f"shipped.{n}.q{q}" for n in ("batch_qps", "batch_ms", "speedup")
                                                          for q in (4, 32)}
    tags = sweeps.client.get_run(parent).data.tags
    assert {"path": "matrix.json", "type": "table"} in json.loads(tags["mlflow.loggedArtifacts"])

    def table() -> pd.DataFrame:
        with tempfile.TemporaryDirectory() as tmp:
            raw = json.loads(Path(sweeps.client.download_artifacts(parent, "matrix.json", tmp)).read_text())
        return pd.DataFrame(raw["data"], columns=raw["columns"])

    t = table()
    assert len(t) == 6 and list(t.columns) == list(pd.read_csv(files.csv).columns)  # matrix.csv's
    assert sorted(t.loc[t["config"] == "tiled[tile=2]", "batch_qps"]) == [146.0 / 8, 146.0]
    report.build(_store(sweeps), parent, tmp_path / "pub", publish=True)  # a republish replaces the table
    assert len(table()) == 6


def test_a_sweep_where_nothing_ships_logs_no_shipped_numbers(sweeps, tmp_path) -> None:
    cells = [(["strategy=micro_batch"], q, _metrics(100.0, 1.0, speedup=0.5), {}) for q in (4, 32)]
    parent = sweeps.sweep(tmp_path / "nogo", cells)
    files = report.build(_store(sweeps), parent, tmp_path, publish=True)
    assert files.decision.selected is None
    run = sweeps.client.get_run(parent)
    assert not any(k.startswith("shipped.") for k in run.data.metrics)
    assert run.data.tags["decision.fallback"] == report.LOOP == "single-query loop"
    assert "- **Fallback**: single-query loop (no batching)" in files.markdown.read_text()


def test_matrix_csv_marks_a_knob_the_strategy_does_not_have(sweeps, tmp_path) -> None:
    files = report.build(_store(sweeps), sweeps.sweep(tmp_path / "knobs", _cells()), tmp_path)
    with files.csv.open() as fh:
        rows = list(csv.DictReader(fh))
    by = {(r["config"], r["q"]): r for r in rows}
    assert by["tiled[tile=2]", "32"]["gpu_batch_tile_size"] == "2" and by["tiled[tile=2]", "32"]["adaptive_threshold"] == "-"
    assert by["micro_batch", "4"]["adaptive_threshold"] == "4" and by["micro_batch", "4"]["gpu_batch_tile_size"] == "-"


def test_a_cpu_sweep_is_called_a_dry_run_and_a_gpu_sweep_is_not(sweeps, tmp_path) -> None:
    cpu = report.build(_store(sweeps), sweeps.sweep(tmp_path / "cpu", _cells()), tmp_path / "cpu")
    note = "CPU dry run: every cell ran on the CPU backend; this tests the pipeline and its decision means nothing for a GPU"
    assert cpu.decision.headline() == f"GO tiled[tile=2], fallback tiled[tile=4] ({note})"
    assert cpu.decision.summary().startswith("Ship tiled[tile=2]") and "CPU dry run" in cpu.decision.summary()
    md = cpu.markdown.read_text()
    assert f"- **{note}**" in md and f"**Decision: {cpu.decision.headline()}**" in md
    gpu = report.build(_store(sweeps), sweeps.sweep(tmp_path / "gpu", _cells("NVIDIA H200")), tmp_path / "gpu")
    assert gpu.decision.headline() == "GO tiled[tile=2], fallback tiled[tile=4]"
    assert "dry run" not in gpu.markdown.read_text() + gpu.decision.summary()


def test_blockers_and_caveats_are_apart_and_a_capped_cpu_dry_run_is_said_once(sweeps, tmp_path) -> None:
    capped = {"batch_capped": 1, "batch_noise": 0.05, "max_noise": 0.01}
    cells = [(["strategy=tiled", f"strategy.tile={t}"], q, _metrics(100.0 * q / f, 1.0) | capped, {"device_kind": kind})
             for t, f in (("2", 1.0), ("4", 2.0)) for q in (4, 32) for kind in ["cpu"]]
    md = report.build(_store(sweeps), sweeps.sweep(tmp_path / "cpu", cells), tmp_path / "cpu").markdown.read_text()
    assert "| blockers (decide the verdict) | caveats (decide nothing) |" in md
    rows = [line for line in md.splitlines() if line.startswith("| tiled[tile=")]
    verdict_rows = [r for r in rows if "GO**" in r]
    assert len(verdict_rows) == 2 and all(r.endswith("| none | — |") for r in verdict_rows), verdict_rows
    assert md.count("A CPU dry run is capped: 4 of the cells' paths stopped at the time cap") == 1
    assert "hit the time cap" not in md
    gpu = [(o, q, m, {"device_kind": "NVIDIA H200"}) for o, q, m, _ in cells]
    md = report.build(_store(sweeps), sweeps.sweep(tmp_path / "gpu", gpu), tmp_path / "gpu").markdown.read_text()
    assert "A CPU dry run is capped" not in md
    assert "| none | q=4: the batch path hit the time cap at noise 5.0% > bench.max_noise 1.0% (40 samples) (and 1 more) |" in md


def test_the_report_lists_every_engine_and_shortens_long_reasons(sweeps, tmp_path) -> None:
    cells = [(["strategy=full_batch", f"engine={e}"], q, _metrics(100.0, 1.0, speedup=0.5), {}) for e in ("xla", "fused")
             for q in (4, 32)]
    md = report.build(_store(sweeps), sweeps.sweep(tmp_path / "engines", cells), tmp_path).markdown.read_text()
    assert "; engines: fused, xla" in md
    rows = [line for line in md.splitlines() if line.startswith("| full_batch[engine=") and "NO-GO" in line]
    assert len(rows) == 2 and all("more)" in r and len(r) < 320 for r in rows), rows
    assert "<details><summary>Every blocker and caveat, per configuration</summary>" in md


def test_plots_have_a_title_a_subtitle_and_mark_what_ships(tmp_path) -> None:
    rows = [{"config": c, "our_strategy": c, "q": q, "status": "ok", "parity_ok": 1, "device_kind": "NVIDIA H200",
             "dataset": "tiny", "engine": "xla", **_metrics(f * q, 1.0)} for c, f in (("full_batch", 100.0), ("tiled", 90.0))
            for q in (1, 2, 4, 8, 16, 32)]
    df = pd.DataFrame(rows)
    sub = report.plot_subtitle(df, {"code_version": "0123456789abcdef" * 2 + "+dirty.1", "backend": "gpu",
                                    "date": "2026-12-04 10:00 UTC"})
    assert sub == "NVIDIA H200 (gpu) · dataset tiny · engine xla · code 0123456789ab+dirty · 2026-12-04 10:00 UTC"
    paths = report._plots(df, tmp_path, sub, shipped="tiled")
    titles = [Image.open(p).text for p in paths]
    assert [t["Title"] for t in titles] == ["Batch latency vs Q", "Queries per second vs Q",
                                            "Speedup over the single-query loop vs Q"]
    assert all(t["Description"] == sub for t in titles)

    import matplotlib.pyplot as plt

    drawn: dict = {}
    real = plt.Figure.savefig

    def keep(fig, *a, **k):  # the axes as drawn: labels, ticks, line widths
        ax = fig.axes[0]
        drawn[Path(a[0]).name] = (ax.get_legend_handles_labels()[1], [t.get_text() for t in ax.get_xticklabels()],
                                  ax.get_yscale(), fig.get_suptitle())
        return real(fig, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plt.Figure, "savefig", keep)
        report._plots(df, tmp_path, sub, shipped="tiled")
    labels, xticks, yscale, title = drawn["qps_vs_q.png"]
    assert sorted(labels) == ["full_batch", "single-query loop", "tiled (ships)"]
    assert xticks == ["1", "2", "4", "8", "16", "32"] and yscale == "linear" and title == "Queries per second vs Q"


def test_a_cell_run_is_named_by_its_knobs_and_described() -> None:
    assert tracking.cell_run_name("tiled", 16, {"tile": 8}) == "tiled[tile=8]-q16"
    assert tracking.cell_run_name("micro_batch", 4, {"threshold": 4, "chunk": 2}) == "micro_batch[chunk=2,threshold=4]-q4"
    assert tracking.cell_run_name("full_batch", 1, {}) == "full_batch-q1"
    assert tracking.cell_run_name("graph_replay", 2, {"command_buffer": None}) == "graph_replay-q2"
    m = _metrics(146.0, 1.0) | {"parity_numpy_eq": 1, "parity_xor_checked": 1}
    text = tracking.cell_description("tiled[tile=8]-q16", 16, "tiny/xla, cpu (cpu)", "ok", m)
    assert text.startswith("tiled[tile=8]-q16 (q=16 queries per batch) on tiny/xla, cpu (cpu).")
    assert "146 [145, 147] queries/s" in text and "x2 [1.9, 2.1] over the single-query loop" in text
    assert "parity: batch == single-query loop bit for bit; numpy ok, xor ok" in text
    failed = tracking.cell_description("tiled-q4", 4, "tiny/xla", "failed", error="ParityError: 3 pages differ")
    assert failed.endswith("Status: failed: ParityError: 3 pages differ.")


def test_decide_alone_is_no_dry_run() -> None:
    df = pd.DataFrame([{"config": "full_batch", "our_strategy": "full_batch", "q": 32, "status": "ok", "parity_ok": 1,
                        "error_message": "", **_metrics(100.0, 1.0)}])
    assert "dry run" not in decide(df, DecisionRules()).headline()


def test_a_table_with_a_configuration_missing_at_every_q_fills_without_a_pandas_warning() -> None:
    import warnings

    df = pd.DataFrame({"q": [1, 2], "config": ["a", "b"], "status": ["ok", "failed"], "batch_qps": [1.0, None]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pandas' "str is not a fill value for float64" (a future error)
        table = report._pivot(df, "batch_qps", ".3g")
    assert table.splitlines()[-1].replace(" ", "") == "|2|—|—|"


# --------------------------------------------------------------------------- the saved view (uiview)

def _experiment(sweeps: Sweeps, name: str) -> Sweeps:
    """The same store, a fresh experiment: a view is an experiment's tag, so each test starts with none."""
    other = copy.copy(sweeps)
    other.exp = sweeps.client.create_experiment(name, artifact_location=(sweeps.root / name).as_uri())
    return other


def _views(sweeps: Sweeps) -> dict[str, str]:
    tags = sweeps.client.get_experiment(sweeps.exp).tags
    return {k: v for k, v in tags.items() if k.startswith("mlflow.sharedViewState.")}


def test_the_saved_view_opens_on_every_cell_with_the_matrix_columns_and_charts(sweeps, tmp_path) -> None:
    exp = _experiment(sweeps, "ui-view")
    parent = exp.sweep(tmp_path / "sweep", _cells())
    key = uiview.share_view(exp.client, exp.exp)
    envelope = json.loads(_views(exp)[f"mlflow.sharedViewState.{key}"])
    assert envelope["name"] == uiview.NAME and isinstance(envelope["createdAt"], int)
    state = json.loads(envelope["state"])  # MLflow 3.17's saved view: the page state as JSON text
    metrics = ["batch_qps", "batch_qps_lo", "batch_qps_hi", "batch_vs_single_speedup", "batch_ms_per_batch",
               "parity_ok", "parity_batch_eq_single", "parity_numpy_eq", "parity_xor_eq"]
    assert state["selectedColumns"][:5] == ["tags.`strategy`", "tags.`q`", "tags.`verdict`", "tags.`shipped`",
                                            "metrics.`batch_qps`"]
    assert {c for c in state["selectedColumns"] if c.startswith("metrics.")} == {f"metrics.`{m}`" for m in metrics}
    assert {"tags.`engine`", "tags.`cell_status`", "attributes.`Description`"} <= set(state["selectedColumns"])
    assert state["columnOrder"] == ["attributes.`Run Name`", *state["selectedColumns"]]  # widths apply to listed ones
    assert set(state["columnWidths"]) == {c for c in state["selectedColumns"] if not c.startswith("attributes.")}
    # The filter and sort are MLflow's own syntax: the rows are the cells (never the sweep run, whose children
    # MLflow would fold under it), the fastest first.
    rows = exp.client.search_runs([exp.exp], state["searchFilter"], order_by=[f"{state['orderByKey']} DESC"])
    assert state["orderByAsc"] is False and parent not in {r.info.run_id for r in rows}
    assert len(rows) == len(_cells()) and rows[0].data.metrics["batch_qps"] == 146.0
    # one group per strategy and sweep, its colour in the charts: each chart a line per strategy over q (the step)
    assert state["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "strategy"},
                                               {"mode": "tag", "groupByData": tracking.PARENT_TAG}]
    assert state["useGroupedValuesInCharts"] is True and state["runsHiddenMode"] == "SHOW_ALL"
    charts = state["compareRunCharts"]
    assert [(c["type"], c["metricKey"], c["xAxisKey"]) for c in charts] == [
        ("LINE", m, "step") for m in ("batch_vs_single_speedup", "batch_qps", "batch_ms_per_batch")]
    assert all(c["selectedMetricKeys"] == [c["metricKey"]] and c["xAxisScaleType"] == "log" for c in charts)
    assert {c["metricSectionId"] for c in charts} == {state["compareRunSections"][0]["uuid"]}


def test_sharing_the_view_twice_changes_nothing_and_a_stale_view_is_replaced(sweeps) -> None:
    exp = _experiment(sweeps, "ui-view-twice")
    key = uiview.share_view(exp.client, exp.exp)
    first = _views(exp)
    assert uiview.share_view(exp.client, exp.exp) == key and _views(exp) == first and len(first) == 1
    tag = f"mlflow.sharedViewState.{key}"
    exp.client.set_experiment_tag(exp.exp, tag, json.dumps({"name": "old", "createdAt": 7, "updatedAt": 7, "state": "{}"}))
    uiview.share_view(exp.client, exp.exp)
    envelope, want = json.loads(_views(exp)[tag]), json.loads(first[tag])
    assert (envelope["name"], envelope["state"]) == (want["name"], want["state"])  # today's view, under the same key
    assert envelope["createdAt"] == 7 and envelope["updatedAt"] > 7  # when it was first shared is kept
    exp.client.set_experiment_tag(exp.exp, tag, "not json")  # someone else's value under our key
    uiview.share_view(exp.client, exp.exp)
    assert json.loads(_views(exp)[tag])["state"] == json.loads(first[tag])["state"]


def test_the_runs_url_names_the_view() -> None:
    assert uiview.runs_url("http://127.0.0.1:5000/", "3", "k1") == \
        "http://127.0.0.1:5000/#/experiments/3/runs?viewStateShareKey=k1"
    assert uiview.runs_url("https://mlflow.example", "3", "k1", charts=True).endswith(
        "/runs?viewStateShareKey=k1&compareRunsMode=CHART")


def test_a_report_rebuild_never_writes_the_view(sweeps, tmp_path) -> None:
    exp = _experiment(sweeps, "ui-view-report")
    parent = exp.sweep(tmp_path / "sweep", _cells())
    report.build(_store(exp), parent, tmp_path / "whatif")
    assert _views(exp) == {}


def test_a_published_report_shares_the_view_and_the_sweep_prints_its_address(sweeps, tmp_path) -> None:
    exp = _experiment(sweeps, "ui-view-published")
    report.build(_store(exp), exp.sweep(tmp_path / "sweep", _cells()), tmp_path / "pub", publish=True)
    assert set(_views(exp)) == {f"mlflow.sharedViewState.{uiview.KEY}"}
    assert review_hint("sqlite:////x/mlflow.db", exp.exp, view=True) == (
        f"mlflow ui --backend-store-uri sqlite:////x/mlflow.db  then open "
        f"http://127.0.0.1:5000/#/experiments/{exp.exp}/runs?viewStateShareKey={uiview.KEY}")
    assert review_hint("http://host:5000/", "7", view=True) == \
        f"open http://host:5000/#/experiments/7/runs?viewStateShareKey={uiview.KEY}"


def test_the_review_address_opens_the_rendered_report_quoted_and_without_a_password() -> None:
    assert review_hint("sqlite:////x y/mlflow.db", "3", report_of="abc") == (
        "mlflow ui --backend-store-uri 'sqlite:////x y/mlflow.db'  then open "
        "http://127.0.0.1:5000/#/experiments/3/runs/abc/artifacts/report/report.md")
    assert review_hint("https://bob:s3cret@mlflow.example:5000/", "3", report_of="abc") == (
        "open https://mlflow.example:5000/#/experiments/3/runs/abc/artifacts/report/report.md")


def test_the_report_links_the_cell_table_and_hides_a_password_in_the_store_address(sweeps, tmp_path) -> None:
    exp = _experiment(sweeps, "ui-report-link")
    parent = exp.sweep(tmp_path / "sweep", _cells())

    class ServerClient:  # the store as a client of a server whose address carries a password reads it back
        tracking_uri = "http://bob:s3cret@mlflow.example:5000"

        def __getattr__(self, name: str):
            return getattr(exp.client, name)

    files = report.build(tracking.Store(ServerClient(), exp.exp), parent, tmp_path / "out", publish=True,
                         rollout_dir=tmp_path / "guards")  # published: the guard's record is written (a what-if has none)
    md = files.markdown.read_text()
    assert f"[the runs table](#/experiments/{exp.exp}/runs?viewStateShareKey={uiview.KEY})" in md
    assert "s3cret" not in md and "http://mlflow.example:5000" in md
    assert "s3cret" not in (tmp_path / "out" / "rollout" / "selected.meta.json").read_text()
