"""The sweep folder: created exclusively, held while its sweep runs, named by its cell set, found again by resume.

- A default `hydra.sweep.dir` is `${morphogen_new_dir:outputs/multirun/${now:...}}`: the resolver creates the
  folder with `os.mkdir` (never shared: a second sweep of the same second gets `<time>_2`). OmegaConf caches the
  value on the sweep's config and Hydra copies that cache into every cell's config (and pickles it to joblib
  workers), so every cell of one sweep sees the same folder.
- The process that frames a sweep holds an exclusive `flock` on `<folder>/.sweep.lock` until it ends (the kernel
  drops it when the process dies, SIGKILL included): a folder whose lock is held is in use. A folder that already
  holds a sweep run is another sweep's unless `resume=true` (`claim`).
- `morphogen.cells_digest` on the sweep run names its cell set (every job's overrides, expanded as the basic sweeper
  does, minus the settings that do not change what a cell measures): `-m ... resume=true` without
  `hydra.sweep.dir` resumes the newest unfinished sweep of the same cell set (`resume_preflight`).
- `<folder>/mlflow.json` names the store the sweep used: `python -m morphogen_exp.report --sweep-dir` reads it.
- A job's folder (`hydra.sweep.subdir`, `job_dir`) is `<num>_<its overrides>` as Hydra names it, or, when that is
  long (many overrides would pass the 255 bytes a file name may have), its first overrides and a hash of them all.
- `sweep_preflight`: sweep syntax the basic sweeper cannot expand, or a sweep with no cells, is a one-line error
  before Hydra starts.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from .. import paths
from ..config import ConfigError, one_line
from ..identity import measures

RESOLVER = "morphogen_new_dir"
JOB_DIR_RESOLVER = "morphogen_job_dir"
MAX_JOB_DIR = 120  # bytes of a job folder's name kept as Hydra writes it; longer ones keep a prefix and a hash
LOCK_FILE = ".sweep.lock"
STORE_FILE = "mlflow.json"
PARENT_FILE = "parent_run_id"
DIGEST_TAG = "morphogen.cells_digest"
ROLE_TAG, DIR_TAG = "morphogen.role", "morphogen.sweep_dir"  # as tracking.py (not imported: it loads MLflow)


# --------------------------------------------------------------------------- a new folder, never shared

def new_dir(path: str) -> str:
    """Create `path` exclusively, else `path_2`, `path_3`...; the one created. An unwritable parent: `path`
    unchanged (the sweep's start then says what to fix)."""
    base = Path(path)
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return path
    for i in range(1, 10_000):
        cand = base if i == 1 else base.with_name(f"{base.name}_{i}")
        try:
            os.mkdir(cand)
        except FileExistsError:
            continue
        except OSError:
            return path
        return str(cand)
    raise ConfigError(f"{path}: 10000 sweeps of that name already; pick hydra.sweep.dir")


def job_dir(num: Any, overrides: Any) -> str:
    """A job's folder name: `<num>_<overrides>` (Hydra's override_dirname, a path's `/` as `_`) when short, else
    `<num>_<the first overrides, cut>_<sha256 of them all, 12 hex>` (one file name, no `/`, well under 255 bytes)."""
    name = f"{num}_{overrides}".replace("/", "_")  # dataset.path=/data/x.bin: one folder, not /data/x.bin nested
    if len(name.encode()) <= MAX_JOB_DIR:
        return name
    text = str(overrides)
    head = text.encode()[: MAX_JOB_DIR - 40].decode(errors="ignore").replace("/", "_").rstrip(",")
    return f"{num}_{head}_{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def register_resolver() -> None:
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, new_dir, use_cache=True)  # cached: one folder per sweep config
    if not OmegaConf.has_resolver(JOB_DIR_RESOLVER):
        OmegaConf.register_new_resolver(JOB_DIR_RESOLVER, job_dir)


register_resolver()


