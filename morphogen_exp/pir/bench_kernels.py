"""GPU benchmark of the engine ops: masked XOR and GGM expansion, XLA vs Pallas (Triton).

    python -m morphogen_exp.pir.bench_kernels [--pages-log2 19] [--budget-s 380] [--sections ...]

Imports only jax and numpy (the device image has no hydra / mlflow).  On the device:
- synthetic pages are an elementwise hash of the index, built on the device (jax.random.bits
  on GiB arrays ran an H100 out of memory);
- a device copy gives the memory roofline (bytes read + written);
- every variant is compiled apart (compile time reported), checked bit for bit against the XLA
  op on the same inputs, then timed: median (and min) over ``--reps`` calls with rotating inputs;
- one failing variant prints its error and the sweep goes on; a time budget skips what is left.
Prints a table per section and writes ``$OUT/bench_kernels.csv`` (and ``.json``) if OUT is set.
On a CPU (``--quick``) it runs tiny shapes in Pallas interpret mode: a dry run of the script.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.85")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse  # noqa: E402
import csv  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import importlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402


def _load(name: str, required: bool = True):
    """morphogen_exp.pir.<name>, or the sibling file if the package does not import."""
    full = f"morphogen_exp.pir.{name}"
    try:
        return importlib.import_module(full)
    except Exception as e:  # noqa: BLE001
        err = e
    path = Path(__file__).with_name(f"{name}.py")
    if path.exists():
        try:
            spec = importlib.util.spec_from_file_location(full, path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[full] = mod
            spec.loader.exec_module(mod)
            return mod
        except Exception as e2:  # noqa: BLE001
            sys.modules.pop(full, None)
            err = e2
    if required:
        raise ImportError(f"cannot import {full}: {err}")
    print(f"# note: {full} not importable ({type(err).__name__}: {err}); using fallbacks")
    return None


ps = _load("pallas_scan")
pg = _load("pallas_ggm")
ScanBlock, GGMBlock = ps.ScanBlock, pg.GGMBlock

ROWS: list[dict] = []
T_START = time.perf_counter()
ARGS: argparse.Namespace


def elapsed() -> float:
    return time.perf_counter() - T_START


def over_budget() -> bool:
    return elapsed() > ARGS.budget_s


# --------------------------------------------------------------------------------------------
# Synthetic data (cheap elementwise hash of the index, on the device)
# --------------------------------------------------------------------------------------------
def _hash32(x):
    x = x ^ (x >> jnp.uint32(16))
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> jnp.uint32(15))
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> jnp.uint32(16))


@functools.partial(jax.jit, static_argnames=("shape",))
def hashed(shape: tuple[int, ...], seed):
    idx = lax.broadcasted_iota(jnp.uint32, shape, len(shape) - 1)
    stride = 1
    for ax in range(len(shape) - 2, -1, -1):
        stride *= shape[ax + 1]
        idx = idx + lax.broadcasted_iota(jnp.uint32, shape, ax) * jnp.uint32(stride & 0xFFFFFFFF)
    return _hash32(idx ^ (jnp.uint32(0x9E3779B9) * (seed.astype(jnp.uint32) + jnp.uint32(1))))


def make(shape, seed: int, bits01: bool = False):
    x = hashed(tuple(int(s) for s in shape), jnp.asarray(seed, jnp.uint32))
    return x & jnp.uint32(1) if bits01 else x


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------
def _block(x):
    return jax.tree_util.tree_map(lambda a: a.block_until_ready(), x)


def measure(fn, arg_sets, *, reps: int, ref=None):
    """Compile fn on arg_sets[0] (time apart), run once, compare to ref, then time ``reps``
    calls cycling through arg_sets.  Returns (out0, compile_s, median_s, min_s, identical)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*arg_sets[0]).compile()
    compile_s = time.perf_counter() - t0
    out = _block(compiled(*arg_sets[0]))
    identical = None
    if ref is not None:
        identical = bool(jnp.array_equal(out, ref))
    times = []
    for i in range(reps):
        a = arg_sets[(i + 1) % len(arg_sets)]
        t = time.perf_counter()
        _block(compiled(*a))
        times.append(time.perf_counter() - t)
    return out, compile_s, statistics.median(times), min(times), identical


