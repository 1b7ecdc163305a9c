"""One configuration's metric over the sweeps of a store: a table, a plot, and the steps beyond noise.

    python -m morphogen_exp.history --config tiled                  # its q=32 speedup over every sweep, oldest first
    python -m morphogen_exp.history --config 'tiled[tile=4]' --q 8 --metric batch_qps --last 20

Each sweep (a sweep run and its cells, as recorded: MLflow alone) gives one point: the configuration's cell at q,
its value with its interval, and the code it ran (`code_version`). Steps are found as asv finds them
(`asv.step_detect.detect_steps`: a piecewise-constant fit, each point weighted by its interval) and one is called a
step when its segments' medians differ by more than `--threshold` (5%, asv's default) and by more than the points'
own noise (twice the median half-width of their intervals). The plot (PNG, `--plot`, default
`outputs/history/<configuration>-q<q>-<metric>.png`) draws the points with their intervals, each step marked. A read:
nothing in the store changes."""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .decide.decision import estimate
from .errors import ConfigError, cli_errors
from .fields import PARENT_TAG, ROLE_TAG
from .record.tracking import cells_frame, open_store

THRESHOLD = 0.05  # the smallest relative step called one (asv's default regression threshold)
METRICS = ("batch_vs_single_speedup", "batch_qps", "batch_ms_per_batch", "single_ms_per_batch", "single_qps")


@dataclass
class Point:
    """One sweep's reading of the configuration at q."""

    sweep: str           # the sweep's folder name
    run_id: str          # the sweep run
    start: pd.Timestamp
    code: str            # code_version
    value: float
    lo: float | None
    hi: float | None
    device: str


@dataclass
class Step:
    """A step between points[at - 1] and points[at]: the medians of the segments before and after."""

    at: int
    before: float
    after: float
    noise: float         # the relative change it had to exceed
    bar: str = "the threshold"  # what that is: the threshold, or the points' own noise

    @property
    def change(self) -> float:
        return self.after / self.before - 1


def find_steps(values: Sequence[float], half_widths: Sequence[float | None], threshold: float = THRESHOLD) -> list[Step]:
    """The steps of a series beyond noise: asv's piecewise-constant fit (`detect_steps`, points weighted by 1 / their
    interval's half-width), each boundary kept where the segments' medians differ by more than `threshold` and by
    more than twice the median relative half-width of the points' intervals."""
    from asv.step_detect import detect_steps

    if len(values) < 2:
        return []
    rel = [h / v for h, v in zip(half_widths, values, strict=True) if h is not None and v > 0]
    noise = 2 * float(pd.Series(rel).median()) if rel else 0.0
    floor = max(min(rel) if rel else 0.0, 1e-9)
    weights = [1 / max(h / v if h is not None and v > 0 else floor, floor) for h, v in zip(half_widths, values, strict=True)]
    segments = detect_steps(list(values), weights)
    steps = []
    for (_, _, before, _, _), (left, _, after, _, _) in zip(segments, segments[1:], strict=False):
        if before > 0 and abs(after / before - 1) > max(threshold, noise):
            bar = "twice the intervals' median half-width" if noise > threshold else "the threshold"
            steps.append(Step(left, before, after, max(threshold, noise), bar))
    return steps


def read_points(store: object, config: str, q: int, metric: str, last: int | None = None) -> tuple[list[Point], list[str]]:
    """The configuration's cell at q in each sweep of the store (the oldest first, the `last` N), and every
    configuration label seen (for the error that names them). A configuration is its label in the sweep (`tiled`,
    `tiled[tile=4]`) or its config_id (or a prefix of it). Never writes."""
    client, exp = store.client, store.experiment_id  # type: ignore[attr-defined]
    sweeps = client.search_runs([exp], f"tags.`{ROLE_TAG}` = 'sweep'", order_by=["attributes.start_time ASC"],
                                max_results=5000)
    cells = client.search_runs([exp], f"tags.`{ROLE_TAG}` = 'cell'", max_results=50000)
    by_parent: dict[str, list] = {}
    for r in cells:
        by_parent.setdefault(r.data.tags.get("mlflow.parentRunId", ""), []).append(r)
    points, seen = [], set()
    for s in sweeps:
        df = cells_frame(by_parent.get(s.info.run_id, []))
        if df.empty:
            continue
        seen |= set(df["config"])
        ok = df[(df["status"] == "ok") & (df["q"] == q)]
        match = ok[(ok["config"] == config) | ok["config_id"].astype(str).str.startswith(config)]
        if match.empty:
            continue
        row = match.iloc[0].to_dict()
        e = estimate(row, metric)
        if e is None:
            continue
        points.append(Point(Path(str(s.data.tags.get(PARENT_TAG, s.info.run_id))).name, s.info.run_id,
                            pd.Timestamp(s.info.start_time, unit="ms", tz="UTC"), str(s.data.tags.get("code_version", "?")),
                            e.value, e.lo, e.hi, str(row.get("device_kind") or "?")))
    return (points[-last:] if last else points), sorted(seen)


