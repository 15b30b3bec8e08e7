"""Fixtures shared by the engine tests in this folder."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..task_kit import Kit

# The process pool imports task modules by name in child processes, so this
# folder must be importable as a top-level location, not only as test files.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture
def kit() -> Iterator[Kit]:
    """Yield a fresh app on memory:// with the test tasks, closed after the test."""
    made = Kit()
    yield made
    made.gate.set()
    made.app.close()