def record(section: str, **kw) -> dict:
    row = dict(section=section, **kw)
    ROWS.append(row)
    return row


def fmt_row(r: dict) -> str:
    ms = r.get("median_ms")
    parts = [f"{r['section']:<7}", f"{r.get('impl', ''):<7}", f"K={r.get('K', '')!s:<3}",
             f"{r.get('size', ''):<14}", f"{r.get('variant', ''):<44}"]
    if ms is None:
        parts.append(f"ERROR {r.get('error', '')[:150]}")
    else:
        parts.append(f"{ms:9.3f} ms (min {r['min_ms']:.3f})")
        if r.get("gbps") is not None:
            parts.append(f"{r['gbps']:7.1f} GB/s")
        if r.get("rate") is not None:
            parts.append(f"{r['rate']:8.2f} {r.get('rate_unit', '')}")
        parts.append(f"ident={r.get('identical')}")
        parts.append(f"compile {r.get('compile_s', 0):.1f}s")
    return " ".join(parts)


def run_variant(section: str, impl: str, variant: str, fn, arg_sets, *, ref, reps, K, size,
                bytes_moved=None, work=None, rate_unit=""):
    """Measure one variant; never raises (errors are recorded and printed)."""
    if over_budget():
        row = record(section, impl=impl, K=K, size=size, variant=variant, median_ms=None,
                     error=f"skipped: time budget {ARGS.budget_s}s spent")
        print(fmt_row(row), flush=True)
        return None
    try:
        out, comp, med, mn, ident = measure(fn, arg_sets, reps=reps, ref=ref)
    except Exception as e:  # noqa: BLE001
        msg = f"{type(e).__name__}: {e}".replace("\n", " | ")
        row = record(section, impl=impl, K=K, size=size, variant=variant, median_ms=None,
                     error=msg[:2000])
        print(fmt_row(row), flush=True)
        if ARGS.verbose:
            traceback.print_exc()
        return None
    row = record(section, impl=impl, K=K, size=size, variant=variant, median_ms=med * 1e3,
                 min_ms=mn * 1e3, compile_s=comp, identical=ident,
                 gbps=(bytes_moved / med / 1e9) if bytes_moved else None,
                 rate=(work / med / 1e9) if work else None, rate_unit=rate_unit)
    print(fmt_row(row), flush=True)
    return out


def vname(b) -> str:
    if isinstance(b, ScanBlock):
        s = f"k{b.keys} v{b.vecs} p{b.pages} u{b.unroll} w{b.num_warps} s{b.num_stages}"
        if b.layout != "bcast":
            s += f" {b.layout}"
        if b.combine != "partials":
            s += f" {b.combine}"
        return s
    if isinstance(b, GGMBlock):
        return f"n{b.nodes} L{b.levels} w{b.num_warps} s{b.num_stages} {b.store}"
    return str(b)


# --------------------------------------------------------------------------------------------
# References (the XLA engine's ops when importable)
# --------------------------------------------------------------------------------------------
JE = None


def xla_masked_xor(pages, masks):
    if JE is not None:
        return JE.masked_xor_xla(pages, masks)
    return ps.masked_xor_reference(pages, masks)


def xla_expand(seeds, ts, scw, tcw, fcw):
    if JE is not None:
        return JE.expand_levels_xla(seeds, ts, scw, tcw, fcw, unroll=ARGS.xla_unroll)
    return pg.expand_levels_reference(seeds, ts, scw, tcw, fcw, unroll=ARGS.xla_unroll)


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------
def section_info():
    dev = jax.devices()[0]
    print(f"# jax {jax.__version__}, backend {jax.default_backend()}, device {dev.device_kind} "
          f"({dev.platform}), {len(jax.devices())} device(s); interpret={ARGS.interpret}")
    try:
        import jaxlib  # noqa: PLC0415

        print(f"# jaxlib {jaxlib.__version__}")
    except Exception:  # noqa: BLE001
        pass
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,"
                              "clocks.max.sm,clocks.max.mem", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        print(f"# nvidia-smi: {smi.stdout.strip()}")
    except Exception as e:  # noqa: BLE001
        print(f"# nvidia-smi unavailable: {e}")
    try:
        stats = dev.memory_stats() or {}
        print(f"# device memory limit {stats.get('bytes_limit', 0) / 2**30:.1f} GiB")
    except Exception:  # noqa: BLE001
        pass
    record("info", impl="", K="", size="", variant=f"jax {jax.__version__} {dev.device_kind}",
           median_ms=0.0, min_ms=0.0)


