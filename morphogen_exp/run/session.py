"""The state of one process, with one owner: the resident database, the compiled contexts built on
it, the oracle's answers, the MLflow trackers, and (in the process that frames a multirun) the sweep.

Only `__main__` reads `current()`: it passes the session to app.run / trial.run and hands it to the sweep
callback (`SweepCallback.sess`: Hydra builds the callback from the config). What must outlive the process
(the sweep's parent run id, cell outcomes) is in the sweep dir and MLflow, never only here, so a launcher
that runs cells in other processes sees the same sweep."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DatasetConfig, MlflowConfig
from ..measure import datasets, memory
from ..pir.engine import LayoutFn
from ..record.tracking import Tracker
from .progress import Progress


@dataclass
class SweepRef:
    """The multirun a cell belongs to: its folder and its parent run (read from the folder)."""

    sweep_dir: str
    parent_id: str | None
    cells: int | None = None   # how many cells the sweep has (progress)
    index: int | None = None   # this cell's number, from 1


@dataclass
class Session:
    dataset: datasets.Dataset | None = None
    contexts: dict[Any, Any] = field(default_factory=dict)          # (EngineSpec, Placement) -> BuildContext, on `dataset`
    oracle: dict[tuple, np.ndarray] = field(default_factory=dict)  # oracle answers by value (parity.py)
    trackers: dict[tuple[str, str], Tracker] = field(default_factory=dict)
    sweep: tuple[Tracker, SweepRef] | None = None                  # set where the multirun is framed (interrupts)

    def database(self, cfg: DatasetConfig, seed: int, layout: LayoutFn | None = None,
                 placement: Any = None) -> datasets.Dataset:
        """The dataset in the engine's layout (None: raw pages) and placement (placement.load; None: one
        device), built once per process. A different one releases the old database and every context
        compiled on it first (one resident at a time: a 64 GiB one leaves room for no other).

        A file is identified again on every call (its stat key; hashed again only when that moved): one
        whose stat key or fingerprint changed since it was loaded is loaded again; one that differs
        from the identity recorded for it since the last call (`datasets.fingerprint`: the cell's tags,
        taken before it loads), or that changes while it loads, raises `datasets.DatasetChanged`. The dataset carries the identity
        it was loaded at (`fingerprint`, `stat`), which `datasets.verify` checks at the end of a cell."""
        ident = datasets.identify(cfg, seed)
        datasets.expect_recorded(ident)
        key = (cfg.name, cfg.num_pages, str(Path(cfg.path).expanduser().resolve()) if cfg.path else None, seed, layout,
               placement, ident)
        if self.dataset is None or self._dataset_key != key:
            self.dataset, self.contexts, self._dataset_key = None, {}, None
            if placement is None:
                loaded = datasets.load(cfg, seed, layout)
            else:
                from ..measure import placement as placements  # imports the strategies' base; only cells need it

                loaded = placements.load(cfg, seed, placement, layout)
            if ident.stat is not None and datasets.stat_key(Path(ident.stat[0])) != ident.stat:
                raise datasets.DatasetChanged(f"dataset.path {ident.stat[0]!r} changed while it was loaded: "
                                              "run again once it is stable")
            self.dataset = replace(loaded, fingerprint=ident.fingerprint, stat=ident.stat)
            self._dataset_key = key
        return self.dataset

    def context(self, spec: Any, make: Callable[[datasets.Dataset, Any], Any]) -> Any:
        """One context per key (engine, placement) on the resident database: compiled functions shared by its cells."""
        assert self.dataset is not None, "load the database first"
        if spec not in self.contexts:
            self.contexts[spec] = make(self.dataset, spec)
        return self.contexts[spec]

    def progress(self, sweep: SweepRef | None) -> Progress:
        """The status line of this process's cells (cell k of n, phase, ETA); quiet off a terminal."""
        if self._progress is None:
            self._progress = Progress(sweep.cells if sweep else 1)
        return self._progress

    def tracker(self, cfg: MlflowConfig) -> Tracker:
        key = (cfg.tracking_uri, cfg.experiment)
        if key not in self.trackers:
            self.trackers[key] = Tracker(cfg)
        return self.trackers[key]

    _dataset_key: tuple | None = None
    _progress: Progress | None = None


_CURRENT: Session | None = None


def current() -> Session:
    """This process's session (created on first use, before the device backend starts); read by `__main__` only."""
    global _CURRENT
    if _CURRENT is None:
        memory.configure_process()  # read when the backend starts: before any device use, in any worker
        _CURRENT = Session()
    return _CURRENT
