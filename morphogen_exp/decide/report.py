"""The comparison and decision report of a sweep, built from MLflow alone.

    python -m morphogen_exp.report                      # a what-if of the latest sweep in the local store
    python -m morphogen_exp.report --sweep-dir outputs/multirun/2026-11-27_10-00-00 --rule rank_by=batch_ms_per_batch
    python -m morphogen_exp.report --sweep-dir outputs/multirun/2026-11-27_10-00-00 --publish   # e.g. after an interrupt

Writes report.md, matrix.csv (our configuration, verdict, shipped, then the original's columns, then ours),
latency/qps/speedup plots and the rollout
guard (rollout/selected.yaml + .env). A what-if (no --publish) writes files only, into --out or a new
`whatif-<time>/` in the sweep folder: MLflow, the guard store and the sweep folder's own report stay as
they are. `--publish` (what the sweep's end does) writes the sweep folder and the record: the files
logged to the sweep run, whose description becomes the decision's summary, and the guard saved; it
takes no --rule. Rules: the sweep run's decision.json (older runs: its `decision.*` params), each
`--rule NAME=VALUE` applied on top. The store: --tracking-uri, else the one the sweep folder's
mlflow.json names, else the local one. Never creates a store."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .. import paths
from ..errors import ConfigError, cli_errors
from ..fields import DERIVED, FLOORS, PATH_METRICS, READ_FLOOR_PROBES
from ..record import tracking, uiview
from ..record.tracking import open_store
from . import rollout
from .decision import BestAtQ, Decision, DecisionRules, best_per_q, decide, estimate, with_assignments

ORIGINAL_COLUMNS = [
    "strategy", "policy", "adaptive_threshold", "gpu_streams", "gpu_cuda_graph", "gpu_batch_tile_size", "q",
    "single_ms_per_batch", "batch_ms_per_batch", "batch_vs_single_speedup", "single_qps", "batch_qps",
    "checksum_single", "checksum_batch", "checksum_match",
]
OUR_COLUMNS = [
    "config", "config_id", "cell_key", "our_strategy", "engine", "dataset", "dataset_fingerprint", "device_kind",
    "device_uuid", "status", "parity_ok", "parity_numpy_eq", "parity_numpy_checked", "parity_xor_eq",
    *[f"{m}_{b}" for m in DERIVED for b in ("lo", "hi")], *PATH_METRICS, "speedup_pairs", "confidence", "max_noise",
    "single_ms_p90", "batch_ms_p90", "batch_ms_min", "batch_ms_max",
    "compile_s", "batch_effective_gbps", "memory_estimate_gib", "database_gib", "database_layout", "scan_keys", "engine_path",
    "error_message", "run_id",
]
# matrix.csv, left to right: our configuration, its verdict and whether it ships, q, then the original's columns under
# the original's names (its numbers first; its `strategy` is the original's name of the strategy), then ours. The paths' `*_ms_p50*` metrics
# are the `*_ms_per_batch*` columns under another name: not repeated.
MATRIX_HEAD = ["config", "verdict", "shipped", "q"]
_REPEATED = {f"{p}_ms_p50{b}" for p in ("single", "batch") for b in ("", "_lo", "_hi")}


def matrix_columns(df: pd.DataFrame) -> list[str]:
    """matrix.csv's columns, in order (MATRIX_HEAD, the original's, ours, the floors' flags), each once."""
    numbers_first = DERIVED + [c for c in ORIGINAL_COLUMNS if c not in DERIVED]
    tail = [c for c in numbers_first + OUR_COLUMNS if c not in MATRIX_HEAD and c not in _REPEATED]
    return MATRIX_HEAD + tail + [c for c in df.columns if tracking.FLOOR_MARK in c]


def with_verdicts(df: pd.DataFrame, decision: Decision) -> pd.DataFrame:
    """The matrix's `verdict` (its configuration's: GO, NO-GO, INCONCLUSIVE) and `shipped` (true on the shipped
    configuration's rows) columns."""
    return df.assign(verdict=[_status_of(decision, c) for c in df["config"]],
                     shipped=[c == decision.selected for c in df["config"]])


TIME_CAP = "hit the time cap"  # in a verdict's note (decision._judge_cell): a path stopped before its noise target
LOOP = "single-query loop"  # the fallback when no configuration is the fallback: the report and decision.fallback say the same
DRY_RUN = "CPU dry run: every cell ran on the CPU backend; this tests the pipeline and its decision means nothing for a GPU"



@dataclass
class ReportFiles:
    markdown: Path
    csv: Path
    plots: list[Path]
    rollout: Path | None  # None: no guard (the cells ran on several kinds of device)
    env: Path | None
    decision: Decision
    table: str = ""       # summary_table: what the sweep's end prints above its decision


SHIPS = "<- ships"  # the shipped row's mark in the sweep's closing table


def summary_table(df: pd.DataFrame, decision: Decision) -> str:
    """The sweep's closing table: one row per configuration (the shipped one first, marked), per q its speedup over
    the single-query loop with its interval, `x1.07 [1.01, 1.12]` (a cell not ok: its status), then its verdict."""
    from tabulate import tabulate

    qs = sorted(int(q) for q in df["q"].unique())
    order = {"GO": 0, "INCONCLUSIVE": 1, "NO-GO": 2}
    configs = sorted(df["config"].unique(), key=lambda c: (c != decision.selected,
                                                            order.get(_status_of(decision, c), 3), str(c)))
    rows = []
    for config in configs:
        g = df[df["config"] == config]
        cells = []
        for q in qs:
            at = g[g["q"] == q]
            if at.empty:
                cells.append("—")
                continue
            r = at.iloc[-1].to_dict()
            e = estimate(r, "batch_vs_single_speedup") if r["status"] == "ok" else None
            cells.append(f"x{e.format('.3g')}" if e is not None else str(r["status"]).replace("_", " "))
        rows.append([config, *cells, _status_of(decision, config), SHIPS if config == decision.selected else ""])
    conf = _num_or(df.get("confidence"), 0.95)
    return (f"speedup of the batch path over the single-query loop, median [{conf:.0%} interval]:\n"
            + tabulate(rows, headers=["configuration", *(f"q={q}" for q in qs), "verdict", ""], tablefmt="simple",
                       disable_numparse=True))


def _num_or(col: pd.Series | None, default: float) -> float:
    """The column's first number (e.g. the cells' confidence), else `default`."""
    values = [] if col is None else pd.to_numeric(col, errors="coerce").dropna().tolist()
    return float(values[0]) if values else default


