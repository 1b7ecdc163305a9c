"""The comparison and decision report of a sweep, built from MLflow alone.

    python -m morphogen_exp.report                      # the latest sweep in the local store
    python -m morphogen_exp.report --sweep-dir outputs/multirun/2026-11-27_10-00-00
    python -m morphogen_exp.report --parent-run <id> --tracking-uri http://host:5000

Writes report.md, matrix.csv (the original's columns, then ours), latency/qps plots and the
rollout guard (rollout/selected.yaml + .env) into the sweep folder, and logs them to the sweep run.
Decision rules come from the sweep run's `decision.*` params (conf/decision/)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .decision import Decision, DecisionRules, decide, guard, strategy_params

ORIGINAL_COLUMNS = [
    "strategy", "policy", "adaptive_threshold", "gpu_streams", "gpu_cuda_graph", "gpu_batch_tile_size", "q",
    "single_ms_per_batch", "batch_ms_per_batch", "batch_vs_single_speedup", "single_qps", "batch_qps",
    "checksum_single", "checksum_batch", "checksum_match",
]
OUR_COLUMNS = [
    "our_strategy", "engine", "dataset", "device_kind", "status", "parity_ok", "parity_numpy_eq",
    "parity_numpy_checked", "parity_xor_eq", "single_ms_p90", "batch_ms_p90", "batch_ms_min", "batch_ms_max",
    "compile_s", "batch_effective_gbps", "memory_estimate_gib", "error_message", "run_id",
]


@dataclass
class ReportFiles:
    markdown: Path
    csv: Path
    plots: list[Path]
    rollout: Path
    env: Path


# --------------------------------------------------------------------------- data from MLflow

def cells_frame(runs: list[Any]) -> pd.DataFrame:
    """One row per cell run: tags, metrics and the strategy's params, with the original's columns."""
    rows = []
    for r in runs:
        t, m, p = r.data.tags, r.data.metrics, r.data.params
        status = t.get("cell_status") or {"FINISHED": "ok", "RUNNING": "running"}.get(r.info.status, r.info.status.lower())
        if r.info.status == "KILLED":
            status = "killed"
        env = {k.split(".")[-1]: v for k, v in p.items() if k.startswith("strategy.guard_env.")}
        graph = str(env.get("MORPHOGEN_GPU_CUDA_GRAPH", "False")).lower() == "true"
        rows.append({
            "strategy": t.get("original_strategy", t.get("strategy")),
            "policy": env.get("MORPHOGEN_GPU_BATCH_POLICY", "latency"),
            "adaptive_threshold": int(p.get("strategy.threshold", 4)),
            "gpu_streams": int(env.get("MORPHOGEN_GPU_STREAMS", 1)),
            "gpu_cuda_graph": int(graph),
            "gpu_batch_tile_size": int(p.get("strategy.tile", 16)),
            "q": int(t.get("q", m.get("q", 0))),
            "single_ms_per_batch": m.get("single_ms_per_batch"),
            "batch_ms_per_batch": m.get("batch_ms_per_batch"),
            "batch_vs_single_speedup": m.get("batch_vs_single_speedup"),
            "single_qps": m.get("single_qps"),
            "batch_qps": m.get("batch_qps"),
            "checksum_single": t.get("checksum_single"),
            "checksum_batch": t.get("checksum_batch"),
            "checksum_match": None if "checksum_match" not in m else int(m["checksum_match"]),
            "our_strategy": t.get("strategy"),
            "engine": t.get("engine"),
            "dataset": t.get("dataset"),
            "device_kind": t.get("device_kind"),
            "status": status,
            "parity_ok": None if "parity_ok" not in m else int(m["parity_ok"]),
            "parity_numpy_eq": None if "parity_numpy_eq" not in m else int(m["parity_numpy_eq"]),
            "parity_numpy_checked": m.get("parity_numpy_checked"),
            "parity_xor_eq": None if "parity_xor_eq" not in m else int(m["parity_xor_eq"]),
            "single_ms_p90": m.get("single_ms_p90"),
            "batch_ms_p90": m.get("batch_ms_p90"),
            "batch_ms_min": m.get("batch_ms_min"),
            "batch_ms_max": m.get("batch_ms_max"),
            "compile_s": m.get("compile_s"),
            "batch_effective_gbps": m.get("batch_effective_gbps"),
            "memory_estimate_gib": m.get("memory_estimate_gib"),
            "error_message": t.get("error_message", ""),
            "run_id": r.info.run_id,
            "_params": p,
            "_info": {k[len("strategy_info."):]: v for k, v in t.items() if k.startswith("strategy_info.")},
        })
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    # A resumed or re-run cell may appear twice: keep the newest per (strategy, q).
    return df.drop_duplicates(["our_strategy", "q"], keep="first").sort_values(["our_strategy", "q"]).reset_index(drop=True)


# --------------------------------------------------------------------------- writers (format only)

def _pivot(df: pd.DataFrame, col: str, fmt: str) -> str:
    ok = df[df["status"] == "ok"]
    table = ok.pivot_table(index="q", columns="our_strategy", values=col, aggfunc="first")
    table = table.reindex(index=sorted(df["q"].unique()), columns=sorted(df["our_strategy"].unique()))
    return table.map(lambda x: "—" if pd.isna(x) else format(x, fmt)).to_markdown()


def _status_table(df: pd.DataFrame) -> str:
    def cell(row: pd.Series) -> str:
        if row["status"] != "ok":
            return row["status"].replace("_", " ")
        marks = "exact" if row["parity_ok"] == 1 else "MISMATCH"
        return f"{marks} (numpy {int(row['parity_numpy_checked'] or 0)}q, xor {'ok' if row['parity_xor_eq'] == 1 else 'BAD'}, checksum {'=' if row['checksum_match'] == 1 else '≠'})"

    t = df.assign(cell=df.apply(cell, axis=1)).pivot_table(index="q", columns="our_strategy", values="cell", aggfunc="first")
    return t.fillna("missing").to_markdown()


def _plots(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = df[df["status"] == "ok"]
    if ok.empty:  # every cell failed: nothing to draw (the tables say why)
        return []
    paths = []
    for col, label, fname in (("batch_ms_per_batch", "batch latency (ms, p50)", "latency_vs_q.png"),
                              ("batch_qps", "queries / s", "qps_vs_q.png")):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for name, g in ok.groupby("our_strategy"):
            ax.plot(g["q"], g[col], marker="o", label=name)
        single = ok.groupby("q")["single_ms_per_batch" if col.endswith("ms_per_batch") else "single_qps"].median()
        ax.plot(single.index, single.values, "k--", label="single-query loop")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("Q (queries per batch)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _atomic_write(path: Path, text: str) -> None:
    """Write to a temporary file then rename: a report is either complete or absent."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def render(df: pd.DataFrame, decision: Decision, rules: DecisionRules, meta: dict[str, str]) -> str:
    first = df.iloc[0]
    strategies = []
    for name, g in df.groupby("our_strategy"):
        params = strategy_params(df, name)
        knobs = ", ".join(f"{k}={v}" for k, v in sorted(params.items()) if "." not in k and k != "original") or "—"
        info = g["_info"].iloc[-1]  # at the largest q (chunks, tiles...)
        strategies.append(f"| {name} | {g['strategy'].iloc[0]} | {knobs} | {', '.join(f'{k}={v}' for k, v in info.items()) or '—'} |")
    verdict_rows = [
        f"| {v.strategy} | {'**GO**' if v.go else 'NO-GO'} | {v.score:.2f} | {'; '.join(v.reasons) or 'all rules hold'} |"
        for v in sorted(decision.verdicts.values(), key=lambda v: (not v.go, -(v.score if v.score == v.score else 0)))
    ]
    counts = df["status"].value_counts().to_dict()
    sel = decision.selected
    return f"""# Batching decision report

## Summary
- Sweep: `{meta.get('sweep_dir', '?')}` (MLflow parent run `{meta.get('parent_run', '?')}`, {meta.get('tracking_uri', '')})
- Dataset: {first['dataset']} ({meta.get('dataset_desc', '')}); engine: {first['engine']}
- Device: {first['device_kind']} ({meta.get('backend', '?')}), JAX {meta.get('jax_version', '?')}; code {meta.get('code_version', '?')}
- Settings: warmup={meta.get('warmup', '?')}, iterations={meta.get('iterations', '?')}, seed={meta.get('seed', '?')}; latencies are medians
- Cells: {len(df)} ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}); generated {meta.get('date', '')}

**Decision: {'GO ' + sel if sel else 'no strategy is GO: keep the single-query path'}**; fallback: {decision.fallback or 'the single-query loop'}.

## Strategies compared
| strategy | original | knobs | recorded by the strategy |
|---|---|---|---|
{chr(10).join(strategies)}

## Batch latency, ms per batch (p50)
{_pivot(df, 'batch_ms_per_batch', '.2f')}

Single-query loop (same cells, ms per Q queries):
{_pivot(df, 'single_ms_per_batch', '.2f')}

## Speedup of the batch path over the single-query loop
{_pivot(df, 'batch_vs_single_speedup', '.2f')}

## Queries per second (batch path)
{_pivot(df, 'batch_qps', '.1f')}

## Parity (batch == single loop bit for bit; numpy oracle; server0 XOR server1 == target pages)
{_status_table(df)}

## Decision
Rules (conf/decision): require_parity={rules.require_parity}, min_speedup={rules.min_speedup:g} for q >= {rules.speedup_from_q},
latency_budget_ms={rules.latency_budget_ms}, ranked by {rules.rank_by} at q={decision.rank_q}, ties within {rules.tie_within:.0%} go to the first of decision.prefer.

| strategy | verdict | {rules.rank_by} at q={decision.rank_q} | rule that decided |
|---|---|---:|---|
{chr(10).join(verdict_rows)}

- **Ship**: {sel or 'none'}{(chr(10) + '  (' + decision.tie_note + ')') if decision.tie_note else ''}
- **Fallback**: {decision.fallback or 'the single-query loop (no batching)'}
- **Rollout guard**: `rollout/selected.yaml` and `rollout/selected.env` beside this report
  (`python -m morphogen_exp +rollout=selected q=8` loads the latest sweep's guard from outputs/rollout/).

## Notes
- multi_stream on one device: XLA runs a process's executables on the device's one compute stream; what
  overlaps is host dispatch with device work, not kernels. Lanes map to devices when several exist.
- Batch and single paths answer the same queries; every cell compares them bit for bit before it is recorded.
"""


