"""Tasks for the process-pool tests in test_review_worker.py; it has no tests.

A ``processes`` pool imports each task in a spawned child by module name, so
these tasks live at module level in a module importable from this folder.
"""

from __future__ import annotations

import os
from typing import Any

from stem import App

app = App()


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def exit_child(*_: Any) -> None:
    os._exit(1)
