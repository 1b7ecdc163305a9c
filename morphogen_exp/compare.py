"""Compare two result matrices cell by cell, with the noise each side recorded (a separate tool: reports
only format their own sweep).

    python -m morphogen_exp.compare tests/fixtures/original-task30-h100-matrix.csv outputs/multirun/X/matrix.csv
    python -m morphogen_exp.compare A/matrix.csv B/matrix.csv --metric batch_ms_per_batch --fail-on-regression 3

Reads our matrix.csv or the original's published CSV (its quoted header lines are skipped). Cells are
matched on config_id and q when both sides have a config_id column (so a knob sweep's `tiled[tile=4]` meets
a plain sweep's `tiled` of the same configuration), else on the configuration label and q when both have
one, else on the original's strategy name and q; the table shows the candidate's label. config_id covers
every setting (engine, bench...), so the same sweep on two engines pairs only with --match config (said
under the table when the labels would pair more cells). A cell is compared when its status is ok on both
sides (the original's CSV has no status: its rows count as ok). Per cell: candidate / baseline with an
interval (from the `_lo` / `_hi` columns of whichever side has them) and a verdict: same, faster, slower, or
not enough evidence. Baseline ok cells that the candidate lacks, or has with another status (failed,
does_not_fit, killed...), are listed under the table.

A change is the metric's own: a time from 1 ms to 10 ms is +900% (x10 slower), a rate from 100 to 10 q/s is
-90%; the gate's PCT is how much worse a cell may be: a time longer, or a rate lower, by at most PCT percent.

With --fail-on-regression PCT the exit status is 1 when a cell is slower beyond its interval and by more
than PCT percent, or when a baseline ok cell is missing or not ok on the candidate side (so a candidate
that matches no cell fails); it is 2 when the gate cannot judge anything: the baseline has no ok cell, so
nothing would be compared and a gate that compares nothing must not pass; it is 3 (1 with --fail-on-undecided)
when a cell's point estimate is worse by more than PCT percent but its interval is too wide to decide (not
enough evidence is no pass). A row whose parity_ok or checksum_match is recorded and not 1 is not ok.

Bad input is a one-line error on stderr and exit 2: a file that is not a result matrix, two rows for one
cell, a NaN, infinite or negative --same-within / --fail-on-regression, and a metric value or bound that is
infinite, zero or negative, missing in an ok row (a bound may be missing only with its twin: a point
estimate), or outside lo <= value <= hi (this error names the file, the cell and the column).

The sides' device, dataset and engine are compared too (the original's CSV names its GPU in a header
line): a difference is stated above the table, since the ratios measure it as well, and a regression gate
refuses sides run on different devices or datasets (exit 2) unless --allow-different says so. That flag
lifts only this refusal: missing or failed cells fail the gate all the same."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .errors import cli_errors

SAME, FASTER, SLOWER, UNDECIDED = "same", "faster", "slower", "not enough evidence"
# What a ratio also measures when it differs between the sides; the first two make a regression gate meaningless.
CONTEXT = ("device_kind", "dataset_fingerprint", "engine")
GATE_CONTEXT = ("device_kind", "dataset_fingerprint")


def higher_is_better(metric: str) -> bool:
    """Throughputs and speedups: larger is better; times (`*_ms*`, `*_s`: latencies, compile_s, wall_s), sizes
    (`*_gib`) and noise: smaller is better."""
    return "_ms" not in metric and not metric.endswith(("_s", "_gib", "_noise"))


# Read as text: a config_id of digits (or digits and one 'e') would otherwise become a number on one side only.
_TEXT_COLUMNS = {col: str for col in ("strategy", "config", "config_id", "status")}


def read_matrix(path: Path) -> pd.DataFrame:
    """A matrix CSV (ours or the original's) as a frame: every row, whatever its status (see `is_ok`)."""
    if not path.is_file():
        raise ValueError(f"{path} is not a file: pass a matrix.csv or the original's CSV")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a spreadsheet's export may start with a BOM
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} cannot be read ({err})") from None
    header = next((i for i, line in enumerate(lines) if line.startswith(("strategy,", "config,"))), None)
    if header is None:
        raise ValueError(f"{path} has no 'strategy,...' or 'config,...' header line: not a result matrix")
    try:
        df = pd.read_csv(path, skiprows=header, dtype=_TEXT_COLUMNS, encoding="utf-8-sig")
    except (pd.errors.ParserError, ValueError) as err:
        raise ValueError(f"{path} is not a readable CSV: {str(err).splitlines()[0]}") from None
    if "q" not in df.columns:
        raise ValueError(f"{path} has no q column: not a result matrix")
    q = pd.to_numeric(df["q"], errors="coerce")
    bad = q.isna() | (q.notna() & (q != q.round()))  # 1.7 is no batch size (never truncated to 1)
    if bad.any():
        raise ValueError(f"{path}: q must be an integer in every row, got {str(df['q'][bad].iloc[0])!r}")
    df["q"] = q.astype(int)
    gpu = next((line.strip('"')[len("gpu_info="):] for line in lines[:header] if line.strip('"').startswith("gpu_info=")), None)
    if gpu and "device_kind" not in df.columns:  # the original's "gpu_info=NVIDIA H100 80GB HBM3, 81559 MiB"
        df["device_kind"] = gpu.split(",")[0].strip()
    return df.reset_index(drop=True)


