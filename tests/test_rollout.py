"""The rollout guard store: guards round-trip through the real config for every strategy, load from any
directory, a missing guard is a one-line setting to fix, and writers never interleave."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from morphogen_exp import rollout
from morphogen_exp.config import ConfigError, flatten

REPO = Path(__file__).resolve().parents[1]

# Every strategy, with knobs away from their defaults; graph_replay with null and with a list.
CASES = {
    "full_batch": ["strategy=full_batch", "engine.unroll=true"],
    "graph_replay_null": ["strategy=graph_replay"],
    "graph_replay_list": ["strategy=graph_replay", "strategy.command_buffer=[FUSION,WHILE]", "engine=pallas"],
    "micro_batch": ["strategy=micro_batch", "strategy.threshold=8", "strategy.chunk=4"],
    "multi_stream": ["strategy=multi_stream", "strategy.streams=2"],
    "tiled": ["strategy=tiled", "strategy.tile=8", "engine.tile_pages=2048"],
}


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    """An empty guard store in its own folder, and a current directory elsewhere (not the repo)."""
    monkeypatch.setenv(rollout.ENV_VAR, str(tmp_path / "store"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return tmp_path / "store" / "rollout"


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", list(overrides))


def _as_mlflow_params(cfg) -> dict[str, str]:
    """What a cell run stores: the flattened resolved config, every value a string."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    resolved.pop("hydra", None)
    return {k: str(v) for k, v in flatten(resolved).items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_guard_round_trips_through_the_real_config(case: str, store: Path) -> None:
    measured = _compose(*CASES[case], "q=8")
    text = rollout.to_yaml(rollout.guard_mapping(_as_mlflow_params(measured)), f"test guard {case}\nsecond line")
    rollout.publish(case, text)
    assert (store / f"{case}.yaml").read_text() == (store / "selected.yaml").read_text() == text
    for name in (case, "selected"):
        trial = _compose(f"+rollout={name}", "q=2")
        assert OmegaConf.to_container(trial.strategy, resolve=True) == OmegaConf.to_container(measured.strategy, resolve=True)
        assert OmegaConf.to_container(trial.engine, resolve=True) == OmegaConf.to_container(measured.engine, resolve=True)
        assert trial.q == 2  # the trial's own settings stay its own
    if case == "graph_replay_null":
        assert _compose("+rollout=selected").strategy.command_buffer is None  # not the string "None"
    if case == "graph_replay_list":
        assert list(_compose("+rollout=selected").strategy.command_buffer) == ["FUSION", "WHILE"]


def test_typed_reads_back_what_mlflow_stored() -> None:
    for value in (None, True, False, 4, 0.5, ["FUSION", "WHILE"], "adaptive", "FUSION", [1, 2]):
        assert rollout.typed(str(value)) == value


def test_guard_names_are_per_dataset_device_and_engine() -> None:
    assert rollout.guard_name("mainnet", "NVIDIA H100 80GB HBM3", "pallas") == "mainnet-nvidia-h100-80gb-hbm3-pallas"
    assert rollout.guard_name("tiny", "cpu", "xla") == "tiny-cpu-xla"


def test_preflight_fails_for_a_guard_that_is_not_saved(store: Path) -> None:
    with pytest.raises(ConfigError, match=r"no rollout guard 'selected' in .*saved: none yet.*run a sweep first"):
        rollout.preflight(["+rollout=selected", "q=8"])
    rollout.publish("tiny-cpu-xla", rollout.to_yaml(rollout.no_go_mapping(), "x"))
    rollout.preflight(["+rollout=selected", "q=8"])
    rollout.preflight(["-m", "rollout=tiny-cpu-xla,selected"])
    rollout.preflight(["q=8", "strategy=tiled"])  # no guard asked for: nothing to check
    with pytest.raises(ConfigError, match=r"no rollout guard 'mainnet-h100' .*saved: selected, tiny-cpu-xla"):
        rollout.preflight(["+rollout=mainnet-h100"])
    with pytest.raises(ConfigError, match="is not a guard name"):
        rollout.preflight(["+rollout=../../etc/passwd"])
    assert str(ConfigError("x")).count("\n") == 0


def test_the_store_does_not_depend_on_the_current_directory(store: Path, monkeypatch) -> None:
    monkeypatch.delenv(rollout.ENV_VAR)
    assert rollout.store() == REPO / "outputs" / "rollout"
    monkeypatch.setenv(rollout.ENV_VAR, "~/guards")
    assert rollout.store() == Path("~/guards").expanduser() / "rollout"


def test_two_writers_never_interleave(tmp_path: Path) -> None:
    target = tmp_path / "g.yaml"
    texts = ["a" * 200_000, "b" * 300_000]
    seen: list[str] = []

    def write(t: str) -> None:
        for _ in range(30):
            rollout.atomic_write(target, t)
            now = target.read_text()  # whole: one writer's text, never a mix
            seen.append(now[:1] + str(len(now)) + str(len(set(now))))

    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert target.read_text() in texts
    assert set(seen) <= {"a2000001", "b3000001"}
    assert [p.name for p in tmp_path.iterdir()] == ["g.yaml"]  # no temp file left behind


_HOOKED = "rollout.preflight" in (REPO / "morphogen_exp" / "__main__.py").read_text()


@pytest.mark.skipif(not _HOOKED, reason="__main__.main() does not call rollout.preflight(sys.argv[1:]) yet")
def test_the_real_command_without_a_saved_guard_exits_2_from_any_directory(tmp_path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, rollout.ENV_VAR: str(tmp_path / "empty"), "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-m", "morphogen_exp", "+rollout=selected", "q=8"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "no rollout guard 'selected'" in res.stderr, res.stderr
    assert not (tmp_path / "outputs").exists()  # nothing ran
