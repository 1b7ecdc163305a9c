"""The report from a real MLflow store (SQLite, MlflowClient): one row per cell, labels, intervals, the
decision on the sweep run, and every command-line error as one line with exit 2."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from morphogen_exp.decide import report, rollout
from morphogen_exp.decide.decision import DecisionRules, decide
from morphogen_exp.record import tracking

from .support.recorded import RULES, params

REPO = Path(__file__).resolve().parents[1]


def _metrics(qps: float, half: float | None, speedup: float = 2.0) -> dict[str, float]:
    m = {"batch_qps": qps, "batch_vs_single_speedup": speedup, "batch_ms_per_batch": 1e3 / qps, "single_ms_per_batch": 2e3 / qps,
         "single_qps": qps / speedup, "parity_ok": 1, "checksum_match": 1, "parity_xor_eq": 1, "parity_numpy_checked": 1}
    if half is not None:
        m |= {"batch_qps_lo": qps - half, "batch_qps_hi": qps + half, "batch_vs_single_speedup_lo": speedup - 0.1,
              "batch_vs_single_speedup_hi": speedup + 0.1, "batch_samples": 40, "batch_noise": 0.004, "batch_capped": 0}
    return m


class Sweeps:
    def __init__(self, root: Path):
        self.uri = f"sqlite:///{root}/mlflow.db"
        self.root = root
        self.client = MlflowClient(tracking_uri=self.uri)
        self.exp = self.client.create_experiment("morphogen_exp", artifact_location=(root / "art").as_uri())

    def sweep(self, sweep_dir: Path, cells: list[tuple[list[str], int, dict[str, float], dict[str, str]]],
              rules: dict | None = RULES, intervals_tags: bool = True) -> str:
        parent = self.client.create_run(self.exp, tags={"morphogen.role": "sweep", "morphogen.sweep_dir": str(sweep_dir)}).info.run_id
        if rules is not None:
            self.client.log_text(parent, json.dumps(rules), "decision.json")
        for overrides, q, metrics, extra_tags in cells:
            p = params(*overrides, f"q={q}")
            tags = {"mlflow.parentRunId": parent, "morphogen.role": "cell", "strategy": p["strategy.name"],
                    "original_strategy": p["strategy.original"], "q": str(q), "dataset": p["dataset.name"],
                    "engine": p["engine.name"], "device_kind": "cpu", "cell_status": "ok",
                    rollout.PARAMS_DIGEST_TAG: rollout.params_digest(p), **extra_tags}
            run = self.client.create_run(self.exp, tags=tags).info.run_id
            for i in range(0, len(p), 100):
                from mlflow.entities import Param

                self.client.log_batch(run, params=[Param(k, v) for k, v in list(p.items())[i:i + 100]])
            for k, v in metrics.items():
                self.client.log_metric(run, k, v)
            self.client.set_terminated(run)
        self.client.set_terminated(parent)
        return parent


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> Sweeps:
    return Sweeps(tmp_path_factory.mktemp("store"))


@pytest.fixture
def guard_store(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(rollout.ENV_VAR, str(tmp_path / "guards"))
    return tmp_path / "guards" / "rollout"


@pytest.fixture(scope="module")
def tile_sweep(sweeps, tmp_path_factory) -> tuple[str, Path]:
    """strategy=tiled strategy.tile=1,2,4 + full_batch, q=4,32, with intervals; tile=4 at q=32 ran twice."""
    d = tmp_path_factory.mktemp("multirun") / "tile'sweep"  # a quote in the folder name
    qps = {"1": 90.0, "2": 146.0, "4": 145.5}
    cells = [(["strategy=tiled", f"strategy.tile={t}"], q, _metrics(qps[t] / (8 if q == 4 else 1), 1.0), {}) for t in qps for q in (4, 32)]
    cells += [(["strategy=full_batch"], q, _metrics(100.0 / (8 if q == 4 else 1), 1.0), {}) for q in (4, 32)]
    cells.append((["strategy=tiled", "strategy.tile=4"], 32, _metrics(145.9, 1.0), {}))  # the newer re-run: kept
    return sweeps.sweep(d, cells), d


def test_every_cell_is_a_row_and_every_configuration_is_ranked(sweeps, tile_sweep, tmp_path, guard_store) -> None:
    parent, _ = tile_sweep
    files = report.build(tracking.Store(sweeps.client, sweeps.exp), parent, tmp_path, publish=True)
    d = files.decision
    assert set(d.verdicts) == {"tiled[tile=1]", "tiled[tile=2]", "tiled[tile=4]", "full_batch"}
    assert d.intervals and all(v.go for v in d.verdicts.values())
    # 146 +- 1 and 145.9 +- 1 overlap: tied, decision.prefer lists full_batch then tiled, so tile=2 (best score) ships.
    assert (d.selected, d.fallback) == ("tiled[tile=2]", "tiled[tile=4]")
    rows = list(csv.DictReader(files.csv.open()))
    header = list(rows[0])
    assert len(rows) == 8 and header[:4] == ["config", "verdict", "shipped", "q"]
    assert set(report.ORIGINAL_COLUMNS) <= set(header) and len(header) == len(set(header))  # the original's names, once
    assert "batch_ms_p50" not in header and "single_ms_p50_lo" not in header  # == batch_ms_per_batch, single_..._lo
    assert {(r["config"], r["verdict"], r["shipped"]) for r in rows if r["q"] == "32"} == {
        ("tiled[tile=2]", "GO", "True"), ("tiled[tile=4]", "GO", "False"), ("tiled[tile=1]", "GO", "False"),
        ("full_batch", "GO", "False")}
    assert {"config", "config_id", "batch_qps_lo", "batch_qps_hi", "batch_samples", "batch_noise"} <= set(rows[0])
    tile4 = [r for r in rows if r["config"] == "tiled[tile=4]" and r["q"] == "32"]
    assert len(tile4) == 1 and float(tile4[0]["batch_qps"]) == 145.9  # the duplicate cell: the newest run
    md = files.markdown.read_text()
    assert "Cells: 8 (8 ok); configurations: 4" in md and "146 [145, 147]" in md and "Intervals were not available" not in md
    assert "batch 40 rounds, ±0.4%" in md and "tiled[tile=2]" in md
    assert "| 32 | tiled[tile=2] (ships) | 146 [145, 147] | tiled[tile=4] |" in md and "a per-q choice" not in md
    tags = sweeps.client.get_run(parent).data.tags
    assert tags["decision.selected"] == "tiled[tile=2]" and tags["decision.fallback"] == "tiled[tile=4]"
    assert tags["mlflow.note.content"].startswith("Ship tiled[tile=2] (batch_qps 146 [145, 147] at q=32)")
    guard = (guard_store / "tiny-300p-cpu-xla.yaml").read_text()
    assert guard == (guard_store / "selected.yaml").read_text() == files.rollout.read_text()
    assert "- override /strategy: tiled" in guard and "tile: 2" in guard
    assert "MORPHOGEN_GPU_BATCH_TILE_SIZE=2" in files.env.read_text()


def test_the_closing_table_has_each_configuration_per_q_with_its_interval_and_verdict_the_shipped_first(
        sweeps, tile_sweep, tmp_path) -> None:
    parent, _ = tile_sweep
    table = report.write(tracking.read_sweep(tracking.Store(sweeps.client, sweeps.exp), parent), tmp_path)[0].table.splitlines()
    assert table[0] == "speedup of the batch path over the single-query loop, median [95% interval]:"
    assert table[1].split() == ["configuration", "q=4", "q=32", "verdict"]
    assert table[3].split() == ["tiled[tile=2]", "x2", "[1.9,", "2.1]", "x2", "[1.9,", "2.1]", "GO", report.SHIPS.split()[0],
                                report.SHIPS.split()[1]]
    assert len(table) == 3 + 4 and sum(report.SHIPS in line for line in table) == 1


def test_a_configuration_ahead_at_some_q_is_named(sweeps, tmp_path, guard_store) -> None:
    """full_batch ships (best at q=32) but tiled is ahead at q=4: the per-q table says so."""
    cells = [(["strategy=full_batch"], 4, _metrics(10.0, 0.1), {}), (["strategy=tiled"], 4, _metrics(12.0, 0.1), {}),
             (["strategy=full_batch"], 32, _metrics(150.0, 1.0), {}), (["strategy=tiled"], 32, _metrics(120.0, 1.0), {})]
    parent = sweeps.sweep(tmp_path / "per-q", cells)
    md = report.build(tracking.Store(sweeps.client, sweeps.exp), parent, tmp_path).markdown.read_text()
    assert "| 4 | tiled | 12 [11.9, 12.1] | — |" in md and "| 32 | full_batch (ships) | 150 [149, 151] | — |" in md
    assert "Ahead of full_batch, which ships, beyond its interval (q=4: tiled): a per-q choice" in md


def test_best_per_q_on_two_database_layouts_says_what_serving_both_costs(sweeps, tmp_path, guard_store) -> None:
    """fused (raw pages) ahead at q=4, bitsliced (its own layout) ships from q=32: the per-q table says a per-q
    engine choice keeps both databases resident, with each one's size; engines of one layout say nothing."""
    raw, bits = {"database_layout": "raw pages"}, {"database_layout": "bitsliced layout"}
    cells = [(["engine=fused"], 4, _metrics(12.0, 0.1) | {"database_gib": 64.1}, raw),
             (["engine=bitsliced"], 4, _metrics(10.0, 0.1) | {"database_gib": 64.2}, bits),
             (["engine=fused"], 32, _metrics(100.0, 1.0) | {"database_gib": 64.1}, raw),
             (["engine=bitsliced"], 32, _metrics(350.0, 1.0) | {"database_gib": 64.2}, bits)]
    md = report.build(tracking.Store(sweeps.client, sweeps.exp), sweeps.sweep(tmp_path / "two", cells), tmp_path).markdown.read_text()
    assert ("The best per q scan 2 database layouts: raw pages at q=4 (64.1 GiB a device); bitsliced layout at q=32 "
            "(64.2 GiB a device). Serving each q its best keeps them all resident (128 GiB a device together)") in md
    same = [(o, q, m, raw) for o, q, m, _ in cells[:3]] + [(["engine=xla"], 32, _metrics(350.0, 1.0) | {"database_gib": 64.1}, raw)]
    md = report.build(tracking.Store(sweeps.client, sweeps.exp), sweeps.sweep(tmp_path / "one", same), tmp_path).markdown.read_text()
    assert "Ahead of " in md and "database layouts" not in md