def is_ok(df: pd.DataFrame) -> pd.Series:
    """Rows that ran and passed parity, so carry comparable numbers: status ok (the original has no status:
    every row of it) and, where the column is recorded, parity_ok and checksum_match exactly 1."""
    ok = pd.Series(True, index=df.index) if "status" not in df.columns else (df["status"] == "ok").fillna(False).astype(bool)
    for col in ("parity_ok", "checksum_match"):  # exact parity, where a side records it: anything but 1 is not ok
        if col in df.columns:
            ok &= pd.to_numeric(df[col].replace({"True": 1, "False": 0, "true": 1, "false": 0}), errors="coerce") == 1
    return ok


MATCH = ("auto", "config_id", "config", "strategy")


def match_key(base: pd.DataFrame, cand: pd.DataFrame, match: str = "auto") -> list[str]:
    """What identifies a cell on both sides. auto: config_id + q, else the configuration label + q, else
    strategy + q; any other `match` names the column, which both sides must have."""
    if match != "auto":
        if match not in MATCH:
            raise ValueError(f"--match takes one of {', '.join(MATCH)}, got {match!r}")
        lacking = [side for side, df in (("the baseline", base), ("the candidate", cand)) if match not in df.columns]
        if lacking:
            raise ValueError(f"--match {match}: {' and '.join(lacking)} has no {match} column")
        return [match, "q"]
    for col in ("config_id", "config"):
        if col in base.columns and col in cand.columns:
            return [col, "q"]
    return ["strategy", "q"]


def _values(df: pd.DataFrame, col: str) -> str:
    return ", ".join(sorted(map(str, df[col].dropna().unique())))


