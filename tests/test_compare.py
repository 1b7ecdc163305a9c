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
    assert r.verdict == "faster" and r.change_pct == pytest.approx((26.2 / v - 1) * 100)  # the time's own change: < 0
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


def test_a_time_that_grows_tenfold_is_plus_900_percent_and_fails_the_gate(tmp_path, capsys):
    a = _ours(tmp_path / "a.csv", {("full_batch", 1): (1.0, 0.01)}, "batch_ms_per_batch")
    b = _ours(tmp_path / "b.csv", {("full_batch", 1): (10.0, 0.01)}, "batch_ms_per_batch")
    assert compare.main([str(a), str(b), "--metric", "batch_ms_per_batch"]) == 0
    out = capsys.readouterr().out
    assert "| +900.0% | slower |" in out and "-900" not in out and "> 0 is slower" in out
    assert compare.main([str(a), str(b), "--metric", "batch_ms_per_batch", "--fail-on-regression", "5"]) == 1
    assert "full_batch q=1 (+900.0%)" in capsys.readouterr().err
    # 5% longer passes a 10% gate and fails a 4% one; 20% shorter passes any gate (it is faster)
    c = _ours(tmp_path / "c.csv", {("full_batch", 1): (1.05, 0.001)}, "batch_ms_per_batch")
    a_tight = _ours(tmp_path / "a2.csv", {("full_batch", 1): (1.0, 0.001)}, "batch_ms_per_batch")
    assert compare.main([str(a_tight), str(c), "--metric", "batch_ms_per_batch", "--fail-on-regression", "10"]) == 0
    assert compare.main([str(a_tight), str(c), "--metric", "batch_ms_per_batch", "--fail-on-regression", "4"]) == 1
    d = _ours(tmp_path / "d.csv", {("full_batch", 1): (0.8, 0.001)}, "batch_ms_per_batch")
    assert compare.main([str(a_tight), str(d), "--metric", "batch_ms_per_batch", "--fail-on-regression", "0"]) == 0
    assert "| -20.0% | faster |" in capsys.readouterr().out


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


def test_a_bom_csv_and_our_matrix_led_by_config_are_read(tmp_path, capsys):
    good = _write(tmp_path, "good.csv", "strategy,q,batch_qps\nx,1,1\n")
    (tmp_path / "bom.csv").write_text("\ufeffstrategy,q,batch_qps\nx,1,1\n", encoding="utf-8")  # a spreadsheet's export
    ours = _write(tmp_path, "ours.csv", "config,verdict,shipped,q,batch_qps,strategy\nx,GO,True,1,1,x\n")  # report.py's
    assert compare.main([good, str(tmp_path / "bom.csv")]) == 0 and compare.main([good, ours]) == 0
    assert capsys.readouterr().out.count("| x | 1 |") == 2, "both matched the baseline's cell"


def test_times_and_sizes_are_lower_is_better():
    assert [compare.higher_is_better(m) for m in ("batch_qps", "batch_vs_single_speedup", "batch_ms_per_batch",
                                                  "compile_s", "memory_estimate_gib")] == [True, True, False, False, False]


