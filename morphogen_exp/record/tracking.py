"""MLflow tracking: one parent run per sweep, one child run per cell, through MlflowClient (no
global active-run state, so a failing cell can never leave the next one nested under it).

The embedded store is SQLite. Two sweeps may write it at once: the schema is created under a file
lock, the database runs in WAL mode, and writes that still meet "database is locked" are retried.
A new store is built in a temporary file beside it and renamed into place, so an interrupt never
leaves a half-migrated store. Every run records the pid and host that opened it, so a later run of
the same sweep can close runs whose process is gone (KILLED) instead of leaving them RUNNING.

A tracking server that stops answering is retried for $MORPHOGEN_MLFLOW_WAIT_S seconds, then the store is lost
(`StoreLost`, one line); so is a full disk under an SQLite store, which keeps a little space set aside to end its
runs. A basic-auth server's refusals (wrong credentials, no write permission) are one line before any cell runs.

Reading a sweep for its report (`read_sweep`: cells, rules, finals) and recording a published report (`publish`)
live here too: report.py only renders.
"""

from __future__ import annotations

import fcntl
import functools
import itertools
import json
import logging
import os
import re
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from .. import paths
from ..config import ConfigError, MlflowConfig, first_line
from ..decide import rollout
from ..decide.decision import DecisionRules, Final, mapping_from_params, with_assignments
from ..fields import DERIVED, FINAL_ROLE, FLOOR_MARK, HOST_TAG, NOT_APPLICABLE, PARENT_TAG, PATH_METRICS, PID_TAG, ROLE_TAG
from ..identity import config_id, config_labels

# Fail fast on an unreachable server instead of MLflow's minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

import mlflow  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

# MLflow logs each SQLite error with its traceback before raising it; `_retry` handles them all (lock contention
# retried, a full disk one line), so its log would only print tracebacks above that line.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

T = TypeVar("T")
log = logging.getLogger(__name__)
_RUN_ID = re.compile(r"[0-9a-f]{32}")


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


WAIT_ENV = "MORPHOGEN_MLFLOW_WAIT_S"  # how long a lost tracking server is waited for, in seconds
DEFAULT_WAIT_S = 300.0
# A server that is down, restarting or behind a failing proxy (MLflow's own HTTP retries are off: see above).
_UNREACHABLE = ("connection refused", "max retries exceeded", "failed to establish a new connection", "connection aborted",
                "remotedisconnected", "read timed out", "connection reset", "error code 502", "error code 503",
                "error code 504")
_DISK_FULL = ("database or disk is full", "no space left on device")


class StoreLost(ConfigError):
    """The store cannot be written: its server stayed unreachable past the wait, or its disk is full. What was
    recorded stays; the same command with resume=true finishes the sweep once the store is back."""


_lost: str | None = None  # this process's store loss: later writes fail at once instead of waiting again
_reserves: set[Path] = set()  # space set aside beside SQLite stores, freed to close runs on a full disk


def wait_s() -> float:
    """How long a lost tracking server is retried ($MORPHOGEN_MLFLOW_WAIT_S, default 300 s)."""
    try:
        return max(0.0, float(os.environ.get(WAIT_ENV, DEFAULT_WAIT_S)))
    except ValueError:
        return DEFAULT_WAIT_S


