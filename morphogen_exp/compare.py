"""Compare two result matrices cell by cell, with the noise each side recorded (a separate tool: reports
only format their own sweep).

    python -m morphogen_exp.compare ../shared/fixtures/original-task30-h100-matrix.csv outputs/multirun/X/matrix.csv
    python -m morphogen_exp.compare A/matrix.csv B/matrix.csv --metric batch_ms_per_batch --fail-on-regression 3

Reads our matrix.csv or the original's published CSV (its quoted header lines are skipped). Cells are
matched on the configuration label and q when both sides have one, else on the original's strategy
name and q. Per cell: candidate / baseline with an interval (from the `_lo` / `_hi` columns of
whichever side has them) and a verdict: same, faster, slower, or not enough evidence. Exit 1 with
--fail-on-regression PCT when a cell is slower beyond its interval and by more than PCT percent.

The sides' device, dataset and engine are compared too (the original's CSV names its GPU in a header
line): a difference is stated above the table, since the ratios measure it as well, and a regression gate
refuses sides run on different devices or datasets (exit 2) unless --allow-different says so."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

SAME, FASTER, SLOWER, UNDECIDED = "same", "faster", "slower", "not enough evidence"
# What a ratio also measures when it differs between the sides; the first two make a regression gate meaningless.
CONTEXT = ("device_kind", "dataset_fingerprint", "engine")
GATE_CONTEXT = ("device_kind", "dataset_fingerprint")


def higher_is_better(metric: str) -> bool:
    """Throughputs and speedups: larger is better; latencies (`*_ms*`): smaller is better."""
    return "_ms" not in metric


def read_matrix(path: Path) -> pd.DataFrame:
    """A matrix CSV (ours or the original's) as a frame of its comparable cells."""
    if not path.is_file():
        raise ValueError(f"{path} is not a file: pass a matrix.csv or the original's CSV")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} cannot be read ({err})") from None
    header = next((i for i, line in enumerate(lines) if line.startswith("strategy,")), None)
    if header is None:
        raise ValueError(f"{path} has no 'strategy,...' header line: not a result matrix")
    try:
        df = pd.read_csv(path, skiprows=header)
    except (pd.errors.ParserError, ValueError) as err:
        raise ValueError(f"{path} is not a readable CSV: {str(err).splitlines()[0]}") from None
    if "q" not in df.columns:
        raise ValueError(f"{path} has no q column: not a result matrix")
    q = pd.to_numeric(df["q"], errors="coerce")
    if q.isna().any():
        raise ValueError(f"{path}: q must be an integer in every row, got {df['q'][q.isna()].iloc[0]!r}")
    df["q"] = q.astype(int)
    if "status" in df.columns:  # ours: only cells that ran and passed parity carry comparable numbers
        df = df[df["status"] == "ok"]
    gpu = next((line.strip('"')[len("gpu_info="):] for line in lines[:header] if line.strip('"').startswith("gpu_info=")), None)
    if gpu and "device_kind" not in df.columns:  # the original's "gpu_info=NVIDIA H100 80GB HBM3, 81559 MiB"
        df["device_kind"] = gpu.split(",")[0].strip()
    return df.reset_index(drop=True)


