"""Pallas kernels (interpret mode, CPU) against their jnp references, the fixtures and the XLA ops.

Tiny shapes only: Pallas interpret mode compiles slowly on a CPU.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from morphogen_exp.pir import get
from morphogen_exp.pir.pallas_ggm import (
    GGMBlock,
    chacha8_block_words,
    expand_levels_pallas,
    expand_levels_reference,
)
from morphogen_exp.pir.pallas_scan import ScanBlock, masked_xor_pallas, masked_xor_reference
from morphogen_exp.pir.xla_ops import expand_levels_xla, masked_xor_xla


def _fixture(fixtures_dir: Path, name: str):
    """A reference-vector file from tests/fixtures (conftest's fixtures_dir fails without it)."""
    return json.loads((fixtures_dir / name).read_text())


def _words(hex16: str) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(hex16), dtype="<u4").astype(np.uint32)


def _keys_of(cases):
    """Stack the two keys of every case: (seeds (K,1,4), ts (K,1), seed_cw (K,n,4),
    t_cw (K,n,2), final_cw (K,4)) with K = 2 * len(cases), key0 then key1 per case."""
    seeds, ts, scw, tcw, fcw = [], [], [], [], []
    for c in cases:
        d = c["decoded"]
        for party in (0, 1):
            seeds.append([_words(d[f"root_seed{party}"])])
            ts.append([d[f"root_t{party}"]])
            scw.append([_words(cw["seed_cw"]) for cw in d["correction_words"]])
            tcw.append([[cw["t_cw_left"], cw["t_cw_right"]] for cw in d["correction_words"]])
            fcw.append(_words(d["final_cw"]))
    u = np.uint32
    return (np.array(seeds, u), np.array(ts, u), np.array(scw, u), np.array(tcw, u),
            np.array(fcw, u))


def _check_full_eval(leaves: np.ndarray, cases) -> None:
    for i, c in enumerate(cases):
        for party in (0, 1):
            got = hashlib.sha256(leaves[2 * i + party].astype("<u4").tobytes()).hexdigest()
            assert got == c[f"full_eval_sha256_key{party}"], (c["domain_bits"], c["target"], party)


def _np_masked_xor(pages: np.ndarray, masks: np.ndarray) -> np.ndarray:
    k, t, _ = masks.shape
    out = np.zeros((k, 1024), np.uint32)
    for i in range(k):
        out[i] = np.bitwise_xor.reduce(pages[:t] & np.tile(masks[i], (1, 256)), axis=0)
    return out


# --------------------------------------------------------------------------------------------
# ChaCha8 / GGM
# --------------------------------------------------------------------------------------------
def test_chacha8_block_words_matches_prg_vectors(fixtures_dir):
    vecs = _fixture(fixtures_dir, "prg_vectors.json")
    seeds = np.stack([_words(v["seed"]) for v in vecs])  # (24, 4)
    s = [jnp.asarray(seeds[:, w]) for w in range(4)]
    for counter, field in ((0, "block0"), (1, "block1")):
        got = np.stack([np.asarray(x) for x in chacha8_block_words(s, counter, unroll=False)], 1)
        want = np.stack([np.frombuffer(bytes.fromhex(v[field]), "<u4") for v in vecs])
        np.testing.assert_array_equal(got, want)


def test_expand_levels_reference_matches_fixture_full_eval(fixtures_dir):
    cases = [c for c in _fixture(fixtures_dir, "dpf_vectors.json") if c["domain_bits"] == 5]
    assert cases
    args = [jnp.asarray(a) for a in _keys_of(cases)]
    _check_full_eval(np.asarray(expand_levels_reference(*args)), cases)


def test_expand_levels_pallas_matches_fixture_full_eval(fixtures_dir):
    cases = [c for c in _fixture(fixtures_dir, "dpf_vectors.json") if c["domain_bits"] == 5]
    assert cases
    args = [jnp.asarray(a) for a in _keys_of(cases)]
    # the default store ("select") and loop form, levels=2 over 5 levels: calls of 2, 2 and 1
    # levels (the last applies final_cw); 1 node per program in the first call, 4 later
    leaves = expand_levels_pallas(*args, block=GGMBlock(nodes=8, levels=2), interpret=True)
    _check_full_eval(np.asarray(leaves), cases)


def test_expand_levels_pallas_mid_tree_matches_reference():
    rng = np.random.default_rng(1)
    k, r, lv = 3, 6, 3  # R not a power of two: 2 nodes per program
    seeds = rng.integers(0, 2**32, (k, r, 4), dtype=np.uint32)
    ts = rng.integers(0, 2, (k, r), dtype=np.uint32)
    scw = rng.integers(0, 2**32, (k, lv, 4), dtype=np.uint32)
    tcw = rng.integers(0, 2, (k, lv, 2), dtype=np.uint32)
    fcw = rng.integers(0, 2**32, (k, 4), dtype=np.uint32)
    args = [jnp.asarray(a) for a in (seeds, ts, scw, tcw, fcw)]
    want = np.asarray(expand_levels_reference(*args))
    # children groups stored with strided slices, 3 levels in one call
    got = expand_levels_pallas(
        *args, block=GGMBlock(nodes=4, levels=3, store="split", unroll=False), interpret=True)
    assert got.shape == (k, r * 2**lv, 4)
    np.testing.assert_array_equal(np.asarray(got), want)
    # L == 0: only the final correction
    got0 = expand_levels_pallas(*args[:2], args[2][:, :0], args[3][:, :0], args[4],
                                interpret=True)
    want0 = np.where(ts[..., None] == 1, seeds ^ fcw[:, None, :], seeds)
    np.testing.assert_array_equal(np.asarray(got0), want0)


