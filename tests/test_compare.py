"""The comparison tool lines our matrices up with the original's published one."""

from __future__ import annotations

from pathlib import Path

import pytest

from morphogen_exp import compare

REPO = Path(__file__).resolve().parents[1]


def test_ours_against_the_original_matrix(fixtures_dir, tmp_path):
    original = compare.read_matrix(fixtures_dir / "original-task30-h100-matrix.csv")
    assert len(original) == 30  # its two quoted header lines are skipped
    ours = compare.read_matrix(REPO / "docs" / "example-report" / "matrix.csv")
    table = compare.compare(original, ours, "batch_qps")
    assert len(table) == 30  # every (original strategy name, q) cell matched
    row = table[(table.strategy == "multi_stream_4") & (table.q == 32)].iloc[0]
    assert row.batch_qps_baseline == pytest.approx(33.75)
    assert row.ratio == pytest.approx(row.batch_qps_candidate / 33.75)
    out = tmp_path / "cmp.md"
    assert compare.main([str(fixtures_dir / "original-task30-h100-matrix.csv"),
                         str(REPO / "docs/example-report/matrix.csv"), "--out", str(out)]) == 0
    assert "| multi_stream_4 |" in out.read_text() or "multi_stream_4" in out.read_text()


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    assert compare.main([str(tmp_path / "x.csv"), str(tmp_path / "x.csv")]) == 2
    assert "no 'strategy,...' header" in capsys.readouterr().err
    assert compare.main([str(tmp_path / "missing.csv"), str(tmp_path / "x.csv")]) == 2
    assert "is not a file" in capsys.readouterr().err
