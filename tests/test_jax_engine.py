"""The JAX engine (chacha_jax, xla_ops, registry, scan, host) against the original's vectors and the numpy reference.

CPU and fast: XLA compile time dominates, so every shape is compiled once and shared (the engine's
own caches: jit per shape, make_answer_fn per (num_pages, spec)); the scan tests all use K = 3 keys
over one (256, 1024) page matrix at domain 8, with a tile of 64 pages so the tile loop, the ragged
tail (its own step, with a subtree of next_pow2(tail) leaves) and the tile cap for tiny databases all run.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from morphogen_exp.pir import (
    PAGE_BYTES,
    Engine,
    EngineSpec,
    KeyBatch,
    answer,
    answer_jax,
    full_eval_jax,
    get,
    make_answer_fn,
    pages_to_words,
    register,
    scan_bytes_read,
    scan_plan,
    tile_size,
    unregister,
    words_to_bytes,
)
from morphogen_exp.pir.chacha_jax import default_unroll, prg_expand
from morphogen_exp.pir.keys import Key, generate_keys
from morphogen_exp.pir.reference import answer_numpy, eval_points
from morphogen_exp.pir.scan import scan
from morphogen_exp.pir.xla_ops import descend_left, expand_levels_xla, masked_xor_xla

DOMAIN = 8  # scan tests: 256-page domain
SPEC = EngineSpec(tile_pages=64)
rng0 = np.random.default_rng(2026)
PAGES = rng0.integers(0, 256, (1 << DOMAIN, 4096), dtype=np.uint8)  # rows >= num_pages are ignored


def _hex_words(h: str) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(h), dtype="<u4").astype(np.uint32)


def _out_bytes(words: np.ndarray) -> bytes:
    return np.ascontiguousarray(words, dtype="<u4").tobytes()


@pytest.fixture(scope="module")
def dpf_cases(fixtures_dir: Path) -> dict[int, list[dict]]:
    by_domain: dict[int, list[dict]] = {}
    for case in json.loads((fixtures_dir / "dpf_vectors.json").read_text()):
        by_domain.setdefault(case["domain_bits"], []).append(case)
    return by_domain


@functools.cache
def _full_eval_for(fixtures: str, n: int) -> tuple[list[dict], np.ndarray]:
    """All keys of one domain (key0, key1 of each case) in one batch: one compile per domain."""
    cases = [c for c in json.loads(Path(fixtures, "dpf_vectors.json").read_text()) if c["domain_bits"] == n]
    keys = [Key.from_bytes(bytes.fromhex(c[f"key{p}_bytes"])) for c in cases for p in (0, 1)]
    return cases, np.asarray(full_eval_jax(KeyBatch.from_keys(keys), EngineSpec()))


def _keys(targets, rng) -> tuple[list[Key], list[Key]]:
    pairs = [generate_keys(DOMAIN, t, rng) for t in targets]
    return [p[0] for p in pairs], [p[1] for p in pairs]


# --------------------------------------------------------------------------------------------- PRG


def test_prg_vectors(fixtures_dir: Path) -> None:
    vec = json.loads((fixtures_dir / "prg_vectors.json").read_text())
    seeds = np.stack([_hex_words(v["seed"]) for v in vec])
    looped = jax.jit(prg_expand, static_argnums=1)(seeds, False)
    with jax.disable_jit():  # the unrolled (GPU) form, run op by op: compiling it takes long on CPU
        unrolled = prg_expand(seeds, True)
    for left, right, tl, tr in (looped, unrolled):
        assert left.dtype == right.dtype == tl.dtype == tr.dtype == jnp.uint32
        for i, v in enumerate(vec):
            assert _out_bytes(left[i]).hex() == v["left_seed"]
            assert _out_bytes(right[i]).hex() == v["right_seed"]
            assert (int(tl[i]), int(tr[i])) == (v["left_t"], v["right_t"])


def test_prg_batch_shape() -> None:
    left, right, tl, tr = prg_expand(jnp.zeros((2, 3, 4), jnp.uint32), False)
    assert left.shape == right.shape == (2, 3, 4) and tl.shape == tr.shape == (2, 3)
    assert default_unroll() is (jax.default_backend() != "cpu")


# ------------------------------------------------------------------------------- DPF evaluation


@pytest.mark.parametrize("n", [1, 2, 5, 8, 10, 12, 16])
def test_full_eval_digests_and_points(fixtures_dir: Path, dpf_cases, n: int) -> None:
    cases, out = _full_eval_for(str(fixtures_dir), n)
    assert len(cases) == len(dpf_cases[n]) and out.shape == (2 * len(cases), 1 << n, 4)
    for i, case in enumerate(cases):
        for p in (0, 1):
            digest = hashlib.sha256(_out_bytes(out[2 * i + p])).hexdigest()
            assert digest == case[f"full_eval_sha256_key{p}"], (n, case["target"], p)
        for ev in case["evaluations"]:
            j = ev["index"]
            assert _out_bytes(out[2 * i, j]).hex() == ev["eval0"]
            assert _out_bytes(out[2 * i + 1, j]).hex() == ev["eval1"]
            assert _out_bytes(out[2 * i, j] ^ out[2 * i + 1, j]).hex() == ev["xor"]


@pytest.mark.parametrize("doubling_levels", [2, 5])
def test_doubling_and_hybrid_expansion(fixtures_dir: Path, doubling_levels: int) -> None:
    """The GPU structure (compact loop, then doubling; here all doubling at 5) with looped rounds."""
    cases, out = _full_eval_for(str(fixtures_dir), 5)
    keys = [Key.from_bytes(bytes.fromhex(c[f"key{p}_bytes"])) for c in cases for p in (0, 1)]
    kb = KeyBatch.from_keys(keys)
    got = jax.jit(functools.partial(expand_levels_xla, unroll=False, doubling_levels=doubling_levels))(
        kb.root_seed[:, None], kb.root_t[:, None], kb.seed_cw, kb.t_cw, kb.final_cw
    )
    np.testing.assert_array_equal(np.asarray(got), out)


# ------------------------------------------------------------------------------------- the scan


def test_masked_xor_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    pages = rng.integers(0, 2**32, (5, 1024), dtype=np.uint32)
    masks = rng.integers(0, 2**32, (2, 5, 4), dtype=np.uint32)
    want = np.bitwise_xor.reduce(pages[None] & np.tile(masks, (1, 1, 256)), axis=1)
    np.testing.assert_array_equal(np.asarray(jax.jit(masked_xor_xla)(pages, masks)), want)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.binary(min_size=3 * 4 * 16, max_size=3 * 4 * 16))
def test_masked_xor_property(page_seed: int, mask_bytes: bytes) -> None:
    """Byte j of a page is ANDed with mask byte j % 16 (fixed shapes: one compile)."""
    pages = np.random.default_rng(page_seed).integers(0, 256, (4, 4096), dtype=np.uint8)
    masks = np.frombuffer(mask_bytes, np.uint8).reshape(3, 4, 16)
    want = np.bitwise_xor.reduce(pages[None] & np.tile(masks, (1, 1, 256)), axis=1)
    got = jax.jit(masked_xor_xla)(pages_to_words(pages), masks.view("<u4").astype(np.uint32))
    np.testing.assert_array_equal(words_to_bytes(np.asarray(got)), want)


@pytest.mark.parametrize(
    "num_pages, spec, plan",
    [
        (200, SPEC, (64, 3, 8, 8)),  # 3 full tiles + a ragged tail of 8 pages (an 8-leaf subtree)
        (250, SPEC, (64, 3, 58, 64)),  # a tail longer than half a tile: a whole tile's subtree, 58 pages read
        (129, SPEC, (64, 2, 1, 1)),  # just above a tile multiple: a 1-leaf tail (a leaf of the tree)
        (128, SPEC, (64, 2, 0, 0)),  # full tiles only
        (5, SPEC, (8, 0, 5, 8)),  # below one tile: the tile is capped at next_pow2(5) = 8, all tail
        (200, EngineSpec(tile_pages=64, doubling_levels=2), (64, 3, 8, 8)),  # the GPU expansion structure
        (200, EngineSpec("pallas", 64), (64, 3, 8, 8)),  # the Pallas kernels (interpret mode on a CPU)
        (129, EngineSpec("pallas", 64), (64, 2, 1, 1)),
    ],
)
def test_scan_matches_reference(num_pages: int, spec: EngineSpec, plan: tuple[int, int, int, int]) -> None:
    p = scan_plan(num_pages, DOMAIN, spec)
    assert (p.tile, p.num_full, p.tail, p.tail_tile) == plan
    assert p.tile == tile_size(num_pages, DOMAIN, spec)
    # targets in the first page, the last page (in the tail when there is one) and beyond N
    keys0, _ = _keys([0, num_pages - 1, 255], np.random.default_rng(num_pages))
    got = answer_jax(PAGES[:num_pages], keys0, spec)
    np.testing.assert_array_equal(got, answer_numpy(PAGES[:num_pages], keys0))


def test_descend_left_reaches_the_tail_root() -> None:
    """The leftmost descendant L levels below a node is the node whose leaves start where its own do."""
    keys0, _ = _keys([3, 77, 200], np.random.default_rng(11))
    kb = KeyBatch.from_keys(keys0)
    seeds, ts = jax.jit(descend_left)(kb.root_seed, kb.root_t, kb.seed_cw[:, :5], kb.t_cw[:, :5])
    # leaves of node 0 at depth 5 are DPF outputs 0..7: expand it the remaining 3 levels
    leaves = jax.jit(functools.partial(expand_levels_xla, unroll=False))(
        seeds[:, None], ts[:, None], kb.seed_cw[:, 5:], kb.t_cw[:, 5:], kb.final_cw)
    for k, key in enumerate(keys0):
        np.testing.assert_array_equal(_out_bytes(np.asarray(leaves[k])), eval_points(key, range(8)).tobytes())


def test_scan_plan_at_the_mainnet_shape() -> None:
    """The real database (16,817,159 pages, domain 2^25) with the pallas config: Q=1 walks 4 tiles of
    2^22 pages and a tail of 39,943 pages from a 2^16-leaf subtree (not a whole 2^22-page tile);
    Q=32 (96 keys, 1.5 GiB of masks) 16 tiles of 2^20 and the same tail."""
    spec = EngineSpec("pallas", 1 << 22, mask_budget_mib=1536)
    n, pages = 25, 16_817_159
    q1, q32 = scan_plan(pages, n, spec, 3), scan_plan(pages, n, spec, 96)
    assert (q1.tile, q1.num_full, q1.tail, q1.tail_tile, q1.depth, q1.tail_depth) == (1 << 22, 4, 39_943, 1 << 16, 3, 9)
    assert (q32.tile, q32.num_full, q32.tail, q32.tail_tile) == (1 << 20, 16, 39_943, 1 << 16)
    assert q1.leaves_expanded - 4 * (1 << 22) < 2 * q1.tail  # the tail costs less than twice its pages
    for plan, k in ((q1, 3), (q32, 96)):
        assert plan.pages_read == pages  # every page once, nothing beyond N
        assert scan_bytes_read(pages, spec, k, n) == pages * PAGE_BYTES == 68_883_083_264
    assert scan_bytes_read(1 << 24, spec, 3) == (1 << 24) * PAGE_BYTES  # default domain: 2^24 holds it


def test_two_servers_reconstruct_pages() -> None:
    n_pages = 200
    targets = [0, 137, 250]  # 250 is inside the domain but beyond N: a zero page
    keys0, keys1 = _keys(targets, np.random.default_rng(7))
    pages = PAGES[:n_pages]
    got = answer_jax(pages, keys0, SPEC) ^ answer_jax(pages, keys1, SPEC)
    np.testing.assert_array_equal(got[:2], pages[targets[:2]])
    assert not got[2].any()


def test_vmap_over_queries_matches_per_query() -> None:
    n_pages, rng = 200, np.random.default_rng(3)
    queries = [_keys(t, rng)[0] for t in ([1, 2, 3], [199, 100, 42])]
    stacked = KeyBatch.stack([KeyBatch.from_keys(q) for q in queries])
    assert stacked.root_seed.shape == (2, 3, 4) and stacked.domain_bits == DOMAIN
    pw = jnp.asarray(pages_to_words(PAGES))  # 256 rows: the scan must read only the first 200
    batched = jax.jit(jax.vmap(lambda kb: scan(pw, kb, num_pages=n_pages, spec=SPEC)))(stacked)
    assert batched.shape == (2, 3, 1024) and batched.dtype == jnp.uint32
    for q, keys in enumerate(queries):
        np.testing.assert_array_equal(words_to_bytes(batched[q]), answer_numpy(PAGES[:n_pages], keys))


def test_pluggable_ops_are_used() -> None:
    """An engine object registered under its name (no `unroll` keyword) is what the scan calls."""
    calls = {"expand": 0, "xor": 0}

    def expand(seeds, ts, seed_cw, t_cw, final_cw):
        calls["expand"] += 1
        return expand_levels_xla(seeds, ts, seed_cw, t_cw, final_cw)

    def xor(pages, masks):
        calls["xor"] += 1
        return masked_xor_xla(pages, masks)

    register(Engine(name="test-double", expand_levels=expand, masked_xor=xor))
    try:
        assert get("test-double").expand_kwargs == frozenset()
        assert get("xla").expand_kwargs == {"unroll", "doubling_levels"}
        keys0, _ = _keys([5, 6, 7], np.random.default_rng(5))
        spec = EngineSpec(name="test-double", tile_pages=64)
        got = answer_jax(PAGES[:200], keys0, spec)
        np.testing.assert_array_equal(got, answer_numpy(PAGES[:200], keys0))
        assert calls == {"expand": 2, "xor": 2}  # traced twice: the tile loop's body and the tail step
        # re-registering the name serves a new program (the caches key on the engine object), not the old one
        register(Engine(name="test-double", expand_levels=expand, masked_xor=lambda p, m: masked_xor_xla(p, m) * np.uint32(0)))
        assert not np.array_equal(answer_jax(PAGES[:200], keys0, spec), got)
    finally:
        unregister("test-double")
    with pytest.raises(ValueError, match="unknown engine 'test-double'"):
        get("test-double")
    with pytest.raises(ValueError, match="one of the package's engines"):  # a variant of an engine gets its own name
        register(Engine(name="xla", expand_levels=expand, masked_xor=xor))


def _fixture_keys(fixtures_dir: Path, n: int) -> tuple[list[int], list[Key], list[Key]]:
    cases = [c for c in json.loads((fixtures_dir / "dpf_vectors.json").read_text()) if c["domain_bits"] == n]
    keys = [[Key.from_bytes(bytes.fromhex(c[f"key{p}_bytes"])) for c in cases] for p in (0, 1)]
    return [c["target"] for c in cases], keys[0], keys[1]


@pytest.mark.parametrize("engine", ["xla", "pallas", "bitsliced", "fused"])  # pallas: its kernels in interpret mode on a CPU
def test_answer_by_engine_name_matches_fixtures_and_reference(fixtures_dir: Path, engine: str) -> None:
    """pir.answer(..., backend="jax", engine=NAME) on the original's keys, over a ragged database of 21
    pages (domain 2^5): equal to the numpy oracle, and the two parties' answers XOR to the target pages."""
    targets, keys0, keys1 = _fixture_keys(fixtures_dir, 5)
    pages = PAGES[:21]
    a0 = answer(pages, keys0, backend="jax", engine=engine)
    a1 = answer(pages, keys1, backend="jax", engine=engine)
    np.testing.assert_array_equal(a0, answer_numpy(pages, keys0))
    np.testing.assert_array_equal(a1, answer_numpy(pages, keys1))
    for i, x in enumerate(targets):
        np.testing.assert_array_equal(a0[i] ^ a1[i], pages[x] if x < 21 else np.zeros(4096, np.uint8))
    assert any(x >= 21 for x in targets) and any(x < 21 for x in targets)


