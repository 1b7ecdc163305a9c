"""The bit-sliced engine in the orchestrator: its database layout built once per database (streamed,
the raw pages never resident), real cells and a sweep with exact parity, the oracle's fold independent
of the layout, the memory estimate and the engine benchmark."""

from __future__ import annotations

import csv
import dataclasses
import gc
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from morphogen_exp.bench.__main__ import main as bench_main
from morphogen_exp.config import DatasetConfig, ParityConfig
from morphogen_exp.measure import datasets, memory, parity
from morphogen_exp.measure.queries import KEYS_PER_QUERY, make_queries
from morphogen_exp.pir import EngineSpec, backend, bitsliced, bitsliced_ops, get, make_answer_fn, tile_size
from morphogen_exp.pir.engine import mask_working_set_bytes, raw_database_bytes
from morphogen_exp.run import cell as app
from morphogen_exp.run.session import Session

from .conftest import mlflow_runs

BITSLICED = get("bitsliced")
LAYOUT = BITSLICED.layout
SPEC = EngineSpec("bitsliced", 33554432, None, mask_budget_mib=1536)  # conf/engine/bitsliced.yaml
TINY = DatasetConfig(name="tiny", num_pages=300)


def _one_shot(words: np.ndarray) -> np.ndarray:
    return np.asarray(bitsliced.bitslice_pages(jnp.asarray(words), words.shape[0]).words)


def test_dataset_layout_streamed_in_groups_equals_one_shot(monkeypatch, tmp_path):
    """datasets.load(layout=) builds the engine's database group by group from the generator (or the
    file): equal to the one-shot transform of the pages' numpy twin; raw_rows regenerates raw pages."""
    monkeypatch.setattr(bitsliced, "GROUP_PAGES", 256)  # 700 pages: 3 groups, the last ragged
    cfg = DatasetConfig(name="t", num_pages=700)
    ds = datasets.load(cfg, 5, LAYOUT)
    want = datasets.synthetic_words_numpy(5, np.arange(700))
    assert not ds.is_raw and ds.layout.endswith("bitsliced_ops.layout_fn") and ds.layout_build_s > 0
    assert ds.words.shape == (768, 1024)
    np.testing.assert_array_equal(np.asarray(ds.words), _one_shot(want))
    np.testing.assert_array_equal(np.asarray(ds.raw_rows(250, 600)), want[250:600])

    path = tmp_path / "m.bin"  # a file of 600 pages and 100 bytes: the last page zero-padded
    data = np.random.default_rng(1).integers(0, 256, 600 * 4096 + 100, dtype=np.uint8)
    path.write_bytes(data.tobytes())
    fds = datasets.load(DatasetConfig(name="f", num_pages=1, path=str(path)), 0, LAYOUT)
    pages = np.zeros(601 * 4096, np.uint8)
    pages[: data.size] = data
    words = pages.view("<u4").reshape(601, 1024)
    assert fds.num_pages == 601
    np.testing.assert_array_equal(np.asarray(fds.words), _one_shot(words))
    np.testing.assert_array_equal(np.asarray(fds.raw_rows(590, 601)), words[590:])


def test_layout_built_once_per_database_and_one_resident(make_cfg, workdir, monkeypatch):
    """Cells on one database share its layout (built once, its build time on each cell); the oracle
    above numpy_reference_max_pages folds regenerated raw pages; a change of layout releases the old."""
    calls: list[int] = []
    real = bitsliced_ops.bitslice_rows

    def counted(read, num_pages, *args, **kw):
        calls.append(num_pages)
        return real(read, num_pages, *args, **kw)

    monkeypatch.setattr(bitsliced_ops, "bitslice_rows", counted)
    own = Session()
    out1 = app.run(make_cfg("engine=bitsliced", "q=2", "parity.numpy_reference_max_pages=64"), own)
    assert out1.status == "ok", out1.error
    out2 = app.run(make_cfg("engine=bitsliced", "strategy=tiled", "q=2"), own)
    assert out2.status == "ok", out2.error
    assert calls == [300]
    runs = {r.data.tags["strategy"]: r for r in mlflow_runs(workdir)}
    a, b = runs["full_batch"].data, runs["tiled"].data
    assert a.tags["engine"] == "bitsliced" and a.tags["dataset.layout"].endswith("layout_fn")
    assert a.metrics["layout_build_s"] > 0 and a.metrics["layout_build_s"] == b.metrics["layout_build_s"]
    assert a.tags["parity_numpy_note"].startswith("numpy DPF, pages folded on the device")
    # what the engine's step runs here, recorded: 6 and 3 keys, the pipelined kernel on a GPU
    here = ("cuda expansion beside binary MMA (one pipelined kernel)" if jax.default_backend() == "gpu"
            else "xla expansion + jnp GF(2) product (no CUDA backend)")
    assert a.tags["engine_path.batch"] == a.tags["engine_path.single"] == b.tags["engine_path.batch"] == here
    assert BITSLICED.step_path is bitsliced_ops.step_path
    for m in (a.metrics, b.metrics):
        assert m["parity_ok"] == 1 and m["parity_numpy_eq"] == 1 and m["parity_xor_eq"] == 1 and m["parity_xor_checked"] == 2

    old = weakref.ref(own.dataset)
    raw = own.database(app.validate(make_cfg()).dataset, 0)  # another layout (raw pages) replaces it
    gc.collect()
    assert old() is None and raw.is_raw and not own.contexts
    assert app.run(make_cfg("engine=bitsliced", "q=2"), own).status == "ok"
    assert calls == [300, 300]


