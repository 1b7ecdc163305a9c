"""The SLURM path for real: a sweep whose cells are jobs of a single-node SLURM (scripts/slurm/start.sh) through
`hydra/launcher=slurm_cpu`, and a job cancelled with `scancel` whose cell `resume=true` runs again."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import REPO, mlflow_runs

pytestmark = pytest.mark.slurm
LAUNCHER = ("hydra/launcher=slurm_cpu",)
STABLE = {"MORPHOGEN_CODE_VERSION": "test"}  # a cell's identity includes the code: others may edit the tree meanwhile


def _sh(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout


def _node_idle() -> bool:
    if shutil.which("sinfo") is None:
        return False
    res = subprocess.run(["sinfo", "-h", "-p", "morphogen", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return res.returncode == 0 and any(s in res.stdout for s in ("idle", "mixed", "allocated"))


@pytest.fixture(scope="module")
def slurm():
    """A running SLURM with the `morphogen` partition: the one that runs (CI starts it), else started here with
    scripts/slurm/start.sh as root and stopped afterwards. Without either the tests fail: never skipped."""
    if _node_idle():
        yield
        return
    if os.geteuid() != 0:
        pytest.fail("no SLURM with partition 'morphogen' runs here: start one with `sudo scripts/slurm/start.sh`",
                    pytrace=False)
    start = subprocess.run([str(REPO / "scripts/slurm/start.sh")], capture_output=True, text=True, timeout=900)
    if start.returncode != 0:
        pytest.fail(f"scripts/slurm/start.sh failed: {start.stderr.strip()[-500:]}", pytrace=False)
    try:
        yield
    finally:
        subprocess.run([str(REPO / "scripts/slurm/stop.sh")], capture_output=True, timeout=300)


def _sweep(workdir: Path) -> Path:
    (d,) = sorted((workdir / "outputs" / "multirun").iterdir())[-1:]
    return d


def _jobs(sweep: Path) -> dict[str, dict]:
    """Each SLURM job of a sweep (submitit's folders) -> the outcome it returned (its cell's run), {} if none."""
    jobs = {}
    for d in (sweep / ".submitit").iterdir():
        if not re.fullmatch(r"\d+_\d+", d.name):  # not a job's folder (the array's submission script)
            continue
        result = d / f"{d.name}_0_result.pkl"
        jobs[d.name] = pickle.loads(result.read_bytes())[1].return_value if result.exists() else {}
    return jobs


def _states(job_ids) -> dict[str, str]:
    """What SLURM's accounting (sacct) says each job ended as."""
    out = _sh("sacct", "-X", "-n", "-P", "-o", "JobID,State", *(f"-j{j}" for j in job_ids))
    return {line.split("|")[0]: line.split("|")[1].split()[0] for line in out.splitlines() if line}


def _left_behind(sweep: Path, job_ids) -> list[str]:
    """Jobs still queued or running, and processes still running from the sweep's folder."""
    arrays = sorted({j.split("_")[0] for j in job_ids})
    queued = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(arrays)],  # fails once SLURM forgot them: gone
                            capture_output=True, text=True, timeout=60).stdout.split()
    procs = subprocess.run(["pgrep", "-a", "-f", str(sweep)], capture_output=True, text=True).stdout.splitlines()
    return queued + procs


def _wait_gone(sweep: Path, job_ids, timeout: float = 60) -> list[str]:
    deadline = time.time() + timeout
    while (left := _left_behind(sweep, job_ids)) and time.time() < deadline:
        time.sleep(1)  # a job's last step may still be ending when its result is read
    return left


def _cancel(workdir: Path) -> None:
    """A failed test leaves no job of its sweeps behind."""
    for sweep in (workdir / "outputs" / "multirun").glob("*/.submitit"):
        ids = [d.name for d in sweep.iterdir() if d.name.isdigit()]
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True, timeout=60)


def _cells(runs, parent_id: str):
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id and r.data.tags.get("morphogen.role") == "cell"]


