"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """../shared/fixtures next to the repo root (the original's reference vectors)."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
    if not path.is_dir():
        pytest.skip(f"reference fixtures not found at {path} (expected ../shared/fixtures "
                    "next to the repository root)")
    return path
