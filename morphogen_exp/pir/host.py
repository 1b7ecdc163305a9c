"""The host side of the JAX engine: page bytes <-> words, and ``answer_jax`` (numpy in, numpy out)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax
import numpy as np

from .engine import get
from .keybatch import KeyBatch
from .pages import PAGE_BYTES, PAGE_WORDS
from .scan import make_answer_fn
from .spec import EngineSpec

if TYPE_CHECKING:  # keys.py is numpy-only; only its type is needed here
    from .keys import Key

__all__ = ["pages_to_words", "words_to_bytes", "answer_jax"]


def _check_pages(pages: np.ndarray) -> None:
    if not isinstance(pages, np.ndarray) or pages.dtype != np.uint8:
        raise ValueError(
            f"pages must be a numpy uint8 array, got {type(pages).__name__} "
            f"{getattr(pages, 'dtype', None)}: convert with np.asarray(pages, dtype=np.uint8)"
        )
    if pages.ndim != 2 or pages.shape[1] != PAGE_BYTES or pages.shape[0] < 1:
        raise ValueError(f"pages must have shape (N >= 1, {PAGE_BYTES}), got {pages.shape}")


def pages_to_words(pages_u8: np.ndarray) -> np.ndarray:
    """(N, 4096) uint8 pages -> (N, 1024) uint32 little-endian words (a view when possible)."""
    _check_pages(pages_u8)
    return np.ascontiguousarray(pages_u8).view("<u4").reshape(pages_u8.shape[0], PAGE_WORDS)


def words_to_bytes(words: np.ndarray | jax.Array) -> np.ndarray:
    """(..., 1024) uint32 words -> (..., 4096) uint8, little-endian."""
    w = np.asarray(words)
    if w.dtype != np.uint32 or w.shape[-1:] != (PAGE_WORDS,):
        raise ValueError(f"words must be (..., {PAGE_WORDS}) uint32, got {w.shape} {w.dtype}")
    return np.ascontiguousarray(w.astype("<u4", copy=False)).view(np.uint8).reshape(*w.shape[:-1], PAGE_BYTES)


def answer_jax(pages: np.ndarray, keys: Sequence[Key], spec: EngineSpec | None = None) -> np.ndarray:
    """Server answers (K, 4096) uint8 for ``keys`` over ``pages`` (N, 4096) uint8 with the engine
    ``spec`` names (default: EngineSpec(), engine "xla") on the default JAX device; same contract
    and validation as the numpy reference ``answer_numpy``."""
    spec = EngineSpec() if spec is None else spec
    engine = get(spec.name)  # an unknown engine fails before any work
    _check_pages(pages)
    kb = KeyBatch.from_keys(keys)
    n_pages, n = pages.shape[0], kb.domain_bits
    if n_pages > 1 << n:
        raise ValueError(
            f"{n_pages} pages exceed the DPF domain 2^{n} = {1 << n}: use keys with domain_bits >= {(n_pages - 1).bit_length()}"
        )
    words = engine.prepare(jax.device_put(pages_to_words(pages)), n_pages)  # the engine's own layout, if it has one
    out = make_answer_fn(n_pages, spec)(words, kb.to_device())
    return words_to_bytes(jax.device_get(out))