def test_answer_rejects_an_unknown_engine() -> None:
    keys0, _ = _keys([1], np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown engine 'nope'; engines: 'xla'"):
        answer(PAGES[:4], keys0, backend="jax", engine="nope")
    with pytest.raises(ValueError, match="backend='jax' only"):
        answer(PAGES[:4], keys0, engine="xla")


# ------------------------------------------------------------------------------ helpers, errors


def test_keybatch_layout() -> None:
    k0, k1 = generate_keys(3, 5, np.random.default_rng(0))
    kb = KeyBatch.from_keys([k0, k1])
    assert kb.domain_bits == 3 and kb.num_keys == 2
    assert kb.root_seed.shape == (2, 4) and kb.seed_cw.shape == (2, 3, 4) and kb.t_cw.shape == (2, 3, 2)
    assert all(a.dtype == np.uint32 for a in kb)
    assert _out_bytes(kb.seed_cw[1, 2]) == k1.seed_cw[2]
    assert kb.t_cw[0, :, 0].tolist() == list(k0.t_cw_left) and kb.root_t.tolist() == [0, 1]


def test_keybatch_split_in_one_dispatch_equals_take() -> None:
    rng = np.random.default_rng(3)
    stacked = KeyBatch.stack([KeyBatch.from_keys(generate_keys(4, t, rng)) for t in range(5)])
    for i, one in enumerate(stacked.unstack()):
        assert all(np.array_equal(a, b) for a, b in zip(one, stacked.take(i), strict=True))
    parts = stacked.chunks(2)
    assert [p.root_t.shape[0] for p in parts] == [2, 2, 1]
    for i, part in enumerate(parts):
        assert all(np.array_equal(a, b) for a, b in zip(part, stacked.take(slice(2 * i, 2 * i + 2)), strict=True))


def test_mask_budget_shrinks_tiles_for_large_batches() -> None:
    spec = EngineSpec("xla", 1 << 22, mask_budget_mib=1536)
    assert [tile_size(1 << 24, 24, spec, k) for k in (3, 24, 48, 96)] == [1 << 22, 1 << 22, 1 << 21, 1 << 20]
    assert tile_size(300, 9, spec, 96) == 512  # still capped by the database
    with pytest.raises(ValueError, match="mask_budget_mib"):
        EngineSpec(mask_budget_mib=0)


def test_page_word_round_trip() -> None:
    words = pages_to_words(PAGES[:3])
    assert words.dtype == np.uint32 and words.shape == (3, 1024)
    assert words[0, 0] == int.from_bytes(PAGES[0, :4].tobytes(), "little")
    np.testing.assert_array_equal(words_to_bytes(words), PAGES[:3])


def test_engine_spec_validation() -> None:
    assert hash(EngineSpec()) == hash(EngineSpec("xla", 4096, None))
    for bad in (3, 0, -4, 1.0, True):
        with pytest.raises(ValueError, match="power of two"):
            EngineSpec(tile_pages=bad)
    with pytest.raises(ValueError, match="unroll"):
        EngineSpec(unroll="yes")
    with pytest.raises(ValueError, match="doubling_levels"):
        EngineSpec(doubling_levels=-1)
    with pytest.raises(ValueError, match="engines: .*'xla'"):
        get("no-such-engine")


def test_answer_jax_validation() -> None:
    keys0, _ = _keys([1, 2, 3], np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8"):
        answer_jax(PAGES[:4].astype(np.int16), keys0)
    with pytest.raises(ValueError, match="shape"):
        answer_jax(PAGES[:4, :100], keys0)
    with pytest.raises(ValueError, match="shape"):
        answer_jax(PAGES[:0], keys0)
    with pytest.raises(ValueError, match="empty"):
        answer_jax(PAGES[:4], [])
    with pytest.raises(ValueError, match="domain_bits"):
        answer_jax(PAGES[:4], [keys0[0], generate_keys(4, 1, np.random.default_rng(0))[0]])
    with pytest.raises(ValueError, match="domain_bits >= 9"):
        answer_jax(np.zeros((257, 4096), np.uint8), keys0)
    with pytest.raises(ValueError, match="num_pages"):
        make_answer_fn(300, SPEC)(jnp.asarray(pages_to_words(PAGES)), KeyBatch.from_keys(keys0))
