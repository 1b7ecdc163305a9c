"""The real CLI, as a user runs it: sweeps, reports, failures, interrupts, resume, two writers."""

from __future__ import annotations

import csv
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from .conftest import mlflow_runs

Q_ALL = "1,2,4,8,16,32"
STRATEGIES = {"full_batch", "micro_batch", "multi_stream", "graph_replay", "tiled"}


def _sweep_dir(workdir: Path) -> Path:
    (d,) = sorted((workdir / "outputs" / "multirun").iterdir())[-1:]
    return d


def _cells(runs, parent_id):
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]


@pytest.mark.slow
def test_full_sweep_all_strategies_on_tiny(cli, workdir):
    """The product's main command: 30 cells -> 30 child runs under one sweep run -> a complete report."""
    res = cli("-m", "strategy=glob(*)", f"q={Q_ALL}", test_strategies=False)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = mlflow_runs(workdir)
    (parent,) = [r for r in runs if r.data.tags.get("morphogen.role") == "sweep"]
    cells = _cells(runs, parent.info.run_id)
    assert len(cells) == 30
    assert {(r.data.tags["strategy"], int(r.data.tags["q"])) for r in cells} == {
        (s, q) for s in STRATEGIES for q in (1, 2, 4, 8, 16, 32)}
    assert all(r.info.status == "FINISHED" and r.data.metrics["parity_ok"] == 1 for r in cells)
    assert parent.info.status == "FINISHED"

    sweep = _sweep_dir(workdir)
    report = (sweep / "report.md").read_text()
    for section in ("## Summary", "## Strategies compared", "## Batch latency", "## Speedup", "## Queries per second",
                    "## Parity", "## Decision", "Fallback", "Rollout guard"):
        assert section in report
    for s in STRATEGIES:
        assert f"| {s} |" in report
    rows = list(csv.DictReader((sweep / "matrix.csv").open()))
    assert len(rows) == 30
    assert list(rows[0])[:15] == ["strategy", "policy", "adaptive_threshold", "gpu_streams", "gpu_cuda_graph",
                                  "gpu_batch_tile_size", "q", "single_ms_per_batch", "batch_ms_per_batch",
                                  "batch_vs_single_speedup", "single_qps", "batch_qps", "checksum_single",
                                  "checksum_batch", "checksum_match"]
    assert {r["strategy"] for r in rows} == {"baseline_full_batch", "adaptive_micro_batch", "multi_stream_4",
                                             "cuda_graph_replay", "tiled_tile4"}
    assert all(r["checksum_match"] == "1" for r in rows)
    for png in ("latency_vs_q.png", "qps_vs_q.png"):
        assert (sweep / png).stat().st_size > 5000
    guard = (sweep / "rollout" / "selected.yaml").read_text()
    assert "override /strategy:" in guard

    # The report is rebuilt from MLflow alone, and the guard loads as it is in a rollout trial.
    (sweep / "report.md").unlink()
    from morphogen_exp import report as report_mod

    assert report_mod.main(["--tracking-uri", f"sqlite:///{workdir}/outputs/mlflow.db"]) == 0
    assert (sweep / "report.md").read_text().count("| tiled |") >= 1
    chosen = guard.split("override /strategy: ")[1].split()[0]
    trial = cli("+rollout=selected", "q=2", test_strategies=False)
    assert trial.returncode == 0, trial.stderr[-2000:]
    newest = max(mlflow_runs(workdir), key=lambda r: r.info.start_time)
    assert newest.data.tags["strategy"] == chosen


def test_failed_cell_does_not_stop_the_sweep(cli, workdir):
    res = cli("-m", "strategy=full_batch,corrupt", "q=1,2")
    assert res.returncode == 1
    assert "2 cell(s) failed" in res.stderr and "ParityError" in res.stderr
    runs = mlflow_runs(workdir)
    (parent,) = [r for r in runs if r.data.tags.get("morphogen.role") == "sweep"]
    status = {(r.data.tags["strategy"], r.data.tags["q"]): r.info.status for r in _cells(runs, parent.info.run_id)}
    assert status == {("full_batch", "1"): "FINISHED", ("full_batch", "2"): "FINISHED",
                      ("corrupt", "1"): "FAILED", ("corrupt", "2"): "FAILED"}
    report = (_sweep_dir(workdir) / "report.md").read_text()
    assert "cell failed at q=1" in report and "| corrupt | NO-GO |" in report


