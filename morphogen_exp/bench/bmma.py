"""``python -m morphogen_exp.bench.bmma [--pages-log2 20,22] [--keys 3,96] [--out DIR]``: on a GPU, check
the binary-MMA masked XOR bit for bit (small ragged cases against numpy, the XLA op and the jnp
formulation; the scan on DPF keys against the numpy server answer; big tiles against the XLA op) and time
it beside the Pallas and XLA masked XOR and a copy, each kernel alone (median of device-synchronized
repeats). The expansion that writes the bit vectors (``expand_xor_bmma``): small cases against its jnp
contract, big tiles against the old path (Pallas expansion of the same roots, then ``masked_xor_bmma``),
both timed. Writes results.json and prints a table; docs/bitsliced.md records what it said."""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..measure.synthetic import random_u32
from ..pir.bitsliced import bitslice_pages, masked_xor_bitsliced
from ..pir.cuda import build
from ..pir.cuda.bmma import call_expand_xor, call_masked_xor, expand_xor_bmma, masked_xor_bmma
from ..pir.engine import Subtrees, Window
from ..pir.pages import xor_reduce

BMMA_OP = "bitsliced-bmma-op"  # the masked-XOR kernel as an engine of its own (the scan check)


def time_ms(fn: Callable[[], Any], reps: int, warmup: int = 2) -> dict[str, float]:
    for _ in range(warmup):
        jax.block_until_ready(fn())
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append((time.perf_counter() - t0) * 1e3)
    return {"ms_median": statistics.median(ts), "ms_min": min(ts), "ms_max": max(ts), "reps": reps}


def _small_checks(res: dict[str, Any]) -> None:
    from ..pir.xla_ops import masked_xor_xla  # noqa: PLC0415

    rng = np.random.default_rng(1)
    n = 5000
    pw = rng.integers(0, 2**32, size=(n, 1024), dtype=np.uint32)
    db = bitslice_pages(jnp.asarray(pw), n)
    bad = []
    for k, t, off in [(1, 256, 0), (3, 1000, 5), (6, 4096, 777), (96, 2048, 2952), (3, 1, 4999), (13, 5000, 0),
                      (40, 300, 4700)]:
        m = rng.integers(0, 2**32, size=(k, t, 4), dtype=np.uint32)
        tile = pw[off: off + t].reshape(t, 256, 4)
        ref = np.bitwise_xor.reduce(tile[None] & m[:, :, None, :], axis=1).reshape(k, 1024)
        got = np.asarray(jax.jit(masked_xor_bmma)(db.words, jnp.int32(off), jnp.asarray(m)))
        xla = np.asarray(masked_xor_xla(jnp.asarray(pw[off: off + t]), jnp.asarray(m)))
        jn = np.asarray(masked_xor_bitsliced(db, jnp.int32(off), jnp.asarray(m), impl="jnp"))
        ok = bool(np.array_equal(got, ref) and np.array_equal(xla, ref) and np.array_equal(jn, ref))
        if not ok:
            bad.append({"k": k, "t": t, "off": off, "wrong_words": int((got != ref).sum())})
    res["small_checks_failed"] = bad
    print(f"small ragged checks: {'all exact' if not bad else bad}", flush=True)