def section_copy(pages_sets):
    n_bytes = pages_sets[0].size * 4
    run_variant("copy", "xla", "x ^ 1 (read+write)", lambda x: x ^ jnp.uint32(1),
                [(p,) for p in pages_sets], ref=None, reps=ARGS.reps, K="", size=_sz(n_bytes),
                bytes_moved=2 * n_bytes)


def _sz(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f}GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f}MiB"


def section_smoke():
    """Small correctness checks on the device: ragged tiles, offsets, the engine end to end."""
    print("## smoke: small shapes, Pallas vs XLA", flush=True)
    t, k = 1000, 5
    pages = make((t + 8, 1024), 11)
    masks = make((k, t, 4), 12)
    ref = xla_masked_xor(pages[:t], masks)
    blocks = [ScanBlock.get_default(k, t), ScanBlock(keys=2, vecs=128, pages=64, unroll=4),
              ScanBlock(keys=4, vecs=256, pages=128, unroll=2, layout="keyloop"),
              ScanBlock(keys=8, vecs=256, pages=128, unroll=4, combine="atomic")]
    for b in blocks:
        if ARGS.interpret and b.combine == "atomic":
            continue
        run_variant("smoke", "pallas", vname(b),
                    lambda p, m, b=b: ps.masked_xor_pallas(p, m, block=b,
                                                           interpret=ARGS.interpret),
                    [(pages[:t], masks)], ref=ref, reps=1, K=k, size=f"T={t}")
    # page_offset into a bigger matrix
    ref_off = xla_masked_xor(pages[7:7 + t], masks)
    b = ScanBlock.get_default(k, t)
    run_variant("smoke", "pallas", vname(b) + " offset=7",
                lambda p, m, o: ps.masked_xor_pallas(p, m, block=b, page_offset=o,
                                                     interpret=ARGS.interpret),
                [(pages, masks, jnp.int32(7))], ref=ref_off, reps=1, K=k, size=f"T={t}")
    # GGM
    kk, r, lv = 3, 3, 6
    g = (make((kk, r, 4), 21), make((kk, r), 22, True), make((kk, lv, 4), 23),
         make((kk, lv, 2), 24, True), make((kk, 4), 25))
    gref = xla_expand(*g)
    for b in [GGMBlock.get_default(), GGMBlock(nodes=64, levels=1, store="strided"),
              GGMBlock(nodes=128, levels=4)]:
        run_variant("smoke", "pallas", vname(b),
                    lambda *a, b=b: pg.expand_levels_pallas(*a, block=b,
                                                            interpret=ARGS.interpret),
                    [g], ref=gref, reps=1, K=kk, size=f"R={r} L={lv}")
    # The engine end to end: real DPF keys, ragged database, pallas vs xla vs the target pages.
    if JE is None:
        print("# smoke: jax_engine not importable, engine check skipped")
        return
    try:
        keys_mod = _load("keys")
        n, npg = 12, 3000
        rng = np.random.default_rng(5)
        targets = [0, 1234, npg - 1]
        pairs = [keys_mod.generate_keys(n, x, rng) for x in targets]
        db = make((npg, 1024), 31)
        want = np.asarray(db)[targets]
        res = {}
        for name in ("xla", "pallas"):
            spec = JE.EngineSpec(name=name, tile_pages=1024)
            fn = JE.make_answer_fn(npg, spec)
            a0 = np.asarray(fn(db, JE.KeyBatch.from_keys([p[0] for p in pairs]).to_device()))
            a1 = np.asarray(fn(db, JE.KeyBatch.from_keys([p[1] for p in pairs]).to_device()))
            res[name] = (a0, a1)
            ok = bool(np.array_equal(a0 ^ a1, want))
            print(f"smoke   engine  {name:<7} n={n} pages={npg}: reconstructs targets={ok}",
                  flush=True)
            record("smoke", impl=name, K=3, size=f"N={npg}", variant="engine reconstruct",
                   median_ms=0.0, min_ms=0.0, identical=ok)
        same = all(np.array_equal(x, y) for x, y in zip(res["xla"], res["pallas"]))
        print(f"smoke   engine  pallas == xla answers: {same}", flush=True)
        record("smoke", impl="pallas", K=3, size=f"N={npg}", variant="engine pallas==xla",
               median_ms=0.0, min_ms=0.0, identical=same)
    except Exception as e:  # noqa: BLE001
        msg = f"{type(e).__name__}: {e}".replace("\n", " | ")[:2000]
        print(f"smoke   engine  ERROR {msg}", flush=True)
        record("smoke", impl="engine", K=3, size="", variant="engine", median_ms=None, error=msg)


