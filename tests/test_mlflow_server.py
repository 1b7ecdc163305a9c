"""A shared MLflow tracking server: a real `mlflow server` on loopback (SQLite backend, artifacts
served through the server), a multi-process (joblib) sweep writing to it, the report built once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

SERVER_START_S = 90


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@contextmanager
def serve(tmp_path: Path, *args: str, port: int | None = None,
          env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """`mlflow server` (SQLite backend in tmp_path, artifacts served) on a loopback port, `args` added (e.g.
    `--app-name basic-auth`); bounded wait for /health; always stopped with its whole process group. The same
    port and tmp_path again: the same server back with its records. Yields its URL and process."""
    port = port or _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--serve-artifacts",
         "--artifacts-destination", str(tmp_path / "served-artifacts"), *args],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + SERVER_START_S
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not come up in {SERVER_START_S} s: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url, proc
    finally:
        stop(proc)
        log.close()


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a server started by `serve` and its workers (its own process group), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    with serve(tmp_path) as (url, _):
        yield url


@pytest.mark.slow
def test_joblib_sweep_against_a_shared_server(cli, workdir, mlflow_server):
    from mlflow.tracking import MlflowClient

    res = cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "strategy=full_batch,tiled", "q=1,2",
              f"mlflow.tracking_uri={mlflow_server}", "bench.system_metrics_s=null", "bench.max_time_s=0.5",
              test_strategies=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not (workdir / "outputs" / "mlflow.db").exists()  # everything went to the server
    out = res.stdout.splitlines()
    view = [i for i, line in enumerate(out) if "View run" in line]  # MLflow's own lines, on an http store only
    review = next(i for i, line in enumerate(out) if line.startswith("review: open http"))
    assert view and max(view) < review, res.stdout[-3000:]  # the sweep run's end prints before the decision...
    assert out[-1].startswith("decision: ") and out[review:-1] == [out[review]], res.stdout[-3000:]  # ...which ends it

    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("morphogen_exp")
    assert exp is not None
    # Served through the server: a client on another machine resolves it, no local absolute path.
    assert exp.artifact_location.startswith("mlflow-artifacts:"), exp.artifact_location
    runs = client.search_runs([exp.experiment_id], max_results=100)
    (parent,) = [r for r in runs if r.data.tags.get("morphogen.role") == "sweep"]
    cells = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id and r.data.tags.get("morphogen.role") == "cell"]
    assert len(cells) == 4 and all(r.data.tags["cell_status"] == "ok" for r in cells)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["morphogen.pid"] not in {r.data.tags["morphogen.pid"] for r in cells}  # worker processes

    names = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/matrix.csv"} <= names, names
    assert "config.yaml" in {a.path for a in client.list_artifacts(cells[0].info.run_id)}
    local = client.download_artifacts(parent.info.run_id, "report/report.md", str(workdir))
    assert "## Decision" in Path(local).read_text()
    sweep = sorted((workdir / "outputs" / "multirun").iterdir())[-1]
    assert (sweep / "report.md").read_text() == Path(local).read_text()