def build(tracker: Any, parent_id: str, out_dir: Path, rollout_dir: Path | None = None) -> ReportFiles:
    """Build the report of one sweep from MLflow: files in out_dir, logged to the parent run."""
    parent = tracker.client.get_run(parent_id)
    runs = tracker.children(parent_id)
    if not runs:
        raise ValueError(f"sweep run {parent_id} has no cell runs: nothing to report")
    df = cells_frame(runs)
    rules = DecisionRules.from_params(parent.data.params)
    decision = decide(df, rules)
    out_dir.mkdir(parents=True, exist_ok=True)
    p0 = df["_params"].iloc[0]
    first_run = runs[0].data.tags
    meta = {
        "sweep_dir": parent.data.tags.get("morphogen.sweep_dir", str(out_dir)),
        "parent_run": parent_id,
        "tracking_uri": tracker.cfg.tracking_uri,
        "backend": first_run.get("backend"),
        "jax_version": first_run.get("jax_version"),
        "code_version": parent.data.tags.get("code_version"),
        "warmup": p0.get("bench.warmup"),
        "iterations": p0.get("bench.iterations"),
        "seed": p0.get("seed"),
        "dataset_desc": f"{first_run.get('dataset.num_pages', '?')} pages, {first_run.get('dataset.gib', '?')} GiB, {first_run.get('dataset.source', '')}",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    md = out_dir / "report.md"
    csv = out_dir / "matrix.csv"
    _atomic_write(csv, df[ORIGINAL_COLUMNS + OUR_COLUMNS].to_csv(index=False))
    plots = _plots(df, out_dir)
    header = f"# Rollout guard from sweep {meta['sweep_dir']} (run {parent_id}), {first_run.get('device_kind')}, {meta['date']}"
    guard_yaml, guard_env = guard(df, decision, header)
    (out_dir / "rollout").mkdir(exist_ok=True)
    rollout, env = out_dir / "rollout" / "selected.yaml", out_dir / "rollout" / "selected.env"
    _atomic_write(rollout, guard_yaml)
    _atomic_write(env, guard_env)
    if rollout_dir is not None:  # the latest guard, where `+rollout=selected` finds it
        (rollout_dir / "rollout").mkdir(parents=True, exist_ok=True)
        _atomic_write(rollout_dir / "rollout" / "selected.yaml", guard_yaml)
    _atomic_write(md, render(df, decision, rules, meta))
    for path in (md, csv, rollout, env, *plots):
        tracker.log_file(parent_id, path, "report")
    tracker.log(parent_id, tags={"decision.selected": decision.selected or "none", "decision.fallback": decision.fallback or "none"})
    return ReportFiles(md, csv, plots, rollout, env)


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError, MlflowConfig
    from .tracking import ROLE_TAG, Tracker

    ap = argparse.ArgumentParser(prog="python -m morphogen_exp.report", description=__doc__.splitlines()[0])
    ap.add_argument("--tracking-uri", default=f"sqlite:///{Path('outputs').resolve()}/mlflow.db")
    ap.add_argument("--experiment", default="morphogen_exp")
    ap.add_argument("--sweep-dir", help="the sweep's output folder (default: the latest sweep)")
    ap.add_argument("--parent-run", help="the sweep's MLflow run id")
    ap.add_argument("--out", help="where to write (default: the sweep folder)")
    args = ap.parse_args(argv)
    try:
        tracker = Tracker(MlflowConfig(args.tracking_uri, args.experiment))
        if args.parent_run:
            parent = args.parent_run
        elif args.sweep_dir:
            parent = tracker.find_parent(str(Path(args.sweep_dir).resolve()))
            if parent is None:
                raise ConfigError(f"no sweep run for {args.sweep_dir} in experiment {args.experiment!r}")
        else:
            runs = tracker.client.search_runs([tracker.experiment_id], f"tags.`{ROLE_TAG}` = 'sweep'",
                                              order_by=["attributes.start_time DESC"], max_results=1)
            if not runs:
                raise ConfigError(f"no sweep in experiment {args.experiment!r} at {args.tracking_uri}")
            parent = runs[0].info.run_id
        run = tracker.client.get_run(parent)
        out = Path(args.out or run.data.tags.get("morphogen.sweep_dir", "."))
        files = build(tracker, parent, out)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report: {files.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
