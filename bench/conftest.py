"""Benchmarks use the real records of ../shared/data/ecg; they skip cleanly where it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_ECG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ecg"


@pytest.fixture(scope="session")
def cinc_dir() -> Path:
    d = SHARED_ECG / "cinc2021"
    if not d.is_dir():
        pytest.skip(f"real ECG records not found at {d}")
    return d