def _status_of(decision: Decision, config: str) -> str:
    v = decision.verdicts.get(config)
    return "—" if v is None else v.status


def _finals_section(records: list[dict[str, Any]], df: pd.DataFrame, decision: Decision) -> str:
    """Per q: the incumbent re-measured at the end against its own cell (drift) and each challenger head to head."""
    if not records:
        return ("No finals were run (nothing ships, finals are off, or the sweep ended before them): the ranking rests "
                "on cells timed minutes apart.")
    labels = dict(zip(df["config_id"], df["config"], strict=False))
    lines = ["| q | incumbent: final vs its cell (drift) | challengers head to head (incumbent ms / challenger ms) | rounds |",
             "|---:|---|---|---:|"]
    for rec in records:
        med, lo, hi = rec["incumbent_ms"]
        cell = rec.get("cell_ms")
        drift = (f"{med:.4g} [{lo:.4g}, {hi:.4g}] ms vs {cell[0]:.4g} [{cell[1]:.4g}, {cell[2]:.4g}] ({med / cell[0] - 1:+.1%})"
                 if cell else f"{med:.4g} [{lo:.4g}, {hi:.4g}] ms")
        verdict = {True: "faster", False: "slower"}
        ch = "; ".join(f"{labels.get(c['config_id'], c['config_id'])} x{c['ratio']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}] "
                       f"({verdict[c['lo'] > 1] if c['lo'] > 1 or c['hi'] < 1 else 'tied'})" for c in rec["challengers"])
        skipped = "; ".join(rec.get("skipped") or [])
        lines.append(f"| {rec['q']} | {labels.get(rec['incumbent'], rec['incumbent'])}: {drift} | {ch or '—'}"
                     f"{(' (not run: ' + skipped + ')') if skipped else ''} | {rec['rounds']} |")
    drifts = [r["incumbent_ms"][0] / r["cell_ms"][0] - 1 for r in records if r.get("cell_ms")]
    tail = (f"\nDrift of the shipped configuration between its cells and the finals: {min(drifts):+.1%} to {max(drifts):+.1%} "
            "(the device and host as they were at the start and at the end)." if drifts else "")
    return "\n".join(lines) + ("\n\n" + decision.finals_note + "." if decision.finals_note else "") + tail


# --------------------------------------------------------------------------- writers (format only)

def _fmt(row: Mapping[str, Any], col: str, spec: str) -> str:
    e = estimate(row, col)
    return "—" if e is None else e.format(spec)


def _filled(table: pd.DataFrame, text: str) -> pd.DataFrame:
    """Missing cells of a pivot as `text` (as objects: a column with no value at all is float, and pandas will
    refuse to fill a float column with text)."""
    return table.astype(object).where(table.notna(), text)


def _grid(df: pd.DataFrame, rows: pd.DataFrame, texts: list[str]) -> str:
    """A markdown table of every q x configuration of df, texts[i] in the cell of rows' i-th row, '—' elsewhere."""
    table = rows.assign(_cell=texts).pivot_table(index="q", columns="config", values="_cell", aggfunc="first")
    table = table.reindex(index=sorted(df["q"].unique()), columns=sorted(df["config"].unique()))
    return _filled(table, "—").to_markdown()


def _pivot(df: pd.DataFrame, col: str, spec: str) -> str:
    ok = df[df["status"] == "ok"]
    return _grid(df, ok, [_fmt(r, col, spec) for r in ok.to_dict("records")])


def _status_table(df: pd.DataFrame) -> str:
    """Each cell's status; for an ok one what each parity check found: ok / BAD, or "not checked" for a
    check that did not run (its `parity_*_checked` count 0, or no `parity_*_eq`), never ok."""

    def value(row: pd.Series, col: str) -> float | None:
        v = row.get(col)
        return None if v is None or pd.isna(v) else float(v)

    def check(row: pd.Series, name: str) -> tuple[int | None, str]:  # (queries checked if known, ok | BAD | not checked)
        n, eq = value(row, f"parity_{name}_checked"), value(row, f"parity_{name}_eq")
        if n == 0 or eq is None:
            return (None if n is None else int(n)), "not checked"
        return (None if n is None else int(n)), "ok" if eq == 1 else "BAD"

    def cell(row: pd.Series) -> str:
        if row["status"] != "ok":
            return str(row["status"]).replace("_", " ")
        marks = "exact" if row["parity_ok"] == 1 else "MISMATCH"
        n_numpy, numpy = check(row, "numpy")
        numpy_text = ("numpy" + ("" if n_numpy is None else f" {n_numpy}q")
                      + {"ok": "", "BAD": " BAD"}.get(numpy, ": not checked"))
        checksum = value(row, "checksum_match")
        checksum_text = "not checked" if checksum is None else "=" if checksum == 1 else "≠"
        return f"{marks} ({numpy_text}, xor {check(row, 'xor')[1]}, checksum {checksum_text})"

    t = df.assign(cell=df.apply(cell, axis=1)).pivot_table(index="q", columns="config", values="cell", aggfunc="first")
    return _filled(t, "missing").to_markdown()


def _engine_path_section(df: pd.DataFrame) -> str:
    """Which path the engine's scan step took in each ok cell (fused: its CUDA kernel up to 12 keys a step,
    the Pallas ops above): one line when every cell recorded the same, a q x configuration table otherwise
    (cells of an engine of one path, which record none, said as such); nothing when no cell records one."""
    ok = df[df["status"] == "ok"]
    if "engine_path" not in df or ok["engine_path"].isna().all():
        return ""
    paths = sorted(ok["engine_path"].dropna().astype(str).unique())
    if len(paths) == 1 and ok["engine_path"].notna().all():
        return f"\nEngine path of every batch step: {paths[0]}.\n"

    def text(r: dict) -> str:  # a cell of an engine of one path (xla, pallas) records none
        path = str(r["engine_path"]) if pd.notna(r["engine_path"]) else "the engine's ops (one path)"
        return f"{path} ({int(r['scan_keys'])} keys)" if pd.notna(r.get("scan_keys")) else path

    texts = [text(r) for r in ok.to_dict("records")]
    return f"\n## Engine path of the batch step (keys per scan)\n{_grid(df, ok, texts)}\n"


