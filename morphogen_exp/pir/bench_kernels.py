"""GPU benchmark of the engine ops: masked XOR and GGM expansion, XLA vs Pallas (Triton).

    python -m morphogen_exp.pir.bench_kernels [--pages-log2 19] [--budget-s 380] [--sections ...]

Imports only jax and numpy (the device image has no hydra / mlflow).  On the device:
- synthetic pages are an elementwise hash of the index, built on the device (jax.random.bits
  on GiB arrays ran an H100 out of memory);
- a device copy gives the memory roofline (bytes read + written);
- every variant is compiled apart (compile time reported), checked bit for bit against the XLA
  op on the same inputs, then timed: median (and min) over ``--reps`` calls with rotating inputs.

Crash isolation: the work is a list of small tasks (one variant each) run by a child process;
a task that kills the process (a compiler segfault, say) is recorded as crashed and a new child
goes on with the next task, skipping what the crash rules out (probes of each GGM variant and of
the XLA GGM run first on tiny shapes against a CPU reference).  A Python exception only fails
its own task.  A time budget skips what is left.  Prints a table and writes
``$OUT/bench_kernels.csv`` (and ``.json``) if OUT is set.  On a CPU (``--quick``) it runs tiny
shapes in Pallas interpret mode: a dry run of the script.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.85")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse  # noqa: E402
import csv  # noqa: E402
import functools  # noqa: E402
import importlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
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

ARGS: argparse.Namespace
JE = None  # the XLA engine module, when importable
RESULTS_FILE: str | None = None
ROWS: list[dict] = []
MEMO: dict = {}


def now() -> float:
    return time.time()


def over_budget() -> bool:
    return now() > ARGS.deadline


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


def _sz(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f}GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f}MiB"


# --------------------------------------------------------------------------------------------
# Measurement and rows
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
    identical = None if ref is None else bool(jnp.array_equal(out, ref))
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
    if RESULTS_FILE:
        with open(RESULTS_FILE, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
    return row


def fmt_row(r: dict) -> str:
    ms = r.get("median_ms")
    parts = [f"{r['section']:<6}", f"{r.get('impl', ''):<7}", f"K={r.get('K', '')!s:<3}",
             f"{r.get('size', ''):<13}", f"{r.get('variant', ''):<42}"]
    if ms is None:
        parts.append(f"{'ERROR' if not r.get('status') else r['status'].upper()} "
                     f"{str(r.get('error', ''))[:220]}")
    else:
        parts.append(f"{ms:9.3f} ms (min {r.get('min_ms', 0):.3f})")
        if r.get("gbps") is not None:
            parts.append(f"{r['gbps']:7.1f} GB/s")
        if r.get("rate") is not None:
            parts.append(f"{r['rate']:8.2f} {r.get('rate_unit', '')}")
        parts.append(f"ident={r.get('identical')}")
        parts.append(f"compile {r.get('compile_s') or 0:.1f}s")
    return " ".join(parts)


def run_variant(section: str, impl: str, variant: str, fn, arg_sets, *, ref, reps, K, size,
                bytes_moved=None, work=None, rate_unit=""):
    """Measure one variant; Python errors are recorded and printed, never raised."""
    try:
        out, comp, med, mn, ident = measure(fn, arg_sets, reps=reps, ref=ref)
    except Exception as e:  # noqa: BLE001
        msg = f"{type(e).__name__}: {e}".replace("\n", " | ")
        row = record(section, impl=impl, K=K, size=size, variant=variant, median_ms=None,
                     status="error", error=msg[:3000])
        print(fmt_row(row), flush=True)
        if ARGS.verbose:
            traceback.print_exc()
        return None
    row = record(section, impl=impl, K=K, size=size, variant=variant, median_ms=med * 1e3,
                 min_ms=mn * 1e3, compile_s=comp, identical=ident, status="ok",
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
        s = f"n{b.nodes} L{b.levels} w{b.num_warps} {b.store}"
        if b.unroll is False:
            s += " loop"
        return s
    return str(b)


# --------------------------------------------------------------------------------------------
# Variants (static lists: indices are stable across child processes)
# --------------------------------------------------------------------------------------------
GGM_VARIANTS = [
    GGMBlock.get_default(),
    GGMBlock(nodes=256, levels=1, store="split", unroll=None),
    GGMBlock(nodes=256, levels=2, store="split", unroll=False),
    GGMBlock(nodes=256, levels=3, store="split", unroll=False),
    GGMBlock(nodes=256, levels=1, store="select", unroll=None),
    GGMBlock(nodes=256, levels=2, store="select", unroll=False),
    GGMBlock(nodes=256, levels=3, store="select", unroll=False),
    GGMBlock(nodes=512, levels=2, store="select", unroll=False, num_warps=8),
    GGMBlock(nodes=256, levels=4, store="select", unroll=False),
    GGMBlock(nodes=256, levels=2, store="select", unroll=None),
]
GGM_VARIANTS = list(dict.fromkeys(GGM_VARIANTS))
# Variants that compiled and matched XLA on an H100 (JAX 0.11.2, 2026-11-27 runs 2-3): no probe.
GGM_PROVEN = {*GGM_VARIANTS, GGMBlock(nodes=256, levels=2, store="split", unroll=None)}
# Crashed the Triton compiler (SIGSEGV) on an H100 with JAX 0.11.2: join / reshape interleave.
GGM_CRASHED = (GGMBlock(nodes=256, levels=1, store="join"),
               GGMBlock(nodes=256, levels=2, store="join"),
               GGMBlock(nodes=256, levels=1, store="strided"))


def scan_variants(k: int) -> list:
    d = ScanBlock.get_default(k, ARGS.T)
    if ARGS.quick:
        vs = [d, ScanBlock(keys=2, vecs=64, pages=32, unroll=2, layout="keyloop")]
    elif k >= 32:
        vs = [
            d,
            ScanBlock(keys=8, vecs=256, pages=2048, unroll=8, num_warps=2),
            ScanBlock(keys=8, vecs=256, pages=4096, unroll=4, num_warps=2),
            ScanBlock(keys=8, vecs=256, pages=1024, unroll=4, num_warps=2),
            ScanBlock(keys=4, vecs=256, pages=2048, unroll=4, num_warps=1),
            ScanBlock(keys=8, vecs=128, pages=2048, unroll=4, num_warps=1),
            ScanBlock(keys=8, vecs=256, pages=2048, unroll=4, num_warps=2, layout="keyloop"),
            ScanBlock(keys=8, vecs=256, pages=2048, unroll=2, num_warps=2, num_stages=2),
            ScanBlock(keys=16, vecs=128, pages=2048, unroll=4, num_warps=2),
            ScanBlock(keys=8, vecs=256, pages=512, unroll=4, num_warps=2, combine="atomic"),
        ]
    elif k >= 8:
        vs = [
            d,
            ScanBlock(keys=4, vecs=256, pages=1024, unroll=4, num_warps=2),
            ScanBlock(keys=4, vecs=256, pages=1024, unroll=8, num_warps=2),
        ]
    else:
        vs = [
            d,
            ScanBlock(keys=4, vecs=64, pages=2048, unroll=8, num_warps=2),
            ScanBlock(keys=4, vecs=128, pages=1024, unroll=8, num_warps=2),
            ScanBlock(keys=4, vecs=64, pages=1024, unroll=4, num_warps=2, num_stages=2),
            ScanBlock(keys=1, vecs=256, pages=1024, unroll=4, num_warps=2),
            ScanBlock(keys=4, vecs=256, pages=2048, unroll=4, num_warps=4),
        ]
    out = [v for v in dict.fromkeys(vs) if not (ARGS.interpret and v.combine == "atomic")]
    return out[: ARGS.max_variants]


def best_ggm_variant() -> GGMBlock:
    """The fastest bit-identical Pallas GGM variant on the largest GGM config so far."""
    best, rate = None, -1.0
    rows = ROWS
    if RESULTS_FILE and os.path.exists(RESULTS_FILE):
        rows = [json.loads(x) for x in open(RESULTS_FILE).read().split("\n") if x.strip()]
    big = ggm_configs()[0]
    for r in rows:
        if (r.get("section") == "ggm" and r.get("impl") == "pallas" and r.get("identical")
                and r.get("size") == f"R={big[1]} L={big[2]}" and (r.get("rate") or 0) > rate):
            i = int(str(r["variant"]).split()[0].lstrip("#"))
            if i not in set(ARGS.ggm_skip):
                best, rate = GGM_VARIANTS[i], r["rate"]
    if best is None:
        ok = ggm_ok_variants()
        best = GGMBlock.get_default() if (0 in dict(ok) or not ok) else ok[0][1]
    return best


def ggm_ok_variants() -> list[tuple[int, GGMBlock]]:
    return [(i, b) for i, b in enumerate(GGM_VARIANTS) if i not in set(ARGS.ggm_skip)]


# --------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------
def xla_masked_xor(pages, masks):
    if JE is not None:
        return JE.masked_xor_xla(pages, masks)
    return ps.masked_xor_reference(pages, masks)


def xla_expand(seeds, ts, scw, tcw, fcw, mode: str | None = None):
    unroll = (mode or ARGS.xla_ggm) == "unrolled"
    if JE is not None:
        return JE.expand_levels_xla(seeds, ts, scw, tcw, fcw, unroll=unroll)
    return pg.expand_levels_reference(seeds, ts, scw, tcw, fcw, unroll=unroll)


def cpu_expand_reference(args):
    """The jnp reference on the host CPU (loop form: compiles in seconds)."""
    cpu = jax.devices("cpu")[0]
    host = [jax.device_put(np.asarray(a), cpu) for a in args]
    with jax.default_device(cpu):
        out = pg.expand_levels_reference(*host, unroll=False)
    return np.asarray(out)


# --------------------------------------------------------------------------------------------
# Memoized inputs (one group at a time besides the pages, to bound device memory)
# --------------------------------------------------------------------------------------------
def memo(key: str, fn, group: str | None = None):
    if key not in MEMO:
        if group is not None:
            for k in [k for k in MEMO if k.startswith("grp:") and not k.startswith(group)]:
                del MEMO[k]
        MEMO[key] = fn()
    return MEMO[key]


def pages_sets():
    def build():
        t0 = time.perf_counter()
        p = [_block(make((ARGS.T, 1024), s)) for s in (1, 2)]
        print(f"# built 2 page matrices of {ARGS.T} pages ({_sz(ARGS.T * 4096)} each) in "
              f"{time.perf_counter() - t0:.1f}s", flush=True)
        return p

    return memo("pages", build)


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------
def t_info():
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
    record("info", impl="", K="", size="", variant=f"jax {jax.__version__} {dev.device_kind}",
           median_ms=None, status="info", error="")


def t_copy():
    ps_ = pages_sets()
    n_bytes = ps_[0].size * 4
    run_variant("copy", "xla", "x ^ 1 (read+write)", lambda x: x ^ jnp.uint32(1),
                [(p,) for p in ps_], ref=None, reps=ARGS.reps, K="", size=_sz(n_bytes),
                bytes_moved=2 * n_bytes)


def t_smoke_scan():
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
    ref_off = xla_masked_xor(pages[7:7 + t], masks)
    b = ScanBlock.get_default(k, t)
    run_variant("smoke", "pallas", vname(b) + " offset=7",
                lambda p, m, o: ps.masked_xor_pallas(p, m, block=b, page_offset=o,
                                                     interpret=ARGS.interpret),
                [(pages, masks, jnp.int32(7))], ref=ref_off, reps=1, K=k, size=f"T={t}")


PROBE_CFGS = [(3, 1, 6)]  # (K, R, L): calls with 1 node per program, then with several


def _probe_inputs():
    def build():
        out = []
        for i, (k, r, lv) in enumerate(PROBE_CFGS):
            g = (make((k, r, 4), 21 + i), make((k, r), 22 + i, True), make((k, lv, 4), 23 + i),
                 make((k, lv, 2), 24 + i, True), make((k, 4), 25 + i))
            out.append((g, cpu_expand_reference(g)))
        return out

    return memo("probe_inputs", build)


def t_probe_xla(mode: str):
    """XLA GGM expansion ("unrolled" / "loop") on tiny shapes vs the CPU reference."""
    unroll = mode == "unrolled"
    for (g, want), (k, r, lv) in zip(_probe_inputs(), PROBE_CFGS):
        fn = (lambda *a: JE.expand_levels_xla(*a, unroll=unroll)) if JE is not None else (
            lambda *a: pg.expand_levels_reference(*a, unroll=unroll))
        run_variant("probe", "xla", f"expand_levels_xla {mode}", fn, [g], ref=jnp.asarray(want),
                    reps=1, K=k, size=f"R={r} L={lv}")


def t_probe_ggm(i: int):
    b = GGM_VARIANTS[i]
    for (g, want), (k, r, lv) in zip(_probe_inputs(), PROBE_CFGS):
        run_variant("probe", "pallas", f"#{i} {vname(b)}",
                    lambda *a, b=b: pg.expand_levels_pallas(*a, block=b,
                                                            interpret=ARGS.interpret),
                    [g], ref=jnp.asarray(want), reps=1, K=k, size=f"R={r} L={lv}")


def t_smoke_engine():
    if JE is None:
        print("# smoke: jax_engine not importable, engine check skipped")
        return
    keys_mod = _load("keys")
    n, npg = 12, 3000
    rng = np.random.default_rng(5)
    targets = [0, 1234, npg - 1]
    pairs = [keys_mod.generate_keys(n, x, rng) for x in targets]
    db = make((npg, 1024), 31)
    want = np.asarray(db)[targets]
    res = {}
    for name in ("xla", "pallas"):
        try:
            spec = JE.EngineSpec(name=name, tile_pages=1024)
            fn = JE.make_answer_fn(npg, spec)
            a0 = np.asarray(fn(db, JE.KeyBatch.from_keys([p[0] for p in pairs]).to_device()))
            a1 = np.asarray(fn(db, JE.KeyBatch.from_keys([p[1] for p in pairs]).to_device()))
            res[name] = (a0, a1)
            ok = bool(np.array_equal(a0 ^ a1, want))
            record("smoke", impl=name, K=3, size=f"N={npg}", variant="engine reconstructs",
                   median_ms=None, status="ok" if ok else "wrong", identical=ok, error="")
            print(f"smoke  engine  {name:<7} n={n} pages={npg}: reconstructs targets={ok}",
                  flush=True)
        except Exception as e:  # noqa: BLE001
            msg = f"{type(e).__name__}: {e}".replace("\n", " | ")[:3000]
            print(f"smoke  engine  {name} ERROR {msg}", flush=True)
            record("smoke", impl=name, K=3, size=f"N={npg}", variant="engine reconstructs",
                   median_ms=None, status="error", error=msg)
    if len(res) == 2:
        same = all(np.array_equal(x, y) for x, y in zip(res["xla"], res["pallas"]))
        print(f"smoke  engine  pallas == xla answers: {same}", flush=True)
        record("smoke", impl="pallas", K=3, size=f"N={npg}", variant="engine pallas==xla",
               median_ms=None, status="ok" if same else "wrong", identical=same, error="")


def _scan_inputs(k: int):
    grp = f"grp:scan{k}"

    def build():
        masks = [make((k, ARGS.T, 4), 100 + i) for i in range(2)]
        return list(zip(pages_sets(), masks))

    args = memo(grp + ":args", build, group=grp)
    return grp, args


def t_scan_xla(k: int):
    t = ARGS.T
    print(f"## masked_xor: K={k}, T={t} pages ({_sz(t * 4096)})", flush=True)
    grp, args = _scan_inputs(k)
    out = run_variant("scan", "xla", "masked_xor_xla", xla_masked_xor, args, ref=None,
                      reps=ARGS.reps, K=k, size=f"T={t}", bytes_moved=t * 4096,
                      work=k * t * 1024 / 1e3, rate_unit="T and-xor/s")
    MEMO[grp + ":ref"] = out


def t_scan_pallas(k: int, b: ScanBlock):
    t = ARGS.T
    grp, args = _scan_inputs(k)
    ref = MEMO.get(grp + ":ref")
    if ref is None:
        ref = memo(grp + ":ref", lambda: _block(xla_masked_xor(*args[0])))
    run_variant("scan", "pallas", vname(b),
                lambda p, m: ps.masked_xor_pallas(p, m, block=b, interpret=ARGS.interpret),
                args, ref=ref, reps=ARGS.reps, K=k, size=f"T={t}", bytes_moved=t * 4096,
                work=k * t * 1024 / 1e3, rate_unit="T and-xor/s")


def ggm_configs():
    if ARGS.quick:
        return [(3, 2, 5), (2, 1, 6)]
    lg = ARGS.pages_log2
    return [(96, 1 << (lg - 14), 14), (96, 1, 12), (3, 1, lg)]


def _ggm_inputs(cfg):
    k, r, lv = cfg
    grp = f"grp:ggm{k}_{r}_{lv}"

    def build():
        return [(make((k, r, 4), 200 + i), make((k, r), 210 + i, True),
                 make((k, lv, 4), 220 + i), make((k, lv, 2), 230 + i, True),
                 make((k, 4), 240 + i)) for i in range(2)]

    return grp, memo(grp + ":args", build, group=grp)


def _ggm_work(cfg):
    k, r, lv = cfg
    return 2 * k * r * ((1 << lv) - 1)


def t_ggm_xla(cfg):
    k, r, lv = cfg
    print(f"## expand_levels: K={k} R={r} L={lv}: {k * r << lv} leaves, "
          f"{_ggm_work(cfg) / 1e6:.1f} M ChaCha8 blocks", flush=True)
    grp, sets = _ggm_inputs(cfg)
    if ARGS.xla_ggm == "none":
        print("# XLA GGM crashed in its probe: Pallas variants compared to the first one")
        return
    big = k * r >= 1024
    mode = ARGS.xla_ggm if big else "loop"  # the unrolled XLA compile costs ~15 s a shape
    fn = functools.partial(xla_expand, mode=mode)
    out = run_variant("ggm", "xla", f"expand_levels_xla {mode}", fn, sets,
                      ref=None, reps=ARGS.reps, K=k, size=f"R={r} L={lv}", work=_ggm_work(cfg),
                      rate_unit="G blocks/s")
    MEMO[grp + ":ref"] = out


def t_ggm_pallas(cfg, i: int):
    k, r, lv = cfg
    b = GGM_VARIANTS[i]
    grp, sets = _ggm_inputs(cfg)
    ref = MEMO.get(grp + ":ref")
    if ref is None and ARGS.xla_ggm != "none":
        ref = memo(grp + ":ref", lambda: _block(xla_expand(*sets[0])))
    out = run_variant("ggm", "pallas", f"#{i} {vname(b)}",
                      lambda *a: pg.expand_levels_pallas(*a, block=b, interpret=ARGS.interpret),
                      sets, ref=ref, reps=ARGS.reps, K=k, size=f"R={r} L={lv}",
                      work=_ggm_work(cfg), rate_unit="G blocks/s")
    if ref is None and out is not None:
        MEMO[grp + ":ref"] = out


def _tile_scan(pages, top_seeds, top_ts, scw, tcw, fcw, *, tile, n_tiles, impl, sblock, gblock):
    """XOR over tiles j of masked_xor(pages[j*T:(j+1)*T], expand(subtree j)): one database
    pass, masks live for one tile only.  Pallas reads the tile in place (page_offset)."""
    k = top_seeds.shape[0]

    def body(j, acc):
        seeds = lax.dynamic_slice_in_dim(top_seeds, j, 1, axis=1)
        ts = lax.dynamic_slice_in_dim(top_ts, j, 1, axis=1)
        if impl == "xla":
            masks = xla_expand(seeds, ts, scw, tcw, fcw, mode="loop")
            tile_pages = lax.dynamic_slice_in_dim(pages, j * tile, tile, axis=0)
            return acc ^ xla_masked_xor(tile_pages, masks)
        masks = pg.expand_levels_pallas(seeds, ts, scw, tcw, fcw, block=gblock,
                                        interpret=ARGS.interpret)
        return acc ^ ps.masked_xor_pallas(pages, masks, block=sblock, page_offset=j * tile,
                                          interpret=ARGS.interpret)

    return lax.fori_loop(0, n_tiles, body, jnp.zeros((k, 1024), jnp.uint32))


def _tile_inputs(k, tile):
    n_tiles = ARGS.T // tile
    lv = tile.bit_length() - 1
    grp = f"grp:tiles{k}_{tile}"

    def build():
        return [(p, make((k, n_tiles, 4), 300 + i), make((k, n_tiles), 310 + i, True),
                 make((k, lv, 4), 320 + i), make((k, lv, 2), 330 + i, True),
                 make((k, 4), 340 + i)) for i, p in enumerate(pages_sets())]

    return grp, memo(grp + ":args", build, group=grp)


def t_tiles(k: int, tile: int, impl: str, which: int):
    n_tiles = ARGS.T // tile
    grp, sets = _tile_inputs(k, tile)
    size = f"T={tile}x{n_tiles}"
    work = k * ARGS.T * 1024 / 1e3
    reps = max(3, ARGS.reps // 2)
    if impl == "xla":
        if ARGS.xla_ggm == "none":
            return
        out = run_variant("tiles", "xla", "xla expand(loop) + xla masked_xor",
                          functools.partial(_tile_scan, tile=tile, n_tiles=n_tiles, impl="xla",
                                            sblock=None, gblock=None),
                          sets, ref=None, reps=reps, K=k, size=size, bytes_moved=ARGS.T * 4096,
                          work=work, rate_unit="T and-xor/s")
        MEMO[grp + ":ref"] = out
        return
    sb = ScanBlock.get_default(k, tile)
    if which == 1:
        sb = sb.replace(combine="atomic", pages=max(sb.unroll, sb.pages // 4))
    gb = best_ggm_variant()
    out = run_variant("tiles", "pallas", f"{vname(sb)} | {vname(gb)}",
                      functools.partial(_tile_scan, tile=tile, n_tiles=n_tiles, impl="pallas",
                                        sblock=sb, gblock=gb),
                      sets, ref=MEMO.get(grp + ":ref"), reps=reps, K=k, size=size,
                      bytes_moved=ARGS.T * 4096, work=work, rate_unit="T and-xor/s")
    if MEMO.get(grp + ":ref") is None and out is not None:
        MEMO[grp + ":ref"] = out


def t_engine(k: int, name: str, tp: int):
    if JE is None:
        print("# engine task skipped: jax_engine not importable")
        return
    grp = f"grp:engine{k}"

    def build():
        keys_mod = _load("keys")
        rng = np.random.default_rng(9)
        ks = [keys_mod.generate_keys(ARGS.pages_log2, int(x), rng)[0]
              for x in rng.integers(0, ARGS.T, size=k)]
        return JE.KeyBatch.from_keys(ks).to_device()

    kb = memo(grp + ":keys", build, group=grp)
    spec = JE.EngineSpec(name=name, tile_pages=tp)
    ref = MEMO.get(grp + ":ref")
    out = run_variant("engine", name, f"jax_engine.scan tile_pages={tp}",
                      functools.partial(JE.scan, num_pages=ARGS.T, spec=spec),
                      [(p, kb) for p in pages_sets()], ref=ref, reps=max(3, ARGS.reps // 2),
                      K=k, size=f"N={ARGS.T}", bytes_moved=ARGS.T * 4096,
                      work=k * ARGS.T * 1024 / 1e3, rate_unit="T and-xor/s")
    if ref is None and out is not None:
        MEMO[grp + ":ref"] = out


def build_tasks() -> list[tuple[str, str, object]]:
    """(name, section, thunk).  Deterministic given ARGS (the driver and children agree)."""
    tasks: list[tuple[str, str, object]] = [("info", "info", t_info)]
    sec = set(ARGS.sections)
    if "copy" in sec:
        tasks.append(("copy", "copy", t_copy))
    if "smoke" in sec:
        tasks.append(("smoke:scan", "smoke", t_smoke_scan))
    if "scan" in sec:
        for k in ARGS.keys:
            tasks.append((f"scan:{k}:xla", "scan", functools.partial(t_scan_xla, k)))
            for j, b in enumerate(scan_variants(k)):
                tasks.append((f"scan:{k}:{j}", "scan", functools.partial(t_scan_pallas, k, b)))
    if "probe" in sec:
        if ARGS.probe_xla_unrolled and not ARGS.interpret:  # minutes to compile on a CPU
            tasks.append(("probe:xla-ggm:unrolled", "probe",
                          functools.partial(t_probe_xla, "unrolled")))
        tasks.append(("probe:xla-ggm:loop", "probe", functools.partial(t_probe_xla, "loop")))
        for i, b in enumerate(GGM_VARIANTS):
            if b not in GGM_PROVEN or ARGS.interpret:
                tasks.append((f"probe:ggm:{i}", "probe", functools.partial(t_probe_ggm, i)))
    if "ggm" in sec:
        for cfg in ggm_configs():
            big = cfg[0] * cfg[1] >= 1024
            tasks.append((f"ggm:{cfg}:xla", "ggm", functools.partial(t_ggm_xla, cfg)))
            for i, _ in enumerate(GGM_VARIANTS):
                if not big and i not in (0, 2, 5):
                    continue
                tasks.append((f"ggm:{cfg}:{i}", "ggm", functools.partial(t_ggm_pallas, cfg, i)))
    if "tiles" in sec:
        tiles = [16, 64] if ARGS.quick else [1 << x for x in ARGS.tiles_log2]
        for k in ARGS.tile_keys:
            for tile in tiles:
                if tile > ARGS.T:
                    continue
                tasks.append((f"tiles:{k}:{tile}:xla", "tiles",
                              functools.partial(t_tiles, k, tile, "xla", 0)))
                for which in ((0,) if ARGS.interpret else (0, 1)):
                    tasks.append((f"tiles:{k}:{tile}:{which}", "tiles",
                                  functools.partial(t_tiles, k, tile, "pallas", which)))
    if "smoke" in sec:
        tasks.append(("smoke:engine", "smoke", t_smoke_engine))
    if "engine" in sec:
        for k in ARGS.tile_keys:
            for name in ("xla", "pallas"):
                for tp in ([64] if ARGS.quick else [16384]):
                    tasks.append((f"engine:{k}:{name}:{tp}", "engine",
                                  functools.partial(t_engine, k, name, tp)))
    return tasks


# --------------------------------------------------------------------------------------------
# Child: run tasks from --start, logging progress; driver: respawn after a crash
# --------------------------------------------------------------------------------------------
def child_main() -> int:
    tasks = build_tasks()
    for idx in range(ARGS.start, len(tasks)):
        name, section, fn = tasks[idx]
        if (name.startswith("probe:ggm:") or (name.startswith("ggm:") and
                                               not name.endswith(":xla"))):
            i = int(name.rsplit(":", 1)[1])
            if i in set(ARGS.ggm_skip):
                print(f"# skipped {name}: GGM variant #{i} crashed in its probe", flush=True)
                continue
        if over_budget():
            record(section, impl="", K="", size="", variant=name, median_ms=None,
                   status="skipped", error="time budget spent")
            print(f"# skipped {name}: time budget spent", flush=True)
            continue
        with open(ARGS.progress, "a") as f:
            f.write(f"START {idx}\n")
            f.flush()
            os.fsync(f.fileno())
        if ARGS.crash_task and name == ARGS.crash_task:  # for testing the driver
            os.kill(os.getpid(), signal.SIGSEGV)
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            msg = f"{type(e).__name__}: {e}".replace("\n", " | ")[:3000]
            print(f"# task {name} failed: {msg}", flush=True)
            record(section, impl="", K="", size="", variant=name, median_ms=None,
                   status="error", error=msg)
        with open(ARGS.progress, "a") as f:
            f.write(f"END {idx}\n")
    return 0


def _last_started(progress: str) -> int | None:
    started = ended = None
    if os.path.exists(progress):
        for line in open(progress).read().split("\n"):
            if line.startswith("START "):
                started = int(line.split()[1])
            elif line.startswith("END "):
                ended = int(line.split()[1])
    return started if started is not None and started != ended else None


def driver_main(argv: list[str]) -> int:
    global RESULTS_FILE
    tmp = tempfile.mkdtemp(prefix="bench_kernels_")
    results = os.path.join(tmp, "rows.jsonl")
    tasks = build_tasks()
    names = [t[0] for t in tasks]
    start, skips, xla_mode, crashes = 0, list(ARGS.ggm_skip), ARGS.xla_ggm, []
    print(f"# {len(tasks)} tasks; budget {ARGS.budget_s:.0f}s", flush=True)
    while start < len(tasks):
        progress = os.path.join(tmp, f"progress_{start}.txt")
        cmd = [sys.executable, "-m", "morphogen_exp.pir.bench_kernels", *argv, "--child",
               "--start", str(start), "--results", results, "--progress", progress,
               "--deadline", str(ARGS.deadline), "--xla-ggm", xla_mode,
               "--ggm-skip", *map(str, skips)]
        child = subprocess.Popen(cmd)
        cur, cur_since, timed_out = None, now(), None
        while True:
            try:
                rc = child.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                pass
            started = _last_started(progress)
            if started != cur:
                cur, cur_since = started, now()
            late = cur is not None and now() - cur_since > ARGS.task_timeout_s
            if late or now() > ARGS.deadline + 60:
                timed_out = cur
                child.kill()
                rc = child.wait()
                break
        if rc == 0 and timed_out is None:
            break
        bad = _last_started(progress)
        if bad is None:
            print(f"# child exited with {rc} outside a task; stopping", flush=True)
            crashes.append(("(outside a task)", rc))
            break
        name = names[bad]
        sig = -rc if rc < 0 else None
        if timed_out is not None:
            why = f"killed after {ARGS.task_timeout_s:.0f}s (task timeout / budget)"
        else:
            why = f"signal {signal.Signals(sig).name}" if sig else f"exit code {rc}"
        print(f"# CRASH in task {name} ({why}); continuing after it", flush=True)
        crashes.append((name, why))
        with open(results, "a") as f:
            f.write(json.dumps(dict(section=tasks[bad][1], impl="", K="", size="", variant=name,
                                    median_ms=None, status="crashed", error=why)) + "\n")
        if name == "probe:xla-ggm:unrolled":
            xla_mode = "loop"
        elif name == "probe:xla-ggm:loop" and xla_mode == "loop":
            xla_mode = "none"
        elif name.startswith("probe:ggm:"):
            skips.append(int(name.rsplit(":", 1)[1]))
        start = bad + 1
        if now() > ARGS.deadline:
            break
    rows = []
    if os.path.exists(results):
        rows = [json.loads(x) for x in open(results).read().split("\n") if x.strip()]
    ROWS[:] = rows
    print("\n# summary (median ms; ident = bit-identical to the XLA op on the same inputs)")
    for r in rows:
        if r["section"] != "info":
            print(fmt_row(r))
    if crashes:
        print(f"# crashes: {crashes}; GGM variants skipped after probe crashes: {skips}; "
              f"XLA GGM mode {xla_mode}")
    write_outputs()
    return 0


SECTIONS = ("copy", "smoke", "probe", "scan", "ggm", "tiles", "engine")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages-log2", type=int, default=None,
                    help="pages of the synthetic database: 2^this (default 19 = 2 GiB; quick 8)")
    ap.add_argument("--keys", type=int, nargs="*", default=None, help="K values for masked_xor")
    ap.add_argument("--tile-keys", type=int, nargs="*", default=None,
                    help="K values for the tile / engine scans")
    ap.add_argument("--tiles-log2", type=int, nargs="*", default=[14, 16],
                    help="tile sizes (log2 pages) of the tile-scan section")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--budget-s", type=float, default=380.0,
                    help="skip the remaining tasks after this many seconds")
    ap.add_argument("--max-variants", type=int, default=100)
    ap.add_argument("--task-timeout-s", type=float, default=120.0,
                    help="kill a task (its child process) that runs longer than this")
    ap.add_argument("--sections", nargs="*", default=list(SECTIONS), choices=SECTIONS)
    ap.add_argument("--quick", action="store_true", help="tiny shapes (a CPU dry run)")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--probe-xla-unrolled", action="store_true",
                    help="probe the unrolled XLA GGM (compiled and matched on an H100 before)")
    ap.add_argument("--no-isolate", action="store_true",
                    help="run all tasks in this process (a crash then ends the run)")
    ap.add_argument("--csv", default=None, help="CSV path (default $OUT/bench_kernels.csv)")
    # internal (driver -> child)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--results", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--progress", default=os.devnull, help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--xla-ggm", default=None, choices=("unrolled", "loop", "none"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--ggm-skip", type=int, nargs="*", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--crash-task", default=None, help=argparse.SUPPRESS)
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
        a.tile_keys = [3] if a.quick else [96, 3]
    if a.reps is None:
        a.reps = 2 if a.quick else 10
    if a.xla_ggm is None:
        a.xla_ggm = "loop" if a.interpret else "unrolled"
    if a.deadline is None:
        a.deadline = now() + a.budget_s
    return a


def write_outputs() -> None:
    out_dir = os.environ.get("OUT")
    path = ARGS.csv or (os.path.join(out_dir, "bench_kernels.csv") if out_dir else None)
    if not path:
        return
    cols = ["section", "impl", "K", "size", "variant", "median_ms", "min_ms", "gbps", "rate",
            "rate_unit", "identical", "compile_s", "status", "error"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in ROWS:
            w.writerow(r)
    with open(Path(path).with_suffix(".json"), "w") as f:
        json.dump(ROWS, f, indent=1, default=str)
    print(f"# wrote {path}")


def main(argv=None) -> int:
    global ARGS, JE, RESULTS_FILE
    argv = list(sys.argv[1:] if argv is None else argv)
    ARGS = parse_args(argv)
    if not ARGS.child and not ARGS.no_isolate:
        return driver_main(argv)
    RESULTS_FILE = ARGS.results
    JE = _load("jax_engine", required=False)
    rc = child_main()
    if ARGS.no_isolate:
        write_outputs()
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