def context_differences(base: pd.DataFrame, cand: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """The CONTEXT columns both sides record (a value in some row) whose values differ: column -> (baseline's,
    candidate's)."""
    sides = {col: (_values(base, col), _values(cand, col)) for col in CONTEXT if col in base.columns and col in cand.columns}
    return {col: (a, b) for col, (a, b) in sides.items() if a and b and a != b}  # a side with no value: unchecked


def _numeric(df: pd.DataFrame, col: str, where: str) -> pd.Series:
    values = pd.to_numeric(df[col], errors="coerce")
    bad = values.isna() & df[col].notna()
    if bad.any():
        raise ValueError(f"{where}: column {col} has a non-numeric value {df[col][bad].iloc[0]!r}")
    return values.astype(float)


def _check_numbers(out: pd.DataFrame, metric: str, where: str) -> None:
    """Timings and rates are finite and > 0, an ok row has its value (and both bounds or neither), and an
    interval holds its value: else a one-line error naming the file, the cell and the column."""
    def fail(i: int, col: str, problem: str) -> None:
        r = out.loc[i]
        raise ValueError(f"{where}: cell {r['label']} q={r['q']}, column {col}: {problem}")

    cols = {"value": metric, "lo": f"{metric}_lo", "hi": f"{metric}_hi"}
    for i, r in out.iterrows():
        for part, col in cols.items():
            v = r[part]
            if pd.isna(v):
                twin = "hi" if part == "lo" else "lo"
                if r["ok"] and part == "value":
                    fail(i, col, "no value in a row whose status is ok")
                if r["ok"] and part != "value" and pd.notna(r[twin]):
                    fail(i, col, f"missing while {cols[twin]} is set (an interval needs both bounds)")
            elif not math.isfinite(v):
                fail(i, col, f"{v} is not a finite number")
            elif v <= 0:
                fail(i, col, f"{v:g} is {'zero' if v == 0 else 'negative'}: timings and rates are > 0")
        if pd.notna(r["value"]):
            if pd.notna(r["lo"]) and r["lo"] > r["value"]:
                fail(i, cols["lo"], f"{r['lo']:g} is above the value {r['value']:g} (the interval must hold it)")
            if pd.notna(r["hi"]) and r["hi"] < r["value"]:
                fail(i, cols["hi"], f"{r['hi']:g} is below the value {r['value']:g} (the interval must hold it)")


def _cells(df: pd.DataFrame, metric: str, key: list[str], where: str) -> pd.DataFrame:
    """key, label, value, lo, hi, ok and status of every row, checked: one ok row per cell, sane numbers."""
    if metric not in df.columns:
        raise ValueError(f"{where} has no column {metric!r}; columns: {', '.join(map(str, df.columns))}")
    for col in key:
        if df[col].isna().any():
            raise ValueError(f"{where}: a row (q={df['q'][df[col].isna()].iloc[0]}) has no {col}: it cannot be matched")
    ok = is_ok(df)
    dup = df[ok & df.duplicated(key, keep=False)]
    dup = dup[dup.duplicated(key, keep=False)]  # two ok rows for one cell
    if len(dup):
        first = dup.iloc[0]
        raise ValueError(f"{where} has {len(dup)} rows for the same cell ({', '.join(f'{k}={first[k]}' for k in key)}): "
                         "keep one row per cell")
    out = df[key].copy()
    label = "config" if key[0] == "config_id" and "config" in df.columns else key[0]
    out["label"] = df[label].fillna(df[key[0]]).astype(str)
    out["value"] = _numeric(df, metric, where)
    bounded = f"{metric}_lo" in df.columns and f"{metric}_hi" in df.columns
    out["lo"] = _numeric(df, f"{metric}_lo", where) if bounded else float("nan")
    out["hi"] = _numeric(df, f"{metric}_hi", where) if bounded else float("nan")
    out["ok"] = ok
    out["status"] = df["status"].fillna("(none)").astype(str) if "status" in df.columns else "ok"
    _check_numbers(out, metric, where)
    return out


@dataclass
class Comparison:
    table: pd.DataFrame   # key, label (the candidate's), baseline, candidate, ratio, ratio_lo, ratio_hi, change_pct, worse_pct,
    #                       verdict
    key: list[str]
    intervals: str        # which side carried intervals, in words
    differs: dict[str, tuple[str, str]]  # context_differences of the two sides
    unchecked: list[str]  # CONTEXT columns one side does not record
    label: str = "config"  # what the table's first column is: the candidate's config, config_id or strategy
    missing: pd.DataFrame = field(default_factory=pd.DataFrame)  # baseline ok cells the candidate lacks: key, label
    failed: pd.DataFrame = field(default_factory=pd.DataFrame)   # ...that it has, not ok: key, label, status
    hint: str = ""        # when config_id pairs fewer cells than the labels would: says so, and how

    @property
    def lost(self) -> list[str]:
        """The baseline ok cells the candidate does not answer, named: missing ones, then not-ok ones."""
        return ([f"{r['label']} q={r['q']} (missing)" for r in self.missing.to_dict("records")] +
                [f"{r['label']} q={r['q']} ({r['status']})" for r in self.failed.to_dict("records")])


def compare(base: pd.DataFrame, cand: pd.DataFrame, metric: str, same_within: float = 0.02,
            names: tuple[str, str] = ("baseline", "candidate"), match: str = "auto") -> Comparison:
    """Per matched ok cell: the ratio candidate / baseline, its interval and a verdict; and the baseline's ok
    cells that the candidate lacks or has failed (`match`: see match_key)."""
    key = match_key(base, cand, match)
    b, c = _cells(base, metric, key, names[0]), _cells(cand, metric, key, names[1])
    b_ok, c_ok = b[b["ok"]].drop(columns=["ok", "status"]), c[c["ok"]].drop(columns=["ok", "status"])
    t = b_ok.merge(c_ok, on=key, suffixes=("_b", "_c"))
    t["label"] = t["label_c"]
    t["ratio"] = t["value_c"] / t["value_b"]
    t["ratio_lo"] = t["lo_c"].fillna(t["value_c"]) / t["hi_b"].fillna(t["value_b"])
    t["ratio_hi"] = t["hi_c"].fillna(t["value_c"]) / t["lo_b"].fillna(t["value_b"])
    with_interval = t["lo_b"].notna() | t["lo_c"].notna()
    t.loc[~with_interval, ["ratio_lo", "ratio_hi"]] = float("nan")
    up = higher_is_better(metric)
    t["change_pct"] = (t["ratio"] - 1) * 100  # the metric's own change: 1 ms -> 10 ms is +900% (a slowdown), not -900%
    t["worse_pct"] = -t["change_pct"] if up else t["change_pct"]  # > 0: the candidate is worse by this much (the gate's number)
    t["verdict"] = [_verdict(r, up, same_within) for r in t.to_dict("records")]
    # Baseline ok cells without an ok candidate: those with a candidate row failed (one row per cell), else missing.
    unanswered = b_ok[key + ["label"]].merge(c_ok[key], on=key, how="left", indicator=True)
    unanswered = unanswered[unanswered["_merge"] == "left_only"].drop(columns="_merge")
    c_bad = c[~c["ok"]].drop_duplicates(key)[key + ["label", "status"]]
    lost = unanswered.merge(c_bad, on=key, how="left", suffixes=("_b", ""))
    failed = lost[lost["status"].notna()].drop(columns="label_b")
    missing = lost[lost["status"].isna()].drop(columns=["label", "status"]).rename(columns={"label_b": "label"})
    sides = [n for n, df in zip(names, (b_ok, c_ok), strict=True) if df["lo"].notna().any()]
    intervals = (f"intervals from {' and '.join(sides)}" + ("" if len(sides) == 2 else
                 f"; {[n for n in names if n not in sides][0]} has none (point values)") if sides
                 else "no intervals on either side: verdicts from point estimates, no noise to judge by")
    ok_base, ok_cand = base[is_ok(base)], cand[is_ok(cand)]  # what the cells that measured something ran on
    unchecked = [col for col in CONTEXT if col not in base.columns or col not in cand.columns
                 or not _values(ok_base, col) or not _values(ok_cand, col)]
    label = "config" if key[0] == "config_id" and "config" in cand.columns else key[0]
    hint = ""
    if key[0] == "config_id" and "config" in base.columns and "config" in cand.columns and (len(missing) or len(failed)):
        # config_id covers every setting (engine, bench...): two engines' sweeps share none, their labels do.
        by_label = b_ok[["label", "q"]].merge(c_ok[["label", "q"]], on=["label", "q"])
        if len(by_label) > len(t):
            hint = (f"Matched on config + q (--match config), {len(by_label)} cells would pair instead of {len(t)}: the "
                    "sides' configurations differ in some setting (another engine?).")
    return Comparison(t.sort_values(key).reset_index(drop=True), key, intervals, context_differences(ok_base, ok_cand),
                      unchecked, label, missing.sort_values(key).reset_index(drop=True),
                      failed.sort_values(key).reset_index(drop=True), hint)


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


def change_sense(metric: str) -> str:
    """What the change column's sign means for this metric, in words (it is the metric's own relative change)."""
    if higher_is_better(metric):
        return "higher is better; change > 0: the candidate is better"
    return "lower is better; change is the candidate's own change, so > 0 is slower: 1 ms -> 10 ms is +900%, x10 slower"


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
    return t[(t["verdict"] == SLOWER) & (t["worse_pct"] > pct)]


def undecided(cmp: Comparison, pct: float) -> pd.DataFrame:
    """Cells whose point estimate is worse by more than pct percent but whose interval is too wide to say so:
    a regression the gate cannot rule out."""
    t = cmp.table
    return t[(t["verdict"] == UNDECIDED) & (t["worse_pct"] > pct)]


def _names(a: Path, b: Path) -> tuple[str, str]:
    """How the two sides are named: their file names, or their folders when the file names match."""
    return (a.name, b.name) if a.name != b.name else (f"{a.parent.name}/{a.name}", f"{b.parent.name}/{b.name}")


def lost_lines(cmp: Comparison) -> str:
    """The baseline's ok cells that the candidate lacks or has not ok, in words (empty when there are none)."""
    def cells(df: pd.DataFrame, status: bool) -> str:
        return ", ".join(f"{r['label']} q={r['q']}" + (f" ({r['status']})" if status else "") for r in df.to_dict("records"))

    parts = []
    if len(cmp.missing):
        parts.append(f"Missing on the candidate side ({len(cmp.missing)} of the baseline's ok cells): {cells(cmp.missing, False)}.")
    if len(cmp.failed):
        parts.append(f"Not ok on the candidate side ({len(cmp.failed)} of the baseline's ok cells): {cells(cmp.failed, True)}.")
    if cmp.hint:
        parts.append(cmp.hint)
    return "\n\n".join(parts)


def to_markdown(cmp: Comparison, metric: str, base_name: str, cand_name: str) -> str:
    t, lost = cmp.table, lost_lines(cmp)
    if t.empty:
        return f"No cell is in both matrices (matched on {' + '.join(cmp.key)}).\n" + (f"\n{lost}\n" if lost else "")

    def fmt(v: float, lo: float, hi: float, spec: str) -> str:
        return f"{v:{spec}}" if pd.isna(lo) or pd.isna(hi) else f"{v:{spec}} [{lo:{spec}}, {hi:{spec}}]"

    rows = [f"| {r['label']} | {r['q']} | {fmt(r['value_b'], r['lo_b'], r['hi_b'], '.4g')} | "
            f"{fmt(r['value_c'], r['lo_c'], r['hi_c'], '.4g')} | {fmt(r['ratio'], r['ratio_lo'], r['ratio_hi'], '.3f')} | "
            f"{r['change_pct']:+.1f}% | {r['verdict']} |" for r in t.to_dict("records")]
    counts = t["verdict"].value_counts().to_dict()
    context = context_line(cmp)
    return (f"# {metric}: {cand_name} / {base_name}\n\n" + (f"{context}\n\n" if context else "") +
            f"{len(t)} cells matched on {' + '.join(cmp.key)}; {cmp.intervals}. "
            f"{', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}. "
            f"({change_sense(metric)})\n\n"
            f"| {cmp.label} | q | {base_name} | {cand_name} | ratio | change | verdict |\n|---|---:|---:|---:|---:|---:|---|\n"
            + "\n".join(rows) + "\n" + (f"\n{lost}\n" if lost else ""))


def first_sentence(text: str) -> str:
    """The first full sentence of a docstring, on one line (argparse's description)."""
    flat = " ".join(text.split())
    end = re.search(r"[.!?](?=\s|$)", flat)
    return flat[:end.end()] if end else flat


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m morphogen_exp.compare", description=first_sentence(__doc__ or ""),
                                 epilog="Exit status: 0 compared (and the gate, if any, passed); 1 the gate failed; "
                                        "2 bad input, or a gate that cannot judge; 3 a possible regression the "
                                        "intervals cannot decide (1 with --fail-on-undecided).")
    ap.add_argument("baseline", type=Path,
                    help="the reference matrix: a sweep's matrix.csv, or the original's published CSV")
    ap.add_argument("candidate", type=Path,
                    help="the matrix judged against it (its labels are shown); same formats as the baseline")
    ap.add_argument("--metric", default="batch_qps",
                    help="the column compared, with its _lo/_hi interval where a side records one: batch_qps, single_qps, "
                         "batch_vs_single_speedup (higher is better) or batch_ms_per_batch, single_ms_per_batch (lower is "
                         "better); default batch_qps")
    ap.add_argument("--match", choices=MATCH, default="auto",
                    help="what pairs the cells (with q): auto (default) is config_id when both sides have one, else config, "
                         "else strategy; config pairs configurations by label, e.g. the same sweep on two engines, whose "
                         "config_ids differ")
    ap.add_argument("--out", type=Path, help="write the markdown here instead of printing it")
    ap.add_argument("--same-within", type=float, default=2.0, metavar="PCT",
                    help="an interval inside 1 ± PCT%% is 'same' (default 2)")
    ap.add_argument("--fail-on-regression", type=float, metavar="PCT",
                    help="exit 1 when a cell is slower beyond noise and by more than PCT%%, or when one of the baseline's ok "
                         "cells is missing or not ok (failed, does_not_fit, killed...) on the candidate side, so a candidate "
                         "that matches no cell fails; exit 2 when the baseline has no ok cell (a gate that compares nothing "
                         "must not pass)")
    ap.add_argument("--fail-on-undecided", action="store_true",
                    help="with --fail-on-regression: exit 1 (not 3) for a cell worse by more than PCT%% whose interval is "
                         "too wide to decide")
    ap.add_argument("--allow-different", action="store_true",
                    help="gate even when the sides ran on different devices or datasets (missing or failed cells still "
                         "fail the gate)")
    args = ap.parse_args(argv)
    gate = args.fail_on_regression
    with cli_errors(ValueError) as cli:
        for flag, pct in (("--same-within", args.same_within), ("--fail-on-regression", gate)):
            if pct is not None and not (math.isfinite(pct) and pct >= 0):
                raise ValueError(f"{flag} takes a finite percentage >= 0, got {pct:g}")
        if args.out is not None and not os.access(args.out.parent if str(args.out.parent) else Path("."), os.W_OK):
            raise ValueError(f"--out {args.out}: its folder is missing or not writable")
        names = _names(args.baseline, args.candidate)
        same_within = args.same_within if gate is None else min(args.same_within, gate)
        cmp = compare(read_matrix(args.baseline), read_matrix(args.candidate), args.metric, same_within / 100, names,
                      args.match)
        blockers = {c: v for c, v in cmp.differs.items() if c in GATE_CONTEXT}
        if gate is not None and blockers and not args.allow_different:
            raise ValueError(f"the sides differ in {_differences(blockers)}: a regression gate compares like with like; rerun the "
                             "baseline there, or pass --allow-different to gate anyway")
        if gate is not None and cmp.table.empty and not cmp.lost:
            raise ValueError(f"{names[0]} has no ok cell: the gate would compare nothing, and a gate that compares nothing "
                             "does not pass")
        text = to_markdown(cmp, args.metric, *names)
        if args.out:
            args.out.write_text(text)
        else:
            print(text)
    if cli.status:
        return cli.status
    if gate is None:
        return 0
    status = 0
    if cmp.lost:
        print(f"{len(cmp.lost)} of the baseline's ok cells are not answered by {names[1]} "
              f"({len(cmp.table)} matched on {' + '.join(cmp.key)}): {', '.join(cmp.lost)}" + (f". {cmp.hint}" if cmp.hint else ""),
              file=sys.stderr)
        status = 1
    bad = regressions(cmp, gate)
    if len(bad):
        cells = ", ".join(f"{r['label']} q={r['q']} ({r['change_pct']:+.1f}%)" for r in bad.to_dict("records"))
        print(f"regression beyond noise and {gate:g}%: {cells}", file=sys.stderr)
        status = 1
    unsure = undecided(cmp, gate)
    if len(unsure):
        cells = ", ".join(f"{r['label']} q={r['q']} ({r['change_pct']:+.1f}%, interval x{r['ratio_lo']:.3g}-x{r['ratio_hi']:.3g})"
                          for r in unsure.to_dict("records"))
        print(f"possible regression beyond {gate:g}%, intervals too wide to decide (more rounds can): {cells}",
              file=sys.stderr)
        if status == 0:  # a failed gate stays 1; otherwise not enough evidence is no pass
            status = 1 if args.fail_on_undecided else 3
    return status


if __name__ == "__main__":
    sys.exit(main())