# --------------------------------------------------------------------------- holding a folder

@dataclass
class Claim:
    """A sweep folder held by this process (the lock drops with the process, or on release)."""

    path: Path
    fd: int | None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def cancel_jobs(self) -> None:
        """At exit while still held (the sweep was interrupted or failed): cancel the SLURM jobs submitit
        submitted from this folder (`.submitit/<array id>`), so none outlives its launcher; each running
        cell then ends KILLED (app.JobCancelled)."""
        if self.fd is None or shutil.which("scancel") is None:
            return
        ids = [d.name for d in (self.path / ".submitit").glob("*") if d.name.isdigit()]
        if ids:
            try:
                subprocess.run(["scancel", *ids], capture_output=True, timeout=60, check=False)
            except (OSError, subprocess.SubprocessError):  # exiting anyway: the jobs end at their time limit
                pass


def holder(path: Path) -> str:
    """Who holds a sweep folder's lock, as its lock file says ("pid N on host")."""
    try:
        return (path / LOCK_FILE).read_text().strip() or "another process"
    except OSError:
        return "another process"


def recorded_parent(path: Path) -> str | None:
    """The sweep run id a folder records (its `parent_run_id` file), if any."""
    f = path / PARENT_FILE
    try:
        return f.read_text().strip() or None if f.is_file() else None
    except OSError:
        return None


def claim(path: Path, *, resume: bool, store_parent: str | None) -> Claim:
    """Hold `path` for a new sweep run: created if missing, locked exclusively. Refused (ConfigError) when a
    running sweep holds it, or when it already holds a sweep run (`store_parent`: the store's newest sweep run
    of this folder; or the folder's own record) and this is not `resume=true`. OSError: not writable."""
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(f"hydra.sweep.dir {str(path)!r} is in use by a running sweep ({holder(path)}); "
                          "wait for it or pick another folder") from None
    except BaseException:
        os.close(fd)
        raise
    held = Claim(path, fd)
    try:
        previous = store_parent or recorded_parent(path)
        if previous and not resume:
            raise ConfigError(f"hydra.sweep.dir {str(path)!r} holds sweep run {previous} already; finish it with "
                              "resume=true or pick another folder")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    except BaseException:
        held.release()
        raise
    atexit.register(held.cancel_jobs)
    return held


def hold_finished(path: Path) -> Claim:
    """A sweep folder to publish, held non-blocking for the publish (the lock its sweep holds while it runs):
    ConfigError "sweep in progress (pid ...)" while the sweep runs. A folder not on this machine: nothing to hold."""
    if not path.is_dir():
        return Claim(path, None)
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDONLY) if (path / LOCK_FILE).exists() else os.open(
            path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return Claim(path, None)  # an unreadable lock file: the run's status still says whether it runs
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(f"sweep in progress ({holder(path)}) in {path}: its own end publishes it; wait for it") from None
    return Claim(path, fd)


def write_store(path: Path, tracking_uri: str, experiment: str) -> None:
    """`<folder>/mlflow.json`: the store this sweep writes (a relative SQLite path made absolute)."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).is_absolute():
        tracking_uri = f"sqlite:///{Path(tracking_uri[len('sqlite:///'):]).resolve()}"
    (path / STORE_FILE).write_text(json.dumps({"tracking_uri": tracking_uri, "experiment": experiment}, indent=1) + "\n")


def read_store(path: Path) -> tuple[str | None, str | None]:
    """The tracking URI and experiment a sweep folder names, (None, None) without a readable mlflow.json."""
    try:
        data = json.loads((path / STORE_FILE).read_text())
    except (OSError, ValueError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    uri, exp = data.get("tracking_uri"), data.get("experiment")
    return (uri if isinstance(uri, str) else None), (exp if isinstance(exp, str) else None)


# --------------------------------------------------------------------------- a sweep's cell set

def _measures(override: str) -> bool:
    """Whether an override changes what the sweep's cells measure (identity.measures of its key)."""
    return measures(override.split("=", 1)[0])


def cells_digest(jobs: Sequence[Sequence[str]]) -> str:
    """The cell set of a sweep: every job's overrides (sorted) that change a measurement, the jobs sorted."""
    cells = sorted(json.dumps(sorted(o for o in job if _measures(o))) for job in jobs)
    return hashlib.sha256(json.dumps(cells).encode()).hexdigest()[:20]


# --------------------------------------------------------------------------- resume without hydra.sweep.dir

@dataclass
class Unfinished:
    sweep_dir: str
    run_id: str
    done: int
    cells: int


def _ok(run: Any) -> bool:
    """A cell that resume would take (measured or copied): FINISHED and ok."""
    return bool(run.info.status == "FINISHED" and run.data.tags.get("cell_status") == "ok")


def _children(client: Any, experiment_id: str, parent_id: str) -> list[Any]:
    """The cell runs of one sweep run."""
    runs = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=5000)
    return [r for r in runs if r.data.tags.get(ROLE_TAG, "cell") == "cell"]


