"""``python scripts/check_sharded.py ENGINE``: ENGINE's scan over every local device, sharded and replicated (a
ragged database whose shards start off the tile and subtree grid), equals the numpy oracle; exit 1 if not. The
database is loaded as a cell loads it (``placement.load``: an engine's own layout built per device from its own
rows), so a layout engine is checked on what it will scan. A quick gate before a multi-GPU sweep spends device
time on an engine that does not shard."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

from morphogen_exp.config import DatasetConfig
from morphogen_exp.measure import placement as placements
from morphogen_exp.pir import EngineSpec, KeyBatch, answer_numpy, generate_keys, get


def main(engine: str, num_pages: int = 5000) -> int:
    rng = np.random.default_rng(5)
    pages = rng.integers(0, 256, size=(num_pages, 4096), dtype=np.uint8)
    keys = [generate_keys(13, int(t), rng)[0] for t in (0, num_pages // 2 + 1, num_pages - 1)]
    want = answer_numpy(pages, keys)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pages.bin"
        path.write_bytes(pages.tobytes())
        for name in ("sharded", "replicated"):
            plc = placements.Placement(name, tuple(jax.devices()))
            ds = placements.load(DatasetConfig("check", 1, str(path)), 0, plc, get(engine).layout)
            ctx = placements.new_context(ds, EngineSpec(engine, tile_pages=1024), plc)
            got = np.asarray(ctx.single_jit(ctx.pages, KeyBatch.from_keys(keys).to_device()))
            exact = np.array_equal(got.view(np.uint8).reshape(len(keys), 4096), want)
            ok &= exact
            print(f"{engine} {name} over {len(plc.devices)} device(s), {num_pages} pages: "
                  f"{'exact' if exact else 'MISMATCH'} (database: {ds.layout})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "xla"))
