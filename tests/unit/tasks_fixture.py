"""Tasks for engine tests that need them importable by module name.

A ``processes`` pool imports each task in a spawned child by its module and
attribute, so these tasks live at module level. Tests put this folder on
``sys.path`` and import the module as ``tasks_fixture``. The tasks of a
fresh app per test are in ``tests/task_kit.py``.
"""

from __future__ import annotations

import os
from typing import Any

from stem import App

app = App()


class FixtureError(Exception):
    """An exception class that tests import, so ``get()`` can rebuild it."""


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def total(values: list[int]) -> int:
    return sum(values)


@app.task
def child_pid(*_: Any) -> int:
    return os.getpid()


@app.task
def fail_with_fixture_error(*_: Any) -> None:
    raise FixtureError("raised in a child", 7)
