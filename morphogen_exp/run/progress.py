"""Progress of a sweep: one status line, "cell k of n  label  phase  elapsed / ETA", live (rich) when
stdout is a terminal; otherwise quiet: a DEBUG log line per phase, nothing on stdout. While the line is live,
log lines are printed above it (never into it), and it is cleared when the last cell ends or at close().

`quiet_logging` keeps the terminal to one line a cell: MLflow's and JAX's loggers at WARNING (MLflow's system
metrics say 4 INFO lines a cell; JAX says `Unable to initialize backend 'tpu'` on every machine without one)
unless `hydra.verbose=true` or MORPHOGEN_VERBOSE=1."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

log = logging.getLogger(__name__)

PHASES = ("building data", "compiling", "timing", "parity", "logging", "finals")
VERBOSE_ENV = "MORPHOGEN_VERBOSE"
# Hydra's launchers log a "#k : overrides" line per cell: the cell's own result line names it, one line a cell.
QUIET_LOGGERS = ("mlflow", "jax", "absl", "hydra._internal.core_plugins.basic_launcher", "hydra_plugins.hydra_joblib_launcher",
                 "hydra_plugins.hydra_submitit_launcher")


def verbose_asked(hydra_verbose: object = False) -> bool:
    """hydra.verbose (true, a logger name or a list of them) or MORPHOGEN_VERBOSE=1 asks for every log line."""
    env = os.environ.get(VERBOSE_ENV, "").strip().lower()
    return bool(hydra_verbose) or env not in ("", "0", "false", "no")


def quiet_logging(verbose: bool = False) -> None:
    """MLflow and JAX loggers at WARNING unless `verbose`; MLFLOW_LOGGING_LEVEL (unless the user set it) keeps
    MLflow quiet when it is imported later and in worker processes. No effect on a level the user asked for."""
    if verbose:
        return
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)


class LineFormatter(logging.Formatter):
    """The tool's log lines: `2026-12-07 20:31:19 message`, to the second, a warning or error marked as such
    (conf/config.yaml names it for Hydra's and the cells' logging)."""

    def __init__(self, format: str = "%(asctime)s %(message)s", datefmt: str = "%Y-%m-%d %H:%M:%S") -> None:  # noqa: A002
        super().__init__(format, datefmt=datefmt)  # logging.config passes the config's `format` as this keyword

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        if record.levelno >= logging.WARNING and not record.message.lower().startswith(("warning", "error")):
            record = logging.makeLogRecord({**record.__dict__, "message": f"{record.levelname.lower()}: {record.message}"})
        return super().formatMessage(record)


def format_s(seconds: float) -> str:
    """12s, 3m05s, 1h02m."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Status of a sweep of `total_cells` cells (None: unknown, no ETA). `enabled` None: live only
    when stdout is a terminal. Use `with progress.cell(k, label): progress.phase("compiling") ...`
    (k counts from 1), or `start_cell`/`end_cell` from callbacks; `close()` (or `with Progress(...)`)
    ends the live line. The ETA is the mean duration of finished cells times the cells left."""

    def __init__(self, total_cells: int | None, enabled: bool | None = None, *, console: Console | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if total_cells is not None and total_cells < 0:
            raise ValueError(f"total_cells={total_cells} must be >= 0 (or None when unknown)")
        self.total = total_cells
        self.enabled = sys.stdout.isatty() if enabled is None else enabled
        self.durations: list[float] = []
        self._clock = clock
        self._console = console
        self._started = clock()
        self._k: int | None = None
        self._last_k = 0
        self._label = ""
        self._phase = ""
        self._cell_started: float | None = None
        self._live: Live | None = None
        self._rerouted: list[tuple[logging.StreamHandler[Any], Any]] = []

    def start_cell(self, k: int, label: str) -> None:
        self._k, self._label, self._phase, self._cell_started = k, label, "", self._clock()
        self._show()

    def end_cell(self) -> None:
        if self._cell_started is not None and self._k is not None:
            self.durations.append(self._clock() - self._cell_started)
            self._last_k = self._k
            log.debug("%s done in %s", self._cell_text(), format_s(self.durations[-1]))
        last = self._k is not None and self.total is not None and self._k >= self.total
        self._k, self._cell_started, self._phase = None, None, ""
        if last:  # nothing after the last cell may land on the status line
            self.close()
        self._refresh()

    @contextmanager
    def cell(self, k: int, label: str) -> Iterator[Progress]:
        """Cell k (from 1) of the sweep, e.g. label "tiled q=8"; its duration feeds the ETA."""
        self.start_cell(k, label)
        try:
            yield self
        finally:
            self.end_cell()

    def phase(self, name: str) -> None:
        """The current cell's phase: one of PHASES."""
        if name not in PHASES:
            raise ValueError(f"progress phase {name!r} must be one of {', '.join(PHASES)}")
        self._phase = name
        self._show()

    def eta_s(self) -> float | None:
        """Seconds left: mean finished-cell duration x cells after the current one, plus what the mean
        leaves of the current one. None without a total or a finished cell."""
        if self.total is None or not self.durations:
            return None
        mean = sum(self.durations) / len(self.durations)
        if self._k is None or self._cell_started is None:
            return mean * max(self.total - self._last_k, 0)
        in_cell = self._clock() - self._cell_started
        return mean * max(self.total - self._k, 0) + max(mean - in_cell, 0.0)

    def line(self) -> str:
        """The status line as it stands now."""
        parts = [self._cell_text(), self._phase] if self._k is not None else ["between cells"]
        eta = self.eta_s()
        timing = f"{format_s(self._clock() - self._started)} / ETA {format_s(eta) if eta is not None else '--'}"
        return "  ".join(p for p in (*parts, timing) if p)

    def close(self) -> None:
        """Clear the live line (the next output starts on a clean line) and give logging its streams back."""
        if self._live is not None:
            live, self._live = self._live, None
            live.stop()
            for handler, stream in self._rerouted:
                handler.setStream(stream)
            self._rerouted = []

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _cell_text(self) -> str:
        of = f" of {self.total}" if self.total is not None else ""
        return f"cell {self._k}{of}  {self._label}".rstrip()

    def _show(self) -> None:
        log.debug("%s", self.line())
        if self.enabled and self._live is None:
            self._live = Live(get_renderable=lambda: Text(self.line()), console=self._console or Console(),
                              refresh_per_second=2, transient=True, redirect_stdout=True, redirect_stderr=True)
            stdout, stderr = sys.stdout, sys.stderr
            self._live.start()
            self._reroute(stdout, stderr)
        self._refresh()

    def _reroute(self, stdout: object, stderr: object) -> None:
        """Log handlers writing to the terminal (Hydra's, MLflow's) write through the live display, which clears
        the status line, prints the log line and draws the status line again below it."""
        loggers = [logging.getLogger(), *(logging.getLogger(n) for n in QUIET_LOGGERS)]
        proxies = {id(stdout): sys.stdout, id(stderr): sys.stderr}
        for logger in loggers:
            for handler in logger.handlers:
                if type(handler) is logging.StreamHandler and id(handler.stream) in proxies \
                        and proxies[id(handler.stream)] is not handler.stream:
                    self._rerouted.append((handler, handler.setStream(proxies[id(handler.stream)])))

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()