def floor_checks(df: pd.DataFrame) -> dict[str, str]:
    """The guard of the card's floors (floors.py), per floor some cell recorded ("read", "expansion"): "" where it
    held, else why it is invalid for this sweep. A floor is invalid where an ok cell (exact answers: a wrong one may
    skip work) lies above it beyond its own interval: the low end of its fraction (from the slow end of its batch
    time's interval) over 1. The line names the cell that went furthest above it."""
    out = {}
    for name, (rate, frac) in FLOORS.items():
        if rate not in df.columns or frac not in df.columns:
            continue
        ok = df[(df["status"] == "ok") & df[frac].notna()]
        low = ok[f"{frac}_lo"].fillna(ok[frac]) if f"{frac}_lo" in ok.columns else ok[frac]
        above = ok.assign(_low=low)[low > 1.0]
        out[name] = ""
        if not above.empty:
            worst = above.loc[above["_low"].idxmax()]
            out[name] = (f"{name} floor probe invalid: {worst['config']} q={int(worst['q'])} reached {worst[frac]:.0%} of it "
                         f"(at least {worst['_low']:.0%}, the low end of its interval)")
    return out


def with_floor_flags(df: pd.DataFrame, checks: Mapping[str, str]) -> pd.DataFrame:
    """matrix.csv's `*_floor_valid` columns: per floor some cell recorded, whether it held for this sweep
    (floor_checks), on each row that has it (empty elsewhere)."""
    flags = {}
    for name, why in checks.items():
        rate = FLOORS[name][0]  # read_floor_gbps -> read_floor_valid
        flags[rate.split("_floor_")[0] + "_floor_valid"] = [(not why) if pd.notna(v) else None for v in df[rate]]
    return df.assign(**flags)


def _pct(r: Mapping[str, Any], frac: str) -> str:
    """A fraction with its interval, as percentages."""
    lo, hi = r.get(f"{frac}_lo"), r.get(f"{frac}_hi")
    bounds = f" [{lo:.0%}, {hi:.0%}]" if lo is not None and hi is not None and pd.notna(lo) and pd.notna(hi) else ""
    return f"{r[frac]:.0%}{bounds}"


def _floors_section(df: pd.DataFrame, decision: Decision) -> str:
    """One paragraph: the card's floors and, per floor that held (floor_checks), the fractions of it that the shipped
    configuration (else the fastest ok cell of each q) reaches; the guard's line instead for one that did not;
    nothing where no cell recorded floors."""
    checks = floor_checks(df)
    read, read_frac = FLOORS["read"]
    expand, expand_frac = FLOORS["expansion"]
    if not checks or read not in df.columns or expand not in df.columns:
        return ""
    ok = df[(df["status"] == "ok") & df[read].notna()]
    if ok.empty:
        return ""
    rows, who = ok[ok["config"] == decision.selected], f"{decision.selected} (ships)"
    if rows.empty:
        ranked = ok.dropna(subset=["batch_qps"])
        rows, who = ranked.loc[ranked.groupby("q")["batch_qps"].idxmax()], "the fastest cell of each q"
    records = rows.sort_values("q").to_dict("records")
    stream, scan = (f"{ok[c].median():.4g} GB/s" if c in ok.columns else "?" for c in READ_FLOOR_PROBES)
    what = {"read": (f"read {ok[read].median():.4g} GB/s (the faster of a plain 16-byte stream, {stream}, and the bitsliced "
                     f"MMA scan alone, {scan})", read_frac, "the database read once a batch"),
            "expansion": (f"expansion {ok[expand].median() / 1e9:.3g} G ChaCha8 blocks/s (the bitsliced CUDA expansion alone, "
                          "96 keys)", expand_frac, "3 keys a query, 2 blocks per GGM node above the database's pages")}
    lines = [f"- {floor}: " + (checks.get(name) or f"{who} reaches " + ", ".join(f"q={int(r['q'])} {_pct(r, frac)}" for r in records)
                               + f" ({counted})") for name, (floor, frac, counted) in what.items()]
    return f"\nFloors on {_distinct(ok, 'device_kind') or '?'} (floors.py; 100% is at the card's limit):\n" + "\n".join(lines) + "\n"


def _sampling_table(df: pd.DataFrame) -> str:
    ok = df[df["status"] == "ok"]
    if ok["batch_samples"].isna().all():
        return "Not recorded by these runs (older runs: a fixed number of iterations, no noise estimate)."

    def cell(r: Mapping[str, Any]) -> str:
        parts = []
        for p in ("single", "batch"):
            n, noise = r.get(f"{p}_samples"), r.get(f"{p}_noise")
            if n is None or pd.isna(n):
                continue
            cap = ", capped" if r.get(f"{p}_capped") == 1 else ""
            spread = "" if noise is None or pd.isna(noise) else f", ±{float(noise):.1%}"
            parts.append(f"{p} {int(n)} rounds{spread}{cap}")
        return "; ".join(parts) or "—"

    t = ok.assign(_c=[cell(r) for r in ok.to_dict("records")]).pivot_table(index="q", columns="config", values="_c", aggfunc="first")
    return _filled(t, "—").to_markdown()


PLOTS = (  # (metric, the loop's metric, title, y label, file); the loop's metric None: its line is x1
    ("batch_ms_per_batch", "single_ms_per_batch", "Batch latency vs Q", "ms per batch (p50)", "latency_vs_q.png"),
    ("batch_qps", "single_qps", "Queries per second vs Q", "queries / s (batch path)", "qps_vs_q.png"),
    ("batch_vs_single_speedup", None, "Speedup over the single-query loop vs Q", "speedup (x, median of rounds' ratios)",
     "speedup_vs_q.png"),
)
DRY_TITLE = " (CPU dry run)"  # every plot's title on a sweep whose cells all ran on the CPU


def _distinct(df: pd.DataFrame, col: str) -> str:
    return ", ".join(sorted(df[col].dropna().astype(str).unique())) if col in df.columns else ""


def plot_subtitle(df: pd.DataFrame, meta: Mapping[str, Any]) -> str:
    """What a plot was measured on, under its title: device, dataset, engine(s), code and date."""
    code = str(meta.get("code_version") or "?")
    return (f"{_distinct(df, 'device_kind') or '?'} ({meta.get('backend') or '?'}) · dataset {_distinct(df, 'dataset') or '?'} · "
            f"engine {_distinct(df, 'engine') or '?'} · code {code[:12]}{'+dirty' if '+dirty' in code else ''} · {meta.get('date', '')}")


