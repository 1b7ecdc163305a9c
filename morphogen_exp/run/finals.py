"""Finals: after the sweep's cells, the configuration it would ship meets whatever ties it, head to head.

Cells of a sweep are timed minutes apart, so two configurations whose intervals overlap were never
compared under the same conditions. Per q, the finalists are the selected configuration (the incumbent)
and each GO configuration whose ranking estimate at that q overlaps or beats it, and each INCONCLUSIVE one
that overlaps it (a wide interval next to a bursty neighbour is judged head to head; at most MAX_FINALISTS,
on the incumbent's engine and placement: one database layout is resident at a time). Their batch paths
run in rounds in this process (`timing.measure_interleaved`), their answers are compared bit for bit, and
each q is logged as a run of role "final" under the sweep's parent run (`finals.json`). The report reads
them back (`tracking.read_finals` -> `decision.decide(..., finals)`); a rebuild never re-measures.

The incumbent is re-measured at every q even alone: its time against its own sweep cell is the drift
between the start and the end of the sweep, reported beside the decision.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..config import first_line
from ..decide.decision import GO, RANKABLE, UNDECIDED, Decision, DecisionRules, decide, estimate, tied
from ..fields import FINAL_ROLE, NOTE_TAG, PARENT_TAG, ROLE_TAG
from ..measure.stats import blocked_median_ci
from ..record.tracking import Tracker, cells_frame, load_rules, shielded
from . import cell as app
from .session import Session

log = logging.getLogger(__name__)
ROLE = FINAL_ROLE
MAX_FINALISTS = 4


@dataclass
class FinalRecord:
    """What one q's final measured (finals.json): the incumbent re-measured, each challenger's ratio."""

    q: int
    incumbent: str                               # config_id
    incumbent_ms: tuple[float, float, float]     # median, lo, hi of its batch time in the final
    cell_ms: tuple[float, float, float] | None   # the same from its sweep cell (the drift's reference)
    rounds: int
    challengers: list[dict[str, Any]] = field(default_factory=list)  # config_id, ratio, lo, hi (incumbent / challenger)
    skipped: list[str] = field(default_factory=list)                 # finalists not run head to head, and why


def plan(df: pd.DataFrame, decision: Decision, rules: DecisionRules) -> dict[int, list[str]]:
    """q -> the configuration labels that meet in that q's final, the incumbent first; {} when nothing ships."""
    if not decision.selected:
        return {}
    higher = RANKABLE[rules.rank_by]
    ok = df[df["status"] == "ok"]
    out: dict[int, list[str]] = {}
    for q, g in ok.groupby("q"):
        rows = {r["config"]: r for r in g.to_dict("records")}
        if decision.selected not in rows:
            continue
        inc = estimate(rows[decision.selected], rules.rank_by)
        contenders = []
        for label, row in rows.items():
            e = estimate(row, rules.rank_by)
            v = decision.verdicts.get(label)
            if label == decision.selected or e is None or inc is None or v is None or v.status not in (GO, UNDECIDED):
                continue
            if tied(inc, e, rules) or (v.go and (e.value > inc.value if higher else e.value < inc.value)):  # INCONCLUSIVE: tied
                contenders.append((label, e.value))
        contenders.sort(key=lambda c: -c[1] if higher else c[1])
        out[int(q)] = [decision.selected] + [c for c, _ in contenders[: MAX_FINALISTS - 1]]
    return out