# --------------------------------------------------------------------------------------------
# masked XOR
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "t,k,block,offset",
    [
        # key padding (3 -> 4), 2 splits of 16 pages + 8 remainder pages, 4 vector blocks
        (40, 3, ScanBlock(keys=4, vecs=64, pages=16, unroll=4, num_warps=2), None),
        # 3 key blocks of 2 (K=5 padded to 6), per-key accumulators, tile at page offset 5,
        # remainder of 5 pages
        (37, 5, ScanBlock(keys=2, vecs=256, pages=8, unroll=2, layout="keyloop"), 5),
    ],
)
def test_masked_xor_pallas_matches_reference(t, k, block, offset):
    rng = np.random.default_rng(t)
    rows = t + (offset or 0) + 3
    pages = rng.integers(0, 2**32, (rows, 1024), dtype=np.uint32)
    masks = rng.integers(0, 2**32, (k, t, 4), dtype=np.uint32)
    want = _np_masked_xor(pages[(offset or 0):], masks)
    ref = masked_xor_reference(jnp.asarray(pages[(offset or 0):]), jnp.asarray(masks))
    np.testing.assert_array_equal(np.asarray(ref), want)
    got = masked_xor_pallas(jnp.asarray(pages), jnp.asarray(masks), block=block, interpret=True,
                            page_offset=offset)
    assert got.shape == (k, 1024) and got.dtype == jnp.uint32
    np.testing.assert_array_equal(np.asarray(got), want)


def test_masked_xor_pallas_rejects_bad_shapes():
    with pytest.raises(ValueError, match="pages must be"):
        masked_xor_pallas(jnp.zeros((4, 512), jnp.uint32), jnp.zeros((1, 4, 4), jnp.uint32))
    with pytest.raises(ValueError, match="fewer than"):
        masked_xor_pallas(jnp.zeros((2, 1024), jnp.uint32), jnp.zeros((1, 4, 4), jnp.uint32))
    with pytest.raises(ValueError, match="power of two"):
        ScanBlock(keys=3)


# --------------------------------------------------------------------------------------------
# Against the XLA ops (morphogen_exp/pir/xla_ops.py), and the registry
# --------------------------------------------------------------------------------------------
def test_pallas_matches_xla_ops():
    rng = np.random.default_rng(7)
    pages = rng.integers(0, 2**32, (24, 1024), dtype=np.uint32)
    masks = rng.integers(0, 2**32, (3, 24, 4), dtype=np.uint32)
    blk = ScanBlock(keys=4, vecs=128, pages=8, unroll=4)
    np.testing.assert_array_equal(
        np.asarray(masked_xor_pallas(jnp.asarray(pages), jnp.asarray(masks), block=blk,
                                     interpret=True)),
        np.asarray(masked_xor_xla(jnp.asarray(pages), jnp.asarray(masks))))
    k, r, lv = 2, 2, 2
    args = [jnp.asarray(a) for a in (
        rng.integers(0, 2**32, (k, r, 4), dtype=np.uint32),
        rng.integers(0, 2, (k, r), dtype=np.uint32),
        rng.integers(0, 2**32, (k, lv, 4), dtype=np.uint32),
        rng.integers(0, 2, (k, lv, 2), dtype=np.uint32),
        rng.integers(0, 2**32, (k, 4), dtype=np.uint32))]
    np.testing.assert_array_equal(
        np.asarray(expand_levels_pallas(*args, block=GGMBlock(nodes=2, levels=1, store="join"),
                                        interpret=True)),
        np.asarray(expand_levels_xla(*args)))


def test_pallas_engine_is_its_modules_object():
    ops = get("pallas")  # imports pallas_ops, whose last line builds the engine
    from morphogen_exp.pir import pallas_ops  # noqa: PLC0415

    assert ops is pallas_ops.ENGINE and ops.name == "pallas" and ops.cpu_note
    assert (ops.expand_levels, ops.masked_xor, ops.masked_xor_at) == (
        pallas_ops.expand_levels_fn, pallas_ops.masked_xor_fn, pallas_ops.masked_xor_at_fn)


# --------------------------------------------------------------------------------------------
# Triton lowering for CUDA (no GPU needed: JAX lowers Pallas to Triton IR in Python; only the
# Triton -> PTX compile happens on the device).  Catches unsupported ops on a CPU machine.
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "block",
    [ScanBlock(), ScanBlock(keys=4, vecs=64, pages=1024, num_warps=2, layout="keyloop"),
     ScanBlock(keys=8, vecs=128, pages=512, combine="atomic")],
    ids=["default", "keyloop", "atomic"],
)
def test_masked_xor_lowers_to_triton(block):
    import functools  # noqa: PLC0415

    import jax  # noqa: PLC0415

    s = jax.ShapeDtypeStruct
    fn = functools.partial(masked_xor_pallas, block=block)
    low = jax.jit(fn).trace(s((4100, 1024), jnp.uint32), s((12, 4100, 4), jnp.uint32)).lower(
        lowering_platforms=("cuda",))
    assert "xla.gpu.triton" in low.as_text()


def test_expand_levels_lowers_to_triton():
    import functools  # noqa: PLC0415

    import jax  # noqa: PLC0415

    s, u = jax.ShapeDtypeStruct, jnp.uint32
    for block in (GGMBlock(levels=3), GGMBlock(levels=1, store="select", unroll=True),
                  GGMBlock(levels=2, store="split", unroll=False)):
        fn = functools.partial(expand_levels_pallas, block=block)
        low = jax.jit(fn).trace(s((6, 4, 4), u), s((6, 4), u), s((6, 5, 4), u), s((6, 5, 2), u),
                                s((6, 4), u)).lower(lowering_platforms=("cuda",))
        assert low.as_text().count("xla.gpu.triton") == -(-5 // block.levels)
