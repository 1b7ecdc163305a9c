"""Engine "fused" (pir/fused_ops.py; its kernel pir/cuda/fused.py + fused.cu) against the numpy oracle.

On CPU: the engine's wiring, and the index arithmetic of its GPU path (which nodes are expanded to which
subtree roots, which leaves of them mask which rows) with the CUDA kernel replaced by its contract written
in XLA. On a GPU (run there: ``pytest tests/test_fused_engine.py``): the kernel itself, bit for bit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from morphogen_exp.measure import memory
from morphogen_exp.measure.queries import KEYS_PER_QUERY
from morphogen_exp.pir import (
    EngineSpec,
    KeyBatch,
    Subtrees,
    Window,
    answer_jax,
    answer_numpy,
    backend,
    fused_ops,
    generate_keys,
    get,
    pages_to_words,
    pallas_ops,
)
from morphogen_exp.pir.cuda import fused as fused_kernel
from morphogen_exp.pir.engine import mask_working_set_bytes, raw_database_bytes
from morphogen_exp.pir.scan import scan_range, tile_size
from morphogen_exp.pir.xla_ops import expand_levels_xla, masked_xor_xla

GPU = jax.default_backend() == "gpu"
RNG = np.random.default_rng(11)
PAGES = RNG.integers(0, 256, size=(3000, 4096), dtype=np.uint8)
DOMAIN = 12  # 4096 leaves: tiles of 1024 pages have 2 levels above the 256-leaf subtrees


def _keys(num_keys: int, n: int = 3000, domain: int = DOMAIN, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [generate_keys(domain, int(t), rng)[int(t) % 2] for t in rng.integers(0, n, num_keys)]


def _kernel_contract(pages_words: jax.Array, subtrees: Subtrees, window: Window) -> jax.Array:
    """What expand_xor_fused computes, in XLA: leaves [lo, lo + count) of the subtrees mask rows from row."""
    masks = expand_levels_xla(*subtrees)[:, window.lo : window.lo + window.count]
    return masked_xor_xla(jax.lax.dynamic_slice_in_dim(pages_words, window.row, window.count, axis=0), masks)


@pytest.fixture
def contract_kernel(monkeypatch):
    """The GPU path of the engine on this machine, with the kernel replaced by its contract."""
    if not GPU:
        monkeypatch.setattr(backend, "on_gpu", lambda: True)
        monkeypatch.setattr(fused_ops, "expand_xor_fused", _kernel_contract)


SPEC = EngineSpec("fused", tile_pages=1024, unroll=False)  # 2 full tiles, a 952-page tail: head, loop and tail steps


@pytest.mark.parametrize("num_keys", [1, 3])
def test_scan_equals_numpy_with_full_tiles_and_a_ragged_tail(contract_kernel, num_keys: int) -> None:
    keys = _keys(num_keys)
    np.testing.assert_array_equal(answer_jax(PAGES, keys, SPEC), answer_numpy(PAGES, keys))


@pytest.mark.parametrize(("start", "count"), [(300, 1500), (1, 255), (2047, 2)])
def test_page_range_at_unaligned_starts_equals_numpy(contract_kernel, start: int, count: int) -> None:
    """A shard's range: an unaligned head inside a tile, then tiles and a tail; rows [0, count) hold pages from start."""
    keys = _keys(3, seed=start)
    words = jnp.asarray(pages_to_words(PAGES[start : start + count]))
    got = scan_range(words, KeyBatch.from_keys(keys).to_device(), start=start, count=count, spec=SPEC)
    only = np.zeros_like(PAGES)
    only[start : start + count] = PAGES[start : start + count]
    want = answer_numpy(only, keys)
    np.testing.assert_array_equal(np.asarray(got).view(np.uint8).reshape(3, 4096), want)


def test_key_blocks_and_grid() -> None:
    assert [fused_kernel.keys_per_block(k) for k in (1, 3, 4, 5, 6, 13, 96)] == [1, 3, 4, 3, 3, 4, 4]
    assert fused_kernel.grid_blocks(5) == 5 and fused_kernel.grid_blocks(10**6) >= 100
    assert fused_kernel.grid_blocks(10**6, key_blocks=4) == fused_kernel.grid_blocks(10**6) // 4


