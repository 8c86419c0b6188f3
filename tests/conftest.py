"""Shared test settings: the real data sets and weights beside the checkout (../shared)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGECLF_SHARED", REPO.parent / "shared"))
DATA = SHARED / "data"
HYMENOPTERA = DATA / "hymenoptera_data"
FLOWERS = DATA / "flower_photos"
WEIGHTS = SHARED / "weights"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if WEIGHTS.is_dir():
    os.environ.setdefault("EDGECLF_WEIGHTS_DIR", str(WEIGHTS))


@pytest.fixture(scope="session")
def hymenoptera() -> Path:
    if not HYMENOPTERA.is_dir():
        pytest.fail(f"the test data set is missing: expected {HYMENOPTERA} (../shared/data beside the checkout)")
    return HYMENOPTERA


@pytest.fixture(scope="session")
def flowers() -> Path:
    if not FLOWERS.is_dir():
        pytest.fail(f"the test data set is missing: expected {FLOWERS}")
    return FLOWERS