def find_unfinished(client: Any, experiment_id: str, digest: str, code_version: str) -> Unfinished | None:
    """The newest sweep folder whose latest sweep run has this cell set and is unfinished (not FINISHED, or
    fewer ok cells than cells_expected). `done`: the distinct cells of that folder finished ok by this code."""
    sweeps = client.search_runs([experiment_id], f"tags.`{ROLE_TAG}` = 'sweep'",
                                order_by=["attributes.start_time DESC"], max_results=5000)
    by_dir: dict[str, list[Any]] = {}
    for r in sweeps:
        by_dir.setdefault(r.data.tags.get(DIR_TAG, ""), []).append(r)
    for folder, runs in by_dir.items():  # newest folder first (dicts keep insertion order)
        latest = runs[0]
        if not folder or latest.data.tags.get(DIGEST_TAG) != digest:
            continue
        n = int(latest.data.tags.get("cells_expected", "0") or 0)
        if latest.info.status == "FINISHED" and sum(map(_ok, _children(client, experiment_id, latest.info.run_id))) >= n:
            continue
        done = {c.data.tags.get("cell_key") for p in runs for c in _children(client, experiment_id, p.info.run_id)
                if _ok(c) and c.data.tags.get("code_version") == code_version}
        return Unfinished(folder, latest.info.run_id, min(len(done - {None}), n), n)
    return None


