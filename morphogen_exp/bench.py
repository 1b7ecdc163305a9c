"""Engine benchmarks: kernels alone, no Hydra, no MLflow (runs on a bare GPU image).

    python -m morphogen_exp.bench engine --pages 65536 --keys 3,96 --engines xla
    python -m morphogen_exp.bench engine --pages 16777216 --keys 3,96 --csv out.csv
    python -m morphogen_exp.bench ceilings             # device copy GB/s and integer ops/s
    python -m morphogen_exp.bench breakdown --pages 16777216 --keys 3,96 --tiles 65536,262144
                                                       # where a scan's time goes, per tile size

For each engine and key count: full-domain evaluation alone, then the one-pass scan, each with
compile time apart and medians over repeats with rotating keys (so nothing is served from a cache
of a previous identical input); bytes and operations counted; achieved GB/s set against a device
copy measured in the same run."""

from __future__ import annotations

import argparse
import csv
import functools
import sys
import time
from dataclasses import asdict, dataclass

import jax
import jax.numpy as jnp
import numpy as np

from .memory import configure_process
from .datasets import _synthetic_words_device, domain_bits_for
from .pir.jax_engine import (EngineSpec, KeyBatch, _expand, expand_nodes_xla, full_eval_jax, get_ops,
                             make_answer_fn, tile_size)
from .pir.keys import generate_keys


@dataclass
class Row:
    device: str
    jax_version: str
    engine: str
    what: str
    pages: int
    keys: int
    tile_pages: int
    unroll: bool
    compile_s: float
    median_ms: float
    min_ms: float
    gbps: float            # database bytes read / time (scan), or leaf bytes written (full eval)
    gblocks_s: float       # ChaCha8 blocks / time (2 per GGM node)
    copy_gbps: float       # device copy, bytes read + written, same run


def _median_ms(fn, args_list, repeats: int) -> tuple[float, float]:
    times = []
    for i in range(repeats):
        args = args_list[i % len(args_list)]
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times)), float(np.min(times))


def copy_gbps(words: jax.Array, repeats: int = 10) -> float:
    copy = jax.jit(lambda x: x ^ jnp.uint32(1))  # a copy XLA cannot elide
    jax.block_until_ready(copy(words))
    med, _ = _median_ms(copy, [(words,)], repeats)
    return 2 * words.nbytes / (med / 1e3) / 1e9


def int_ops_per_s(num_words: int = 1 << 24, chain: int = 64, repeats: int = 5) -> float:
    """Integer-throughput ceiling: a fused chain of shift/AND/shift/XOR (4 jnp ops per step) over
    u32 words, arithmetic-bound (4*chain ops per 8 bytes moved). Counts jnp ops, not SASS
    instructions (the GPU may fuse AND+XOR into one LOP3): read it as the rate the scan's own
    AND-XOR pairs can reach."""

    @jax.jit
    def chain_ops(x: jax.Array) -> jax.Array:
        a = x
        for i in range(chain):
            a = (a & (x >> jnp.uint32(i % 7 + 1))) ^ (a << jnp.uint32(1))
        return a

    x = jax.lax.broadcasted_iota(jnp.uint32, (num_words,), 0) * jnp.uint32(2654435761)
    jax.block_until_ready(chain_ops(x))
    med, _ = _median_ms(chain_ops, [(x,)], repeats)
    return 4 * chain * num_words / (med / 1e3)


def _keybatches(domain_bits: int, num_pages: int, k: int, sets: int) -> list[KeyBatch]:
    rng = np.random.default_rng(1234 + k)
    out = []
    for _ in range(sets):
        keys = [generate_keys(domain_bits, int(rng.integers(0, num_pages)), rng)[0] for _ in range(k)]
        out.append(jax.device_put(KeyBatch.from_keys(keys)))
    return out


