"""Tasks for the time-limit tests, importable by module name in child processes."""

from __future__ import annotations

import time

from stem import App
from stem.errors import SoftTimeLimitExceeded

app = App()


@app.task
def nap(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


@app.task
def clean_up_at_soft_limit(seconds: float) -> str:
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "woke"


@app.task
def ignore_soft_limit(seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(deadline - time.monotonic())
        except SoftTimeLimitExceeded:
            continue
    return "woke"


@app.task(time_limit=0.5)
def limited_by_default(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"
