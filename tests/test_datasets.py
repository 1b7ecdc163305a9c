"""Dataset identity that cannot miss a change, and parity that reports only what it checked.

A page file's fingerprint is its whole contents (sha256), cached by stat key in this process and on
disk; the session reloads a file that changed and fails a cell whose file changed under it. Parity
records a check that did not run as not checked, and the report says so."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from morphogen_exp.config import DatasetConfig
from morphogen_exp.decide import report
from morphogen_exp.measure import datasets, parity
from morphogen_exp.record import tracking
from morphogen_exp.run import cell as app
from morphogen_exp.run.session import Session

from .conftest import mlflow_runs

MIB = 1 << 20


@pytest.fixture(autouse=True)
def fresh_identity_state(tmp_path, monkeypatch) -> Path:
    """Each test starts with empty fingerprint caches: its own on-disk cache file, nothing in memory."""
    cache = tmp_path / "cache" / "fingerprints.json"
    monkeypatch.setenv("MORPHOGEN_FINGERPRINT_CACHE", str(cache))
    monkeypatch.setattr(datasets, "_memo", {})
    monkeypatch.setattr(datasets, "_recorded", {})
    return cache


@pytest.fixture
def cache_any(monkeypatch) -> None:
    """Cache every hash, even of a file written a moment ago (a test's files are; see _RACY_NS)."""
    monkeypatch.setattr(datasets, "_RACY_NS", -(10**18))


@pytest.fixture
def hash_calls(monkeypatch) -> list[Path]:
    """Every whole-file hash, by path."""
    calls: list[Path] = []
    real = datasets._hash_file

    def counting(path: Path) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(datasets, "_hash_file", counting)
    return calls


def page_file(path: Path, pages: int, seed: int = 0) -> Path:
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, pages * datasets.PAGE_BYTES, dtype=np.uint8).tobytes())
    return path


def flip(path: Path, offset: int) -> None:
    """Invert one byte in place: same size, same inode."""
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0xFF]))


def cfg_for(path: Path) -> DatasetConfig:
    return DatasetConfig(name="file", num_pages=1, path=str(path))


# --------------------------------------------------------------------------- fingerprints

