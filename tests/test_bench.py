"""The benchmark entry runs and records what it claims (tiny sizes on CPU; numbers are not asserted)."""

from __future__ import annotations

import csv

from morphogen_exp import bench


def test_bench_engine_writes_rows_with_compile_time_apart(tmp_path, capsys):
    out = tmp_path / "bench.csv"
    assert bench.main(["engine", "--pages", "300", "--keys", "3", "--repeats", "2", "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert {r["what"] for r in rows} == {"full_eval", "scan"}
    for r in rows:
        assert float(r["compile_s"]) > 0 and float(r["median_ms"]) > 0 and float(r["copy_gbps"]) > 0
        assert r["pages"] == "300" and r["keys"] == "3" and r["jax_version"]
    assert "GB/s" in capsys.readouterr().out


def test_bench_rejects_bad_key_list(capsys):
    assert bench.main(["engine", "--keys", "three"]) == 2
    assert "error: --keys" in capsys.readouterr().err


def test_bench_ceilings_reports_copy_and_integer_rates(capsys):
    assert bench.main(["ceilings", "--words", "65536"]) == 0
    out = capsys.readouterr().out
    assert "GB/s (read+write)" in out and "T ops/s" in out
    assert bench.int_ops_per_s(num_words=4096, chain=4, repeats=2) > 0


def test_bench_breakdown_times_each_part_per_tile_size(tmp_path, capsys):
    out = tmp_path / "breakdown.csv"
    assert bench.main(["breakdown", "--pages", "512", "--keys", "3", "--engine", "xla", "--tiles", "128,256",
                       "--repeats", "1", "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [(r["tile_pages"], r["tiles"], r["what"]) for r in rows] == [
        (t, str(512 // int(t)), w) for t in ("128", "256") for w in ("xor_only", "expand_only", "top_only", "scan")]
    assert all(float(r["median_ms"]) > 0 and float(r["read_gbps"]) > 0 for r in rows)
    assert "read" in capsys.readouterr().out


def test_bench_blocks_tries_each_shape_and_ranks_them(tmp_path, capsys):
    out = tmp_path / "blocks.csv"
    assert bench.main(["blocks", "--pages", "256", "--keys", "3", "--tile", "128", "--grid", "num_warps=1,2",
                       "--repeats", "1", "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert sorted(r["num_warps"] for r in rows) == ["1", "2"]  # the default shape is one of the grid's
    assert [float(r["median_ms"]) for r in rows] == sorted(float(r["median_ms"]) for r in rows)
    assert "best:" in capsys.readouterr().out