def _plots(df: pd.DataFrame, out_dir: Path, subtitle: str = "", shipped: str | None = None,
           rules: DecisionRules | None = None, dry_run: bool = False) -> list[Path]:
    """One plot per metric against Q (1, 2, 4, ... as plain numbers): each configuration with its intervals, the
    shipped one drawn thick and labelled "(ships)", the single-query loop dashed (on the speedup plot: x1, with the
    non-inferiority margin the rules allow below it, from speedup_from_q). A CPU dry run says so in every title.
    Title and subtitle are also the PNG's Title / Description text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

    if "config" not in df.columns:
        df = df.assign(config=df["our_strategy"])
    ok = df[df["status"] == "ok"]
    if ok.empty:  # every cell failed: nothing to draw (the tables say why)
        return []
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    qs = sorted(int(q) for q in ok["q"].unique())
    paths = []
    for col, single_col, title, label, fname in PLOTS:
        fig, ax = plt.subplots(figsize=(7.2, 4.8))
        for name, g in ok.groupby("config"):
            ships = str(name) == shipped
            ax.errorbar(g["q"], g[col], yerr=_yerr(g, col), marker="o", capsize=3, label=f"{name}{' (ships)' if ships else ''}",
                        linewidth=3.2 if ships else 1.2, markersize=7 if ships else 4, zorder=3 if ships else 2)
        if single_col is not None:
            single = ok.groupby("q")[single_col].median()
            ax.plot(single.index, single.values, "k--", label="single-query loop")
        else:
            ax.axhline(1.0, color="k", linestyle="--", label="single-query loop (x1)")
            if rules is not None:
                margin = rules.min_speedup * (1 - rules.tie_within)
                ax.axhline(margin, color="tab:red", linestyle=":", label=f"non-inferiority margin x{margin:.3g} "
                           f"(q >= {rules.speedup_from_q})")
        ax.set_xscale("log", base=2)
        ax.set_xticks(qs)
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_locator(NullLocator())
        if col == "batch_qps":  # linear from 0: plain numbers, what a rate reads as
            ax.set_ylim(bottom=0)
        elif col == "batch_ms_per_batch":  # latencies span decades: log, labelled in plain ms (a speedup: linear)
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("Q (queries per batch)")
        ax.set_ylabel(label + (", with confidence intervals" if _yerr(ok, col) is not None else ""))
        title = title + (DRY_TITLE if dry_run else "")
        fig.suptitle(title, fontsize=13)
        ax.set_title(subtitle, fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / fname
        fig.savefig(path, dpi=110, metadata={"Title": title, "Description": subtitle})
        plt.close(fig)
        paths.append(path)
    return paths


def _graph_replay_notes(df: pd.DataFrame) -> str:
    """Notes lines for graph_replay configurations whose cells' traces saw no CUDA graph launched, could not be
    read, or were not taken: their times are not (known to be) CUDA-graph replay, whatever the strategy's name says."""
    traced = "from a profiler trace of one replay"
    cases = (("0", "ran as plain kernel launches (no CUDA graph captured)", traced,
              "its times are full_batch's program compiled ahead of time, not CUDA-graph replay"),
             ("unknown", "ran without a readable trace (whether a CUDA graph was launched is unknown)", traced,
              "its times cannot be read as CUDA-graph replay"),
             ("not traced", "was not traced (whether a CUDA graph was launched is unknown)", "strategy.trace=false",
              "its times cannot be read as CUDA-graph replay"))
    lines = []
    for config, g in df[df["our_strategy"] == "graph_replay"].groupby("config"):
        infos = [(int(r["q"]), r["_info"]) for r in g.to_dict("records") if isinstance(r["_info"], dict)]
        for value, said, source, times in cases:
            cells = [(q, i) for q, i in infos if str(i.get("graph_launches")) == value]
            if cells:
                backends = ", ".join(sorted({str(i.get("backend", "?")) for _, i in cells}))
                qs = ", ".join(str(q) for q, _ in sorted(cells, key=lambda c: c[0]))
                lines.append(f"- **{config} {said}** on {backends} (graph_launches={value}, {source}, at q={qs}): {times}.\n")
    return "".join(lines)


def _yerr(g: pd.DataFrame, col: str) -> list[list[float]] | None:
    lo, hi = f"{col}_lo", f"{col}_hi"
    if lo not in g.columns or g[lo].isna().all() or g[hi].isna().all():
        return None
    return [(g[col] - g[lo]).clip(lower=0).fillna(0).tolist(), (g[hi] - g[col]).clip(lower=0).fillna(0).tolist()]


def _best_per_q_table(df: pd.DataFrame, decision: Decision, rules: DecisionRules) -> str:
    rows = best_per_q(df, rules)
    if df["config"].nunique() < 2 or not rows:
        return "One configuration: nothing to compare per q."
    lines = [f"| q | best by {rules.rank_by} | value | tied with it |", "|---:|---|---:|---|"]
    lines += [f"| {b.q} | {b.config}{' (ships)' if b.config == decision.selected else ''} | {b.score.format()} | "
              f"{', '.join(b.tied) or '—'} |" for b in rows]
    ahead = [f"q={b.q}: {b.config}" for b in rows if b.config != decision.selected and decision.selected not in b.tied]
    if decision.selected and ahead:
        lines.append(f"\nAhead of {decision.selected}, which ships, beyond its interval ({'; '.join(ahead)}): "
                     "a per-q choice (say, by the batch size at serving time) would be faster there.")
    return "\n".join(lines) + _layouts_note(df, rows)


def _layouts_note(df: pd.DataFrame, rows: list[BestAtQ]) -> str:
    """When the best configurations per q scan different database layouts (raw pages, an engine's own): what a
    per-q engine choice costs, each layout resident at once (the engines' database models, one device)."""
    if "database_layout" not in df or "database_gib" not in df:
        return ""
    ok = df[df["status"] == "ok"]
    layout, gib = ok.groupby("config")["database_layout"].first(), ok.groupby("config")["database_gib"].max()
    by_layout: dict[str, list[BestAtQ]] = {}
    for b in rows:
        if pd.isna(layout.get(b.config)) or pd.isna(gib.get(b.config)):
            return ""  # cells recorded before the layout was: nothing to say
        by_layout.setdefault(str(layout[b.config]), []).append(b)
    if len(by_layout) < 2:
        return ""
    size = {lay: max(float(gib[b.config]) for b in bs) for lay, bs in by_layout.items()}
    parts = [f"{lay} at {', '.join(f'q={b.q}' for b in bs)} ({size[lay]:.3g} GiB a device)" for lay, bs in by_layout.items()]
    return (f"\n\nThe best per q scan {len(by_layout)} database layouts: {'; '.join(parts)}. Serving each q its best keeps "
            f"them all resident ({sum(size.values()):.3g} GiB a device together); one engine at every q keeps one.")


