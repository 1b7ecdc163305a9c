"""Rollout trials: the guard's configuration on this machine against what its sweep measured.

The verdicts are pure functions, tested on hand-made numbers; the guard's record (`<name>.meta.json`) and the
preflight run in-process; one small sweep then carries the real CLI: a trial that holds, one held to a doctored
(impossibly fast) promise that regresses (exit 1), one on another dataset that says so before any number, a
strategy change refused (exit 2), and the trials' runs never read as cells by a report or by resume."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from morphogen_exp.config import ConfigError
from morphogen_exp.decide import report, rollout
from morphogen_exp.decide.decision import Estimate
from morphogen_exp.record import sweepdir, tracking
from morphogen_exp.run import trial
from morphogen_exp.run.trial import BETTER, HOLDS, IMPROVED, INCONCLUSIVE, REGRESSED, TIED, UNDECIDED, WORSE

from .conftest import mlflow_runs

SWEPT = Estimate(10.0, 9.8, 10.2)  # the sweep's cell: 10 ms [9.8, 10.2]


# --------------------------------------------------------------------------- the verdicts, on hand-made numbers

def test_holds_inside_the_cells_interval_or_within_the_margin_of_its_median() -> None:
    assert trial.promise_verdict(Estimate(10.15, 9.0, 11.5), SWEPT, 0.02) == HOLDS      # inside [9.8, 10.2]
    assert trial.promise_verdict(Estimate(10.35, 10.3, 10.4), SWEPT, 0.05) == HOLDS     # outside, within 5% of 10
    assert trial.promise_verdict(Estimate(10.35, 10.3, 10.4), SWEPT, 0.02) != HOLDS     # the same, beyond 2%
    assert trial.promise_verdict(Estimate(10.1), Estimate(10.0), 0.02) == HOLDS         # point estimates: the margin alone


def test_regressed_only_when_the_trials_interval_clears_the_cells_hi_and_the_margin() -> None:
    assert trial.promise_verdict(Estimate(13.1, 12.9, 13.4), SWEPT, 0.02) == REGRESSED  # 12.9 > 10.2 x 1.02
    assert trial.promise_verdict(Estimate(13.1, 10.3, 13.4), SWEPT, 0.02) == INCONCLUSIVE  # 10.3 < 10.404: within noise
    j = trial.judge(8, Estimate(13.1, 12.9, 13.4), SWEPT, Estimate(1.3, 1.2, 1.4), 0.02)
    assert (j.verdict, j.promise, j.against_fallback) == (REGRESSED, REGRESSED, BETTER)
    assert j.why == "x1.31 slower than the sweep's 10 [9.8, 10.2] ms: 13.1 [12.9, 13.4] ms"


def test_improved_symmetrically_and_inconclusive_in_between() -> None:
    assert trial.promise_verdict(Estimate(7.0, 6.8, 7.2), SWEPT, 0.02) == IMPROVED      # 7.2 < 9.8 x 0.98
    assert trial.promise_verdict(Estimate(9.0, 8.0, 9.7), SWEPT, 0.02) == INCONCLUSIVE  # 9.7 > 9.604: within noise
    j = trial.judge(4, Estimate(7.0, 6.8, 7.2), SWEPT, Estimate(1.5, 1.4, 1.6), 0.02)
    assert j.verdict == IMPROVED and j.why.startswith("x1.43 faster than the sweep's")
    j = trial.judge(4, Estimate(11.0, 10.0, 12.0), SWEPT, Estimate(1.5, 1.4, 1.6), 0.02)
    assert j.verdict == INCONCLUSIVE and "more rounds (bench.max_time_s) can decide it" in j.why


def test_the_fallback_in_the_same_rounds() -> None:
    assert trial.fallback_verdict(Estimate(1.3, 1.01, 1.5), 0.02) == BETTER
    assert trial.fallback_verdict(Estimate(1.0, 0.985, 1.02), 0.02) == TIED       # a true tie: non-inferior
    assert trial.fallback_verdict(Estimate(0.9, 0.85, 0.97), 0.02) == WORSE
    assert trial.fallback_verdict(Estimate(0.99, 0.95, 1.05), 0.02) == UNDECIDED
    slower = Estimate(0.8, 0.75, 0.85)
    # a guard slower than its fallback beyond noise and margin regresses though its own time holds...
    j = trial.judge(1, Estimate(10.0, 9.9, 10.1), SWEPT, slower, 0.02, fallback="tiled")
    assert (j.verdict, j.promise, j.against_fallback) == (REGRESSED, HOLDS, WORSE) and "slower than tiled / guard x0.800" in j.why
    # ...unless its sweep's cells had the fallback faster too (decided at another q)
    j = trial.judge(1, Estimate(10.0, 9.9, 10.1), SWEPT, slower, 0.02, fallback="tiled", sweep_saw_fallback_faster=True)
    assert j.verdict == HOLDS
    # no comparable cell: the fallback alone decides
    assert trial.judge(1, Estimate(5.0, 4.9, 5.1), None, Estimate(1.0, 0.99, 1.01), 0.02).verdict == HOLDS
    assert trial.judge(1, Estimate(5.0, 4.9, 5.1), None, slower, 0.02).verdict == REGRESSED
    assert trial.judge(1, Estimate(5.0, 4.9, 5.1), None, Estimate(0.99, 0.95, 1.05), 0.02).verdict == INCONCLUSIVE


def test_the_verdict_line_worst_first_and_the_exit_status() -> None:
    j = [trial.judge(1, Estimate(10.0, 9.9, 10.1), SWEPT, Estimate(1.0, 0.99, 1.01), 0.02),
         trial.judge(4, Estimate(10.1, 9.9, 10.2), SWEPT, Estimate(1.2, 1.1, 1.3), 0.02),
         trial.judge(8, Estimate(13.1, 12.9, 13.4), SWEPT, Estimate(1.3, 1.2, 1.4), 0.02)]
    line = trial.verdict_line(j)
    assert line.startswith("trial: REGRESSED at q=8 (x1.31 slower than the sweep's") and line.endswith("; HOLDS at q=1,4")
    assert trial.overall(j) == REGRESSED and trial.EXIT[REGRESSED] == 1
    assert trial.overall(j[:2]) == HOLDS and trial.verdict_line(j[:2]) == "trial: HOLDS at q=1,4"
    assert trial.verdict_line(j[:2], comparable=False).endswith("against the fallback only: the sweep's numbers are not promises here")
    assert (trial.EXIT[HOLDS], trial.EXIT[IMPROVED], trial.EXIT[INCONCLUSIVE]) == (0, 0, 3)


# --------------------------------------------------------------------------- the guard's record

@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(rollout.ENV_VAR, str(tmp_path / "store"))
    return tmp_path / "store" / "rollout"


def _meta(text: str, **changes) -> rollout.GuardMeta:
    base = dict(guard="tiny-cpu-xla", guard_sha256=rollout.sha256(text), sweep_dir="/s/2026-12-04_10-00-00",
                parent_run_id="a" * 32, tracking_uri="sqlite:////s/mlflow.db", experiment="morphogen_exp",
                code_version="abc", device_kind="cpu", dataset="tiny", dataset_fingerprint="synthetic-v1:pages=300:seed=0",
                engine="xla", strategy="tiled", selected="tiled[tile=2]", config_id="c" * 16, fallback=None,
                fallback_config_id=None, q=(1, 4))
    return rollout.GuardMeta(**{**base, **changes})


def test_a_guard_travels_with_its_record_and_an_older_one_is_named_to_republish(store: Path) -> None:
    text = rollout.to_yaml(rollout.no_go_mapping(), "Rollout guard from sweep /s/2026-12-04_10-00-00 (run " + "a" * 32 + "), cpu")
    rollout.publish("old", text)  # published before records existed
    with pytest.raises(ConfigError, match=r"^guard 'old' .* has no old\.meta\.json.*re-publish it: python -m morphogen_exp\.report "
                                          r"--sweep-dir /s/2026-12-04_10-00-00 --publish$"):
        trial.preflight(["+rollout=old"])
    meta = _meta(text, guard="tiny-cpu-xla")
    rollout.publish("tiny-cpu-xla", text, meta=meta)
    assert rollout.read_meta("tiny-cpu-xla") == rollout.read_meta("selected") == meta
    assert json.loads((store / "selected.meta.json").read_text())["q"] == [1, 4]
    trial.preflight(["+rollout=selected", "q=8"])
    trial.preflight(["-m", "+rollout=selected", "strategy=full_batch"])  # a multirun over a guard is a sweep, not a trial
    for argv in (["+rollout=selected", "strategy=full_batch"], ["+rollout=selected", "strategy.tile=8", "q=4"]):
        with pytest.raises(ConfigError, match=r"trials the guard's own configuration, strategy tiled \(tiled\[tile=2\]\); "
                                              r"strategy\S* would change it"):
            trial.preflight(argv)
    (store / "selected.yaml").write_text(text + "# edited\n")
    with pytest.raises(ConfigError, match=r"selected\.yaml and selected\.meta\.json are from different publishes"):
        trial.preflight(["+rollout=selected"])
    rollout.publish("none", text, meta=_meta(text, strategy=None, selected=None, config_id=None))
    with pytest.raises(ConfigError, match=r"ships no configuration .* no promise to trial"):
        trial.preflight(["+rollout=none"])
    (store / "none.meta.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"none\.meta\.json is not a guard record"):
        trial.preflight(["+rollout=none"])


# --------------------------------------------------------------------------- the real CLI

def _ours(stdout: str) -> list[str]:
    """The trial's own lines (not the log's)."""
    return [line for line in stdout.splitlines() if not re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", line)]


def _covered(last: str) -> set[int]:
    return {int(q) for group in re.findall(r"at q=([\d,]+)", last) for q in group.split(",")}


def test_a_trial_holds_the_guard_to_its_sweep_and_is_never_a_cell(cli_here, workdir):
    # min_speedup 0.5: something ships even when a loaded CPU blurs the batch path's lead over the loop
    res = cli_here("-m", "strategy=full_batch,tiled", "q=1,4", "bench.max_time_s=0.5", "decision.min_speedup=0.5", test_strategies=False)
    assert res.returncode == 0, res.stderr[-3000:]
    meta = rollout.read_meta("selected")
    assert meta.q == (1, 4) and meta.device_kind == "cpu" and meta.dataset_fingerprint == "synthetic-v1:pages=300:seed=0"
    (sweep,) = (workdir / "outputs" / "multirun").iterdir()
    assert meta.sweep_dir == str(sweep) and (sweep / "rollout" / "selected.meta.json").read_text() == meta.to_json()
    runs = mlflow_runs(workdir)
    cells = {(r.data.tags["config_id"], int(r.data.tags["q"])): r for r in runs if r.data.tags.get("morphogen.role") == "cell"}
    assert len(cells) == 4

    # An unchanged machine: CPU timings move run to run, so the margin is raised on the command line (else the
    # sweep's decision.tie_within, 2%, holds the trial to it).
    ok = cli_here("+rollout=selected", "decision.tie_within=0.9", test_strategies=False)
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    lines = _ours(ok.stdout)
    assert lines[0].startswith(f"trial of guard {meta.guard}: {meta.selected} ({meta.config_id}) from sweep {sweep} "
                               f"(run {meta.parent_run_id}, code {meta.code_version}, measured on cpu); fallback ")
    assert "margin tie_within=0.9 (the command line)" in lines[0]
    assert [line.split(":")[0] for line in lines[1:-1]] == ["q=1", "q=4"]
    assert all("against the sweep's" in line for line in lines[1:-1])
    assert re.match(r"trial: (HOLDS|IMPROVED) at q=", lines[-1]) and _covered(lines[-1]) == {1, 4}, lines[-1]

    (t,) = [r for r in mlflow_runs(workdir) if r.data.tags.get("morphogen.role") == "trial"]
    tags = t.data.tags
    assert t.info.status == "FINISHED" and tags["mlflow.parentRunId"] == meta.parent_run_id
    assert (tags["trial.guard"], tags["trial.sweep_run_id"], tags["trial.comparable"]) == (meta.guard, meta.parent_run_id, "true")
    assert tags["trial.cell.q1"] == cells[(meta.config_id, 1)].info.run_id
    assert tags["trial.cell.q4"] == cells[(meta.config_id, 4)].info.run_id
    if meta.fallback_config_id:
        assert tags["trial.fallback_cell.q4"] == cells[(meta.fallback_config_id, 4)].info.run_id
    assert tags["trial.verdict"] in (HOLDS, IMPROVED) and t.data.metrics["q4.rounds"] >= 6
    assert tags["mlflow.note.content"] == lines[-1]  # the run's description is its verdict
    assert {"host.cpus", "host.load1_start", "host.load1_end"} <= set(t.data.metrics)  # the host's load, named if it moved
    assert (" — while it ran " in lines[-1]) == ("host.load_moved" in tags)

    # The promise doctored to an impossible 1 microsecond at q=1: the same machine now regresses (exit 1), at q=1 only.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/outputs/mlflow.db")
    guard_q1 = cells[(meta.config_id, 1)].info.run_id
    for key in ("batch_ms_per_batch", "batch_ms_per_batch_lo", "batch_ms_per_batch_hi"):
        client.log_metric(guard_q1, key, 0.001, step=1)
    bad = cli_here("+rollout=selected", "q=1", "decision.tie_within=0.9", test_strategies=False)
    assert bad.returncode == 1, bad.stdout[-3000:] + bad.stderr[-3000:]
    last = _ours(bad.stdout)[-1]
    assert last.startswith("trial: REGRESSED at q=1 (x") and _covered(last) == {1}, last
    assert "slower than the sweep's 0.001 [0.001, 0.001] ms: " in last

    # Another dataset: said before any number, and judged on the fallback alone.
    other = cli_here("+rollout=selected", "dataset.num_pages=301", "q=4", "decision.tie_within=0.9", test_strategies=False)
    assert other.returncode == 0, other.stdout[-3000:] + other.stderr[-3000:]
    lines = _ours(other.stdout)
    assert lines[0].startswith("trial of guard ") and lines[1].startswith(
        "NOT COMPARABLE with its sweep: dataset synthetic-v1:pages=301:seed=0 here, synthetic-v1:pages=300:seed=0 in the sweep.")
    assert not any(" ms" in line for line in lines[:2]) and lines[-2].startswith("q=4: guard ") and "(no promise here)" in lines[-2]
    assert lines[-1].split(" — while it ran ")[0] == (  # a loaded host said after it
        "trial: HOLDS at q=4 — against the fallback only: the sweep's numbers are not promises here")

    # Another strategy under the guard's name: one line, exit 2, nothing run.
    other_strategy = "strategy=full_batch" if meta.strategy != "full_batch" else "strategy=tiled"
    refused = cli_here("+rollout=selected", other_strategy, test_strategies=False)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith(f"error: +rollout=selected trials the guard's own configuration, strategy {meta.strategy}")

    # Trials are never cells: neither a report's rebuild nor resume takes them, even one that claims a cell's key.
    trials = [r for r in mlflow_runs(workdir) if r.data.tags.get("morphogen.role") == "trial"]
    assert len(trials) == 3 and {r.data.tags["mlflow.parentRunId"] for r in trials} == {meta.parent_run_id}
    cell4 = cells[(meta.config_id, 4)]
    newest = max(trials, key=lambda r: r.info.start_time)
    client.set_tag(newest.info.run_id, "cell_key", cell4.data.tags["cell_key"])  # the newest run of that key, were it a cell
    client.set_tag(newest.info.run_id, "cell_status", "ok")
    store = tracking.open_store(f"sqlite:///{workdir}/outputs/mlflow.db", "morphogen_exp")
    children = client.search_runs([store.experiment_id], f"tags.`mlflow.parentRunId` = '{meta.parent_run_id}'")
    df = tracking.cells_frame(children)
    assert len(df) == 4 and not set(df["run_id"]) & {r.info.run_id for r in trials}
    assert {r.info.run_id for r in sweepdir._children(client, store.experiment_id, meta.parent_run_id)} == {
        c.info.run_id for c in cells.values()}
    from morphogen_exp.config import MlflowConfig
    from morphogen_exp.record.tracking import Tracker

    tracker = Tracker(MlflowConfig(f"sqlite:///{workdir}/outputs/mlflow.db", "morphogen_exp"))
    found = tracker.finished_cell(cell4.data.tags["cell_key"], str(sweep))
    assert found is not None and found.info.run_id == cell4.info.run_id
    files = report.build(store, meta.parent_run_id, workdir / "whatif")
    assert len(files.csv.read_text().splitlines()) == 1 + 4


def test_an_interrupted_trial_says_its_run_ended_not_that_cells_are_kept(monkeypatch, capsys) -> None:
    from morphogen_exp import __main__ as entry
    from morphogen_exp.run import session

    monkeypatch.setattr(sys, "argv", ["morphogen_exp", "+rollout=selected", "q=8"])
    monkeypatch.setattr(session.current(), "sweep", None)
    entry._interrupted()
    assert capsys.readouterr().err == (
        "interrupted: the trial of guard selected ended KILLED with no verdict; run the same command again\n")


def test_a_trial_naming_an_experiment_the_store_lacks_is_one_line_and_creates_none(tmp_path, sess) -> None:
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(tracking_uri=uri).create_experiment("morphogen_exp", artifact_location=(tmp_path / "art").as_uri())
    base = SimpleNamespace(mlflow=SimpleNamespace(tracking_uri=uri, experiment="typo"))
    with pytest.raises(ConfigError, match=r"^guard 'tiny-cpu-xla': no experiment 'typo' in sqlite:///"):
        trial._sweep_run(_meta("x", tracking_uri=uri), base, {"mlflow.experiment"}, sess)
    assert MlflowClient(tracking_uri=uri).get_experiment_by_name("typo") is None


def test_a_guard_that_moved_as_much_as_its_fallback_holds_the_machine_moved() -> None:
    """Issue 30 item 8: x1.34 slower than the sweep, but the fallback slowed as much (the paired ratio is the
    sweep's): HOLDS, said as the machine moving; the same drift faster is no IMPROVED either. Without the
    fallback's sweep time, or with the ratio moved too, the verdict stands."""
    slow, fb_then = Estimate(13.4, 13.3, 13.5), Estimate(20.0, 19.8, 20.2)  # the sweep: fallback / guard x2.0
    j = trial.judge(8, slow, SWEPT, Estimate(2.0, 1.98, 2.02), 0.02, fallback="tiled", fallback_then=fb_then)
    assert (j.verdict, j.promise) == (HOLDS, HOLDS) and j.why.startswith("the machine moved: the guard x1.34 and its fallback x1.34")
    fast = trial.judge(8, Estimate(9.0, 8.9, 9.1), SWEPT, Estimate(2.0, 1.97, 2.03), 0.02, fallback="tiled", fallback_then=fb_then)
    assert fast.verdict == HOLDS and "the machine moved" in fast.why
    assert trial.judge(8, slow, SWEPT, Estimate(2.0, 1.98, 2.02), 0.02, fallback="tiled").verdict == REGRESSED
    moved = trial.judge(8, slow, SWEPT, Estimate(1.5, 1.48, 1.52), 0.02, fallback="tiled", fallback_then=fb_then)
    assert moved.verdict == REGRESSED  # the guard lost ground on its fallback: the code, not the machine
