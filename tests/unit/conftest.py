"""Fixtures shared by the engine tests in this folder."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The process pool imports task modules by name in child processes, so this
# folder must be importable as a top-level location, not only as test files.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from tasks_fixture import Toolkit  # noqa: E402


@pytest.fixture
def kit() -> Iterator[Toolkit]:
    """Yield a fresh app with the fixture tasks, and close it after the test."""
    made = Toolkit()
    yield made
    made.gate.set()
    made.app.close()
