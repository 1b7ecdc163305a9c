"""The rollout guard store: guards round-trip through the real config for every strategy, load from any
directory, a missing guard is a one-line setting to fix, and writers never interleave."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from morphogen_exp import paths
from morphogen_exp.config import ConfigError, env_value, flatten
from morphogen_exp.decide import rollout

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
    assert rollout.guard_name("tiny", "cpu", "xla", 300) == "tiny-300p-cpu-xla"  # sizes of one dataset: two guards


def test_preflight_fails_for_a_guard_that_is_not_saved(store: Path) -> None:
    with pytest.raises(ConfigError, match=r"no rollout guard 'selected' in .*saved: none yet.*run a sweep first"):
        rollout.preflight(["+rollout=selected", "q=8"])
    rollout.publish("tiny-cpu-xla", rollout.to_yaml(rollout.no_go_mapping(), "x"))
    rollout.preflight(["+rollout=selected", "q=8"])
    with pytest.raises(ConfigError, match=r"^-m with rollout=tiny-cpu-xla,selected: a guard is trialled without -m"):
        rollout.preflight(["-m", "rollout=tiny-cpu-xla,selected"])  # a sweep would publish over the guard
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
            paths.atomic_write(target, t)
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


# --------------------------------------------------------------------------- a guard is data, never code

def test_guard_env_names_and_values_are_checked_and_quoted() -> None:
    g = "MORPHOGEN_GPU_"
    assert rollout.env_text({g + "B": "x y", g + "A": True, g + "C": 4}) == f"{g}A=true\n{g}B='x y'\n{g}C=4\n"
    for name in ("lower", "1X", "A-B", "A;touch x", "", "A B"):
        with pytest.raises(ConfigError, match="is not an environment variable name"):
            rollout.env_text({name: "1"})
    for value in ("a\nb", "a\rb", "a\0b"):
        with pytest.raises(ConfigError, match="one line without NUL"):
            rollout.env_text({g + "A": value})
    with pytest.raises(ConfigError, match="string, number or boolean"):
        rollout.env_text({g + "A": [1, 2]})
    # rebuilt from MLflow params (anyone may add a child run to a shared store): checked again, one line
    with pytest.raises(ConfigError, match=r"'X;touch /tmp/y' is not an environment variable name") as err:
        rollout.env_of({"strategy.guard_env.X;touch /tmp/y": "1", "strategy.name": "full_batch"})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="one line"):
        rollout.guard_mapping({"strategy.name": "full_batch", "strategy.guard_env.MORPHOGEN_GPU_A": "x\nrm -rf ~"},
                              with_env=True)


def test_the_names_a_guard_derives_are_reserved_and_never_set_twice() -> None:
    """Every .env line the guard derives (what ships) is a reserved name; a guard_env setting one, or two knobs
    spelled as one name, is one line, and merging never lets one part override another."""
    from morphogen_exp.config import RESERVED_ENV, check_guard_env, reserved_env

    params = {"strategy.name": "tiled", "strategy.tile": "4", "engine.name": "xla", "placement.name": "single"}
    derived = {**rollout.guard_env_lines(params, dry_run=True), **rollout.guard_env_lines(None, dry_run=True)}
    assert set(RESERVED_ENV) <= set(derived) and all(reserved_env(n) for n in derived), derived
    assert derived["MORPHOGEN_GPU_STRATEGY_TILE"] == "4"
    for name in ("MORPHOGEN_GPU_ENGINE", "MORPHOGEN_GPU_BATCHING", "MORPHOGEN_GPU_STRATEGY_TILE"):
        with pytest.raises(ConfigError, match=rf"^strategy.guard_env sets {name}: reserved for the lines") as err:
            check_guard_env({"MORPHOGEN_GPU_STREAMS": 1, name: "x"})
        assert "\n" not in str(err.value)
        with pytest.raises(ConfigError, match=rf"sets {name}: reserved"):  # a stored run's params, at publish
            rollout.env_of({"strategy.name": "tiled", f"strategy.guard_env.{name}": "x"})
    with pytest.raises(ConfigError, match=r"would set MORPHOGEN_GPU_ENGINE twice"):
        rollout.merged_env({"MORPHOGEN_GPU_ENGINE": "pallas"}, rollout.guard_env_lines(params))
    with pytest.raises(ConfigError, match=r"knobs 'a-b' and 'a_b' are both MORPHOGEN_GPU_STRATEGY_A_B"):
        rollout.guard_env_lines({"strategy.name": "tiled", "strategy.a_b": "1", "strategy.a-b": "2"})
    assert rollout.merged_env(rollout.NO_GO_ENV, rollout.guard_env_lines(None)) == {**rollout.NO_GO_ENV,
                                                                                    **rollout.guard_env_lines(None)}


def test_the_no_go_guard_sets_what_its_env_sets(store: Path) -> None:
    rollout.publish("nogo", rollout.to_yaml(rollout.no_go_mapping(), "no configuration is GO"))
    env = OmegaConf.to_container(_compose("+rollout=nogo").strategy.guard_env)
    text = "".join(f"{k}={env_value(k, v)}\n" for k, v in sorted(env.items()))
    assert text == rollout.env_text(rollout.NO_GO_ENV) == (
        "MORPHOGEN_GPU_BATCH_POLICY=latency\nMORPHOGEN_GPU_CUDA_GRAPH=false\nMORPHOGEN_GPU_STREAMS=1\n")


def test_a_guard_pins_the_device_count_its_sweep_measured(store: Path) -> None:
    params = _as_mlflow_params(_compose("placement=replicated", "q=8"))
    assert params["placement.devices"] == "None"  # every device: 1 on this host, 8 on an 8-GPU one
    mapping = rollout.guard_mapping(params, devices_used="2")
    assert mapping["placement"] == {"devices": 2}
    rollout.publish("rep", rollout.to_yaml(mapping, "replicated on 2"))
    assert _compose("+rollout=rep").placement.devices == 2
    assert rollout.guard_mapping({**params, "placement.devices": "3"}, devices_used="8")["placement"] == {"devices": 3}

    from morphogen_exp.run.trial import _as_run  # a trial holds a cell of that guard to the count it ran on
    assert _as_run({"_params": params, "_tags": {"devices_used": "2"}})["placement.devices"] == "2"
    assert _as_run({"_params": {**params, "placement.devices": "3"}, "_tags": {"devices_used": "3"}})["placement.devices"] == "3"


def test_a_guard_is_data_on_the_real_cli(cli_here, workdir: Path) -> None:
    """The issue's injection, odd but legal values and 16 overrides in one sweep: sourcing the .env sets exactly the
    values the config had and runs nothing; the yaml carries the same environment; the job folder name stays short;
    files are created with the umask."""
    import json
    import os
    import re
    import subprocess
    import sys

    values = {"MORPHOGEN_GPU_BATCH_POLICY": f"latency; touch {workdir}/PWNED #",
              "MORPHOGEN_GPU_ODD": f"it's $HOME `touch {workdir}/PWNED` $(touch {workdir}/PWNED) \"q\" a\\b  é,x=1",
              "MORPHOGEN_GPU_HEX": "0x10", "MORPHOGEN_GPU_EMPTY": ""}

    def quoted(v: str) -> str:  # a Hydra override's single-quoted value
        return "'" + v.replace("'", "\\'") + "'"

    env_args = [f"{'' if k == 'MORPHOGEN_GPU_BATCH_POLICY' else '+'}strategy.guard_env.{k}={quoted(v)}" for k, v in values.items()]
    fillers = ["bench.max_time_s=3.0", "bench.min_time_s=0.0", "bench.confidence=0.95", "parity.xor_check=true",
               "parity.numpy_reference_queries=1", "decision.min_speedup=1.0", "decision.tie_within=0.02",
               "decision.speedup_from_q=4", "engine.tile_pages=16384", "seed=0", "bench.system_metrics_s=null"]
    args = ["q=1", "bench.finals=false", *env_args, *fillers]
    assert len(args) >= 16 and len(",".join(args).encode()) > 255  # Hydra's own job folder name would not fit
    old = os.umask(0o022)
    try:
        res = cli_here("-m", *args, test_strategies=False)
    finally:
        os.umask(old)
    assert res.returncode == 0, res.stderr[-3000:]
    (sweep,) = (workdir / "outputs" / "multirun").iterdir()
    (job,) = [p for p in sweep.iterdir() if p.is_dir() and p.name.startswith("0_")]
    assert len(job.name.encode()) <= 255 and re.fullmatch(r"0_\+strategy\.guard_env\.MORPHOGEN_GPU_EMPTY=.*_[0-9a-f]{12}", job.name)

    env_file = sweep / "rollout" / "selected.env"
    probe = "import json, os; print(json.dumps(dict(os.environ)))"

    def environment(source: str) -> dict[str, str]:  # what a clean bash has after `set -a; . file`
        out = subprocess.run(["env", "-i", "bash", "-c", f'set -a; {source} {sys.executable} -c "{probe}"', str(env_file)],
                             cwd=workdir, capture_output=True, text=True, check=True).stdout
        return json.loads(out)

    bare, sourced = environment(""), environment('. "$0";')
    assert not (workdir / "PWNED").exists()  # sourcing ran nothing
    assert {k: sourced[k] for k in values} == values  # bash reads back each exact value
    added = {k: v for k, v in sourced.items() if bare.get(k) != v}
    shipped = {"MORPHOGEN_GPU_BATCHING", "MORPHOGEN_GPU_STRATEGY", "MORPHOGEN_GPU_ENGINE", "MORPHOGEN_GPU_PLACEMENT",
               "MORPHOGEN_GPU_DEVICES", "MORPHOGEN_GPU_DRY_RUN"}  # what ships, spelled out (rollout.guard_env_lines)
    assert set(added) == {*values, "MORPHOGEN_GPU_STREAMS", "MORPHOGEN_GPU_CUDA_GRAPH", *shipped}, added  # nothing else

    guard = _compose("+rollout=selected")  # the store's latest guard, as a trial loads it
    from_yaml = {k: env_value(k, v) for k, v in OmegaConf.to_container(guard.strategy.guard_env).items()}
    assert from_yaml == {k: v for k, v in added.items() if k not in shipped}  # yaml == env
    assert guard.strategy.guard_env.MORPHOGEN_GPU_HEX == "0x10" and guard.placement.devices == 1

    for path in (env_file, sweep / "rollout" / "selected.yaml", sweep / "report.md", sweep / "matrix.csv",
                 workdir / "outputs" / "rollout" / "selected.yaml"):
        assert path.stat().st_mode & 0o777 == 0o644, path  # the umask's, not mkstemp's 0600