@pytest.mark.parametrize("text, expect", [
    ("a,b\n1,2\n", "no 'strategy,...' or 'config,...' header"),
    ("strategy,batch_qps\nx,1\n", "no q column"),
    ("strategy,q,batch_qps\nx,1,1\nx,1,2\n", "2 rows for the same cell (strategy=x, q=1)"),
    ("strategy,q,batch_qps\nx,1,fast\n", "non-numeric value 'fast'"),
    ("strategy,q,batch_qps\nx,one,1\n", "q must be an integer"),
    ("strategy,q,batch_qps\nx,1.7,1\n", "q must be an integer in every row, got '1.7'"),  # never truncated to q=1
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


# --------------------------------------------------------------------------- the gate's holes

CONFIGS = [("c0f1", "full_batch"), ("c1a2", "graph_replay"), ("c2b3", "micro_batch"), ("c3c4", "multi_stream"), ("c4d5", "tiled")]
QS = (1, 2, 4, 8, 16, 32)


def _sweep(path: Path, cells: list[tuple[str, str, int, str, float | None]], **context: str) -> str:
    """A matrix.csv of ours with config_id: cells are (config_id, config, q, status, value); an ok cell's interval
    is value ± 0.5, a cell that did not run has no numbers; context: columns every row carries."""
    rows = [{"strategy": config.split("[")[0], "q": q, "batch_qps": v, "config": config, "config_id": cid, "status": status,
             "batch_qps_lo": None if v is None else v - 0.5, "batch_qps_hi": None if v is None else v + 0.5, **context}
            for cid, config, q, status, v in cells]
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def _grid(status: str = "ok", value: float | None = 100.0) -> list[tuple[str, str, int, str, float | None]]:
    return [(cid, config, q, status, value) for cid, config in CONFIGS for q in QS]


def test_a_knob_label_and_a_plain_label_of_one_config_id_match(tmp_path, capsys):
    base = _sweep(tmp_path / "a.csv", [("f6f93bd40ba20be1", "tiled", 32, "ok", 100.0)])
    cand = _sweep(tmp_path / "b.csv", [("f6f93bd40ba20be1", "tiled[tile=4]", 32, "ok", 90.0),
                                       ("9999aaaa", "tiled[tile=8]", 32, "ok", 50.0)])  # only in the candidate: ignored
    assert compare.main([base, cand]) == 0
    out = capsys.readouterr().out
    assert "1 cells matched on config_id + q" in out
    assert "| config | q |" in out
    assert "| tiled[tile=4] | 32 | 100 [99.5, 100.5] | 90 [89.5, 90.5] |" in out  # the candidate's label
    assert compare.main([base, cand, "--fail-on-regression", "5"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "regression beyond noise and 5%: tiled[tile=4] q=32 (-10.0%)" in err


def test_config_ids_that_look_like_numbers_match_as_text(tmp_path, capsys):
    # "0691410123509140" alone in a column would read as an integer (losing its 0), "4e12..." as a float.
    ids = ["0691410123509140", "4e12345678901234"]
    base = _sweep(tmp_path / "a.csv", [(cid, f"s{i}", 1, "ok", 100.0) for i, cid in enumerate(ids)])
    cand = _sweep(tmp_path / "b.csv", [(cid, f"s{i}", 1, "ok", 100.0) for i, cid in enumerate(ids)] +
                  [("abcdef0123456789", "other", 1, "ok", 100.0)])  # the candidate's column is text anyway
    assert compare.main([base, cand, "--fail-on-regression", "5"]) == 0
    assert "2 cells matched on config_id + q" in capsys.readouterr().out


def test_29_of_30_failed_cells_fail_the_gate(tmp_path, capsys):
    base = _sweep(tmp_path / "a.csv", _grid())
    cells = _grid("failed", None)
    cells[0] = (*cells[0][:3], "ok", 100.0)  # full_batch q=1 ran
    cand = _sweep(tmp_path / "b.csv", cells)
    assert compare.main([base, cand, "--fail-on-regression", "5"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("29 of the baseline's ok cells are not answered by b.csv (1 matched on config_id + q): ")
    assert "full_batch q=2 (failed)" in err
    assert "tiled q=32 (failed)" in err
    assert "full_batch q=1 " not in err  # the one that ran is fine
    assert compare.main([base, cand]) == 0  # without a gate: listed under the table
    out = capsys.readouterr().out
    assert "1 cells matched on config_id + q" in out
    assert "Not ok on the candidate side (29 of the baseline's ok cells): full_batch q=2 (failed), " in out


def test_all_failed_fails_the_gate_even_with_allow_different(tmp_path, capsys):
    base = _sweep(tmp_path / "a.csv", _grid(), device_kind="H100", dataset_fingerprint="d")
    cand = _sweep(tmp_path / "b.csv", _grid("failed", None), device_kind="H200", dataset_fingerprint="d")
    for extra in ([], ["--allow-different"]):
        assert compare.main([base, cand, "--fail-on-regression", "5", *extra]) == 1, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert "30 of the baseline's ok cells are not answered by b.csv (0 matched on config_id + q)" in err
    # Half of them ran, on another device: refused (2) unless allowed, and then the other half fails the gate (1).
    half = [(cid, config, q, "ok" if q <= 4 else "does_not_fit", 100.0 if q <= 4 else None) for cid, config, q, _, _ in _grid()]
    cand = _sweep(tmp_path / "c.csv", half, device_kind="H200", dataset_fingerprint="d")
    assert compare.main([base, cand, "--fail-on-regression", "5"]) == 2
    assert "differ in device_kind (H100 vs H200)" in capsys.readouterr().err
    assert compare.main([base, cand, "--fail-on-regression", "5", "--allow-different"]) == 1
    err = capsys.readouterr().err
    assert "15 of the baseline's ok cells are not answered" in err
    assert "tiled q=32 (does_not_fit)" in err


def test_a_baseline_cell_missing_on_the_candidate_side_fails_the_gate(tmp_path, capsys):
    base = _sweep(tmp_path / "a.csv", [("c4d5", "tiled", 4, "ok", 100.0), ("c4d5", "tiled", 8, "ok", 100.0),
                                       ("c4d5", "tiled", 16, "failed", None)])  # failed on the baseline: nothing to keep
    cand = _sweep(tmp_path / "b.csv", [("c4d5", "tiled", 4, "ok", 100.0)])
    assert compare.main([base, cand, "--fail-on-regression", "5"]) == 1
    err = capsys.readouterr().err
    assert err == "1 of the baseline's ok cells are not answered by b.csv (1 matched on config_id + q): tiled q=8 (missing)\n"
    assert compare.main([base, cand]) == 0
    out = capsys.readouterr().out
    assert "Missing on the candidate side (1 of the baseline's ok cells): tiled q=8.\n" in out
    assert "q=16" not in out


def test_a_gate_that_compares_nothing_does_not_pass(tmp_path, capsys):
    base = _sweep(tmp_path / "a.csv", _grid())
    other = _sweep(tmp_path / "b.csv", [(cid + "x", config, q, status, v) for cid, config, q, status, v in _grid()])
    assert compare.main([base, other]) == 0
    out = capsys.readouterr().out
    assert "No cell is in both matrices (matched on config_id + q)." in out
    assert "Missing on the candidate side (30 of the baseline's ok cells)" in out
    assert compare.main([base, other, "--fail-on-regression", "5"]) == 1  # every baseline cell is missing
    assert "30 of the baseline's ok cells are not answered by b.csv (0 matched" in capsys.readouterr().err
    failed_base = _sweep(tmp_path / "c.csv", _grid("failed", None))
    assert compare.main([failed_base, base, "--fail-on-regression", "5"]) == 2  # nothing to gate against
    err = capsys.readouterr().err
    assert err == "error: c.csv has no ok cell: the gate would compare nothing, and a gate that compares nothing does not pass\n"
    assert compare.main([failed_base, base]) == 0  # a plain comparison just says so
    assert "No cell is in both matrices" in capsys.readouterr().out


def test_two_engines_share_no_config_id_and_match_by_label_on_request(tmp_path, capsys):
    pallas = _sweep(tmp_path / "a.csv", [("p1", "tiled", 8, "ok", 100.0), ("p2", "full_batch", 8, "ok", 100.0)], engine="pallas")
    fused = _sweep(tmp_path / "b.csv", [("f1", "tiled", 8, "ok", 100.0), ("f2", "full_batch", 8, "ok", 100.0)], engine="fused")
    assert compare.main([pallas, fused, "--fail-on-regression", "5"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "Matched on config + q (--match config), 2 cells would pair instead of 0" in err
    assert compare.main([pallas, fused, "--fail-on-regression", "5", "--match", "config"]) == 0
    assert "2 cells matched on config + q" in capsys.readouterr().out
    original_like = _write(tmp_path, "o.csv", "strategy,q,batch_qps\ntiled,8,1\n")
    assert compare.main([original_like, fused, "--match", "config_id"]) == 2
    assert capsys.readouterr().err == "error: --match config_id: the baseline has no config_id column\n"


@pytest.mark.parametrize("flag, value", [("--fail-on-regression", "nan"), ("--fail-on-regression", "inf"),
                                         ("--fail-on-regression", "-1"), ("--same-within", "nan"),
                                         ("--same-within", "-inf"), ("--same-within", "-0.5")])
def test_a_nan_infinite_or_negative_threshold_is_a_one_line_error(tmp_path, capsys, flag, value):
    good = _sweep(tmp_path / "a.csv", [("c4d5", "tiled", 8, "ok", 100.0)])
    assert compare.main([good, good, f"{flag}={value}"]) == 2  # '=': argparse reads a separate "-inf" as an option
    err = capsys.readouterr().err
    assert err == f"error: {flag} takes a finite percentage >= 0, got {float(value):g}\n"


@pytest.mark.parametrize("column, value, expect", [
    ("batch_qps", float("nan"), "column batch_qps: no value in a row whose status is ok"),
    ("batch_qps", -3.0, "column batch_qps: -3 is negative"),
    ("batch_qps", 0.0, "column batch_qps: 0 is zero"),
    ("batch_qps", float("inf"), "column batch_qps: inf is not a finite number"),
    ("batch_qps_lo", float("-inf"), "column batch_qps_lo: -inf is not a finite number"),
    ("batch_qps_lo", -1.0, "column batch_qps_lo: -1 is negative"),
    ("batch_qps_lo", 100.5, "column batch_qps_lo: 100.5 is above the value 100"),
    ("batch_qps_hi", 99.0, "column batch_qps_hi: 99 is below the value 100"),
    ("batch_qps_hi", float("nan"), "column batch_qps_hi: missing while batch_qps_lo is set"),
])
def test_a_bad_metric_value_is_a_one_line_error_naming_file_cell_and_column(tmp_path, capsys, column, value, expect):
    good = _sweep(tmp_path / "good.csv", [("c4d5", "tiled", 4, "ok", 100.0), ("c4d5", "tiled", 8, "ok", 100.0)])
    df = pd.read_csv(good)
    df.loc[df.q == 8, column] = value
    df.to_csv(tmp_path / "bad.csv", index=False)
    for args in ([good, str(tmp_path / "bad.csv")], [str(tmp_path / "bad.csv"), good, "--fail-on-regression", "5"]):
        assert compare.main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert err.startswith("error: bad.csv: cell tiled q=8, " + expect), err


def test_failed_rows_may_lack_numbers_and_point_estimates_may_lack_bounds(tmp_path, capsys):
    base = _sweep(tmp_path / "a.csv", [("c4d5", "tiled", 4, "ok", 100.0), ("c4d5", "tiled", 8, "killed", None)])
    df = pd.read_csv(base)
    df.loc[df.q == 4, ["batch_qps_lo", "batch_qps_hi"]] = float("nan")  # no interval: a point estimate
    df.to_csv(tmp_path / "points.csv", index=False)
    assert compare.main([str(tmp_path / "points.csv"), base, "--fail-on-regression", "5"]) == 0
    assert "1 cells matched on config_id + q; intervals from a.csv; points.csv has none" in capsys.readouterr().out


def test_help_has_a_whole_first_sentence_and_says_what_each_argument_is(capsys):
    with pytest.raises(SystemExit) as exit_:
        compare.main(["--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    sentence = compare.first_sentence(compare.__doc__ or "")
    assert sentence == ("Compare two result matrices cell by cell, with the noise each side recorded (a separate tool: "
                        "reports only format their own sweep).")
    assert sentence in out
    assert "baseline the reference matrix: a sweep's matrix.csv, or the original's published CSV" in out
    assert "candidate the matrix judged against it" in out
    assert "--metric METRIC the column compared" in out
    assert "exit 2 when the baseline has no ok cell" in out


def test_an_undecidable_regression_does_not_pass_the_gate(tmp_path, capsys):
    """Issue 30 item 9: 50% slower on a wide interval is exit 3 (1 with --fail-on-undecided), never 0."""
    a = _ours(tmp_path / "a.csv", {("full_batch", 32): (100.0, 1.0)})
    b = _ours(tmp_path / "b.csv", {("full_batch", 32): (50.0, 49.0)})  # [1, 99]: not enough evidence
    assert compare.main([str(a), str(b), "--fail-on-regression", "5"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "intervals too wide to decide" in err and "full_batch q=32 (-50.0%" in err
    assert compare.main([str(a), str(b), "--fail-on-regression", "5", "--fail-on-undecided"]) == 1
    c = _ours(tmp_path / "c.csv", {("full_batch", 32): (99.0, 49.0)})  # wide, but its point estimate within 5%
    assert compare.main([str(a), str(c), "--fail-on-regression", "5"]) == 0


def test_a_cell_without_exact_parity_is_not_ok(tmp_path, capsys):
    """Issue 30 item 9: a candidate cell with parity_ok=0 is a lost cell (the gate fails), not a compared one."""
    a = _ours(tmp_path / "a.csv", {("full_batch", 32): (100.0, 1.0)})
    b = _ours(tmp_path / "b.csv", {("full_batch", 32): (100.0, 1.0)})
    df = pd.read_csv(b).assign(parity_ok=0)
    df.to_csv(b, index=False)
    assert compare.main([str(a), str(b), "--fail-on-regression", "5"]) == 1
    assert "not answered" in capsys.readouterr().err
