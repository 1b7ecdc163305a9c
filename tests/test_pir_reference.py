"""The numpy reference and key code against the original's vectors, DPF properties, and errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from morphogen_exp.pir import Key, answer, eval_points, generate_keys
from morphogen_exp.pir.keys import SplitMix64, generate_keys_from_seeds, key_length
from morphogen_exp.pir.prg import chacha8_blocks, prg_expand, seed_bytes_to_words, words_to_bytes
from morphogen_exp.pir.reference import answer_numpy, eval_prefix, full_eval

ONES = b"\xff" * 16
ZEROS = b"\x00" * 16


@pytest.fixture(scope="module")
def prg_vectors(fixtures_dir: Path) -> list[dict]:
    return json.loads((fixtures_dir / "prg_vectors.json").read_text())


@pytest.fixture(scope="module")
def dpf_cases(fixtures_dir: Path) -> list[dict]:
    return json.loads((fixtures_dir / "dpf_vectors.json").read_text())


def _keys(case: dict) -> tuple[Key, Key]:
    return (Key.from_bytes(bytes.fromhex(case["key0_bytes"])),
            Key.from_bytes(bytes.fromhex(case["key1_bytes"])))


def _case_id(case: dict) -> str:
    return f"domain_bits={case['domain_bits']} target={case['target']}"


# --------------------------------------------------------------------------- fixture vectors


def test_prg_vectors(prg_vectors: list[dict]) -> None:
    assert len(prg_vectors) == 24
    seeds = np.stack([seed_bytes_to_words(bytes.fromhex(v["seed"])) for v in prg_vectors])
    b0, b1 = chacha8_blocks(seeds)
    left, right, tl, tr = prg_expand(seeds)
    for i, v in enumerate(prg_vectors):
        assert words_to_bytes(b0[i]).hex() == v["block0"], v["seed"]
        assert words_to_bytes(b1[i]).hex() == v["block1"], v["seed"]
        assert words_to_bytes(left[i]).hex() == v["left_seed"], v["seed"]
        assert words_to_bytes(right[i]).hex() == v["right_seed"], v["seed"]
        assert (int(tl[i]), int(tr[i])) == (v["left_t"], v["right_t"]), v["seed"]


def test_chacha8_zero_key_is_the_known_vector() -> None:
    b0, _ = chacha8_blocks(np.zeros((1, 4), dtype=np.uint32))
    assert words_to_bytes(b0[0]).hex().startswith("3e00ef2f")


def test_seed_word_helpers_are_little_endian() -> None:
    w = seed_bytes_to_words(bytes(range(1, 17)))
    assert w.dtype == np.uint32 and w.tolist() == [0x04030201, 0x08070605, 0x0C0B0A09, 0x100F0E0D]
    assert words_to_bytes(w) == bytes(range(1, 17))


def test_key_bytes_round_trip_and_decode(dpf_cases: list[dict]) -> None:
    assert len({c["domain_bits"] for c in dpf_cases}) == 7
    for case in dpf_cases:
        k0, k1 = _keys(case)
        dec = case["decoded"]
        n = case["domain_bits"]
        for k, party, raw in ((k0, 0, case["key0_bytes"]), (k1, 1, case["key1_bytes"])):
            assert len(bytes.fromhex(raw)) == case["key_len"] == key_length(n) == 35 + 18 * n
            assert k.to_bytes().hex() == raw, _case_id(case)
            assert Key.from_bytes(k.to_bytes()) == k
            assert (k.domain_bits, k.party, k.root_t) == (n, party, dec[f"root_t{party}"])
            assert k.root_seed.hex() == dec[f"root_seed{party}"]
            assert k.final_cw.hex() == dec["final_cw"]
            assert [s.hex() for s in k.seed_cw] == [cw["seed_cw"] for cw in dec["correction_words"]]
            assert list(k.t_cw_left) == [cw["t_cw_left"] for cw in dec["correction_words"]]
            assert list(k.t_cw_right) == [cw["t_cw_right"] for cw in dec["correction_words"]]


def test_keygen_reproduces_fixture_keys(dpf_cases: list[dict]) -> None:
    for case in dpf_cases:
        k0, k1 = _keys(case)
        g0, g1 = generate_keys_from_seeds(case["domain_bits"], case["target"],
                                          k0.root_seed, k1.root_seed)
        assert g0.to_bytes().hex() == case["key0_bytes"], _case_id(case)
        assert g1.to_bytes().hex() == case["key1_bytes"], _case_id(case)


def test_splitmix_reproduces_root_seeds(dpf_cases: list[dict]) -> None:
    rng = SplitMix64(20260618)
    for case in dpf_cases:
        assert rng.seed128().hex() == case["decoded"]["root_seed0"], _case_id(case)
        assert rng.seed128().hex() == case["decoded"]["root_seed1"], _case_id(case)


def test_point_evaluations(dpf_cases: list[dict]) -> None:
    for case in dpf_cases:
        k0, k1 = _keys(case)
        idx = [e["index"] for e in case["evaluations"]]
        e0, e1 = eval_points(k0, idx), eval_points(k1, idx)
        assert e0.shape == (len(idx), 16) and e0.dtype == np.uint8
        for i, e in enumerate(case["evaluations"]):
            where = f"{_case_id(case)} index={e['index']}"
            assert e0[i].tobytes().hex() == e["eval0"], where
            assert e1[i].tobytes().hex() == e["eval1"], where
            assert (e0[i] ^ e1[i]).tobytes().hex() == e["xor"], where
            assert e["xor"] == (ONES if e["index"] == case["target"] else ZEROS).hex(), where


def test_full_eval_digests(dpf_cases: list[dict]) -> None:
    for case in dpf_cases:
        k0, k1 = _keys(case)
        f0, f1 = full_eval(k0), full_eval(k1)
        assert f0.shape == (1 << case["domain_bits"], 16) and f0.dtype == np.uint8
        assert hashlib.sha256(f0.tobytes()).hexdigest() == case["full_eval_sha256_key0"], \
            _case_id(case)
        assert hashlib.sha256(f1.tobytes()).hexdigest() == case["full_eval_sha256_key1"], \
            _case_id(case)


def test_full_eval_agrees_with_point_eval(dpf_cases: list[dict]) -> None:
    case = next(c for c in dpf_cases if c["domain_bits"] == 10)
    k0, _ = _keys(case)
    np.testing.assert_array_equal(full_eval(k0), eval_points(k0, np.arange(1 << 10)))


def test_eval_prefix_on_threads_equals_the_fixture_digest_and_its_prefixes(dpf_cases: list[dict]) -> None:
    """The parity oracle's threaded evaluation: the whole domain gives the fixtures' digest, a ragged count its prefix."""
    case = next(c for c in dpf_cases if c["domain_bits"] == 10)
    k0, _ = _keys(case)
    whole = eval_prefix(k0, 1 << 10, block_log2=7, workers=3)  # 8 blocks over 3 threads
    assert hashlib.sha256(whole.tobytes()).hexdigest() == case["full_eval_sha256_key0"]
    np.testing.assert_array_equal(eval_prefix(k0, 1000, block_log2=7), whole[:1000])
    with pytest.raises(ValueError, match="count must be in"):
        eval_prefix(k0, 0)


# --------------------------------------------------------------------------- DPF / PIR properties


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 9), data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_keygen_xor_is_point_function(n: int, data: st.DataObject, seed: int) -> None:
    target = data.draw(st.integers(0, (1 << n) - 1))
    k0, k1 = generate_keys(n, target, np.random.default_rng(seed))
    assert (k0.party, k0.root_t, k1.party, k1.root_t) == (0, 0, 1, 1)
    x = full_eval(k0) ^ full_eval(k1)
    expected = np.zeros((1 << n, 16), dtype=np.uint8)
    expected[target] = 0xFF
    np.testing.assert_array_equal(x, expected)


@settings(max_examples=20, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_two_server_answers_xor_to_target_pages(data: st.DataObject, seed: int) -> None:
    num_pages = data.draw(st.integers(1, 40), label="N")
    n = data.draw(st.integers(max(1, (num_pages - 1).bit_length()), 7), label="domain_bits")
    # Targets inside the database and beyond it (still inside the DPF domain).
    targets = data.draw(st.lists(st.integers(0, (1 << n) - 1), min_size=1, max_size=3),
                        label="targets")
    rng = np.random.default_rng(seed)
    pages = rng.integers(0, 256, size=(num_pages, 4096), dtype=np.uint8)
    pairs = [generate_keys(n, t, rng) for t in targets]
    r0 = answer_numpy(pages, [p[0] for p in pairs])
    r1 = answer(pages, [p[1] for p in pairs], backend="numpy")
    assert r0.shape == (len(targets), 4096) and r0.dtype == np.uint8
    for k, t in enumerate(targets):
        want = pages[t] if t < num_pages else np.zeros(4096, dtype=np.uint8)
        np.testing.assert_array_equal(r0[k] ^ r1[k], want, err_msg=f"target {t}, N {num_pages}")


@settings(max_examples=10, deadline=None)
@given(num_pages=st.integers(1, 40), chunk_log2=st.integers(0, 4), seed=st.integers(0, 2**32 - 1))
def test_chunked_answer_matches_direct_formula(num_pages: int, chunk_log2: int, seed: int) -> None:
    """Chunk boundaries (aligned subtrees, partial last chunk) don't change the answer."""
    rng = np.random.default_rng(seed)
    pages = rng.integers(0, 256, size=(num_pages, 4096), dtype=np.uint8)
    keys = [generate_keys(6, int(rng.integers(64)), rng)[int(rng.integers(2))] for _ in range(2)]
    got = answer_numpy(pages, keys, chunk_log2=chunk_log2)
    for k, key in enumerate(keys):
        masks = np.tile(eval_points(key, np.arange(num_pages)), (1, 256))  # byte j -> j % 16
        want = np.bitwise_xor.reduce(pages & masks, axis=0)
        np.testing.assert_array_equal(got[k], want)