def test_sigterm_mid_sweep_kills_active_run_and_report_rebuilds(cli, workdir):
    proc = cli("-m", "strategy=full_batch,sleepy", "q=1", background=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:  # wait until the sleepy cell is running (full_batch has finished)
            running = [r for r in mlflow_runs(workdir) if r.data.tags.get("strategy") == "sleepy"]
            if running:
                break
            time.sleep(1)
        assert running, "the sleepy cell never started"
        time.sleep(2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "python -m morphogen_exp.report" in err
    runs = {r.data.tags.get("strategy") or r.data.tags.get("morphogen.role"): r for r in mlflow_runs(workdir)}
    assert runs["sleepy"].info.status == "KILLED"
    assert runs["full_batch"].info.status == "FINISHED"
    assert runs["sweep"].info.status == "KILLED"
    sweep = _sweep_dir(workdir)
    assert not (sweep / "report.md").exists()
    from morphogen_exp import report as report_mod

    assert report_mod.main(["--tracking-uri", f"sqlite:///{workdir}/outputs/mlflow.db", "--sweep-dir", str(sweep)]) == 0
    text = (sweep / "report.md").read_text()
    assert "cell killed at q=1" in text and "| full_batch |" in text


def test_resume_skips_finished_cells(cli, workdir):
    first = cli("-m", "strategy=full_batch", "q=1,2", "hydra.sweep.dir=outputs/multirun/first")
    assert first.returncode == 0, first.stderr[-2000:]
    second = cli("-m", "strategy=full_batch", "q=1,2,4", "resume=true", "hydra.sweep.dir=outputs/multirun/second")
    assert second.returncode == 0, second.stderr[-2000:]
    runs = mlflow_runs(workdir)
    parent = [r for r in runs if r.data.tags.get("morphogen.sweep_dir", "").endswith("second")
              and r.data.tags.get("morphogen.role") == "sweep"][0]
    cells = {r.data.tags["q"]: r for r in _cells(runs, parent.info.run_id)}
    assert set(cells) == {"1", "2", "4"}
    assert "resumed_from" in cells["1"].data.tags and "resumed_from" in cells["2"].data.tags
    assert "resumed_from" not in cells["4"].data.tags
    assert cells["1"].data.metrics["batch_ms_per_batch"] > 0  # the report covers the whole matrix
    assert "Cells: 3 (3 ok)" in (workdir / "outputs/multirun/second/report.md").read_text()


def test_two_sweeps_share_one_sqlite_store(cli, workdir):
    procs = [cli("-m", "strategy=full_batch,multi_stream", "q=1,2", f"hydra.sweep.dir=outputs/multirun/w{i}",
                 background=True) for i in range(2)]
    results = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
        assert "database is locked" not in err
    runs = mlflow_runs(workdir)
    assert len([r for r in runs if r.data.tags.get("morphogen.role") == "sweep"]) == 2
    assert len([r for r in runs if r.data.tags.get("morphogen.role") == "cell" and r.info.status == "FINISHED"]) == 8
    with sqlite3.connect(workdir / "outputs" / "mlflow.db") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize(
    "args, message",
    [
        (["q=0"], "error: q must be in 1..32"),
        (["q=40"], "error: q must be in 1..32"),
        (["q=1.5"], "error: q must be an integer"),
        (["bench.iterations=0"], "error: bench.iterations must be in"),
        (["bench.warmup=-2"], "error: bench.warmup must be in"),
        (["dataset.path=missing.bin"], "does not exist"),
        (["dataset.path=empty.bin"], "is empty"),
        (["dataset.path=."], "is not a regular file"),
        (["engine.name=triton"], "unknown engine 'triton'"),
        (["mlflow.tracking_uri=sqlite:////proc/nope/mlflow.db"], "cannot create"),
        (["mlflow.tracking_uri=http://127.0.0.1:9"], "cannot be used"),
    ],
)
def test_bad_input_one_line_error_exit_2(cli, workdir, args, message):
    (workdir / "empty.bin").write_bytes(b"")
    res = cli(*args)
    assert res.returncode == 2, res.stderr[-2000:]
    assert message in res.stderr
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    assert len([l for l in res.stderr.splitlines() if l.startswith("error:")]) == 1


@pytest.mark.parametrize("args, message", [
    (["strategy=warp"], "Available options in 'strategy'"),
    (["dataset=huge"], "Available options in 'dataset'"),
    (["engine=cuda"], "Available options in 'engine'"),
])
def test_unknown_choice_lists_valid_ones(cli, args, message):
    res = cli(*args)
    assert res.returncode != 0 and message in res.stderr and "full_batch" in res.stderr or "tiny" in res.stderr or "xla" in res.stderr
    assert "Traceback" not in res.stderr


def test_dataset_file_too_large_for_device_is_reported(cli, workdir):
    (workdir / "m.bin").write_bytes(bytes(range(256)) * 16 * 600)  # 600 pages = 2.4 MB
    res = cli("dataset.path=m.bin", "bench.memory_cap_gib=0.001", "q=1")
    assert res.returncode == 1
    assert "does not fit" in res.stderr and "GiB" in res.stderr and "Traceback" not in res.stderr


def test_dataset_file_is_scanned_exactly(cli, workdir):
    # 5 pages and a half: zero-padded to 6 pages, domain 2^3; answers checked against the file itself
    (workdir / "m.bin").write_bytes(bytes((i * 7) % 251 for i in range(4096 * 5 + 2048)))
    res = cli("dataset.path=m.bin", "q=2")
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = mlflow_runs(workdir)
    assert run.data.tags["dataset.num_pages"] == "6" and run.data.metrics["parity_ok"] == 1
