"""Shared fixtures: the real records of ../shared/data/ecg (skipped cleanly where absent) and WFDB factories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter; it is read when triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop at once, saying why, where the interpreter cannot run the kernels (rather than fail hundreds of cases)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        from ecgfast.kernels import interpreter_incompatibility

        problem = interpreter_incompatibility()
        if problem:
            pytest.exit(problem, returncode=pytest.ExitCode.USAGE_ERROR)

SHARED_ECG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ecg"


@pytest.fixture(scope="session")
def shared_ecg() -> Path:
    """../shared/data/ecg, or skip the test when this checkout has no shared/ beside it."""
    if not (SHARED_ECG / "MANIFEST.md").is_file():
        pytest.skip(f"real ECG records not found at {SHARED_ECG}")
    return SHARED_ECG