def _retry(fn: Callable[[], T], attempts: int = 12, closing: bool = False) -> T:
    """Run a store operation: SQLite lock contention retried with backoff; a server that does not answer retried
    for `wait_s()`; then, or on a full disk, StoreLost (one line), and this process's later operations fail at
    once. `closing` (ending runs): tried once even after a loss, on a full disk with the space set aside freed."""
    global _lost
    if _lost is not None and not closing:
        raise StoreLost(_lost)
    deadline: float | None = None
    for i in itertools.count():
        try:
            return fn()
        except Exception as err:  # MlflowException wraps sqlalchemy.OperationalError and requests' errors
            text = str(err).lower()
            if "locked" in text and i < attempts - 1:
                time.sleep(min(2.0, 0.05 * 2**i))
                continue
            if any(s in text for s in _DISK_FULL):
                for reserve in list(_reserves):
                    reserve.unlink(missing_ok=True)  # room to end the runs FAILED/KILLED
                    _reserves.discard(reserve)
                _lost = (f"the disk of the MLflow store is full ({first_line(err, 200)}); free space, then finish the sweep "
                         "with the same command and resume=true")
                raise StoreLost(_lost) from None
            if any(s in text for s in _UNREACHABLE):
                if _lost is not None:  # a run being ended after the loss: one try
                    raise StoreLost(_lost) from None
                now = time.monotonic()
                if deadline is None:
                    deadline = now + wait_s()
                    log.warning("tracking server not answering (%s); retrying for up to %.0f s", first_line(err, 200), wait_s())
                if now < deadline:
                    time.sleep(min(5.0, 0.5 * 2 ** min(i, 4), max(0.0, deadline - now)))
                    continue
                _lost = (f"the tracking server did not answer for {wait_s():.0f} s ({first_line(err, 200)}); start it again, "
                         f"then finish the sweep with the same command and resume=true ({WAIT_ENV} sets the wait)")
                raise StoreLost(_lost) from None
            raise
    raise AssertionError("unreachable")


def _reserve_space(db: Path, size: int = 4 << 20) -> None:
    """Set `size` bytes aside beside an SQLite store (once per process), freed on a full disk so that the runs
    can still be ended instead of left RUNNING. Best effort: a disk already full gets none."""
    path = db.with_name(f".{db.name}.reserve")
    try:
        if not path.exists() or path.stat().st_size < size:
            with open(path, "wb") as fh:
                fh.write(b"\0" * size)
                fh.flush()
                os.fsync(fh.fileno())
        _reserves.add(path)
    except OSError:
        path.unlink(missing_ok=True)


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