def test_a_sweep_runs_every_cell_as_a_slurm_job(slurm, cli, workdir):
    try:
        res = cli("-m", *LAUNCHER, "strategy=full_batch", "q=1,2", timeout=600)
    finally:
        _cancel(workdir)
    assert res.returncode == 0, res.stderr[-3000:]
    last = res.stdout.strip().splitlines()[-1]  # GO or not: a loaded CPU may prove nothing
    assert last.startswith("decision: ") and "report: " in last, res.stdout[-2000:]
    runs = mlflow_runs(workdir)
    (parent,) = [r for r in runs if r.data.tags.get("morphogen.role") == "sweep"]
    cells = _cells(runs, parent.info.run_id)
    assert parent.info.status == "FINISHED"
    assert sorted(r.data.tags["q"] for r in cells) == ["1", "2"]
    assert all(r.info.status == "FINISHED" and r.data.tags["cell_status"] == "ok" for r in cells)
    # every cell is the run of one SLURM job, which SLURM's accounting has COMPLETED
    sweep = _sweep(workdir)
    jobs = _jobs(sweep)
    assert len(jobs) == 2 and {j["run_id"] for j in jobs.values()} == {r.info.run_id for r in cells}
    assert _states(jobs) == {j: "COMPLETED" for j in jobs}
    assert parent.data.tags["morphogen.pid"] not in {r.data.tags["morphogen.pid"] for r in cells}
    assert (sweep / "report.md").read_text().count("| full_batch |") >= 1
    assert "override /strategy: full_batch" in (sweep / "rollout" / "selected.yaml").read_text()
    assert _wait_gone(sweep, jobs) == []


