"""`python -m morphogen_exp [-m] [overrides]`: compose the config and run cells (see app.run).

Exit status, under any Hydra launcher: 0 all cells ok, 1 some cell failed or did not fit, 2 a
setting to fix (one line on stderr, nothing run), 130 interrupted (finished cells stay in MLflow; the
same command with resume=true finishes the sweep).

`+rollout=NAME` without -m is a rollout trial (trial.py): the guard's configuration against what its sweep
measured; exit status 0 HOLDS or IMPROVED, 1 REGRESSED (or the trial failed), 3 INCONCLUSIVE, 2 a setting to fix.

`-m ... resume=true` without hydra.sweep.dir resumes the newest unfinished sweep of the same cells
(sweepdir.resume_preflight adds its folder to the command line before Hydra composes; none: a new sweep)."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from . import paths
from .config import ConfigError, one_line
from .decide import rollout
from .measure import devlock
from .record import sweepdir
from .record.tracking import StoreLost, shielded
from .run import cell as app
from .run import progress, session, trial
from .run.sweep import SweepCallback, review_hint, sweep_ref
from .strategies.base import knob_error

log = logging.getLogger("morphogen_exp")


@hydra.main(version_base="1.3", config_path=str(paths.conf_dir()), config_name="config")  # checkout or wheel
def hydra_entry(cfg: DictConfig) -> dict[str, Any]:
    """One cell, in whatever process the launcher runs it; the outcome is the return value."""
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    progress.quiet_logging(progress.verbose_asked(hc.verbose))  # here too: a launcher's worker process
    _interpret_note(cfg)
    try:
        guard = None if multirun else trial.guard_of(list(hc.overrides.task))
        if guard is not None:  # a rollout trial: the guard against its sweep, its own exit status
            sys.exit(trial.run(cfg, session.current(), guard, list(hc.overrides.task)))
        ref = dataclasses.replace(sweep_ref(hc.sweep.dir), index=hc.job.num + 1) if multirun else None
        if ref is not None and ref.parent_id is None:  # never a cell outside its sweep run
            log.error("cell [%s]: the sweep folder %s records no sweep run", " ".join(hc.overrides.task), ref.sweep_dir)
            return app.CellOutcome("failed", error=f"the sweep folder {ref.sweep_dir} records no sweep run").as_dict()
        out = app.run(cfg, session.current(), ref)
    except ConfigError as err:
        if not multirun:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        what = "the tracking store is lost" if isinstance(err, StoreLost) else "setting to fix"
        log.error("cell [%s]: %s: %s", " ".join(hc.overrides.task), what, err)  # recorded FAILED by app.run
        return app.CellOutcome("config_error", error=str(err)).as_dict()
    if not multirun and out.status in ("failed", "does_not_fit"):
        why = f"does not fit: {out.error}" if out.status == "does_not_fit" else out.error
        print(f"1 cell(s) failed:\n  {out.name}: {why}", file=sys.stderr)
        sys.exit(1)
    if not multirun:
        _one_cell_summary(cfg, out)
    return out.as_dict()


_NOTED: set[str] = set()


def _interpret_note(cfg: DictConfig) -> None:
    """An engine with a ``cpu_note`` (pallas: Triton's interpret mode) run without a GPU: say so once per
    process, before the cell."""
    engine = str(cfg.get("engine", {}).get("name", ""))
    if engine and engine not in _NOTED:
        import jax

        from .pir import get

        try:
            note = get(engine).cpu_note
        except ValueError:  # an unknown engine: the cell's validation says so
            return
        if note and jax.default_backend() != "gpu":
            _NOTED.add(engine)
            log.warning("engine=%s on %s: %s", engine, jax.default_backend(), note)


def _one_cell_summary(cfg: DictConfig, out: app.CellOutcome) -> None:
    """A one-cell run's last lines: the configuration with its knobs, the run and where to see it."""
    try:
        rc = app.validate(cfg)
        knobs = ",".join(f"{k}={v}" for k, v in sorted(rc.strategy.knobs.items()))
        conf = (f"{rc.strategy.name}{f'[{knobs}]' if knobs else ''} q={rc.q} engine={rc.engine.name} "
                f"placement={rc.placement.name} dataset={rc.dataset.name} (config_id {rc.config_id})")
        tracker = session.current().tracker(rc.mlflow)
        where = review_hint(tracker.cfg.tracking_uri, tracker.experiment_id)
    except Exception as err:  # the cell is recorded; a summary must not fail the run
        log.debug("no summary: %s", err)
        return
    print(f"cell: {conf}: {out.status}, run {out.run_id}")
    print(f"review: {where}")


def _interrupt(signum: int, frame: Any) -> None:
    """Ctrl-C or SIGTERM: the active run and the sweep end KILLED. From the first one on, both signals are ignored:
    a second one landing in the clean-up (a metrics flush, a store write) could otherwise leave it half done."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _interrupted() -> None:
    """Ctrl-C / SIGTERM: the sweep run (if this process frames one) and its dead cells end KILLED."""
    sess = session.current()
    hint = "rebuild the report with `python -m morphogen_exp.report`"
    guard = trial.guard_of(sys.argv[1:])
    if sess.sweep is None and guard is not None:  # a trial measures no cells: its run ends KILLED, with no verdict
        print(f"interrupted: the trial of guard {guard} ended KILLED with no verdict; run the same command again",
              file=sys.stderr)
        return
    if sess.sweep is not None:
        tracker, ref = sess.sweep
        hint = (f"finish the sweep with the same command and resume=true, or publish what finished with "
                f"`python -m morphogen_exp.report --sweep-dir {ref.sweep_dir} --publish`")
        with shielded():
            try:
                if ref.parent_id:
                    tracker.end(ref.parent_id, "KILLED")
                tracker.close_stale(ref.sweep_dir, wait_s=5.0)  # cells whose worker died with the launcher
            except Exception as err:  # never mask the interrupt
                log.warning("could not mark sweep runs KILLED: %s", err)
    print(f"interrupted: finished cells are kept in MLflow; {hint}", file=sys.stderr)


def main() -> None:
    progress.quiet_logging(progress.verbose_asked(_verbose_arg(sys.argv[1:])))  # before JAX and MLflow say anything
    SweepCallback.sess = session.current()  # memory settings before anything starts the backend; the callback's session
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    user_full_error = "HYDRA_FULL_ERROR" in os.environ
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra's errors come to us: one line, exit 2
    try:
        _one_line_args(sys.argv[1:])
        rollout.preflight(sys.argv[1:])  # a guard named by +rollout= must exist before Hydra composes
        trial.preflight(sys.argv[1:])  # a trial: the guard's record, and a command line that keeps its strategy
        sweepdir.sweep_preflight(sys.argv[1:])  # sweep syntax the sweeper cannot expand, a sweep of no cells
        if {"-m", "--multirun"} & set(sys.argv[1:]):
            rollout.check_writable()  # the sweep ends by saving its guard: known now, not after every cell ran
        if not {"--help", "-h", "--hydra-help", "--info", "--cfg", "-c", "--version"} & set(sys.argv[1:]):
            devlock.check_dir()  # every cell takes its device lock there: one line now, not a failure per cell
        _backend_preflight(sys.argv[1:])
        sys.argv[1:] = sweepdir.resume_preflight(sys.argv[1:])  # resume=true: which sweep, before Hydra fixes the folder
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    try:
        hydra_entry()
    except KeyboardInterrupt:  # signals are ignored from here on (_interrupt)
        _interrupted()
        sys.exit(130)
    except (HydraException, OmegaConfBaseException) as err:
        _end_sweep("FAILED")
        if user_full_error:
            raise
        print(f"error: {knob_error(err, sys.argv[1:]) or one_line(err)}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:  # Hydra writing a job's folder (.hydra/, the job log) on a full or read-only disk
        _end_sweep("FAILED")
        if user_full_error:
            raise
        print(f"error: cannot write {err.filename or 'the run folder'} ({err.strerror or err}): free space there or pick "
              "another hydra.sweep.dir (hydra.run.dir for one cell); a sweep goes on with the same command and resume=true",
              file=sys.stderr)
        sys.exit(2)
    except Exception as err:  # a launcher's failure (e.g. a worker process died): the sweep run must not stay RUNNING
        _end_sweep("FAILED")
        if type(err).__name__ == "UncompletedJobError" and not user_full_error:  # submitit: a job died before its cell
            print(f"error: a SLURM job ended without a result ({one_line(err)[:240]}); its log is under <sweep>/.submitit/; "
                  "finish the sweep with resume=true", file=sys.stderr)
            sys.exit(1)
        raise


def _one_line_args(args: list[str]) -> None:
    """No setting holds a line break or NUL (an .env line, a folder name, an error line would break on it)."""
    for arg in args:
        if any(c in arg for c in "\n\r\0"):
            key = arg.partition("=")[0].lstrip("+~")
            raise ConfigError(f"{key}: the value holds a line break or NUL; every setting is one line")


def _backend_preflight(args: list[str]) -> None:
    """JAX_PLATFORMS names a backend this machine lacks (`cuda` without a GPU or its plugin): ConfigError (one line)
    instead of JAX's bare AssertionError in the first cell. Asked of a child process, so this one starts no backend
    before a multi-host run's jax.distributed.initialize(). Nothing to check without JAX_PLATFORMS (JAX picks one)."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if not platforms or {"--help", "-h", "--hydra-help", "--info", "--cfg", "-c", "--version"} & set(args):
        return
    probe = "import jax; jax.devices()"
    try:
        res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return  # no answer: the cell says what is wrong
    if res.returncode != 0:
        lines = [line.strip() for line in res.stderr.splitlines() if line.strip()]
        why = lines[-1][:200] if lines else f"exit status {res.returncode}"
        raise ConfigError(f"JAX_PLATFORMS={platforms}: JAX cannot start it on this machine ({why}); unset JAX_PLATFORMS "
                          "to run on what is here, or install the backend (pip install -e '.[cuda12]' on a GPU machine)")


def _verbose_arg(args: list[str]) -> str:
    """hydra.verbose=... on the command line ('' when absent or false)."""
    values = [a.split("=", 1)[1] for a in args if a.lstrip("+").startswith("hydra.verbose=")]
    return "" if not values or values[-1].strip().lower() in ("", "false", "null", "[]") else values[-1]


def _end_sweep(status: str) -> None:
    sweep = session.current().sweep
    if sweep is not None and sweep[1].parent_id:
        with shielded():
            sweep[0].end(sweep[1].parent_id, status)


if __name__ == "__main__":
    main()
