"""Sweeps recorded straight into a real MLflow store (SQLite, MlflowClient), no cell measured: what a report,
a publish or a compare reads, in milliseconds."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from morphogen_exp.config import flatten
from morphogen_exp.decide import rollout
from morphogen_exp.identity import config_id

REPO = Path(__file__).resolve().parents[2]
RULES = {"require_parity": True, "min_speedup": 1.0, "speedup_from_q": 4, "latency_budget_ms": None,
         "rank_by": "batch_qps", "tie_within": 0.02, "prefer": ["full_batch", "tiled"]}


@functools.lru_cache(maxsize=64)
def _params(overrides: tuple[str, ...]) -> dict[str, str]:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", list(overrides))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    resolved.pop("hydra", None)
    return {k: str(v) for k, v in flatten(resolved).items()}


def params(*overrides: str) -> dict[str, str]:
    """A cell's flattened params as MLflow stores them (every value a string)."""
    return dict(_params(tuple(overrides)))


def metrics(qps: float, half: float = 1.0, speedup: float = 2.0) -> dict[str, float]:
    """An ok cell's numbers, with intervals: qps +- half, speedup +- 0.1."""
    return {"batch_qps": qps, "batch_vs_single_speedup": speedup, "batch_ms_per_batch": 1e3 / qps,
            "single_ms_per_batch": 2e3 / qps, "single_qps": qps / speedup, "parity_ok": 1, "checksum_match": 1,
            "parity_xor_eq": 1, "parity_numpy_checked": 1, "batch_qps_lo": qps - half, "batch_qps_hi": qps + half,
            "batch_vs_single_speedup_lo": speedup - 0.1, "batch_vs_single_speedup_hi": speedup + 0.1,
            "batch_samples": 40, "batch_noise": 0.004, "batch_capped": 0}


class Sweeps:
    """One experiment of a store; `sweep` records a finished sweep run and its cells."""

    def __init__(self, root: Path):
        self.uri = f"sqlite:///{root}/mlflow.db"
        self.client = MlflowClient(tracking_uri=self.uri)
        self.exp = self.client.create_experiment("morphogen_exp", artifact_location=(root / "art").as_uri())

    def sweep(self, sweep_dir: Path, cells: list[tuple[list[str], int, dict[str, float], dict[str, str]]],
              start_ms: int | None = None, finished: bool = True) -> str:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        parent = self.client.create_run(self.exp, start_time=start_ms, tags={
            "morphogen.role": "sweep", "morphogen.sweep_dir": str(sweep_dir)}).info.run_id
        self.client.log_text(parent, json.dumps(RULES), "decision.json")
        for overrides, q, m, extra in cells:
            p = params(*overrides, f"q={q}")
            tags: dict[str, Any] = {"mlflow.parentRunId": parent, "morphogen.role": "cell", "strategy": p["strategy.name"],
                                    "original_strategy": p["strategy.original"], "q": str(q), "dataset": p["dataset.name"],
                                    "engine": p["engine.name"], "device_kind": "cpu", "backend": "cpu",
                                    "cell_status": "ok" if m else "failed", rollout.PARAMS_DIGEST_TAG: rollout.params_digest(p),
                                    "config_id": config_id(p),
                                    **extra}
            tags = {k: v for k, v in tags.items() if v is not None}  # an extra None: a tag the cell lacks (legacy)
            run = self.client.create_run(self.exp, start_time=start_ms, tags=tags).info.run_id
            items = list(p.items())
            for i in range(0, len(items), 100):
                self.client.log_batch(run, params=[Param(k, v) for k, v in items[i:i + 100]])
            for k, v in m.items():
                self.client.log_metric(run, k, v)
            self.client.set_terminated(run, "FINISHED" if m else "FAILED")
        if finished:
            self.client.set_terminated(parent)
        (sweep_dir / "parent_run_id").write_text(parent + "\n")
        (sweep_dir / "mlflow.json").write_text(json.dumps({"tracking_uri": self.uri, "experiment": "morphogen_exp"}))
        return parent