def render(df: pd.DataFrame, decision: Decision, rules: DecisionRules, meta: Mapping[str, Any]) -> str:
    first = df.iloc[0]
    configs = []
    for name, g in df.groupby("config"):
        guard = rollout.guard_mapping(g["_params"].iloc[0]).get("strategy", {})
        knobs = ", ".join(f"{k}={v}" for k, v in sorted(guard.items())) or "—"
        info = g["_info"].iloc[-1]  # at the largest q (chunks, tiles...)
        configs.append(f"| {name} | {g['strategy'].iloc[0]} | {knobs} | `{g['config_id'].iloc[0]}` | "
                       f"{', '.join(f'{k}={v}' for k, v in info.items()) or '—'} |")
    order = {"GO": 0, "INCONCLUSIVE": 1, "NO-GO": 2}
    verdicts = sorted(decision.verdicts.values(), key=lambda v: (order[v.status], v.config))
    capped = sum(TIME_CAP in n for v in verdicts for n in v.notes)
    shown = {v.config: [n for n in v.notes if not (decision.dry_run and TIME_CAP in n)] for v in verdicts}
    verdict_rows = [
        f"| {v.config} | {'**GO**' if v.go else v.status} | {v.score.format() if v.score else '—'} | "
        f"{_short_reasons(v.reasons, 'none')} | {_short_reasons(shown[v.config], '—')} |"
        for v in verdicts
    ]
    full = [f"- **{v.config}**: " + "; ".join(v.reasons + shown[v.config]) for v in verdicts
            if len(v.reasons) > 1 or len(shown[v.config]) > 1]
    reasons_block = ("\n<details><summary>Every blocker and caveat, per configuration</summary>\n\n" + "\n".join(full)
                     + "\n\n</details>\n" if full else "")
    if decision.dry_run and capped:
        reasons_block += (f"\nA CPU dry run is capped: {capped} of the cells' paths stopped at the time cap "
                          "(bench.max_time_s) before their noise target (bench.max_noise), as CPU timings do; their "
                          "intervals are wider, and the verdicts above rest on those intervals.\n")
    counts = df["status"].value_counts().to_dict()
    sel = decision.selected
    devices = ", ".join(sorted(df["device_kind"].dropna().astype(str).unique())) or "?"
    guard_line = (f"- **Rollout guard**: none written ({decision.refusal})." if decision.devices_mixed
                  else f"- **Rollout guard** (what-if): `rollout/{WHATIF}.yaml` and `rollout/{WHATIF}.env` beside this "
                       "report, not saved in the guard store." if meta.get("whatif")
                  else f"""- **Rollout guard**: `rollout/selected.yaml` and `rollout/selected.env` beside this report; saved as
  `+rollout={meta.get('guard_name', '?')}` (and `+rollout=selected`, the latest) in the guard store
  ($MORPHOGEN_ROLLOUT_DIR, else <checkout>/outputs, or ./outputs when installed), each with its record
  (`.meta.json`: this sweep, for rollout trials).""")
    tie = (f"ties (overlapping intervals, or medians within {rules.tie_within:.0%}) go to the first of decision.prefer, "
           "then the finals decide" if decision.intervals else f"ties within {rules.tie_within:.0%} go to the first of decision.prefer")
    intervals = ("Each value is the median with its confidence interval `[lo, hi]`. The single-query loop and the batch path "
                 "are timed in alternating rounds; the speedup is the median of the rounds' ratios, its interval from "
                 "those ratios. A verdict needs the interval to clear each rule (else INCONCLUSIVE)." if decision.intervals else
                 "**Intervals were not available** for these runs (point estimates only): the rules compare point "
                 "values and a tie is a fixed fraction.")
    engines = f"engine{'s' if df['engine'].nunique() > 1 else ''}: {_distinct(df, 'engine') or '?'}"
    dry = f"- **{decision.dry_run[0].upper() + decision.dry_run[1:]}**\n" if decision.dry_run else ""
    dead = df[df["status"] == "killed"]
    died = (f"- **Cells that died** (killed, or their process is gone; `resume=true` runs them again): "
            f"{', '.join(f'{n} (run {i})' for n, i in zip(dead['_name'], dead['run_id'], strict=True))}\n" if len(dead) else "")
    return f"""# Batching decision report

## Summary
- Sweep: `{meta.get('sweep_dir', '?')}` (MLflow parent run `{meta.get('parent_run', '?')}`, {meta.get('tracking_uri', '')})
- Dataset: {first['dataset']} ({meta.get('dataset_desc', '')}); {engines}
{dry}- Device: {devices} ({meta.get('backend', '?')}), JAX {meta.get('jax_version', '?')}; code {meta.get('code_version', '?')}
- Settings: warmup={meta.get('warmup', '?')}, iterations={meta.get('iterations', '?')}, seed={meta.get('seed', '?')}; latencies are medians
- Cells: {len(df)} ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}); configurations: {df['config'].nunique()}
{died}- Generated {meta.get('date', '')}

**Decision: {decision.headline()}**

{decision.summary()}
{_cells_link(meta)}
{intervals}

## Strategies compared (one row per configuration)
| configuration | original | knobs | config_id | recorded by the strategy |
|---|---|---|---|---|
{chr(10).join(configs)}

## Batch latency, ms per batch (p50)
{_pivot(df, 'batch_ms_per_batch', '.3g')}

Single-query loop (same cells, ms per Q queries):
{_pivot(df, 'single_ms_per_batch', '.3g')}

## Speedup of the batch path over the single-query loop
{_pivot(df, 'batch_vs_single_speedup', '.3g')}

## Queries per second (batch path)
{_pivot(df, 'batch_qps', '.4g')}

## Best configuration per q (ok cells{', exact parity' if rules.require_parity else ''})
{_best_per_q_table(df, decision, rules)}
{_floors_section(df, decision)}{_engine_path_section(df)}
## Finals (after the cells: the shipped configuration and what ties it, head to head in rounds)
{_finals_section(list(meta.get('finals') or []), df, decision)}

## Sampling (samples, relative noise reached, whether the time cap stopped it)
{_sampling_table(df)}

## Parity (batch == single loop bit for bit; numpy oracle; server0 XOR server1 == target pages)
{_status_table(df)}

## Decision
Rules (conf/decision): require_parity={rules.require_parity}; the speedup over the loop non-inferior (interval low
end >= x{rules.min_speedup:g} x (1 - tie_within={rules.tie_within:g})) at every q >= {rules.speedup_from_q} and better (low end
> x{rules.min_speedup:g}) at q={decision.rank_q}; every interval from enough samples for its confidence;
latency_budget_ms={rules.latency_budget_ms};
ranked by {rules.rank_by} at q={decision.rank_q}, {tie}.

| configuration | verdict | {rules.rank_by} at q={decision.rank_q} | blockers (decide the verdict) | caveats (decide nothing) |
|---|---|---:|---|---|
{chr(10).join(verdict_rows)}
{reasons_block}
- **Ship**: {sel or 'none'}{(chr(10) + '  (' + decision.tie_note + ')') if decision.tie_note else ''}
- **Fallback**: {decision.fallback or LOOP + ' (no batching)'}
{guard_line}

## Notes
- multi_stream on one device: XLA runs a process's executables on the device's one compute stream; what
  overlaps is host dispatch with device work, not kernels. Lanes map to devices under placement=replicated.
- Batch and single paths answer the same queries; every cell compares them bit for bit before it is recorded.
{_graph_replay_notes(df)}"""