def process_gone(pid: str | int) -> bool:
    """No live process `pid` on this host: none, or a zombie (dead, not yet reaped: a killed worker whose launcher
    died too waits for init). A pid we may not signal counts as alive."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (ValueError, PermissionError):
        return False
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except OSError:
        return False  # no /proc (not Linux): signalled fine, so alive
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]


def _quote(value: str) -> str:
    """A filter-string literal: single quotes, or double quotes for a value that holds one."""
    return f'"{value}"' if "'" in value else f"'{value}'"


@functools.cache
def code_version() -> str:
    """The git commit of this code (+dirty.<digest> with uncommitted changes); installed from a wheel, the commit
    its build stamped (setup.py writes morphogen_exp/BUILD_COMMIT); else the package version. MORPHOGEN_CODE_VERSION,
    when set, wins: a copy of the tree without current git metadata (a GPU machine's) is told which commit it runs."""
    if os.environ.get("MORPHOGEN_CODE_VERSION"):
        return os.environ["MORPHOGEN_CODE_VERSION"]
    root = paths.checkout()
    try:
        if root is None:  # installed from a wheel: a git repository around the venv is not this code's
            stamp = paths.PACKAGE / "BUILD_COMMIT"
            built = stamp.read_text().strip() if stamp.is_file() else ""
            if built:
                return built
            raise LookupError("no checkout")
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


def code_difference(here: str, there: str) -> str | None:
    """What differs between two code_version()s, said precisely (None: the same code): another commit, or the same
    commit with other uncommitted edits to morphogen_exp/ or conf/ (untracked files and other folders never count)."""
    if here == there:
        return None
    (head, _, dirty), (other, _, other_dirty) = here.partition("+"), there.partition("+")
    if head != other:
        return f"code: commit {here} here, {there} in the sweep"

    def tree(d: str) -> str:
        return f"uncommitted edits {d.removeprefix('dirty.')}" if d else "no uncommitted edits"
    return (f"code: the same commit {head[:12]}, other uncommitted edits to morphogen_exp/ or conf/ "
            f"({tree(dirty)} here, {tree(other_dirty)} in the sweep)")


def _is_commit(version: str) -> bool:
    head = version.split("+")[0]
    return len(head) == 40 and all(c in "0123456789abcdef" for c in head)


def access_error(err: Exception, uri: str, experiment: str) -> str | None:
    """What to fix when a tracking server refused this client (basic auth): wrong or missing credentials, or no
    write permission on the experiment; None for any other error. Never repeats a credential."""
    code = getattr(err, "error_code", "")
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if code == "UNAUTHENTICATED":
        return (f"mlflow.tracking_uri {uri!r} refused the credentials{f' of user {user!r}' if user else ' (none given)'}: "
                "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account of that server")
    if code == "PERMISSION_DENIED":
        return (f"mlflow.tracking_uri {uri!r}: user {user or '(anonymous)'!r} may not write to experiment {experiment!r}; "
                "ask its owner for EDIT on it, or pick another mlflow.experiment")
    return None


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
                _reserve_space(db)
                return exp_id
            self.client = MlflowClient(tracking_uri=uri)
            exp_id = self._get_or_create_experiment(artifacts=None)  # a server picks it: mlflow-artifacts:/ when it serves them
            if uri.startswith(("http://", "https://")):
                _warn_local_artifacts(self.cfg.experiment, uri, self.client.get_experiment(exp_id).artifact_location)
            return exp_id
        except ConfigError:
            raise
        except Exception as err:
            denied = access_error(err, uri, self.cfg.experiment)
            if denied:
                raise ConfigError(denied) from None
            first = first_line(err)
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
        try:
            run = _retry(lambda: self.client.create_run(self.experiment_id, run_name=name, tags=tags))
        except Exception as err:  # the first write of a sweep or a run: a read-only user learns it here
            denied = access_error(err, self.cfg.tracking_uri, self.cfg.experiment)
            if denied:
                raise ConfigError(denied) from None
            raise
        return run.info.run_id

    def log(self, run_id: str, *, params: Mapping[str, Any] = {}, metrics: Mapping[str, float] = {}, tags: Mapping[str, Any] = {},
            step: int = 0) -> None:
        """Params, tags and metrics (each metric at ``step``) in as few batches as MLflow's limits allow."""
        now = int(time.time() * 1000)
        p = [Param(k, str(v)[:6000]) for k, v in params.items()]
        m = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
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
                    log.warning("dataset input not logged to run %s: %s", run_id, first_line(err, 200))
                time.sleep(0.2 * (attempt + 1))

    def log_series(self, run_id: str, key: str, values: list[float]) -> None:
        now = int(time.time() * 1000)
        _retry(lambda: self.client.log_batch(run_id, metrics=[Metric(key, float(v), now, s) for s, v in enumerate(values)]))

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        _retry(lambda: self.client.log_text(run_id, text, artifact_file))

    def log_file(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        _retry(lambda: self.client.log_artifact(run_id, str(path), artifact_path))

    def end(self, run_id: str, status: str) -> None:
        _retry(lambda: self.client.set_terminated(run_id, status=status), closing=True)

    # --- queries ---
    def get_run(self, run_id: str) -> mlflow.entities.Run:
        return _retry(lambda: self.client.get_run(run_id))

    def find_parent(self, sweep_dir: str) -> str | None:
        runs = _retry(lambda: self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{ROLE_TAG}` = 'sweep' and tags.`{PARENT_TAG}` = {_quote(sweep_dir)}",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        ))
        return runs[0].info.run_id if runs else None

    def close_stale(self, sweep_dir: str, wait_s: float = 0.0) -> list[str]:
        """`close_stale` on this store."""
        return close_stale(self, sweep_dir, wait_s)

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


# --------------------------------------------------------------------------- reading a sweep (what a report renders)

# The metrics a cell row carries, beside the original's columns.
_OTHER_METRICS = ["parity_numpy_checked", "parity_xor_checked", "single_ms_p90", "batch_ms_p90", "batch_ms_min", "batch_ms_max",
                  "compile_s", "batch_effective_gbps", "memory_estimate_gib", "database_gib", "scan_keys"]


def _int_or(v: Any, default: int) -> int:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return default


def _flag(m: Mapping[str, float], key: str) -> int | None:
    return None if key not in m else int(m[key])


def _knob(params: Mapping[str, Any], key: str) -> int | str:
    """A strategy knob for the original's columns: its value, or "-" where the strategy has no such knob."""
    return _int_or(params[key], 0) if key in params else NOT_APPLICABLE


def cell_row(run: Any) -> dict[str, Any]:
    """One cell run as a row: the original's columns, then ours (intervals, noise, configuration)."""
    t, m, p = run.data.tags, run.data.metrics, run.data.params
    status = t.get("cell_status") or {"FINISHED": "ok", "RUNNING": "running"}.get(run.info.status, run.info.status.lower())
    if run.info.status == "KILLED" or died(run):
        status = "killed"
    env = {k.split(".")[-1]: v for k, v in p.items() if k.startswith("strategy.guard_env.")}
    q = _int_or(t.get("q", p.get("q", m.get("q"))), 0)
    # Old runs lack the tag; one that failed before logging params is identified by its tags.
    cid = t.get("config_id") or config_id(p or {f"{k}.name": t.get(k) for k in ("strategy", "engine", "dataset")})
    row: dict[str, Any] = {
        "strategy": t.get("original_strategy", p.get("strategy.original", t.get("strategy"))),
        "policy": env.get("MORPHOGEN_GPU_BATCH_POLICY", "latency"),
        "adaptive_threshold": _knob(p, "strategy.threshold"),
        "gpu_streams": _int_or(env.get("MORPHOGEN_GPU_STREAMS"), 1),
        "gpu_cuda_graph": int(str(env.get("MORPHOGEN_GPU_CUDA_GRAPH", "False")).lower() == "true"),
        "gpu_batch_tile_size": _knob(p, "strategy.tile"),
        "q": q,
        "checksum_single": t.get("checksum_single"),
        "checksum_batch": t.get("checksum_batch"),
        "checksum_match": _flag(m, "checksum_match"),
        "config_id": cid,
        "cell_key": t.get("cell_key") or f"{cid}-q{q}",
        "our_strategy": t.get("strategy", p.get("strategy.name")),
        "engine": t.get("engine", p.get("engine.name")),
        "dataset": t.get("dataset", p.get("dataset.name")),
        "dataset_fingerprint": t.get("dataset.fingerprint"),
        "device_kind": t.get("device_kind"),
        "device_uuid": t.get("device.device_uuid"),
        "engine_path": t.get("engine_path.batch"),  # what the batch path's scan step ran (engines of several paths)
        "database_layout": t.get("database_layout"),  # raw pages, or the engine's own layout
        "status": status,
        "parity_ok": _flag(m, "parity_ok"),
        "parity_numpy_eq": _flag(m, "parity_numpy_eq"),
        "parity_xor_eq": _flag(m, "parity_xor_eq"),
        "max_noise": rollout.typed(p["bench.max_noise"]) if "bench.max_noise" in p else None,
        "confidence": m.get("confidence", rollout.typed(p["bench.confidence"]) if "bench.confidence" in p else None),
        "speedup_pairs": m.get("speedup_pairs"),
        "error_message": t.get("error_message", ""),
        "run_id": run.info.run_id,
        "_name": run.info.run_name,
        "_start": run.info.start_time or 0,
        "_params": p,
        "_info": {k[len("strategy_info."):]: v for k, v in t.items() if k.startswith("strategy_info.")},
        "_tags": t,
    }
    for col in [*DERIVED, *(f"{d}_{b}" for d in DERIVED for b in ("lo", "hi")), *PATH_METRICS, *_OTHER_METRICS]:
        row[col] = m.get(col)
    return row


def _with_floors(df: pd.DataFrame, runs: Sequence[Any]) -> pd.DataFrame:
    """The cells' floor metrics (`*_floor_*`, recorded where bench.floors probed) as columns of df, each one only
    where some cell has it (no column of NaN for a sweep that probed nothing)."""
    metrics = {r.info.run_id: r.data.metrics for r in runs}
    names = sorted({k for run_id in df["run_id"] for k in metrics.get(run_id, {}) if FLOOR_MARK in k})
    return df.assign(**{k: [metrics.get(run_id, {}).get(k) for run_id in df["run_id"]] for k in names})


def cells_frame(runs: Sequence[Any]) -> pd.DataFrame:
    """One row per cell (the newest run of each cell_key), labelled by configuration, with the floor columns
    some cell recorded."""
    cells = [r for r in runs if r.data.tags.get(ROLE_TAG, "cell") == "cell"]  # never a final or a trial
    rows = sorted((cell_row(r) for r in cells), key=lambda r: -r["_start"])
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df = _with_floors(df.drop_duplicates("cell_key", keep="first"), cells)  # a re-run or resumed cell: the newest counts
    configs = {r["config_id"]: (str(r["our_strategy"]), r["_params"]) for r in df.to_dict("records")}
    labels = config_labels(configs)
    df["config"] = df["config_id"].map(labels)
    return df.sort_values(["config", "q"]).reset_index(drop=True)


def load_rules(client: Any, parent: Any, overrides: Sequence[str] = ()) -> DecisionRules:
    """The sweep's rules (decision.json, else `decision.*` params) with --rule overrides, validated."""
    run_id = parent.info.run_id
    raw: Any
    if any(a.path == "decision.json" for a in client.list_artifacts(run_id)):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                raw = json.loads(Path(client.download_artifacts(run_id, "decision.json", tmp)).read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ConfigError(f"sweep run {run_id}: its decision.json is not JSON ({err}); "
                                  "rebuild with --rule NAME=VALUE for each rule, or fix the artifact") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"sweep run {run_id}: decision.json is not a mapping")
    else:
        raw = mapping_from_params(parent.data.params)
    raw = with_assignments(raw, overrides)
    try:
        return DecisionRules.from_mapping(raw)
    except ConfigError as err:
        raise ConfigError(f"sweep run {run_id}: {err} (override it: --rule NAME=VALUE)") from None


def read_finals(client: Any, runs: Sequence[Any], df: pd.DataFrame) -> tuple[list[Final], list[dict[str, Any]]]:
    """The sweep's finished final runs (finals.py) among `runs`: as decision Finals (labels from df) and as
    their raw records (finals.json), newest per q."""
    labels = dict(zip(df["config_id"], df["config"], strict=False)) if not df.empty else {}
    newest: dict[int, Any] = {}
    for r in sorted(runs, key=lambda r: r.info.start_time or 0):
        if r.data.tags.get(ROLE_TAG) == FINAL_ROLE and r.info.status == "FINISHED":
            newest[_int_or(r.data.tags.get("q"), 0)] = r
    finals: list[Final] = []
    records: list[dict[str, Any]] = []
    for q, r in sorted(newest.items()):
        with tempfile.TemporaryDirectory() as tmp:
            rec = json.loads(Path(client.download_artifacts(r.info.run_id, "finals.json", tmp)).read_text())
        records.append(rec)
        inc = labels.get(rec["incumbent"], rec["incumbent"])
        finals += [Final(q, inc, labels.get(c["config_id"], c["config_id"]), c["ratio"], c["lo"], c["hi"], rec["rounds"])
                   for c in rec["challengers"]]
        if not rec["challengers"]:
            finals.append(Final(q, inc, inc, 1.0, 1.0, 1.0, rec["rounds"]))  # re-measured alone: confirms nothing new
    return [f for f in finals if f.challenger != f.incumbent], records


def redact_uri(uri: str) -> str:
    """A store's address without the user:password an http(s) one may carry (`http://bob:pw@host` -> `http://host`):
    what the report, the guard's record and the terminal say. Credentials belong in MLFLOW_TRACKING_USERNAME/PASSWORD."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


@dataclass
class SweepRecord:
    """Everything a report of one sweep reads from MLflow: the sweep run, its child runs, one row per cell
    (`cells_frame`), the decision rules, the finals (as decision Finals and as their raw records)."""

    parent: Any
    runs: list[Any]
    frame: pd.DataFrame
    rules: DecisionRules
    finals: list[Final]
    final_records: list[dict[str, Any]]
    tracking_uri: str
    experiment: str


def read_sweep(store: Any, parent_id: str, rules_override: Sequence[str] = ()) -> SweepRecord:
    """One sweep as recorded (`store` has .client and .experiment_id): never writes."""
    client = store.client
    parent = _retry(lambda: client.get_run(parent_id))
    runs = _retry(lambda: client.search_runs([store.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
                                             max_results=50000))
    if not runs:
        raise ConfigError(f"sweep run {parent_id} has no cell runs: nothing to report")
    rules = load_rules(client, parent, rules_override)
    df = cells_frame(runs)
    finals, records = read_finals(client, runs, df)
    experiment = client.get_experiment(store.experiment_id).name
    return SweepRecord(parent, runs, df, rules, finals, records, redact_uri(client.tracking_uri), experiment)


def died(run: Any) -> bool:
    """A run still RUNNING whose process, on this host, is gone (a killed worker or launcher): what `close_stale`
    will end as KILLED. Runs of other hosts are never judged from here."""
    return bool(run.info.status == "RUNNING" and _of_this_host(run) and process_gone(run.data.tags[PID_TAG]))


def _of_this_host(run: Any) -> bool:
    """The run records a process of this host (its pid can be checked from here)."""
    return run.data.tags.get(HOST_TAG) == socket.gethostname() and PID_TAG in run.data.tags


@dataclass
class Store:
    """An MLflow store opened for reading a sweep (a Tracker has the same two fields)."""

    client: Any
    experiment_id: str


def open_store(uri: str, experiment: str) -> Store:
    """An existing store and experiment, or a ConfigError: a report never creates either."""
    local = local_path(uri)
    if local is not None and not local.exists():
        raise ConfigError(f"--tracking-uri {uri!r}: {local} does not exist (a report never creates a store); "
                          "pass the sweep's mlflow.tracking_uri")
    if local is not None and uri.startswith("sqlite:") and not local.is_file():
        raise ConfigError(f"--tracking-uri {uri!r}: {local} is not an SQLite file")
    try:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
    except Exception as err:
        first = first_line(err, 200)
        raise ConfigError(f"--tracking-uri {uri!r} cannot be read: {first}") from None
    if exp is None:
        raise ConfigError(f"no experiment {experiment!r} at {uri} (pass --experiment)")
    return Store(client, exp.experiment_id)


def local_path(uri: str) -> Path | None:
    """The file or folder a local store URI names (None for a server or a database server)."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    if "://" not in uri and not uri.startswith(("databricks", "postgresql", "mysql", "mssql")):
        return Path(uri)
    return None


def find_sweep(store: Store, sweep_dir: str | None, run_id: str | None) -> str:
    """The sweep run: by id, by its folder (matched exactly, any characters), else the latest."""
    client = store.client
    if run_id:
        if not _RUN_ID.fullmatch(run_id):
            raise ConfigError(f"--parent-run {run_id!r} is not an MLflow run id (32 hex digits)")
        try:
            run = client.get_run(run_id)
        except Exception:
            raise ConfigError(f"no run {run_id} in this store") from None
        if run.info.experiment_id != store.experiment_id or run.data.tags.get(ROLE_TAG) != "sweep":
            raise ConfigError(f"run {run_id} is not a sweep run of this experiment")
        folder = run.data.tags.get(PARENT_TAG, "")
        if sweep_dir is not None and folder not in {sweep_dir, str(Path(sweep_dir).resolve())}:
            raise ConfigError(f"--parent-run {run_id} is the sweep of {folder}, not of --sweep-dir {sweep_dir}: pass one "
                              "of them")
        return run_id
    sweeps = client.search_runs([store.experiment_id], f"tags.`{ROLE_TAG}` = 'sweep'",
                                order_by=["attributes.start_time DESC"], max_results=5000)
    if sweep_dir is not None:  # compared here, not in a filter string: a folder name may hold quotes
        want = {sweep_dir, str(Path(sweep_dir).resolve())}
        sweeps = [r for r in sweeps if r.data.tags.get(PARENT_TAG) in want]
        if not sweeps:
            raise ConfigError(f"no sweep run for {sweep_dir!r} in this store")
    if not sweeps:
        raise ConfigError("no sweep in this store yet")
    return str(sweeps[0].info.run_id)


def publish(store: Any, parent_id: str, files: Sequence[Path], tags: Mapping[str, str], metrics: Mapping[str, float],
            matrix: pd.DataFrame) -> None:
    """Record a sweep's report on its sweep run: `files` under report/, `tags` (its description and decision),
    `metrics` (what the runs table shows of the shipped configuration) and the matrix as a table artifact
    (`matrix.json`, the UI's artifact view and Evaluation tab). A republish replaces the table (log_table alone
    would append to it)."""
    client = store.client
    for path in files:
        _retry(functools.partial(client.log_artifact, parent_id, str(path), "report"))
    for key, value in tags.items():
        _retry(functools.partial(client.set_tag, parent_id, key, value))
    now = int(time.time() * 1000)
    batch = [Metric(k, v, now, 0) for k, v in metrics.items()]
    for i in range(0, len(batch), 1000):
        _retry(functools.partial(client.log_batch, parent_id, metrics=batch[i:i + 1000]))
    table = matrix.astype(object).where(matrix.notna(), None)
    if any(a.path == "matrix.json" for a in client.list_artifacts(parent_id)):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "matrix.json"
            table.to_json(path, orient="split", index=False, date_format="iso")
            client.log_artifact(parent_id, str(path))
    else:
        client.log_table(parent_id, data=table, artifact_file="matrix.json")


def close_stale(store: Any, sweep_dir: str, wait_s: float = 0.0) -> list[str]:
    """End RUNNING runs of this sweep dir whose process is gone (same host, pid dead) as KILLED, a cell's
    `cell_status` then `killed`. Runs of live processes or of other hosts are left alone. `store` has .client
    and .experiment_id. Returns the closed run ids."""
    runs = _retry(lambda: store.client.search_runs(  # the folder compared here: its name may hold both quote kinds
        [store.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=50000,
    ))
    mine = [r for r in runs if r.data.tags.get(PARENT_TAG) == sweep_dir and _of_this_host(r)]
    deadline = time.monotonic() + wait_s
    while any(not process_gone(r.data.tags[PID_TAG]) for r in mine) and time.monotonic() < deadline:
        time.sleep(0.2)  # workers of an interrupted launcher may still be exiting
    closed = []
    for r in mine:
        if died(r):
            run_id = r.info.run_id
            if r.data.tags.get(ROLE_TAG) == "cell" and not r.data.tags.get("cell_status"):
                _retry(functools.partial(store.client.set_tag, run_id, "cell_status", "killed"))
            _retry(functools.partial(store.client.set_terminated, run_id, status="KILLED"), closing=True)
            closed.append(run_id)
    return closed

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
