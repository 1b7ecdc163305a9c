"""MLflow tracking: one parent run per sweep, one child run per cell, through MlflowClient (no
global active-run state, so a failing cell can never leave the next one nested under it).

The embedded store is SQLite. Two sweeps may write it at once: the schema is created under a file
lock, the database runs in WAL mode, and writes that still meet "database is locked" are retried.
A new store is built in a temporary file beside it and renamed into place, so an interrupt never
leaves a half-migrated store. Every run records the pid and host that opened it, so a later run of
the same sweep can close runs whose process is gone (KILLED) instead of leaving them RUNNING.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from .config import ConfigError, MlflowConfig

# Fail fast on an unreachable server instead of MLflow's minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

import mlflow  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

T = TypeVar("T")
log = logging.getLogger(__name__)
PARENT_TAG = "morphogen.sweep_dir"
ROLE_TAG = "morphogen.role"  # "sweep" | "cell"
PID_TAG, HOST_TAG = "morphogen.pid", "morphogen.host"  # the process that opened a run


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def _retry(fn: Callable[[], T], attempts: int = 12) -> T:
    """Run a store operation, retrying SQLite lock contention with backoff."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as err:  # MlflowException wraps sqlalchemy.OperationalError
            if "locked" not in str(err).lower() or i == attempts - 1:
                raise
            time.sleep(min(2.0, 0.05 * 2**i))
    raise AssertionError("unreachable")


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def shielded() -> Iterator[None]:
    """Ctrl-C / SIGTERM ignored while runs are being ended: a second interrupt cannot leave them RUNNING."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _process_gone(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (ValueError, PermissionError):
        return False
    return False


def _quote(value: str) -> str:
    """A filter-string literal: single quotes, or double quotes for a value that holds one."""
    return f'"{value}"' if "'" in value else f"'{value}'"


@functools.cache
def code_version() -> str:
    """The git commit of this code (+dirty.<digest> with uncommitted changes), else the package version.
    MORPHOGEN_CODE_VERSION, when set, wins: a copy of the tree without current git metadata (a GPU
    machine's) is told which commit it runs."""
    if os.environ.get("MORPHOGEN_CODE_VERSION"):
        return os.environ["MORPHOGEN_CODE_VERSION"]
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        diff = subprocess.run(["git", "-C", str(root), "diff", "HEAD", "--", "morphogen_exp", "conf"],
                              capture_output=True, check=True).stdout
        if diff:
            import hashlib

            head += "+dirty." + hashlib.sha256(diff).hexdigest()[:8]
        return head
    except Exception:
        from importlib.metadata import version

        try:
            return "pkg-" + version("morphogen_exp")
        except Exception:
            return "unknown"


def _is_commit(version: str) -> bool:
    head = version.split("+")[0]
    return len(head) == 40 and all(c in "0123456789abcdef" for c in head)


def _warn_local_artifacts(experiment: str, uri: str, location: str) -> None:
    """A shared server whose experiment keeps artifacts at a local path: other machines cannot open them."""
    if location.startswith(("/", "file:")):
        log.warning("experiment %r on %s stores artifacts at the local path %s: runs from other machines will not open "
                    "in the UI; start the server with --serve-artifacts (new experiments then use mlflow-artifacts:/) "
                    "and pick a new mlflow.experiment", experiment, uri, location)


class Tracker:
    """The MLflow store of one config: checked on construction, before anything compiles."""

    def __init__(self, cfg: MlflowConfig):
        self.cfg = cfg
        self.client: MlflowClient
        self.experiment_id = self._open()

    # --- store set-up ---
    def _open(self) -> str:
        uri = self.cfg.tracking_uri
        db = sqlite_path(uri)
        try:
            if db is not None:
                try:
                    db.parent.mkdir(parents=True, exist_ok=True)
                except OSError as err:
                    raise ConfigError(f"mlflow.tracking_uri {uri!r}: cannot create {db.parent} ({err.strerror}); "
                                      "pick a writable path") from None
                if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
                    raise ConfigError(f"mlflow.tracking_uri {uri!r}: {db} is not writable; pick a writable path")
                with _file_lock(db.with_suffix(db.suffix + ".lock")):  # one process creates the schema
                    if not db.exists():
                        self._create_store(db)
                    self.client = MlflowClient(tracking_uri=uri)
                    exp_id = self._get_or_create_experiment(artifacts=db.parent / "mlartifacts")
                    with sqlite3.connect(db, timeout=30) as con:  # WAL: readers never block the writer
                        con.execute("PRAGMA journal_mode=WAL")
                return exp_id
            self.client = MlflowClient(tracking_uri=uri)
            exp_id = self._get_or_create_experiment(artifacts=None)  # a server picks it: mlflow-artifacts:/ when it serves them
            if uri.startswith(("http://", "https://")):
                _warn_local_artifacts(self.cfg.experiment, uri, self.client.get_experiment(exp_id).artifact_location)
            return exp_id
        except ConfigError:
            raise
        except Exception as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            if db is not None and "_alembic_tmp" in str(err):
                raise ConfigError(f"mlflow.tracking_uri {uri!r}: {db} was left half-created by an interrupted run; "
                                  f"move it away (mv {db} {db}.broken) and run again") from None
            raise ConfigError(f"mlflow.tracking_uri {uri!r} cannot be used: {first}") from None

    @staticmethod
    def _create_store(db: Path) -> None:
        """Build the schema in a temporary file beside `db`, then rename it into place (atomic)."""
        tmp = db.with_name(f".{db.name}.creating-{os.getpid()}-{uuid.uuid4().hex[:8]}")  # unique: MLflow caches engines by URI
        try:
            MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments(max_results=1)  # runs the migrations
            os.replace(tmp, db)
        finally:
            tmp.unlink(missing_ok=True)

    def _get_or_create_experiment(self, artifacts: Path | None) -> str:
        exp = self.client.get_experiment_by_name(self.cfg.experiment)
        if exp is not None:
            return exp.experiment_id
        loc = artifacts.resolve().as_uri() if artifacts is not None else None
        # A training-style experiment: MLflow 3's UI then opens it on its runs table, not the GenAI overview.
        return self.client.create_experiment(self.cfg.experiment, artifact_location=loc,
                                             tags={"mlflow.experimentKind": "custom_model_development"})

    # --- runs ---
    def start_run(self, name: str, tags: Mapping[str, Any], parent_id: str | None = None) -> str:
        version = code_version()
        source = {"mlflow.source.name": "python -m morphogen_exp", "mlflow.source.type": "LOCAL",
                  **({"mlflow.source.git.commit": version.split("+")[0]} if _is_commit(version) else {})}
        tags = {**source, **tags, PID_TAG: os.getpid(), HOST_TAG: socket.gethostname()}
        tags = {k: str(v) for k, v in tags.items()}
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        run = _retry(lambda: self.client.create_run(self.experiment_id, run_name=name, tags=tags))
        return run.info.run_id

    def log(self, run_id: str, *, params: Mapping[str, Any] = {}, metrics: Mapping[str, float] = {}, tags: Mapping[str, Any] = {}) -> None:
        now = int(time.time() * 1000)
        p = [Param(k, str(v)[:6000]) for k, v in params.items()]
        m = [Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None]
        t = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        for i in range(0, max(len(p), len(m), len(t), 1), 100):  # MLflow's batch limits
            mi, pi, ti = m[i : i + 100], p[i : i + 100], t[i : i + 100]
            _retry(lambda: self.client.log_batch(run_id, metrics=mi, params=pi, tags=ti))  # noqa: B023 (called at once)

    def log_dataset(self, run_id: str, name: str, digest: str, source: str, profile: Mapping[str, Any]) -> None:
        """The cell's database as an MLflow dataset input (the UI's Datasets column)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        ds = Dataset(name=name, digest=digest[:36], source_type="local" if source.startswith("/") else "code",
                     source=source, schema=json.dumps({"page_bytes": 4096}), profile=json.dumps(dict(profile)))
        inp = DatasetInput(ds, tags=[InputTag("mlflow.data.context", "benchmark")])
        for attempt in range(3):  # two cells may register the same dataset at once: the loser finds it next time
            try:
                _retry(lambda: self.client.log_inputs(run_id, datasets=[inp]))
                return
            except Exception as err:  # the input is a convenience for the UI: it never fails a cell
                if attempt == 2:
                    log.warning("dataset input not logged to run %s: %s", run_id, str(err).splitlines()[0][:200])
                time.sleep(0.2 * (attempt + 1))

    def log_series(self, run_id: str, key: str, values: list[float]) -> None:
        now = int(time.time() * 1000)
        _retry(lambda: self.client.log_batch(run_id, metrics=[Metric(key, float(v), now, s) for s, v in enumerate(values)]))

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        _retry(lambda: self.client.log_text(run_id, text, artifact_file))

    def log_file(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        _retry(lambda: self.client.log_artifact(run_id, str(path), artifact_path))

    def end(self, run_id: str, status: str) -> None:
        _retry(lambda: self.client.set_terminated(run_id, status=status))

    # --- queries ---
    def find_parent(self, sweep_dir: str) -> str | None:
        runs = _retry(lambda: self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{ROLE_TAG}` = 'sweep' and tags.`{PARENT_TAG}` = {_quote(sweep_dir)}",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        ))
        return runs[0].info.run_id if runs else None

    def close_stale(self, sweep_dir: str, wait_s: float = 0.0) -> list[str]:
        """End RUNNING runs of this sweep dir whose process is gone (same host, pid dead) as KILLED.
        Runs of live processes or of other hosts are left alone. Returns the closed run ids."""
        host = socket.gethostname()
        runs = _retry(lambda: self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = {_quote(sweep_dir)} and attributes.status = 'RUNNING'",
            max_results=5000,
        ))
        mine = [r for r in runs if r.data.tags.get(HOST_TAG) == host and PID_TAG in r.data.tags]
        deadline = time.monotonic() + wait_s
        while any(not _process_gone(r.data.tags[PID_TAG]) for r in mine) and time.monotonic() < deadline:
            time.sleep(0.2)  # workers of an interrupted launcher may still be exiting
        closed = []
        for r in mine:
            if _process_gone(r.data.tags[PID_TAG]):
                if r.data.tags.get(ROLE_TAG) == "cell" and not r.data.tags.get("cell_status"):
                    self.log(r.info.run_id, tags={"cell_status": "killed"})
                self.end(r.info.run_id, "KILLED")
                closed.append(r.info.run_id)
        return closed

    def children(self, parent_id: str) -> list[mlflow.entities.Run]:
        return _retry(lambda: self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=5000
        ))

    def sweep_runs(self, sweep_dir: str) -> list[mlflow.entities.Run]:
        """Every sweep (parent) run of this folder, newest first (compared here: a folder name may hold quotes)."""
        runs = _retry(lambda: self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'sweep'",
            order_by=["attributes.start_time DESC"], max_results=50000,
        ))
        return [r for r in runs if r.data.tags.get(PARENT_TAG) == sweep_dir]

    def finished_cell(self, cell_key: str, sweep_dir: str, exclude_parent: str | None = None) -> mlflow.entities.Run | None:
        """A FINISHED, ok cell with the same identity (config, code, dataset, device) recorded by an earlier sweep
        run of this same folder: never a single-run cell, a rollout trial or another sweep's cell."""
        parents = {r.info.run_id for r in self.sweep_runs(sweep_dir)} - {exclude_parent}
        if not parents:
            return None
        runs = _retry(lambda: self.client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.`{ROLE_TAG}` = 'cell' and tags.cell_key = {_quote(cell_key)} "
                "and attributes.status = 'FINISHED' and tags.cell_status = 'ok'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=5000,
        ))
        for r in runs:
            if r.data.tags.get("mlflow.parentRunId") in parents and r.data.tags.get(PARENT_TAG) == sweep_dir:
                return r
        return None