def scan_variants(k: int) -> list:
    d = ScanBlock.get_default(k, ARGS.T)
    if ARGS.quick:
        return [d, ScanBlock(keys=2, vecs=64, pages=32, unroll=2, layout="keyloop")]
    if k >= 32:
        vs = [
            d,
            ScanBlock(keys=8, vecs=256, pages=2048, unroll=4, num_warps=2),
            ScanBlock(keys=8, vecs=256, pages=2048, unroll=4, num_warps=8),
            ScanBlock(keys=16, vecs=256, pages=2048, unroll=4, num_warps=4),
            ScanBlock(keys=16, vecs=256, pages=2048, unroll=4, num_warps=8),
            ScanBlock(keys=32, vecs=256, pages=4096, unroll=2, num_warps=8),
            ScanBlock(keys=4, vecs=256, pages=2048, unroll=4, num_warps=2),
            ScanBlock(keys=8, vecs=128, pages=2048, unroll=4, num_warps=2),
            ScanBlock(keys=16, vecs=128, pages=2048, unroll=4, num_warps=4),
            ScanBlock(keys=32, vecs=64, pages=2048, unroll=4, num_warps=4),
            ScanBlock(keys=8, vecs=256, pages=1024, unroll=2, num_warps=4),
            ScanBlock(keys=8, vecs=256, pages=4096, unroll=8, num_warps=4),
            ScanBlock(keys=8, vecs=256, pages=2048, unroll=4, num_warps=4, num_stages=3),
            ScanBlock(keys=8, vecs=256, pages=2048, unroll=4, num_warps=4, layout="keyloop"),
            ScanBlock(keys=16, vecs=256, pages=2048, unroll=4, num_warps=8, layout="keyloop"),
            ScanBlock(keys=8, vecs=256, pages=512, unroll=4, num_warps=4, combine="atomic"),
        ]
    elif k >= 8:
        vs = [
            d,
            ScanBlock(keys=4, vecs=256, pages=1024, unroll=4, num_warps=2),
            ScanBlock(keys=4, vecs=128, pages=1024, unroll=4, num_warps=4),
            ScanBlock(keys=16, vecs=256, pages=2048, unroll=4, num_warps=4),
            ScanBlock(keys=16, vecs=128, pages=1024, unroll=4, num_warps=4),
            ScanBlock(keys=4, vecs=256, pages=1024, unroll=4, num_warps=4, layout="keyloop"),
        ]
    else:
        vs = [
            d,
            ScanBlock(keys=4, vecs=64, pages=1024, unroll=4, num_warps=2, num_stages=3),
            ScanBlock(keys=4, vecs=128, pages=1024, unroll=4, num_warps=4),
            ScanBlock(keys=4, vecs=256, pages=1024, unroll=4, num_warps=4),
            ScanBlock(keys=4, vecs=256, pages=512, unroll=4, num_warps=8),
            ScanBlock(keys=4, vecs=32, pages=512, unroll=4, num_warps=1),
            ScanBlock(keys=4, vecs=64, pages=256, unroll=8, num_warps=2),
            ScanBlock(keys=1, vecs=256, pages=1024, unroll=4, num_warps=4),
            ScanBlock(keys=4, vecs=64, pages=1024, unroll=4, num_warps=2, layout="keyloop"),
            ScanBlock(keys=4, vecs=128, pages=256, unroll=4, num_warps=4, combine="atomic"),
        ]
    out, seen = [], set()
    for v in vs:
        if v not in seen and not (ARGS.interpret and v.combine == "atomic"):
            seen.add(v)
            out.append(v)
    return out[: ARGS.max_variants]


