"""Batching strategies, one small module each, registered by name (see base.py).

Importing this package imports every module in it, so a new file here is all it takes. Modules
outside the package (experiments, test doubles) load through MORPHOGEN_EXTRA_STRATEGIES, a
comma-separated list of importable module names; their configs come through hydra.searchpath."""

import importlib
import os
import pkgutil

from .base import BatchPath, BuildContext, register, registered

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")
for _extra in filter(None, os.environ.get("MORPHOGEN_EXTRA_STRATEGIES", "").split(",")):
    importlib.import_module(_extra.strip())

__all__ = ["BatchPath", "BuildContext", "register", "registered"]
