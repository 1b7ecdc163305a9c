"""The Hydra callback that frames a multirun: a parent MLflow run before the first cell, and the
comparison + decision report after the last one."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from . import app
from .config import ConfigError, MlflowConfig, flatten
from .tracking import PARENT_TAG, ROLE_TAG, Tracker, code_version

log = logging.getLogger(__name__)


class SweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = str(Path(config.hydra.sweep.dir).resolve())
        try:
            ml = OmegaConf.to_container(config.mlflow, resolve=True)
            tracker = Tracker(MlflowConfig(tracking_uri=ml["tracking_uri"], experiment=ml["experiment"]))
        except ConfigError as err:  # fail before any cell compiles anything
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        overrides = list(config.hydra.overrides.task)
        parent = tracker.start_run(
            f"sweep {Path(sweep_dir).name}",
            {ROLE_TAG: "sweep", PARENT_TAG: sweep_dir, "overrides": " ".join(overrides),
             "code_version": code_version(), **app._device_tags()},
        )
        decision = OmegaConf.to_container(config.decision, resolve=True)
        tracker.log(parent, params={f"decision.{k}": v for k, v in flatten(decision).items()})
        Path(sweep_dir).mkdir(parents=True, exist_ok=True)
        (Path(sweep_dir) / "parent_run_id").write_text(parent + "\n")
        app.SWEEP.tracker, app.SWEEP.parent_id, app.SWEEP.sweep_dir = tracker, parent, sweep_dir
        log.info("sweep run %s in %s", parent, tracker.cfg.tracking_uri)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from . import report

        tracker, parent = app.SWEEP.tracker, app.SWEEP.parent_id
        if tracker is None or parent is None:
            return
        try:
            files = report.build(tracker, parent, Path(app.SWEEP.sweep_dir), rollout_dir=Path("outputs"))
            log.info("report: %s", files.markdown)
            print(f"report: {files.markdown}")
        except Exception as err:  # the cells are recorded; a report bug must not hide them
            app.FAILED_CELLS.append(f"report: {type(err).__name__}: {err}")
            log.exception("report failed")
        tracker.end(parent, "FAILED" if app.FAILED_CELLS else "FINISHED")
