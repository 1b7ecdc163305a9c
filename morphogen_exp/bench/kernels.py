"""The scan split into its parts, and the Pallas block searches. Each is an engine registered for the
occasion and run through pir's own scan over the whole database (nothing here re-writes the scan):

- parts: ``xor_only`` (stand-in masks from a hash, no ChaCha8: every tile's masked XOR), ``expand_only``
  (the subtree expansions, their masks folded, no page read), ``top_only`` (neither: what is left, the
  top expansion and the tile loop), beside the real ``scan``;
- blocks: the Pallas masked XOR with each ScanBlock over stand-in masks, checked against the XLA op;
- ggm: the Pallas expansion with each GGMBlock (no page read), checked against the XLA expansion.

The stand-in masks are written per tile like the real expansion's. A variant that raises is printed
and skipped; a compiler crash (SIGSEGV: GGMBlock store "join" / "strided" on an H100) ends the
process, so search such shapes in a run of their own. Off the GPU the kernels run in interpret mode.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from ..measure.datasets import domain_bits_for
from ..pir import PAGE_WORDS, Engine, EngineSpec, backend, get, make_answer_fn, register, scan_bytes_read, scan_plan, unregister
from ..pir.pages import xor_reduce
from ..pir.pallas_ggm import GGMBlock, expand_levels_pallas
from ..pir.pallas_scan import ScanBlock, masked_xor_pallas
from ..pir.xla_ops import expand_levels_xla, masked_xor_xla
from .common import copy_gbps, database, keybatches, mix, pages, read_gbps, timed

PARTS = ("xor_only", "expand_only", "top_only", "scan")


def stand_in_masks(seeds: jax.Array, ts: jax.Array, seed_cw: jax.Array, t_cw: jax.Array, final_cw: jax.Array) -> jax.Array:
    """(K, R * 2^L, 4) masks hashed from the subtree roots and the leaf index: an expansion without ChaCha8."""
    shape = (ts.shape[0], ts.shape[1] << seed_cw.shape[-2], 4)
    leaf = lax.broadcasted_iota(jnp.uint32, shape, 1) * jnp.uint32(4) + lax.broadcasted_iota(jnp.uint32, shape, 2)
    return mix(leaf ^ seeds[:, :1, :])


def folded(pages_words: jax.Array, masks: jax.Array) -> jax.Array:
    """A masked XOR that reads no page: the tile's masks XOR-folded and repeated over a page."""
    return jnp.tile(xor_reduce(masks, 1), (1, PAGE_WORDS // 4))


def _interpret() -> bool:
    return not backend.on_gpu()


@contextmanager
def variant(name: str, expand: Callable[..., jax.Array], xor: Callable[..., jax.Array],
            xor_at: Callable[..., jax.Array] | None = None) -> Iterator[str]:
    """An engine of these ops registered as ``name`` for the block, then forgotten."""
    register(Engine(name=name, expand_levels=expand, masked_xor=xor, masked_xor_at=xor_at))
    try:
        yield name
    finally:
        unregister(name)


def part_ops(engine: str, part: str) -> tuple[Callable[..., jax.Array], Callable[..., jax.Array], Callable[..., jax.Array] | None]:
    """The ops of ``engine`` with the expansion, the page read, or both, replaced (see PARTS)."""
    ops = get(engine)
    if part == "scan":
        return ops.expand_levels, ops.masked_xor, ops.masked_xor_at
    expand = stand_in_masks if part in ("xor_only", "top_only") else ops.expand_levels
    return (expand, ops.masked_xor, ops.masked_xor_at) if part == "xor_only" else (expand, folded, None)


def parse_grid(base: Any, grid: str) -> list[Any]:
    """``base`` (a ScanBlock or GGMBlock) and every combination of ``field=v1,v2 field=...``, deduplicated."""
    axes = [(f, [type(getattr(base, f))(v) for v in vs.split(",")]) for f, vs in (item.split("=") for item in grid.split())]
    names = [f for f, _ in axes]
    combos = (dataclasses.replace(base, **dict(zip(names, c, strict=True))) for c in itertools.product(*(v for _, v in axes)))
    return list(dict.fromkeys([base, *combos]))


def _run(name: str, num_pages: int, tile: int, words: jax.Array, kbs: list, repeats: int) -> tuple[dict[str, float], jax.Array]:
    fn = make_answer_fn(num_pages, EngineSpec(name, tile))
    t = timed(fn, [(words, kb) for kb in kbs], repeats)
    return t, jax.block_until_ready(fn(words, kbs[0]))


def bench_breakdown(num_pages: int, key_counts: list[int], engine: str, tiles: list[int], repeats: int) -> list[dict]:
    """The scan and its parts at each tile size; rows carry the copy and read rates of the same run."""
    words, _ = database(num_pages, engine)  # the engine's own layout, if it has one: the parts read it as its scan does
    dev, cgb, rgb = jax.local_devices()[0].device_kind, copy_gbps(words[: 1 << 19]), read_gbps(words[: 1 << 20])
    print(f"{dev}: copy {cgb:.0f} GB/s (2 GiB, read+write), read {rgb:.0f} GB/s (4 GiB)", flush=True)
    rows = []
    for k in key_counts:
        kbs = keybatches(num_pages, k, sets=3)
        for tp in tiles:
            plan = scan_plan(num_pages, domain_bits_for(num_pages), EngineSpec(engine, tp), k)
            for part in PARTS:
                with variant(f"{engine}.{part}", *part_ops(engine, part)) as name:
                    t, _ = _run(name, num_pages, tp, words, kbs, repeats)
                row = dict(device=dev, jax_version=jax.__version__, engine=engine, pages=num_pages, keys=k,
                           tile_pages=plan.tile, tiles=plan.num_full, tail=plan.tail, what=part, **t,
                           copy_gbps=round(cgb), read_gbps=round(rgb))
                rows.append(row)
                print(" ".join(f"{k_}={v}" for k_, v in row.items() if k_ not in ("device", "jax_version")), flush=True)
    return rows


def _search(kind: str, num_pages: int, k: int, tile: int, variants: list[Any], repeats: int,
            ops_for: Callable[[Any], tuple[Callable[..., jax.Array], ...]], ref_ops: tuple[Callable[..., jax.Array], ...],
            rate: Callable[[float], dict[str, float]]) -> list[dict]:
    """Each variant's op set through the scan, timed and compared bit for bit with ``ref_ops``; fastest first.
    ``rate(median_ms)`` gives the row's throughput columns."""
    words, kbs = pages(num_pages), keybatches(num_pages, k, sets=2)
    rgb = read_gbps(words[: 1 << 20])
    with variant(f"{kind}.reference", *ref_ops) as name:
        _, want = _run(name, num_pages, tile, words, kbs, 1)
    rows = []
    for v in variants:
        try:
            with variant(f"{kind}.variant", *ops_for(v)) as name:
                t, got = _run(name, num_pages, tile, words, kbs, repeats)
        except Exception as e:  # a shape Triton rejects is a result too
            print(f"{v}: failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}", flush=True)
            continue
        rows.append(dict(num_keys=k, tile=tile, **dataclasses.asdict(v), **t, identical=bool(jnp.array_equal(got, want)),
                         **rate(t["median_ms"]), read_gbps=round(rgb)))
        print(rows[-1], flush=True)
    return sorted(rows, key=lambda r: r["median_ms"])


def bench_blocks(num_pages: int, k: int, tile: int, blocks: list[ScanBlock], repeats: int) -> list[dict]:
    """The Pallas masked XOR with each ScanBlock over the whole database, tile by tile, read in place."""
    interp = _interpret()

    def ops_for(b: ScanBlock) -> tuple[Callable[..., jax.Array], ...]:
        return (stand_in_masks, lambda p, m: masked_xor_pallas(p, m, block=b, interpret=interp),
                lambda p, o, m: masked_xor_pallas(p, m, block=b, page_offset=o, interpret=interp))

    bytes_read = scan_bytes_read(num_pages, EngineSpec(tile_pages=tile), k)
    return _search("blocks", num_pages, k, tile, blocks, repeats, ops_for, (stand_in_masks, masked_xor_xla),
                   lambda ms: {"gbps": round(bytes_read / (ms / 1e3) / 1e9)})


def bench_ggm(num_pages: int, k: int, tile: int, blocks: list[GGMBlock], repeats: int) -> list[dict]:
    """The Pallas expansion with each GGMBlock, every subtree of the scan, no page read."""
    interp = _interpret()

    def ops_for(b: GGMBlock) -> tuple[Callable[..., jax.Array], ...]:
        return (lambda *a: expand_levels_pallas(*a, block=b, interpret=interp), folded)

    leaves = scan_plan(num_pages, domain_bits_for(num_pages), EngineSpec(tile_pages=tile), k).leaves_expanded
    return _search("ggm", num_pages, k, tile, blocks, repeats, ops_for, (expand_levels_xla, folded),
                   lambda ms: {"gblocks_s": round(2 * k * leaves / (ms / 1e3) / 1e9, 3)})  # 2 ChaCha8 blocks per node
