"""Placement as a sweep axis: the sharded scan against the numpy reference (ragged shards over 2 and
3 virtual CPU devices), the replicated split, the per-device memory arithmetic, the settings, and a
real sweep over single / replicated / sharded x 2 strategies x q=1,4 on two virtual devices.

Several CPU devices exist only when XLA_FLAGS asks before the backend starts, so everything that
needs them runs in a subprocess (`_multi_device` / the `cli` fixture's extra_env)."""

from __future__ import annotations

import csv
import functools
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from morphogen_exp.config import ConfigError
from morphogen_exp.measure import memory
from morphogen_exp.measure import placement as placements
from morphogen_exp.pir.scan import shard_bounds
from morphogen_exp.run.cell import validate

from .conftest import REPO, mlflow_runs

N_PAGES, DOMAIN = 301, 9  # ragged over 2 (151 + 150) and 3 (101 + 101 + 99) devices
GB80 = 80 * 10**9  # an 80 GB card
HUGE = 1 << 25  # 2^25 pages = 128 GiB: the database after growth
STRATEGY_KNOBS = {"full_batch": {}, "micro_batch": {"threshold": 1, "chunk": 2}, "multi_stream": {"streams": 4},
                  "graph_replay": {}, "tiled": {"tile": 2}}


def _devices_env(n: int) -> dict[str, str]:
    return {"XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip(),
            "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@functools.cache
def _case() -> tuple[np.ndarray, list, list]:
    """Pages (N, 4096) u8 and Q=3 queries of 3 keys each (targets anywhere in [0, N))."""
    from morphogen_exp.pir.keys import generate_keys

    rng = np.random.default_rng(12)
    pages = rng.integers(0, 256, (N_PAGES, 4096), dtype=np.uint8)
    queries = [[generate_keys(DOMAIN, int(t), rng)[0] for t in rng.integers(0, N_PAGES, 3)] for _ in range(3)]
    return pages, queries, [t for q in queries for t in q]


def check_multi_device(num_devices: int) -> None:
    """Run in a subprocess with `num_devices` CPU devices: sharded and replicated placements answer
    one query (jit), a vmapped batch, every strategy's batch path (2 devices) and the oracle's
    device fold exactly as the numpy reference does."""
    import jax

    from morphogen_exp.pir import EngineSpec, KeyBatch, pages_to_words
    from morphogen_exp.pir.reference import answer_numpy

    assert jax.device_count() == num_devices, jax.devices()
    pages, queries, _ = _case()
    kb = KeyBatch.stack([KeyBatch.from_keys(q) for q in queries])
    want = np.stack([answer_numpy(pages, q) for q in queries])
    spec = EngineSpec(tile_pages=64)
    words = np.asarray(pages_to_words(pages))
    for name in ("sharded", "replicated"):
        plc = placements.Placement(name, tuple(jax.devices()))
        rows = placements.padded_rows(N_PAGES, plc)
        padded = np.zeros((rows, 1024), np.uint32)
        padded[:N_PAGES] = words
        pw = jax.device_put(padded, placements.sharding(plc))
        from morphogen_exp.config import DatasetConfig
        from morphogen_exp.measure.datasets import Dataset

        with tempfile.TemporaryDirectory() as tmp:  # the one page streamer: each device's rows from a file
            path = Path(tmp) / "pages.bin"
            path.write_bytes(pages.tobytes())
            loaded = placements.load(DatasetConfig("f", 1, str(path)), 0, plc)
            assert loaded.num_pages == N_PAGES and loaded.words.sharding == placements.sharding(plc)
            assert np.array_equal(np.asarray(loaded.words), padded), f"{name} over {num_devices}: the file's rows differ"

        ctx = placements.new_context(Dataset("t", N_PAGES, pw, 0), spec, plc)
        one = np.asarray(ctx.single_jit(ctx.pages, kb.take(0))).view(np.uint8).reshape(3, 4096)
        batch = np.asarray(jax.jit(jax.vmap(ctx.single, in_axes=(None, 0)))(ctx.pages, kb)).view(np.uint8).reshape(3, 3, 4096)
        assert np.array_equal(one, want[0]), f"{name} over {num_devices}: one query differs from numpy"
        assert np.array_equal(batch, want), f"{name} over {num_devices}: the batch differs from numpy"
        if num_devices == 2:  # every strategy's batch path under the placement (Q=3: replicated pads to 4)
            from morphogen_exp import strategies

            for strategy, knobs in STRATEGY_KNOBS.items():
                path = strategies.registered()[strategy](knobs, 3, ctx)
                got = np.asarray(path.run(kb)).view(np.uint8).reshape(3, 3, 4096)
                assert np.array_equal(got, want), f"{strategy} under {name}: differs from numpy"
        # The large-database oracle folds each device's own rows (no gather of the whole database).
        from morphogen_exp.measure.parity import _numpy_dpf_answer

        folded = _numpy_dpf_answer(Dataset("t", N_PAGES, pw, 0), tuple(queries[1]), {})
        assert np.array_equal(folded, want[1]), f"{name} over {num_devices}: the oracle's device fold differs"
        check_layout_engine(plc, pages, kb, want)
    print(f"ok {num_devices}")


def check_layout_engine(plc: placements.Placement, pages: np.ndarray, kb, want: np.ndarray) -> None:
    """An engine with its own layout (bitsliced) under ``plc``: each device holds the layout of its own rows
    (sharded: its ceil(N/D) raw rows, past N zero pages; replicated: the whole database), equal to the layout
    built independently in numpy; one query and a vmapped batch answer exactly as numpy does."""
    import jax

    from morphogen_exp.config import DatasetConfig
    from morphogen_exp.pir import EngineSpec, get, pages_to_words

    from .test_bitsliced import _layout_numpy

    words = np.asarray(pages_to_words(pages))
    num_devices = len(plc.devices)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pages.bin"
        path.write_bytes(pages.tobytes())
        ds = placements.load(DatasetConfig("f", 1, str(path)), 0, plc, get("bitsliced").layout)
    assert not ds.is_raw and ds.num_pages == N_PAGES and ds.words.sharding == placements.sharding(plc)
    rows = placements.device_pages(N_PAGES, plc.name, num_devices)
    for shard in ds.words.addressable_shards:
        i = plc.devices.index(shard.device) if plc.name == "sharded" else 0
        own = np.zeros((rows, 1024), np.uint32)
        part = words[i * rows : (i + 1) * rows]
        own[: len(part)] = part
        assert np.array_equal(np.asarray(shard.data), _layout_numpy(own)), f"bitsliced {plc.name}: device {i}'s layout"
    ctx = placements.new_context(ds, EngineSpec("bitsliced", tile_pages=64, unroll=False), plc)
    one = np.asarray(ctx.single_jit(ctx.pages, kb.take(0))).view(np.uint8).reshape(3, 4096)
    batch = np.asarray(jax.jit(jax.vmap(ctx.single, in_axes=(None, 0)))(ctx.pages, kb)).view(np.uint8)
    assert np.array_equal(one, want[0]), f"bitsliced {plc.name} over {num_devices}: one query differs from numpy"
    assert np.array_equal(batch.reshape(want.shape), want), f"bitsliced {plc.name} over {num_devices}: the batch differs"


def check_two_processes(process_id: int) -> None:
    """Run as one of two processes (JAX_* env set by the test): placement.distributed=true joins
    them; the sharded database is built in place and the scan over both processes' shards is exact."""
    import jax

    from morphogen_exp.config import DatasetConfig, PlacementConfig
    from morphogen_exp.measure.datasets import synthetic_words_numpy
    from morphogen_exp.pir import EngineSpec, KeyBatch
    from morphogen_exp.pir.reference import answer_numpy

    placements.ensure_distributed(PlacementConfig("sharded", None, True))
    plc = placements.resolve(PlacementConfig("sharded"))
    assert jax.process_count() == 2 and len(plc.devices) == 2 and len(jax.local_devices()) == 1
    ds = placements.load(DatasetConfig("tiny", N_PAGES, None), 0, plc)
    ctx = placements.new_context(ds, EngineSpec(tile_pages=64), plc)
    _, _, keys = _case()
    out = ctx.single_jit(ctx.pages, KeyBatch.from_keys(keys[:3]))
    got = np.asarray(out.addressable_shards[0].data).view(np.uint8).reshape(3, 4096)
    pages = synthetic_words_numpy(0, np.arange(N_PAGES)).view(np.uint8).reshape(N_PAGES, 4096)
    assert np.array_equal(got, answer_numpy(pages, keys[:3])), f"process {process_id}: differs from numpy"
    print(f"ok process {process_id}")


def test_sharded_over_two_processes_with_jax_distributed():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = {**os.environ, **_devices_env(1), "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2"}
    procs = [subprocess.Popen([sys.executable, "-c", f"from tests.test_placement import check_two_processes; check_two_processes({i})"],
                              cwd=REPO, env={**base, "JAX_PROCESS_ID": str(i)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, (out, err)) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0 and f"ok process {i}" in out, err[-3000:]


@pytest.mark.parametrize("num_devices", [2, 3])
def test_sharded_and_replicated_match_numpy_on_ragged_shards(num_devices):
    code = f"from tests.test_placement import check_multi_device; check_multi_device({num_devices})"
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, **_devices_env(num_devices)},
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and f"ok {num_devices}" in res.stdout, res.stderr[-3000:]


@pytest.mark.parametrize("engine", ["fused", "bitsliced"])
def test_the_sharded_gate_script_passes_over_two_virtual_devices(engine) -> None:
    """scripts/check_sharded.py (run before a multi-GPU sweep): shards that start off the tile and subtree grid,
    sharded and replicated, the database loaded as a cell loads it (bitsliced: its layout built per device)."""
    env = {**os.environ, **_devices_env(2), "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, str(Path(REPO) / "scripts" / "check_sharded.py"), engine], capture_output=True,
                         text=True, env=env, timeout=600, check=False)
    for name in ("sharded", "replicated"):
        assert f"{engine} {name} over 2 device(s), 5000 pages: exact" in res.stdout, res.stdout + res.stderr
    assert res.returncode == 0, res.stderr[-3000:]


def test_scan_range_shards_xor_to_the_whole_answer():
    """Each shard's partial answer is numpy's over its page range; their XOR is the whole answer."""
    import jax

    from morphogen_exp.pir import EngineSpec, KeyBatch, pages_to_words
    from morphogen_exp.pir.reference import answer_numpy
    from morphogen_exp.pir.scan import scan_range

    pages, _, keys = _case()
    keys = keys[:3]
    kb = KeyBatch.from_keys(keys)
    words = np.asarray(pages_to_words(pages))
    spec = EngineSpec(tile_pages=64)
    total = np.zeros((3, 4096), np.uint8)
    for start, count in shard_bounds(N_PAGES, 3):  # (0, 101) (101, 101) (202, 99): unaligned heads, ragged tails
        part = np.asarray(jax.jit(functools.partial(scan_range, start=start, count=count, spec=spec))(words[start:start + count], kb))
        part_b = part.view(np.uint8).reshape(3, 4096)
        only = np.zeros_like(pages)
        only[start:start + count] = pages[start:start + count]
        assert np.array_equal(part_b, answer_numpy(only, keys)), (start, count)
        total ^= part_b
    assert np.array_equal(total, answer_numpy(pages, keys))


def test_shard_bounds_cover_every_page_once():
    assert shard_bounds(301, 2) == ((0, 151), (151, 150))
    assert shard_bounds(5, 4) == ((0, 2), (2, 2), (4, 1), (6, 0))
    for n, d in ((1, 1), (300, 3), (16_817_159, 2), (7, 8)):
        b = shard_bounds(n, d)
        assert sum(c for _, c in b) == n
        assert all(s2 == s1 + c1 for (s1, c1), (s2, _) in zip(b, b[1:], strict=False) if c1)


def test_memory_128gib_fits_only_sharded_over_two_80gb_cards():
    from morphogen_exp.pir import get

    xla, bitsliced = get("xla"), get("bitsliced")
    tile = lambda k: 1 << 12  # noqa: E731
    ws = xla.working_set_bytes(3, tile)
    with pytest.raises(memory.DoesNotFit, match="on one device"):
        placements.check_fits("x", xla, HUGE, ("single", 1), 1, tile, None, limit_bytes=GB80)
    with pytest.raises(memory.DoesNotFit, match="replicated over 2"):
        placements.check_fits("x", xla, HUGE, ("replicated", 2), 1, tile, None, limit_bytes=GB80)
    need = placements.check_fits("x", xla, HUGE, ("sharded", 2), 1, tile, None, limit_bytes=GB80)
    assert need == 64 * memory.GIB + ws
    assert placements.device_pages(N_PAGES, "sharded", 2) == 151 and placements.device_pages(N_PAGES, "replicated", 2) == N_PAGES
    with pytest.raises(memory.DoesNotFit):  # the cap applies per device too
        placements.check_fits("x", xla, HUGE, ("sharded", 2), 1, tile, 60.0, limit_bytes=GB80)
    # an engine with a layout: its own model of the shard (the layout, the larger of its build scratch and the scan's)
    shard = bitsliced.device_bytes(HUGE // 2, 3, tile)
    assert placements.check_fits("x", bitsliced, HUGE, ("sharded", 2), 1, tile, None, limit_bytes=GB80) == shard
    assert shard == bitsliced.database_bytes(HUGE // 2) + max(bitsliced.build_bytes(HUGE // 2), bitsliced.working_set_bytes(3, tile))
    with pytest.raises(memory.DoesNotFit, match="replicated over 2"):
        placements.check_fits("x", bitsliced, HUGE, ("replicated", 2), 1, tile, None, limit_bytes=GB80)


@pytest.mark.parametrize(("overrides", "message"), [
    (("placement.name=spread",), "unknown placement 'spread'"),
    (("placement=single", "placement.devices=2"), "placement=single uses one device"),
    (("placement=sharded", "placement.devices=0"), "placement.devices must be in"),
])
def test_bad_placement_settings_are_one_line(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(make_cfg(*overrides))


def test_one_device_cell_at_2_25_pages_does_not_fit(cli_here, workdir):
    """2^25 pages on one 80 GB device: recorded "does not fit" before anything is built."""
    res = cli_here("dataset.num_pages=33554432", "bench.memory_cap_gib=74.5", "placement=single", "bench.system_metrics_s=null")
    assert res.returncode == 1, res.stderr[-2000:]
    (run,) = mlflow_runs(workdir)
    assert run.data.tags["cell_status"] == "does_not_fit"
    assert run.data.tags["placement"] == "single"
    assert run.data.metrics["memory_estimate_gib"] > 128


@pytest.mark.slow
def test_sweep_over_placements_on_two_devices(cli, workdir):
    """placement x strategy x q on two virtual devices: every cell exact, placement in the labels,
    the decision and the guard; more devices than exist is a setting to fix."""
    res = cli("-m", "placement=glob(*)", "strategy=full_batch,multi_stream", "q=1,4", "bench.system_metrics_s=null",
              "bench.max_time_s=0.5", extra_env=_devices_env(2), test_strategies=False)
    assert res.returncode == 0, res.stderr[-3000:]
    cells = [r for r in mlflow_runs(workdir) if r.data.tags.get("morphogen.role") == "cell"]
    assert len(cells) == 12
    assert all(r.data.metrics["parity_ok"] == 1 and r.data.metrics["parity_xor_eq"] == 1 for r in cells)
    used = {(r.data.tags["placement"], r.data.tags["strategy"]): r.data.tags["devices_used"] for r in cells}
    assert used[("single", "full_batch")] == "1" and used[("sharded", "full_batch")] == "2"
    assert used[("replicated", "multi_stream")] == "2"
    ms = {r.data.tags["placement"]: r.data.tags["strategy_info.devices_used"] for r in cells if r.data.tags["strategy"] == "multi_stream"}
    assert ms == {"single": "1", "replicated": "2", "sharded": "2"}

    sweep = sorted((workdir / "outputs" / "multirun").iterdir())[-1]
    report = (sweep / "report.md").read_text()
    for p in ("single", "replicated", "sharded"):
        for s in ("full_batch", "multi_stream"):
            assert f"| {s}[placement={p}] |" in report
    configs = {r["config"] for r in csv.DictReader((sweep / "matrix.csv").open())}
    assert len(configs) == 6
    guard = (sweep / "rollout" / "selected.yaml").read_text()
    assert "override /placement:" in guard

    too_many = cli("placement=sharded", "placement.devices=3", "q=1", extra_env=_devices_env(2), test_strategies=False)
    assert too_many.returncode == 2
    err = too_many.stderr.strip().splitlines()
    assert "placement=sharded needs placement.devices=3 devices, this process sees 2" in err[-1]


@pytest.mark.slow
def test_bitsliced_sweep_on_replicated_and_sharded_placements(cli, workdir):
    """The tensor-core engine on every placement, as a user runs it: its layout built on each device (sharded:
    its own rows), every cell exact against numpy, the layout's build time recorded, a decision made."""
    res = cli("-m", "engine=bitsliced", "placement=replicated,sharded", "strategy=full_batch", "q=1,4",
              "bench.system_metrics_s=null", "bench.max_time_s=0.5", extra_env=_devices_env(2), test_strategies=False)
    assert res.returncode == 0, res.stderr[-3000:]
    cells = [r for r in mlflow_runs(workdir) if r.data.tags.get("morphogen.role") == "cell"]
    assert sorted((r.data.tags["placement"], r.data.params["q"]) for r in cells) == [
        ("replicated", "1"), ("replicated", "4"), ("sharded", "1"), ("sharded", "4")]
    for r in cells:
        m, tags = r.data.metrics, r.data.tags
        assert tags["engine"] == "bitsliced" and tags["devices_used"] == "2", tags
        assert m["parity_ok"] == 1 and m["parity_numpy_eq"] == 1 and m["parity_xor_eq"] == 1, m
        assert m["layout_build_s"] > 0, m
    assert "decision: GO full_batch[placement=" in res.stdout + res.stderr


def test_placement_yaml_files_are_the_three_placements():
    names = sorted(p.stem for p in (Path(REPO) / "conf" / "placement").glob("*.yaml"))
    assert names == ["replicated", "sharded", "single"]
