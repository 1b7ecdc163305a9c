"""identity.py: one list of the settings that measure nothing, and cell_key, config_id (tag and params), a sweep's
cell set and the decision's context all agree on it."""

from __future__ import annotations

import pytest

from morphogen_exp import identity
from morphogen_exp.config import flatten
from morphogen_exp.record import sweepdir
from morphogen_exp.run import cell as app

# A value for each setting that measures nothing, other than the config's own.
UNMEASURED = {"bench.system_metrics_s": "0.5", "bench.compilation_cache_dir": "/tmp/elsewhere", "bench.cell_timeout_s": "99",
              "bench.finals": "false", "bench.floors": "false", "resume": "true", "decision.tie_within": "0.5"}


def test_the_list_names_each_setting_that_measures_nothing_once() -> None:
    assert {f"bench.{k}" for k in identity.NOT_MEASURED_BENCH} | set(identity.NOT_MEASURED_SECTIONS) == {
        k if k.startswith("bench.") else k.split(".")[0] for k in UNMEASURED} | {"mlflow", "hydra"}


def _tags(make_cfg, *overrides: str) -> dict[str, str]:
    return app.identity_tags(app.validate(make_cfg("strategy=tiled", "q=2", *overrides)))


@pytest.mark.parametrize("key", sorted(UNMEASURED))
def test_a_setting_that_measures_nothing_keeps_cell_key_and_config_id(make_cfg, workdir, monkeypatch, key) -> None:
    monkeypatch.setenv("MORPHOGEN_CODE_VERSION", "test")  # the code is part of cell_key: pinned while the tree changes
    base, changed = _tags(make_cfg), _tags(make_cfg, f"{key}={UNMEASURED[key]}")
    assert (changed["cell_key"], changed["config_id"]) == (base["cell_key"], base["config_id"])
    assert not identity.measures(key) and not identity.measurement_setting(key)  # no context for the decision either
    assert sweepdir.cells_digest([["q=2", f"{key}={UNMEASURED[key]}"]]) == sweepdir.cells_digest([["q=2"]])
    params = {k: str(v) for k, v in flatten(app.validate(make_cfg("strategy=tiled", "q=2")).resolved).items()}
    assert identity.config_id(params | {key: UNMEASURED[key]}) == identity.config_id(params)  # a run without the tag


@pytest.mark.parametrize("override", ["bench.warmup=2", "strategy.tile=8", "seed=3"])
def test_a_setting_that_measures_something_makes_another_cell(make_cfg, workdir, monkeypatch, override) -> None:
    monkeypatch.setenv("MORPHOGEN_CODE_VERSION", "test")
    base, changed = _tags(make_cfg), _tags(make_cfg, override)
    assert changed["cell_key"] != base["cell_key"] and changed["config_id"] != base["config_id"]
    key, value = override.split("=")
    assert identity.measures(key)
    assert sweepdir.cells_digest([["q=2", override]]) != sweepdir.cells_digest([["q=2"]])
    params = {k: str(v) for k, v in flatten(app.validate(make_cfg("strategy=tiled", "q=2")).resolved).items()}
    assert identity.config_id(params | {key: value + "0"}) != identity.config_id(params)


def test_q_makes_another_cell_of_the_same_configuration(make_cfg, workdir, monkeypatch) -> None:
    monkeypatch.setenv("MORPHOGEN_CODE_VERSION", "test")
    two, four = _tags(make_cfg), _tags(make_cfg, "q=4")
    assert two["cell_key"] != four["cell_key"] and two["config_id"] == four["config_id"]


def test_override_keys_of_groups_and_appends_are_read_as_settings() -> None:
    assert not identity.measures("+bench.finals") and not identity.measures("hydra/launcher")
    assert not identity.measures("~decision.prefer") and identity.measures("+strategy.threshold")
    assert identity.measurement_setting("bench.max_noise") and not identity.measurement_setting("strategy.tile")