def test_generate_keys_is_deterministic_in_rng() -> None:
    a = generate_keys(8, 77, np.random.default_rng(5))
    b = generate_keys(8, 77, np.random.default_rng(5))
    c = generate_keys(8, 77, np.random.default_rng(6))
    assert a == b and a != c
    rng = np.random.default_rng(5)
    s0, s1 = rng.bytes(16), rng.bytes(16)
    assert (a[0].root_seed, a[1].root_seed) == (s0, s1)


# --------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def key_pair() -> tuple[Key, Key]:
    return generate_keys(4, 5, np.random.default_rng(0))


def _patched(raw: bytes, pos: int, value: int) -> bytes:
    b = bytearray(raw)
    b[pos] = value
    return bytes(b)


def test_from_bytes_errors(key_pair: tuple[Key, Key]) -> None:
    raw = key_pair[0].to_bytes()  # n = 4: 107 bytes
    with pytest.raises(ValueError, match=r"domain_bits=4 must be 107 bytes .* got 106"):
        Key.from_bytes(raw[:-1])
    with pytest.raises(ValueError, match=r"must be 107 bytes .* got 108"):
        Key.from_bytes(raw + b"\0")
    with pytest.raises(ValueError, match=r"too short.*19 bytes"):
        Key.from_bytes(raw[:10])
    with pytest.raises(ValueError, match=r"domain_bits\) must be in 1\.\.32, got 0"):
        Key.from_bytes(_patched(raw, 18, 0))
    with pytest.raises(ValueError, match=r"domain_bits\) must be in 1\.\.32, got 33"):
        Key.from_bytes(_patched(raw, 18, 33))
    with pytest.raises(ValueError, match=r"root_t\) must be 0 or 1, got 2"):
        Key.from_bytes(_patched(raw, 16, 2))
    with pytest.raises(ValueError, match=r"party\) must be 0 or 1, got 7"):
        Key.from_bytes(_patched(raw, 17, 7))
    with pytest.raises(ValueError, match=r"level 0 t_cw bytes .* must be 0 or 1"):
        Key.from_bytes(_patched(raw, 35, 2))
    with pytest.raises(ValueError, match=r"level 3 t_cw bytes .* must be 0 or 1"):
        Key.from_bytes(_patched(raw, 19 + 18 * 3 + 17, 255))


