"""Every tag, metric and column name a run carries: what the cells, the sweep run, the finals and the trials are
tagged with in MLflow, and the metric and matrix.csv column names the report and floors share. Names only: no
imports from the package, so every floor may read them."""

from __future__ import annotations

PARENT_TAG = "morphogen.sweep_dir"
ROLE_TAG = "morphogen.role"  # "sweep" | "cell"
PID_TAG, HOST_TAG = "morphogen.pid", "morphogen.host"  # the process that opened a run
FINAL_ROLE = "final"  # a head-to-head final run under a sweep (finals.py): read with its sweep, never counted as a cell
NOTE_TAG = "mlflow.note.content"  # a run's description in the MLflow UI (cells, finals, trials, the sweep)
REPORT_ARTIFACT = "report/report.md"  # the published report, an artifact of the sweep run (tracking.publish)
DERIVED = ["single_ms_per_batch", "batch_ms_per_batch", "batch_vs_single_speedup", "single_qps", "batch_qps"]
PATH_METRICS = [f"{p}_{m}" for p in ("single", "batch")
                for m in ("ms_p50", "ms_p50_lo", "ms_p50_hi", "samples", "noise", "capped")]
NOT_APPLICABLE = "-"  # an original's knob column for a strategy without that knob (matrix.csv; not a metric)
FLOOR_MARK = "_floor_"  # the card's floors and each cell's fraction of them (floors.py): matrix.csv's `*_floor_*` columns
# floor -> (the card's rate, the batch path's fraction of it; the fraction also with _lo and _hi), as floors.py records them
FLOORS = {"read": ("read_floor_gbps", "batch_read_floor_frac"), "expansion": ("expand_floor_blocks_per_s", "batch_expand_floor_frac")}
READ_FLOOR_PROBES = ("read_floor_stream_gbps", "read_floor_scan_gbps")  # the read floor is the larger of the two