def table(points: Sequence[Point], steps: Sequence[Step], metric: str) -> str:
    """The points as a text table, oldest first; the first point after each step marked with its change."""
    from tabulate import tabulate

    at = {s.at: s for s in steps}
    rows = []
    for i, p in enumerate(points):
        interval = f" [{p.lo:.4g}, {p.hi:.4g}]" if p.lo is not None and p.hi is not None else ""
        mark = f"STEP {at[i].change:+.1%}" if i in at else ""
        rows.append([p.start.strftime("%Y-%m-%d %H:%M"), p.sweep, p.code[:12], p.device, f"{p.value:.4g}{interval}", mark])
    return tabulate(rows, headers=["started (UTC)", "sweep", "code", "device", metric, ""], tablefmt="simple",
                    disable_numparse=True)


def step_lines(points: Sequence[Point], steps: Sequence[Step], metric: str) -> list[str]:
    """Each step in one line: where (between which sweeps and commits), how much, and whether it is better."""
    higher = not metric.endswith("_ms_per_batch")  # a latency: lower is better
    out = []
    for s in steps:
        a, b = points[s.at - 1], points[s.at]
        better = (s.change > 0) == higher
        out.append(f"step: {metric} {s.before:.4g} -> {s.after:.4g} ({s.change:+.1%}, {'better' if better else 'worse'}; "
                   f"beyond {s.noise:.1%}: {s.bar}) between sweep {a.sweep} (code {a.code[:12]}) and sweep {b.sweep} "
                   f"(code {b.code[:12]})")
    return out


def plot(points: Sequence[Point], steps: Sequence[Step], config: str, q: int, metric: str, path: Path) -> Path:
    """The points against the sweeps (labelled by code), with their intervals, each step a vertical line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = list(range(len(points)))
    y = [p.value for p in points]
    err = [[max(p.value - p.lo, 0) if p.lo is not None else 0 for p in points],
           [max(p.hi - p.value, 0) if p.hi is not None else 0 for p in points]]
    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=config)
    for s in steps:
        ax.axvline(s.at - 0.5, color="tab:red", linestyle=":", label=f"step {s.change:+.1%}")
    ax.set_xticks(x, [f"{p.code[:7]}\n{p.start:%m-%d %H:%M}" for p in points], fontsize=7)
    ax.set_ylabel(f"{metric} at q={q}")
    dry = " (CPU dry run)" if points and all(p.device.lower() == "cpu" for p in points) else ""
    title = f"{config}: {metric} at q={q} over {len(points)} sweeps{dry}"
    fig.suptitle(title, fontsize=12)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Title": title})
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m morphogen_exp.history", description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--config", required=True, help="the configuration: its label (tiled, 'tiled[tile=4]') or config_id")
    ap.add_argument("--q", type=int, default=32, help="the batch size (default 32)")
    ap.add_argument("--metric", default="batch_vs_single_speedup", choices=METRICS)
    ap.add_argument("--last", type=int, help="only the last N sweeps")
    ap.add_argument("--threshold", type=float, default=THRESHOLD, help="the smallest relative step called one (0.05)")
    ap.add_argument("--tracking-uri", help="default: sqlite:///<current dir>/outputs/mlflow.db")
    ap.add_argument("--experiment", default="morphogen_exp")
    ap.add_argument("--plot", type=Path, help="the PNG (default outputs/history/<configuration>-q<q>-<metric>.png)")
    args = ap.parse_args(argv)
    with cli_errors() as cli:
        if args.q < 1 or (args.last is not None and args.last < 1):
            raise ConfigError(f"--q {args.q} / --last {args.last}: both must be >= 1")
        if not math.isfinite(args.threshold) or args.threshold < 0:
            raise ConfigError(f"--threshold {args.threshold}: a finite fraction >= 0, e.g. 0.05")
        store = open_store(args.tracking_uri or f"sqlite:///{Path('outputs').resolve()}/mlflow.db", args.experiment)
        points, seen = read_points(store, args.config, args.q, args.metric, args.last)
        if not points:
            raise ConfigError(f"no ok cell of {args.config!r} at q={args.q} with {args.metric} in any sweep of this store"
                              f" (configurations seen: {', '.join(seen) or 'none'})")
        steps = find_steps([p.value for p in points],
                           [None if p.lo is None or p.hi is None else (p.hi - p.lo) / 2 for p in points], args.threshold)
        slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", args.config)
        path = plot(points, steps, args.config, args.q, args.metric,
                    args.plot or Path("outputs") / "history" / f"{slug}-q{args.q}-{args.metric}.png")
    if cli.status:
        return cli.status
    print(f"{args.config} at q={args.q}: {args.metric} over {len(points)} sweep(s), oldest first")
    print(table(points, steps, args.metric))
    for line in step_lines(points, steps, args.metric) or ["no step beyond noise"]:
        print(line)
    print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