def test_a_byte_changed_at_2_mib_of_an_8_mib_file_changes_the_fingerprint(tmp_path):
    # The sampled fingerprint (size + first, middle and last MiB) never read offset 2 MiB.
    path = page_file(tmp_path / "pages.bin", 8 * MIB // datasets.PAGE_BYTES)
    before = datasets.fingerprint(cfg_for(path), 0)
    st = path.stat()
    flip(path, 2 * MIB)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back: only the contents (and ctime) moved
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    after = datasets.fingerprint(cfg_for(path), 0)
    assert after != before
    assert before.startswith("file:sha256=") and before.endswith(f":size={8 * MIB}")
    flip(path, 2 * MIB)  # back to the first contents: the first fingerprint again
    assert datasets.fingerprint(cfg_for(path), 0) == before


def test_the_same_file_is_hashed_once_per_process_and_once_per_machine(tmp_path, hash_calls, cache_any, fresh_identity_state,
                                                                      monkeypatch):
    path = page_file(tmp_path / "pages.bin", 5)
    first = datasets.fingerprint(cfg_for(path), 0)
    assert datasets.fingerprint(cfg_for(path), 7) == first  # another cell, another seed: the same file
    assert len(hash_calls) == 1
    entries = json.loads(fresh_identity_state.read_text())["entries"]
    assert [v["sha256"] for v in entries.values()] == [first.split("sha256=")[1].split(":")[0]]
    monkeypatch.setattr(datasets, "_memo", {})  # a new process: the on-disk cache answers
    assert datasets.fingerprint(cfg_for(path), 0) == first
    assert len(hash_calls) == 1


def test_a_touched_file_with_the_same_contents_keeps_its_fingerprint(tmp_path, hash_calls, cache_any):
    path = page_file(tmp_path / "pages.bin", 3)
    first = datasets.fingerprint(cfg_for(path), 0)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # touch
    assert datasets.fingerprint(cfg_for(path), 0) == first
    assert len(hash_calls) == 2  # the stat key moved: hashed again, not trusted from the cache


def test_a_file_modified_just_before_hashing_is_not_cached(tmp_path, hash_calls):
    # A write in the same clock tick as the hash would leave the stat key unchanged: never cache such a hash.
    path = page_file(tmp_path / "pages.bin", 2)
    a = datasets.fingerprint(cfg_for(path), 0)
    assert datasets.fingerprint(cfg_for(path), 0) == a and len(hash_calls) == 2
    flip(path, 5)
    assert datasets.fingerprint(cfg_for(path), 0) != a


def test_an_unwritable_cache_never_fails_a_run(tmp_path, hash_calls, cache_any, monkeypatch):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("MORPHOGEN_FINGERPRINT_CACHE", str(tmp_path / "a-file" / "fingerprints.json"))  # not a directory
    path = page_file(tmp_path / "pages.bin", 2)
    fp = datasets.fingerprint(cfg_for(path), 0)
    assert datasets.fingerprint(cfg_for(path), 0) == fp and len(hash_calls) == 1  # the process still remembers it


def test_a_corrupt_cache_file_is_ignored(tmp_path, hash_calls, cache_any, fresh_identity_state):
    fresh_identity_state.parent.mkdir(parents=True)
    fresh_identity_state.write_text("{not json")
    path = page_file(tmp_path / "pages.bin", 2)
    fp = datasets.fingerprint(cfg_for(path), 0)
    assert len(hash_calls) == 1 and json.loads(fresh_identity_state.read_text())["version"] == 1
    assert fp.startswith("file:sha256=")


def test_synthetic_fingerprint_is_generator_version_pages_and_seed():
    fp = datasets.fingerprint(DatasetConfig(name="tiny", num_pages=300), 3)
    assert fp == f"synthetic-v{datasets.SYNTHETIC_VERSION}:pages=300:seed=3"
    assert fp != datasets.fingerprint(DatasetConfig(name="tiny", num_pages=300), 4)
    assert fp != datasets.fingerprint(DatasetConfig(name="tiny", num_pages=301), 3)


# --------------------------------------------------------------------------- the session's resident copy

def test_the_session_reloads_a_file_that_changed(tmp_path):
    path = page_file(tmp_path / "pages.bin", 3)
    sess, cfg = Session(), cfg_for(path)
    first = sess.database(cfg, 0)
    assert first.fingerprint == datasets.fingerprint(cfg, 0) and first.stat == datasets.stat_key(path)
    assert sess.database(cfg, 0) is first  # unchanged: the resident copy
    old_word = int(np.asarray(first.words)[1, 0])
    datasets.verify(first)

    flip(path, datasets.PAGE_BYTES)  # page 1, byte 0
    with pytest.raises(datasets.DatasetChanged, match="changed after it was loaded"):
        datasets.verify(first)  # the old device copy no longer matches the file
    second = sess.database(cfg, 0)
    assert second is not first and second.fingerprint != first.fingerprint
    assert int(np.asarray(second.words)[1, 0]) == old_word ^ 0xFF  # the new contents are on the device
    datasets.verify(second)

    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # touched, same contents
    third = sess.database(cfg, 0)
    assert third is not second and third.fingerprint == second.fingerprint  # reloaded on a stat change
    datasets.verify(third)


def test_a_file_changed_after_the_cell_recorded_its_identity_is_refused(tmp_path):
    path = page_file(tmp_path / "pages.bin", 2)
    sess, cfg = Session(), cfg_for(path)
    recorded = datasets.fingerprint(cfg, 0)  # what identity_tags records at the start of a cell
    flip(path, 9)
    with pytest.raises(datasets.DatasetChanged, match="changed after this cell recorded its identity"):
        sess.database(cfg, 0)
    assert sess.dataset is None
    now = datasets.fingerprint(cfg, 0)  # the next cell records the new contents, and loads them
    assert now != recorded and sess.database(cfg, 0).fingerprint == now
    flip(path, 9)  # nothing recorded since that load: a plain reload
    assert sess.database(cfg, 0).fingerprint == recorded


def test_a_cell_whose_file_changes_while_it_runs_fails_with_the_reason(make_cfg, workdir, sess, monkeypatch):
    path = page_file(workdir / "pages.bin", 300)  # tiny's shape: the programs compiled for it serve
    real = parity.check

    def change_then_check(*args, **kwargs):
        flip(path, 4096 * 7 + 11)  # after the timed samples, before parity reads the file back
        return real(*args, **kwargs)

    monkeypatch.setattr(parity, "check", change_then_check)
    out = app.run(make_cfg(f"dataset.path={path}", "q=1", "strategy=full_batch"), sess)
    assert out.status == "failed" and "DatasetChanged" in out.error and "changed after it was loaded" in out.error
    (run,) = mlflow_runs(workdir)
    assert run.info.status == "FAILED" and run.data.tags["error_class"] == "DatasetChanged"
    assert "batch_qps" not in run.data.metrics  # no numbers recorded under the old identity

    monkeypatch.setattr(parity, "check", real)
    again = app.run(make_cfg(f"dataset.path={path}", "q=1", "strategy=full_batch"), sess)
    assert again.status == "ok", again.error
    runs = {r.info.run_id: r for r in mlflow_runs(workdir)}
    tags = runs[again.run_id].data.tags
    assert tags["dataset.fingerprint"] == datasets.fingerprint(make_cfg(f"dataset.path={path}").dataset, 0)
    assert tags["dataset.fingerprint"] != run.data.tags["dataset.fingerprint"]


# --------------------------------------------------------------------------- parity: only what was checked

def test_parity_metrics_tell_equal_different_and_not_checked_apart():
    def rep(**kw) -> parity.ParityReport:
        base = dict(checksum_single=1, checksum_batch=1, sha256_batch="", batch_eq_single=True,
                    numpy_checked=0, numpy_eq=None, xor_checked=0, xor_eq=None)
        return parity.ParityReport(**{**base, **kw})

    off = rep().as_metrics()
    assert off["parity_numpy_checked"] == 0 and off["parity_xor_checked"] == 0
    assert "parity_numpy_eq" not in off and "parity_xor_eq" not in off
    same = rep(numpy_checked=1, numpy_eq=True, xor_checked=2, xor_eq=True).as_metrics()
    assert same["parity_numpy_eq"] == 1 and same["parity_xor_eq"] == 1 and same["parity_xor_checked"] == 2
    diff = rep(numpy_checked=1, numpy_eq=False, xor_checked=2, xor_eq=False).as_metrics()
    assert diff["parity_numpy_eq"] == 0 and diff["parity_xor_eq"] == 0


def test_a_cell_with_both_independent_checks_off_records_them_as_not_checked(make_cfg, workdir, sess):
    out = app.run(make_cfg("q=2", "strategy=full_batch", "parity.numpy_reference_queries=0", "parity.xor_check=false"), sess)
    assert out.status == "ok", out.error
    (run,) = mlflow_runs(workdir)
    m = run.data.metrics
    assert m["parity_numpy_checked"] == 0 and "parity_numpy_eq" not in m
    assert m["parity_xor_checked"] == 0 and "parity_xor_eq" not in m
    assert m["parity_ok"] == 1 and m["parity_batch_eq_single"] == 1 and m["checksum_match"] == 1
    assert run.data.tags["parity_numpy_note"].startswith("not checked")
    table = report._status_table(tracking.cells_frame([run]))
    assert "exact (numpy 0q: not checked, xor not checked, checksum =)" in table and "ok" not in table


def test_status_table_says_not_checked_never_ok_for_a_check_that_did_not_run():
    rows = [  # (q, parity metrics as the frame holds them; None: the metric was not logged)
        (1, dict(parity_ok=1, parity_numpy_checked=0, parity_numpy_eq=None, parity_xor_checked=0, parity_xor_eq=None,
                 checksum_match=1)),
        (2, dict(parity_ok=1, parity_numpy_checked=1, parity_numpy_eq=1, parity_xor_checked=2, parity_xor_eq=1,
                 checksum_match=1)),
        (4, dict(parity_ok=0, parity_numpy_checked=1, parity_numpy_eq=0, parity_xor_checked=4, parity_xor_eq=0,
                 checksum_match=0)),
        (8, dict(parity_ok=1, parity_numpy_checked=0, parity_numpy_eq=1, parity_xor_checked=0, parity_xor_eq=1,
                 checksum_match=1)),  # a run from before: "eq" 1 logged for checks that did not run
        (16, dict(parity_ok=1, parity_numpy_checked=1, parity_numpy_eq=1, parity_xor_eq=None, checksum_match=1)),  # no xor count
    ]
    frame = pd.DataFrame([{"config": "full_batch", "q": q, "status": "ok", **m} for q, m in rows]
                         + [{"config": "full_batch", "q": 32, "status": "does_not_fit"}])
    cells = {int(line.split("|")[1]): line.split("|")[2].strip()
             for line in report._status_table(frame).splitlines()[2:]}
    assert cells == {
        1: "exact (numpy 0q: not checked, xor not checked, checksum =)",
        2: "exact (numpy 1q, xor ok, checksum =)",
        4: "MISMATCH (numpy 1q BAD, xor BAD, checksum ≠)",
        8: "exact (numpy 0q: not checked, xor not checked, checksum =)",
        16: "exact (numpy 1q, xor not checked, checksum =)",
        32: "does not fit",
    }
