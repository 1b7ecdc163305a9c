"""``python scripts/bitsliced_stages.py --keys 96 --tile-log2 20``: where one step of engine "bitsliced" spends
its time on a GPU. For one tile of 2^tile-log2 random bit-sliced pages and K keys' random subtree roots (8
levels below them, as the engine hands the CUDA op), the op ``expand_xor_bmma`` is timed stage by stage
(``call_expand_xor``): the expansion alone
(stages=1: ChaCha8, transposes, the per-bit vectors written), the MMA scan alone (stages=2: the database and the
vectors read), both one after the other (stages=3, what the engine runs above 8 keys) and, up to 8 keys, both
in one pipelined kernel (stages=4, what the engine runs there; its answer checked equal to stages=3); median of --reps
device-synchronized calls. One JSON line per K on stdout (and --json). With --once each op runs once and
nothing is timed (for ``ncu``). --defines builds the kernels with those -D defines ($MORPHOGEN_CUDA_DEFINES,
e.g. MORPHOGEN_CHACHA_FMA=2: a compile-time variant timed against the default in the next process)."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp

from morphogen_exp.bench.bmma import random_roots, random_u32, time_ms
from morphogen_exp.pir import Window
from morphogen_exp.pir.bitsliced import bitslice_pages
from morphogen_exp.pir.cuda import CudaUnavailable, cuda_defines
from morphogen_exp.pir.cuda.bmma import call_expand_xor, pipelined


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--keys", default="96,3")
    ap.add_argument("--tile-log2", default="20,22", help="per key count, in the same order")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--once", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--defines", default=None, help="space-separated NAME[=VALUE] for the CUDA build (default: the environment's)")
    a = ap.parse_args(argv)
    if a.defines is not None:  # before the first kernel call, which builds and loads the library
        try:
            cuda_defines(a.defines)
        except CudaUnavailable as e:
            ap.error(str(e))
        os.environ["MORPHOGEN_CUDA_DEFINES"] = a.defines
    rows = []
    for k, lg in zip(map(int, a.keys.split(",")), map(int, a.tile_log2.split(",")), strict=True):
        t = 1 << lg
        db = bitslice_pages(random_u32((t, 1024), lg), t).words
        jax.block_until_ready(db)
        roots = random_roots(k, t, 3000 + k)
        row = {"device": jax.local_devices()[0].device_kind, "keys": k, "tile_pages": t,
               "cuda_defines": os.environ.get("MORPHOGEN_CUDA_DEFINES", "")}
        stages = ((1, "expansion_only"), (2, "scan_only"), (3, "both"), (4, "pipelined"))[: 4 if pipelined(k) else 3]
        answers = {}
        for st, name in stages:
            fn = jax.jit(functools.partial(call_expand_xor, stages=st))
            call = functools.partial(fn, db, roots, Window(jnp.int32(0), 0, t))
            answers[st] = jax.block_until_ready(call())
            if a.once:
                continue
            row[name] = time_ms(call, a.reps)
            row[f"{name}_ms"] = round(row[name]["ms_median"], 4)
        if 4 in answers:
            row["pipelined_equals_both"] = bool((answers[4] == answers[3]).all())
        if not a.once:
            nodes = k * t  # ~ one ChaCha8 pair per leaf (255 internal nodes per 256-leaf subtree)
            row["expansion_gpairs_s"] = round(nodes / row["expansion_only_ms"] / 1e6, 2)
            row["scan_gbps"] = round((t * 4096 + k * t * 16) / row["scan_only_ms"] / 1e6, 1)
            row["overlap_ideal_ms"] = max(row["expansion_only_ms"], row["scan_only_ms"])
            print(json.dumps({x: y for x, y in row.items() if not isinstance(y, dict)}), flush=True)
        rows.append(row)
        del db
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