def test_memory_estimate_stores_masks_only_above_the_kernels_keys() -> None:
    """At mainnet the kernel's steps (Q <= 4) hold subtree roots, not masks; from Q=5 the Pallas steps hold masks."""
    n = 16_817_159
    spec = EngineSpec("fused", tile_pages=4194304, mask_budget_mib=1536)
    tile = lambda k: tile_size(n, 25, spec, k)  # noqa: E731
    fused = get("fused")
    kernel_ws = fused.working_set_bytes(KEYS_PER_QUERY * 4, tile)
    assert kernel_ws < memory.GIB < mask_working_set_bytes(KEYS_PER_QUERY * 4, tile)
    assert fused.working_set_bytes(KEYS_PER_QUERY * 5, tile) == mask_working_set_bytes(KEYS_PER_QUERY * 5, tile)
    assert get("pallas").working_set_bytes(KEYS_PER_QUERY * 32, tile) == mask_working_set_bytes(KEYS_PER_QUERY * 32, tile)
    assert fused.database_bytes(n) == raw_database_bytes(n) and fused.build_bytes(n) == 0  # the raw pages, no layout


def test_more_keys_than_the_kernel_takes_run_the_pallas_ops(monkeypatch) -> None:
    """Above KERNEL_MAX_KEYS a step goes to the Pallas ops (here their stand-in, xla's), at or below it to the kernel."""
    seen: list[int] = []

    def kernel(pages_words: jax.Array, subtrees: Subtrees, window: Window) -> jax.Array:
        seen.append(subtrees.num_keys)
        return _kernel_contract(pages_words, subtrees, window)

    monkeypatch.setattr(backend, "on_gpu", lambda: True)
    monkeypatch.setattr(fused_ops, "expand_xor_fused", kernel)
    # the Pallas kernels need a GPU; the dispatch is what is tested: xla's ops stand in for them
    monkeypatch.setattr(pallas_ops, "ENGINE", get("xla"))
    monkeypatch.setattr(fused_ops, "KERNEL_MAX_KEYS", 2)
    spec = EngineSpec("fused", tile_pages=512, unroll=False)  # this test's own spec: traced afresh, not from a cache
    for num_keys, kernel_traces in ((3, 0), (2, 2)):  # traces: the tile loop's body and the tail
        seen.clear()
        keys = _keys(num_keys, seed=num_keys)
        np.testing.assert_array_equal(answer_jax(PAGES, keys, spec), answer_numpy(PAGES, keys))
        assert seen == [num_keys] * kernel_traces


def test_step_path_names_what_a_step_runs(monkeypatch) -> None:
    """The dispatch and each cell's record read one function: the kernel up to KERNEL_MAX_KEYS keys on a GPU,
    the Pallas ops above, the XLA ops without a GPU; the engine object carries it."""
    assert get("fused").step_path is fused_ops.step_path
    monkeypatch.setattr(backend, "on_gpu", lambda: False)
    assert fused_ops.step_path(3) == fused_ops.step_path(96) == "xla ops (no CUDA backend)"
    monkeypatch.setattr(backend, "on_gpu", lambda: True)
    got = {k: fused_ops.step_path(k) for k in (1, fused_ops.KERNEL_MAX_KEYS, fused_ops.KERNEL_MAX_KEYS + 1, 96)}
    assert got == {1: "cuda kernel", 12: "cuda kernel", 13: "pallas ops", 96: "pallas ops"}


@pytest.mark.skipif(not GPU, reason="the CUDA kernel needs a GPU")
@pytest.mark.parametrize(("num_pages", "num_keys", "tile"), [(1, 1, 4096), (255, 3, 4096), (257, 5, 4096),
                                                             (3000, 12, 1024), (3000, 13, 1024), (3000, 3, 64),
                                                             (70000, 3, 1 << 15)])
def test_kernel_equals_numpy(num_pages: int, num_keys: int, tile: int) -> None:
    """The kernel on the device: ragged subtrees, several key blocks (12 keys), tiles below a subtree (64); 13 keys:
    the Pallas steps the engine switches to."""
    rng = np.random.default_rng(num_pages)
    pages = rng.integers(0, 256, size=(num_pages, 4096), dtype=np.uint8)
    domain = max(1, (num_pages - 1).bit_length()) + 1
    keys = _keys(num_keys, num_pages, domain, seed=num_pages)
    np.testing.assert_array_equal(answer_jax(pages, keys, EngineSpec("fused", tile_pages=tile)), answer_numpy(pages, keys))
