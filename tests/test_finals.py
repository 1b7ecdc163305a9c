"""The decision on the real CLI: paired rounds, the finals, honest evidence, data axes never ranked.

Each test is one small sweep (tiny dataset, two strategies or one); the finals run in the sweep's own process."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from morphogen_exp.decide.decision import DecisionRules, decide
from morphogen_exp.measure.stats import min_samples_for
from morphogen_exp.run import finals

from .conftest import mlflow_runs


def _sweep_dir(workdir: Path) -> Path:
    return sorted((workdir / "outputs" / "multirun").iterdir())[-1]


def _by_role(workdir: Path) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in mlflow_runs(workdir):
        out.setdefault(r.data.tags.get("morphogen.role", "?"), []).append(r)
    return out


def test_a_sweep_ends_with_finals_and_says_its_decision_last(cli_here, workdir):
    res = cli_here("-m", "strategy=full_batch,graph_replay", "q=1,4", "bench.max_time_s=0.5", test_strategies=False)
    assert res.returncode == 0, res.stderr[-3000:]
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("decision: ") and "report: " in last
    roles = _by_role(workdir)
    (parent,) = roles["sweep"]
    assert len(roles["cell"]) == 4 and parent.info.status == "FINISHED"
    cells = roles["cell"]
    for c in cells:  # paired rounds: as many of each path as rounds, at least what 95% needs
        m = c.data.metrics
        assert m["single_samples"] == m["batch_samples"] == m["speedup_pairs"] >= min_samples_for(0.95)
    report = (_sweep_dir(workdir) / "report.md").read_text()
    assert "## Finals" in report
    if "decision: GO" in last:  # something ships: it was re-measured at both q, in the sweep's process
        fin = roles.get("final", [])
        assert sorted(int(r.data.tags["q"]) for r in fin) == [1, 4]
        assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id and r.info.status == "FINISHED" for r in fin)
        assert "Drift of the shipped configuration" in report
        for line in (res.stdout + res.stderr).splitlines():  # a challenger is named as the report names it
            if "; against it " in line:
                assert line.split("; against it ")[1].split(" x")[0] in {"full_batch", "graph_replay"}, line
    else:
        assert "No finals were run" in report


def test_finals_plan_the_incumbent_and_what_ties_it():
    rows = []
    for name, qps, half in (("full_batch", 145.0, 1.0), ("graph_replay", 145.5, 1.0), ("tiled", 90.0, 1.0)):
        for q in (4, 32):
            rows.append({"config": name, "our_strategy": name, "q": q, "status": "ok", "parity_ok": 1, "error_message": "",
                         "batch_qps": qps * q / 32, "batch_qps_lo": (qps - half) * q / 32, "batch_qps_hi": (qps + half) * q / 32,
                         "batch_vs_single_speedup": 2.0, "batch_vs_single_speedup_lo": 1.9, "batch_vs_single_speedup_hi": 2.1})
    df = pd.DataFrame(rows)
    rules = DecisionRules(prefer=("full_batch", "tiled", "graph_replay"))
    d = decide(df, rules)
    assert d.selected == "full_batch"
    assert finals.plan(df, d, rules) == {4: ["full_batch", "graph_replay"], 32: ["full_batch", "graph_replay"]}


def test_few_samples_never_make_a_go_and_data_axes_are_never_ranked(cli_here, workdir):
    # bench.max_time_s=0.001 with 99%: the rounds still reach what 99% needs (8), never 2 + 2
    res = cli_here("-m", "q=4", "bench.iterations=1", "bench.max_time_s=0.001", "bench.confidence=0.99", "bench.finals=false",
              test_strategies=False)
    assert res.returncode == 0, res.stderr[-3000:]
    (cell,) = _by_role(workdir)["cell"]
    assert cell.data.metrics["speedup_pairs"] >= 8 and cell.data.metrics["confidence"] == 0.99
    # a sweep over the seed and the database size compares data, not configurations: no decision, no guard
    res = cli_here("-m", "seed=0,1", "dataset.num_pages=3,301", "q=4", "bench.max_time_s=0.2", "bench.finals=false",
              test_strategies=False)
    assert res.returncode == 0, res.stderr[-3000:]
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("decision: NO DECISION: the cells differ in ") and "seed (0, 1)" in last
    assert "dataset.num_pages (3, 301)" in last
    sweep = _sweep_dir(workdir)
    assert not (sweep / "rollout" / "selected.yaml").exists()
    (parent,) = [r for r in _by_role(workdir)["sweep"] if r.data.tags["morphogen.sweep_dir"] == str(sweep)]
    assert parent.data.tags["decision.selected"] == "none"
