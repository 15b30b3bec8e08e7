"""Stem's benchmark tasks; `stem worker -A bench/stem_tasks.py` loads this file.

The URL is given to the worker with ``--url`` and set by the client, so
importing this module never connects anywhere.
"""

from __future__ import annotations

import time
from typing import Any

from stem import App

app = App(name="bench")


@app.task
def noop() -> None:
    """Do nothing: the cost measured is the engine's."""


@app.task
def member(index: int) -> int:
    """A chord member: return its index."""
    return index


@app.task
def collect(values: list[int]) -> dict[str, Any]:
    """A chord callback: note when the body started and check the input."""
    started = time.time()
    return {"start": started, "n": len(values), "sum": sum(values)}


@app.task
def step(previous: float) -> float:
    """A chain step: return when the body started."""
    return time.time()