def context_differences(base: pd.DataFrame, cand: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """The CONTEXT columns both sides record whose values differ: column -> (baseline's, candidate's)."""
    def values(df: pd.DataFrame, col: str) -> str:
        return ", ".join(sorted(map(str, df[col].dropna().unique())))

    return {col: (values(base, col), values(cand, col)) for col in CONTEXT
            if col in base.columns and col in cand.columns and values(base, col) != values(cand, col)}


def _numeric(df: pd.DataFrame, col: str, where: str) -> pd.Series:
    values = pd.to_numeric(df[col], errors="coerce")
    bad = values.isna() & df[col].notna()
    if bad.any():
        raise ValueError(f"{where}: column {col} has a non-numeric value {df[col][bad].iloc[0]!r}")
    return values


def _cells(df: pd.DataFrame, metric: str, key: list[str], where: str) -> pd.DataFrame:
    if metric not in df.columns:
        raise ValueError(f"{where} has no column {metric!r}; columns: {', '.join(map(str, df.columns))}")
    dup = df[df.duplicated(key, keep=False)]
    if len(dup):
        first = dup.iloc[0]
        raise ValueError(f"{where} has {len(dup)} rows for the same cell ({', '.join(f'{k}={first[k]}' for k in key)}): "
                         "keep one row per cell")
    out = df[key].copy()
    out["value"] = _numeric(df, metric, where)
    bounded = f"{metric}_lo" in df.columns and f"{metric}_hi" in df.columns
    out["lo"] = _numeric(df, f"{metric}_lo", where) if bounded else float("nan")
    out["hi"] = _numeric(df, f"{metric}_hi", where) if bounded else float("nan")
    return out


@dataclass
class Comparison:
    table: pd.DataFrame   # key, baseline, candidate, ratio, ratio_lo, ratio_hi, change_pct, verdict
    key: list[str]
    intervals: str        # which side carried intervals, in words
    differs: dict[str, tuple[str, str]]  # context_differences of the two sides
    unchecked: list[str]  # CONTEXT columns one side does not record


def compare(base: pd.DataFrame, cand: pd.DataFrame, metric: str, same_within: float = 0.02,
            names: tuple[str, str] = ("baseline", "candidate")) -> Comparison:
    """Per matched cell: the ratio candidate / baseline, its interval and a verdict."""
    key = ["config", "q"] if "config" in base.columns and "config" in cand.columns else ["strategy", "q"]
    b, c = _cells(base, metric, key, names[0]), _cells(cand, metric, key, names[1])
    t = b.merge(c, on=key, suffixes=("_b", "_c"))
    t["ratio"] = t["value_c"] / t["value_b"]
    t["ratio_lo"] = t["lo_c"].fillna(t["value_c"]) / t["hi_b"].fillna(t["value_b"])
    t["ratio_hi"] = t["hi_c"].fillna(t["value_c"]) / t["lo_b"].fillna(t["value_b"])
    with_interval = t["lo_b"].notna() | t["lo_c"].notna()
    t.loc[~with_interval, ["ratio_lo", "ratio_hi"]] = float("nan")
    up = higher_is_better(metric)
    t["change_pct"] = ((t["ratio"] - 1) if up else (1 - t["ratio"])) * 100  # > 0: the candidate is better
    t["verdict"] = [_verdict(r, up, same_within) for r in t.to_dict("records")]
    sides = [n for n, df in zip(names, (b, c), strict=True) if df["lo"].notna().any()]
    intervals = (f"intervals from {' and '.join(sides)}" + ("" if len(sides) == 2 else
                 f"; {[n for n in names if n not in sides][0]} has none (point values)") if sides
                 else "no intervals on either side: verdicts from point estimates, no noise to judge by")
    unchecked = [col for col in CONTEXT if col not in base.columns or col not in cand.columns]
    return Comparison(t.sort_values(key).reset_index(drop=True), key, intervals, context_differences(base, cand),
                      unchecked)


def _differences(differs: dict[str, tuple[str, str]]) -> str:
    """'col (baseline's vs candidate's); ...' for context_differences' entries."""
    return "; ".join(f"{col} ({a} vs {b})" for col, (a, b) in differs.items())


def context_line(cmp: Comparison) -> str:
    """What else differs between the sides, in words (empty when nothing does and everything was checked)."""
    parts = []
    if cmp.differs:
        parts.append(f"The sides differ in {_differences(cmp.differs)}: the ratios measure that too.")
    if cmp.unchecked:
        parts.append(f"Not recorded on both sides, so not checked: {', '.join(cmp.unchecked)}.")
    return " ".join(parts)


def _verdict(r: dict, up: bool, tol: float) -> str:
    lo, hi, ratio = r["ratio_lo"], r["ratio_hi"], r["ratio"]
    better, worse = (FASTER, SLOWER) if up else (SLOWER, FASTER)
    if pd.isna(lo) or pd.isna(hi):  # point estimates
        return SAME if abs(ratio - 1) <= tol else better if ratio > 1 else worse
    if (1 - tol) <= lo and hi <= (1 + tol):  # the whole interval inside the tolerance: no difference that matters
        return SAME
    if lo > 1:
        return better
    if hi < 1:
        return worse
    return UNDECIDED


def regressions(cmp: Comparison, pct: float) -> pd.DataFrame:
    """Cells slower beyond their interval and by more than pct percent."""
    t = cmp.table
    return t[(t["verdict"] == SLOWER) & (-t["change_pct"] > pct)]


def _names(a: Path, b: Path) -> tuple[str, str]:
    """How the two sides are named: their file names, or their folders when the file names match."""
    return (a.name, b.name) if a.name != b.name else (f"{a.parent.name}/{a.name}", f"{b.parent.name}/{b.name}")


def to_markdown(cmp: Comparison, metric: str, base_name: str, cand_name: str) -> str:
    t = cmp.table
    if t.empty:
        return f"No cell is in both matrices (matched on {cmp.key}).\n"

    def fmt(v: float, lo: float, hi: float, spec: str) -> str:
        return f"{v:{spec}}" if pd.isna(lo) or pd.isna(hi) else f"{v:{spec}} [{lo:{spec}}, {hi:{spec}}]"

    label = cmp.key[0]
    rows = [f"| {r[label]} | {r['q']} | {fmt(r['value_b'], r['lo_b'], r['hi_b'], '.4g')} | "
            f"{fmt(r['value_c'], r['lo_c'], r['hi_c'], '.4g')} | {fmt(r['ratio'], r['ratio_lo'], r['ratio_hi'], '.3f')} | "
            f"{r['change_pct']:+.1f}% | {r['verdict']} |" for r in t.to_dict("records")]
    counts = t["verdict"].value_counts().to_dict()
    context = context_line(cmp)
    return (f"# {metric}: {cand_name} / {base_name}\n\n" + (f"{context}\n\n" if context else "") +
            f"{len(t)} cells matched on {' + '.join(cmp.key)}; {cmp.intervals}. "
            f"{', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}. "
            f"({'higher' if higher_is_better(metric) else 'lower'} is better; change > 0: the candidate is better.)\n\n"
            f"| {label} | q | {base_name} | {cand_name} | ratio | change | verdict |\n|---|---:|---:|---:|---:|---:|---|\n"
            + "\n".join(rows) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m morphogen_exp.compare", description=(__doc__ or "").splitlines()[0])
    ap.add_argument("baseline", type=Path)
    ap.add_argument("candidate", type=Path)
    ap.add_argument("--metric", default="batch_qps")
    ap.add_argument("--out", type=Path, help="write the markdown here instead of printing it")
    ap.add_argument("--same-within", type=float, default=2.0, metavar="PCT",
                    help="an interval inside 1 ± PCT%% is 'same' (default 2)")
    ap.add_argument("--fail-on-regression", type=float, metavar="PCT",
                    help="exit 1 when a cell is slower beyond noise and by more than PCT%%")
    ap.add_argument("--allow-different", action="store_true",
                    help="gate even when the sides ran on different devices or datasets")
    args = ap.parse_args(argv)
    try:
        if args.same_within < 0 or (args.fail_on_regression is not None and args.fail_on_regression < 0):
            raise ValueError("--same-within and --fail-on-regression take a percentage >= 0")
        if args.out is not None and not os.access(args.out.parent if str(args.out.parent) else Path("."), os.W_OK):
            raise ValueError(f"--out {args.out}: its folder is missing or not writable")
        names = _names(args.baseline, args.candidate)
        same_within = args.same_within if args.fail_on_regression is None else min(args.same_within, args.fail_on_regression)
        cmp = compare(read_matrix(args.baseline), read_matrix(args.candidate), args.metric, same_within / 100, names)
        blockers = {c: v for c, v in cmp.differs.items() if c in GATE_CONTEXT}
        if args.fail_on_regression is not None and blockers and not args.allow_different:
            raise ValueError(f"the sides differ in {_differences(blockers)}: a regression gate compares like with like; rerun the "
                             "baseline there, or pass --allow-different to gate anyway")
        text = to_markdown(cmp, args.metric, *names)
        if args.out:
            args.out.write_text(text)
        else:
            print(text)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        return 2
    if args.fail_on_regression is not None:
        bad = regressions(cmp, args.fail_on_regression)
        if len(bad):
            cells = ", ".join(f"{r[cmp.key[0]]} q={r['q']} ({r['change_pct']:+.1f}%)" for r in bad.to_dict("records"))
            print(f"regression beyond noise and {args.fail_on_regression:g}%: {cells}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