def _cells_link(meta: Mapping[str, Any]) -> str:
    """The link from the report (its rendered page in the MLflow UI) to the runs table's saved view of every cell."""
    exp = meta.get("experiment_id")
    if not exp:
        return ""
    return (f"\nEvery cell, one row each with its numbers and description: [the runs table]"
            f"(#/experiments/{exp}/runs?viewStateShareKey={uiview.KEY}) (saved view *{uiview.NAME.split(':')[0]}*; "
            f"[its charts](#/experiments/{exp}/runs?viewStateShareKey={uiview.KEY}&compareRunsMode=CHART)).\n")


def _short_reasons(every: Sequence[str], none: str) -> str:
    """A verdict's blockers (or caveats) in a table cell: the first one, and how many more (all of them below the
    table); `none` when there are none."""
    if not every:
        return none
    first = every[0] if len(every[0]) <= 160 else every[0][:157].rstrip() + "..."
    return first + (f" (and {len(every) - 1} more)" if len(every) > 1 else "")


def _num_pages(row: Mapping[str, Any]) -> Any:
    """The dataset's page count a cell measured (its tag, else its param): part of the guard's name."""
    tags, params = row.get("_tags") or {}, row.get("_params") or {}
    return tags.get("dataset.num_pages") or rollout.typed(params.get("dataset.num_pages"))


def guard_texts(df: pd.DataFrame, decision: Decision, header: str, trust_legacy: bool = False) -> tuple[str, str, str]:
    """The guard's name, its YAML (what `+rollout=` loads) and the .env a deployment sources: the strategy's
    guard_env and the lines that say what ships (rollout.guard_env_lines). The params each is built from are the
    ones the cell logged at its start (rollout.check_params); a cell recorded without its digest stops it unless
    `trust_legacy` (rollout.check_not_legacy)."""
    dry = bool(decision.dry_run)
    head = f"{header}\ndecision: {decision.headline()}"
    if decision.selected is None:
        r = df.iloc[0]
        name = rollout.guard_name(str(r["dataset"]), str(r["device_kind"]), str(r["engine"]), _num_pages(r))
        text = rollout.to_yaml(rollout.no_go_mapping(), head + "\nNo configuration is GO: serve one query at a time.")
        env = rollout.merged_env(rollout.NO_GO_ENV, rollout.guard_env_lines(None, engine=str(r["engine"]), dry_run=dry))
        return name, text, rollout.env_text(env, head + "\nbatching off: serve one query at a time")
    shipped = df[df["config"].isin([decision.selected, decision.fallback])].to_dict("records")  # every cell it ships on
    for r in shipped:
        rollout.check_params(r["_params"], r["_tags"], str(r["run_id"]))
    if not trust_legacy:
        rollout.check_not_legacy([(str(r["config"]), r["q"], str(r["run_id"])) for r in shipped if rollout.legacy(r["_tags"])])
    row = df[df["config"] == decision.selected].iloc[0]
    name = rollout.guard_name(str(row["dataset"]), str(row["device_kind"]), str(row["engine"]), _num_pages(row))
    mapping = rollout.guard_mapping(row["_params"], row["_tags"].get("devices_used"), with_env=True)  # as measured
    text = rollout.to_yaml(mapping, f"{head}\nships {decision.selected} ({row['config_id']})")
    env = rollout.merged_env(rollout.env_of(row["_params"]),
                             rollout.guard_env_lines(row["_params"], row["_tags"].get("devices_used"), dry_run=dry))
    env_text = rollout.env_text(env, f"{head}\nships {decision.selected} ({row['config_id']})")
    if decision.fallback:
        fb = df[df["config"] == decision.fallback].iloc[0]
        env_text += f"# fallback: {decision.fallback}\n" + "".join(f"# {line}\n" for line in _env(fb["_params"]).splitlines())
    return name, text, env_text


def guard_meta(df: pd.DataFrame, decision: Decision, name: str, text: str, parent: Any, tracking_uri: str,
               experiment: str) -> rollout.GuardMeta:
    """The guard's record (`<name>.meta.json`): its sweep, the store that holds it, and which configurations'
    cells are the promise a rollout trial checks (trial.py)."""
    def cid(label: str | None) -> str | None:
        return None if label is None else str(df.loc[df["config"] == label, "config_id"].iloc[0])

    sel = decision.selected
    row = df[df["config"] == sel].iloc[0] if sel else df.iloc[0]
    ok = df[(df["status"] == "ok") & (df["config"] == sel)]
    return rollout.GuardMeta(
        guard=name, guard_sha256=rollout.sha256(text), sweep_dir=str(parent.data.tags.get(tracking.PARENT_TAG, "")),
        parent_run_id=str(parent.info.run_id), tracking_uri=tracking_uri, experiment=experiment,
        code_version=str(parent.data.tags.get("code_version", "unknown")), device_kind=str(row["device_kind"]),
        dataset=str(row["dataset"]), dataset_fingerprint=str(row["dataset_fingerprint"]), engine=str(row["engine"]),
        strategy=str(row["our_strategy"]) if sel else None, selected=sel, config_id=cid(sel),
        fallback=decision.fallback, fallback_config_id=cid(decision.fallback), q=tuple(sorted(int(q) for q in ok["q"])),
        sweep_start_ms=int(parent.info.start_time or 0), decision=decision.headline())


def _env(params: Mapping[str, Any]) -> str:
    return rollout.env_text(rollout.env_of(params))  # names and values checked, values shell-quoted