def test_step_path_names_what_a_step_runs(monkeypatch) -> None:
    """The dispatch and each cell's record read one function: on a GPU the pipelined kernel up to 8 keys (Q <= 2),
    the two kernels in a row above; without a GPU the XLA expansion and the jnp product."""
    monkeypatch.setattr(backend, "on_gpu", lambda: False)
    assert bitsliced_ops.step_path(3) == bitsliced_ops.step_path(96) == bitsliced_ops.JNP_PATH
    monkeypatch.setattr(backend, "on_gpu", lambda: True)
    got = {k: bitsliced_ops.step_path(k) for k in (1, 3, 8, 9, 96)}
    assert got == {1: bitsliced_ops.PIPELINED_PATH, 3: bitsliced_ops.PIPELINED_PATH, 8: bitsliced_ops.PIPELINED_PATH,
                   9: bitsliced_ops.CUDA_PATH, 96: bitsliced_ops.CUDA_PATH}
    assert len({bitsliced_ops.PIPELINED_PATH, bitsliced_ops.CUDA_PATH, bitsliced_ops.JNP_PATH}) == 3


def test_oracle_fold_never_reads_the_layout():
    """A corrupted layout gives wrong engine answers; the large-database oracle (numpy DPF, pages
    regenerated from the generator) and the XOR check both catch it, and pass on the intact layout."""
    ds = datasets.load(TINY, 0, LAYOUT)
    qs = make_queries(ds.domain_bits, ds.num_pages, 0, 1)
    fn = make_answer_fn(ds.num_pages, SPEC)
    cfg = ParityConfig(numpy_reference_max_pages=64)

    def answers(d: datasets.Dataset, party: int) -> np.ndarray:
        return np.stack([np.asarray(fn(d.words, kb)) for kb in jax.device_put(qs.batches[party]).unstack()])

    good = parity.check(cfg, ds, qs, answers(ds, 0), answers(ds, 0), answers(ds, 1), {})
    assert good.ok and good.numpy_checked == 1 and good.numpy_note.startswith("numpy DPF")
    bad_ds = dataclasses.replace(ds, words=ds.words.at[5, 7].set(~ds.words[5, 7]))  # 32 pages' bits flipped
    single = answers(bad_ds, 0)
    bad = parity.check(cfg, bad_ds, qs, single, single, answers(bad_ds, 1), {})
    assert not bad.numpy_eq and not bad.xor_eq and bad.batch_eq_single