def run(tracker: Tracker, parent_id: str, session: Session) -> list[FinalRecord]:
    """Plan and run the finals of one sweep, each q logged as a final run under `parent_id`. A final that
    cannot run (a setting, the memory) is logged FAILED and skipped; the decision then stands on the cells."""
    runs = tracker.children(parent_id)
    df = cells_frame(runs)
    if df.empty:
        return []
    parent = tracker.client.get_run(parent_id)
    rules = load_rules(tracker.client, parent)
    decision = decide(df, rules)
    schedule = plan(df, decision, rules)
    records = []
    for q, labels in sorted(schedule.items()):
        rows = [df[(df["config"] == label) & (df["q"] == q)].iloc[0] for label in labels]
        run_id = tracker.start_run(f"final-q{q}", {ROLE_TAG: ROLE, PARENT_TAG: parent.data.tags.get(PARENT_TAG, ""),
                                                   "q": q, "incumbent": rows[0]["config_id"],
                                                   NOTE_TAG: f"final at q={q}: {', '.join(labels)} timed head to head "
                                                             "(running)"}, parent_id)
        try:
            rec = _final(q, rows, session)
            tracker.log(run_id, metrics={"rounds": rec.rounds, "incumbent_ms_p50": rec.incumbent_ms[0],
                                         **({"drift": rec.incumbent_ms[0] / rec.cell_ms[0]} if rec.cell_ms else {}),
                                         **{f"ratio.{c['config_id']}": c["ratio"] for c in rec.challengers}})
            tracker.log_text(run_id, json.dumps(asdict(rec), indent=1), "finals.json")
        except KeyboardInterrupt:
            with shielded():
                tracker.end(run_id, "KILLED")
            raise
        except Exception as err:
            msg = first_line(err)
            log.warning("final at q=%d not run: %s: %s", q, type(err).__name__, msg)
            tracker.log(run_id, tags={"error_message": f"{type(err).__name__}: {msg}"})
            tracker.end(run_id, "FAILED")
            continue
        label_of = {str(r["config_id"]): str(r["config"]) for r in rows}  # every challenger is one of these rows
        said = ", ".join(f"{label_of[c['config_id']]} x{c['ratio']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}]" for c in rec.challengers)
        tracker.log(run_id, tags={NOTE_TAG: final_description(rec, labels[0], said)})
        tracker.end(run_id, "FINISHED")
        records.append(rec)
        log.info("final q=%d: %s %.3f ms over %d rounds%s", q, labels[0], rec.incumbent_ms[0], rec.rounds,
                 f"; against it {said}" if said else "")
    return records


def final_description(rec: FinalRecord, incumbent: str, challengers: str) -> str:
    """A final run's description (the MLflow UI's): the incumbent's time with its interval, its drift from its cell,
    and each challenger's ratio (incumbent ms / challenger ms: above 1 the challenger is faster)."""
    med, lo, hi = rec.incumbent_ms
    drift = f", {med / rec.cell_ms[0] - 1:+.1%} from its cell" if rec.cell_ms else ""
    against = f"; against it (incumbent / challenger) {challengers}" if challengers else "; no challenger tied it"
    return (f"final at q={rec.q}: {incumbent} {med:.4g} [{lo:.4g}, {hi:.4g}] ms over {rec.rounds} rounds{drift}{against}"
            + (f"; not run: {'; '.join(rec.skipped)}" if rec.skipped else ""))


def _final(q: int, rows: list[pd.Series], session: Session) -> FinalRecord:
    """Time the finalists' batch paths in rounds and check their answers are the incumbent's, bit for bit."""
    rcs = [app.config_from_params(r["_params"]) for r in rows]
    home = (rcs[0].engine.name, rcs[0].placement.name)
    skipped = [f"{r['config']}: runs on engine={rc.engine.name}, placement={rc.placement.name}; the final holds "
               f"{home[0]}/{home[1]}'s database" for r, rc in zip(rows, rcs, strict=True) if (rc.engine.name, rc.placement.name) != home]
    keep = [(r, rc) for r, rc in zip(rows, rcs, strict=True) if (rc.engine.name, rc.placement.name) == home]
    preps = [app.prepare(rc, session) for _, rc in keep]
    timed = app.head_to_head([p.batch for p in preps], [str(r['config']) for r, _ in keep], rcs[0].bench)
    inc = timed.paths[0]
    conf = rcs[0].bench.confidence
    challengers = []
    for (r, _), ratios in zip(keep[1:], timed.ratios, strict=True):
        lo, hi = blocked_median_ci(ratios, conf)
        challengers.append({"config_id": str(r["config_id"]), "ratio": float(np.median(ratios)), "lo": lo, "hi": hi})
    cell = estimate(rows[0], "batch_ms_per_batch")
    cell_ms = (cell.value, cell.lo, cell.hi) if cell is not None and cell.interval else None
    return FinalRecord(q, str(rows[0]["config_id"]), (inc.p50_ms, inc.p50_lo_ms, inc.p50_hi_ms), cell_ms,  # type: ignore[arg-type]
                       timed.rounds, challengers, skipped)
