"""The decision: typed rules, a verdict per strategy, the ranking, and the rollout guard it implies.

Rules come from conf/decision/ (validated by `DecisionRules.from_mapping` before the first cell runs);
`decide` turns the cells of a sweep into verdicts; `guard` writes what a rollout trial loads.
The report only renders what is decided here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import pandas as pd

from .config import ConfigError

# Metrics a sweep may be ranked by, and whether larger is better.
RANKABLE = {"batch_qps": True, "batch_vs_single_speedup": True, "batch_ms_per_batch": False,
            "batch_ms_p90": False}


@dataclass(frozen=True)
class DecisionRules:
    require_parity: bool = True
    min_speedup: float = 1.0
    speedup_from_q: int = 4
    latency_budget_ms: float | None = None
    rank_by: str = "batch_qps"
    tie_within: float = 0.0         # GO strategies within this fraction of the best score are tied...
    prefer: tuple[str, ...] = ()    # ...and a tie goes to the one listed first here

    @classmethod
    def from_params(cls, params: dict[str, str]) -> DecisionRules:
        def get(name: str, cast, default):
            v = params.get(f"decision.{name}")
            return default if v in (None, "None", "null") else cast(v)

        return cls(
            require_parity=get("require_parity", lambda s: s == "True", True),
            min_speedup=get("min_speedup", float, 1.0),
            speedup_from_q=get("speedup_from_q", int, 4),
            latency_budget_ms=get("latency_budget_ms", float, None),
            rank_by=get("rank_by", str, "batch_qps"),
            tie_within=get("tie_within", float, 0.0),
            prefer=get("prefer", _names, ()),
        )

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> DecisionRules:
        """Validate conf/decision (a plain mapping) into rules; a bad value is a one-line ConfigError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(m) - known)
        if unknown:
            raise ConfigError(f"unknown decision setting(s) {unknown}; valid: {sorted(known)}")

        def boolean(name: str, default: bool) -> bool:
            v = m.get(name, default)
            if not isinstance(v, bool):
                raise ConfigError(f"decision.{name} must be true or false, got {v!r}")
            return v

        def number(name: str, default: float | None, lo: float = 0.0, optional: bool = False) -> Any:
            v = m.get(name, default)
            if v is None and optional:
                return None
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < lo:
                raise ConfigError(f"decision.{name} must be a number >= {lo:g}{' or null' if optional else ''}, got {v!r}")
            return v

        rank_by = m.get("rank_by", "batch_qps")
        if rank_by not in RANKABLE:
            raise ConfigError(f"decision.rank_by={rank_by!r} is not a metric to rank by; valid: {', '.join(RANKABLE)}")
        prefer = m.get("prefer") or ()
        if isinstance(prefer, str) or not all(isinstance(p, str) for p in prefer):
            raise ConfigError(f"decision.prefer must be a list of strategy names, got {prefer!r}")
        from_q = m.get("speedup_from_q", 4)
        if isinstance(from_q, bool) or not isinstance(from_q, int) or from_q < 1:
            raise ConfigError(f"decision.speedup_from_q must be an integer >= 1, got {from_q!r}")
        tie = number("tie_within", 0.0)
        if tie >= 1:
            raise ConfigError(f"decision.tie_within must be a fraction below 1 (0.02 = 2%), got {tie!r}")
        return cls(
            require_parity=boolean("require_parity", True),
            min_speedup=float(number("min_speedup", 1.0)),
            speedup_from_q=from_q,
            latency_budget_ms=number("latency_budget_ms", None, optional=True),
            rank_by=rank_by,
            tie_within=float(tie),
            prefer=tuple(prefer),
        )


def _names(value: str) -> tuple[str, ...]:
    """A list param as MLflow stores it ("['a', 'b']") or a comma-separated string -> names."""
    return tuple(n.strip(" '\"") for n in value.strip("[]").split(",") if n.strip(" '\""))


@dataclass
class Verdict:
    strategy: str
    go: bool
    reasons: list[str] = field(default_factory=list)
    score: float = float("nan")


@dataclass
class Decision:
    verdicts: dict[str, Verdict]
    selected: str | None
    fallback: str | None
    rank_q: int
    tie_note: str = ""


