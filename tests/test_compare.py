"""The comparison tool: ratios with intervals and verdicts, the original's published CSV on one side,
--fail-on-regression for CI, and bad input as one-line errors with exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from morphogen_exp import compare

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "example-report" / "matrix.csv"


def _ours(path: Path, cells: dict[tuple[str, int], tuple[float, float | None]], metric: str = "batch_qps",
          **context: str) -> Path:
    """A matrix.csv of ours: config -> value and the interval's half-width (None: no interval columns); context:
    columns every row carries (device_kind=..., engine=...)."""
    rows = []
    for (config, q), (v, half) in cells.items():
        row = {"strategy": config.split("[")[0], "q": q, metric: v, "config": config, "status": "ok", **context}
        if half is not None:
            row |= {f"{metric}_lo": v - half, f"{metric}_hi": v + half}
        rows.append(row)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_ours_against_the_original_matrix(fixtures_dir, tmp_path, capsys):
    original = compare.read_matrix(fixtures_dir / "original-task30-h100-matrix.csv")
    assert len(original) == 30  # its two quoted header lines are skipped
    cmp = compare.compare(original, compare.read_matrix(EXAMPLE), "batch_qps")
    assert len(cmp.table) == 30 and cmp.key == ["strategy", "q"]  # every (original strategy name, q) cell matched
    row = cmp.table[(cmp.table.strategy == "multi_stream_4") & (cmp.table.q == 32)].iloc[0]
    assert row.value_b == pytest.approx(33.75) and row.ratio == pytest.approx(row.value_c / 33.75)
    assert cmp.intervals == "intervals from candidate; baseline has none (point values)"  # the example has them
    assert "no intervals on either side" in compare.compare(original, original, "batch_qps").intervals
    out = tmp_path / "cmp.md"
    assert compare.main([str(fixtures_dir / "original-task30-h100-matrix.csv"), str(EXAMPLE), "--out", str(out)]) == 0
    assert "| multi_stream_4 | 32 | 33.75 |" in out.read_text()
    assert original["device_kind"].unique().tolist() == ["NVIDIA H100 80GB HBM3"]  # from its gpu_info header line
    assert cmp.differs == {"device_kind": ("NVIDIA H100 80GB HBM3", "cpu")}  # the example report ran on CPU
    assert cmp.unchecked == ["dataset_fingerprint", "engine"]  # the original records neither


def test_the_original_on_one_side_takes_the_interval_from_ours(fixtures_dir, tmp_path):
    original = compare.read_matrix(fixtures_dir / "original-task30-h100-matrix.csv")
    base = original[(original.strategy == "baseline_full_batch") & (original.q == 1)]
    v = float(base["batch_ms_per_batch"].iloc[0])  # 30.14 ms
    ours = compare.read_matrix(_ours(tmp_path / "m.csv", {("baseline_full_batch", 1): (26.2, 0.1)}, "batch_ms_per_batch"))
    ours = ours.drop(columns="config")
    cmp = compare.compare(original, ours, "batch_ms_per_batch", names=("original", "ours"))
    r = cmp.table.iloc[0]
    assert (r.ratio_lo, r.ratio_hi) == (pytest.approx(26.1 / v), pytest.approx(26.3 / v))
    assert r.verdict == "faster" and r.change_pct == pytest.approx((1 - 26.2 / v) * 100)
    assert cmp.intervals == "intervals from ours; original has none (point values)"


@pytest.mark.parametrize("cand, verdict", [((110.0, 1.0), "faster"), ((90.0, 1.0), "slower"), ((100.5, 0.5), "same"),
                                           ((101.0, 5.0), "not enough evidence"), ((101.0, None), "same"),
                                           ((110.0, None), "faster"),
                                           ((100.9, 0.1), "same")])  # a real +0.9%: its interval is inside the 2% band
def test_verdicts_from_the_ratio_interval(tmp_path, cand, verdict):
    base = compare.read_matrix(_ours(tmp_path / "a.csv", {("tiled[tile=4]", 32): (100.0, 0.5 if cand[1] else None)}))
    other = compare.read_matrix(_ours(tmp_path / "b.csv", {("tiled[tile=4]", 32): cand}))
    assert compare.compare(base, other, "batch_qps").table["verdict"].tolist() == [verdict]


def test_latency_lower_is_better(tmp_path):
    a = compare.read_matrix(_ours(tmp_path / "a.csv", {("full_batch", 1): (30.0, 0.1)}, "batch_ms_per_batch"))
    b = compare.read_matrix(_ours(tmp_path / "b.csv", {("full_batch", 1): (26.0, 0.1)}, "batch_ms_per_batch"))
    assert compare.compare(a, b, "batch_ms_per_batch").table["verdict"].tolist() == ["faster"]


def test_fail_on_regression_needs_noise_and_the_threshold(tmp_path, capsys):
    a = _ours(tmp_path / "a.csv", {("full_batch", 32): (100.0, 0.5), ("tiled[tile=2]", 32): (100.0, 0.5)})
    b = _ours(tmp_path / "b.csv", {("full_batch", 32): (93.0, 0.5), ("tiled[tile=2]", 32): (99.0, 5.0)})
    assert compare.main([str(a), str(b), "--fail-on-regression", "5"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "full_batch q=32 (-7.0%)" in err and "tiled" not in err  # tiled: within noise
    assert compare.main([str(a), str(b), "--fail-on-regression", "10"]) == 0  # slower, but less than 10%
    assert compare.main([str(a), str(a), "--fail-on-regression", "0"]) == 0


def test_a_small_real_regression_fails_when_the_threshold_is_below_the_same_band(tmp_path, capsys):
    a = _ours(tmp_path / "a.csv", {("full_batch", 32): (100.0, 0.1)})
    b = _ours(tmp_path / "b.csv", {("full_batch", 32): (98.5, 0.1)})  # -1.5%, well beyond its noise
    assert compare.main([str(a), str(b)]) == 0 and "| same |" in capsys.readouterr().out  # inside the 2% band
    assert compare.main([str(a), str(b), "--fail-on-regression", "1"]) == 1  # ...but 1% was asked for


def test_a_gate_across_devices_or_datasets_is_refused_unless_allowed(tmp_path, capsys):
    a = _ours(tmp_path / "a.csv", {("full_batch", 32): (100.0, 0.5)}, device_kind="H100", dataset_fingerprint="d",
              engine="pallas")
    b = _ours(tmp_path / "b.csv", {("full_batch", 32): (90.0, 0.5)}, device_kind="H200", dataset_fingerprint="d",
              engine="fused")
    assert compare.main([str(a), str(b)]) == 0  # a plain comparison states the difference above the table
    out = capsys.readouterr().out
    assert "The sides differ in device_kind (H100 vs H200); engine (pallas vs fused)" in out
    assert compare.main([str(a), str(b), "--fail-on-regression", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "differ in device_kind (H100 vs H200): a regression gate" in err and "engine" not in err
    assert compare.main([str(a), str(b), "--fail-on-regression", "3", "--allow-different"]) == 1  # gated: -10%
    same = _ours(tmp_path / "c.csv", {("full_batch", 32): (90.0, 0.5)}, device_kind="H100", dataset_fingerprint="d",
                 engine="fused")
    assert compare.main([str(a), str(same), "--fail-on-regression", "3"]) == 1  # only the engine differs: gated


def _write(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text)
    return str(tmp_path / name)


@pytest.mark.parametrize("text, expect", [
    ("a,b\n1,2\n", "no 'strategy,...' header"),
    ("strategy,batch_qps\nx,1\n", "no q column"),
    ("strategy,q,batch_qps\nx,1,1\nx,1,2\n", "2 rows for the same cell (strategy=x, q=1)"),
    ("strategy,q,batch_qps\nx,1,fast\n", "non-numeric value 'fast'"),
    ("strategy,q,batch_qps\nx,one,1\n", "q must be an integer"),
    ("strategy,q,other\nx,1,1\n", "has no column 'batch_qps'"),
])
def test_bad_inputs_are_one_line_errors(tmp_path, capsys, text, expect):
    good = _write(tmp_path, "good.csv", "strategy,q,batch_qps\nx,1,1\n")
    assert compare.main([good, _write(tmp_path, "bad.csv", text)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and expect in err, err


def test_missing_file_and_unwritable_out_are_one_line_errors_in_a_subprocess(tmp_path):
    good = _write(tmp_path, "good.csv", "strategy,q,batch_qps\nx,1,1\n")
    for args, expect in (([str(tmp_path / "missing.csv"), good], "is not a file"),
                         ([good, good, "--out", str(tmp_path / "no" / "dir" / "x.md")], "--out")):
        res = subprocess.run([sys.executable, "-m", "morphogen_exp.compare", *args], capture_output=True, text=True,
                             cwd=tmp_path, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=300)
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and expect in res.stderr and "Traceback" not in res.stderr
