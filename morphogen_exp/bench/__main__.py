"""Engine benchmarks: kernels alone, no Hydra, no MLflow (runs on a bare GPU image).

    python -m morphogen_exp.bench engine --pages 65536 --keys 3,96 --engines xla,pallas,bitsliced
    python -m morphogen_exp.bench ceilings             # device copy GB/s and integer ops/s
    python -m morphogen_exp.bench breakdown --pages 16777216 --keys 3,96 --tiles 65536,262144
                                                       # where a scan's time goes, per tile size
    python -m morphogen_exp.bench blocks --pages 16777216 --keys 3 --tile 4194304 --grid "num_warps=1,2"
    python -m morphogen_exp.bench ggm --pages 1048576 --keys 96 --tile 65536 --grid "levels=1,2 num_warps=4,8"
    python -m morphogen_exp.bench sass --define MORPHOGEN_CHACHA_FMA=2 --out DIR   # static SASS mix, no GPU (sass.py)

engine: for each engine and key count, full-domain evaluation alone, then the one-pass scan, each with
compile time apart (and the engine's own database layout, if it has one, built once apart:
layout_build_s), medians over repeats with rotating keys (nothing is served from a cache of an
identical previous input); GB/s counts the bytes the scan reads (pir.scan_bytes_read), set against a
device copy measured in the same run. blocks / ggm search the Pallas kernels' block shapes at the
scan's real shape, each checked bit for bit against the XLA op (kernels.py)."""

from __future__ import annotations

import argparse
import functools
import itertools
import sys
from typing import Any

import jax

from ..measure.datasets import domain_bits_for
from ..measure.memory import configure_process
from ..pir import EngineSpec, full_eval_jax, get, make_answer_fn, scan_bytes_read, tile_size
from ..pir.pallas_ggm import GGMBlock
from ..pir.pallas_scan import ScanBlock
from . import sass
from .common import copy_gbps, database, int_ops_per_s, keybatches, timed, write_csv
from .kernels import bench_blocks, bench_breakdown, bench_ggm, parse_grid


def bench_engine(num_pages: int, key_counts: list[int], engines: list[str], tile_pages: int | None,
                 unroll: bool | None, repeats: int, full_eval: bool = True) -> list[dict[str, Any]]:
    n, rows = domain_bits_for(num_pages), []
    for engine in engines:  # one database at a time: an engine's layout and the raw pages need not both fit
        words, layout_s = database(num_pages, engine)
        cgb = copy_gbps(words)
        if layout_s:
            print(f"{engine}: database layout built in {layout_s:.2f} s (once, apart from the timings)", flush=True)
        for k in key_counts:
            spec = EngineSpec(engine, tile_pages or EngineSpec.tile_pages, unroll)
            kbs = keybatches(num_pages, k, sets=3)
            common = dict(device=jax.local_devices()[0].device_kind, jax_version=jax.__version__, engine=engine,
                          pages=num_pages, keys=k, tile_pages=tile_size(num_pages, n, spec, k), unroll=spec.resolved_unroll,
                          layout_build_s=layout_s)
            blocks = k * 2 * ((1 << n) - 1)  # ChaCha8 blocks of K full trees (2 per node)
            if full_eval and k * (1 << n) * 16 <= 8 * 2**30:  # full-domain evaluation, where the leaves fit comfortably
                t = timed(functools.partial(full_eval_jax, spec=spec), [(kb,) for kb in kbs], repeats)
                rows.append(dict(**common, what="full_eval", **t, gbps=k * (1 << n) * 16 / (t["median_ms"] / 1e3) / 1e9,
                                 gblocks_s=blocks / (t["median_ms"] / 1e3) / 1e9, copy_gbps=cgb))
                print(_fmt(rows[-1]), flush=True)
            t = timed(make_answer_fn(num_pages, spec), [(words, kb) for kb in kbs], repeats)
            rows.append(dict(**common, what="scan", **t, gbps=scan_bytes_read(num_pages, spec, k) / (t["median_ms"] / 1e3) / 1e9,
                             gblocks_s=blocks / (t["median_ms"] / 1e3) / 1e9, copy_gbps=cgb))
            print(_fmt(rows[-1]), flush=True)
        del words
    return rows


