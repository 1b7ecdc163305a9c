"""What makes two cells the same measurement and two of them the same configuration: ONE list of the settings
that measure nothing, read by a cell's identity (cell_key, config_id: config.RunConfig.identity), a sweep's cell
set (sweepdir.cells_digest), the decision's context (what a sweep varies besides configurations) and the
config_id of a run recorded without the tag. Also the configurations' readable labels.

A setting measures nothing when changing it leaves every number a cell records the same: how the run is recorded
(mlflow), run (hydra, resume) or decided (decision), and the process-local bench settings (the compilation cache
folder, the cell timeout, MLflow's system-metrics sampling, the finals stage, and the card's floors, which only
add the card's own numbers beside a cell's). Imports nothing of the package: the bottom floor, beside config."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

# Top-level settings (a whole section, or one value) that measure nothing.
NOT_MEASURED_SECTIONS = ("resume", "mlflow", "hydra", "decision")
# bench.* settings that measure nothing.
NOT_MEASURED_BENCH = ("compilation_cache_dir", "cell_timeout_s", "system_metrics_s", "finals", "floors")

# Settings that describe what was measured and how, not a configuration to ship: a sweep that varies one of these
# compares data or settings, never configurations, and gets no decision (as for mixed devices).
_CONTEXT_PREFIXES = ("dataset.", "bench.", "parity.")
_CONTEXT_KEYS = ("seed", "max_q")
# Params that never help a reader tell configurations apart (derived from the knobs, or names).
_NOT_IN_LABEL_PREFIXES = ("strategy.guard_env.", "strategy.original", "strategy.name")


def measures(key: str) -> bool:
    """Whether a setting can change what a cell measures: a flattened param (`bench.warmup`) or an override's key
    (`+bench.finals`, `hydra/launcher`)."""
    parts = re.split(r"[./]", key.lstrip("+~"))
    return parts[0] not in NOT_MEASURED_SECTIONS and not (parts[0] == "bench" and len(parts) > 1
                                                           and parts[1] in NOT_MEASURED_BENCH)


def identity(resolved: Mapping[str, Any], with_q: bool = True) -> dict[str, Any]:
    """What a cell measures: the resolved config (nested) without the settings that measure nothing (and q)."""
    ident = {k: v for k, v in resolved.items() if measures(k) and (with_q or k != "q")}
    if isinstance(ident.get("bench"), Mapping):
        ident["bench"] = {k: v for k, v in ident["bench"].items() if measures(f"bench.{k}")}
    return ident


def measurement_setting(key: str) -> bool:
    """A flattened param that says what was measured and how (dataset, seed, bench, parity), not a configuration."""
    return (key.startswith(_CONTEXT_PREFIXES) or key in _CONTEXT_KEYS) and measures(key)


def _in_config(key: str) -> bool:
    """A flattened param that belongs to a configuration: it measures something and is not q."""
    return key != "q" and measures(key)


def config_id(params: Mapping[str, Any]) -> str:
    """What a rollout ships, from a run's flattened params (a run recorded without the config_id tag): the
    settings that measure something, without q."""
    ident = {k: str(v) for k, v in params.items() if _in_config(k)}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def config_labels(configs: Mapping[str, tuple[str, Mapping[str, Any]]]) -> dict[str, str]:
    """config_id -> readable label: the strategy, plus the settings that vary among its configurations
    in this sweep (`tiled[tile=4]`, `full_batch[seed=1]`); a group whose `.name` varies shows only that."""
    by_strategy: dict[str, list[str]] = {}
    for cid, (strategy, _) in configs.items():
        by_strategy.setdefault(strategy, []).append(cid)
    labels: dict[str, str] = {}
    for strategy, ids in by_strategy.items():
        keys = sorted({k for cid in ids for k in configs[cid][1] if _in_config(k) and not k.startswith(_NOT_IN_LABEL_PREFIXES)})
        varying = [k for k in keys if len({str(configs[cid][1].get(k)) for cid in ids}) > 1]
        named = {k.rsplit(".", 1)[0] for k in varying if k.endswith(".name")}
        varying = [k for k in varying if k.endswith(".name") or k.split(".", 1)[0] not in named]
        for cid in ids:
            parts = [f"{_short(k)}={configs[cid][1].get(k)}" for k in varying]
            labels[cid] = f"{strategy}[{','.join(parts)}]" if parts else strategy
    seen: dict[str, int] = {}
    for label in labels.values():
        seen[label] = seen.get(label, 0) + 1
    return {cid: (f"{lab}#{cid[:6]}" if seen[lab] > 1 else lab) for cid, lab in labels.items()}


def _short(key: str) -> str:
    if key.startswith("strategy."):
        return key[len("strategy."):]
    return key[: -len(".name")] if key.endswith(".name") else key