def test_memory_estimate_knows_the_layout_and_its_scratch(make_cfg, workdir, sess):
    n = 16_817_159  # mainnet
    rc = app.validate(make_cfg("dataset=mainnet", "engine=bitsliced", "q=32"))
    assert (rc.engine.tile_pages, rc.engine.mask_budget_mib) == (SPEC.tile_pages, SPEC.mask_budget_mib)
    assert BITSLICED.database_bytes(n) == 65_693 * 256 * 4096  # padded to 256 pages (65,692 chunks and 7 pages)
    assert get("xla").database_bytes(n) == raw_database_bytes(n)
    tile = lambda k: tile_size(n, 25, SPEC, k)  # noqa: E731
    assert tile(96) == 1 << 20 and tile(3) == 1 << 25  # Q=1: mainnet in one step (2^25 > N)
    roots = mask_working_set_bytes(KEYS_PER_QUERY * 32, lambda k: tile(k) // 256)  # one subtree root per 256 leaves, no masks
    scratch = BITSLICED.working_set_bytes(KEYS_PER_QUERY * 32, tile) - roots
    # the per-bit page vectors the expansion writes: chunks a tile can touch x 128 bits x 12 key tiles of 64 words
    assert scratch == ((1 << 20) // 256 + 1) * 128 * 12 * 64 * 4
    # 3 keys: one pipelined kernel, at most 192 blocks, each two groups of 8 chunks x 128 bits x 3 keys x 8 words
    # (the two kernels in a row would hold (2^25 / 256 + 1) x 128 x 64 words: 2.1 GiB)
    roots1 = mask_working_set_bytes(KEYS_PER_QUERY * 1, lambda k: tile(k) // 256)
    assert BITSLICED.working_set_bytes(KEYS_PER_QUERY * 1, tile) - roots1 == 192 * 2 * 8 * 128 * 3 * 8 * 4
    assert roots + scratch < mask_working_set_bytes(KEYS_PER_QUERY * 32, tile)
    need = memory.engine_need_bytes(BITSLICED, n, 32, tile)
    build = BITSLICED.build_bytes(n)
    assert build > roots + scratch  # the layout's 2 GiB build scratch outweighs a Q=32 scan's 1.5 GiB of vectors
    assert need == BITSLICED.database_bytes(n) + build
    assert need < 75 * memory.GIB  # fits an 80 GB card at 0.95 of its memory; raw + layout would not
    assert raw_database_bytes(n) + BITSLICED.database_bytes(n) > 80 * memory.GIB
    assert build == 2 * (1 << 18) * 4096  # one raw group + its sliced copy
    assert BITSLICED.build_bytes(300) == 2 * 512 * 4096  # a group no larger than the database
    assert memory.engine_need_bytes(BITSLICED, 300, 1, lambda k: 2) == 512 * 4096 + 2 * 512 * 4096
    out = app.run(make_cfg("dataset=mainnet", "engine=bitsliced", "q=1", "bench.memory_cap_gib=64"), sess)
    assert out.status == "does_not_fit"  # refused before building anything


def test_bench_engine_runs_bitsliced(tmp_path, capsys):
    out = tmp_path / "engine.csv"
    assert bench_main(["engine", "--pages", "300", "--keys", "3", "--engines", "bitsliced", "--repeats", "1",
                       "--csv", str(out)]) == 0
    text = capsys.readouterr().out
    assert "bitsliced: database layout built in" in text

    rows = list(csv.DictReader(out.open()))
    assert [r["what"] for r in rows] == ["full_eval", "scan"]
    assert all(r["engine"] == "bitsliced" and float(r["layout_build_s"]) > 0 for r in rows)


def test_cli_cell_and_sweep_with_bitsliced_are_exact(cli_here, workdir):
    """The real CLI: one cell, then a 3-strategy sweep in one process (the database's layout built once:
    every cell records the same layout_build_s), every cell exact against the oracles."""
    res = cli_here("engine=bitsliced", "strategy=full_batch", "q=2")
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = mlflow_runs(workdir)
    m = run.data.metrics
    assert run.data.tags["engine"] == "bitsliced" and run.info.status == "FINISHED"
    assert m["parity_ok"] == 1 and m["parity_numpy_eq"] == 1 and m["parity_xor_eq"] == 1 and m["layout_build_s"] > 0
    # its own layout (not the raw pages another engine could share): tiny's 300 pages padded to 2 chunks of 256
    assert run.data.tags["database_layout"] == "bitsliced layout" and m["database_gib"] * 2**30 == 512 * 4096

    res = cli_here("-m", "engine=bitsliced", "strategy=full_batch,micro_batch,tiled", "q=2")
    assert res.returncode == 0, res.stderr[-3000:]
    cells = [r for r in mlflow_runs(workdir) if r.data.tags.get("strategy") and r.info.run_id != run.info.run_id]
    assert sorted(r.data.tags["strategy"] for r in cells) == ["full_batch", "micro_batch", "tiled"]
    for r in cells:
        assert r.info.status == "FINISHED" and r.data.tags["engine"] == "bitsliced"
        assert r.data.metrics["parity_ok"] == 1 and r.data.metrics["parity_numpy_eq"] == 1
    assert len({r.data.metrics["layout_build_s"] for r in cells}) == 1


@pytest.mark.parametrize("engine", ["xla", "bitsliced"])
def test_raw_rows_of_a_raw_database_are_its_words(engine):
    """raw_rows is the same function of the pages whatever the layout (what the fold relies on)."""
    ds = datasets.load(TINY, 2, get(engine).layout)
    np.testing.assert_array_equal(np.asarray(ds.raw_rows(10, 300)), datasets.synthetic_words_numpy(2, np.arange(10, 300)))


def test_the_layout_engine_validates_on_every_placement(make_cfg):
    """bitsliced builds its layout per device (tests/test_placement.py runs it), so no placement is refused."""
    from morphogen_exp.run import cell as app

    for name in ("single", "replicated", "sharded"):
        assert app.validate(make_cfg("engine=bitsliced", f"placement={name}")).placement.name == name
