"""A sweep's folder, cells and record are its own: resume takes only its cells and finishes it; two sweeps of one
second never share a folder; cells never time together on one device; a report that only reads writes nothing
to the record; the sweep ends on its decision."""

from __future__ import annotations

import fcntl
import itertools
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from morphogen_exp.config import ConfigError, MlflowConfig
from morphogen_exp.decide import report
from morphogen_exp.fields import PARENT_TAG, ROLE_TAG
from morphogen_exp.record import sweepdir, tracking
from morphogen_exp.record.tracking import Tracker
from morphogen_exp.run.sweep import review_hint

from .conftest import mlflow_runs

FAST = ("bench.max_time_s=0.2", "bench.system_metrics_s=null")


def _by_role(runs, role: str):
    return [r for r in runs if r.data.tags.get(ROLE_TAG) == role]


def _children(runs, parent):
    return {r.data.tags["strategy"]: r for r in _by_role(runs, "cell") if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}


# --------------------------------------------------------------------------- the real CLI

def test_resume_finishes_the_killed_sweep_from_its_own_cells_and_a_report_only_reads(cli, workdir, tmp_path_factory,
                                                                                     monkeypatch, capsys):
    """A SIGKILLed sweep, then a one-off cell of the same identity (newer), then `-m ... resume=true` with no
    folder: the killed sweep is found and finished in its folder, its dead runs KILLED, its finished cell copied
    (never the one-off's); the last line is the decision. A what-if report of it changes no record."""
    flag = workdir / "stall.flag"
    flag.write_text("")
    # A cell's identity includes the code version: pinned, as others may edit the tree while this runs.
    env = {"MORPHOGEN_TEST_STALL": str(flag), "MORPHOGEN_CODE_VERSION": "test"}
    args = ("-m", "strategy=full_batch,stall", "q=1", *FAST)
    proc = cli(*args, background=True, extra_env=env)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if [r for r in mlflow_runs(workdir) if r.data.tags.get("strategy") == "stall"]:
                break
            time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        proc.send_signal(signal.SIGKILL)  # no handler runs: the sweep run and the stalled cell stay RUNNING
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    (sweep,) = (workdir / "outputs" / "multirun").iterdir()
    (killed,) = _by_role(mlflow_runs(workdir), "sweep")
    killed_cell = _children(mlflow_runs(workdir), killed)["full_batch"]
    assert killed.info.status == "RUNNING" and killed_cell.data.tags["cell_status"] == "ok"

    one_off = cli("strategy=full_batch", "q=1", *FAST, extra_env=env)  # same cell_key, newer, in no sweep
    assert one_off.returncode == 0, one_off.stderr[-2000:]
    flag.unlink()

    res = cli(*args, "resume=true", extra_env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    assert f"resume: sweep {sweep} (run {killed.info.run_id}), 1 of 2 cells done" in lines, res.stdout[-2000:]
    assert "closed 2 stale RUNNING run(s)" in res.stdout + res.stderr
    runs = mlflow_runs(workdir)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    parents = {r.info.run_id: r for r in _by_role(runs, "sweep")}
    assert parents[killed.info.run_id].info.status == "KILLED"
    (resumed,) = [p for i, p in parents.items() if i != killed.info.run_id]
    assert resumed.data.tags[PARENT_TAG] == str(sweep) and resumed.info.status == "FINISHED"
    assert resumed.data.tags[sweepdir.DIGEST_TAG] == killed.data.tags[sweepdir.DIGEST_TAG]
    cells = _children(runs, resumed)
    assert cells["full_batch"].data.tags["resumed_from"] == killed_cell.info.run_id  # not the one-off's run
    assert "resumed_from" not in cells["stall"].data.tags and cells["stall"].data.tags["cell_status"] == "ok"
    old_stall = _children(runs, parents[killed.info.run_id])["stall"]
    assert (old_stall.info.status, old_stall.data.tags["cell_status"]) == ("KILLED", "killed")

    # The sweep's last lines: where to review it, then the decision and the report.
    md = sweep / "report.md"
    assert lines[-2].startswith("review: mlflow ui --backend-store-uri sqlite:///")
    assert lines[-1].startswith("decision: ") and lines[-1].endswith(f" — report: {md}")
    headline = lines[-1][len("decision: "):].split(" — report: ")[0]
    assert f"**Decision: {headline}**" in md.read_text()

    # A report run elsewhere finds the sweep's store from its folder; without --publish it writes a what-if only.
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    client = tracking.open_store(f"sqlite:///{workdir}/outputs/mlflow.db", "morphogen_exp").client

    def record():
        run = client.get_run(resumed.info.run_id)
        guards = sorted((p.name, p.read_bytes()) for p in (workdir / "outputs" / "rollout").glob("*"))
        return (run.data.tags, [a.path for a in client.list_artifacts(run.info.run_id, "report")], md.read_bytes(),
                (sweep / "matrix.csv").read_bytes(), guards)

    before = record()
    assert report.main(["--sweep-dir", str(sweep), "--rule", "rank_by=batch_ms_per_batch"]) == 0
    (whatif,) = sweep.glob("whatif-*")
    assert "ranked by batch_ms_per_batch" in (whatif / "report.md").read_text()
    assert record() == before
    capsys.readouterr()
    for argv, says in ((["--publish", "--rule", "rank_by=batch_ms_per_batch"], "--publish with --rule"),
                       (["--out", str(sweep)], "is the sweep folder")):
        assert report.main(["--sweep-dir", str(sweep), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and says in err, err
    assert record() == before and len(list(sweep.glob("whatif-*"))) == 1

    # Nothing left unfinished: the same command starts a new sweep, which copies nothing from the finished one.
    again = cli(*args, "resume=true", extra_env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resume: no unfinished sweep of these 2 cells in sqlite:///" in again.stdout
    (new,) = set((workdir / "outputs" / "multirun").iterdir()) - {sweep}
    (newest,) = [r for r in _by_role(mlflow_runs(workdir), "sweep") if r.data.tags[PARENT_TAG] == str(new)]
    assert not any("resumed_from" in r.data.tags for r in _children(mlflow_runs(workdir), newest).values())


def test_two_sweeps_of_one_second_get_two_folders_and_never_time_together(cli, workdir):
    """Two sweeps whose folder is the same name at the same moment (what a default `<time>` folder is): each gets
    a folder of its own, every cell of each (joblib workers too) is in its sweep's folder under its sweep's run,
    and no two cells' measured intervals overlap on the one device. A folder that holds a sweep is refused."""
    same = "hydra.sweep.dir=${morphogen_new_dir:outputs/multirun/same}"
    procs = [cli("-m", "strategy=full_batch", "q=1,2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", same, *FAST,
                 background=True),
             cli("-m", "strategy=full_batch", "q=1", same, *FAST, background=True)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    root = workdir / "outputs" / "multirun"
    assert sorted(p.name for p in root.iterdir()) == ["same", "same_2"]
    runs = mlflow_runs(workdir)
    parents = {r.info.run_id: r for r in _by_role(runs, "sweep")}
    assert sorted(p.data.tags[PARENT_TAG] for p in parents.values()) == [str(root / "same"), str(root / "same_2")]
    cells = _by_role(runs, "cell")
    assert len(cells) == 3
    for c in cells:
        parent = parents[c.data.tags["mlflow.parentRunId"]]
        assert c.data.tags[PARENT_TAG] == parent.data.tags[PARENT_TAG]
        assert (Path(parent.data.tags[PARENT_TAG]) / "parent_run_id").read_text().strip() == parent.info.run_id
    assert sorted(sum(c.data.tags["mlflow.parentRunId"] == p for c in cells) for p in parents) == [1, 2]
    intervals = sorted((c.data.metrics["measure_start_ts"], c.data.metrics["measure_end_ts"]) for c in cells)
    for (s0, e0), (s1, e1) in itertools.pairwise(intervals):
        assert s0 < e0 <= s1 < e1, intervals  # one cell on the device at a time, across both sweeps

    refused = cli("-m", "strategy=full_batch", "q=1", "hydra.sweep.dir=outputs/multirun/same", *FAST)
    assert refused.returncode == 2, refused.stderr[-2000:]
    (line,) = [x for x in refused.stderr.splitlines() if x.startswith("error:")]
    assert "holds sweep run" in line and "resume=true" in line
    assert len(mlflow_runs(workdir)) == len(runs)  # nothing recorded


# --------------------------------------------------------------------------- the functions

def test_a_cell_is_resumed_only_from_an_earlier_run_of_its_own_sweep_folder(workdir):
    tr = Tracker(MlflowConfig(f"sqlite:///{workdir}/outputs/mlflow.db", "morphogen_exp"))
    mine, other = str(workdir / "it's mine"), str(workdir / "other")

    def cell(name: str, parent: str | None, folder: str | None, key: str = "k1") -> str:
        tags = {ROLE_TAG: "cell", "cell_key": key, "cell_status": "ok", **({PARENT_TAG: folder} if folder else {})}
        run = tr.start_run(name, tags, parent)
        tr.end(run, "FINISHED")
        return run

    earlier = tr.start_run("sweep", {ROLE_TAG: "sweep", PARENT_TAG: mine})
    own = cell("own", earlier, mine)
    cell("own, other key", earlier, mine, key="k2")
    cell("another sweep's", tr.start_run("sweep", {ROLE_TAG: "sweep", PARENT_TAG: other}), other)
    cell("one-off", None, None)
    cell("a trial with the folder's tag", None, mine)
    now = tr.start_run("sweep", {ROLE_TAG: "sweep", PARENT_TAG: mine})
    cell("this run's own", now, mine)
    assert tr.finished_cell("k1", mine, exclude_parent=now).info.run_id == own
    assert tr.finished_cell("k1", other + "x") is None
    assert tr.finished_cell("k3", mine) is None


def test_a_folder_held_by_a_running_sweep_or_holding_one_is_refused(tmp_path):
    folder = tmp_path / "s"
    held = sweepdir.claim(folder, resume=False, store_parent=None)
    with pytest.raises(ConfigError, match=r"is in use by a running sweep \(pid \d+ on "):
        sweepdir.claim(folder, resume=True, store_parent=None)
    held.release()
    (folder / "parent_run_id").write_text("abc\n")
    with pytest.raises(ConfigError, match="holds sweep run abc already; finish it with resume=true"):
        sweepdir.claim(folder, resume=False, store_parent=None)
    with pytest.raises(ConfigError, match="holds sweep run def"):
        sweepdir.claim(tmp_path / "t", resume=False, store_parent="def")  # the store knows it, the folder is new
    sweepdir.claim(folder, resume=True, store_parent="abc").release()
    # The lock is the process's: it drops when the holder dies, however it dies.
    code = (f"import os, fcntl; fd = os.open({str(folder / '.sweep.lock')!r}, os.O_RDWR); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.kill(os.getpid(), 9)")
    subprocess.run([sys.executable, "-c", code], timeout=60)
    fd = os.open(folder / ".sweep.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)


def test_the_default_folder_is_made_once_per_sweep_and_every_copy_of_its_config_agrees(tmp_path):
    """The resolver creates the folder exclusively and OmegaConf caches it on the sweep's config; Hydra copies that
    cache into each cell's config (OmegaConf.copy_cache) and pickles the config to joblib workers."""
    base = str(tmp_path / "multirun" / "2026-11-27_10-00-00")
    spec = {"dir": f"${{{sweepdir.RESOLVER}:{base}}}"}
    first, second = OmegaConf.create(spec), OmegaConf.create(spec)
    assert (first.dir, second.dir) == (base, base + "_2")  # two sweeps of one second: two folders
    cell = OmegaConf.create(spec)
    OmegaConf.copy_cache(from_config=first, to_config=cell)
    assert cell.dir == pickle.loads(pickle.dumps(first)).dir == first.dir == base
    assert sorted(p.name for p in (tmp_path / "multirun").iterdir()) == ["2026-11-27_10-00-00", "2026-11-27_10-00-00_2"]


def test_a_cell_set_is_its_jobs_whatever_their_order_or_the_settings_that_measure_nothing():
    a = sweepdir.cells_digest([["strategy=tiled", "q=1"], ["strategy=tiled", "q=2"]])
    assert a == sweepdir.cells_digest([["q=2", "strategy=tiled", "resume=true", "mlflow.experiment=x"],
                                       ["q=1", "strategy=tiled", "bench.compilation_cache_dir=/c", "decision.rank_by=y"]])
    assert a != sweepdir.cells_digest([["strategy=tiled", "q=1"], ["strategy=tiled", "q=4"]])
    assert a != sweepdir.cells_digest([["strategy=tiled", "q=1"], ["strategy=tiled", "q=2"], ["strategy=tiled", "q=2"]])
    assert a != sweepdir.cells_digest([["strategy=tiled", "q=1", "bench.max_time_s=1"], ["strategy=tiled", "q=2"]])


def test_a_server_is_reviewed_at_its_own_address():
    assert review_hint("http://host:5000/", "7") == "open http://host:5000/#/experiments/7/runs"
    local = review_hint("sqlite:////x/mlflow.db", "1")
    assert local.startswith("mlflow ui --backend-store-uri sqlite:////x/mlflow.db") and local.endswith(
        "http://127.0.0.1:5000/#/experiments/1/runs")


def test_a_job_folder_is_one_name_even_when_an_override_holds_a_path():
    assert sweepdir.job_dir(0, "dataset.path=/data/pages.bin,q=1") == "0_dataset.path=_data_pages.bin,q=1"
    long = sweepdir.job_dir(3, "dataset.path=/data/" + "x" * 300)
    assert "/" not in long and long.startswith("3_dataset.path=_data_x") and len(long.encode()) <= sweepdir.MAX_JOB_DIR