def build(store: Any, parent_id: str, out_dir: Path, *, publish: bool = False, rules_override: Sequence[str] = (),
          rollout_dir: Path | None = None, make_selected: bool = False, trust_legacy: bool = False) -> ReportFiles:
    """The report of one sweep as recorded in MLflow (`store` has .client and .experiment_id): files in out_dir.
    Only `publish` (a sweep's own end, or `report --publish` of a finished sweep) writes the record: the files
    logged to the parent run, the decision as its description and `decision.*` tags, the guard saved in the rollout
    store (or in `rollout_dir`/rollout if given). Without it nothing in MLflow or the guard store changes (a what-if:
    its files are named whatif.* and its report says so)."""
    record = tracking.read_sweep(store, parent_id, rules_override)
    files, matrix, guard = write(record, out_dir, save_guard=publish, rollout_dir=rollout_dir, whatif=not publish,
                                 rules_override=rules_override, make_selected=make_selected, trust_legacy=trust_legacy)
    if publish:
        decision = files.decision
        tags = {"mlflow.note.content": decision.summary(), "decision.selected": decision.selected or "none",
                "decision.fallback": decision.fallback or LOOP, "decision.guard": guard}
        guards = [p for p in (files.rollout, files.env) if p is not None]
        meta = [files.rollout.with_name(rollout.LATEST + rollout.META_SUFFIX)] if files.rollout is not None else []
        tracking.publish(store, parent_id, [files.markdown, files.csv, *guards, *meta, *files.plots], tags,
                         shipped_metrics(record.frame, decision), matrix)
        verdict_tags(store, matrix)
        uiview.share_view(store.client, store.experiment_id)  # the runs page's saved view of the matrix
    return files


VERDICT_TAG, SHIPPED_TAG = "verdict", "shipped"  # on each cell run, once published: its configuration's verdict


def verdict_tags(store: Any, matrix: pd.DataFrame) -> None:
    """Each cell run of a published sweep carries its configuration's verdict and whether it ships (the runs table's
    columns, its saved view's, beside the cell's numbers); a tag already saying so is not written again."""
    for r in matrix.to_dict("records"):
        run_id = r.get("run_id")
        if not isinstance(run_id, str) or not run_id:
            continue
        want = {VERDICT_TAG: str(r["verdict"]), SHIPPED_TAG: str(bool(r["shipped"])).lower()}
        have = store.client.get_run(run_id).data.tags
        for key, value in want.items():
            if have.get(key) != value:
                store.client.set_tag(run_id, key, value)


WHATIF = "whatif"  # a what-if's guard files: rollout/whatif.yaml and whatif.env, never selected.*


def write(record: tracking.SweepRecord, out_dir: Path, *, save_guard: bool = False, rollout_dir: Path | None = None,
          whatif: bool = False, rules_override: Sequence[str] = (),
          make_selected: bool = False, trust_legacy: bool = False) -> tuple[ReportFiles, pd.DataFrame, str]:
    """Decide and render a sweep into out_dir (report.md, matrix.csv, plots, rollout/ guard); with `save_guard`
    the guard also goes to the guard store (or `rollout_dir`/rollout), each of its names moving only forward
    (rollout.publish). `whatif`: the guard files are rollout/whatif.*, without a record, and report.md opens with
    a what-if banner. Returns the files, the matrix and the guard's name ("none": no decision, no guard)."""
    df, parent, parent_id = record.frame, record.parent, str(record.parent.info.run_id)
    decision = decide(df, record.rules, record.finals)
    if cpu_only(df):
        decision.dry_run = DRY_RUN
    out_dir.mkdir(parents=True, exist_ok=True)
    p0, first_tags = df["_params"].iloc[0], df["_tags"].iloc[0]
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sweep_dir = parent.data.tags.get(tracking.PARENT_TAG, str(out_dir))
    kind = "What-if (not published) of sweep" if whatif else "Rollout guard from sweep"
    header = f"{kind} {sweep_dir} (run {parent_id}), {first_tags.get('device_kind')}, {date}"
    guarded = not decision.devices_mixed
    name, guard_yaml, guard_env = guard_texts(df, decision, header, trust_legacy) if guarded else ("none", "", "")
    meta = {
        "finals": record.final_records, "whatif": whatif, "experiment_id": str(parent.info.experiment_id),
        "sweep_dir": sweep_dir, "parent_run": parent_id, "tracking_uri": record.tracking_uri,
        "backend": first_tags.get("backend"), "jax_version": first_tags.get("jax_version"),
        "code_version": parent.data.tags.get("code_version"), "warmup": p0.get("bench.warmup"),
        "iterations": p0.get("bench.iterations"), "seed": p0.get("seed"), "date": date, "guard_name": name,
        "dataset_desc": f"{first_tags.get('dataset.num_pages', '?')} pages, {first_tags.get('dataset.gib', '?')} GiB, "
                        f"{first_tags.get('dataset.source', '')}",
    }
    csv, md = out_dir / "matrix.csv", out_dir / "report.md"
    flagged = with_floor_flags(df, floor_checks(df))  # the card's floors, raw, and whether each held (floor_checks)
    matrix = with_verdicts(flagged, decision)[matrix_columns(flagged)]
    paths.atomic_write(csv, matrix.to_csv(index=False))
    plots = _plots(df, out_dir, plot_subtitle(df, meta), decision.selected, record.rules, bool(decision.dry_run))
    stem = WHATIF if whatif else rollout.LATEST
    guard_path, env_path = out_dir / "rollout" / f"{stem}.yaml", out_dir / "rollout" / f"{stem}.env"
    meta_path = guard_path.with_name(rollout.LATEST + rollout.META_SUFFIX)
    if not guarded:  # no guard at all: a "serve one at a time" guard would overwrite a good one
        for path in (guard_path, env_path, meta_path):
            path.unlink(missing_ok=True)
    else:
        meta_record = guard_meta(df, decision, name, guard_yaml, parent, record.tracking_uri, record.experiment)
        rollout.save(guard_path.parent, stem, guard_yaml, None if whatif else meta_record)
        paths.atomic_write(env_path, guard_env)
        if save_guard:
            for line in rollout.publish(name, guard_yaml, None if rollout_dir is None else rollout_dir / rollout.GROUP,
                                        meta_record, make_selected=make_selected):
                print(line, file=sys.stderr)
    text = render(df, decision, record.rules, meta)
    if whatif:
        rules = f" with {', '.join(rules_override)}" if rules_override else ""
        text = (f"> **WHAT-IF{rules}**: not this sweep's record. Nothing was published: MLflow and the rollout guard "
                f"store are unchanged; the guard files here are rollout/{WHATIF}.yaml and {WHATIF}.env.\n\n") + text
    paths.atomic_write(md, text)
    files = ReportFiles(md, csv, plots, guard_path if guarded else None, env_path if guarded else None, decision,
                        summary_table(df, decision))
    return files, matrix, name


