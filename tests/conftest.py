"""Shared pytest fixtures."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import morphogen_exp.config  # noqa: F401  (registers the config schema in Hydra's ConfigStore)
from morphogen_exp.run.session import Session


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """tests/fixtures: the original's reference vectors and published matrices, part of the repository
    (see its README.md). A missing file fails the test: they are checked in, never optional."""
    path = Path(__file__).resolve().parent / "fixtures"
    files = ("dpf_vectors.json", "prg_vectors.json", "original-task30-h100-matrix.csv", "original-task32-h100-policies.csv",
             "README.md")
    missing = [name for name in files if not (path / name).is_file()]
    if missing:
        pytest.fail(f"reference fixtures missing from {path}: {', '.join(missing)} (they are part of the repository: "
                    "restore them with git, e.g. git checkout -- tests/fixtures)", pytrace=False)
    return path


# --------------------------------------------------------------------------- orchestrator helpers

REPO = Path(__file__).resolve().parents[1]
TEST_CONF = REPO / "tests" / "support" / "conf"
# Test doubles (a strategy that corrupts an answer, one that sleeps) load like any out-of-tree strategy.
os.environ.setdefault("MORPHOGEN_EXTRA_STRATEGIES", "tests.support.doubles")
sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def jax_cache(tmp_path_factory) -> Path:
    """One persistent XLA cache for the whole session: each program compiles once, not per process."""
    return tmp_path_factory.mktemp("jax-cache")


@pytest.fixture(scope="session")
def sess() -> Session:
    """One process session for the in-process tests: the tiny database and its programs are shared."""
    return Session()


_TEMPLATE: list[Path] = []  # the session's migrated store, made on first use


@pytest.fixture(autouse=True)
def store_from_template(request, monkeypatch, tmp_path_factory) -> None:
    """A new SQLite store in this process is a copy of one migrated for the session (milliseconds, not a second's
    migrations): the first is made by the real `Tracker._create_store`, then copied beside the target and renamed
    into place as that does. A test marked `fresh_store` (one of store creation itself) gets the real migrations."""
    if request.node.get_closest_marker("fresh_store"):
        return
    from morphogen_exp.record.tracking import Tracker

    real = Tracker._create_store

    def from_template(db: Path) -> None:
        if not _TEMPLATE:
            template = tmp_path_factory.mktemp("store-template") / "mlflow.db"
            real(template)
            _TEMPLATE.append(template)
        tmp = db.with_name(f".{db.name}.creating-{os.getpid()}-copy")
        try:
            shutil.copyfile(_TEMPLATE[0], tmp)
            os.replace(tmp, db)
        finally:
            tmp.unlink(missing_ok=True)

    monkeypatch.setattr(Tracker, "_create_store", staticmethod(from_template))


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """Each test runs in its own folder: outputs/, the MLflow store and Hydra dirs land there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MORPHOGEN_ROLLOUT_DIR", str(tmp_path / "outputs"))  # guards stay in the test's folder
    (tmp_path / "outputs").mkdir()  # as in a checkout, where outputs/ exists (hydra.searchpath)
    return tmp_path


def common_overrides(workdir: Path, jax_cache: Path) -> list[str]:
    return [
        f"mlflow.tracking_uri=sqlite:///{workdir}/outputs/mlflow.db",
        f"bench.compilation_cache_dir={jax_cache}",
        f"hydra.searchpath=[file://outputs,file://{TEST_CONF}]",
        "bench.iterations=2",
        "bench.warmup=0",
    ]


