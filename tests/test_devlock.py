"""Device locks on a shared host (issue 30, item 10): lock files every user can open, a bad lock folder one line
before any cell, and a wait that is bounded and says how long it has waited."""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import time
from pathlib import Path

import pytest

from morphogen_exp.config import ConfigError
from morphogen_exp.measure import devlock


@pytest.fixture
def locks(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "locks"
    d.mkdir()
    monkeypatch.setenv(devlock.ENV_VAR, str(d))
    return d


def test_a_lock_file_is_read_write_for_every_user_whatever_the_umask(locks: Path) -> None:
    old = os.umask(0o022)
    try:
        with devlock.hold("cell", keys=["host-cpu"]):
            pass
    finally:
        os.umask(old)
    assert (locks / "host-cpu.lock").stat().st_mode & 0o777 == 0o666


def test_a_held_lock_is_waited_for_with_the_time_said_and_then_given_up(locks: Path, caplog) -> None:
    path = locks / "host-cpu.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    os.write(fd, b"pid 4242 on elsewhere\n")
    fcntl.flock(fd, fcntl.LOCK_EX)  # a stopped process holding the device
    try:
        t0 = time.monotonic()
        with caplog.at_level(logging.INFO, logger="morphogen_exp.measure.devlock"), \
                pytest.raises(devlock.DeviceBusy, match=r"^cell: the device stayed locked for \d+ s \(pid 4242 on elsewhere"):
            with devlock.hold("cell", keys=["host-cpu"], timeout_s=0.6):
                pytest.fail("the lock was taken while held")
        assert 0.5 < time.monotonic() - t0 < 5
        assert "cell: waiting for the device, 0 s so far (pid 4242 on elsewhere holds" in caplog.text
    finally:
        os.close(fd)
    with devlock.hold("cell", keys=["host-cpu"], timeout_s=0.1) as held:  # free again: taken at once
        assert held.waited_s < 0.1


def test_a_missing_lock_folder_is_one_line_before_any_cell(tmp_path, monkeypatch, capsys) -> None:
    from morphogen_exp import __main__ as entry

    monkeypatch.setenv(devlock.ENV_VAR, str(tmp_path / "missing"))
    monkeypatch.setenv("MORPHOGEN_ROLLOUT_DIR", str(tmp_path / "guards"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"device-lock folder .*missing does not exist; create it \(mkdir -m 1777"):
        devlock.check_dir()
    monkeypatch.setattr(sys, "argv", ["morphogen_exp", "-m", "q=1,4"])
    with pytest.raises(SystemExit) as exit_:
        entry.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "device-lock folder" in err, err
    assert not (tmp_path / "outputs" / "multirun").exists()  # no sweep started
