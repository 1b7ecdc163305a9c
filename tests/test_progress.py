"""Progress: the ETA arithmetic on a fake clock, the quiet (non-terminal) path, the live line."""

from __future__ import annotations

import io
import logging

import pytest
from rich.console import Console

from morphogen_exp.run.progress import Progress, format_s


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_eta_is_the_mean_finished_cell_times_what_is_left() -> None:
    clock = Clock()
    p = Progress(4, enabled=False, clock=clock)
    assert p.eta_s() is None                                   # nothing finished yet
    for k, seconds in ((1, 10.0), (2, 20.0)):
        with p.cell(k, f"full_batch q={k}"):
            clock.now += seconds
    assert p.durations == [10.0, 20.0]
    assert p.eta_s() == pytest.approx(15.0 * 2)                # between cells: 2 cells left
    p.start_cell(3, "tiled q=8")
    clock.now += 5.0
    assert p.eta_s() == pytest.approx(15.0 * 1 + 10.0)         # one after this, 10 s left of this
    clock.now += 60.0
    assert p.eta_s() == pytest.approx(15.0)                    # overdue: the current cell adds nothing
    p.phase("timing")
    assert p.line() == "cell 3 of 4  tiled q=8  timing  1m35s / ETA 15s"
    p.end_cell()
    assert p.eta_s() == pytest.approx(sum(p.durations) / 3 * 1)


def test_unknown_total_has_no_eta_and_bad_phase_is_named() -> None:
    clock = Clock()
    p = Progress(None, enabled=False, clock=clock)
    with p.cell(1, "micro_batch q=2"):
        clock.now += 3.0
    with p.cell(2, "micro_batch q=4"):
        p.phase("compiling")
        assert p.eta_s() is None
        assert p.line() == "cell 2  micro_batch q=4  compiling  3s / ETA --"
        with pytest.raises(ValueError, match="'warming up' must be one of building data, compiling"):
            p.phase("warming up")


def test_not_a_terminal_is_quiet_on_stdout_and_logs_each_phase_at_debug(capsys: pytest.CaptureFixture[str],
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="morphogen_exp.run.progress")
    with Progress(2) as p, p.cell(1, "tiled q=8"):             # pytest's stdout is not a terminal
        for phase in ("building data", "compiling", "timing", "parity", "logging"):
            p.phase(phase)
    assert not p.enabled
    assert capsys.readouterr().out == ""
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("cell 1 of 2  tiled q=8  timing") for m in messages)
    assert any(m.startswith("cell 1 of 2  tiled q=8 done in") for m in messages)


def test_terminal_shows_the_live_line() -> None:
    buf = io.StringIO()
    clock = Clock()
    with Progress(2, enabled=True, console=Console(file=buf, force_terminal=True, width=120), clock=clock) as p:
        with p.cell(1, "graph_replay q=32"):
            p.phase("parity")
    assert "cell 1 of 2  graph_replay q=32  parity" in buf.getvalue()


def test_format_s() -> None:
    assert [format_s(s) for s in (0.4, 59.4, 65, 3725)] == ["0s", "59s", "1m05s", "1h02m"]