def _fmt(r: dict[str, Any]) -> str:
    return (f"{r['device']:>22} {r['engine']:>9} {r['what']:>9} pages={r['pages']:<9} K={r['keys']:<3} T={r['tile_pages']:<7} "
            f"unroll={int(r['unroll'])} compile={r['compile_s']:7.2f}s median={r['median_ms']:9.3f} ms "
            f"{r['gbps']:8.1f} GB/s {r['gblocks_s']:7.2f} Gblk/s (copy {r['copy_gbps']:.0f} GB/s)")


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise SystemExit(f"error: {flag} must be comma-separated integers, got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m morphogen_exp.bench", description=(__doc__ or "").splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("engine", help="full-domain eval and scan alone")
    e.add_argument("--keys", default="3,12")
    e.add_argument("--engines", default="xla")
    e.add_argument("--tile-pages", type=int, default=None)
    e.add_argument("--unroll", choices=["auto", "yes", "no"], default="auto")
    e.add_argument("--scan-only", action="store_true", help="skip the full-domain evaluation (a database near the card's size)")
    c = sub.add_parser("ceilings", help="device copy GB/s and integer ops/s, the two ceilings")
    c.add_argument("--words", type=int, default=1 << 29, help="u32 words per probe (2 GiB: smaller misses the roofline)")
    b = sub.add_parser("breakdown", help="the scan and its parts (masked-XOR alone, expansion alone) per tile size")
    b.add_argument("--keys", default="3,96")
    b.add_argument("--engine", default="pallas")
    b.add_argument("--tiles", default="65536", help="comma-separated tile sizes (pages, powers of two)")
    for name, what in (("blocks", "Pallas masked-XOR block shapes (ScanBlock)"), ("ggm", "Pallas GGM expansion block shapes (GGMBlock)")):
        s = sub.add_parser(name, help=f"{what} over the whole database, one K and tile, checked against XLA")
        s.add_argument("--keys", type=int, default=3)
        s.add_argument("--tile", type=int, default=4096)
        s.add_argument("--grid", default="num_warps=1,2" if name == "blocks" else "levels=1,2",
                       help="space-separated field=v1,v2 lists crossed over the default block")
    sass.add_parser(sub)
    for p in (e, b, sub.choices["blocks"], sub.choices["ggm"]):
        p.add_argument("--pages", type=int, default=4096)
        p.add_argument("--repeats", type=int, default=5)
        p.add_argument("--csv", default=None)
    return ap


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return 2 if e.code else 0
    if args.cmd == "sass":  # compile and disassemble only: no device
        return sass.main(args)
    configure_process()
    try:
        return _run(args)
    except SystemExit as e:  # a setting to fix: one line, exit 2
        print(e, file=sys.stderr)
        return 2


def _check(args: argparse.Namespace) -> None:
    """Engine names and tile sizes, before any device work: a bad one is a setting to fix."""
    if args.cmd == "engine":
        engines, tiles = args.engines.split(","), [args.tile_pages or EngineSpec.tile_pages]
    elif args.cmd == "breakdown":
        engines, tiles = [args.engine], _ints(args.tiles, "--tiles")
    else:
        engines, tiles = ["xla"], [args.tile]
    try:
        for engine, tile in itertools.product(engines, tiles):
            get(EngineSpec(engine, tile).name)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def _check_counts(args: argparse.Namespace) -> None:
    """Every count (--pages, --keys, --repeats, --tile, --tiles, --tile-pages, --words) is >= 1: a 0 is a setting to
    fix, said in one line, never a traceback from inside a kernel."""
    for name in ("pages", "keys", "repeats", "tile", "tiles", "tile_pages", "words"):
        value = getattr(args, name, None)
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        for v in _ints(value, flag) if isinstance(value, str) else [value]:
            if v < 1:
                raise SystemExit(f"error: {flag} must be >= 1, got {v}")


def _run(args: argparse.Namespace) -> int:
    _check_counts(args)
    if args.cmd != "ceilings":
        _check(args)
    if args.cmd == "ceilings":
        words = jax.lax.broadcasted_iota("uint32", (args.words // 1024, 1024), 0)
        print(f"{jax.local_devices()[0].device_kind}: copy {copy_gbps(words):.0f} GB/s (read+write), "
              f"integer {int_ops_per_s(args.words) / 1e12:.2f} T ops/s (jnp shift/and/xor chain), JAX {jax.__version__}")
        return 0
    if args.cmd in ("blocks", "ggm"):
        base = ScanBlock.get_default(args.keys, args.tile) if args.cmd == "blocks" else GGMBlock.get_default()
        try:
            variants = parse_grid(base, args.grid)
        except (ValueError, TypeError) as e:
            raise SystemExit(f"error: --grid {args.grid!r}: {e}") from None
        search = bench_blocks if args.cmd == "blocks" else bench_ggm
        rows = search(args.pages, args.keys, args.tile, variants, args.repeats)
        print("best:", rows[0] if rows else None)
    elif args.cmd == "breakdown":
        rows = bench_breakdown(args.pages, _ints(args.keys, "--keys"), args.engine, _ints(args.tiles, "--tiles"), args.repeats)
    else:
        unroll = {"auto": None, "yes": True, "no": False}[args.unroll]
        rows = bench_engine(args.pages, _ints(args.keys, "--keys"), args.engines.split(","), args.tile_pages, unroll, args.repeats,
                            full_eval=not args.scan_only)
    write_csv(args.csv, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