def test_old_runs_without_intervals_or_decision_json_keep_the_point_rules(sweeps, tmp_path, guard_store) -> None:
    cells = [(["strategy=full_batch"], q, _metrics(100.0, None), {}) for q in (4, 32)]
    cells += [(["strategy=micro_batch"], q, _metrics(101.0, None), {}) for q in (4, 32)]
    parent = sweeps.sweep(tmp_path / "old", cells, rules=None)
    sweeps.client.log_param(parent, "decision.tie_within", "0.02")
    sweeps.client.log_param(parent, "decision.prefer", "['full_batch', 'micro_batch']")
    files = report.build(tracking.Store(sweeps.client, sweeps.exp), parent, tmp_path / "out")
    assert not files.decision.intervals and files.decision.selected == "full_batch"  # within 2%: preferred
    assert "**Intervals were not available**" in files.markdown.read_text()
    assert not list(guard_store.glob("*.yaml"))  # not published unless asked


def test_a_straddling_speedup_is_reported_as_inconclusive(sweeps, tmp_path, guard_store) -> None:
    m = _metrics(200.0, 1.0, speedup=1.02)
    cells = [(["strategy=multi_stream"], q, m, {}) for q in (4, 32)]
    parent = sweeps.sweep(tmp_path / "straddle", cells)
    files = report.build(tracking.Store(sweeps.client, sweeps.exp), parent, tmp_path / "out", publish=True)
    assert files.decision.selected is None
    md = files.markdown.read_text()
    assert "| multi_stream | INCONCLUSIVE |" in md and "more rounds" in md
    assert "**Decision: INCONCLUSIVE" in md
    assert "INCONCLUSIVE" in sweeps.client.get_run(parent).data.tags["mlflow.note.content"]


