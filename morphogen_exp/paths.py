"""Where the package finds its files, in a source checkout and installed from a wheel.

A checkout keeps the Hydra config tree at its top level (`conf/`, beside `pyproject.toml`); a wheel ships the
same tree inside the package (`morphogen_exp/conf`, mapped at build time in setup.py). Outputs that belong to a
checkout (rollout guards, shared caches) live in `<checkout>/outputs`; an installed package has no checkout,
so they live in the current folder's `outputs/`. Every file the package writes whole goes through `atomic_write`."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def checkout() -> Path | None:
    """The source checkout this package is imported from (an editable install, PYTHONPATH), else None."""
    root = PACKAGE.parent
    return root if (root / "pyproject.toml").is_file() and (root / "conf" / "config.yaml").is_file() else None


def conf_dir() -> Path:
    """Hydra's config tree: the checkout's `conf/` (edits apply without reinstalling), else the wheel's copy."""
    root = checkout()
    return root / "conf" if root is not None else PACKAGE / "conf"


def outputs_root() -> Path:
    """`<checkout>/outputs` whatever the current folder, else (installed from a wheel) `./outputs`."""
    root = checkout()
    return root / "outputs" if root is not None else Path.cwd().resolve() / "outputs"


ROOT_ENV = "MORPHOGEN_ROLLOUT_DIR"  # overrides the root below (tests, a shared guard store)


def root() -> Path:
    """The root that holds the guard store (`rollout/`) and the shared caches (`cache/`): $MORPHOGEN_ROLLOUT_DIR,
    else outputs_root()."""
    env = os.environ.get(ROOT_ENV)
    return Path(env).expanduser().resolve() if env else outputs_root()


def _umask() -> int:
    """The process umask, read without changing it where Linux says it (/proc), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, text: str) -> None:
    """Write through a uniquely named temp file then rename: readers see the old file or the new one, and two
    writers never interleave. The file gets the permissions a plain open() would (0666 less the umask), not
    mkstemp's 0600, so a team that shares the folder can read it. Every file the tool writes whole goes through here."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
