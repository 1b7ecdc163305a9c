"""The terminal side of the CLI: --help, quiet output, unknown knobs, a one-cell run's summary, a sweep's last line,
and the live status line with log lines."""

from __future__ import annotations

import io
import logging
import re
import sys

import pytest
from omegaconf import OmegaConf
from rich.console import Console

from morphogen_exp.config import ConfigError
from morphogen_exp.run.progress import Progress
from morphogen_exp.strategies.base import check_knobs, knob_error

from .conftest import mlflow_runs

NOISE = ("mlflow.system_metrics", "Unable to initialize backend 'tpu'", "INFO mlflow")


def _noise(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(n in line for n in NOISE)]


def test_help_describes_the_app_its_examples_and_options(cli_here):
    res = cli_here("--help")
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    assert "which way of batching private page queries" in out
    assert "powered by Hydra" not in out
    assert "-m, --multirun" in out
    assert "python -m morphogen_exp -m 'strategy=glob(*)' q=1,2,4,8,16,32" in out  # the sweep example
    assert "+rollout=selected" in out and "resume=true" in out and "morphogen_exp.report" in out
    assert "strategy: full_batch, graph_replay, micro_batch, multi_stream, tiled" in out
    assert "engine: bitsliced, fused, pallas, xla" in out
    assert "placement: replicated, sharded, single" in out
    assert "hydra.verbose=true" in out


@pytest.mark.parametrize("override", ["+strategy.tiel=8", "strategy.tiel=8"])
def test_unknown_knob_is_a_setting_to_fix_naming_the_knobs(cli_here, workdir, override):
    res = cli_here("strategy=tiled", override, "q=2")
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert lines == ["error: strategy.tiel: not a knob of strategy tiled; tiled's knobs: strategy.tile"]
    assert not (workdir / "outputs" / "mlflow.db").exists()  # nothing ran, nothing recorded


def test_check_knobs_names_unknown_keys_and_keeps_known_ones():
    check_knobs("tiled", {"tile": 8}, 4)
    check_knobs("graph_replay", {"command_buffer": None}, 4)
    with pytest.raises(ConfigError, match=r"strategy.tiel: not a knob of strategy tiled; tiled's knobs: strategy.tile$"):
        check_knobs("tiled", {"tile": 4, "tiel": 8}, 4)
    with pytest.raises(ConfigError, match="full_batch has no knobs"):
        check_knobs("full_batch", {"tile": 4}, 4)
    with pytest.raises(ConfigError, match=r"strategy.tile must be an integer"):  # a known knob's own check stays
        check_knobs("tiled", {"tile": 0}, 4)


def test_knob_error_reads_hydras_struct_error():
    try:
        OmegaConf.set_struct(cfg := OmegaConf.create({"strategy": {"tile": 4}}), True)
        cfg.strategy.tiel = 8
    except Exception as err:
        assert knob_error(err, ["strategy=micro_batch,tiled"]) == (
            "strategy.tiel: not a knob of strategy micro_batch, tiled; "
            "micro_batch's knobs: strategy.threshold, strategy.chunk; tiled's knobs: strategy.tile")
        assert knob_error(ValueError("q=40 is out of range"), []) is None
    else:
        pytest.fail("struct mode accepted a new key")


def _quiet_ok_lines(res) -> list[str]:
    """A command that exited 0 without library noise on either stream: its stdout lines."""
    assert res.returncode == 0, res.stderr[-3000:]
    both = res.stdout + res.stderr
    assert _noise(both) == [], _noise(both)
    return res.stdout.strip().splitlines()


def test_one_cell_run_is_quiet_and_names_its_configuration_and_run(cli_here):
    lines = _quiet_ok_lines(cli_here("strategy=tiled", "strategy.tile=2", "q=2", "bench.system_metrics_s=0.5"))
    assert lines[-2].startswith("cell: tiled[tile=2] q=2 engine=xla placement=single dataset=tiny (config_id ")
    assert " ok, run " in lines[-2]
    assert lines[-1].startswith("review: mlflow ui --backend-store-uri ") and "#/experiments/" in lines[-1]


def test_verbose_brings_the_library_logs_back(cli_here):
    res = cli_here("strategy=full_batch", "q=1", "bench.system_metrics_s=0.5", extra_env={"MORPHOGEN_VERBOSE": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert any("mlflow.system_metrics" in line for line in (res.stdout + res.stderr).splitlines())


def test_sweep_is_quiet_and_ends_with_its_table_the_report_address_and_the_decision(cli_here, workdir):
    lines = _quiet_ok_lines(cli_here("-m", "strategy=full_batch,tiled", "q=1", "bench.system_metrics_s=0.5"))
    assert lines[-2].startswith("review: ") and "/artifacts/report/report.md" in lines[-2]  # the decision, no click
    assert lines[-1].startswith("decision: ") and " — report: " in lines[-1]
    table = lines[lines.index(next(x for x in lines if x.startswith("speedup of the batch path"))):-3]
    assert table[1].split() == ["configuration", "q=1", "verdict"] and len(table) == 5  # title, header, rule, 2 rows
    assert sum("<- ships" in row for row in table) == (0 if "NO-GO" in lines[-1] or "INCONCLUSIVE" in lines[-1] else 1)
    cells = [x for x in lines if "-q1: single " in x]
    assert len(cells) == 2 and all(re.search(r"speedup x[\d.]+ \[[\d.]+, [\d.]+\], parity ok$", c) for c in cells), cells
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [^\[,]", x) for x in lines[:-len(table) - 3]), lines  # no ms
    assert "[HYDRA]" not in "\n".join(lines)
    described = {r.info.run_name: r.data.tags.get("mlflow.note.content", "") for r in mlflow_runs(workdir)}
    assert described["final-q1"].startswith("final at q=1: ") and " ms over " in described["final-q1"]
    assert all(described.values()), described  # every run: the sweep, its cells, its final
    cell_runs = [r for r in mlflow_runs(workdir) if r.data.tags.get("morphogen.role") == "cell"]
    assert len(cell_runs) == 2 and all({"host.cpus", "host.load1_start", "host.load1_end"} <= set(r.data.metrics)
                                       for r in cell_runs)  # the host's load while each cell was timed


def test_log_lines_go_above_the_live_line_which_is_cleared_at_the_end(monkeypatch):
    term = io.StringIO()
    monkeypatch.setattr(sys, "stdout", term)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("LOG %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        p = Progress(2, enabled=True, console=Console(file=term, force_terminal=True, width=100))
        p.start_cell(1, "tiled q=8")
        assert handler.stream is not term             # through the live display while it is shown
        logging.getLogger("morphogen_exp.test").info("a log line")
        p.end_cell()
        assert p._live is not None                    # one cell of two: still live
        p.start_cell(2, "tiled q=16")
        p.end_cell()                                  # the last cell: the line is gone
        assert p._live is None and handler.stream is term and sys.stdout is term
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    text = term.getvalue()
    assert "\r\x1b[2KLOG a log line\n" in text        # the status line cleared, then the log line on its own
    assert text.endswith("\r\x1b[1A\x1b[2K")          # the status line erased at the end: the prompt lands on a clean line
