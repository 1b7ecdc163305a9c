"""The benchmark entry runs and records what it claims (tiny sizes on CPU; timings are not asserted,
what they are computed from is)."""

from __future__ import annotations

import csv

import pytest

from morphogen_exp.bench.__main__ import main
from morphogen_exp.bench.common import int_ops_per_s
from morphogen_exp.pir import available_engines


def _rows(path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def test_bench_engine_writes_rows_with_compile_time_apart(tmp_path, capsys):
    out = tmp_path / "bench.csv"
    assert main(["engine", "--pages", "300", "--keys", "3", "--repeats", "2", "--csv", str(out)]) == 0
    rows = _rows(out)
    assert [r["what"] for r in rows] == ["full_eval", "scan"]
    for r in rows:
        assert float(r["compile_s"]) > 0 and float(r["median_ms"]) > 0 and float(r["copy_gbps"]) > 0
        assert r["pages"] == "300" and r["keys"] == "3" and r["jax_version"] and r["tile_pages"] == "512"
    scan = rows[1]  # GB/s of the scan: the 300 pages it reads (not a whole 512-page tile), per median
    assert float(scan["gbps"]) == pytest.approx(300 * 4096 / (float(scan["median_ms"]) / 1e3) / 1e9, rel=1e-6)
    assert "GB/s" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["engine", "--keys", "three"], "error: --keys"),
    (["engine", "--engines", "xla,nope"], "unknown engine 'nope'"),
    (["breakdown", "--tiles", "100"], "tile_pages=100 must be a power of two"),
    (["blocks", "--grid", "num_warps=x"], "error: --grid"),
    (["engine", "--no-such-flag"], "unrecognized arguments"),
    (["engine", "--pages", "0"], "error: --pages must be >= 1, got 0"),
    (["breakdown", "--keys", "3,0"], "error: --keys must be >= 1, got 0"),
    (["ceilings", "--words", "0"], "error: --words must be >= 1, got 0"),
])
def test_bench_rejects_bad_settings_in_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bench_ceilings_reports_copy_and_integer_rates(capsys):
    assert main(["ceilings", "--words", "65536"]) == 0
    out = capsys.readouterr().out
    assert "GB/s (read+write)" in out and "T ops/s" in out
    assert int_ops_per_s(num_words=4096, chain=4, repeats=2) > 0


def test_bench_breakdown_times_each_part_per_tile_size(tmp_path, capsys):
    out = tmp_path / "breakdown.csv"
    before = available_engines()
    assert main(["breakdown", "--pages", "500", "--keys", "3", "--engine", "xla", "--tiles", "128,256",
                 "--repeats", "1", "--csv", str(out)]) == 0
    rows = _rows(out)
    assert [(r["tile_pages"], r["tiles"], r["tail"], r["what"]) for r in rows] == [
        (t, str(500 // int(t)), str(500 % int(t)), w) for t in ("128", "256") for w in ("xor_only", "expand_only", "top_only", "scan")]
    assert all(float(r["median_ms"]) > 0 and float(r["read_gbps"]) > 0 for r in rows)
    assert available_engines() == before  # the parts' engines are gone again
    assert "read" in capsys.readouterr().out


@pytest.mark.parametrize("cmd, grid, field", [("blocks", "num_warps=1,2", "num_warps"), ("ggm", "levels=1,2", "levels")])
def test_bench_block_searches_check_each_shape_against_xla(tmp_path, capsys, cmd, grid, field):
    """Each Pallas block (interpret mode here) runs through the scan and matches the XLA op bit for bit."""
    out = tmp_path / f"{cmd}.csv"
    assert main([cmd, "--pages", "200", "--keys", "3", "--tile", "64", "--grid", grid, "--repeats", "1", "--csv", str(out)]) == 0
    rows = _rows(out)
    assert sorted(r[field] for r in rows) == ["1", "2"]  # the default shape is one of the grid's
    assert all(r["identical"] == "True" for r in rows)
    assert [float(r["median_ms"]) for r in rows] == sorted(float(r["median_ms"]) for r in rows)
    assert "best:" in capsys.readouterr().out
