"""Engine benchmarks: kernels alone, no Hydra, no MLflow (runs on a bare GPU image).

    python -m morphogen_exp.bench engine --pages 65536 --keys 3,96 --engines xla
    python -m morphogen_exp.bench engine --pages 16777216 --keys 3,96 --csv out.csv
    python -m morphogen_exp.bench ceilings             # device copy GB/s and integer ops/s

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

from .datasets import _synthetic_words_device, domain_bits_for
from .pir.jax_engine import EngineSpec, KeyBatch, full_eval_jax, make_answer_fn, tile_size
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
    c.add_argument("--words", type=int, default=1 << 26, help="u32 words per probe")
    args = ap.parse_args(argv)
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
    unroll = {"auto": None, "yes": True, "no": False}[args.unroll]
    rows = bench_engine(args.pages, keys, args.engines.split(","), args.tile_pages, unroll, args.repeats)
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(asdict(rows[0])))
            w.writeheader()
            w.writerows(asdict(r) for r in rows)
    for r in rows:
        print(_fmt(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
