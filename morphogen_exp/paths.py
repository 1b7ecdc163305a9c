"""Where the package finds its files, in a source checkout and installed from a wheel.

A checkout keeps the Hydra config tree at its top level (`conf/`, beside `pyproject.toml`); a wheel ships the
same tree inside the package (`morphogen_exp/conf`, mapped at build time in setup.py). Outputs that belong to a
checkout (rollout guards, shared caches) live in `<checkout>/outputs`; an installed package has no checkout,
so they live in the current folder's `outputs/`."""

from __future__ import annotations

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