# --------------------------------------------------------------------------- what the MLflow UI shows of a cell

def knob_text(knobs: Mapping[str, Any], prefix: str = "") -> str:
    """A strategy's knobs (nested as in its config) as `tile=8,chunk=2`, in key order."""
    parts = []
    for k, v in sorted(knobs.items()):
        if isinstance(v, Mapping):
            parts.append(knob_text(v, f"{prefix}{k}."))
        elif v is not None:  # an unset knob (its default decides): not part of the name
            parts.append(f"{prefix}{k}={v}")
    return ",".join(p for p in parts if p)


def cell_run_name(strategy: str, q: int, knobs: Mapping[str, Any]) -> str:
    """A cell run's name in the runs table: the strategy with its knobs and q, e.g. `tiled[tile=8]-q16`."""
    text = knob_text(knobs)
    return f"{strategy}[{text}]-q{q}" if text else f"{strategy}-q{q}"


def _with_interval(m: Mapping[str, float], key: str, spec: str) -> str | None:
    v = m.get(key)
    if v is None:
        return None
    lo, hi = m.get(f"{key}_lo"), m.get(f"{key}_hi")
    return f"{v:{spec}}" + (f" [{lo:{spec}}, {hi:{spec}}]" if lo is not None and hi is not None else "")


def _parity_text(m: Mapping[str, float]) -> str:
    def check(name: str) -> str:
        if m.get(f"parity_{name}_checked") == 0 or f"parity_{name}_eq" not in m:
            return f"{name} not checked"
        return f"{name} {'ok' if m[f'parity_{name}_eq'] == 1 else 'BAD'}"

    if "parity_ok" not in m:
        return "parity not recorded"
    head = "batch == single-query loop bit for bit" if m["parity_ok"] == 1 else "batch != single-query loop (MISMATCH)"
    return f"parity: {head}; {check('numpy')}, {check('xor')}"


def cell_description(name: str, q: int, where: str, status: str = "running", metrics: Mapping[str, float] | None = None,
                     error: str = "") -> str:
    """A cell run's description (`mlflow.note.content`, shown on the run's page and as the table's Description):
    the configuration with its knobs, q, where it ran, and its result with intervals and parity."""
    head = f"{name} (q={q} queries per batch) on {where}."
    if status != "ok" or metrics is None:
        return f"{head} Status: {status.replace('_', ' ')}{(': ' + error[:500]) if error else ''}."
    qps = _with_interval(metrics, "batch_qps", ".4g")
    ms = _with_interval(metrics, "batch_ms_per_batch", ".4g")
    speedup = _with_interval(metrics, "batch_vs_single_speedup", ".3g")
    result = "; ".join(p for p in (qps and f"{qps} queries/s", ms and f"{ms} ms per batch",
                                   speedup and f"x{speedup} over the single-query loop") if p)
    return f"{head} Result (median [confidence interval]): {result or 'not recorded'}. {_parity_text(metrics)}."
