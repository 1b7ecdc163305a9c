"""The device's state per cell: what it is (name, memory, driver, CUDA, JAX), how it runs (SM and
memory clocks, temperature, power where nvidia-smi reads them), whether that moved during the cell,
and MLflow's own system metrics logged to a cell's run.

Nothing here fails a cell: what cannot be read is left out (a CPU has no clocks to report)."""

from __future__ import annotations

import csv
import logging
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jax

log = logging.getLogger(__name__)

Snapshot = dict[str, str | float]

# nvidia-smi --query-gpu field -> (our key, scale to our unit or None for text)
_SMI_FIELDS: dict[str, tuple[str, float | None]] = {
    "name": ("device_name", None),
    "uuid": ("device_uuid", None),   # which card: a sweep resumed on another machine shows two
    "driver_version": ("driver_version", None),
    "pstate": ("pstate", None),
    "memory.total": ("memory_total_gib", 1 / 1024),   # MiB
    "memory.used": ("memory_used_gib", 1 / 1024),
    "clocks.sm": ("clock_sm_mhz", 1.0),
    "clocks.mem": ("clock_mem_mhz", 1.0),
    "clocks.max.sm": ("clock_sm_max_mhz", 1.0),
    "temperature.gpu": ("temperature_c", 1.0),
    "power.draw": ("power_w", 1.0),
    "power.limit": ("power_limit_w", 1.0),
}
_SMI_TIMEOUT_S = 10.0
_GIB = 2.0**30


def _smi_index(device: Any) -> str | None:
    """nvidia-smi's id of a JAX device: its ordinal, mapped through CUDA_VISIBLE_DEVICES when set."""
    ordinal = getattr(device, "local_hardware_id", None)
    ordinal = device.id if ordinal is None else ordinal
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if not visible:
        return str(ordinal)
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    return entries[ordinal] if ordinal < len(entries) else None


def _run_smi(args: list[str]) -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=_SMI_TIMEOUT_S, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        log.debug("nvidia-smi %s: %s", " ".join(args), e)
        return None
    return done.stdout


def _parse_value(raw: str, scale: float | None) -> str | float | None:
    raw = raw.strip()
    if not raw or raw.startswith("[") or raw.upper() in ("N/A", "NOT SUPPORTED"):
        return None
    if scale is None:
        return raw
    try:
        return float(raw) * scale
    except ValueError:
        return None


def nvidia_smi_state(index: str) -> Snapshot:
    """The GPU's fields from one `nvidia-smi --query-gpu` call ({} without nvidia-smi or on error)."""
    out = _run_smi([f"--query-gpu={','.join(_SMI_FIELDS)}", "--format=csv,noheader,nounits", "-i", index])
    rows = list(csv.reader((out or "").strip().splitlines(), skipinitialspace=True))
    if len(rows) != 1 or len(rows[0]) != len(_SMI_FIELDS):
        return {}
    state: Snapshot = {}
    for (key, scale), raw in zip(_SMI_FIELDS.values(), rows[0], strict=True):
        value = _parse_value(raw, scale)
        if value is not None:
            state[key] = value
    others = other_processes(index)
    if others is not None:
        state["other_processes"] = float(others)
    return state


def other_processes(index: str) -> int | None:
    """How many compute processes other than this one hold the GPU (`nvidia-smi --query-compute-apps`; None when
    it cannot say)."""
    out = _run_smi(["--query-compute-apps=pid", "--format=csv,noheader", "-i", index])
    if out is None:
        return None
    pids = {line.strip() for line in out.splitlines() if line.strip().isdigit()}
    return len(pids - {str(os.getpid())})


@lru_cache(maxsize=1)
def cuda_driver_version() -> str | None:
    """The CUDA version the driver supports, from nvidia-smi's banner (cached: it cannot change)."""
    match = re.search(r"CUDA Version:\s*([\d.]+)", _run_smi([]) or "")
    return match.group(1) if match else None


def _jax_state(device: Any) -> Snapshot:
    import jaxlib

    state: Snapshot = {
        "device_name": str(device.device_kind),
        "device_kind": str(device.device_kind),
        "platform": str(device.platform),
        "platform_version": str(getattr(device.client, "platform_version", "")),
        "device_count": float(jax.device_count()),
        "jax_version": jax.__version__,
        "jaxlib_version": str(getattr(jaxlib, "__version__", "")),
    }
    stats = device.memory_stats() or {}
    for key, name in (("bytes_limit", "memory_limit_gib"), ("bytes_in_use", "memory_in_use_gib"),
                      ("peak_bytes_in_use", "memory_peak_gib")):
        if key in stats:
            state[name] = stats[key] / _GIB
    return state


def snapshot(device: Any | None = None) -> Snapshot:
    """The state of `device` (default: JAX's first): text values are facts (name, versions), numbers
    are readings (GiB, MHz, degrees C, W). Keys that cannot be read are absent; never raises."""
    device = jax.devices()[0] if device is None else device
    state = _jax_state(device)
    if state["platform"] in ("gpu", "cuda"):
        index = _smi_index(device)
        state |= nvidia_smi_state(index) if index is not None else {}
        cuda = cuda_driver_version()
        if cuda:
            state["cuda_version"] = cuda
    return state


def split(state: Snapshot, prefix: str = "device.") -> tuple[dict[str, str], dict[str, float]]:
    """(tags, metrics) of a snapshot for MLflow: text values become tags, numbers metrics."""
    tags = {f"{prefix}{k}": v for k, v in state.items() if isinstance(v, str)}
    metrics = {f"{prefix}{k}": float(v) for k, v in state.items() if not isinstance(v, str)}
    return tags, metrics