def _main(capsys, *argv: str) -> tuple[int, str]:
    code = report.main(list(argv))
    err = capsys.readouterr().err
    return code, err


def test_cli_finds_a_sweep_dir_with_a_quote_and_takes_rule_overrides(sweeps, tile_sweep, tmp_path, capsys, guard_store) -> None:
    parent, sweep_dir = tile_sweep
    code, err = _main(capsys, "--tracking-uri", sweeps.uri, "--sweep-dir", str(sweep_dir), "--out", str(tmp_path),
                      "--rule", "rank_by=batch_ms_per_batch", "--rule", "prefer=[tiled]")
    assert (code, err) == (0, "")
    md = (tmp_path / "report.md").read_text()
    assert "ranked by batch_ms_per_batch" in md and f"parent run `{parent}`" in md
    code, err = _main(capsys, "--tracking-uri", sweeps.uri, "--sweep-dir", str(sweep_dir) + "'x", "--out", str(tmp_path))
    assert code == 2 and err.count("\n") == 1 and "no sweep run for" in err


def test_a_sweep_whose_rules_were_bad_can_still_be_reported(sweeps, tmp_path, capsys) -> None:
    bad = {**RULES, "rank_by": "nope"}
    (tmp_path / "bad").mkdir()
    sweeps.sweep(tmp_path / "bad", [(["strategy=full_batch"], 4, _metrics(100.0, 1.0), {})], rules=bad)
    code, err = _main(capsys, "--tracking-uri", sweeps.uri, "--sweep-dir", str(tmp_path / "bad"))
    assert code == 2 and err.count("\n") == 1 and "rank_by='nope'" in err and "--rule NAME=VALUE" in err
    assert not list((tmp_path / "bad").iterdir())  # no empty what-if folder left behind
    code, err = _main(capsys, "--tracking-uri", sweeps.uri, "--sweep-dir", str(tmp_path / "bad"), "--rule", "rank_by=batch_qps")
    assert (code, err) == (0, "")
    (whatif,) = (tmp_path / "bad").iterdir()  # a what-if beside the sweep's own files, never over them
    assert whatif.name.startswith("whatif-") and (whatif / "report.md").is_file()


