"""Progress of a sweep: one status line, "cell k of n  label  phase  elapsed / ETA", live (rich) when
stdout is a terminal; otherwise quiet: a DEBUG log line per phase, nothing on stdout."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType

from rich.console import Console
from rich.live import Live
from rich.text import Text

log = logging.getLogger(__name__)

PHASES = ("building data", "compiling", "timing", "parity", "logging", "finals")


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

    def start_cell(self, k: int, label: str) -> None:
        self._k, self._label, self._phase, self._cell_started = k, label, "", self._clock()
        self._show()

    def end_cell(self) -> None:
        if self._cell_started is not None and self._k is not None:
            self.durations.append(self._clock() - self._cell_started)
            self._last_k = self._k
            log.debug("%s done in %s", self._cell_text(), format_s(self.durations[-1]))
        self._k, self._cell_started, self._phase = None, None, ""
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
        if self._live is not None:
            self._live.stop()
            self._live = None

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
                              refresh_per_second=2, transient=False)
            self._live.start()
        self._refresh()

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()
