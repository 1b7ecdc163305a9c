"""The Hydra callback that frames a multirun, whatever launcher runs its cells.

Before any cell: every cell's config is composed and validated (one line naming the bad cells, exit
2, no sweep run created); the sweep folder is held (sweepdir.claim: created exclusively when it is the
default, locked while this process runs, refused when it is another sweep's unless resume=true); stale
runs of the same folder are closed; the parent MLflow run is created with the decision rules
(`decision.json`) and the cell set's digest, and its id is written to `<sweep dir>/parent_run_id`, where
cells in any process find it (the store to `<sweep dir>/mlflow.json`). After the last cell: the outcomes
are read back from MLflow (not from this process's memory), the report is built and published, and the
exit status is decided; the last line says the decision and where the report is."""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shlex
import signal
import socket
import sys
from pathlib import Path
from typing import Any, ClassVar

from hydra.core.global_hydra import GlobalHydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ..config import ConfigError, MlflowConfig, first_line, flatten, one_line
from ..fields import PARENT_TAG, REPORT_ARTIFACT, ROLE_TAG
from ..record import sweepdir, uiview
from ..record.sweepdir import job_overrides
from ..record.tracking import StoreLost, Tracker, code_version, process_gone, redact_uri, shielded
from . import cell as app
from . import session

log = logging.getLogger(__name__)
PARENT_FILE = sweepdir.PARENT_FILE
CELLS_FILE = "cells_expected"


def sweep_ref(sweep_dir: str) -> session.SweepRef:
    """The sweep a cell belongs to, from its folder (written before the first cell, in any process)."""
    d = Path(sweep_dir).resolve()
    f, n = d / PARENT_FILE, d / CELLS_FILE
    cells = int(n.read_text()) if n.exists() and n.read_text().strip().isdigit() else None
    return session.SweepRef(str(d), f.read_text().strip() if f.exists() else None, cells)


def validate_cells(config: DictConfig) -> tuple[int, Any]:
    """Compose and validate every cell; exit 2 with one line naming the bad ones. Returns the
    number of cells and the first cell's validated config."""
    loader = GlobalHydra.instance().config_loader()
    jobs, bad, first = job_overrides(config), [], None
    repeated = sorted({" ".join(j) for j in jobs if sum(sorted(k) == sorted(j) for k in jobs) > 1})
    if repeated:  # q=2,2: two runs of one cell, one row in the report
        print(f"error: the sweep lists a cell more than once ({'; '.join(repeated)}): give each value once", file=sys.stderr)
        sys.exit(2)
    shared = set.intersection(*(set(j) for j in jobs)) if len(jobs) > 1 else set()
    for overrides in jobs:
        label = " ".join(o for o in overrides if o not in shared) or " ".join(overrides)  # what names this cell
        try:
            rc = app.validate(loader.load_sweep_config(config, overrides))
            first = first or rc
        except ConfigError as err:
            bad.append(f"[{label}] {err}")
        except Exception as err:  # a composition error: unknown choice, bad type
            bad.append(f"[{label}] {one_line(err)}")
    if bad:
        print(f"error: {len(bad)} of {len(jobs)} cells have a setting to fix, none ran: {'; '.join(bad)}", file=sys.stderr)
        sys.exit(2)
    return len(jobs), first


PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when the thread that started it exits


def die_with_launcher(launcher_pid: int, launcher_host: str) -> None:
    """In a worker process of the launcher `launcher_pid` (a joblib worker, its direct child): ask the kernel to
    SIGKILL this process when the launcher dies, so a killed launcher leaves no worker measuring queued cells.
    The launcher itself, a worker on another host (SLURM) and non-Linux systems: nothing. A worker whose
    launcher died before this point exits at once."""
    if os.getpid() == launcher_pid or socket.gethostname() != launcher_host or not sys.platform.startswith("linux"):
        return
    if os.getppid() != launcher_pid:  # not its child (a scheduler's job), or the launcher is already gone
        if process_gone(launcher_pid):
            os.kill(os.getpid(), signal.SIGKILL)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("worker %d will not die with its launcher: prctl failed (errno %d)", os.getpid(), ctypes.get_errno())
        return
    if os.getppid() != launcher_pid:  # the launcher died between the check and prctl
        os.kill(os.getpid(), signal.SIGKILL)