def bench_engine(num_pages: int, key_counts: list[int], engines: list[str], tile_pages: int | None,
                 unroll: bool | None, repeats: int) -> list[Row]:
    dev = jax.local_devices()[0]
    words = jax.block_until_ready(_synthetic_words_device(num_pages, 7))
    cgb = copy_gbps(words)
    n = domain_bits_for(num_pages)
    rows = []
    for engine in engines:
        for k in key_counts:
            spec = EngineSpec(engine, tile_pages or EngineSpec.tile_pages, unroll)
            kbs = _keybatches(n, num_pages, k, sets=3)
            common = dict(device=dev.device_kind, jax_version=jax.__version__, engine=engine, pages=num_pages,
                          keys=k, tile_pages=tile_size(num_pages, n, spec), unroll=spec.resolved_unroll, copy_gbps=cgb)
            # full-domain evaluation (skip where the leaves alone would not fit comfortably)
            if k * (1 << n) * 16 <= 8 * 2**30:
                fe = functools.partial(full_eval_jax, spec=spec)
                t0 = time.perf_counter()
                jax.block_until_ready(fe(kbs[0]))
                comp = time.perf_counter() - t0
                med, mn = _median_ms(fe, [(kb,) for kb in kbs], repeats)
                rows.append(Row(what="full_eval", compile_s=comp, median_ms=med, min_ms=mn,
                                gbps=k * (1 << n) * 16 / (med / 1e3) / 1e9,
                                gblocks_s=k * 2 * ((1 << n) - 1) / (med / 1e3) / 1e9, **common))
            scan = make_answer_fn(num_pages, spec)
            t0 = time.perf_counter()
            jax.block_until_ready(scan(words, kbs[0]))
            comp = time.perf_counter() - t0
            med, mn = _median_ms(scan, [(words, kb) for kb in kbs], repeats)
            rows.append(Row(what="scan", compile_s=comp, median_ms=med, min_ms=mn,
                            gbps=words.nbytes / (med / 1e3) / 1e9,
                            gblocks_s=k * 2 * ((1 << n) - 1) / (med / 1e3) / 1e9, **common))
            print(_fmt(rows[-1]), flush=True)
    return rows


def read_gbps(words: jax.Array, repeats: int = 5) -> float:
    """Read-only rate: each row XOR-folded to one word (0.1% written), bytes read / time (the scan's
    floor). Pass a few GiB, not a 64 GiB database: XLA's autotuner allocates a scratch copy of the
    operand (out of memory on an 80 GB card)."""
    fold = jax.jit(lambda x: jax.lax.reduce(x, jnp.uint32(0), jax.lax.bitwise_xor, (1,)))
    jax.block_until_ready(fold(words))
    med, _ = _median_ms(fold, [(words,)], repeats)
    return words.nbytes / (med / 1e3) / 1e9


def _breakdown_parts(num_pages: int, spec: EngineSpec) -> dict:
    """The scan split into what it does per tile: masked-XOR alone (fixed masks, no expansion),
    the subtree expansion alone (its masks folded to a few words, no page read), and both."""
    ops = get_ops(spec.name)
    n = domain_bits_for(num_pages)
    t = tile_size(num_pages, n, spec)
    d = n - (t.bit_length() - 1)
    tiles = num_pages // t

    def top(kb: KeyBatch):
        return expand_nodes_xla(kb.root_seed[:, None, :], kb.root_t[:, None], kb.seed_cw[:, :d],
                                kb.t_cw[:, :d], unroll=spec.resolved_unroll, doubling_levels=0)

    @jax.jit
    def xor_only(words, masks):
        def body(j, acc):
            if ops.masked_xor_at is not None:
                return acc ^ ops.masked_xor_at(words, j * t, masks)
            return acc ^ ops.masked_xor(jax.lax.dynamic_slice_in_dim(words, j * t, t, axis=0), masks)
        return jax.lax.fori_loop(0, tiles, body, jnp.zeros((masks.shape[0], 1024), jnp.uint32))

    @jax.jit
    def expand_only(kb: KeyBatch):
        seeds, ts = top(kb)
        def body(j, acc):
            m = _expand(ops, spec, jax.lax.dynamic_slice_in_dim(seeds, j, 1, axis=1),
                        jax.lax.dynamic_slice_in_dim(ts, j, 1, axis=1), kb.seed_cw[:, d:], kb.t_cw[:, d:],
                        kb.final_cw)
            return acc ^ jax.lax.reduce(m, jnp.uint32(0), jax.lax.bitwise_xor, (1,))
        return jax.lax.fori_loop(0, tiles, body, jnp.zeros((kb.root_t.shape[0], 4), jnp.uint32))

    @jax.jit
    def top_only(kb: KeyBatch):
        return top(kb)

    return {"tile": t, "tiles": tiles, "xor_only": xor_only, "expand_only": expand_only, "top_only": top_only,
            "scan": make_answer_fn(num_pages, spec)}


