"""One measured cell per device at a time, whatever launches the cells (joblib workers, two sweeps at once).

`hold(what)` takes an exclusive `flock` on one lock file per device this process can see, keyed by host,
backend and device index (a GPU's index as CUDA_VISIBLE_DEVICES maps it; the CPU backend's devices are one
CPU), always in the same order so two cells never deadlock. The kernel drops the locks when the process
dies. A cell that has to wait says so every 30 s with how long it has waited, and gives up (DeviceBusy, the cell
FAILED) after bench.cell_timeout_s, else $MORPHOGEN_DEVLOCK_WAIT_S (default 1800 s): a stopped holder never
hangs a sweep. Lock files are mode 0666 whatever the umask (a file another user made narrower is locked
through a read-only descriptor), and a missing or unwritable folder is one line before any cell (check_dir).
The files live in $MORPHOGEN_DEVLOCK_DIR, else
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

from ..config import ConfigError

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


WAIT_ENV = "MORPHOGEN_DEVLOCK_WAIT_S"
DEFAULT_WAIT_S = 1800.0  # without bench.cell_timeout_s: a lock held by a stopped process fails the cell after this
SAY_EVERY_S = 30.0


class DeviceBusy(RuntimeError):
    """A device lock was not free within the wait (a cell fails with this, its sweep goes on)."""


def check_dir() -> None:
    """The lock folder exists and takes lock files (or holds them all readable): ConfigError (one line) otherwise,
    before any cell (a missing folder would fail every cell)."""
    d = lock_dir()
    if not d.is_dir():
        raise ConfigError(f"the device-lock folder {d} does not exist; create it (mkdir -m 1777 {d}) or set {ENV_VAR} "
                          "to a folder every user of this machine can write")
    if not os.access(d, os.W_OK | os.X_OK):
        raise ConfigError(f"the device-lock folder {d} is not writable by this user; make it 1777 (chmod 1777 {d}) or set "
                          f"{ENV_VAR} to a folder every user of this machine can write")


def _open(path: Path) -> int:
    """The lock file, read-write for every user of the machine (mode 0666 whatever the umask); a file another user
    created without that: read-only (flock takes an exclusive lock on a read-only descriptor too)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        return os.open(path, os.O_RDONLY)
    try:
        if os.fstat(fd).st_uid == os.getuid() and os.fstat(fd).st_mode & 0o777 != 0o666:
            os.fchmod(fd, 0o666)  # the umask narrowed the mode: a second user could not open it
    except OSError:
        pass
    return fd


def _lock_one(path: Path, what: str, timeout_s: float) -> int:
    fd = _open(path)
    try:
        t0 = time.monotonic()
        said = -SAY_EVERY_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - t0
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                if waited >= timeout_s:
                    raise DeviceBusy(f"{what}: the device stayed locked for {waited:.0f} s ({holder} holds {path}; a stopped "
                                     f"process keeps it: end it); the wait is bounded by bench.cell_timeout_s, else "
                                     f"${WAIT_ENV} (default {DEFAULT_WAIT_S:g} s)") from None
                if waited - said >= SAY_EVERY_S:
                    log.info("%s: waiting for the device, %.0f s so far (%s holds %s; gives up after %.0f s)",
                             what, waited, holder, path, timeout_s)
                    said = waited
                time.sleep(min(0.2, max(timeout_s - waited, 0.0)))
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        except OSError:  # a read-only descriptor: the lock holds, the file just does not name us
            pass
    except BaseException:
        os.close(fd)
        raise
    return fd


def wait_limit(timeout_s: float | None = None) -> float:
    """How long a cell waits for its devices: `timeout_s` (bench.cell_timeout_s), else $MORPHOGEN_DEVLOCK_WAIT_S,
    else DEFAULT_WAIT_S."""
    if timeout_s is not None:
        return float(timeout_s)
    try:
        return float(os.environ.get(WAIT_ENV, DEFAULT_WAIT_S))
    except ValueError:
        return DEFAULT_WAIT_S


@contextmanager
def hold(what: str, keys: list[str] | None = None, timeout_s: float | None = None) -> Iterator[Held]:
    """Hold every device of this process exclusively for the body (`what` names the cell in the wait lines);
    DeviceBusy after `wait_limit(timeout_s)` seconds of waiting."""
    d = lock_dir()
    limit = wait_limit(timeout_s)
    held, fds = Held(), []
    t0 = time.monotonic()
    try:
        for key in sorted(keys if keys is not None else device_keys()):
            left = max(limit - (time.monotonic() - t0), 0.0)
            fds.append(_lock_one(d / (re.sub(r"[^A-Za-z0-9_.-]+", "_", key) + ".lock"), what, left))
        held.waited_s = time.monotonic() - t0
        held.acquired_ts = time.time()
        yield held
    finally:
        held.released_ts = time.time()
        for fd in reversed(fds):
            os.close(fd)