def decide(df: pd.DataFrame, rules: DecisionRules) -> Decision:
    all_q = sorted(df["q"].unique())
    rank_q = max(all_q)
    verdicts: dict[str, Verdict] = {}
    for name, g in df.groupby("our_strategy"):
        v = Verdict(name, True)
        missing = sorted(set(all_q) - set(g["q"]))
        if missing:
            v.reasons.append(f"coverage: no cell at q={missing}")
        for _, row in g.iterrows():
            q = row["q"]
            if row["status"] in ("failed", "killed", "running"):
                v.reasons.append(f"cell {row['status']} at q={q}" + (f" ({row['error_message']})" if row["error_message"] else ""))
                continue
            if row["status"] == "does_not_fit":
                v.reasons.append(f"does not fit at q={q} ({row['error_message']})")
                continue
            if rules.require_parity and row["parity_ok"] != 1:
                v.reasons.append(f"require_parity: mismatch at q={q}")
            sp = row["batch_vs_single_speedup"]
            if q >= rules.speedup_from_q and sp is not None and sp < rules.min_speedup:
                v.reasons.append(f"min_speedup: x{sp:.2f} < x{rules.min_speedup:g} at q={q}")
            if rules.latency_budget_ms is not None and row["batch_ms_per_batch"] > rules.latency_budget_ms:
                v.reasons.append(f"latency_budget_ms: {row['batch_ms_per_batch']:.1f} ms > {rules.latency_budget_ms:g} ms at q={q}")
        v.go = not v.reasons
        at = g[g["q"] == rank_q]
        if len(at) and at[rules.rank_by].notna().all():
            v.score = float(at[rules.rank_by].iloc[0])
        verdicts[name] = v
    ranked = sorted((v for v in verdicts.values() if v.go), key=lambda v: -v.score)
    tie_note = ""
    if len(ranked) > 1 and rules.tie_within > 0:
        # Near-equal scores are noise, not evidence: among them ship the simplest (decision.prefer).
        best = ranked[0].score
        tied = [v for v in ranked if v.score >= best * (1 - rules.tie_within)]
        order = {name: i for i, name in enumerate(rules.prefer)}
        tied_sorted = sorted(tied, key=lambda v: (order.get(v.strategy, len(order)), -v.score))
        if len(tied) > 1:
            ranked = tied_sorted + [v for v in ranked if v not in tied]
            tie_note = (f"{', '.join(v.strategy for v in tied_sorted)} are within {rules.tie_within:.0%} of the best "
                        f"{rules.rank_by} ({', '.join(f'{v.score:.4g}' for v in tied_sorted)}): tied, ordered by decision.prefer")
    selected = ranked[0].strategy if ranked else None
    fallback = ranked[1].strategy if len(ranked) > 1 else None
    return Decision(verdicts, selected, fallback, rank_q, tie_note)


def strategy_params(df: pd.DataFrame, name: str) -> dict[str, str]:
    p = df[df["our_strategy"] == name]["_params"].iloc[0]
    return {k[len("strategy."):]: v for k, v in p.items() if k.startswith("strategy.") and k != "strategy.name"}


def guard(df: pd.DataFrame, decision: Decision, header: str) -> tuple[str, str]:
    """The rollout guard as a config a trial loads as it is, and the equivalent environment."""
    name = decision.selected
    if name is None:
        yaml = f"# @package _global_\n{header}\n# No strategy is GO: serve one query at a time.\ndefaults:\n  - override /strategy: multi_stream\nstrategy:\n  streams: 1\n"
        return yaml, "MORPHOGEN_GPU_BATCH_POLICY=latency\nMORPHOGEN_GPU_STREAMS=1\nMORPHOGEN_GPU_CUDA_GRAPH=false\n"
    params = strategy_params(df, name)
    knobs = {k: v for k, v in params.items() if "." not in k and k not in ("original",)}
    engine = df[df["our_strategy"] == name]["engine"].iloc[0]
    lines = ["# @package _global_", header, "defaults:", f"  - override /strategy: {name}", f"  - override /engine: {engine}"]
    if knobs:
        lines.append("strategy:")
        lines += [f"  {k}: {v}" for k, v in sorted(knobs.items())]
    env = {k[len("guard_env."):]: v for k, v in params.items() if k.startswith("guard_env.")}
    env_text = "".join(f"{k}={_env_value(v)}\n" for k, v in sorted(env.items()))
    if decision.fallback:
        fb = strategy_params(df, decision.fallback)
        env_text += f"# fallback: {decision.fallback}\n" + "".join(
            f"# {k[len('guard_env.'):]}={_env_value(v)}\n" for k, v in sorted(fb.items()) if k.startswith("guard_env."))
    return "\n".join(lines) + "\n", env_text


def _env_value(v: str) -> str:
    return v.lower() if v in ("True", "False") else v