def bench_breakdown(num_pages: int, key_counts: list[int], engine: str, tiles: list[int],
                    repeats: int) -> list[dict]:
    """Time the scan and its parts at each tile size; rows carry the copy and read rates of the same run."""
    words = jax.block_until_ready(_synthetic_words_device(num_pages, 7))
    dev, cgb, rgb = jax.local_devices()[0].device_kind, copy_gbps(words[: 1 << 19]), read_gbps(words[: 1 << 20])
    print(f"{dev}: copy {cgb:.0f} GB/s (2 GiB, read+write), read {rgb:.0f} GB/s (4 GiB)",
          flush=True)
    n = domain_bits_for(num_pages)
    rows = []
    for k in key_counts:
        kbs = _keybatches(n, num_pages, k, sets=3)
        rng = np.random.default_rng(k)
        for tp in tiles:
            parts = _breakdown_parts(num_pages, EngineSpec(engine, tp))
            masks = [jax.device_put(rng.integers(0, 2**32, (k, parts["tile"], 4), dtype=np.uint32)) for _ in range(2)]
            cases = {"xor_only": (parts["xor_only"], [(words, m) for m in masks]),
                     "expand_only": (parts["expand_only"], [(kb,) for kb in kbs]),
                     "top_only": (parts["top_only"], [(kb,) for kb in kbs]),
                     "scan": (parts["scan"], [(words, kb) for kb in kbs])}
            for what, (fn, args) in cases.items():
                t0 = time.perf_counter()
                jax.block_until_ready(fn(*args[0]))
                comp = time.perf_counter() - t0
                med, mn = _median_ms(fn, args, repeats)
                row = dict(device=dev, jax_version=jax.__version__, engine=engine, pages=num_pages, keys=k,
                           tile_pages=parts["tile"], tiles=parts["tiles"], what=what, compile_s=round(comp, 2),
                           median_ms=round(med, 3), min_ms=round(mn, 3), copy_gbps=round(cgb), read_gbps=round(rgb))
                rows.append(row)
                print(" ".join(f"{k_}={v}" for k_, v in row.items() if k_ not in ("device", "jax_version")), flush=True)
    return rows


def bench_scan_blocks(num_pages: int, k: int, tile: int, blocks: list, repeats: int) -> list[dict]:
    """The Pallas masked-XOR over the whole database (fixed masks, tile by tile, read in place)
    with each ScanBlock: the block search at the scan's real shape."""
    from .pir.pallas_scan import masked_xor_pallas  # noqa: PLC0415  (GPU-only kernels)

    words = jax.block_until_ready(_synthetic_words_device(num_pages, 7))
    rgb = read_gbps(words[: 1 << 20])
    masks = jax.device_put(np.random.default_rng(k).integers(0, 2**32, (k, tile, 4), dtype=np.uint32))
    tiles = num_pages // tile
    interpret = jax.default_backend() != "gpu"  # CPU: the wiring only, in interpret mode
    rows = []
    for blk in blocks:
        @jax.jit
        def run(words, masks, blk=blk):
            def body(j, acc):
                return acc ^ masked_xor_pallas(words, masks, block=blk, page_offset=j * tile, interpret=interpret)
            return jax.lax.fori_loop(0, tiles, body, jnp.zeros((k, 1024), jnp.uint32))
        try:
            t0 = time.perf_counter()
            jax.block_until_ready(run(words, masks))
            comp = time.perf_counter() - t0
            med, mn = _median_ms(run, [(words, masks)], repeats)
        except Exception as e:  # a block Triton rejects is a result too
            print(f"{blk}: failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}", flush=True)
            continue
        rows.append(dict(num_keys=k, tile=tile, **asdict(blk), compile_s=round(comp, 2), median_ms=round(med, 3),
                         gbps=round(words.nbytes / (med / 1e3) / 1e9), read_gbps=round(rgb)))
        print(rows[-1], flush=True)
    return sorted(rows, key=lambda r: r["median_ms"])


