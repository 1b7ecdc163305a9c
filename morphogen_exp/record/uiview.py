"""The MLflow UI's saved view of the matrix: one experiment tag that opens the runs page on every cell with its numbers.

MLflow 3.17's experiment page loads a view from the experiment tag `mlflow.sharedViewState.<key>` when its address
carries `viewStateShareKey=<key>` (what its "Share" button writes, and what its saved-views menu lists by name). The
tag holds an envelope `{"name", "createdAt", "updatedAt", "state"}` whose `state` is the page's state as JSON text:
its search facets (filter, sort) and its UI state (columns and their widths, grouping, charts). MLflow leaves the
expanded rows out of a shared view, so the view never relies on expanding the sweep run: it filters on the cells
(`morphogen.role = 'cell'`), which then stand as rows of their own, in one group per strategy and sweep folder, the
fastest cell first. The chart view draws the groups' values (MLflow's "use grouped values in charts"): each charted
metric is logged at step = q, so a line chart over the step is one line per strategy over q, one colour per strategy
(docs/mlflow-charts.png).

Numbers: MLflow's table has no number format a view can set (a metric column prints the logged float as it is, cut
to its width), and what we log is what the decision and `report` read back, so nothing logged is rounded for display
and no rounded copy is logged beside it (a second set of metrics would double the column picker and the charts, and
could disagree with the one the decision read). The view puts the headline numbers first and sizes each number
column to show at least 7 significant digits, more than any interval supports; the rounded reading of a cell
(`146 [145, 147] queries/s`, parity) is its description (the Description column).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from .tracking import PARENT_TAG, ROLE_TAG

KEY = "morphogen-matrix"
TAG_PREFIX = "mlflow.sharedViewState."  # MLflow's EXPERIMENT_PAGE_VIEW_STATE_SHARE_TAG_PREFIX
NAME = "Sweep matrix: every cell's q/s, latency, speedup and parity"
# The table's columns, left to right (then the description): what a cell is, its numbers, then the details.
ORDER = (("tags", "strategy"), ("tags", "q"), ("tags", "verdict"), ("tags", "shipped"),
         ("metrics", "batch_qps"), ("metrics", "batch_vs_single_speedup"),
         ("metrics", "batch_ms_per_batch"), ("metrics", "parity_ok"), ("metrics", "batch_qps_lo"),
         ("metrics", "batch_qps_hi"), ("tags", "engine"), ("tags", "cell_status"), ("metrics", "parity_batch_eq_single"),
         ("metrics", "parity_numpy_eq"), ("metrics", "parity_xor_eq"))
WIDTHS = {"strategy": 110, "q": 50, "verdict": 95, "shipped": 70, "engine": 70, "cell_status": 90,
          "parity_ok": 80}  # px; other numbers: 115
# One line chart each, in this order: a cell logs these at step = its q (every other metric at step 0), so the chart
# view, grouped by strategy and sweep, draws one line per strategy over q, a colour each.
CHART_METRICS = ("batch_vs_single_speedup", "batch_qps", "batch_ms_per_batch")
SECTION = "morphogen-matrix"  # the charts' own section, first on the page
MODEL_SECTION, SYSTEM_SECTION = "Model metrics", "System metrics"  # MLflow's generated sections, kept last, collapsed


def column(kind: str, key: str) -> str:
    """A runs-table column id as MLflow writes it (`metrics.`batch_qps``; kind: attributes, params, metrics, tags)."""
    return f"{kind}.`{key}`"


def log_cell_metrics(tracker: Any, run_id: str, metrics: Mapping[str, float], q: int, tags: Mapping[str, Any] = {}) -> None:
    """A cell's metrics: the charted ones (CHART_METRICS) at step ``q``, the rest at step 0. Each metric still has one
    value (its latest), so tables and the decision read the same numbers; only the chart view's x axis is q."""
    charted = {k: v for k, v in metrics.items() if k in CHART_METRICS}
    tracker.log(run_id, metrics={k: v for k, v in metrics.items() if k not in charted}, tags=tags)
    tracker.log(run_id, metrics=charted, step=q)


