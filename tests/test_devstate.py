"""Device state: the CPU path (no GPU readings, never fails), nvidia-smi parsing through a fake
nvidia-smi on PATH, what `watch` says moved, and MLflow's system metrics on a temporary SQLite store."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import jax
import mlflow
import pytest

from morphogen_exp.measure import devstate

FAKE_SMI = """#!/usr/bin/env python3
import json, os, sys
d = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(d, "calls.jsonl"), "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
state = json.load(open(os.path.join(d, "state.json")))
if state.get("fail"):
    sys.exit(9)
if any(a.startswith("--query-gpu") for a in sys.argv[1:]):
    print(state["csv"])
elif any(a.startswith("--query-compute-apps") for a in sys.argv[1:]):
    print(state.get("apps", ""))
else:
    print("| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: 12.4 |")
"""
UUID = "GPU-3f2a9c1e-0000-1111-2222-333344445555"
GPU_CSV = f"NVIDIA H100 80GB HBM3, {UUID}, 550.54.15, P0, 81559, 1024, {{sm}}, 2619, 1980, {{temp}}, [N/A], 700.00"
GPU_KEYS = {"device_name", "device_uuid", "driver_version", "pstate", "memory_total_gib", "memory_used_gib", "clock_sm_mhz",
            "clock_mem_mhz", "clock_sm_max_mhz", "temperature_c", "power_limit_w", "cuda_version"}


class FakeSmi:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def set(self, sm: int = 1980, temp: int = 40, fail: bool = False, apps: str = "") -> None:
        (self.folder / "state.json").write_text(json.dumps({"csv": GPU_CSV.format(sm=sm, temp=temp), "fail": fail,
                                                            "apps": apps}))

    def calls(self) -> list[list[str]]:
        path = self.folder / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSmi]:
    exe = tmp_path / "nvidia-smi"
    exe.write_text(FAKE_SMI)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    devstate.cuda_driver_version.cache_clear()
    fake = FakeSmi(tmp_path)
    fake.set()
    yield fake
    devstate.cuda_driver_version.cache_clear()


def _gpu(ordinal: int = 0) -> SimpleNamespace:
    stats = {"bytes_limit": 80 * 2**30, "bytes_in_use": 2**30, "peak_bytes_in_use": 3 * 2**30}
    return SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3", platform="gpu", id=ordinal, local_hardware_id=ordinal,
                           client=SimpleNamespace(platform_version="cuda 12080"), memory_stats=lambda: stats)


def test_cpu_snapshot_has_no_gpu_readings_and_asks_no_nvidia_smi(smi: FakeSmi) -> None:
    s = devstate.snapshot()
    assert s["platform"] == "cpu" and s["device_kind"] == "cpu"
    assert s["jax_version"] == jax.__version__ and s["device_count"] == float(jax.device_count())
    assert not (GPU_KEYS - {"device_name"}) & set(s)
    assert "memory_in_use_gib" not in s
    assert smi.calls() == []


def test_gpu_snapshot_reads_nvidia_smi_in_our_units(smi: FakeSmi) -> None:
    s = devstate.snapshot(_gpu())
    assert GPU_KEYS <= set(s)
    assert "power_w" not in s                                   # [N/A] is left out, not 0
    assert s["memory_total_gib"] == pytest.approx(81559 / 1024)
    assert (s["clock_sm_mhz"], s["temperature_c"], s["power_limit_w"]) == (1980.0, 40.0, 700.0)
    assert (s["cuda_version"], s["driver_version"], s["pstate"]) == ("12.4", "550.54.15", "P0")
    assert s["device_uuid"] == UUID  # which card: the report tells two cards of one kind apart
    assert (s["memory_limit_gib"], s["memory_in_use_gib"], s["memory_peak_gib"]) == (80.0, 1.0, 3.0)
    assert s["platform_version"] == "cuda 12080"
    assert smi.calls()[0][-2:] == ["-i", "0"]


def test_visible_devices_map_to_nvidia_smi_ids(smi: FakeSmi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    devstate.snapshot(_gpu(1))
    assert smi.calls()[0][-2:] == ["-i", "5"]


def test_failing_nvidia_smi_leaves_readings_out(smi: FakeSmi) -> None:
    smi.set(fail=True)
    s = devstate.snapshot(_gpu())
    assert s["device_name"] == "NVIDIA H100 80GB HBM3" and s["memory_in_use_gib"] == 1.0
    assert not {"clock_sm_mhz", "temperature_c", "cuda_version"} & set(s)


def test_watch_says_what_moved(smi: FakeSmi) -> None:
    with devstate.watch(_gpu()) as w:
        smi.set(sm=1755, temp=43)
    assert w.changes == {"clock_sm_changed": 1.0, "clock_mem_changed": 0.0, "pstate_changed": 0.0,
                         "temperature_delta_c": 3.0}
    assert (w.before["clock_sm_mhz"], w.after["clock_sm_mhz"]) == (1980.0, 1755.0)
    with pytest.raises(RuntimeError), devstate.watch(_gpu()) as w2:
        raise RuntimeError("cell failed")
    assert w2.changes["clock_sm_changed"] == 0.0
    with devstate.watch() as cpu:
        pass
    assert cpu.changes == {} and cpu.after["platform"] == "cpu"


def test_other_processes_on_the_card_are_counted_without_this_one(smi: FakeSmi) -> None:
    assert devstate.snapshot(_gpu())["other_processes"] == 0.0
    smi.set(apps=f"{os.getpid()}\n4242\n4343")
    assert devstate.snapshot(_gpu())["other_processes"] == 2.0


def test_host_load_is_recorded_and_said_only_when_it_moved(tmp_path: Path) -> None:
    stat_file = tmp_path / "stat"
    stat_file.write_text("cpu  100 0 100 700 0 0 0 100 0 0\ncpu0 1 2 3\n")
    state = devstate.host_state(stat_file)
    assert state["cpu_ticks"] == 1000.0 and state["steal_ticks"] == 100.0 and state["load1"] >= 0 and state["cpus"] >= 1
    calm = devstate.HostWatch({"cpus": 2.0, "load1": 0.5, "cpu_ticks": 1000.0, "steal_ticks": 10.0},
                              {"cpus": 2.0, "load1": 0.8, "load5": 0.6, "cpu_ticks": 2000.0, "steal_ticks": 20.0})
    assert calm.metrics() == {"host.cpus": 2.0, "host.load1_start": 0.5, "host.load1_end": 0.8, "host.load5_end": 0.6,
                              "host.steal_pct": 1.0}
    assert calm.moved() == ""
    busy = devstate.HostWatch({"cpus": 2.0, "load1": 0.5, "cpu_ticks": 1000.0, "steal_ticks": 10.0},
                              {"cpus": 2.0, "load1": 3.1, "cpu_ticks": 2000.0, "steal_ticks": 110.0})
    assert busy.moved() == ("the host's load average went 0.50 -> 3.10 on 2 CPUs; "
                            "10% of its CPU time was stolen by the hypervisor")


def test_split_into_tags_and_metrics() -> None:
    tags, metrics = devstate.split({"device_name": "cpu", "device_count": 1.0})
    assert (tags, metrics) == ({"device.device_name": "cpu"}, {"device.device_count": 1.0})


def test_system_metrics_land_on_the_run_without_a_fluent_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("sysmetrics")
    long_run, short_run = client.create_run(exp).info.run_id, client.create_run(exp).info.run_id
    with devstate.system_metrics(long_run, uri, sampling_interval_s=0.1):
        time.sleep(0.6)
    with devstate.system_metrics(short_run, uri, sampling_interval_s=30.0):
        pass                                                    # shorter than one interval: still logged
    assert mlflow.active_run() is None
    for run_id in (long_run, short_run):
        keys = set(client.get_run(run_id).data.metrics)
        assert "system/cpu_utilization_percentage" in keys and all(k.startswith("system/") for k in keys), keys
    steps = client.get_metric_history(long_run, "system/cpu_utilization_percentage")
    assert len(steps) >= 3
