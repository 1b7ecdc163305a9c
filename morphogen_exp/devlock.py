"""One measured cell per device at a time, whatever launches the cells (joblib workers, two sweeps at once).

`hold(what)` takes an exclusive `flock` on one lock file per device this process can see, keyed by host,
backend and device index (a GPU's index as CUDA_VISIBLE_DEVICES maps it; the CPU backend's devices are one
CPU), always in the same order so two cells never deadlock. The kernel drops the locks when the process
dies. A cell that has to wait says so in one log line. The files live in $MORPHOGEN_DEVLOCK_DIR, else
`<system temp dir>/morphogen-devlocks` (created world-writable and sticky, so users of one machine share it).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
ENV_VAR = "MORPHOGEN_DEVLOCK_DIR"


def lock_dir() -> Path:
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    d = Path(tempfile.gettempdir()) / "morphogen-devlocks"
    if not d.is_dir():
        try:
            d.mkdir(mode=0o1777)
            os.chmod(d, 0o1777)  # the umask narrowed mkdir's mode
        except FileExistsError:
            pass
    return d


def host_gpu_indices() -> list[str]:
    """The host's indices of the GPUs this process sees, in CUDA's order: CUDA_VISIBLE_DEVICES, or the list SLURM
    gave the job when SLURM set it (with cgroup device constraints every job's CUDA_VISIBLE_DEVICES counts from 0,
    so two jobs on one node would take each other's GPUs for their own; SLURM_STEP_GPUS/SLURM_JOB_GPUS do not)."""
    def listed(name: str) -> list[str]:
        return [v.strip() for v in os.environ.get(name, "").split(",") if v.strip()]

    cuda = listed("CUDA_VISIBLE_DEVICES")
    slurm = listed("SLURM_STEP_GPUS") or listed("SLURM_JOB_GPUS")
    return slurm if cuda and len(slurm) == len(cuda) else cuda


def device_keys() -> list[str]:
    """One key per device this process can see: host-backend-index (sorted, unique)."""
    import jax

    backend = jax.default_backend()
    host = socket.gethostname()
    if backend == "cpu":  # every CPU "device" is the host's one CPU
        return [f"{host}-cpu"]
    visible = host_gpu_indices()
    keys = set()
    for d in jax.local_devices():
        index = visible[d.id] if backend in ("gpu", "cuda") and d.id < len(visible) else str(d.id)
        keys.add(f"{host}-{backend}-{index}")
    return sorted(keys)


@dataclass
class Held:
    """When this cell held its devices (wall-clock seconds) and how long it waited for them."""

    acquired_ts: float = 0.0
    released_ts: float = 0.0
    waited_s: float = 0.0

    def metrics(self) -> dict[str, float]:
        return {"measure_start_ts": self.acquired_ts, "measure_end_ts": self.released_ts,
                "device_lock_wait_s": self.waited_s}


def _lock_one(path: Path, what: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            log.info("%s: waiting for the device (%s holds %s)", what, holder, path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def hold(what: str, keys: list[str] | None = None) -> Iterator[Held]:
    """Hold every device of this process exclusively for the body (`what` names the cell in the wait line)."""
    d = lock_dir()
    held, fds = Held(), []
    t0 = time.monotonic()
    try:
        for key in sorted(keys if keys is not None else device_keys()):
            fds.append(_lock_one(d / (re.sub(r"[^A-Za-z0-9_.-]+", "_", key) + ".lock"), what))
        held.waited_s = time.monotonic() - t0
        held.acquired_ts = time.time()
        yield held
    finally:
        held.released_ts = time.time()
        for fd in reversed(fds):
            os.close(fd)
