"""Shared pytest fixtures for the whole suite."""

from __future__ import annotations

from pathlib import Path

import pytest

#: The real data sets live beside the checkout, never inside it: <repo>/../shared/data.
SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder (davis2016/, firstframe/, ...); skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA.resolve()} is absent (real-data tests need it)")
    return SHARED_DATA.resolve()
