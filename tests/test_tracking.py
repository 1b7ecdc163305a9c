"""The MLflow tracker's conveniences never fail a cell: a dataset input that two cells register at once."""

from __future__ import annotations

import logging

from morphogen_exp.config import MlflowConfig
from morphogen_exp.record.tracking import Tracker


def _tracker(tmp_path) -> Tracker:
    return Tracker(MlflowConfig(f"sqlite:///{tmp_path}/mlflow.db", "t"))


def test_a_dataset_input_lost_to_a_concurrent_writer_is_logged_on_retry(tmp_path, monkeypatch):
    tr = _tracker(tmp_path)
    run = tr.start_run("cell", {})
    real, calls = tr.client.log_inputs, []

    def racing(*args, **kwargs):  # what a shared server answered when two workers inserted the same dataset
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("BAD_REQUEST: (sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id")
        return real(*args, **kwargs)

    monkeypatch.setattr(tr.client, "log_inputs", racing)
    tr.log_dataset(run, "tiny", "abc123", "synthetic(seed=0)", {"num_pages": 300})
    assert len(calls) == 2
    assert [i.dataset.name for i in tr.client.get_run(run).inputs.dataset_inputs] == ["tiny"]


def test_a_dataset_input_that_keeps_failing_only_warns(tmp_path, monkeypatch, caplog):
    tr = _tracker(tmp_path)
    run = tr.start_run("cell", {})

    def broken(*args, **kwargs):
        raise RuntimeError("store says no")

    monkeypatch.setattr(tr.client, "log_inputs", broken)
    with caplog.at_level(logging.WARNING):
        tr.log_dataset(run, "tiny", "abc123", "synthetic(seed=0)", {"num_pages": 300})
    assert "dataset input not logged" in caplog.text and "store says no" in caplog.text


def test_a_corrupt_decision_json_is_one_line_naming_the_run(tmp_path) -> None:
    """report --sweep-dir on a sweep whose decision.json artifact is not JSON: a ConfigError naming the run and the
    way out, never a JSONDecodeError traceback."""
    import pytest

    from morphogen_exp.config import ConfigError
    from morphogen_exp.record.tracking import load_rules

    t = Tracker(MlflowConfig(f"sqlite:///{tmp_path}/mlflow.db", "e"))
    run = t.client.create_run(t.experiment_id)
    bad = tmp_path / "decision.json"
    bad.write_text("{not json")
    t.client.log_artifact(run.info.run_id, str(bad))
    with pytest.raises(ConfigError, match=f"sweep run {run.info.run_id}: its decision.json is not JSON") as err:
        load_rules(t.client, t.client.get_run(run.info.run_id))
    assert "\n" not in str(err.value)


def test_a_code_difference_says_what_differs_and_the_same_code_says_nothing() -> None:
    """The trial's code note is never spurious: equal versions say nothing; another commit, or the same commit with
    other uncommitted edits (only morphogen_exp/ and conf/ count), is said as such."""
    from morphogen_exp.record.tracking import code_difference

    a, b = "a" * 40, "b" * 40
    assert code_difference(a, a) is None and code_difference(f"{a}+dirty.1234abcd", f"{a}+dirty.1234abcd") is None
    assert code_difference(b, a) == f"code: commit {b} here, {a} in the sweep"
    assert code_difference(f"{a}+dirty.1234abcd", a) == (
        "code: the same commit aaaaaaaaaaaa, other uncommitted edits to morphogen_exp/ or conf/ "
        "(uncommitted edits 1234abcd here, no uncommitted edits in the sweep)")
