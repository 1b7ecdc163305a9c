"""Do identical sweeps decide alike under a bursty background load? (issue: "the decision holds in ordinary use")

Runs the same CPU sweep (`'strategy=glob(*)' q=1,4,8`, tiny dataset) N times beside a bursty load (worker
processes that spin for 0.2-1.5 s, then rest for 0.2-1.5 s, seeded) and N times without it, then reads each
sweep's matrix.csv and decision line and writes, per condition: the decisions, and for each cell whether the N
runs' speedup intervals share a point (the largest lower bound <= the smallest upper bound).

    python scripts/load_decisions.py --runs 3 --out docs/benchmarks/<date>-cpu-load-decisions
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

SWEEP = ["-m", "strategy=glob(*)", "q=1,4,8"]


def _burst(seed: int, stop: mp.synchronize.Event) -> None:  # type: ignore[name-defined]
    rng = random.Random(seed)
    while not stop.is_set():
        end = time.perf_counter() + rng.uniform(0.2, 1.5)
        x = 0
        while time.perf_counter() < end:
            x += 1
        stop.wait(rng.uniform(0.2, 1.5))


def sweep(out: Path, name: str, extra: list[str]) -> tuple[str, Path]:
    sweep_dir = out / "sweeps" / name
    cmd = [sys.executable, "-m", "morphogen_exp", *SWEEP, f"hydra.sweep.dir={sweep_dir}",
           f"mlflow.tracking_uri=sqlite:///{out.resolve()}/mlflow.db", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("decision:")]
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "logs" / f"{name}.log").write_text(proc.stdout + proc.stderr)
    return (lines[-1] if lines else f"(exit {proc.returncode}, no decision line)"), sweep_dir / "matrix.csv"


def disagreements(matrices: list[Path]) -> tuple[int, int, list[str]]:
    frames = [pd.read_csv(m) for m in matrices]
    key = ["config", "q"]
    cells = set.intersection(*(set(map(tuple, f[key].values.tolist())) for f in frames))
    missed = []
    for cell in sorted(cells):
        rows = [f[(f["config"] == cell[0]) & (f["q"] == cell[1])].iloc[0] for f in frames]
        lo = max(r["batch_vs_single_speedup_lo"] for r in rows)
        hi = min(r["batch_vs_single_speedup_hi"] for r in rows)
        if lo > hi:
            missed.append(f"{cell[0]} q={cell[1]}: " + ", ".join(
                f"{r['batch_vs_single_speedup']:.3f} [{r['batch_vs_single_speedup_lo']:.3f}, {r['batch_vs_single_speedup_hi']:.3f}]"
                for r in rows))
    return len(missed), len(cells), missed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="load processes (default: one a core)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--conditions", default="load,quiet", help="which to run, in order (default: load,quiet)")
    ap.add_argument("overrides", nargs="*", help="more overrides for every sweep")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    lines = [f"# Identical CPU sweeps with and without a bursty load ({os.cpu_count()} cores, {time.strftime('%Y-%m-%d')})",
             "", f"Sweep: `python -m morphogen_exp {' '.join(SWEEP)} {' '.join(args.overrides)}`; load: {args.workers} "
             "processes spinning 0.2-1.5 s then resting 0.2-1.5 s.", ""]
    for condition in args.conditions.split(","):
        stop = mp.Event()
        workers = [mp.Process(target=_burst, args=(i, stop), daemon=True) for i in range(args.workers if condition == "load" else 0)]
        for w in workers:
            w.start()
        results = [sweep(args.out, f"{condition}-{i + 1}", args.overrides) for i in range(args.runs)]
        stop.set()
        for w in workers:
            w.join()
        n_missed, n_cells, missed = disagreements([m for _, m in results])
        go = {d.split(" — ")[0] for d, _ in results if d.startswith("decision: GO")}
        lines += [f"## {condition}", "", *[f"- run {i + 1}: `{d}`" for i, (d, _) in enumerate(results)], "",
                  f"Distinct GO decisions: {len(go)}. Cells whose {args.runs} speedup intervals share no point: "
                  f"{n_missed} of {n_cells}.", "", *[f"  - {m}" for m in missed], ""]
        print("\n".join(lines[-(len(missed) + args.runs + 6):]), flush=True)
    out = args.out / f"results-{args.conditions.replace(',', '-')}.md"
    out.write_text("\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