def test_key_post_init_errors(key_pair: tuple[Key, Key]) -> None:
    k = key_pair[0]
    fields = dict(domain_bits=k.domain_bits, party=k.party, root_seed=k.root_seed,
                  root_t=k.root_t, seed_cw=k.seed_cw, t_cw_left=k.t_cw_left,
                  t_cw_right=k.t_cw_right, final_cw=k.final_cw)
    assert Key(**{**fields, "seed_cw": list(k.seed_cw)}) == k  # lists are normalized to tuples
    for bad, match in [
        ({"domain_bits": 0}, r"domain_bits must be an int in 1\.\.32"),
        ({"domain_bits": 33}, r"domain_bits must be an int in 1\.\.32"),
        ({"party": 2}, r"party must be 0 or 1"),
        ({"root_t": -1}, r"root_t must be 0 or 1"),
        ({"root_seed": b"x" * 15}, r"root_seed must be 16 bytes, got 15"),
        ({"final_cw": "00" * 16}, r"final_cw must be 16 bytes"),
        ({"seed_cw": k.seed_cw[:-1]}, r"seed_cw must have 4 entries .* got 3"),
        ({"seed_cw": k.seed_cw[:-1] + (b"\0" * 17,)}, r"seed_cw\[3\] must be 16 bytes"),
        ({"t_cw_left": (0, 1, 2, 0)}, r"t_cw_left\[2\] must be 0 or 1"),
        ({"t_cw_right": (0, 1)}, r"t_cw_right must have 4 entries"),
    ]:
        with pytest.raises(ValueError, match=match):
            Key(**{**fields, **bad})