def _fatal(hook: str) -> None:
    """Hydra turns a callback's exception into a warning and goes on: a broken sweep start must stop."""
    log.exception("%s failed", hook)
    sys.exit(1)


class SweepCallback(Callback):
    # This process's session, handed over by __main__ before Hydra builds the callback from the config; a class
    # attribute, so it is never pickled to a process launcher's workers (they only run on_job_start).
    sess: ClassVar[session.Session]

    def __init__(self) -> None:
        self._claim: sweepdir.Claim | None = None  # the sweep folder, held from the start to the end
        self._finals = True                           # bench.finals of the sweep's cells
        # The process that launches the cells (this object is pickled to a process launcher's workers).
        self._launcher = (os.getpid(), socket.gethostname())

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Each cell, in the process that runs it: a launcher's worker dies with the launcher."""
        die_with_launcher(*self._launcher)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._start(config)
        except Exception:
            _fatal("sweep start")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._end()
        except StoreLost as err:
            self._store_lost(err)
        except Exception:
            _fatal("sweep end")

    def _store_lost(self, err: StoreLost) -> None:
        """The store went away (a server past its wait, a full disk): the sweep run ends FAILED where the store still
        takes it, and the sweep stops with one line (exit 2); resume=true finishes it."""
        sess = self.sess
        live = getattr(sess, "_progress", None)
        if live is not None:
            live.close()
        if sess.sweep is not None:
            tracker, ref = sess.sweep
            parent = sweep_ref(ref.sweep_dir).parent_id
            if parent:
                with shielded(), contextlib.suppress(Exception):
                    tracker.end(parent, "FAILED")
            sess.sweep = None
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

    def _start(self, config: DictConfig) -> None:
        n_cells, first = validate_cells(config)
        jobs = job_overrides(config)
        try:
            tracker = self.sess.tracker(MlflowConfig(first.mlflow.tracking_uri, first.mlflow.experiment))
            sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()  # the default one is created here, exclusively
            known = tracker.sweep_runs(str(sweep_dir))
            self._claim = sweepdir.claim(sweep_dir, resume=bool(first.resume),
                                         store_parent=known[0].info.run_id if known else None)
            (sweep_dir / PARENT_FILE).write_text("")  # writable before a parent run exists
            (sweep_dir / CELLS_FILE).write_text(f"{n_cells}\n")
            sweepdir.write_store(sweep_dir, tracker.cfg.tracking_uri, tracker.cfg.experiment)
        except ConfigError as err:  # fail before any cell compiles anything
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except OSError as err:
            where = Path(str(config.hydra.sweep.dir)).resolve()
            print(f"error: hydra.sweep.dir {str(where)!r} is not writable ({err.strerror}); pick another", file=sys.stderr)
            sys.exit(2)
        closed = tracker.close_stale(str(sweep_dir))
        if closed:
            log.warning("closed %d stale RUNNING run(s) of %s as KILLED (their process is gone)", len(closed), sweep_dir)
        overrides = list(config.hydra.overrides.task)
        try:
            parent = tracker.start_run(
                f"sweep {sweep_dir.name}",
                {ROLE_TAG: "sweep", PARENT_TAG: str(sweep_dir), "overrides": " ".join(overrides),
                 "cells_expected": n_cells, sweepdir.DIGEST_TAG: sweepdir.cells_digest(jobs),
                 "code_version": code_version(), **app.device_tags()},
            )
        except ConfigError as err:  # the server refused the first write (no permission on the experiment)
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        try:
            self._finals = bool(first.bench.finals)
            decision = dict(first.decision)
            tracker.log(parent, params={f"decision.{k}": v for k, v in flatten(decision).items()})
            tracker.log_text(parent, json.dumps(decision, indent=1), "decision.json")
            (sweep_dir / PARENT_FILE).write_text(parent + "\n")
        except BaseException:
            with shielded():
                tracker.end(parent, "FAILED")
            raise
        self.sess.sweep = (tracker, session.SweepRef(str(sweep_dir), parent))
        log.info("sweep run %s in %s: %d cells", parent, tracker.cfg.tracking_uri, n_cells)

    def _end(self) -> None:
        from ..decide import report

        sess = self.sess
        if sess.sweep is None:
            return
        tracker, ref = sess.sweep
        parent = sweep_ref(ref.sweep_dir).parent_id or tracker.find_parent(ref.sweep_dir)
        assert parent is not None
        problems, code = outcome_problems(tracker, parent)
        if self._finals:
            run_finals(tracker, parent, sess)
        live = getattr(sess, "_progress", None)  # this process's status line: cleared, the last lines are the decision
        if live is not None:
            live.close()
        closing: list[str] = []  # printed once the sweep run has ended (an http store's "View run" line comes before)
        try:
            files = report.build(tracker, parent, Path(ref.sweep_dir), publish=True)
            closing = [files.table, "",
                       f"review: {review_hint(tracker.cfg.tracking_uri, tracker.experiment_id, report_of=parent)}",
                       f"decision: {files.decision.headline()} — report: {files.markdown}"]
        except StoreLost:
            raise
        except Exception as err:  # the cells are recorded; a report bug must not hide them
            problems.append(f"report: {type(err).__name__}: {err}")
            code = max(code, 1)
            log.exception("report failed")
        tracker.end(parent, "FAILED" if problems else "FINISHED")
        sess.sweep = None
        if self._claim is not None:
            self._claim.release()
        sys.stderr.flush()
        for line in closing:
            print(line)
        sys.stdout.flush()
        if problems:
            print(f"{len(problems)} cell(s) failed:", file=sys.stderr)
            for line in problems:
                print(f"  {line}", file=sys.stderr)
            sys.exit(code)