def _write_csv(path: str | None, rows: list[dict]) -> None:
    """The rows as CSV at path (nothing when no path or no row)."""
    if path and rows:
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


def _fmt(r: Row) -> str:
    return (f"{r.device:>22} {r.engine:>6} {r.what:>9} pages={r.pages:<9} K={r.keys:<3} T={r.tile_pages:<6} "
            f"unroll={int(r.unroll)} compile={r.compile_s:7.2f}s median={r.median_ms:9.3f} ms "
            f"{r.gbps:8.1f} GB/s {r.gblocks_s:7.2f} Gblk/s (copy {r.copy_gbps:.0f} GB/s)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m morphogen_exp.bench", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("engine", help="full-domain eval and scan alone")
    e.add_argument("--pages", type=int, default=4096)
    e.add_argument("--keys", default="3,12")
    e.add_argument("--engines", default="xla")
    e.add_argument("--tile-pages", type=int, default=None)
    e.add_argument("--unroll", choices=["auto", "yes", "no"], default="auto")
    e.add_argument("--repeats", type=int, default=10)
    e.add_argument("--csv", default=None)
    c = sub.add_parser("ceilings", help="device copy GB/s and integer ops/s, the two ceilings")
    c.add_argument("--words", type=int, default=1 << 29, help="u32 words per probe (2 GiB: smaller misses the roofline)")
    b = sub.add_parser("breakdown", help="the scan and its parts (masked-XOR alone, expansion alone) per tile size")
    b.add_argument("--pages", type=int, default=4096)
    b.add_argument("--keys", default="3,96")
    b.add_argument("--engine", default="pallas")
    b.add_argument("--tiles", default="65536", help="comma-separated tile sizes (pages, powers of two)")
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--csv", default=None)
    s = sub.add_parser("blocks", help="Pallas masked-XOR block shapes over the whole database, one K and tile")
    s.add_argument("--pages", type=int, default=4096)
    s.add_argument("--keys", type=int, default=3)
    s.add_argument("--tile", type=int, default=4096)
    s.add_argument("--grid", default="vecs=128,256 pages=512,1024 unroll=8 num_warps=2,4",
                   help="space-separated field=v1,v2 lists crossed over ScanBlock.get_default(K, tile)")
    s.add_argument("--repeats", type=int, default=5)
    s.add_argument("--csv", default=None)
    args = ap.parse_args(argv)
    configure_process()
    if args.cmd == "blocks":
        import itertools  # noqa: PLC0415
        from .pir.pallas_scan import ScanBlock  # noqa: PLC0415

        base = ScanBlock.get_default(args.keys, args.tile)
        axes = [(f, [type(getattr(base, f))(v) for v in vs.split(",")])
                for f, vs in (item.split("=") for item in args.grid.split())]
        blocks = [base] + [base.replace(**dict(zip([f for f, _ in axes], combo)))
                           for combo in itertools.product(*(vs for _, vs in axes))]
        rows = bench_scan_blocks(args.pages, args.keys, args.tile, list(dict.fromkeys(blocks)), args.repeats)
        print("best:", rows[0] if rows else None)
        _write_csv(args.csv, rows)
        return 0
    if args.cmd == "ceilings":
        words = jax.lax.broadcasted_iota(jnp.uint32, (args.words // 1024, 1024), 0)
        dev = jax.local_devices()[0].device_kind
        print(f"{dev}: copy {copy_gbps(words):.0f} GB/s (read+write), "
              f"integer {int_ops_per_s(args.words) / 1e12:.2f} T ops/s (jnp shift/and/xor chain), JAX {jax.__version__}")
        return 0
    try:
        keys = [int(x) for x in args.keys.split(",")]
    except ValueError:
        print(f"error: --keys must be comma-separated integers, got {args.keys!r}", file=sys.stderr)
        return 2
    if args.cmd == "breakdown":
        rows = bench_breakdown(args.pages, keys, args.engine, [int(x) for x in args.tiles.split(",")], args.repeats)
        _write_csv(args.csv, rows)
        return 0
    unroll = {"auto": None, "yes": True, "no": False}[args.unroll]
    rows = bench_engine(args.pages, keys, args.engines.split(","), args.tile_pages, unroll, args.repeats)
    _write_csv(args.csv, [asdict(r) for r in rows])
    for r in rows:
        print(_fmt(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