def test_a_cancelled_job_is_recorded_killed_and_resume_runs_only_it(slurm, cli, workdir):
    stall = workdir / "stall"
    stall.touch()  # the stall cell runs until this file is gone (tests/support/doubles.py)
    env = {**STABLE, "MORPHOGEN_TEST_STALL": str(stall)}
    # one job at a time, in order: full_batch finishes before the stall cell starts (a stalled cell holds the device)
    args = ("-m", *LAUNCHER, "hydra.launcher.array_parallelism=1", "strategy=full_batch,stall", "q=1")
    proc = cli(*args, extra_env=env, background=True)
    try:
        deadline, job = time.time() + 300, ""
        while time.time() < deadline and proc.poll() is None and not job:
            status = {r.data.tags.get("strategy"): r.info.status for r in mlflow_runs(workdir)}
            if status.get("full_batch") == "FINISHED" and status.get("stall") == "RUNNING":
                # the stall cell is the sweep's job #1: task 1 of its array, running now
                (job,) = [j for j in _sh("squeue", "-h", "-t", "RUNNING", "-o", "%i").split()
                          if j.endswith("_1") and (_sweep(workdir) / ".submitit" / j).is_dir()]
            time.sleep(1)
        assert job, f"the stall cell never ran: {proc.communicate(timeout=60)[1][-2000:]}"
        sweep = _sweep(workdir)
        _sh("scancel", job)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
        _cancel(workdir)
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in err
    assert f"stall-q1: killed: SLURM job {job} was cancelled" in err and "resume=true" in err
    runs = mlflow_runs(workdir)
    (sweep_run,) = [r for r in runs if r.data.tags.get("morphogen.role") == "sweep"]
    first = {r.data.tags["strategy"]: r for r in _cells(runs, sweep_run.info.run_id)}
    assert sweep_run.info.status == "FAILED"  # a cell did not finish: the sweep did not either
    assert first["stall"].info.status == "KILLED" and first["stall"].data.tags["cell_status"] == "killed"
    assert first["full_batch"].info.status == "FINISHED"
    assert "stall" in (sweep / "report.md").read_text()  # the report is built, with what finished
    states = _states(_jobs(sweep))
    assert states[job] == "CANCELLED" and sorted(states.values()) == ["CANCELLED", "COMPLETED"]

    stall.unlink()
    try:  # no hydra.sweep.dir: the newest unfinished sweep of these cells
        again = cli(*args, "resume=true", extra_env=env, timeout=600)
    finally:
        _cancel(workdir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resume: sweep {sweep} " in again.stdout
    runs = mlflow_runs(workdir)
    parent = max((r for r in runs if r.data.tags.get("morphogen.role") == "sweep"), key=lambda r: r.info.start_time)
    cells = {r.data.tags["strategy"]: r for r in _cells(runs, parent.info.run_id)}
    assert parent.info.status == "FINISHED" and set(cells) == {"full_batch", "stall"}
    assert cells["full_batch"].data.tags["resumed_from"] == first["full_batch"].info.run_id  # copied
    assert "resumed_from" not in cells["stall"].data.tags and cells["stall"].data.tags["cell_status"] == "ok"  # run again
    assert "Cells: 2 (2 ok)" in (sweep / "report.md").read_text()
    jobs = _jobs(sweep)
    assert len(jobs) == 4 and {j for j, s in _states(jobs).items() if s == "COMPLETED"} == set(jobs) - {job}
    assert _wait_gone(sweep, jobs) == []


def test_ctrl_c_of_the_launcher_cancels_its_jobs(slurm, cli, workdir):
    stall = workdir / "stall"
    stall.touch()
    env = {**STABLE, "MORPHOGEN_TEST_STALL": str(stall)}
    proc = cli("-m", *LAUNCHER, "strategy=stall", "q=1,2", extra_env=env, background=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if any(r.info.status == "RUNNING" for r in mlflow_runs(workdir) if r.data.tags.get("strategy") == "stall"):
                break
            time.sleep(1)
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    sweep = _sweep(workdir)
    arrays = [d.name for d in (sweep / ".submitit").iterdir() if d.name.isdigit()]
    try:
        assert len(arrays) == 1 and _wait_gone(sweep, arrays) == []  # no job outlives its launcher
    finally:
        _cancel(workdir)  # a failing test leaves nothing either
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "interrupted" in err
    states = [line.split()[0] for line in _sh("sacct", "-X", "-n", "-P", "-o", "State", f"-j{arrays[0]}").splitlines()]
    assert states and set(states) == {"CANCELLED"}, states
    deadline = time.time() + 60  # each running cell records its own end when its job is cancelled
    while (cells := [r for r in mlflow_runs(workdir) if r.data.tags.get("morphogen.role") == "cell"]) and \
            any(r.info.status == "RUNNING" for r in cells) and time.time() < deadline:
        time.sleep(1)
    assert cells and {r.info.status for r in cells} == {"KILLED"}
    assert {r.info.status for r in mlflow_runs(workdir) if r.data.tags.get("morphogen.role") == "sweep"} == {"KILLED"}


def test_the_device_lock_keys_a_jobs_gpus_by_their_index_on_the_host(monkeypatch):
    """Two jobs on one node, one GPU each: under cgroup device constraints both see CUDA_VISIBLE_DEVICES=0; the lock
    keys them by SLURM's host indices, so neither waits for the other's GPU."""
    import jax

    from morphogen_exp.measure import devlock

    class Device:
        id = 0

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax, "local_devices", lambda: [Device()])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    host = socket.gethostname()
    keys = []
    for gpu in ("2", "5"):
        monkeypatch.setenv("SLURM_JOB_GPUS", gpu)
        keys.append(devlock.device_keys())
    assert keys == [[f"{host}-gpu-2"], [f"{host}-gpu-5"]]
    monkeypatch.setenv("SLURM_STEP_GPUS", "6")  # a step's own GPUs come first
    assert devlock.device_keys() == [f"{host}-gpu-6"]
    monkeypatch.delenv("SLURM_JOB_GPUS")
    monkeypatch.delenv("SLURM_STEP_GPUS")
    assert devlock.device_keys() == [f"{host}-gpu-0"]  # outside SLURM: CUDA's own indices
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setenv("SLURM_JOB_GPUS", "3,4")  # narrowed inside the job: CUDA_VISIBLE_DEVICES says which
    assert devlock.device_keys() == [f"{host}-gpu-3"]