def _line(metric: str) -> dict[str, Any]:
    """A line chart of ``metric`` over the step (= q, log scale), points marked, one line per group."""
    return {"type": "LINE", "uuid": f"morphogen-line-{metric}", "metricKey": metric, "selectedMetricKeys": [metric],
            "metricSectionId": SECTION, "displayName": f"{metric} vs q", "xAxisKey": "step", "xAxisScaleType": "log",
            "scaleType": "linear", "useGlobalXaxisKey": False, "lineSmoothness": 0, "showPoints": True,
            "runsCountToCompare": 100, "deleted": False, "isGenerated": False}


def view_state() -> dict[str, Any]:
    """The page state the saved view restores: every cell of every sweep, grouped by strategy and sweep, the fastest
    first, the matrix's columns, and line charts of speedup, q/s and latency over q (one line a strategy) in place of
    MLflow's default parallel-coordinates plot."""
    sections = [{"uuid": SECTION, "name": "The matrix", "display": True,
                 "isReordered": True, "deleted": False, "isGenerated": False}]
    sections += [{"uuid": f"morphogen-{name.split()[0].lower()}", "name": name, "display": False, "isReordered": False,
                  "deleted": False, "isGenerated": True} for name in (MODEL_SECTION, SYSTEM_SECTION)]
    order = [column("attributes", "Run Name"), *(column(k, n) for k, n in ORDER), column("attributes", "Description")]
    return {
        # search facets
        "searchFilter": f"tags.`{ROLE_TAG}` = 'cell'",
        "orderByKey": column("metrics", "batch_qps"),
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        # UI state
        "selectedColumns": order[1:],
        "columnOrder": order,
        "columnWidths": {column(k, n): WIDTHS.get(n, 115) for k, n in ORDER},
        # one group per strategy and sweep: its colour in the charts, its cells a line over q (no mixing of sweeps)
        "groupBy": {"aggregateFunction": "max", "groupByKeys": [{"mode": "tag", "groupByData": "strategy"},
                                                                 {"mode": "tag", "groupByData": PARENT_TAG}]},
        "groupsExpanded": {},
        "useGroupedValuesInCharts": True,
        "runsHiddenMode": "SHOW_ALL",
        "hideEmptyCharts": True,
        "compareRunCharts": [_line(m) for m in CHART_METRICS],
        "compareRunSections": sections,
        "isAccordionReordered": True,
        "viewMaximized": True,
        "runListHidden": False,
    }


def _envelope(state: str, created: int, updated: int) -> str:
    """The tag's value as MLflow 3.17's saved views write it (state as JSON text, uncompressed)."""
    return json.dumps({"name": NAME, "createdAt": created, "updatedAt": updated, "state": state})


def share_view(client: Any, experiment_id: str) -> str:
    """Set the experiment's saved view of the matrix (tag `mlflow.sharedViewState.<KEY>`) and return its key. Writes
    only when the tag is missing or holds another state: a second call changes nothing (not even `updatedAt`)."""
    state = json.dumps(view_state(), sort_keys=True)
    tag = TAG_PREFIX + KEY
    old = client.get_experiment(experiment_id).tags.get(tag)
    created = None
    if old is not None:
        try:
            envelope = json.loads(old)
            if envelope.get("state") == state and envelope.get("name") == NAME:
                return KEY
            created = envelope.get("createdAt")
        except (ValueError, AttributeError):  # someone else's value under our key: replaced
            pass
    now = int(time.time() * 1000)
    client.set_experiment_tag(experiment_id, tag, _envelope(state, created if isinstance(created, int) else now, now))
    return KEY


def runs_url(base_url: str, experiment_id: str, key: str, charts: bool = False) -> str:
    """The runs page at `base_url` (a server's or `mlflow ui`'s address) opened on the saved view `key`: the table, or
    with `charts` the chart view."""
    mode = "&compareRunsMode=CHART" if charts else ""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={key}{mode}"