def section_scan(pages_sets):
    t = ARGS.T
    n_bytes = t * 4096
    for k in ARGS.keys:
        print(f"## masked_xor: K={k}, T={t} pages ({_sz(n_bytes)})", flush=True)
        try:
            mask_sets = [make((k, t, 4), 100 + i) for i in range(len(pages_sets))]
        except Exception as e:  # noqa: BLE001
            print(f"scan K={k}: cannot build masks: {e}")
            continue
        args = list(zip(pages_sets, mask_sets))
        ref = run_variant("scan", "xla", "masked_xor_xla", xla_masked_xor, args, ref=None,
                          reps=ARGS.reps, K=k, size=f"T={t}", bytes_moved=n_bytes,
                          work=k * t * 1024 / 1e3, rate_unit="T and-xor/s")
        if ref is None:
            ref = xla_masked_xor(*args[0])
        for b in scan_variants(k):
            run_variant("scan", "pallas", vname(b),
                        lambda p, m, b=b: ps.masked_xor_pallas(p, m, block=b,
                                                               interpret=ARGS.interpret),
                        args, ref=ref, reps=ARGS.reps, K=k, size=f"T={t}", bytes_moved=n_bytes,
                        work=k * t * 1024 / 1e3, rate_unit="T and-xor/s")
        del mask_sets, args, ref


def ggm_configs():
    if ARGS.quick:
        return [(3, 2, 5), (2, 1, 6)]
    lg = ARGS.pages_log2
    return [(96, 1 << (lg - 14), 14), (3, 1, lg), (96, 1, 12)]


def ggm_variants(k, r, lv) -> list:
    d = GGMBlock.get_default()
    if ARGS.quick:
        return [d, GGMBlock(nodes=4, levels=3, store="strided")]
    full = [
        d,
        GGMBlock(nodes=256, levels=1),
        GGMBlock(nodes=512, levels=1),
        GGMBlock(nodes=1024, levels=1, num_warps=8),
        GGMBlock(nodes=256, levels=1, num_warps=2),
        GGMBlock(nodes=256, levels=1, store="strided"),
        GGMBlock(nodes=512, levels=2),
        GGMBlock(nodes=256, levels=3),
        GGMBlock(nodes=512, levels=3, num_warps=8),
        GGMBlock(nodes=256, levels=4),
        GGMBlock(nodes=128, levels=2, num_warps=2),
        GGMBlock(nodes=1024, levels=2, num_warps=8),
    ]
    if k * r >= 1024:
        return full[: ARGS.max_variants]
    return [d, GGMBlock(nodes=256, levels=1), GGMBlock(nodes=256, levels=4)]


def section_ggm():
    for k, r, lv in ggm_configs():
        leaves = k * r << lv
        blocks = 2 * k * r * ((1 << lv) - 1)
        print(f"## expand_levels: K={k} R={r} L={lv}: {leaves} leaves, {blocks / 1e6:.1f} M "
              "ChaCha8 blocks", flush=True)
        sets = [(make((k, r, 4), 200 + i), make((k, r), 210 + i, True),
                 make((k, lv, 4), 220 + i), make((k, lv, 2), 230 + i, True),
                 make((k, 4), 240 + i)) for i in range(2)]
        size = f"R={r} L={lv}"
        ref = run_variant("ggm", "xla", f"expand_levels_xla unroll={ARGS.xla_unroll}",
                          xla_expand, sets, ref=None, reps=ARGS.reps, K=k, size=size,
                          work=blocks, rate_unit="G blocks/s")
        if ref is None:
            ref = xla_expand(*sets[0])
        for b in ggm_variants(k, r, lv):
            run_variant("ggm", "pallas", vname(b),
                        lambda *a, b=b: pg.expand_levels_pallas(*a, block=b,
                                                                interpret=ARGS.interpret),
                        sets, ref=ref, reps=ARGS.reps, K=k, size=size, work=blocks,
                        rate_unit="G blocks/s")
        del sets, ref