def changes(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """What moved between two snapshots: `clock_sm_changed`/`clock_mem_changed`/`pstate_changed` (0/1)
    and `temperature_delta_c`, each only where both snapshots have the reading."""
    out: dict[str, float] = {}
    for key, name in (("clock_sm_mhz", "clock_sm_changed"), ("clock_mem_mhz", "clock_mem_changed"),
                      ("pstate", "pstate_changed")):
        if key in before and key in after:
            out[name] = float(before[key] != after[key])
    t0, t1 = before.get("temperature_c"), after.get("temperature_c")
    if isinstance(t0, float) and isinstance(t1, float):
        out["temperature_delta_c"] = t1 - t0
    return out


@dataclass
class DeviceWatch:
    """Snapshots before and after a block, and what changed between them (filled when the block ends)."""

    before: Snapshot
    after: Snapshot = field(default_factory=dict)
    changes: dict[str, float] = field(default_factory=dict)


@contextmanager
def watch(device: Any | None = None) -> Iterator[DeviceWatch]:
    """Snapshot the device before and after the block; `.changes` says whether clocks or temperature
    moved (filled even when the block raises)."""
    w = DeviceWatch(before=snapshot(device))
    try:
        yield w
    finally:
        w.after = snapshot(device)
        w.changes = changes(w.before, w.after)


def host_state(proc_stat: Path = Path("/proc/stat")) -> dict[str, float]:
    """The host's load: its CPU count, 1- and 5-minute load averages, and (Linux) the CPU time counters whose
    difference gives the steal (time a hypervisor gave another guest). What cannot be read is absent."""
    out = {"cpus": float(os.cpu_count() or 0)}
    try:
        out["load1"], out["load5"], _ = os.getloadavg()
    except OSError:
        pass
    try:
        fields = proc_stat.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return out
    if fields and fields[0] == "cpu" and len(fields) > 8:
        ticks = [float(f) for f in fields[1:]]
        out["cpu_ticks"], out["steal_ticks"] = sum(ticks[:8]), ticks[7]  # user..steal (guest time is inside user)
    return out


@dataclass
class HostWatch:
    """The host's load before and after a block (host_state)."""

    before: dict[str, float]
    after: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """`host.cpus`, `host.load1_start` / `_end`, `host.load5_end` and `host.steal_pct` (of the block's CPU time)."""
        out = {"host.cpus": self.before.get("cpus", 0.0)}
        for key, name, state in (("load1", "load1_start", self.before), ("load1", "load1_end", self.after),
                                 ("load5", "load5_end", self.after)):
            if key in state:
                out[f"host.{name}"] = state[key]
        if "cpu_ticks" in self.before and "cpu_ticks" in self.after:
            total = self.after["cpu_ticks"] - self.before["cpu_ticks"]
            if total > 0:
                out["host.steal_pct"] = 100 * (self.after["steal_ticks"] - self.before["steal_ticks"]) / total
        return out

    def moved(self) -> str:
        """The load in words when it moved during the block (its 1-minute average by at least a quarter of the CPUs,
        and at least 1, or a steal of 5% or more), else ""."""
        m = self.metrics()
        cpus, start, end = m["host.cpus"], m.get("host.load1_start"), m.get("host.load1_end")
        said = []
        if start is not None and end is not None and abs(end - start) >= max(1.0, cpus / 4):
            said.append(f"the host's load average went {start:.2f} -> {end:.2f} on {cpus:g} CPUs")
        if m.get("host.steal_pct", 0.0) >= 5.0:
            said.append(f"{m['host.steal_pct']:.0f}% of its CPU time was stolen by the hypervisor")
        return "; ".join(said)


@contextmanager
def watch_host() -> Iterator[HostWatch]:
    """The host's load before and after the block (filled even when the block raises)."""
    w = HostWatch(before=host_state())
    try:
        yield w
    finally:
        w.after = host_state()


def _flush_last_samples(monitor: Any) -> None:
    """MLflow's monitor drops the samples of its last, unfinished interval (so a cell shorter than one
    interval logs nothing): publish them once its thread has stopped."""
    if any(m.metrics for m in monitor.monitors):
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()


@contextmanager
def system_metrics(run_id: str, tracking_uri: str, *, sampling_interval_s: float = 5.0,
                   samples_before_logging: int = 1, enabled: bool = True) -> Iterator[None]:
    """Log MLflow's own system metrics (`system/cpu_utilization_percentage`, ..., `system/gpu_0_*` when
    nvidia-ml-py finds a GPU) to `run_id` while the block runs, with no active fluent run; the samples of
    each interval are averaged into one step. The run must be RUNNING. MLflow's environment variables
    (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL, ...) override the arguments. A monitor that cannot start
    or stop only logs a warning."""
    if not enabled:
        yield
        return
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        monitor = SystemMetricsMonitor(run_id, sampling_interval=sampling_interval_s, samples_before_logging=samples_before_logging,
                                       resume_logging=True, tracking_uri=tracking_uri)
    except Exception as e:  # psutil missing, store unreachable: the cell goes on without them
        log.warning("system metrics off for run %s: %s", run_id, e)
        yield
        return
    monitor.start()
    try:
        yield
    finally:
        try:
            monitor.finish()
            _flush_last_samples(monitor)
        except Exception as e:
            log.warning("system metrics for run %s: %s", run_id, e)
