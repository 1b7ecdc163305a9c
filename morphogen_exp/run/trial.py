"""Rollout trials: a guard's configuration on this machine, checked against what its sweep measured.

`python -m morphogen_exp +rollout=NAME [q=N] [overrides]` (a single run, no -m) names the guard and its sweep, then
times the guard's configuration and its fallback (the single-query loop when the sweep kept none, or when the
fallback runs on other engine or placement settings) head to head in rounds (`app.head_to_head`), at every q the
sweep measured the guard at (`q=N`: that one), on the sweep's dataset, seed, bench and parity settings unless the
command line sets them. Per q:
- the guard's batch time against its sweep cell's (median and interval of batch_ms_per_batch): HOLDS (the trial's
  median inside the cell's interval, or within tie_within of its median), REGRESSED (the trial's interval wholly
  above the cell's hi x (1 + tie_within)), IMPROVED (wholly below its lo x (1 - tie_within)), else INCONCLUSIVE;
- the guard against its fallback in the same rounds (fallback / guard, paired; > 1: the guard is faster): better
  (interval above 1), tied (low end at least 1 - tie_within), worse (wholly below 1 - tie_within), or undecided.
  A guard slower than its fallback beyond noise and margin is REGRESSED, unless its sweep's cells said so too.
On another device kind, dataset (contents) or engine / placement settings than the sweep's, or at a q the sweep did
not measure, the sweep's numbers are not promises: the trial says so before any number and judges on the fallback
comparison alone (better or tied: HOLDS, worse: REGRESSED, undecided: INCONCLUSIVE). The margin tie_within is the
sweep's (its decision.json) unless the command line sets decision.tie_within.

A trial is one MLflow run (role "trial") under its sweep's run, in the sweep's store (`mlflow.tracking_uri=` names
another address for it): tags link the guard, the sweep run and the cells it was held to. It is never a cell: a
report and `resume=true` read cells only. Its last line is the verdict; exit status 0 HOLDS or IMPROVED, 1
REGRESSED (or the trial failed: answers that differ, does not fit), 3 INCONCLUSIVE, 2 a setting to fix.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ..config import ConfigError, MlflowConfig, RunConfig, first_line, flatten
from ..decide import rollout
from ..decide.decision import Estimate, estimate
from ..fields import NOTE_TAG, PARENT_TAG, ROLE_TAG
from ..identity import measurement_setting
from ..measure import devlock, devstate
from ..measure import placement as placements
from ..measure.stats import paired_ratio_ci
from ..measure.timing import TimingSummary
from ..record.tracking import Tracker, cells_frame, code_difference, load_rules, open_store, shielded, sqlite_path
from . import cell as app
from .session import Session

log = logging.getLogger(__name__)
ROLE = "trial"
HOLDS, REGRESSED, IMPROVED, INCONCLUSIVE = "HOLDS", "REGRESSED", "IMPROVED", "INCONCLUSIVE"
BETTER, TIED, WORSE, UNDECIDED = "better", "tied", "worse", "undecided"
EXIT = {HOLDS: 0, IMPROVED: 0, REGRESSED: 1, INCONCLUSIVE: 3}
_WORST_FIRST = (REGRESSED, INCONCLUSIVE, IMPROVED, HOLDS)  # the verdict line's order: its first word is the trial's
_SETTINGS = ("engine.", "placement.")  # the guard's settings besides its strategy: other ones are not its promise
LOOP = "the single-query loop"


# --------------------------------------------------------------------------- the command line

def _key(arg: str) -> str:
    return arg.partition("=")[0].lstrip("+~")


def guard_of(argv: Sequence[str]) -> str | None:
    """The guard a command line trials: one `+rollout=NAME` in a single run (a multirun over guards is a sweep)."""
    if {"-m", "--multirun"} & set(argv):
        return None
    names = rollout.requested(list(argv))
    return names[0] if len(names) == 1 else None


def preflight(argv: Sequence[str]) -> None:
    """Before Hydra composes a trial: the guard's record exists and matches it, it ships a configuration, and the
    command line keeps its strategy (ConfigError, one line)."""
    name = guard_of(argv)
    if name is None:
        return
    meta = rollout.read_meta(name)
    if meta.config_id is None:
        raise ConfigError(f"guard {name!r} ships no configuration (its sweep {meta.sweep_dir} found none GO: it serves one "
                          "query at a time), so there is no promise to trial")
    changed = [a for a in argv if "=" in a and (_key(a) == "strategy" or _key(a).startswith("strategy."))]
    if changed:
        label = f" ({meta.selected})" if meta.selected != meta.strategy else ""
        raise ConfigError(f"+rollout={name} trials the guard's own configuration, strategy {meta.strategy}{label}; "
                          f"{' '.join(changed)} would change it: drop it, or time another configuration as a plain cell "
                          "(without +rollout)")


def _given(overrides: Sequence[str]) -> set[str]:
    """The keys the command line sets (a group's name stands for all its keys)."""
    return {_key(a) for a in overrides if "=" in a and _key(a) != rollout.GROUP}


def _set_by(key: str, given: set[str]) -> bool:
    return any(key == g or key.startswith(g + ".") for g in given)


# --------------------------------------------------------------------------- the verdicts (pure)

@dataclass(frozen=True)
class Judgement:
    """One q of a trial: its verdict, the two comparisons behind it and what the verdict line says of it."""

    q: int
    verdict: str                 # HOLDS | REGRESSED | IMPROVED | INCONCLUSIVE
    promise: str | None          # the guard against its sweep cell; None: no comparable cell here
    against_fallback: str        # better | tied | worse | undecided
    why: str = ""                # said on the verdict line (nothing for HOLDS)


def _bounds(e: Estimate) -> tuple[float, float]:
    return (e.lo, e.hi) if e.lo is not None and e.hi is not None else (e.value, e.value)


def promise_verdict(trial: Estimate, sweep: Estimate, tie_within: float) -> str:
    """The guard's batch time now (`trial`) against its sweep cell's (`sweep`), both in ms with their intervals."""
    lo, hi = _bounds(sweep)
    if lo <= trial.value <= hi or abs(trial.value - sweep.value) <= tie_within * sweep.value:
        return HOLDS
    t_lo, t_hi = _bounds(trial)
    if t_lo > hi * (1 + tie_within):
        return REGRESSED
    if t_hi < lo * (1 - tie_within):
        return IMPROVED
    return INCONCLUSIVE


def fallback_verdict(ratio: Estimate, tie_within: float) -> str:
    """The paired ratio fallback / guard of one trial's rounds (> 1: the guard is faster) with its interval."""
    lo, hi = _bounds(ratio)
    if lo > 1:
        return BETTER
    if lo >= 1 - tie_within:
        return TIED
    if hi < 1 - tie_within:
        return WORSE
    return UNDECIDED


def machine_moved(trial: Estimate, sweep: Estimate, ratio: Estimate, fallback_then: Estimate | None,
                  tie_within: float) -> str:
    """Why a guard's time moved with the machine, or '': its fallback moved as much (the paired ratio fallback /
    guard now, with its interval widened by the margin, holds the sweep's ratio fallback / guard)."""
    if fallback_then is None or not sweep.value or not trial.value:
        return ""
    then = fallback_then.value / sweep.value
    lo, hi = _bounds(ratio)
    if not lo * (1 - tie_within) <= then <= hi * (1 + tie_within):
        return ""
    fb_drift = ratio.value * trial.value / fallback_then.value
    return (f"the machine moved: the guard x{trial.value / sweep.value:.2f} and its fallback x{fb_drift:.2f} "
            f"against the sweep (fallback / guard x{ratio.value:.3f} now, x{then:.3f} then)")


def judge(q: int, trial: Estimate, sweep: Estimate | None, ratio: Estimate, tie_within: float, *,
          sweep_saw_fallback_faster: bool = False, fallback: str = LOOP,
          fallback_then: Estimate | None = None) -> Judgement:
    """The verdict at q: the promise (`sweep`: the guard's sweep cell, None where it is no promise) and the fallback
    comparison; a guard slower than its fallback beyond noise and margin regresses unless its sweep saw that too.
    `fallback_then`: the fallback's time in the sweep (its cell, else the guard cell's loop): a guard that moved
    beyond the margin as much as its fallback did HOLDS, the machine moved, not the code."""
    against = fallback_verdict(ratio, tie_within)
    vs = f"{fallback} / guard x{ratio.format('.3f')}"
    if sweep is None:
        verdict = {BETTER: HOLDS, TIED: HOLDS, WORSE: REGRESSED}.get(against, INCONCLUSIVE)
        why = {REGRESSED: f"slower than {vs}", INCONCLUSIVE: f"against {vs}: the interval straddles the margin"}.get(verdict, "")
        return Judgement(q, verdict, None, against, why)
    promise = promise_verdict(trial, sweep, tie_within)
    if promise in (REGRESSED, IMPROVED) and against != WORSE:
        moved = machine_moved(trial, sweep, ratio, fallback_then, tie_within)
        if moved:
            return Judgement(q, HOLDS, HOLDS, against, moved)
    if against == WORSE and not sweep_saw_fallback_faster and promise != REGRESSED:
        return Judgement(q, REGRESSED, promise, against, f"slower than {vs} beyond noise and margin, which its sweep did not see")
    now, then = f"{trial.format('.4g')} ms", f"the sweep's {sweep.format('.4g')} ms"
    why = {REGRESSED: f"x{trial.value / sweep.value:.2f} slower than {then}: {now}",
           IMPROVED: f"x{sweep.value / trial.value:.2f} faster than {then}: {now}",
           INCONCLUSIVE: f"{now} against {then}: apart by more than the margin, not beyond noise; more rounds "
                         "(bench.max_time_s) can decide it",
           HOLDS: ""}[promise]
    return Judgement(q, promise, promise, against, why)


def overall(judgements: Sequence[Judgement]) -> str:
    """The trial's verdict: the worst of its q's (REGRESSED, then INCONCLUSIVE), else IMPROVED if any, else HOLDS."""
    return next(v for v in _WORST_FIRST if any(j.verdict == v for j in judgements))


def verdict_line(judgements: Sequence[Judgement], comparable: bool = True) -> str:
    """The trial's last line: `trial: REGRESSED at q=8 (...); HOLDS at q=1,4`, worst first."""
    groups = []
    for v in _WORST_FIRST:
        js = [j for j in judgements if j.verdict == v]
        if not js:
            continue
        whys = [j.why if len(js) == 1 else f"q={j.q}: {j.why}" for j in js if j.why]
        groups.append(f"{v} at q={','.join(str(j.q) for j in js)}" + (f" ({'; '.join(whys)})" if whys else ""))
    tail = "" if comparable else " — against the fallback only: the sweep's numbers are not promises here"
    return "trial: " + "; ".join(groups) + tail


# --------------------------------------------------------------------------- the plan

@dataclass
class Plan:
    """What a trial runs: per q the guard's configuration and its fallback's (None: the loop), and the sweep cells
    (rows of tracking.cells_frame) it is held to."""

    meta: rollout.GuardMeta
    tie_within: float
    params: Mapping[str, str]                    # the guard's sweep cell's params (its configuration as measured)
    guard: dict[int, RunConfig]
    fallback: dict[int, RunConfig] | None
    fallback_label: str
    cells: dict[int, dict[str, Any]]
    fallback_cells: dict[int, dict[str, Any]]
    notes: list[str]

    @property
    def qs(self) -> list[int]:
        return sorted(self.guard)


def _as_measured(resolved: Mapping[str, Any], params: Mapping[str, str], given: set[str]) -> dict[str, Any]:
    """The trial's config with the sweep's dataset, seed, bench and parity settings where the command line sets none."""
    out = copy.deepcopy(dict(resolved))
    for k, v in params.items():
        if not measurement_setting(k) or _set_by(k, given):
            continue
        *parents, leaf = k.split(".")
        node: Any = out
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:  # a setting this code no longer has: left out
            node[leaf] = rollout.typed(v)
    return out


def _at(config: Mapping[str, Any], q: int) -> RunConfig:
    return app.validate(OmegaConf.create({**copy.deepcopy(dict(config)), "q": q}))


def _as_run(row: Mapping[str, Any]) -> dict[str, str]:
    """A sweep cell's params with the device count it ran on where its placement.devices was null (every device), as
    its guard pins it (rollout.guard_mapping): the trial compares like with like."""
    params = dict(row["_params"])
    used = (row.get("_tags") or {}).get("devices_used")
    if rollout.typed(params.get("placement.devices")) is None and used is not None:
        params["placement.devices"] = str(used)
    return params


def plan(meta: rollout.GuardMeta, base: RunConfig, df: pd.DataFrame, given: set[str], tie_within: float) -> Plan:
    """The trial of `meta`'s guard composed as `base` (the guard plus the command line), against the sweep's cells `df`."""
    ok = df[df["status"] == "ok"] if not df.empty else df
    mine = ok[ok["config_id"] == meta.config_id] if not ok.empty else ok
    if mine.empty:
        raise ConfigError(f"guard {meta.guard!r}: its sweep run {meta.parent_run_id} holds no ok cell of {meta.selected} "
                          f"({meta.config_id}); re-publish the guard from a sweep that does, or pick another guard")
    params = _as_run(mine.iloc[0])
    measured = _as_measured(base.resolved, params, given)
    qs = [base.q] if "q" in given else sorted({int(q) for q in mine["q"]})
    notes = [f"q={q}: the sweep did not measure the guard there, so it is judged against its fallback only"
             for q in qs if q not in set(mine["q"].astype(int))]
    by_q = {int(r["q"]): r for r in mine.to_dict("records")}
    fb_rows = ok[ok["config_id"] == meta.fallback_config_id] if meta.fallback_config_id else ok.iloc[:0]
    fallback, label, fb_cells = None, LOOP, {}
    if meta.fallback and fb_rows.empty:
        notes.append(f"the fallback {meta.fallback} has no ok cell in the sweep: the guard meets {LOOP} instead")
    elif meta.fallback:
        fparams = _as_run(fb_rows.iloc[0])
        other = sorted(k for k in set(params) | set(fparams) if k.startswith(_SETTINGS) and params.get(k) != fparams.get(k))
        if other:
            notes.append(f"the fallback {meta.fallback} runs with other settings ({', '.join(f'{k}={fparams.get(k)}' for k in other)}) "
                         f"and one database layout is resident at a time: the guard meets {LOOP} instead")
        else:
            fb_measured = {**measured, "strategy": rollout.tree(fparams, "strategy.")}
            fallback, label = {q: _at(fb_measured, q) for q in qs}, meta.fallback
            fb_cells = {int(r["q"]): r for r in fb_rows.to_dict("records")}
    return Plan(meta, tie_within, params, {q: _at(measured, q) for q in qs}, fallback, label,
                {q: by_q[q] for q in qs if q in by_q}, {q: fb_cells[q] for q in qs if q in fb_cells}, notes)


def _short(fingerprint: str) -> str:
    return re.sub(r"sha256=([0-9a-f]{12})[0-9a-f]+", r"sha256=\1...", fingerprint)


def differences(p: Plan, here: Mapping[str, str]) -> list[str]:
    """What makes the sweep's numbers no promise on this machine: device kind, dataset contents, engine or placement
    settings (`here`: the trial's identity tags, app.identity_tags)."""
    meta, out = p.meta, []
    if here["device_kind"] != meta.device_kind:
        out.append(f"device kind {here['device_kind']} here, {meta.device_kind} in the sweep")
    if here["dataset.fingerprint"] != meta.dataset_fingerprint:
        out.append(f"dataset {_short(here['dataset.fingerprint'])} here, {_short(meta.dataset_fingerprint)} in the sweep")
    flat = {k: str(v) for k, v in flatten(p.guard[p.qs[0]].resolved).items()}
    changed = [f"{k}={flat[k]} (sweep: {v})" for k, v in sorted(p.params.items()) if k.startswith(_SETTINGS) and k in flat and flat[k] != v]
    if changed:
        out.append("engine / placement settings " + ", ".join(changed))
    return out


def _measurement_notes(p: Plan, here: Mapping[str, str]) -> list[str]:
    """What differs without breaking the promise: the code, the bench settings the command line changed."""
    flat = {k: str(v) for k, v in flatten(p.guard[p.qs[0]].resolved).items()}
    bench = [f"{k}={flat[k]} (sweep: {v})" for k, v in sorted(p.params.items())
             if k.startswith("bench.") and measurement_setting(k) and k in flat and flat[k] != v]
    differs = code_difference(here["code_version"], p.meta.code_version)
    code = [differs] if differs else []
    return code + ([f"measured with {', '.join(bench)}"] if bench else [])


# --------------------------------------------------------------------------- measure and record

@dataclass(frozen=True)
class Measured:
    """One q of a trial, timed: each path's batch time (ms) and the paired ratio fallback / guard."""

    guard_ms: Estimate
    fallback_ms: Estimate
    ratio: Estimate
    rounds: int
    stopped_by: str


def _ms(t: TimingSummary) -> Estimate:
    return Estimate(t.p50_ms, t.p50_lo_ms, t.p50_hi_ms)


def measure(guard: RunConfig, fallback: RunConfig | None, label: str, session: Session) -> Measured:
    """The guard's batch path and its fallback's (None: the guard's single-query loop), head to head in rounds;
    their answers must agree bit for bit."""
    g = app.prepare(guard, session)
    fb = app.prepare(fallback, session).batch if fallback is not None else g.single_loop
    timed = app.head_to_head([fb, g.batch], [label, f"the guard's {guard.strategy.name}"], guard.bench, watch=(1,))
    f_t, g_t = timed.paths
    ratio = paired_ratio_ci(f_t.times_ms, g_t.times_ms, guard.bench.confidence)
    return Measured(_ms(g_t), _ms(f_t), Estimate(*ratio), timed.rounds, timed.stopped_by)


def _sweep_saw_fallback_faster(cell: Mapping[str, Any], fb_cell: Mapping[str, Any] | None) -> bool:
    """Whether the sweep's own cells had the fallback (else the loop) faster than the guard beyond their intervals."""
    g = estimate(cell, "batch_ms_per_batch")
    f = estimate(fb_cell, "batch_ms_per_batch") if fb_cell is not None else estimate(cell, "single_ms_per_batch")
    return g is not None and f is not None and _bounds(f)[1] < _bounds(g)[0]


def _sweep_run(meta: rollout.GuardMeta, base: RunConfig, given: set[str], session: Session) -> tuple[Tracker, Any]:
    """The store that holds the guard's sweep (the record's, or the command line's mlflow.*) and its sweep run."""
    uri = base.mlflow.tracking_uri if _set_by("mlflow.tracking_uri", given) else meta.tracking_uri
    experiment = base.mlflow.experiment if _set_by("mlflow.experiment", given) else meta.experiment
    where = f"pass mlflow.tracking_uri= (and mlflow.experiment=) of the store that holds sweep run {meta.parent_run_id}"
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise ConfigError(f"guard {meta.guard!r}: its sweep's store {uri} is not on this machine; {where}")
    try:
        open_store(uri, experiment)  # read first: a trial never creates a store or an experiment (a typo would)
    except ConfigError:
        raise ConfigError(f"guard {meta.guard!r}: no experiment {experiment!r} in {uri}; {where}") from None
    tracker = session.tracker(MlflowConfig(uri, experiment))
    try:
        parent = tracker.client.get_run(meta.parent_run_id)
    except Exception:
        raise ConfigError(f"guard {meta.guard!r}: no run {meta.parent_run_id} in {uri}; {where}") from None
    if parent.info.experiment_id != tracker.experiment_id or parent.data.tags.get(ROLE_TAG) != "sweep":
        raise ConfigError(f"guard {meta.guard!r}: run {meta.parent_run_id} is not a sweep run of experiment {experiment!r} "
                          f"in {uri}; {where}")
    return tracker, parent


def _say(line: str) -> None:
    print(line, flush=True)


def _q_line(q: int, m: Measured, sweep: Estimate | None, j: Judgement, label: str) -> str:
    held = (f"against the sweep's {sweep.format('.4g')} ms (x{m.guard_ms.value / sweep.value:.3f}): {j.promise}"
            if sweep is not None else "(no promise here)")
    return (f"q={q}: guard {m.guard_ms.format('.4g')} ms {held}; {label} / guard x{m.ratio.format('.3f')} "
            f"({j.against_fallback}), {m.rounds} rounds -> {j.verdict}")


def _metrics(q: int, m: Measured, sweep: Estimate | None) -> dict[str, float]:
    out: dict[str, float] = {f"q{q}.rounds": m.rounds}
    for name, e in (("guard_ms", m.guard_ms), ("fallback_ms", m.fallback_ms), ("fallback_over_guard", m.ratio),
                    *((("sweep_ms", sweep),) if sweep is not None else ())):
        lo, hi = _bounds(e)
        out |= {f"q{q}.{name}": e.value, f"q{q}.{name}_lo": lo, f"q{q}.{name}_hi": hi}
    return out


def run(cfg: DictConfig, session: Session, guard: str, overrides: Sequence[str]) -> int:
    """One trial of `guard` (composed by Hydra as `cfg` from the guard and the command line `overrides`): plan, say
    what it runs and against what, measure each q, record, say the verdict last. Returns the exit status."""
    meta = rollout.read_meta(guard)
    given = _given(overrides)
    base = app.validate(cfg)
    placements.ensure_distributed(base.placement)
    app.enable_compilation_cache(base.bench.compilation_cache_dir)
    tracker, parent = _sweep_run(meta, base, given, session)
    own_margin = [f"tie_within={base.decision['tie_within']}"] if _set_by("decision.tie_within", given) else []
    try:
        rules = load_rules(tracker.client, parent, own_margin)
    except ConfigError:
        raise
    except (ValueError, TypeError, OSError) as err:  # decision.json unreadable or not JSON
        raise ConfigError(f"guard {meta.guard!r}: the decision rules (decision.json) of its sweep run {meta.parent_run_id} "
                          f"cannot be read ({type(err).__name__}: {first_line(err, 200)}); restore the "
                          "file in the sweep's store, or run the sweep again") from None
    p = plan(meta, base, cells_frame(tracker.children(meta.parent_run_id)), given, rules.tie_within)
    here = app.identity_tags(p.guard[p.qs[0]])
    diffs = differences(p, here)
    notes = _measurement_notes(p, here) + p.notes

    _say(f"trial of guard {meta.guard}: {meta.selected} ({meta.config_id}) from sweep {meta.sweep_dir} (run "
         f"{meta.parent_run_id}, code {meta.code_version}, measured on {meta.device_kind}); fallback {p.fallback_label}; "
         f"q={','.join(map(str, p.qs))} on this machine ({here['device_kind']}), margin tie_within={p.tie_within:g}"
         f"{' (the command line)' if own_margin else ' (the sweep)'}")
    if diffs:
        _say(f"NOT COMPARABLE with its sweep: {'; '.join(diffs)}. The sweep's numbers are not promises here: each q is "
             "judged on the guard against its fallback alone")
    for note in notes:
        _say(f"note: {note}")

    rc = p.guard[p.qs[0]]
    tags = {ROLE_TAG: ROLE, PARENT_TAG: meta.sweep_dir, "trial.guard": meta.guard, "trial.sweep_run_id": meta.parent_run_id,
            "trial.guard_config_id": str(meta.config_id), "trial.fallback": p.fallback_label,
            "trial.fallback_config_id": meta.fallback_config_id if p.fallback is not None else "loop",
            "trial.q": ",".join(map(str, p.qs)), "trial.tie_within": p.tie_within, "trial.comparable": str(not diffs).lower(),
            **({"trial.differences": "; ".join(diffs)} if diffs else {}),
            **{f"trial.cell.q{q}": c["run_id"] for q, c in p.cells.items()},
            **{f"trial.fallback_cell.q{q}": c["run_id"] for q, c in p.fallback_cells.items()},
            "strategy": rc.strategy.name, "engine": rc.engine.name, "placement": rc.placement.name, "dataset": rc.dataset.name,
            **{k: v for k, v in here.items() if k != "cell_key"}}
    tags[NOTE_TAG] = (f"rollout trial of guard {meta.guard} ({meta.selected}) against {p.fallback_label} at "
                      f"q={','.join(map(str, p.qs))} (running)")
    run_id = tracker.start_run(f"trial-{meta.guard}", tags, meta.parent_run_id)
    record: dict[str, Any] = {"guard": asdict(meta), "tie_within": p.tie_within, "differences": diffs, "notes": notes, "q": []}
    judgements: list[Judgement] = []
    q = p.qs[0]
    try:
        tracker.log(run_id, params={k: v for k, v in flatten(rc.resolved).items() if k != "q"})
        with devlock.hold(f"trial of {meta.guard}"), devstate.watch_host() as host:
            for q in p.qs:
                m = measure(p.guard[q], p.fallback[q] if p.fallback else None, p.fallback_label, session)
                cell = p.cells.get(q)
                sweep = estimate(cell, "batch_ms_per_batch") if cell is not None and not diffs else None
                fb_cell = p.fallback_cells.get(q)
                then = (estimate(fb_cell, "batch_ms_per_batch") if fb_cell is not None else
                        estimate(cell, "single_ms_per_batch") if cell is not None and p.fallback is None else None)
                j = judge(q, m.guard_ms, sweep, m.ratio, p.tie_within, fallback=p.fallback_label, fallback_then=then,
                          sweep_saw_fallback_faster=cell is not None and _sweep_saw_fallback_faster(cell, fb_cell))
                judgements.append(j)
                tracker.log(run_id, metrics=_metrics(q, m, sweep), tags={f"trial.verdict.q{q}": j.verdict})
                record["q"].append({"q": q, **asdict(m), "sweep_ms": None if sweep is None else asdict(sweep), **asdict(j)})
                _say(_q_line(q, m, sweep, j, p.fallback_label))
    except KeyboardInterrupt:
        with shielded():
            tracker.end(run_id, "KILLED")
        raise
    except Exception as err:
        msg = first_line(err, 500)
        with shielded():
            try:
                tracker.log(run_id, tags={"trial.verdict": "FAILED", "error_class": type(err).__name__, "error_message": msg})
                tracker.log_text(run_id, json.dumps(record, indent=1), "trial.json")
            finally:
                tracker.end(run_id, "FAILED")
        if isinstance(err, ConfigError):  # a value only the compiler can check: a setting to fix
            raise
        _say(f"trial: FAILED at q={q}: {type(err).__name__}: {msg}")
        return 1
    verdict = overall(judgements)
    load = host.moved()  # the verdict names a host whose load moved while it was measured
    line = verdict_line(judgements, comparable=not diffs) + (f" — while it ran {load}" if load else "")
    tracker.log(run_id, tags={"trial.verdict": verdict, NOTE_TAG: line, **({"host.load_moved": load} if load else {})},
                metrics=host.metrics())
    tracker.log_text(run_id, json.dumps(record, indent=1), "trial.json")
    tracker.end(run_id, "FINISHED")
    _say(line)
    return EXIT[verdict]