def _tile_scan(pages, top_seeds, top_ts, scw, tcw, fcw, *, tile, n_tiles, impl, sblock, gblock):
    """XOR over tiles j of masked_xor(pages[j*T:(j+1)*T], expand(subtree j)): one database
    pass, masks live for one tile only.  Pallas reads the tile in place (page_offset)."""
    k = top_seeds.shape[0]

    def body(j, acc):
        seeds = lax.dynamic_slice_in_dim(top_seeds, j, 1, axis=1)
        ts = lax.dynamic_slice_in_dim(top_ts, j, 1, axis=1)
        if impl == "xla":
            masks = xla_expand(seeds, ts, scw, tcw, fcw)
            tile_pages = lax.dynamic_slice_in_dim(pages, j * tile, tile, axis=0)
            return acc ^ xla_masked_xor(tile_pages, masks)
        masks = pg.expand_levels_pallas(seeds, ts, scw, tcw, fcw, block=gblock,
                                        interpret=ARGS.interpret)
        return acc ^ ps.masked_xor_pallas(pages, masks, block=sblock, page_offset=j * tile,
                                          interpret=ARGS.interpret)

    return lax.fori_loop(0, n_tiles, body, jnp.zeros((k, 1024), jnp.uint32))


def section_tiles(pages_sets):
    """The whole one-pass scan (GGM of each tile + masked XOR) for several tile sizes."""
    t_all = ARGS.T
    n_bytes = t_all * 4096
    tiles = [16, 64] if ARGS.quick else [1 << 12, 1 << 14, 1 << 16]
    for k in ARGS.tile_keys:
        for tile in tiles:
            if tile > t_all:
                continue
            n_tiles = t_all // tile
            lv = tile.bit_length() - 1
            sets = [(p, make((k, n_tiles, 4), 300 + i), make((k, n_tiles), 310 + i, True),
                     make((k, lv, 4), 320 + i), make((k, lv, 2), 330 + i, True),
                     make((k, 4), 340 + i)) for i, p in enumerate(pages_sets)]
            size = f"T={tile}x{n_tiles}"
            work = k * t_all * 1024 / 1e3
            ref = run_variant("tiles", "xla", "xla expand + xla masked_xor",
                              functools.partial(_tile_scan, tile=tile, n_tiles=n_tiles,
                                                impl="xla", sblock=None, gblock=None),
                              sets, ref=None, reps=max(3, ARGS.reps // 2), K=k, size=size,
                              bytes_moved=n_bytes, work=work, rate_unit="T and-xor/s")
            sb = ScanBlock.get_default(k, tile)
            variants = [(sb, GGMBlock.get_default())]
            if not ARGS.quick and not ARGS.interpret:
                variants.append((sb.replace(combine="atomic", pages=max(sb.unroll,
                                                                        sb.pages // 4)),
                                 GGMBlock.get_default()))
            for sblock, gblock in variants:
                run_variant("tiles", "pallas", f"{vname(sblock)} | {vname(gblock)}",
                            functools.partial(_tile_scan, tile=tile, n_tiles=n_tiles,
                                              impl="pallas", sblock=sblock, gblock=gblock),
                            sets, ref=ref, reps=max(3, ARGS.reps // 2), K=k, size=size,
                            bytes_moved=n_bytes, work=work, rate_unit="T and-xor/s")
            del sets, ref


def section_engine(pages_sets):
    """The XLA engine's own scan (jax_engine.scan) with its "xla" and "pallas" ops."""
    if JE is None:
        print("# engine section skipped: jax_engine not importable")
        return
    keys_mod = _load("keys")
    t_all = ARGS.T
    n_bits = ARGS.pages_log2
    rng = np.random.default_rng(9)
    for k in ARGS.tile_keys:
        ks = [keys_mod.generate_keys(n_bits, int(x), rng)[0]
              for x in rng.integers(0, t_all, size=k)]
        kbs = [JE.KeyBatch.from_keys(ks).to_device()]
        ref = None
        for name in ("xla", "pallas"):
            for tp in ([64] if ARGS.quick else [4096, 16384]):
                spec = JE.EngineSpec(name=name, tile_pages=tp)
                out = run_variant("engine", name, f"jax_engine.scan tile_pages={tp}",
                                  functools.partial(JE.scan, num_pages=t_all, spec=spec),
                                  [(p, kbs[0]) for p in pages_sets], ref=ref,
                                  reps=max(3, ARGS.reps // 2), K=k, size=f"N={t_all}",
                                  bytes_moved=t_all * 4096, work=k * t_all * 1024 / 1e3,
                                  rate_unit="T and-xor/s")
                if ref is None and out is not None:
                    ref = out


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
SECTIONS = ("copy", "smoke", "scan", "ggm", "tiles", "engine")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages-log2", type=int, default=None,
                    help="pages of the synthetic database: 2^this (default 19 = 2 GiB; quick 8)")
    ap.add_argument("--keys", type=int, nargs="*", default=None, help="K values for masked_xor")
    ap.add_argument("--tile-keys", type=int, nargs="*", default=None,
                    help="K values for the tile / engine scans")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--budget-s", type=float, default=380.0,
                    help="skip the remaining variants after this many seconds")
    ap.add_argument("--max-variants", type=int, default=100)
    ap.add_argument("--sections", nargs="*", default=list(SECTIONS), choices=SECTIONS)
    ap.add_argument("--quick", action="store_true", help="tiny shapes (a CPU dry run)")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--csv", default=None, help="CSV path (default $OUT/bench_kernels.csv)")
    a = ap.parse_args(argv)
    a.interpret = jax.default_backend() != "gpu"
    if a.interpret:
        a.quick = True
    if a.pages_log2 is None:
        a.pages_log2 = 8 if a.quick else 19
    a.T = 1 << a.pages_log2
    if a.keys is None:
        a.keys = [3, 5] if a.quick else [96, 3, 12]
    if a.tile_keys is None:
        a.tile_keys = [3] if a.quick else [3, 96]
    if a.reps is None:
        a.reps = 2 if a.quick else 10
    a.xla_unroll = not a.interpret
    return a


def write_outputs() -> None:
    out_dir = os.environ.get("OUT")
    path = ARGS.csv or (os.path.join(out_dir, "bench_kernels.csv") if out_dir else None)
    if not path:
        return
    cols = ["section", "impl", "K", "size", "variant", "median_ms", "min_ms", "gbps", "rate",
            "rate_unit", "identical", "compile_s", "error"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in ROWS:
            w.writerow(r)
    with open(Path(path).with_suffix(".json"), "w") as f:
        json.dump(ROWS, f, indent=1, default=str)
    print(f"# wrote {path}")


def main(argv=None) -> int:
    global ARGS, JE
    ARGS = parse_args(argv)
    JE = _load("jax_engine", required=False)
    section_info()
    pages_sets = []
    need_pages = {"copy", "scan", "tiles", "engine"} & set(ARGS.sections)
    if need_pages:
        t0 = time.perf_counter()
        pages_sets = [_block(make((ARGS.T, 1024), s)) for s in (1, 2)]
        print(f"# built 2 page matrices of {ARGS.T} pages ({_sz(ARGS.T * 4096)} each) in "
              f"{time.perf_counter() - t0:.1f}s", flush=True)
    fns = dict(copy=lambda: section_copy(pages_sets), smoke=section_smoke,
               scan=lambda: section_scan(pages_sets), ggm=section_ggm,
               tiles=lambda: section_tiles(pages_sets), engine=lambda: section_engine(pages_sets))
    for name in SECTIONS:
        if name not in ARGS.sections:
            continue
        t0 = time.perf_counter()
        try:
            fns[name]()
        except Exception as e:  # noqa: BLE001
            print(f"# section {name} failed: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc()
        print(f"# section {name}: {time.perf_counter() - t0:.1f}s (total {elapsed():.1f}s)",
              flush=True)
        write_outputs()
    print("\n# summary (median ms; ident = bit-identical to XLA)")
    for r in ROWS:
        if r["section"] != "info":
            print(fmt_row(r))
    write_outputs()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
