"""Shared pytest fixtures.

The reference fixtures produced by the original implementations live in ``../shared/reference``
relative to the project root (CI has them there too); ``CTVIS_REFERENCE_DIR`` overrides that.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def reference_root() -> Path:
    override = os.environ.get("CTVIS_REFERENCE_DIR")
    return Path(override) if override else PROJECT_ROOT.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    root = reference_root()
    if not root.is_dir():
        pytest.fail(f"reference fixtures not found at {root} (set CTVIS_REFERENCE_DIR)")
    return root