def random_roots(k: int, t: int, seed: int) -> Subtrees:
    """Roots of the t / 256 subtrees of 8 levels under a tile of t pages, with random corrections: (roots,
    root_t, scw, tcw, fcw) for ``expand_xor_bmma`` (any 128-bit seeds are valid GGM nodes)."""
    s = max(1, t // 256)
    return Subtrees(random_u32((k, s, 4), seed), random_u32((k, s), seed + 1) & jnp.uint32(1), random_u32((k, 8, 4), seed + 2),
            random_u32((k, 8, 2), seed + 3) & jnp.uint32(1), random_u32((k, 4), seed + 4))


def _expand_small_checks(res: dict[str, Any]) -> None:
    from ..pir.bitsliced import masked_xor_bitsliced_jnp  # noqa: PLC0415
    from ..pir.xla_ops import expand_levels_xla  # noqa: PLC0415

    n = 5000
    db = bitslice_pages(random_u32((n, 1024), 7), n)
    bad = []
    # (K, row, lo, count, levels): aligned (row - lo = 0 mod 256), unaligned, ragged, < 8 levels, 96 keys
    for k, row, lo, count, levels in [(1, 0, 0, 256, 8), (3, 512, 0, 1000, 8), (13, 1024, 256, 3000, 8),
                                      (96, 256, 0, 4096, 8), (3, 5, 0, 999, 8), (40, 700, 300, 1500, 8),
                                      (6, 4000, 3, 20, 5), (2, 4999, 1, 1, 1)]:
        s = -(-(lo + count) // (1 << levels))
        roots, root_t, scw, tcw, fcw = random_roots(k, s * 256, 100 + k)
        roots, root_t, scw, tcw = roots[:, :s], root_t[:, :s], scw[:, :levels], tcw[:, :levels]
        got = np.asarray(jax.jit(expand_xor_bmma)(db.words, Subtrees(roots, root_t, scw, tcw, fcw),
                                                  Window(jnp.int32(row), lo, count)))
        masks = expand_levels_xla(roots, root_t, scw, tcw, fcw)[:, lo : lo + count]
        ref = np.asarray(masked_xor_bitsliced_jnp(db.words, jnp.int32(row), masks))
        if not np.array_equal(got, ref):
            bad.append({"k": k, "row": row, "lo": lo, "count": count, "levels": levels,
                        "wrong_words": int((got != ref).sum())})
    res["expand_small_checks_failed"] = bad
    print(f"expand_xor_bmma small checks: {'all exact' if not bad else bad}", flush=True)


def _scan_check(res: dict[str, Any]) -> None:
    from ..pir import Engine, EngineSpec, KeyBatch, make_answer_fn, register  # noqa: PLC0415
    from ..pir.keys import generate_keys  # noqa: PLC0415
    from ..pir.reference import answer_numpy  # noqa: PLC0415
    from ..pir.xla_ops import expand_levels_xla, masked_xor_xla  # noqa: PLC0415

    # the masked-XOR kernel alone on the layout (the XLA expansion): not the engine's fused step
    register(Engine(name=BMMA_OP, expand_levels=expand_levels_xla, masked_xor=masked_xor_xla, masked_xor_at=masked_xor_bmma))
    rng = np.random.default_rng(2)
    n, bits = 3000, 12
    pages = rng.integers(0, 256, size=(n, 4096), dtype=np.uint8)
    keys = [key for t in (0, 1234, 2999) for key in generate_keys(bits, t, rng)]
    db = bitslice_pages(jnp.asarray(pages.view("<u4")), n)
    fn = make_answer_fn(n, EngineSpec(name=BMMA_OP, tile_pages=1024, unroll=False))
    out = np.asarray(fn(db.words, KeyBatch.from_keys(keys).to_device())).view(np.uint8).reshape(len(keys), 4096)
    ok = bool(np.array_equal(out, answer_numpy(pages, keys)))
    recon = all(np.array_equal(out[2 * i] ^ out[2 * i + 1], pages[t]) for i, t in enumerate((0, 1234, 2999)))
    res["scan_vs_numpy_exact"], res["scan_reconstructs_pages"] = ok, recon
    print(f"scan (bmma op, K=6, N={n}) == answer_numpy: {ok}; server0^server1 == page: {recon}", flush=True)


def _big(res: dict[str, Any], log2: int, keys: list[int], reps: int) -> None:
    from morphogen_exp.pir.pallas_scan import ScanBlock, masked_xor_pallas  # noqa: PLC0415

    from ..pir.xla_ops import masked_xor_xla  # noqa: PLC0415

    t = 1 << log2
    row: dict[str, Any] = {"pages": t, "db_gib": t * 4096 / 2**30}
    pages = random_u32((t, 1024), log2)
    jax.block_until_ready(pages)
    copy = jax.jit(lambda x: x ^ jnp.uint32(0x9E3779B9))
    row["copy"] = time_ms(lambda: copy(pages), reps)
    row["copy"]["gbps_rw"] = 2 * t * 4096 / row["copy"]["ms_median"] / 1e6
    read = jax.jit(lambda x: xor_reduce(x, 0))
    row["read_reduce"] = time_ms(lambda: read(pages), reps)
    row["read_reduce"]["gbps"] = t * 4096 / row["read_reduce"]["ms_median"] / 1e6
    t0 = time.perf_counter()
    db = bitslice_pages(pages, t)
    jax.block_until_ready(db.words)
    row["bitslice_first_s"] = time.perf_counter() - t0
    row["bitslice"] = time_ms(lambda: bitslice_pages(pages, t).words, 3, warmup=0)
    for k in keys:
        masks = random_u32((k, t, 4), 1000 + k)
        kr: dict[str, Any] = {}
        bm = jax.jit(masked_xor_bmma)
        xla = jax.jit(masked_xor_xla)
        blk = ScanBlock.get_default(k, t)
        pal = jax.jit(lambda p, m, blk=blk: masked_xor_pallas(p, m, block=blk))
        got, ref = np.asarray(bm(db.words, jnp.int32(0), masks)), np.asarray(xla(pages, masks))
        kr["bmma_equals_xla"] = bool(np.array_equal(got, ref))
        try:
            kr["pallas_equals_xla"] = bool(np.array_equal(np.asarray(pal(pages, masks)), ref))
            kr["pallas"] = time_ms(functools.partial(pal, pages, masks), reps)
        except Exception as e:  # noqa: BLE001 - record and go on
            kr["pallas_error"] = f"{type(e).__name__}: {e}"[:300]
        kr["bmma"] = time_ms(functools.partial(bm, db.words, jnp.int32(0), masks), reps)
        for st, name in ((1, "bmma_transpose_only"), (2, "bmma_mma_only")):
            fn = jax.jit(lambda w, m, st=st: call_masked_xor(w, jnp.int32(0), m, stages=st))
            kr[name] = time_ms(functools.partial(fn, db.words, masks), reps)
        _time_expand(kr, db.words, k, t, reps)
        kr["xla"] = time_ms(functools.partial(xla, pages, masks), max(3, reps // 4))
        kr["and_bits"] = k * t * 32768
        kr["bmma_tand_per_s"] = kr["and_bits"] / kr["bmma"]["ms_median"] / 1e9
        kr["bmma_bytes_min"] = t * 4096 + k * t * 16
        kr["bmma_gbps_min_bytes"] = kr["bmma_bytes_min"] / kr["bmma"]["ms_median"] / 1e6
        row[f"K={k}"] = kr
        print(f"2^{log2} pages K={k}: {json.dumps(kr)}", flush=True)
    res[f"2^{log2}"] = row


def _time_expand(kr: dict[str, Any], words: jax.Array, k: int, t: int, reps: int) -> None:
    """The tile's step from subtree roots: new (expansion writes the bit vectors) vs old (Pallas masks, then
    the transpose and the MMA scan), checked equal; and the new expansion alone."""
    from ..pir.pallas_ops import expand_levels_fn  # noqa: PLC0415

    args = random_roots(k, t, 3000 + k)
    new = jax.jit(lambda w, *r: expand_xor_bmma(w, Subtrees(*r), Window(0, 0, t)))
    only = jax.jit(lambda w, *r: call_expand_xor(w, Subtrees(*r), Window(0, 0, t), stages=1))
    old = jax.jit(lambda w, *r: masked_xor_bmma(w, 0, expand_levels_fn(*r)))
    kr["expand_bmma_equals_old_path"] = bool(np.array_equal(np.asarray(new(words, *args)), np.asarray(old(words, *args))))
    kr["expand_bmma"] = time_ms(functools.partial(new, words, *args), reps)
    kr["expand_bmma_expansion_only"] = time_ms(functools.partial(only, words, *args), reps)
    kr["old_pallas_expand_then_bmma"] = time_ms(functools.partial(old, words, *args), reps)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pages-log2", default="20,22")
    ap.add_argument("--keys", default="3,96")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--budget-s", type=float, default=200.0, help="skip larger tiles past this much wall time")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args(argv)
    start = time.perf_counter()
    res: dict[str, Any] = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
                           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    try:
        res["nvcc"] = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.splitlines()[-1]
    except OSError:
        res["nvcc"] = None
    t0 = time.perf_counter()
    res["build"] = str(build())
    res["build_s"] = time.perf_counter() - t0
    print(json.dumps(res), flush=True)
    stages: list[tuple[str, Callable[[], None]]] = [("small", lambda: _small_checks(res)),
                                                   ("scan", lambda: _scan_check(res)),
                                                   ("expand_small", lambda: _expand_small_checks(res))]
    keys = [int(k) for k in a.keys.split(",")]
    for lg in (int(x) for x in a.pages_log2.split(",")):
        stages.append((f"big{lg}", functools.partial(_big, res, lg, keys, a.reps)))
    for name, fn in stages:
        if name.startswith("big") and name != stages[3][0] and time.perf_counter() - start > a.budget_s:
            res[f"{name}_skipped"] = "time budget"
            continue
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - record and go on to the next stage
            res[f"{name}_error"] = f"{type(e).__name__}: {e}"[:2000]
            traceback.print_exc()
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "results.json").write_text(json.dumps(res, indent=1))
    res["wall_s"] = time.perf_counter() - start
    (Path(a.out) / "results.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
