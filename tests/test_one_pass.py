"""A batch reads the database once: vmapping the query scan hands the engine all 3Q keys at once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from morphogen_exp.pir import Engine, EngineSpec, KeyBatch, query_scan, register, unregister
from morphogen_exp.pir.keys import generate_keys
from morphogen_exp.pir.reference import answer_numpy
from morphogen_exp.pir.xla_ops import expand_levels_xla, masked_xor_xla

SEEN_KEYS: list[int] = []


def _counting_masked_xor(pages, masks):
    SEEN_KEYS.append(masks.shape[0])  # at trace time: how many keys one pass over a tile serves
    return masked_xor_xla(pages, masks)


@pytest.fixture(autouse=True)
def _counting_engine():
    register(Engine(name="counting", expand_levels=expand_levels_xla, masked_xor=_counting_masked_xor))
    yield
    unregister("counting")  # other tests see only the real engines


def test_vmap_and_lax_map_over_queries_are_one_pass_per_batch():
    rng = np.random.default_rng(3)
    n_pages, q = 100, 4
    pages = rng.integers(0, 256, (n_pages, 4096), dtype=np.uint8)
    words = jnp.asarray(pages.view("<u4"))
    keys = [[generate_keys(7, int(rng.integers(0, n_pages)), rng)[0] for _ in range(3)] for _ in range(q)]
    kb = jax.device_put(KeyBatch.stack([KeyBatch.from_keys(k) for k in keys]))
    fn = query_scan(n_pages, EngineSpec("counting", tile_pages=32))
    ref = np.stack([answer_numpy(pages, k) for k in keys])

    SEEN_KEYS.clear()
    full = jax.jit(jax.vmap(fn, in_axes=(None, 0)))(words, kb)
    # plain vmap would trace the op with 3 keys only (and batch it q times); custom_vmap traces the
    # unbatched form once for shapes, then the op with all 12 keys of one scan
    assert max(SEEN_KEYS) == 3 * q
    SEEN_KEYS.clear()
    tiled = jax.jit(lambda p, k: jax.lax.map(lambda x: fn(p, x), k, batch_size=2))(words, kb)
    assert max(SEEN_KEYS) == 3 * 2  # each tile of 2 queries: one pass for its 6 keys
    for out in (full, tiled):
        assert np.array_equal(np.asarray(out).astype("<u4").view(np.uint8).reshape(q, 3, 4096), ref)
