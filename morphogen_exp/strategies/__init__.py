"""Batching strategies, one small module each, registered by name (see base.py).

Importing this package imports every module in it, so a new file here is all it takes."""

import importlib
import pkgutil

from .base import BatchPath, BuildContext, register, registered

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["BatchPath", "BuildContext", "register", "registered"]
