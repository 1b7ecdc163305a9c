"""`python -m morphogen_exp.history`: one configuration's metric over the sweeps of a real MLflow store, the steps
beyond noise called out (asv's step detection), and a read that changes nothing."""

from __future__ import annotations

import hashlib

import pytest
from PIL import Image

from morphogen_exp import history

from .test_report import Sweeps, _metrics


@pytest.fixture(scope="module")
def two_commits(tmp_path_factory) -> Sweeps:
    """Two sweeps of tiled (and full_batch) at q=4,32, run at two commits; tiled's q=32 speedup 2.0 then 2.5."""
    sweeps = Sweeps(tmp_path_factory.mktemp("history"))
    for name, code, speedup in (("2026-12-01_10-00-00", "a" * 40, 2.0), ("2026-12-02_10-00-00", "b" * 40, 2.5)):
        cells = [(["strategy=tiled"], q, _metrics(100.0 * q, 1.0, speedup=speedup), {}) for q in (4, 32)]
        cells += [(["strategy=full_batch"], q, _metrics(90.0 * q, 1.0), {}) for q in (4, 32)]
        parent = sweeps.sweep(sweeps.root / name, cells)
        sweeps.client.set_tag(parent, "code_version", code)
    return sweeps


def _digest(sweeps: Sweeps) -> str:
    return hashlib.sha256((sweeps.root / "mlflow.db").read_bytes()).hexdigest()


def test_history_shows_one_configuration_over_two_sweeps_and_commits_and_writes_no_record(two_commits, tmp_path,
                                                                                          capsys) -> None:
    before = _digest(two_commits)
    png = tmp_path / "h.png"
    assert history.main(["--config", "tiled", "--tracking-uri", two_commits.uri, "--plot", str(png)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "tiled at q=32: batch_vs_single_speedup over 2 sweep(s), oldest first"
    rows = out[3:5]
    assert rows[0].split()[2:6] == ["2026-12-01_10-00-00", "a" * 12, "cpu", "2"] and "[1.9, 2.1]" in rows[0]
    assert rows[1].split()[2:6] == ["2026-12-02_10-00-00", "b" * 12, "cpu", "2.5"] and rows[1].endswith("STEP +25.0%")
    assert out[5] == ("step: batch_vs_single_speedup 2 -> 2.5 (+25.0%, better; beyond 9.0%: twice the intervals' "
                      "median half-width) between sweep 2026-12-01_10-00-00 (code "
                      f"{'a' * 12}) and sweep 2026-12-02_10-00-00 (code {'b' * 12})")
    assert Image.open(png).text["Title"] == "tiled: batch_vs_single_speedup at q=32 over 2 sweeps (CPU dry run)"
    assert _digest(two_commits) == before  # a read: the store is byte for byte as it was


def test_a_synthetic_20_percent_step_is_called_a_step_and_noise_is_not() -> None:
    flat = [1.0, 1.01, 0.99, 1.0, 1.005, 0.995]
    (step,) = history.find_steps(flat + [v * 1.2 for v in flat], [0.01] * 12)
    assert step.at == 6 and step.change == pytest.approx(0.2, abs=0.01)
    assert history.find_steps(flat * 2, [0.01] * 12) == []
    assert history.find_steps(flat + [v * 1.2 for v in flat], [0.3] * 12) == []  # within the points' own noise


def test_an_unknown_configuration_is_one_line_naming_those_seen(two_commits, capsys) -> None:
    assert history.main(["--config", "tield", "--tracking-uri", two_commits.uri]) == 2
    err = capsys.readouterr().err
    assert err == ("error: no ok cell of 'tield' at q=32 with batch_vs_single_speedup in any sweep of this store "
                   "(configurations seen: full_batch, tiled)\n")
