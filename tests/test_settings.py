"""Every setting is checked before any cell runs: on the real CLI each bad one is exit 2 with one line that names it,
no traceback, and nothing recorded (no cell, no store). These exit before any compile, so they are quick."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from morphogen_exp import paths
from morphogen_exp.config import MlflowConfig
from morphogen_exp.decide import rollout

PAGE = 4096


def _refused(res, *names: str) -> str:
    """A command refused as a setting to fix: exit 2, one line on stderr naming `names`, no traceback."""
    both = res.stdout + res.stderr
    assert res.returncode == 2, both[-3000:]
    assert "Traceback" not in both, both[-3000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-3000:]
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def _nothing_ran(workdir: Path) -> None:
    assert not (workdir / "outputs" / "mlflow.db").exists()  # no store: no sweep run, no cell
    assert not list((workdir / "outputs").glob("multirun/*/*/.hydra"))  # no job folder


@pytest.mark.parametrize(("args", "names"), [
    (("-m", "q=1", "bench.max_noise=nan"), ("bench.max_noise", "finite")),
    (("q=1", "bench.max_noise=nan"), ("bench.max_noise", "finite")),  # a single run too
    (("-m", "q=1", "decision.min_speedup=nan"), ("decision.min_speedup", "finite")),
    (("-m", "q=1", "decision.tie_within=inf"), ("decision.tie_within", "finite")),
    (("-m", "q=1", "+strategy.threshold=-inf"), ("strategy.threshold", "finite")),
    (("-m", "q=1", "+decision.typo=1"), ("decision.typo", "unknown decision setting")),
    (("-m", "q=1", "seed=4294967296"), ("seed", "4294967295")),
    (("-m", "q=interval(1,2)"), ("q=interval(1,2)",)),
    (("-m", "strategy=glob(nope*)"), ("strategy=glob(nope*)", "no cells", "full_batch")),
    (("-m", "q=1", "+strategy.guard_env.lower_case=1"), ("strategy.guard_env", "'lower_case'")),
    (("-m", "q=1", "strategy.guard_env.MORPHOGEN_GPU_BATCH_POLICY='latency\nx'"),
     ("strategy.guard_env.MORPHOGEN_GPU_BATCH_POLICY", "one line")),
    (("-m", "q=1", "+strategy.guard_env.MORPHOGEN_GPU_ENGINE=pallas"),
     ("strategy.guard_env", "MORPHOGEN_GPU_ENGINE", "reserved")),
    (("-m", "q=1", "decision.prefer=[full_batch,nonexistent]"), ("decision.prefer", "'nonexistent'", "tiled")),
    (("-m", "q=1", "bench.iterations=1000000000000"), ("bench.iterations", "1..1000000")),
    (("-m", "q=2,2"), ("more than once", "q=2")),
], ids=["nan", "nan-single-run", "decision-nan", "decision-inf", "knob-inf", "decision-typo", "seed-2**32", "interval",
        "empty-glob", "env-name", "env-newline", "env-reserved", "prefer-unknown", "iterations-10**12", "repeated-cell"])
def test_a_bad_setting_is_one_line_before_any_cell(cli_here, workdir, args, names) -> None:
    _refused(cli_here(*args), *names)
    _nothing_ran(workdir)


def test_an_unwritable_guard_store_is_found_before_any_cell(cli_here, workdir) -> None:
    (workdir / "a-file").write_text("not a folder")
    res = cli_here("-m", "q=1", extra_env={rollout.ENV_VAR: str(workdir / "a-file" / "guards")})
    _refused(res, "rollout guard store", rollout.ENV_VAR)
    _nothing_ran(workdir)


def test_jax_platforms_without_that_backend_is_one_line(cli_here, workdir) -> None:
    _refused(cli_here("q=1", extra_env={"JAX_PLATFORMS": "cuda"}), "JAX_PLATFORMS=cuda")
    _nothing_ran(workdir)


def test_a_dataset_file_of_partial_pages_is_refused_and_a_home_path_accepted(cli_here, workdir) -> None:
    home = workdir / "home"
    home.mkdir()
    (home / "pages.bin").write_bytes(b"\1" * (3 * PAGE))
    (home / "partial.bin").write_bytes(b"\1" * (3 * PAGE + 1))
    env = {"HOME": str(home)}
    _refused(cli_here("q=1", "dataset.path='~/partial.bin'", extra_env=env), "dataset.path", "12289 bytes", "4096-byte pages")
    _nothing_ran(workdir)
    # `~` expands as the loader expands it: the whole-page file validates; the other cell (bad seed) is the only error
    line = _refused(cli_here("-m", "q=1", "dataset.path='~/pages.bin'", "seed=0,4294967296", extra_env=env), "seed")
    assert "1 of 2 cells" in line and "dataset.path" not in line, line
    _nothing_ran(workdir)


def test_a_corrupt_decision_record_is_one_line_for_a_trial(cli_here, workdir) -> None:
    from morphogen_exp.fields import PARENT_TAG, ROLE_TAG
    from morphogen_exp.record.tracking import Tracker

    uri = f"sqlite:///{workdir}/outputs/mlflow.db"
    tracker = Tracker(MlflowConfig(uri, "morphogen_exp"))
    parent = tracker.start_run("sweep x", {ROLE_TAG: "sweep", PARENT_TAG: str(workdir / "sweep")})
    tracker.log_text(parent, '{"tie_within": 0.0', "decision.json")  # cut short
    tracker.end(parent, "FINISHED")
    text = rollout.to_yaml(rollout.guard_mapping({"strategy.name": "full_batch", "placement.name": "single"}), "test")
    meta = rollout.GuardMeta(
        guard="g", guard_sha256=rollout.sha256(text), sweep_dir=str(workdir / "sweep"), parent_run_id=parent,
        tracking_uri=uri, experiment="morphogen_exp", code_version="x", device_kind="cpu", dataset="tiny",
        dataset_fingerprint="x", engine="xla", strategy="full_batch", selected="full_batch", config_id="abc",
        fallback=None, fallback_config_id=None, q=(1,))
    rollout.save(workdir / "outputs" / "rollout", "g", text, meta)
    runs_before = len(tracker.client.search_runs([tracker.experiment_id]))
    _refused(cli_here("+rollout=g", test_strategies=False), "decision.json", parent)
    assert len(tracker.client.search_runs([tracker.experiment_id])) == runs_before  # no trial run recorded


def test_files_the_tool_writes_follow_the_umask(tmp_path) -> None:
    old = os.umask(0o027)
    try:
        paths.atomic_write(tmp_path / "a" / "report.md", "x")
        rollout.save(tmp_path / "b", "g", "y")
        assert (tmp_path / "a" / "report.md").stat().st_mode & 0o777 == 0o640
        assert (tmp_path / "b" / "g.yaml").stat().st_mode & 0o777 == 0o640
        os.umask(0o002)
        paths.atomic_write(tmp_path / "a" / "report.md", "z")  # replaced: the new file's mode
        assert (tmp_path / "a" / "report.md").stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(old)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["report.md"]  # no temp file left