def run_finals(tracker: Tracker, parent: str, sess: session.Session) -> None:
    """The finals (finals.py) on this process's device, holding it as a cell does; a failure leaves the decision
    to the cells and is said in one line."""
    from ..measure import devlock
    from . import finals

    try:
        with devlock.hold("the finals"):
            finals.run(tracker, parent, sess)
    except Exception as err:
        log.warning("finals not run: %s: %s", type(err).__name__, first_line(err))


def review_hint(tracking_uri: str, experiment_id: str, view: bool = False, report_of: str | None = None) -> str:
    """Where to look at a sweep: the runs table (MLflow 3 may open a bare experiment address on its GenAI view), with
    `view` the experiment's saved view of the matrix (uiview), with `report_of` (a published sweep's run id) its
    rendered report, the decision with no click (the report links the saved view). A server is opened at its own
    address (any user:password in it left out), a local store through `mlflow ui` (the store shell-quoted)."""
    server = tracking_uri.startswith(("http://", "https://"))
    base = redact_uri(tracking_uri).rstrip("/") if server else "http://127.0.0.1:5000"
    if report_of is not None:
        url = f"{base}/#/experiments/{experiment_id}/runs/{report_of}/artifacts/{REPORT_ARTIFACT}"
    elif view:
        url = uiview.runs_url(base, experiment_id, uiview.KEY)
    else:
        url = f"{base}/#/experiments/{experiment_id}/runs"
    return f"open {url}" if server else f"mlflow ui --backend-store-uri {shlex.quote(tracking_uri)}  then open {url}"


def outcome_problems(tracker: Tracker, parent: str) -> tuple[list[str], int]:
    """Each cell that failed, did not fit, was killed or never recorded, read from MLflow; and the
    exit status they imply (2 if a cell's setting was rejected when it ran, else 1)."""
    run = tracker.get_run(parent)
    cells = [r for r in tracker.children(parent) if r.data.tags.get(ROLE_TAG, "cell") == "cell"]  # not the finals
    problems, code = [], 0
    for r in sorted(cells, key=lambda r: r.info.start_time):
        t = r.data.tags
        status = t.get("cell_status") or r.info.status.lower()
        if status == "ok" or (r.info.status == "FINISHED" and "resumed_from" in t):
            continue
        why = t.get("error_message", "")
        problems.append(f"{r.info.run_name}: " + ("does not fit: " if status == "does_not_fit" else
                                                 f"{t.get('error_class', status)}: ") + why)
        code = max(code, 2 if t.get("error_class") == "ConfigError" else 1)
    missing = int(run.data.tags.get("cells_expected", len(cells))) - len(cells)
    if missing > 0:
        problems.append(f"{missing} cell(s) of the sweep never recorded a run (see the launcher's log)")
        code = max(code, 1)
    return problems, code
