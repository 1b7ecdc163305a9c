"""Compare two result matrices cell by cell (a separate tool: reports only format their own sweep).

    python -m morphogen_exp.compare ../shared/fixtures/original-task30-h100-matrix.csv outputs/multirun/X/matrix.csv
    python -m morphogen_exp.compare docs/benchmarks/<xla>/matrix.csv docs/benchmarks/<pallas>/matrix.csv --metric batch_ms_per_batch

Reads our matrix.csv or the original's published CSV (its quoted header lines are skipped); cells
are matched on the original's strategy name and q, so our sweeps line up with the original's rows.
Prints (or writes) a markdown table: baseline, candidate and candidate/baseline for one metric.
Only compare matrices from the same card and the same kind of run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

KEY = ["strategy", "q"]


def read_matrix(path: Path) -> pd.DataFrame:
    """A matrix CSV as a frame with at least the original's columns (strategy, q, timings)."""
    if not path.is_file():
        raise ValueError(f"{path} is not a file: pass a matrix.csv or the original's CSV")
    lines = path.read_text().splitlines()
    header = next((i for i, line in enumerate(lines) if line.startswith("strategy,")), None)
    if header is None:
        raise ValueError(f"{path} has no 'strategy,...' header line: not a result matrix")
    df = pd.read_csv(path, skiprows=header)
    if "status" in df.columns:  # ours: only cells that ran and passed parity carry comparable numbers
        df = df[df["status"] == "ok"]
    return df


def compare(base: pd.DataFrame, cand: pd.DataFrame, metric: str) -> pd.DataFrame:
    for name, df in (("baseline", base), ("candidate", cand)):
        if metric not in df.columns:
            raise ValueError(f"{name} has no column {metric!r}; columns: {', '.join(df.columns)}")
    joined = base[KEY + [metric]].merge(cand[KEY + [metric]], on=KEY, suffixes=("_baseline", "_candidate"))
    joined["ratio"] = joined[f"{metric}_candidate"] / joined[f"{metric}_baseline"]
    return joined.sort_values(KEY).reset_index(drop=True)


def to_markdown(table: pd.DataFrame, metric: str, base_name: str, cand_name: str) -> str:
    if table.empty:
        return f"No cell is in both matrices (matched on {KEY}).\n"
    ratio = table.pivot(index="q", columns="strategy", values="ratio")
    return (f"# {metric}: {cand_name} / {base_name}\n\n"
            f"{ratio.map(lambda x: '—' if pd.isna(x) else f'{x:.2f}x').to_markdown()}\n\n"
            f"## Cells\n{table.to_markdown(index=False, floatfmt='.2f')}\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m morphogen_exp.compare", description=__doc__.splitlines()[0])
    ap.add_argument("baseline", type=Path)
    ap.add_argument("candidate", type=Path)
    ap.add_argument("--metric", default="batch_qps")
    ap.add_argument("--out", type=Path, help="write the markdown here instead of printing it")
    args = ap.parse_args(argv)
    try:
        table = compare(read_matrix(args.baseline), read_matrix(args.candidate), args.metric)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = to_markdown(table, args.metric, args.baseline.name, args.candidate.name)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
