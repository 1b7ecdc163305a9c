"""Nothing left running, nothing left RUNNING: a hard stop of the launcher takes its workers with it; the runs of
dead processes are closed as KILLED by the next command that touches the store, and the report names the cells
that died; a lost tracking server and a full store disk end the sweep in one line, and it resumes cleanly."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from morphogen_exp.decide import report
from morphogen_exp.fields import ROLE_TAG

from .conftest import mlflow_runs

FAST = ("bench.max_time_s=0.2", "bench.system_metrics_s=null")


def _wait_for(pred, timeout: float, what: str, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the sweep ended before {what}: {proc.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(0.3)


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.slow
def test_sigkill_of_a_joblib_launcher_takes_its_workers_and_the_report_names_the_dead_cells(cli, workdir, capsys):
    """A joblib sweep of four cells, two workers, each cell held: SIGKILL of the launcher once a cell runs leaves no
    worker within a few seconds (they would otherwise go on to the queued cells). A what-if report names the dead
    cells and writes nothing; the published report closes their runs as KILLED."""
    flag = workdir / "stall.flag"
    flag.write_text("")
    proc = cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "strategy=stall", "q=1,2,3,4", *FAST,
               background=True, extra_env={"MORPHOGEN_TEST_STALL": str(flag)})
    launcher = psutil.Process(proc.pid)
    workers: list[psutil.Process] = []
    try:
        _wait_for(lambda: any(r.data.tags.get(ROLE_TAG) == "cell" for r in mlflow_runs(workdir)), 300, "cell run", proc)
        workers = launcher.children(recursive=True)
        assert workers, "a joblib sweep runs its cells in worker processes"
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        deadline = time.monotonic() + 10
        while _alive(workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _alive(workers)
        assert not left, f"workers still running after their launcher was killed: {[(p.pid, p.cmdline()[:3]) for p in left]}"
    finally:
        for p in _alive([launcher, *workers]):  # whatever this test started, whichever way it ends
            p.kill()
    runs = mlflow_runs(workdir)
    running = {r.info.run_id for r in runs if r.info.status == "RUNNING"}
    (parent,) = [r for r in runs if r.data.tags.get(ROLE_TAG) == "sweep"]
    dead_cells = [r for r in runs if r.data.tags.get(ROLE_TAG) == "cell" and r.info.status == "RUNNING"]
    assert parent.info.run_id in running and dead_cells  # SIGKILL: no handler ran

    (sweep,) = (workdir / "outputs" / "multirun").iterdir()
    assert report.main(["--sweep-dir", str(sweep), "--out", str(workdir / "whatif")]) == 0
    text = (workdir / "whatif" / "report.md").read_text()
    for r in dead_cells:
        assert r.info.run_name in text
    assert "died" in text, text
    assert {r.info.run_id for r in mlflow_runs(workdir) if r.info.status == "RUNNING"} == running  # a read writes nothing

    assert report.main(["--sweep-dir", str(sweep), "--publish"]) == 0
    after = {r.info.run_id: r for r in mlflow_runs(workdir)}
    assert all(after[i].info.status == "KILLED" for i in running)
    assert all(after[r.info.run_id].data.tags["cell_status"] == "killed" for r in dead_cells)
    assert "closed" in capsys.readouterr().err


def _stall_until_started(cli, workdir, uri: str, flag: Path, *args: str):
    """A sweep of a plain cell then a held one (`stall`), to the store `uri`, started in the background; returns once
    the held cell's run exists."""
    from mlflow.tracking import MlflowClient

    def started() -> bool:
        try:
            client = MlflowClient(uri)
            exp = client.get_experiment_by_name("morphogen_exp")
            return exp is not None and any(r.data.tags.get("strategy") == "stall"
                                           for r in client.search_runs([exp.experiment_id], max_results=100))
        except Exception:  # the store is being created
            return False

    proc = cli("-m", "strategy=full_batch,stall", "q=1", f"mlflow.tracking_uri={uri}", *FAST, *args, background=True,
               extra_env={"MORPHOGEN_TEST_STALL": str(flag), "MORPHOGEN_MLFLOW_WAIT_S": "3", "MORPHOGEN_CODE_VERSION": "test"})
    _wait_for(started, 300, "held cell", proc)
    return proc


def _one_line_stop(proc, says: str) -> None:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-3000:]
    assert "Traceback" not in err + out, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and says in last and "resume=true" in last, err[-3000:]


