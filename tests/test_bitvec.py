"""Engine "bitsliced"'s fused step (pir/bitsliced_ops.py ``expand_xor_at_fn``, pir/cuda/bmma.py + bmma.cu
``expand_to_bitvectors``) against the numpy oracle.

On CPU: the index arithmetic of its GPU path (which nodes are expanded to which subtree roots, which of
their leaves mask which pages of the layout) with the CUDA op replaced by its contract in jnp, and the
composed path the engine takes without CUDA. On a GPU (run there: ``pytest tests/test_bitvec.py``): the
kernel itself, bit for bit, aligned and unaligned, ragged, 1 to 96 keys, pipelined (up to 8 keys) or not."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from morphogen_exp.pir import (
    EngineSpec,
    KeyBatch,
    Subtrees,
    Window,
    answer_jax,
    answer_numpy,
    backend,
    bitsliced_ops,
    generate_keys,
    pages_to_words,
)
from morphogen_exp.pir.bitsliced import bitslice_pages, masked_xor_bitsliced_jnp
from morphogen_exp.pir.scan import scan_range
from morphogen_exp.pir.xla_ops import SUBTREE_LEVELS, expand_levels_xla

GPU = jax.default_backend() == "gpu"
RNG = np.random.default_rng(12)
PAGES = RNG.integers(0, 256, size=(3000, 4096), dtype=np.uint8)
DOMAIN = 12  # 4096 leaves: tiles of 1024 pages have 2 levels above the 256-leaf subtrees
SPEC = EngineSpec("bitsliced", tile_pages=1024, unroll=False)  # 2 full tiles, then a 952-page tail


def _keys(num_keys: int, n: int = 3000, domain: int = DOMAIN, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [generate_keys(domain, int(t), rng)[int(t) % 2] for t in rng.integers(0, n, num_keys)]


def _kernel_contract(words: jax.Array, subtrees: Subtrees, window: Window) -> jax.Array:
    """What the CUDA op computes, in jnp: leaves [lo, lo + count) of the subtrees mask layout pages from row."""
    masks = expand_levels_xla(*subtrees)[:, window.lo : window.lo + window.count]
    return masked_xor_bitsliced_jnp(words, window.row, masks)


@pytest.fixture
def contract_kernel(monkeypatch):
    """The engine's GPU path on this machine, the CUDA op replaced by its contract; records each call's
    (subtrees, levels, lo, count) and checks what the kernel requires of them."""
    calls: list[tuple[int, int, int, int]] = []

    def kernel(words: jax.Array, subtrees: Subtrees, window: Window) -> jax.Array:
        s, levels, lo, count = subtrees.ts.shape[1], subtrees.levels, window.lo, window.count
        assert levels <= SUBTREE_LEVELS and subtrees.seeds.shape[:2] == subtrees.ts.shape
        # trimmed: the first subtree holds leaf lo, the last one leaf lo + count - 1
        assert 0 <= lo < 1 << levels and (s - 1) << levels < lo + count <= s << levels, (s, levels, lo, count)
        calls.append((s, levels, lo, count))
        return _kernel_contract(words, subtrees, window)

    if not GPU:
        monkeypatch.setattr(backend, "on_gpu", lambda: True)
        monkeypatch.setattr(bitsliced_ops, "expand_xor_kernel", kernel)
    return calls


@pytest.mark.parametrize("num_keys", [1, 3])
def test_scan_equals_numpy_with_full_tiles_and_a_ragged_tail(contract_kernel, num_keys: int) -> None:
    keys = _keys(num_keys)
    np.testing.assert_array_equal(answer_jax(PAGES, keys, SPEC), answer_numpy(PAGES, keys))
    if not GPU:  # two tiles of 4 subtrees, the tail's 952 pages in 4 subtrees (traced once: the loop body)
        assert contract_kernel == [(4, 8, 0, 1024), (4, 8, 0, 952)]


@pytest.mark.parametrize(("start", "count"), [(300, 1500), (1, 255), (2047, 2), (256, 2700)])
def test_page_range_at_unaligned_starts_equals_numpy(contract_kernel, start: int, count: int) -> None:
    """A range's head inside a tile (leaf lo not at a chunk boundary of the layout), then tiles and a ragged
    tail; subtrees of fewer than 8 levels (255 and 2 pages); an aligned head (256). Rows [0, count) of the
    layout hold pages from start."""
    keys = _keys(3, seed=start)
    words = bitslice_pages(jnp.asarray(pages_to_words(PAGES[start : start + count])), count).words
    got = scan_range(words, KeyBatch.from_keys(keys).to_device(), start=start, count=count, spec=SPEC)
    only = np.zeros_like(PAGES)
    only[start : start + count] = PAGES[start : start + count]
    np.testing.assert_array_equal(np.asarray(got).view(np.uint8).reshape(3, 4096), answer_numpy(only, keys))


def test_without_cuda_the_step_is_the_composed_ops(monkeypatch) -> None:
    """Off a GPU the engine never reaches for the kernel: the XLA expansion and the jnp GF(2) product."""
    if GPU:
        pytest.skip("checks the CPU path")

    def no_kernel(*args):
        raise AssertionError("the CUDA op was called off a GPU")

    monkeypatch.setattr(bitsliced_ops, "expand_xor_kernel", no_kernel)
    keys = _keys(2, seed=5)
    pages = PAGES[:700]
    np.testing.assert_array_equal(answer_jax(pages, keys, SPEC), answer_numpy(pages, keys))


# --------------------------------------------------------------------------- the CUDA kernel (GPU only)

gpu = pytest.mark.skipif(not GPU, reason="the CUDA kernel needs a GPU")


@gpu
@pytest.mark.parametrize(("num_pages", "num_keys", "tile"), [(1, 1, 4096), (255, 3, 4096), (257, 13, 4096),
                                                             (3000, 96, 1024), (3000, 3, 64), (70000, 3, 1 << 15),
                                                             (4097, 3, 4096), (1025, 9, 1024)])
def test_kernel_scan_equals_numpy(num_pages: int, num_keys: int, tile: int) -> None:
    """The engine on the device: aligned tiles, ragged tails (fewer than 8 levels below 256 pages), 1 to 96 keys,
    and N one page past a tile edge (a one-page tail step) on the pipelined kernel (3 keys) and the two kernels (9)."""
    rng = np.random.default_rng(num_pages)
    pages = rng.integers(0, 256, size=(num_pages, 4096), dtype=np.uint8)
    domain = max(1, (num_pages - 1).bit_length()) + 1
    keys = _keys(num_keys, num_pages, domain, seed=num_pages)
    np.testing.assert_array_equal(answer_jax(pages, keys, EngineSpec("bitsliced", tile_pages=tile)),
                                  answer_numpy(pages, keys))


@gpu
@pytest.mark.parametrize(("start", "count", "num_keys"), [(300, 2700, 3), (1, 255, 13), (77, 1500, 96)])
def test_kernel_page_range_at_unaligned_starts_equals_numpy(start: int, count: int, num_keys: int) -> None:
    """Unaligned leaves (each lane walks its path) on the device."""
    keys = _keys(num_keys, seed=start)
    words = bitslice_pages(jnp.asarray(pages_to_words(PAGES[start : start + count])), count).words
    got = scan_range(words, KeyBatch.from_keys(keys).to_device(), start=start, count=count, spec=SPEC)
    only = np.zeros_like(PAGES)
    only[start : start + count] = PAGES[start : start + count]
    np.testing.assert_array_equal(np.asarray(got).view(np.uint8).reshape(num_keys, 4096), answer_numpy(only, keys))


@gpu
@pytest.mark.parametrize(("row", "lo", "count", "levels", "num_keys", "stages"),
                         [(512, 256, 700, 8, 13, None), (512, 300, 700, 8, 5, 3), (512, 300, 700, 8, 5, 4),
                          (0, 0, 2048, 8, 96, None), (3, 1, 30, 5, 9, None), (3, 1, 30, 5, 8, 4), (0, 0, 3000, 8, 3, 4)])
def test_kernel_equals_its_contract_on_random_roots(row: int, lo: int, count: int, levels: int, num_keys: int,
                                                    stages: int | None) -> None:
    """The op alone on random roots and corrections against the jnp contract (itself checked against numpy
    above): aligned (row - lo = 256) and unaligned rows, a whole-chunk case, a 5-level subtree; up to 8 keys
    both the pipelined kernel (stages=4, the default there) and the two kernels in a row (3)."""
    from morphogen_exp.pir.cuda.bmma import call_expand_xor, expand_xor_bmma  # noqa: PLC0415

    rng = np.random.default_rng(row + lo + count)
    s = -(-(lo + count) // (1 << levels))  # subtrees holding leaves [0, lo + count)
    u32 = lambda *shape: jnp.asarray(rng.integers(0, 2**32, size=shape, dtype=np.uint32))  # noqa: E731
    roots, root_t = u32(num_keys, s, 4), jnp.asarray(rng.integers(0, 2, size=(num_keys, s), dtype=np.uint32))
    scw, tcw, fcw = u32(num_keys, levels, 4), u32(num_keys, levels, 2) & 1, u32(num_keys, 4)
    words = bitslice_pages(jnp.asarray(pages_to_words(PAGES)), 3000).words
    subtrees, window = Subtrees(roots, root_t, scw, tcw, fcw), Window(row, lo, count)
    if stages is None:  # what the engine runs
        got = expand_xor_bmma(words, subtrees, window)
    else:
        got = call_expand_xor(words, subtrees, window, stages=stages)
    want = _kernel_contract(words, subtrees, window)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@gpu
@pytest.mark.parametrize("num_keys", [3, 8])
def test_pipelined_kernel_with_many_groups_per_block_equals_its_contract(num_keys: int) -> None:
    """Many chunk groups a block (600,000 pages: 2,344 chunks over at most one block per SM, each block's
    groups of 1, 2, 4 then 8 chunks), so each block's expansion and scan alternate halves of its scratch:
    against the jnp contract."""
    from morphogen_exp.pir.cuda.bmma import call_expand_xor  # noqa: PLC0415

    rng = np.random.default_rng(num_keys)
    n, count, row = 600_000, 599_000, 700  # leaves [0, count) mask rows [700, 599,700): aligned to no chunk
    words = bitslice_pages(jax.random.bits(jax.random.key(num_keys), (n, 1024), jnp.uint32), n).words
    s = -(-count // 256)
    u32 = lambda *shape: jnp.asarray(rng.integers(0, 2**32, size=shape, dtype=np.uint32))  # noqa: E731
    roots, root_t = u32(num_keys, s, 4), jnp.asarray(rng.integers(0, 2, size=(num_keys, s), dtype=np.uint32))
    scw, tcw, fcw = u32(num_keys, 8, 4), u32(num_keys, 8, 2) & 1, u32(num_keys, 4)
    subtrees, window = Subtrees(roots, root_t, scw, tcw, fcw), Window(row, 0, count)
    got = call_expand_xor(words, subtrees, window, stages=4)
    want = _kernel_contract(words, subtrees, window)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