def _hydra_quote(value: str) -> str:
    """A Hydra override value: as it is when plain, else single-quoted with escapes."""
    if re.fullmatch(r"[A-Za-z0-9_./:-]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _resume_requested(args: Sequence[str]) -> bool:
    from omegaconf.nodes import BooleanNode

    values = [a.split("=", 1)[1] for a in args if a.split("=", 1)[0].lstrip("+") == "resume" and "=" in a]
    if not values:
        return False
    try:
        return bool(BooleanNode(values[-1])._value())
    except Exception:  # not a bool: Hydra says so (exit 2)
        return False


def resume_preflight(argv: list[str]) -> list[str]:
    """`-m ... resume=true` without hydra.sweep.dir: the argv that resumes the newest unfinished sweep of the
    same cell set (`hydra.sweep.dir=<its folder>` added), printing one line either way. Anything else (and a
    command Hydra will refuse): argv unchanged."""
    flags = [a for a in argv if a.startswith("-")]
    overrides = [a for a in argv if not a.startswith("-")]
    if not ({"-m", "--multirun"} & set(flags)) or set(flags) - {"-m", "--multirun"} or not _resume_requested(overrides):
        return argv
    if any(a.split("=", 1)[0].lstrip("+") == "hydra.sweep.dir" for a in overrides):
        return argv  # a folder named: the sweep's start checks it
    found = _find_for(overrides)
    if found is None:
        return argv
    uri, unfinished, n = found
    if unfinished is None:
        print(f"resume: no unfinished sweep of these {n} cells in {uri}; starting a new one")
        return argv
    u = unfinished
    print(f"resume: sweep {u.sweep_dir} (run {u.run_id}), {u.done} of {u.cells} cells done")
    return [*argv, f"hydra.sweep.dir={_hydra_quote(u.sweep_dir)}"]


def sweep_preflight(argv: Sequence[str]) -> None:
    """`-m` with a sweep the basic sweeper cannot expand (`interval(...)`) or that has no cells (an empty
    `glob(...)`, `range(0)`): ConfigError (one line) before Hydra starts. The sweep is expanded as the sweep's start
    expands it (`job_overrides`); a command that does not compose is left to Hydra (it says why, exit 2)."""
    from hydra import initialize_config_dir
    from hydra.core.override_parser.types import ValueType
    from hydra.errors import HydraException
    from hydra.types import RunMode

    if not {"-m", "--multirun"} & set(argv):
        return
    overrides = [a for a in argv if not a.startswith("-")]
    with initialize_config_dir(config_dir=str(paths.conf_dir()), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        try:
            cfg = loader.load_configuration("config", overrides, run_mode=RunMode.MULTIRUN)
            parsed = OverridesParser.create(config_loader=loader).parse_overrides(overrides)
        except Exception:
            return
        sweeps = [o for o in parsed if o.is_sweep_override() and not o.key_or_group.startswith("hydra")]
        for o in sweeps:
            if o.value_type == ValueType.INTERVAL_SWEEP:
                raise ConfigError(f"{o.input_line}: interval(...) is for a search sweeper (Optuna, Nevergrad), not a grid; "
                                  f"list the values ({o.key_or_group}=1,2,4), or use range(...) or glob(...)")
        try:
            jobs = job_overrides(cfg)
        except HydraException as err:
            raise ConfigError(f"the sweep cannot be expanded: {one_line(err)}") from None
        if jobs:
            return
        for o in sweeps:
            if not list(o.sweep_string_iterator()):
                options = loader.get_group_options(o.key_or_group) if o.value_type == ValueType.GLOB_CHOICE_SWEEP else []
                valid = f"; {o.key_or_group} choices: {', '.join(options)}" if options else ""
                raise ConfigError(f"{o.input_line}: matches nothing, so the sweep has no cells{valid}")
        raise ConfigError("the sweep has no cells: give each swept setting at least one value")


def job_overrides(config: DictConfig) -> list[list[str]]:
    """The override list of every job of this multirun, expanded as Hydra's basic sweeper does."""
    loader = GlobalHydra.instance().config_loader()
    node = config.hydra.sweeper.get("params")
    params = {} if node is None else OmegaConf.to_container(node, resolve=False)
    assert isinstance(params, dict)
    args = [f"{k!s}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(args)
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def _find_for(overrides: list[str]) -> tuple[str, Unfinished | None, int] | None:
    """Compose the multirun as Hydra will, digest its cells and look in its store; None when it does not
    compose or the store cannot be read (the run itself then reports why)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from . import tracking  # sets MLflow's retry limits before MLflow loads

    conf = paths.conf_dir()
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            loader = GlobalHydra.instance().config_loader()
            cfg = loader.load_configuration("config", overrides, run_mode=RunMode.MULTIRUN)
            jobs = job_overrides(cfg)
            first = loader.load_sweep_config(cfg, jobs[0])
            uri, experiment = str(first.mlflow.tracking_uri), str(first.mlflow.experiment)
    except Exception:
        return None
    local = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
    if local is not None and not local.is_file():
        return uri, None, len(jobs)  # no store yet: nothing to resume (a sweep never creates one elsewhere)
    try:
        client = tracking.MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        found = None if exp is None else find_unfinished(client, exp.experiment_id, cells_digest(jobs),
                                                                   tracking.code_version())
    except Exception:
        return None
    return uri, found, len(jobs)