def test_generate_keys_errors() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"domain_bits must be an int in 1\.\.32, got 0"):
        generate_keys(0, 0, rng)
    with pytest.raises(ValueError, match=r"domain_bits must be an int in 1\.\.32, got 33"):
        generate_keys(33, 0, rng)
    with pytest.raises(ValueError, match=r"target must be in \[0, 2\^4\) = \[0, 16\).*got 16"):
        generate_keys(4, 16, rng)
    with pytest.raises(ValueError, match=r"target must be in .*got -1"):
        generate_keys(4, -1, rng)
    with pytest.raises(ValueError, match=r"root_seed0 must be 16 bytes"):
        generate_keys_from_seeds(4, 0, b"short", b"\0" * 16)
    k0, _ = generate_keys(32, 2**32 - 1, rng)  # the largest domain works
    assert len(k0.to_bytes()) == key_length(32)


def test_eval_points_errors(key_pair: tuple[Key, Key]) -> None:
    with pytest.raises(ValueError, match=r"index 16 is outside the key's domain \[0, 2\^4\)"):
        eval_points(key_pair[0], [0, 16])
    with pytest.raises(ValueError, match=r"index -1 is outside"):
        eval_points(key_pair[0], [-1])
    with pytest.raises(ValueError, match=r"indices must be integers"):
        eval_points(key_pair[0], [0.5])
    assert eval_points(key_pair[0], []).shape == (0, 16)


def test_answer_errors(key_pair: tuple[Key, Key]) -> None:
    keys = [key_pair[0]]
    ok = np.zeros((3, 4096), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"pages must be uint8 of shape \(N, 4096\), got .*int32"):
        answer_numpy(ok.astype(np.int32), keys)
    with pytest.raises(ValueError, match=r"pages must be uint8 of shape .*got .*\(3, 4095\)"):
        answer_numpy(ok[:, :4095], keys)
    with pytest.raises(ValueError, match=r"pages must be uint8 of shape \(N, 4096\)"):
        answer_numpy(ok.reshape(-1), keys)
    with pytest.raises(ValueError, match=r"at least one page"):
        answer_numpy(ok[:0], keys)
    with pytest.raises(ValueError, match=r"keys must be a non-empty"):
        answer_numpy(ok, [])
    other = generate_keys(5, 0, np.random.default_rng(1))[0]
    with pytest.raises(ValueError, match=r"keys of different domains in one answer: .*\[4, 5\]"):
        answer_numpy(ok, [key_pair[0], other])
    with pytest.raises(ValueError, match=r"N = 17 pages but .* 2\^4 = 16.*domain_bits >= 5"):
        answer_numpy(np.zeros((17, 4096), dtype=np.uint8), keys)
    with pytest.raises(ValueError, match=r"unknown backend 'cuda'; valid backends: numpy, jax"):
        answer(ok, keys, backend="cuda")


def test_numpy_path_never_imports_jax_and_has_no_import_cycle():
    """keys.py and reference.py both import prg.py (no cycle: each imports alone, in a fresh
    interpreter); the package's JAX names are lazy, so the numpy backend never loads JAX."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    for first in ("morphogen_exp.pir.keys", "morphogen_exp.pir.reference", "morphogen_exp.pir"):
        code = (f"import sys, importlib, numpy as np; importlib.import_module({first!r}); "
                "from morphogen_exp import pir; "
                "k = pir.generate_keys(4, 3, np.random.default_rng(0)); "
                "p = np.arange(10 * 4096, dtype=np.uint32).astype(np.uint8).reshape(10, 4096); "
                "a = pir.answer(p, k[:1]) ^ pir.answer(p, k[1:]); assert (a[0] == p[3]).all(); "
                "assert 'jax' not in sys.modules, 'jax imported'; "
                "assert pir.EngineSpec().name == 'xla' and 'jax' in sys.modules")
        subprocess.run([sys.executable, "-c", code], check=True)
