"""Shared pytest fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import morphogen_exp.config  # noqa: F401  (registers the config schema in Hydra's ConfigStore)
from morphogen_exp.session import Session


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


@pytest.fixture
def cli(workdir, jax_cache):
    """Run `python -m morphogen_exp ...` for real, in the test's folder."""

    def _run(*args: str, timeout: float = 900, extra_env: dict | None = None, test_strategies: bool = True,
             background: bool = False):
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(extra_env or {})}
        common = [o for o in common_overrides(workdir, jax_cache) if test_strategies or not o.startswith("hydra.searchpath")]
        flags = [a for a in args if a.startswith("-")]
        cmd = [sys.executable, "-m", "morphogen_exp", *flags, *common, *(a for a in args if a not in flags)]  # test's overrides win
        if background:
            return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)

    return _run


def mlflow_runs(workdir: Path, experiment: str = "morphogen_exp"):
    """All runs of the experiment in the test's store, as MLflow entities (the real store, no mocks)."""
    from mlflow.tracking import MlflowClient

    db = workdir / "outputs" / "mlflow.db"
    if not db.exists():  # never create the store from the test (the CLI creates it atomically)
        return []
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)
