"""Public API of the ChaCha8 DPF page-PIR engine (morphogenesis-compatible keys and answers).

``Key``, ``generate_keys``, ``eval_points`` and ``answer`` are numpy-only. The JAX engine's names
(``KeyBatch``, ``EngineSpec``, ``Engine``, ``get``, ``make_answer_fn``, ``scan_bytes_read``, ...) are exported lazily: the
first access imports the module that defines them, so ``import morphogen_exp.pir`` with the numpy
backend never imports JAX. The pure ``scan`` function lives in ``morphogen_exp.pir.scan`` (the
submodule's name).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .keys import Key, generate_keys
from .reference import answer_numpy, eval_points

if TYPE_CHECKING:
    from .engine import Engine, Subtrees, Window, available_engines, get, register, unregister
    from .host import answer_jax, pages_to_words, words_to_bytes
    from .keybatch import KeyBatch
    from .pages import PAGE_BYTES, PAGE_WORDS, domain_bits_for
    from .scan import ScanPlan, full_eval_jax, make_answer_fn, query_scan, scan_bytes_read, scan_plan, tile_size
    from .spec import EngineSpec

_LAZY = {
    "pages": ("PAGE_BYTES", "PAGE_WORDS", "domain_bits_for"),
    "keybatch": ("KeyBatch",),
    "spec": ("EngineSpec",),
    "engine": ("Engine", "Subtrees", "Window", "available_engines", "get", "register", "unregister"),
    "scan": ("ScanPlan", "full_eval_jax", "make_answer_fn", "query_scan", "scan_bytes_read", "scan_plan", "tile_size"),
    "host": ("answer_jax", "pages_to_words", "words_to_bytes"),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}

__all__ = [
    "BACKENDS", "Key", "answer", "eval_points", "generate_keys",  # numpy
    "PAGE_BYTES", "PAGE_WORDS", "domain_bits_for", "KeyBatch", "EngineSpec",  # pages, keybatch, spec
    "Engine", "Subtrees", "Window", "available_engines", "get", "register", "unregister",  # engine
    "ScanPlan", "full_eval_jax", "make_answer_fn", "query_scan", "scan_bytes_read", "scan_plan", "tile_size",
    "answer_jax", "pages_to_words", "words_to_bytes",  # host
]

BACKENDS = ("numpy", "jax")


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


def answer(pages: np.ndarray, keys: Sequence[Key], backend: str = "numpy", engine: str | None = None) -> np.ndarray:
    """Server reply for `keys` over `pages` (N, 4096) uint8 -> (K, 4096) uint8.

    backend "numpy" is the reference; "jax" runs the engine ``engine`` ("xla" when None; any name
    ``get`` knows), imported lazily so the numpy path never pulls in JAX.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if backend == "numpy":
        if engine is not None:
            raise ValueError(f"engine={engine!r} applies to backend='jax' only; the numpy backend is the reference")
        return answer_numpy(pages, keys)
    from .host import answer_jax
    from .spec import EngineSpec

    return answer_jax(pages, keys, EngineSpec() if engine is None else EngineSpec(name=engine))