@pytest.fixture
def make_cfg(workdir, jax_cache):
    """Compose the real config tree (conf/) with overrides, as the CLI would."""

    def _make(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            return compose("config", [*common_overrides(workdir, jax_cache), *overrides])

    return _make


def cli_args(workdir: Path, jax_cache: Path, args: tuple[str, ...], test_strategies: bool = True) -> list[str]:
    """The command line after `python -m morphogen_exp`: flags, the tests' common overrides, then the test's (which win).
    A CLI test checks what a command does, not how fine its numbers are: each timed path stops at 0.5 s (3 s by
    default) and no system metrics are sampled (tests/test_devstate.py tests those) unless the test says otherwise."""
    common = [o for o in common_overrides(workdir, jax_cache) if test_strategies or not o.startswith("hydra.searchpath")]
    common += ["bench.max_time_s=0.5", "bench.system_metrics_s=null"]
    flags = [a for a in args if a.startswith("-")]
    return [*flags, *common, *(a for a in args if a not in flags)]


@pytest.fixture
def cli(workdir, jax_cache):
    """Run `python -m morphogen_exp ...` for real, in a process of its own in the test's folder (signals, launchers,
    a process's exit status and output; the in-process `cli_here` serves every other test)."""

    def _run(*args: str, timeout: float = 900, extra_env: dict | None = None, test_strategies: bool = True,
             background: bool = False):
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(extra_env or {})}
        cmd = [sys.executable, "-m", "morphogen_exp", *cli_args(workdir, jax_cache, args, test_strategies)]
        if background:
            return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)

    return _run


@dataclass
class CliResult:
    """What `python -m morphogen_exp` ended with: as subprocess.CompletedProcess, for the same assertions."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli_here(workdir, jax_cache, monkeypatch, capsys):
    """`python -m morphogen_exp ...` called in this process (`__main__.main` with its argv; SystemExit is the exit
    status; stdout and stderr captured): no interpreter start, no JAX/MLflow/Hydra import. What a process would
    start fresh is fresh here too: Hydra's global state, the process session, the store-loss flag, the environment,
    the signal handlers and the logging set-up are put back after each call."""
    from hydra.core.global_hydra import GlobalHydra

    from morphogen_exp import __main__ as entry
    from morphogen_exp.record import tracking
    from morphogen_exp.run import session

    def _run(*args: str, extra_env: dict | None = None, test_strategies: bool = True) -> CliResult:
        argv = [str(Path(entry.__file__)), *cli_args(workdir, jax_cache, args, test_strategies)]
        environ = dict(os.environ)
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        loggers = {name: (lg.level, lg.propagate, lg.disabled, lg.handlers[:])
                   for name, lg in [("", logging.root), *logging.Logger.manager.loggerDict.items()]
                   if isinstance(lg, logging.Logger)}
        os.environ.pop("HYDRA_FULL_ERROR", None)  # as a user's shell: main() sets it for its own process
        os.environ.update(extra_env or {})
        monkeypatch.setattr(sys, "argv", argv)
        monkeypatch.setattr(session, "_CURRENT", None)
        monkeypatch.setattr(tracking, "_lost", None)
        capsys.readouterr()
        GlobalHydra.instance().clear()
        code: int | str | None = 0
        try:
            with warnings.catch_warnings():
                entry.main()
        except SystemExit as exit_:
            code = exit_.code
        finally:
            GlobalHydra.instance().clear()
            os.environ.clear()
            os.environ.update(environ)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            for name, (level, propagate, disabled, kept) in loggers.items():
                lg = logging.root if name == "" else logging.getLogger(name)
                lg.setLevel(level)
                lg.propagate, lg.disabled, lg.handlers[:] = propagate, disabled, kept
        out = capsys.readouterr()
        return CliResult(code if isinstance(code, int) else (0 if code is None else 1), out.out, out.err)

    return _run


@pytest.fixture
def cli_refusal(request, cli, cli_here):
    """The CLI for a command refused before any cell: in this process, or in a process of its own for a case marked
    `own_process` (the few that hold the exit-2-and-one-line contract of a real process)."""
    return cli if request.node.get_closest_marker("own_process") else cli_here


def mlflow_runs(workdir: Path, experiment: str = "morphogen_exp"):
    """All runs of the experiment in the test's store, as MLflow entities (the real store, no mocks)."""
    from mlflow.tracking import MlflowClient

    db = workdir / "outputs" / "mlflow.db"
    if not db.exists():  # never create the store from the test (the CLI creates it atomically)
        return []
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)