def _resumed_cleanly(cli, workdir, uri: str, runs) -> None:
    """resume=true finishes the sweep: every cell ok, the runs left by the stop closed, none RUNNING."""
    (sweep,) = (workdir / "outputs" / "multirun").iterdir()
    res = cli("-m", "strategy=full_batch,stall", "q=1", f"mlflow.tracking_uri={uri}", *FAST, "resume=true",
              f"hydra.sweep.dir={sweep}", extra_env={"MORPHOGEN_CODE_VERSION": "test"})
    assert res.returncode == 0, res.stderr[-3000:]
    every = runs()
    assert not [r.info.run_name for r in every if r.info.status == "RUNNING"]
    newest = max((r for r in every if r.data.tags.get(ROLE_TAG) == "sweep"), key=lambda r: r.info.start_time)
    assert newest.info.status == "FINISHED"
    cells = [r for r in every if r.data.tags.get("mlflow.parentRunId") == newest.info.run_id
             and r.data.tags.get(ROLE_TAG) == "cell"]
    assert sorted(r.data.tags["strategy"] for r in cells if r.data.tags["cell_status"] == "ok") == ["full_batch", "stall"]
    assert any("resumed_from" in r.data.tags for r in cells)  # the cell finished before the stop is kept, not re-run


@pytest.mark.slow
def test_a_lost_tracking_server_stops_the_sweep_in_one_line_and_it_resumes_once_back(cli, workdir, tmp_path):
    """The server killed while a cell runs: retried for $MORPHOGEN_MLFLOW_WAIT_S (3 s here), then one line and exit 2;
    the same server back, resume=true finishes the sweep with nothing lost."""
    from .test_mlflow_server import _free_port, serve, stop

    server_dir, port, flag = tmp_path / "server", _free_port(), workdir / "stall.flag"
    server_dir.mkdir()
    flag.write_text("")
    with serve(server_dir, port=port) as (url, server):
        proc = _stall_until_started(cli, workdir, url, flag)
        try:
            stop(server, signal.SIGKILL)
            flag.unlink()  # the held cell goes on, and finds no server
            _one_line_stop(proc, "the tracking server did not answer")
        finally:
            proc.kill()
    with serve(server_dir, port=port) as (url, _):
        _resumed_cleanly(cli, workdir, url, lambda: mlflow_runs_at(url))


@pytest.mark.slow
def test_a_full_store_disk_stops_the_sweep_in_one_line_and_ends_its_runs(cli, workdir):
    """The SQLite store on a small tmpfs filled while a cell runs: one line, exit 2, the sweep run and the cell ended
    (never RUNNING); with space again, resume=true finishes the sweep."""
    import subprocess

    disk, flag = workdir / "disk", workdir / "stall.flag"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)], check=True)
    try:
        uri = f"sqlite:///{disk}/mlflow.db"
        flag.write_text("")
        proc = _stall_until_started(cli, workdir, uri, flag)
        try:
            fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)  # every byte the store has not taken
            try:
                while os.write(fd, b"\0" * (1 << 16)):
                    pass
            except OSError:
                pass
            finally:
                os.close(fd)
            flag.unlink()
            _one_line_stop(proc, "disk of the MLflow store is full")
        finally:
            proc.kill()
        runs = lambda: mlflow_runs_at(uri)  # noqa: E731
        assert not [r.info.run_name for r in runs() if r.info.status == "RUNNING"]
        assert [r.info.status for r in runs() if r.data.tags.get(ROLE_TAG) == "sweep"] == ["FAILED"]
        (disk / "filler").unlink()
        _resumed_cleanly(cli, workdir, uri, runs)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def mlflow_runs_at(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("morphogen_exp")
    assert exp is not None, f"no experiment in {uri}"
    return client.search_runs([exp.experiment_id], max_results=100)


def test_a_full_sweep_folder_disk_is_one_line_and_ends_the_sweep_run(cli_here, workdir, monkeypatch):
    """Hydra writing a cell's .hydra/ folder on a full disk: one line, exit 2, the sweep run FAILED (never RUNNING)."""
    import errno

    import hydra.core.utils

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(workdir / "outputs" / "multirun" / "x" / ".hydra"))

    monkeypatch.setattr(hydra.core.utils, "_save_config", full)
    res = cli_here("-m", "q=1")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: cannot write ") and "No space left" in res.stderr
    (sweep,) = [r for r in mlflow_runs(workdir) if r.data.tags.get("morphogen.role") == "sweep"]
    assert sweep.info.status == "FAILED"
