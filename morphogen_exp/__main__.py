"""`python -m morphogen_exp [-m] [overrides]`: compose the config and run cells (see app.run).

Exit status: 0 all cells ok (or recorded as "does not fit"), 1 some cell failed, 2 a setting to fix,
130 interrupted (finished cells stay in MLflow; `python -m morphogen_exp.report` rebuilds the report)."""

from __future__ import annotations

import logging
import signal
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from . import app, memory
from .config import ConfigError

log = logging.getLogger("morphogen_exp")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def hydra_entry(cfg: DictConfig) -> str:
    try:
        return app.run(cfg).status
    except ConfigError as err:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        # In a sweep one bad cell is recorded and reported; the others still run.
        overrides = " ".join(HydraConfig.get().overrides.task)
        app.FAILED_CELLS.append(f"[{overrides}]: {err}")
        log.error("cell [%s] not run: %s", overrides, err)
        return "failed"


def _sigterm(signum, frame):  # SIGTERM behaves like Ctrl-C: the active run ends KILLED
    raise KeyboardInterrupt


def main() -> None:
    memory.configure_process()  # read when the backend starts (first device use): before any cell
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        hydra_entry()
    except KeyboardInterrupt:
        app.end_sweep_killed()
        where = f" --sweep-dir {app.SWEEP.sweep_dir}" if app.SWEEP.sweep_dir else ""
        print(f"interrupted: finished cells are kept in MLflow; rebuild the report with "
              f"`python -m morphogen_exp.report{where}`", file=sys.stderr)
        sys.exit(130)
    if app.FAILED_CELLS:
        print(f"{len(app.FAILED_CELLS)} cell(s) failed:", file=sys.stderr)
        for line in app.FAILED_CELLS:
            print(f"  {line}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
