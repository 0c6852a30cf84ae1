"""Shared pytest fixtures.

Add fixtures here; never change the meaning of an existing one (other test files rely on it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The real Carvana sample lives beside the checkout and is never copied into it.
REAL_DATA = Path(os.environ.get("CARVANA_REAL_DATA", REPO.parent / "shared" / "carvana"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (for bench/, lambda/, notebooks/)."""
    return REPO


@pytest.fixture(scope="session")
def real_data() -> Path:
    """``../shared/carvana`` (Kaggle layout); the test is skipped when it is absent."""
    if not (REAL_DATA / "train").is_dir():
        pytest.skip(f"real Carvana data not found at {REAL_DATA}")
    return REAL_DATA
