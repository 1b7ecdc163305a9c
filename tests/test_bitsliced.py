"""Bit-sliced database and the GF(2) masked XOR (pir/bitsliced.py), bit for bit against numpy and the
reference vectors; the CUDA kernel's build helper (pir/cuda) without a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from morphogen_exp import pir
from morphogen_exp.pir import Engine, EngineSpec, KeyBatch, cuda, full_eval_jax, get
from morphogen_exp.pir.bitsliced import (
    CHUNK_PAGES,
    BitslicedDB,
    bitslice_host,
    bitslice_pages,
    bitslice_rows,
    chunk_span,
    masked_xor_bitsliced,
    transpose32,
    unslice_pages,
)
from morphogen_exp.pir.cuda import bmma
from morphogen_exp.pir.keys import Key, generate_keys
from morphogen_exp.pir.reference import answer_numpy
from morphogen_exp.pir.xla_ops import expand_levels_xla, masked_xor_xla

N_PAGES = 700  # ragged: not a multiple of 32 or 256
DOMAIN_BITS = 10
RNG = np.random.default_rng(20261127)
PAGES_U8 = RNG.integers(0, 256, size=(N_PAGES, 4096), dtype=np.uint8)
PAGES_W = PAGES_U8.view("<u4").astype(np.uint32)


@pytest.fixture(scope="module")
def db() -> BitslicedDB:
    return bitslice_pages(jnp.asarray(PAGES_W), N_PAGES)


_xor_at = jax.jit(masked_xor_bitsliced, static_argnames="impl")


def _layout_numpy(pages_w: np.ndarray) -> np.ndarray:
    """The documented layout, built independently: word (c, j, rt, g, tig, reg) holds bit position
    b = (16 rt + 8 (reg & 1) + g) * 128 + j of pages 256 c + 32 (4 (reg >> 1) + tig) + i at bit i."""
    n = pages_w.shape[0]
    c = -(-n // CHUNK_PAGES)
    bits = np.zeros((c * CHUNK_PAGES, 32768), np.uint8)
    bits[:n] = np.unpackbits(pages_w.astype("<u4").view(np.uint8), axis=1, bitorder="little")
    bits = bits.reshape(c, 8, 32, 32768)  # [c, q, i, b]
    packed = np.packbits(bits, axis=2, bitorder="little")  # [c, q, byte, b]
    words = np.ascontiguousarray(packed.transpose(0, 1, 3, 2)).view("<u4")[..., 0]  # [c, q, b]
    out = np.zeros((c, 128, 16, 8, 4, 4), np.uint32)
    for reg in range(4):
        hi, qh = reg & 1, reg >> 1
        for g in range(8):
            for tig in range(4):
                b = ((np.arange(16)[:, None] * 16 + hi * 8 + g) * 128 + np.arange(128)[None, :])  # [rt, j]
                out[:, :, :, g, tig, reg] = words[:, qh * 4 + tig, b.T]
    return out.reshape(c * CHUNK_PAGES, 1024)


def _masked_xor_numpy(pages_w: np.ndarray, offset: int, masks: np.ndarray) -> np.ndarray:
    k, t, _ = masks.shape
    tile = pages_w[offset: offset + t].reshape(t, 256, 4)
    return np.bitwise_xor.reduce(tile[None] & masks[:, :, None, :], axis=1).reshape(k, 1024)


def test_transpose32_is_a_bit_transpose() -> None:
    x = RNG.integers(0, 2**32, size=(2, 32), dtype=np.uint32)
    y = np.asarray(transpose32(jnp.asarray(x)))
    xb = (x[:, :, None] >> np.arange(32, dtype=np.uint32)) & 1  # [a, row i, bit s]
    yb = (y[:, :, None] >> np.arange(32, dtype=np.uint32)) & 1  # [a, s, i]
    np.testing.assert_array_equal(yb, xb.transpose(0, 2, 1))


def test_layout_matches_numpy_and_round_trips(db: BitslicedDB) -> None:
    assert db.words.shape == (768, 1024) and db.words.dtype == jnp.uint32 and db.num_pages == N_PAGES
    np.testing.assert_array_equal(np.asarray(db.words), _layout_numpy(PAGES_W))
    np.testing.assert_array_equal(np.asarray(unslice_pages(db)), PAGES_W)
    # chunk-by-chunk steps give the same words as one step
    np.testing.assert_array_equal(np.asarray(bitslice_pages(jnp.asarray(PAGES_W), 300, 1).words),
                                  _layout_numpy(PAGES_W[:300]))


def test_host_streaming_build_equals_device_build(db: BitslicedDB) -> None:
    for pages in (PAGES_U8, PAGES_W):
        streamed = bitslice_host(pages, group_pages=300)  # groups of 256 pages, a ragged last one
        assert streamed.num_pages == N_PAGES
        np.testing.assert_array_equal(np.asarray(streamed.words), np.asarray(db.words))
    with pytest.raises(ValueError, match="uint8"):
        bitslice_host(PAGES_U8.astype(np.int16))


@pytest.mark.parametrize("k,t,offset", [(1, 256, 0), (3, 300, 5), (6, 256, 444), (3, 1, 699),
                                        (6, 700, 0)])
def test_masked_xor_matches_numpy(db: BitslicedDB, k: int, t: int, offset: int) -> None:
    masks = RNG.integers(0, 2**32, size=(k, t, 4), dtype=np.uint32)
    out = np.asarray(_xor_at(db, jnp.int32(offset), jnp.asarray(masks), impl="jnp"))
    np.testing.assert_array_equal(out, _masked_xor_numpy(PAGES_W, offset, masks))
    # ...and the XLA engine op on the same tile (the contract the scan relies on)
    tile = jnp.asarray(PAGES_W[offset: offset + t])
    np.testing.assert_array_equal(out, np.asarray(masked_xor_xla(tile, jnp.asarray(masks))))


@pytest.mark.parametrize("k", [1, 3, 6])
def test_tiles_of_dpf_masks_match_answer_numpy(db: BitslicedDB, k: int) -> None:
    """Ragged tiles of real DPF masks XORed together are the numpy server answer."""
    rng = np.random.default_rng(k)
    keys = [generate_keys(DOMAIN_BITS, int(rng.integers(N_PAGES)), rng)[int(rng.integers(2))] for _ in range(k)]
    masks = np.asarray(full_eval_jax(KeyBatch.from_keys(keys).to_device(), EngineSpec(unroll=False)))
    acc = np.zeros((k, 1024), np.uint32)
    for lo, hi in [(0, 256), (256, 556), (556, N_PAGES)]:
        acc ^= np.asarray(_xor_at(db, jnp.int32(lo), jnp.asarray(masks[:, lo:hi]), impl="jnp"))
    expect = answer_numpy(PAGES_U8, keys)
    np.testing.assert_array_equal(acc.view(np.uint8).reshape(k, 4096), expect)


def _fixture_keys(fixtures_dir: Path) -> list[tuple[Key, Key, int]]:
    cases = json.loads((fixtures_dir / "dpf_vectors.json").read_text())
    return [(Key.from_bytes(bytes.fromhex(c["key0_bytes"])), Key.from_bytes(bytes.fromhex(c["key1_bytes"])),
             c["target"]) for c in cases if c["domain_bits"] == DOMAIN_BITS and c["target"] < N_PAGES]


def test_registered_engine_answers_reference_vectors(fixtures_dir: Path) -> None:
    """pir.answer(engine="bitsliced") (the registered engine: its layout built by pir.answer, the jnp GF(2)
    product, the XLA expansion on CPU) on the original's keys, one scan of all of them: equal to the
    numpy answer, and server 0 XOR server 1 is the target page (the fixture's truth)."""
    cases = _fixture_keys(fixtures_dir)
    assert len(cases) >= 3
    keys = [key for k0, k1, _ in cases for key in (k0, k1)]  # K = 2 * cases (6 or more)
    out = pir.answer(PAGES_U8, keys, backend="jax", engine="bitsliced")
    np.testing.assert_array_equal(out, answer_numpy(PAGES_U8, keys))
    for i, (_, _, target) in enumerate(cases):
        np.testing.assert_array_equal(out[2 * i] ^ out[2 * i + 1], PAGES_U8[target])


def test_registered_engine_wiring() -> None:
    """Engine "bitsliced": its own layout (the bit-sliced words, rows padded to 256), read in
    place; the expansion is XLA's off the GPU (bit for bit the "xla" engine's full evaluation)."""
    ops = get("bitsliced")
    assert ops.layout is not None and ops.masked_xor_at is not None
    words = ops.prepare(jnp.asarray(PAGES_W), N_PAGES)
    np.testing.assert_array_equal(np.asarray(words), _layout_numpy(PAGES_W))
    raw = jnp.asarray(PAGES_W)
    assert get("xla").prepare(raw, N_PAGES) is raw  # no layout: the raw pages themselves
    keys = KeyBatch.from_keys(generate_keys(DOMAIN_BITS, 3, np.random.default_rng(3))).to_device()
    np.testing.assert_array_equal(np.asarray(full_eval_jax(keys, EngineSpec("bitsliced", unroll=False))),
                                  np.asarray(full_eval_jax(keys, EngineSpec("xla", unroll=False))))
    with pytest.raises(ValueError, match="needs a masked_xor_at"):
        Engine(name="bitsliced_broken", expand_levels=expand_levels_xla, masked_xor=masked_xor_xla, layout=ops.layout,
               placements=frozenset({"single"}))
    with pytest.raises(ValueError, match="must be a non-empty subset"):
        Engine(name="bitsliced_broken", expand_levels=expand_levels_xla, masked_xor=masked_xor_xla, layout=ops.layout,
               masked_xor_at=ops.masked_xor_at, placements=frozenset({"spread"}))
    # its layout is built per device (datasets.load), so it runs on every placement (tests/test_placement.py)
    assert ops.placements == {"single", "replicated", "sharded"} and "bitsliced_broken" not in pir.available_engines()


def test_bad_inputs_name_what_to_fix(db: BitslicedDB) -> None:
    m = jnp.zeros((1, 4, 4), jnp.uint32)
    with pytest.raises(ValueError, match="num_pages"):
        bitslice_pages(jnp.asarray(PAGES_W), N_PAGES + 1)
    with pytest.raises(ValueError, match="uint32"):
        bitslice_pages(jnp.asarray(PAGES_W).astype(jnp.int32), 4)
    with pytest.raises(ValueError, match="bitslice_pages"):
        masked_xor_bitsliced(jnp.zeros((100, 1024), jnp.uint32), 0, m)
    with pytest.raises(ValueError, match="masks"):
        masked_xor_bitsliced(db, 0, m[:, :, :2])
    with pytest.raises(ValueError, match="impl"):
        masked_xor_bitsliced(db, 0, m, impl="cuda")


def test_chunk_span_covers_any_offset() -> None:
    for t in (1, 255, 256, 300, 4096):
        need = max(-(-(off % 256 + t) // 256) for off in range(256))
        assert chunk_span(t, 10**6) >= need
        assert chunk_span(t, 10**6) <= need + 1
    assert chunk_span(4096, 3) == 3


def test_bmma_key_groups() -> None:
    assert bmma.key_group(3) == (1, 1)
    assert bmma.key_group(24) == (3, 3)
    assert bmma.key_group(96) == (4, 12)
    assert bmma.key_group(40) == (3, 6)  # 5 key tiles: 3+3 pads less than 4+4


def test_bmma_without_gpu_or_nvcc_says_so(monkeypatch, tmp_path) -> None:
    if jax.default_backend() == "gpu":
        pytest.skip("a GPU is present")
    with pytest.raises(cuda.CudaUnavailable, match="GPU backend"):
        masked_xor_bitsliced(jnp.zeros((256, 1024), jnp.uint32), 0, jnp.zeros((1, 4, 4), jnp.uint32), impl="bmma")
    monkeypatch.setenv("MORPHOGEN_CUDA_CACHE", str(tmp_path))
    monkeypatch.delenv("MORPHOGEN_NVCC", raising=False)
    monkeypatch.setattr(cuda, "_CUDA_HOMES", ())
    monkeypatch.setattr(cuda, "_DEFAULT_CUDA_HOME", str(tmp_path / "none"))
    monkeypatch.setattr(cuda.shutil, "which", lambda _name: None)
    with pytest.raises(cuda.CudaUnavailable, match="nvcc not found"):
        cuda.build()


@pytest.mark.skipif(not any(Path(p).is_file() for p in ("/usr/local/cuda/bin/nvcc",)) and
                    cuda.shutil.which("nvcc") is None, reason="no nvcc here")
def test_bmma_source_compiles_for_sm90a(monkeypatch, tmp_path) -> None:
    """The CUDA source builds (no GPU needed); a second call reuses the cached library."""
    monkeypatch.setenv("MORPHOGEN_CUDA_CACHE", str(tmp_path))
    lib = cuda.build()
    assert lib.is_file() and lib.parent.parent == tmp_path
    mtime = lib.stat().st_mtime_ns
    assert cuda.build() == lib and lib.stat().st_mtime_ns == mtime


def test_rows_build_in_groups_equals_one_shot_build(db: BitslicedDB) -> None:
    """The streamed build (device rows read group by group, a ragged last group) == bitslice_pages."""
    raw, calls = jnp.asarray(PAGES_W), []

    def read(lo: int, hi: int) -> jax.Array:
        calls.append((lo, hi))
        return raw[lo:hi]

    built = bitslice_rows(read, N_PAGES, group_pages=600)  # rounded down to 512: groups [0, 512), [512, 700)
    assert calls == [(0, 512), (512, N_PAGES)]
    np.testing.assert_array_equal(np.asarray(built.words), np.asarray(db.words))
    with pytest.raises(ValueError, match=r"read\(0, 256\) gave \(255, 1024\)"):
        bitslice_rows(lambda lo, hi: raw[lo: hi - 1], 300, group_pages=256)