@pytest.mark.parametrize("case", ["unknown_run", "not_a_run_id", "missing_sqlite", "missing_dir_store", "experiment",
                                  "unwritable_out", "bad_rule", "run_of_another_folder"])
def test_cli_errors_are_one_line_and_create_nothing(case, sweeps, tile_sweep, tmp_path, capsys) -> None:
    parent, _ = tile_sweep
    store = ["--tracking-uri", sweeps.uri]
    (tmp_path / "file").write_text("x")
    argv, expect = {
        "unknown_run": (store + ["--parent-run", "0" * 32], "no run 000"),
        "not_a_run_id": (store + ["--parent-run", "abc'"], "not an MLflow run id"),
        "missing_sqlite": (["--tracking-uri", f"sqlite:///{tmp_path}/typo/mlflow.db"], "does not exist"),
        "missing_dir_store": (["--tracking-uri", str(tmp_path / "mlruns")], "does not exist"),
        "experiment": (store + ["--experiment", "nope"], "no experiment 'nope'"),
        "unwritable_out": (store + ["--parent-run", parent, "--out", str(tmp_path / "file" / "sub")], "--out"),
        "bad_rule": (store + ["--rule", "rank_by"], "must be NAME=VALUE"),
        "run_of_another_folder": (store + ["--parent-run", parent, "--sweep-dir", str(tmp_path)],
                                  f"is the sweep of {tile_sweep[1]}, not of --sweep-dir {tmp_path}"),
    }[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, err = _main(capsys, *argv)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and expect in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created by a typo


def test_cli_as_a_subprocess_prints_no_traceback(tmp_path) -> None:
    res = subprocess.run([sys.executable, "-m", "morphogen_exp.report", "--tracking-uri", f"sqlite:///{tmp_path}/x.db"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 2 and "Traceback" not in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert not (tmp_path / "x.db").exists()


def test_plots_draw_error_bars_and_skip_a_sweep_whose_cells_all_failed(tmp_path) -> None:
    import pandas as pd

    rows = [{"config": "full_batch", "our_strategy": "full_batch", "q": q, "status": "ok", "parity_ok": 1, "error_message": "",
             **_metrics(100.0 * q, 1.0)} for q in (1, 4, 32)]
    df = pd.DataFrame(rows)
    assert [p.name for p in report._plots(df, tmp_path)] == ["latency_vs_q.png", "qps_vs_q.png", "speedup_vs_q.png"]
    assert report._yerr(df, "batch_qps") == [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    df["status"] = "failed"
    assert report._plots(df, tmp_path / "none") == []
    assert decide(df, DecisionRules()).selected is None


def test_the_speedup_plot_draws_x1_and_the_margin_and_a_dry_run_says_so_in_every_title(tmp_path, monkeypatch) -> None:
    import matplotlib.pyplot as plt
    import pandas as pd
    from PIL import Image

    rows = [{"config": "tiled", "our_strategy": "tiled", "q": q, "status": "ok", "parity_ok": 1, **_metrics(100.0 * q, 1.0)}
            for q in (1, 4, 32)]
    lines: dict = {}
    real = plt.Figure.savefig

    def keep(fig, *a, **k):  # the horizontal lines drawn on each plot, by label
        ax = fig.axes[0]
        lines[Path(a[0]).name] = {ln.get_label(): set(ln.get_ydata()) for ln in ax.get_lines()}
        return real(fig, *a, **k)

    monkeypatch.setattr(plt.Figure, "savefig", keep)
    rules = DecisionRules(min_speedup=1.0, tie_within=0.02, speedup_from_q=4)
    paths = report._plots(pd.DataFrame(rows), tmp_path, rules=rules, dry_run=True)
    assert [Image.open(p).text["Title"] for p in paths] == [
        "Batch latency vs Q (CPU dry run)", "Queries per second vs Q (CPU dry run)",
        "Speedup over the single-query loop vs Q (CPU dry run)"]
    speedup = lines["speedup_vs_q.png"]
    assert speedup["single-query loop (x1)"] == {1.0}
    assert speedup["non-inferiority margin x0.98 (q >= 4)"] == {0.98}


def test_a_sweep_whose_cells_ran_on_two_kinds_of_device_ships_nothing(sweeps, tmp_path, guard_store) -> None:
    """A resume on another kind of card: the report names both devices and withholds the decision and the guard."""
    h100, h200 = {"device_kind": "NVIDIA H100 80GB HBM3"}, {"device_kind": "NVIDIA H200"}
    cells = [(["strategy=full_batch"], 4, _metrics(10.0, 0.1), h100), (["strategy=tiled"], 4, _metrics(12.0, 0.1), h200),
             (["strategy=full_batch"], 32, _metrics(150.0, 1.0), h100), (["strategy=tiled"], 32, _metrics(120.0, 1.0), h200)]
    parent = sweeps.sweep(tmp_path / "mixed", cells)
    built = report.build(tracking.Store(sweeps.client, sweeps.exp), parent, tmp_path)
    md = built.markdown.read_text()
    assert "- Device: NVIDIA H100 80GB HBM3, NVIDIA H200 (" in md
    assert "**Decision: NO DECISION: the cells ran on 2 device kinds (NVIDIA H100 80GB HBM3, NVIDIA H200)" in md
    assert "No decision: the cells ran on 2 device kinds (NVIDIA H100 80GB HBM3, NVIDIA H200)" in md
    assert not (tmp_path / "rollout" / "selected.yaml").exists()


def test_the_engine_path_of_each_batch_step_is_shown_and_kept_in_the_csv(sweeps, tmp_path, guard_store) -> None:
    """engine=fused runs its kernel up to 12 keys a step and the Pallas ops above: the report says which cell ran
    which (a table when the cells differ, one line when they agree) and matrix.csv keeps it; engines of one
    path record nothing and the report says nothing."""
    kernel, pallas = "cuda kernel", "pallas ops"
    cells = [(["strategy=full_batch", "engine=fused"], 4, _metrics(100.0, 1.0) | {"scan_keys": 12}, {"engine_path.batch": kernel}),
             (["strategy=full_batch", "engine=fused"], 32, _metrics(145.0, 1.0) | {"scan_keys": 96}, {"engine_path.batch": pallas}),
             (["strategy=micro_batch", "engine=fused"], 32, _metrics(60.0, 1.0) | {"scan_keys": 6}, {"engine_path.batch": kernel})]
    built = report.build(tracking.Store(sweeps.client, sweeps.exp), sweeps.sweep(tmp_path / "paths", cells), tmp_path / "a")
    md = built.markdown.read_text()
    section = md.split("## Engine path of the batch step (keys per scan)\n")[1].split("\n\n")[0]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in section.splitlines()[2:]}
    assert rows == {"4": ["cuda kernel (12 keys)", "—"], "32": ["pallas ops (96 keys)", "cuda kernel (6 keys)"]}, section
    with (tmp_path / "a" / "matrix.csv").open() as f:
        got = {(r["config"], r["q"]): (r["engine_path"], r["scan_keys"]) for r in csv.DictReader(f)}
    assert got[("full_batch", "32")] == (pallas, "96.0") and got[("micro_batch", "32")] == (kernel, "6.0")

    same = [(["strategy=full_batch", "engine=fused"], q, _metrics(100.0 * q, 1.0), {"engine_path.batch": kernel}) for q in (1, 2)]
    md = report.build(tracking.Store(sweeps.client, sweeps.exp), sweeps.sweep(tmp_path / "one", same), tmp_path / "b").markdown.read_text()
    assert "Engine path of every batch step: cuda kernel." in md and "## Engine path" not in md
    plain = [(["strategy=full_batch"], q, _metrics(100.0 * q, 1.0), {}) for q in (1, 2)]
    md = report.build(tracking.Store(sweeps.client, sweeps.exp), sweeps.sweep(tmp_path / "xla", plain), tmp_path / "c").markdown.read_text()
    assert "Engine path" not in md
    # engines side by side, one recording a path and one not: never "every batch step", a table that says which ran
    mixed = [(["strategy=full_batch", "engine=xla"], 1, _metrics(100.0, 1.0), {}),
             (["strategy=full_batch", "engine=fused"], 1, _metrics(110.0, 1.0) | {"scan_keys": 3}, {"engine_path.batch": kernel})]
    store = tracking.Store(sweeps.client, sweeps.exp)
    md = report.build(store, sweeps.sweep(tmp_path / "mixed", mixed), tmp_path / "d").markdown.read_text()
    assert "Engine path of every batch step" not in md
    section = md.split("## Engine path of the batch step (keys per scan)\n")[1].split("\n\n")[0]
    assert "cuda kernel (3 keys)" in section and "the engine's ops (one path)" in section, section