def cpu_only(df: pd.DataFrame) -> bool:
    """Every cell ran on the CPU backend (its `backend` tag, else its device kind): a dry run of the pipeline."""
    kinds = [str(t.get("backend") or dk or "").lower() for t, dk in zip(df["_tags"], df["device_kind"], strict=True)]
    return bool(kinds) and all(k == "cpu" for k in kinds)


def shipped_metrics(df: pd.DataFrame, decision: Decision) -> dict[str, float]:
    """The shipped configuration's numbers per q, as the sweep run's metrics (the runs table's columns and charts
    without expanding the sweep): `shipped.batch_qps.q32`, `shipped.batch_ms.q1`, `shipped.speedup.q8`.
    Nothing ships: none."""
    if decision.selected is None:
        return {}
    ok = df[(df["config"] == decision.selected) & (df["status"] == "ok")]
    out: dict[str, float] = {}
    for r in ok.to_dict("records"):
        for col, short in (("batch_qps", "batch_qps"), ("batch_ms_per_batch", "batch_ms"), ("batch_vs_single_speedup", "speedup")):
            v = r.get(col)
            if v is not None and not pd.isna(v):
                out[f"shipped.{short}.q{int(r['q'])}"] = float(v)
    return out


# --------------------------------------------------------------------------- command line

def _writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out {path}: cannot create it ({err.strerror})") from None
    if not os.access(path, os.W_OK):
        raise ConfigError(f"--out {path} is not writable; pick another folder")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m morphogen_exp.report", description=(__doc__ or "").splitlines()[0],
                                 epilog="Without --publish this is a what-if: files only, MLflow and the guard store "
                                        "unchanged, and never over the sweep folder's own (published) report.")
    ap.add_argument("--tracking-uri", help="the store (default: what the sweep folder's mlflow.json names, with "
                                           "--sweep-dir; else sqlite:///<current dir>/outputs/mlflow.db)")
    ap.add_argument("--experiment", help="default: the sweep folder's mlflow.json, else morphogen_exp")
    ap.add_argument("--sweep-dir", help="the sweep's output folder (default: the latest sweep)")
    ap.add_argument("--parent-run", help="the sweep's MLflow run id")
    ap.add_argument("--out", type=Path, help="where to write (default: with --publish the sweep folder; without, a new "
                                             "whatif-<time>/ inside it; never the sweep folder without --publish)")
    ap.add_argument("--rule", action="append", default=[], metavar="NAME=VALUE",
                    help="override a decision rule (repeatable), e.g. --rule rank_by=batch_ms_per_batch; a what-if only")
    ap.add_argument("--publish", action="store_true",
                    help="record this as the sweep's report: written to the sweep folder, logged to the sweep run "
                         "(description, decision.* tags, report/ artifacts), the guard saved in the rollout store "
                         "(+rollout=); refused with --rule (the record keeps the sweep's own rules)")
    ap.add_argument("--make-selected", action="store_true",
                    help="with --publish: move the store's guards (its name and `selected`) to this sweep even when they "
                         "are of a newer sweep (by default a guard only moves forward)")
    ap.add_argument("--trust-legacy", action="store_true",
                    help="build the guard from cells recorded without a params digest (before it existed) as their "
                         "params read now; by default such cells stop it (re-measure them with resume=true)")
    args = ap.parse_args(argv)
    hold: Any = None
    with cli_errors() as cli:
        try:
            if args.make_selected and not args.publish:
                raise ConfigError("--make-selected without --publish: only a publish moves the guard store; add --publish")
            if args.publish and args.rule:
                raise ConfigError("--publish with --rule: the sweep's record keeps its own rules; drop --rule, or --publish "
                                  "for a what-if (files only)")
            with_assignments({}, args.rule)  # NAME=VALUE syntax, before anything is opened
            uri, experiment = args.tracking_uri, args.experiment
            if args.sweep_dir and (uri is None or experiment is None):  # the store the sweep wrote, as it says
                from ..record.sweepdir import read_store

                named_uri, named_exp = read_store(Path(args.sweep_dir))
                uri, experiment = uri or named_uri, experiment or named_exp
            store = open_store(uri or f"sqlite:///{Path('outputs').resolve()}/mlflow.db", experiment or "morphogen_exp")
            parent = tracking.find_sweep(store, args.sweep_dir, args.parent_run)
            run = store.client.get_run(parent)
            folder = Path(run.data.tags.get(tracking.PARENT_TAG, "."))
            if args.publish:
                out = _writable_dir(args.out or folder)
            elif args.out is not None:
                if rollout.inside_store(args.out) or rollout.inside_store(args.out / "rollout"):
                    raise ConfigError(f"--out {args.out} is in the rollout guard store ({rollout.store()}), which only a "
                                      "finished sweep's publish writes; pick a folder outside it for a what-if")
                if args.out.resolve() == folder.resolve():
                    raise ConfigError(f"--out {args.out} is the sweep folder, which holds the published report; pick another "
                                      "folder (a what-if), or --publish to rebuild the record")
                out = _writable_dir(args.out)
            elif folder.is_dir():
                from ..record.sweepdir import new_dir

                stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
                out = _writable_dir(Path(new_dir(str(folder / f"whatif-{stamp}"))))  # created exclusively
            else:
                raise ConfigError(f"the sweep folder {folder} is not on this machine: pass --out for a what-if")
            if args.publish:  # the record is rebuilt: runs whose process is gone end KILLED first (a what-if only names them)
                from ..record.sweepdir import hold_finished

                hold = hold_finished(folder)  # a running sweep holds its folder: its own end publishes it
                closed = tracking.close_stale(store, str(folder))
                if closed:
                    print(f"closed {len(closed)} RUNNING run(s) of {folder} as KILLED (their process is gone)", file=sys.stderr)
                if store.client.get_run(parent).info.status == "RUNNING":
                    raise ConfigError(f"sweep in progress: its run {parent} is RUNNING (on another host, or its process is "
                                      "alive); its own end publishes it, or wait for it")
            try:
                files = build(store, parent, out, publish=args.publish, rules_override=args.rule,
                              make_selected=args.make_selected, trust_legacy=args.trust_legacy)
            except BaseException:
                if not args.publish and args.out is None:
                    with contextlib.suppress(OSError):
                        out.rmdir()  # the what-if folder made for nothing (a bad --rule): not left behind empty
                raise
        finally:
            if hold is not None:
                hold.release()
    if cli.status:
        return cli.status
    what = "" if args.publish else " (what-if)"
    print(f"decision{what}: {files.decision.headline()}")
    print(f"report: {files.markdown}" + ("" if args.publish else " (a what-if: MLflow and the guard store unchanged)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
