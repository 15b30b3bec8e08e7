"""Celery 5.7's benchmark tasks, with Redis as broker and result backend.

The worker is ``celery -A celery_app worker`` run from this folder; both it
and the client read the server's URL from BENCH_REDIS_URL.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

url = os.environ.get("BENCH_REDIS_URL", "")
app = Celery("bench", broker=url, backend=url)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    result_expires=None,
)


@app.task
def noop() -> None:
    """Do nothing: the cost measured is Celery's."""


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
