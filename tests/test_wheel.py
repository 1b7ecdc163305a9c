"""The package as a wheel: built with `pip wheel --no-deps .`, it carries conf/ and the CUDA sources, and installed
without -e in a fresh venv it runs one cell from a folder outside the checkout (console script, config from the
wheel, outputs in that folder). The GPU kernel build from the wheel: scripts/wheel_gpu_check.sh."""

from __future__ import annotations

import os
import runpy
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO, mlflow_runs

pytestmark = pytest.mark.slow

# Not part of a source tree: the build works on a copy without them (an in-tree build writes build/ and
# *.egg-info into the checkout, and two builds at once would share build/).
_TOP_SKIP = {".git", "outputs", "build", "dist", ".venv", "venv"}
_SKIP = {"__pycache__", ".pytest_cache", ".hypothesis", ".mypy_cache", ".ruff_cache"}


def _source_copy(dst: Path) -> Path:
    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = _SKIP | (_TOP_SKIP if Path(folder) == REPO else set())
        return {n for n in names if n in skip or n.endswith((".egg-info", ".whl"))}

    shutil.copytree(REPO, dst, ignore=ignore, symlinks=True)
    return dst


def _clean_env() -> dict[str, str]:
    """This environment without what points at the checkout or this test session (PYTHONPATH, MORPHOGEN_*)."""
    drop = ("PYTHONPATH", "HYDRA_FULL_ERROR", "MLFLOW_TRACKING_URI")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("MORPHOGEN_")}


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          capture_output=True, text=True, check=True, timeout=120).stdout.strip()


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    """A copy of the source tree, committed in a fresh git repository of its own (a clone as a builder has it)."""
    src = _source_copy(tmp_path_factory.mktemp("src") / "morphogen_exp")
    _git(src, "init", "-q")
    _git(src, "add", "-A")
    _git(src, "commit", "-qm", "the tree")
    return src


@pytest.fixture(scope="module")
def wheel(src: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", ".", "-w", str(out)], cwd=src,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (whl,) = out.glob("morphogen_exp-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory) -> Path:
    """A fresh venv whose dependencies are this interpreter's, with the wheel installed (not editable)."""
    env = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(env)], check=True, timeout=300)
    if sys.prefix != sys.base_prefix:  # this interpreter is a venv itself: its packages are not the system's
        (next((env / "lib").glob("python3*/site-packages")) / "_outer_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    res = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)],
                         capture_output=True, text=True, env=_clean_env(), timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return env


def test_the_wheel_carries_the_config_tree_and_the_cuda_sources(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = {f"morphogen_exp/conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in (REPO / "conf").rglob("*.yaml")}
    cuda = {p.relative_to(REPO).as_posix() for ext in ("*.cu", "*.cuh") for p in (REPO / "morphogen_exp").rglob(ext)}
    assert {"morphogen_exp/conf/config.yaml", "morphogen_exp/conf/hydra/help/morphogen.yaml"} <= conf
    assert any(n.startswith("morphogen_exp/conf/hydra/launcher/") for n in conf)
    assert cuda and any(n.endswith(".cuh") for n in cuda)
    assert sorted(conf - names) == [] and sorted(cuda - names) == []
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "morphogen-exp = morphogen_exp.__main__:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_an_installed_wheel_runs_one_cell_from_any_folder(venv: Path, tmp_path: Path, jax_cache: Path) -> None:
    run = tmp_path / "elsewhere"
    run.mkdir()
    assert not run.resolve().is_relative_to(REPO)
    py, env = str(venv / "bin" / "python"), _clean_env()
    where = subprocess.run([py, "-c", "import morphogen_exp, morphogen_exp.paths as p; print(morphogen_exp.__file__, p.conf_dir())"],
                           cwd=run, env=env, capture_output=True, text=True, timeout=300)
    assert where.returncode == 0, where.stderr[-3000:]
    module, conf = map(Path, where.stdout.split())
    site_packages = next((venv / "lib").glob("python3*/site-packages")).resolve()
    assert module.is_relative_to(site_packages) and conf == site_packages / "morphogen_exp" / "conf"  # the wheel, not the checkout

    res = subprocess.run([str(venv / "bin" / "morphogen-exp"), "q=1", "bench.iterations=2", "bench.warmup=0",
                          f"bench.compilation_cache_dir={jax_cache}"], cwd=run, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (cell,) = mlflow_runs(run)  # the default store: <this folder>/outputs/mlflow.db
    assert cell.info.status == "FINISHED" and cell.data.tags["q"] == "1" and cell.data.metrics["parity_ok"] == 1
    assert Path(cell.info.artifact_uri.removeprefix("file://")).is_relative_to(run / "outputs")
    assert [p.name for p in (run / "outputs" / "runs").iterdir()] != []  # Hydra's run folder
    assert (run / "outputs" / "rollout").is_dir()  # the guard store of a package without a checkout: ./outputs

    for module_name in ("morphogen_exp.report", "morphogen_exp.compare"):  # the other entry points, from here too
        res = subprocess.run([py, "-m", module_name, "--help"], cwd=run, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0 and "usage:" in res.stdout, res.stderr[-3000:]


def test_the_wheel_is_stamped_with_its_commit_and_reports_it_as_its_code_version(src: Path, wheel: Path, venv: Path,
                                                                                 tmp_path: Path) -> None:
    head = _git(src, "rev-parse", "HEAD")
    assert zipfile.ZipFile(wheel).read("morphogen_exp/BUILD_COMMIT").decode().strip() == head
    code = "from morphogen_exp.record.tracking import code_version; print(code_version())"
    res = subprocess.run([str(venv / "bin" / "python"), "-c", code],
                         cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == head, res.stderr[-3000:]  # not pkg-0.1.0


def test_a_dirty_tree_is_stamped_dirty_and_no_checkout_is_not_stamped(tmp_path: Path) -> None:
    setup = runpy.run_path(str(REPO / "setup.py"), run_name="setup")  # its commit_stamp, without running setup()
    tree = tmp_path / "tree"
    (tree / "morphogen_exp").mkdir(parents=True)
    (tree / "morphogen_exp" / "a.py").write_text("x = 1\n")
    assert setup["commit_stamp"](tree) is None  # no git checkout: nothing stamped (code_version falls back)
    _git(tree, "init", "-q")
    _git(tree, "add", "-A")
    _git(tree, "commit", "-qm", "one")
    head = _git(tree, "rev-parse", "HEAD")
    assert setup["commit_stamp"](tree) == head
    (tree / "morphogen_exp" / "a.py").write_text("x = 2\n")
    stamp = setup["commit_stamp"](tree)
    assert stamp.startswith(head + "+dirty.") and len(stamp) == len(head) + len("+dirty.") + 8
