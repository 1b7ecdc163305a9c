"""``python scripts/check_sharded.py ENGINE``: the sharded scan of ENGINE over every local device (a ragged
database whose shards start off the tile and subtree grid) equals the numpy oracle; exit 1 if not. A quick
gate before a multi-GPU sweep spends device time on an engine that does not shard."""

from __future__ import annotations

import sys

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from morphogen_exp.pir import EngineSpec, KeyBatch, answer_numpy, generate_keys, pages_to_words
from morphogen_exp.pir.scan import sharded_query_scan


def main(engine: str, num_pages: int = 5000) -> int:
    rng = np.random.default_rng(5)
    pages = rng.integers(0, 256, size=(num_pages, 4096), dtype=np.uint8)
    keys = [generate_keys(13, int(t), rng)[0] for t in (0, num_pages // 2 + 1, num_pages - 1)]
    devices = jax.devices()
    mesh = Mesh(np.array(devices), ("d",))
    rows = -(-num_pages // len(devices))
    words = np.zeros((rows * len(devices), 1024), np.uint32)
    words[:num_pages] = pages_to_words(pages)
    sharded = jax.device_put(words, NamedSharding(mesh, PartitionSpec("d")))
    scan = jax.jit(sharded_query_scan(num_pages, EngineSpec(engine, tile_pages=1024), mesh, "d"))
    got = np.asarray(scan(sharded, KeyBatch.from_keys(keys).to_device())).view(np.uint8).reshape(len(keys), 4096)
    ok = np.array_equal(got, answer_numpy(pages, keys))
    print(f"{engine} sharded over {len(devices)} device(s), {num_pages} pages: {'exact' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "xla"))
