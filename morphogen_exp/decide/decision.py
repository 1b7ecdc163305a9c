"""The decision: typed rules, one verdict per configuration, the ranking and the configurations' labels.

Rules come from conf/decision/ (validated by `DecisionRules.from_mapping` before the first cell runs,
stored with the sweep as decision.json); `decide` turns the cells of a sweep into verdicts. A metric
with `_lo` / `_hi` columns is an interval and the rules ask it for evidence; one without is a point
estimate (a run recorded without intervals) and keeps the point rules. The report only renders what is decided here."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import pandas as pd
import yaml

from ..config import ConfigError, DecisionConfig
from ..identity import measurement_setting
from ..measure.stats import min_samples_for

# Metrics a sweep may be ranked by, and whether larger is better.
RANKABLE = {"batch_qps": True, "batch_vs_single_speedup": True, "batch_ms_per_batch": False,
            "batch_ms_p90": False}
GO, NO_GO, UNDECIDED = "GO", "NO-GO", "INCONCLUSIVE"
@dataclass(frozen=True)
class DecisionRules:
    """The rules a decision applies; defaults are the config schema's (config.DecisionConfig), declared once there."""

    require_parity: bool = DecisionConfig.require_parity
    min_speedup: float = DecisionConfig.min_speedup
    speedup_from_q: int = DecisionConfig.speedup_from_q
    latency_budget_ms: float | None = DecisionConfig.latency_budget_ms
    rank_by: str = DecisionConfig.rank_by
    tie_within: float = DecisionConfig.tie_within  # point estimates only: GO configurations within this fraction of the best are tied...
    prefer: tuple[str, ...] = ()    # ...(intervals: overlapping ones are) and a tie ships the strategy listed first here

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> DecisionRules:
        """Rules from an older sweep run's `decision.*` MLflow params (strings), validated strictly."""
        return cls.from_mapping(mapping_from_params(params))

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> DecisionRules:
        """Validate conf/decision (a plain mapping) into rules; a bad value is a one-line ConfigError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(m) - known)
        if unknown:
            raise ConfigError(f"unknown decision setting(s) {unknown}; valid: {sorted(known)}")
        default = cls()  # a setting the mapping leaves out keeps the rules' own default (declared once, above)

        def boolean(name: str) -> bool:
            v = m.get(name, getattr(default, name))
            if not isinstance(v, bool):
                raise ConfigError(f"decision.{name} must be true or false, got {v!r}")
            return v

        def number(name: str, lo: float = 0.0, optional: bool = False) -> Any:
            v = m.get(name, getattr(default, name))
            if v is None and optional:
                return None
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < lo:  # NaN passes `<`
                raise ConfigError(f"decision.{name} must be a number >= {lo:g}{' or null' if optional else ''}, got {v!r}")
            return v

        rank_by = m.get("rank_by", default.rank_by)
        if rank_by not in RANKABLE:
            raise ConfigError(f"decision.rank_by={rank_by!r} is not a metric to rank by; valid: {', '.join(RANKABLE)}")
        prefer = m.get("prefer") or default.prefer
        if isinstance(prefer, str) or not all(isinstance(p, str) for p in prefer):
            raise ConfigError(f"decision.prefer must be a list of strategy names, got {prefer!r}")
        from_q = m.get("speedup_from_q", default.speedup_from_q)
        if isinstance(from_q, bool) or not isinstance(from_q, int) or from_q < 1:
            raise ConfigError(f"decision.speedup_from_q must be an integer >= 1, got {from_q!r}")
        tie = number("tie_within")
        if tie >= 1:
            raise ConfigError(f"decision.tie_within must be a fraction below 1 (0.02 = 2%), got {tie!r}")
        return cls(
            require_parity=boolean("require_parity"),
            min_speedup=float(number("min_speedup")),
            speedup_from_q=from_q,
            latency_budget_ms=number("latency_budget_ms", optional=True),
            rank_by=rank_by,
            tie_within=float(tie),
            prefer=tuple(prefer),
        )

    def overridden(self, assignments: Iterable[str]) -> DecisionRules:
        """These rules with `name=value` assignments applied (values in YAML), validated again."""
        m: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        m["prefer"] = list(self.prefer)
        return DecisionRules.from_mapping(with_assignments(m, assignments))


def mapping_from_params(params: Mapping[str, str]) -> dict[str, Any]:
    """The raw rules mapping from `decision.*` MLflow params (older sweep runs have no decision.json)."""
    raw = {k[len("decision."):]: parse_value(v) for k, v in params.items() if k.startswith("decision.")}
    if isinstance(raw.get("prefer"), str):  # "a,b" as a comma-separated string
        raw["prefer"] = [n.strip() for n in raw["prefer"].split(",") if n.strip()]
    return raw


def with_assignments(raw: Mapping[str, Any], assignments: Iterable[str]) -> dict[str, Any]:
    """`raw` with `NAME=VALUE` assignments (the report's --rule) applied; validate with from_mapping."""
    out = dict(raw)
    for a in assignments:
        name, sep, value = a.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--rule {a!r} must be NAME=VALUE, e.g. --rule rank_by=batch_ms_per_batch")
        out[name.strip()] = parse_value(value)
    return out


def parse_value(value: Any) -> Any:
    """A value as MLflow or a command line stores it ("True", "None", "[a, b]", "0.02") -> typed."""
    if not isinstance(value, str):
        return value
    if value in ("None", "null", "~"):
        return None
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


# --------------------------------------------------------------------------- estimates

@dataclass(frozen=True)
class Estimate:
    """A value with its confidence interval, or a point estimate (lo = hi = None)."""

    value: float
    lo: float | None = None
    hi: float | None = None

    @property
    def interval(self) -> bool:
        return self.lo is not None and self.hi is not None

    def overlaps(self, other: Estimate) -> bool:
        assert self.interval and other.interval
        return bool(self.lo <= other.hi and other.lo <= self.hi)  # type: ignore[operator]

    def format(self, spec: str = ".4g") -> str:
        if math.isnan(self.value):
            return "—"
        text = format(self.value, spec)
        return f"{text} [{format(self.lo, spec)}, {format(self.hi, spec)}]" if self.interval else text


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def estimate(row: Mapping[str, Any], col: str) -> Estimate | None:
    """The metric `col` of one cell with its `_lo` / `_hi` bounds where recorded; None if absent."""
    v = _num(row.get(col))
    if v is None:
        return None
    lo, hi = _num(row.get(f"{col}_lo")), _num(row.get(f"{col}_hi"))
    return Estimate(v, lo, hi) if lo is not None and hi is not None else Estimate(v)


# --------------------------------------------------------------------------- verdicts

@dataclass
class Verdict:
    config: str                 # the configuration's label
    strategy: str
    failures: list[str] = field(default_factory=list)   # rules that do not hold: NO-GO
    undecided: list[str] = field(default_factory=list)  # rules the intervals cannot decide yet
    notes: list[str] = field(default_factory=list)      # said, but decide nothing
    score: Estimate | None = None

    @property
    def status(self) -> str:
        return NO_GO if self.failures else UNDECIDED if self.undecided else GO

    @property
    def go(self) -> bool:
        return self.status == GO

    @property
    def reasons(self) -> list[str]:
        return self.failures + self.undecided


@dataclass
class Decision:
    verdicts: dict[str, Verdict]    # by configuration label
    selected: str | None            # a label
    fallback: str | None
    rank_q: int
    rank_by: str
    intervals: bool                 # every ok cell carried intervals (else: point estimates, the point rules)
    tie_note: str = ""
    devices_note: str = ""          # the ok cells ran on several device kinds or several cards, in words
    refusal: str = ""               # why no decision can be made (several device kinds, data or settings varied)
    finals_note: str = ""           # what the head-to-head finals confirmed or overturned
    dry_run: str = ""               # set by the report when every cell ran on the CPU: said in the headline and summary

    @property
    def devices_mixed(self) -> bool:
        """No decision and no guard (the name predates the other refusals: varied data or settings)."""
        return bool(self.refusal)

    @property
    def outcome(self) -> str:
        """GO (something ships), NO-GO (every configuration breaks a rule), INCONCLUSIVE (none proven yet),
        or NO DECISION (the cells cannot be compared)."""
        if self.refusal:
            return "NO DECISION"
        if self.selected:
            return GO
        return UNDECIDED if any(v.status == UNDECIDED for v in self.verdicts.values()) else NO_GO

    def headline(self) -> str:
        """The decision in one line (the sweep's last line, the report's bold line)."""
        return self._headline() + (f" ({self.dry_run})" if self.dry_run else "")

    def _headline(self) -> str:
        outcome = self.outcome
        if outcome == GO:
            return f"GO {self.selected}, fallback {self.fallback or 'the single-query loop'}"
        if outcome == "NO DECISION":
            return f"NO DECISION: {self.refusal}"
        if outcome == UNDECIDED:
            return "INCONCLUSIVE: no configuration is proven yet; keep the single-query loop (see the reasons)"
        return "NO-GO: every configuration breaks a rule; keep the single-query loop"

    def summary(self) -> str:
        """One paragraph: what ships, why, and what could not be decided (the sweep run's description)."""
        counts = {s: sum(v.status == s for v in self.verdicts.values()) for s in (GO, NO_GO, UNDECIDED)}
        if self.selected:
            score = self.verdicts[self.selected].score
            head = (f"Ship {self.selected} ({self.rank_by} {score.format() if score else '?'} at q={self.rank_q}); "
                    f"fallback: {self.fallback or 'the single-query loop'}.")
        elif self.refusal:
            head = f"No decision: {self.refusal}."
        elif self.outcome == UNDECIDED:
            head = "INCONCLUSIVE: no configuration is proven yet: keep the single-query loop."
        else:
            head = "No configuration is GO: keep the single-query loop."
        parts = [head, *([self.dry_run[0].upper() + self.dry_run[1:] + "."] if self.dry_run else []),
                 f"{counts[GO]} GO, {counts[NO_GO]} NO-GO, {counts[UNDECIDED]} INCONCLUSIVE."]
        if counts[UNDECIDED]:
            parts.append("Inconclusive: " + "; ".join(
                f"{v.config}: {v.undecided[0]}" for v in self.verdicts.values() if v.status == UNDECIDED) + ".")
        if self.tie_note:
            parts.append(self.tie_note + ".")
        if self.finals_note:
            parts.append(self.finals_note + ".")
        if self.devices_note and not self.refusal:  # two cards of one kind: said whatever the outcome
            parts.append(self.devices_note + ".")
        parts.append("Intervals used." if self.intervals else "Intervals were not available: point estimates, fixed rules.")
        return " ".join(parts)


def devices_note(ok: pd.DataFrame) -> tuple[str, bool]:
    """(what the ok cells' devices say, whether it forbids a decision): timings compare only within one device
    kind, and are only as alike as the cards when a sweep was resumed on another machine of the same kind."""
    def distinct(col: str) -> list[str]:
        return sorted(ok[col].dropna().astype(str).unique()) if col in ok.columns else []

    kinds, cards = distinct("device_kind"), distinct("device_uuid")
    if len(kinds) > 1:
        return (f"the cells ran on {len(kinds)} device kinds ({', '.join(kinds)}), and timings compare only within one: "
                "re-run the sweep on one kind of device"), True
    if len(cards) > 1:
        return (f"The cells ran on {len(cards)} cards of that kind ({', '.join(c[-8:] for c in cards)}): the ranking "
                "holds only as far as the cards read alike; re-run on one machine to be sure"), False
    return "", False


def context_note(df: pd.DataFrame) -> str:
    """What the cells vary besides configurations (dataset, seed, bench or parity settings), in words; empty
    when nothing does. Configurations compare only on one dataset measured one way."""
    if "_params" not in df.columns:
        return ""
    values: dict[str, set[str]] = {}
    for params in df["_params"]:
        for k, v in (params or {}).items():
            if measurement_setting(k):
                values.setdefault(k, set()).add(str(v))
    if "dataset_fingerprint" in df.columns:
        values["dataset contents"] = {str(v)[:12] for v in df["dataset_fingerprint"].dropna()}
    varied = {k: sorted(v) for k, v in values.items() if len(v) > 1 and not (k == "dataset.name" and "dataset.num_pages" in values)}
    if not varied:
        return ""
    what = "; ".join(f"{k} ({', '.join(v[:4])}{', ...' if len(v) > 4 else ''})" for k, v in sorted(varied.items()))
    return (f"the cells differ in {what}: a decision ranks configurations on one dataset measured one way; "
            "sweep each of those values on its own")


def decide(df: pd.DataFrame, rules: DecisionRules, finals: Iterable[Final] = ()) -> Decision:
    """Verdicts for every configuration (column `config`, else `our_strategy`) and the one to ship.
    `finals`: the head-to-head rounds run after the sweep; at the ranking q they confirm the selection or
    overturn it in favour of a GO configuration that beat it beyond noise."""
    if "config" not in df.columns:
        df = df.assign(config=df["our_strategy"])
    all_q = sorted(int(q) for q in df["q"].unique())
    rank_q = max(all_q)
    ok = df[df["status"] == "ok"]
    intervals = bool(len(ok)) and all(estimate(r, "batch_vs_single_speedup") is not None
                                      and estimate(r, "batch_vs_single_speedup").interval  # type: ignore[union-attr]
                                      for r in ok.to_dict("records"))
    verdicts: dict[str, Verdict] = {}
    for label, g in df.groupby("config", sort=True):
        rows = g.to_dict("records")
        v = Verdict(str(label), str(rows[0]["our_strategy"]))
        missing = sorted(set(all_q) - {int(r["q"]) for r in rows})
        if missing:
            v.failures.append(f"coverage: no cell at q={missing}")
        for row in sorted(rows, key=lambda r: int(r["q"])):
            _judge_cell(row, rules, v, superiority=int(row["q"]) == rank_q and rank_q >= rules.speedup_from_q)
        at = [r for r in rows if int(r["q"]) == rank_q and r["status"] == "ok"]
        v.score = estimate(at[0], rules.rank_by) if at else None
        if v.go and v.score is None:
            v.failures.append(f"no {rules.rank_by} at q={rank_q} to rank by")
        verdicts[v.config] = v
    ranked, tie_note = _rank([v for v in verdicts.values() if v.go], rules)
    note, mixed = devices_note(ok)
    refusal = note if mixed else context_note(df)
    if not len(ok):  # every cell failed before measuring (a lock folder, a driver, memory): no evidence, no guard
        counts = ", ".join(f"{n} {s}" for s, n in sorted(df["status"].value_counts().items()))
        refusal = f"no cell was measured ({counts}): nothing to decide on; fix what the cells' errors say and re-run"
    if refusal:
        ranked, tie_note = [], ""
    ranked, finals_note = _apply_finals(ranked, list(finals), rank_q, verdicts, rules)
    return Decision(verdicts, ranked[0].config if ranked else None, ranked[1].config if len(ranked) > 1 else None,
                    rank_q, rules.rank_by, intervals, tie_note, "" if mixed else note, refusal, finals_note)


@dataclass(frozen=True)
class Final:
    """One head-to-head result: at q, the challenger against the incumbent (the configuration the sweep
    ships), timed in the same rounds: ratio = incumbent's batch time / challenger's (> 1: the challenger is
    faster), with its interval, from `rounds` rounds."""

    q: int
    incumbent: str
    challenger: str
    ratio: float
    lo: float
    hi: float
    rounds: int

    @property
    def verdict(self) -> str:
        return "faster" if self.lo > 1 else "slower" if self.hi < 1 else "tied"


def _apply_finals(ranked: list[Verdict], finals: list[Final], rank_q: int, verdicts: Mapping[str, Verdict],
                  rules: DecisionRules) -> tuple[list[Verdict], str]:
    """At the ranking q the finals judge, with the sweep's tie margin (equivalence, not bare significance): a
    challenger (GO, or INCONCLUSIVE and tied in the cells) ships instead only when its head-to-head interval
    clears 1 + tie_within; one neither faster nor slower beyond the margin is tied (as overlapping intervals are
    in the cells), and a tie goes to decision.prefer, so a tie ships the same configuration whatever the noise."""
    if not ranked or not finals:
        return ranked, ""
    margin = 1 + rules.tie_within
    at = [f for f in finals if f.q == rank_q and f.incumbent == ranked[0].config]
    judged = [f for f in at if f.challenger in verdicts and verdicts[f.challenger].status in (GO, UNDECIDED)]
    winners = sorted((f for f in judged if f.lo > margin), key=lambda f: -f.ratio)
    order = {name: i for i, name in enumerate(rules.prefer)}
    rank = order.get(ranked[0].strategy, len(order))
    preferred = sorted((f for f in judged if f.hi >= 1 - rules.tie_within  # not slower beyond the margin: a tie
                        and order.get(verdicts[f.challenger].strategy, len(order)) < rank),
                       key=lambda f: order.get(verdicts[f.challenger].strategy, len(order)))
    pick, how = (winners[0], "beat") if winners else (preferred[0], "tied (within the margin) and is preferred to") \
        if preferred else (None, "")
    if pick is not None:
        new_first = verdicts[pick.challenger]
        if not new_first.go:  # INCONCLUSIVE on its cells' intervals: decided head to head against a GO configuration
            new_first.notes += [f"decided in the finals: {r}" for r in new_first.undecided]
            new_first.undecided.clear()
        ranked = [new_first] + [v for v in ranked if v is not new_first]
        return ranked, (f"Finals at q={rank_q} overturned the sweep's ranking: {pick.challenger} {how} {pick.incumbent} head "
                        f"to head, x{pick.ratio:.3f} [{pick.lo:.3f}, {pick.hi:.3f}] over {pick.rounds} rounds "
                        f"(margin x{margin:.3g})")
    if at:
        def said(f: Final) -> str:
            verdict = "faster" if f.lo > margin else "slower" if f.hi < 1 / margin else "tied within the margin"
            return f"{f.challenger} x{f.ratio:.3f} [{f.lo:.3f}, {f.hi:.3f}] ({verdict})"
        return ranked, f"Finals at q={rank_q} confirmed {ranked[0].config} head to head against {', '.join(map(said, at))}"
    return ranked, f"Finals at q={rank_q}: nothing tied {ranked[0].config}; re-measured alone"


def _rounds(row: Mapping[str, Any]) -> int | None:
    """How many samples the cell's speedup interval rests on: its rounds (paired), else its fewer path's samples."""
    n = _num(row.get("speedup_pairs"))
    if n is None:
        counts = [c for c in (_num(row.get("single_samples")), _num(row.get("batch_samples"))) if c is not None]
        n = min(counts) if counts else None
    return None if n is None else int(n)


def _judge_cell(row: Mapping[str, Any], rules: DecisionRules, v: Verdict, superiority: bool = False) -> None:
    """One cell against the rules. The speedup over the single-query loop must be non-inferior at every q >=
    speedup_from_q (its interval's low end at least min_speedup x (1 - tie_within): a true tie with the loop
    passes) and, at the ranking q (`superiority`), better (low end above min_speedup). An interval resting on
    fewer samples than its confidence needs decides nothing."""
    q, status = int(row["q"]), row["status"]
    err = row.get("error_message") or ""
    if status == "does_not_fit":
        v.failures.append(f"does not fit at q={q} ({err})")
        return
    if status != "ok":
        v.failures.append(f"cell {status} at q={q}" + (f" ({err})" if err else ""))
        return
    if rules.require_parity and _num(row.get("parity_ok")) != 1:
        v.failures.append(f"require_parity: mismatch at q={q}")
    confidence = _num(row.get("confidence")) or 0.95
    n, need = _rounds(row), min_samples_for(confidence)
    if n is not None and n < need:
        v.undecided.append(f"q={q}: {n} samples cannot give a {confidence:.0%} interval (it needs {need}); "
                           "raise bench.iterations or bench.max_time_s")
    sp = estimate(row, "batch_vs_single_speedup")
    if q >= rules.speedup_from_q and sp is not None:
        margin = rules.min_speedup * (1 - rules.tie_within)
        _against(sp, margin, True, f"min_speedup: x{sp.format('.2f')} below x{rules.min_speedup:g} "
                 f"(non-inferiority margin {rules.tie_within:.0%}: x{margin:.3g}) at q={q}", v, inclusive=True)
        if superiority:
            _against(sp, rules.min_speedup, True, f"better than the loop at q={q} (the ranking q): x{sp.format('.2f')} "
                     f"vs x{rules.min_speedup:g}", v)
    lat = estimate(row, "batch_ms_per_batch")
    if rules.latency_budget_ms is not None and lat is not None:
        _against(lat, rules.latency_budget_ms, False,
                 f"latency_budget_ms: {lat.format('.1f')} ms vs {rules.latency_budget_ms:g} ms at q={q}", v)
    max_noise = _num(row.get("max_noise"))
    for p in ("single", "batch"):
        noise = _num(row.get(f"{p}_noise"))
        if _num(row.get(f"{p}_capped")) == 1 and noise is not None and max_noise is not None and noise > max_noise:
            v.notes.append(f"q={q}: the {p} path hit the time cap at noise {noise:.1%} > bench.max_noise {max_noise:.1%}"
                           f" ({int(_num(row.get(f'{p}_samples')) or 0)} samples)")


def _against(e: Estimate, threshold: float, above: bool, what: str, v: Verdict, inclusive: bool = False) -> None:
    """A rule `e > threshold` (above; `e >= threshold` when inclusive) or `e <= threshold`: held, broken, or
    (interval across it) undecided."""
    if not e.interval:
        if (e.value < threshold) if above else (e.value > threshold):
            v.failures.append(what)
        return
    lo, hi = e.lo, e.hi
    assert lo is not None and hi is not None
    holds = (lo >= threshold if inclusive else lo > threshold) if above else hi <= threshold
    broken = (hi < threshold if inclusive else hi <= threshold) if above else lo > threshold
    if broken:
        v.failures.append(what)
    elif not holds:
        v.undecided.append(f"{what}: the interval straddles it; more rounds (bench.max_time_s) can decide it")


def tied(best: Estimate, s: Estimate, rules: DecisionRules) -> bool:
    """A tie with the best: overlapping intervals, or medians within decision.tie_within of each other (an
    equivalence margin, as criterion's noise threshold: two narrow intervals 1% apart are one speed, whichever
    process measured them, not a ranking that flips between runs)."""
    if best.interval and s.interval and best.overlaps(s):
        return True
    return rules.tie_within > 0 and abs(s.value - best.value) <= abs(best.value) * rules.tie_within


@dataclass(frozen=True)
class BestAtQ:
    """The best configuration at one q by the ranking metric, and those whose estimates tie with it."""

    q: int
    config: str
    score: Estimate
    tied: tuple[str, ...]


def best_per_q(df: pd.DataFrame, rules: DecisionRules) -> list[BestAtQ]:
    """For every q, the cell that ranks first on ``rules.rank_by`` among the ok cells (with exact parity when
    the rules require it), and the configurations tied with it. The decision ships one configuration for all
    q; this says where another one is faster (an engine that wins small batches, another large ones)."""
    sign = -1.0 if RANKABLE[rules.rank_by] else 1.0
    out = []
    ok = df[df["status"] == "ok"]
    if rules.require_parity:
        ok = ok[ok["parity_ok"].map(_num) == 1]
    for q, g in ok.groupby("q"):
        scored = [(r["config"], e) for r in g.to_dict("records") if (e := estimate(r, rules.rank_by)) is not None]
        if not scored:
            continue
        scored.sort(key=lambda ce: sign * ce[1].value)
        (config, best), rest = scored[0], scored[1:]
        out.append(BestAtQ(int(q), config, best, tuple(c for c, e in rest if tied(best, e, rules))))
    return out


def _rank(go: list[Verdict], rules: DecisionRules) -> tuple[list[Verdict], str]:
    """GO configurations, one place at a time: each place goes to the first in decision.prefer among those tied
    with the best of the rest (so a fallback among tied configurations does not flip with the noise either)."""
    sign = -1.0 if RANKABLE[rules.rank_by] else 1.0
    rest = sorted(go, key=lambda v: sign * v.score.value)  # type: ignore[union-attr]
    order = {name: i for i, name in enumerate(rules.prefer)}
    ranked: list[Verdict] = []
    note = ""
    while rest:
        best = rest[0].score
        assert best is not None
        group = [v for v in rest if v is rest[0] or tied(best, v.score, rules)]  # type: ignore[arg-type]
        group = sorted(group, key=lambda v: order.get(v.strategy, len(order)))  # stable: score order within
        if len(group) > 1 and not ranked:
            if not all(v.score.interval for v in group):  # type: ignore[union-attr]
                how = f"within {rules.tie_within:.0%} (point estimates)"
            elif all(group[0].score.overlaps(v.score) for v in group):  # type: ignore[union-attr,arg-type]
                how = "their intervals overlap"
            else:
                how = f"their intervals overlap or their medians are within {rules.tie_within:.0%}"
            note = (f"{', '.join(v.config for v in group)} are tied on {rules.rank_by} "
                    f"({', '.join(v.score.format() for v in group)}; {how}): ordered by decision.prefer")  # type: ignore[union-attr]
        ranked.append(group[0])
        rest.remove(group[0])
    return ranked, note
