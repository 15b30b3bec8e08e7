"""Soft and hard time limits in the processes pool, and the threads pool's warning.

The tasks sleep far longer than their limits, so a limit that does not work
shows as a timed-out get(), never as a timing assertion.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import time_limit_tasks as tasks

from stem import App
from stem.errors import SoftTimeLimitExceeded, TimeLimitExceeded

#: Seconds a test waits for a result; far above every limit used here.
WAIT_S = 30


@pytest.fixture
def app() -> Iterator[App]:
    yield tasks.app
    tasks.app.close()


def test_soft_limit_raises_inside_task(app: App) -> None:
    with app.worker(concurrency=1, pool="processes"):
        caught = tasks.clean_up_at_soft_limit.s(60).set(soft_time_limit=0.3)
        value = caught.apply_async().get(WAIT_S)

    assert value == "cleaned up"


def test_uncaught_soft_limit_fails_task(app: App) -> None:
    with app.worker(concurrency=1, pool="processes"):
        result = tasks.nap.s(60).set(soft_time_limit=0.3).apply_async()
        error = result.get(WAIT_S, propagate=False)

    assert isinstance(error, SoftTimeLimitExceeded)
    assert "soft time limit of 0.3 s" in str(error)
    assert result.state == "failed"


def test_soft_limit_disarmed_after_task(app: App) -> None:
    with app.worker(concurrency=1, pool="processes"):
        quick = tasks.nap.s(0).set(soft_time_limit=0.3).apply_async().get(WAIT_S)
        # Same child process, no limit: a leftover timer would interrupt it.
        slow = tasks.nap.s(0.6).apply_async().get(WAIT_S)

    assert quick == "woke"
    assert slow == "woke"


def test_hard_limit_kills_only_its_task(app: App) -> None:
    with app.worker(concurrency=2, pool="processes"):
        neighbour = tasks.nap.s(1.5).apply_async()
        stuck = tasks.ignore_soft_limit.s(60).set(soft_time_limit=0.2, time_limit=0.5)
        killed = stuck.apply_async()
        error = killed.get(WAIT_S, propagate=False)
        neighbour_value = neighbour.get(WAIT_S)
        after = tasks.nap.s(0).apply_async().get(WAIT_S)

    assert isinstance(error, TimeLimitExceeded)
    assert "time limit of 0.5 s" in str(error)
    assert neighbour_value == "woke"
    assert after == "woke"


def test_task_default_time_limit(app: App) -> None:
    with app.worker(concurrency=1, pool="processes"):
        error = tasks.limited_by_default.delay(60).get(WAIT_S, propagate=False)

    assert isinstance(error, TimeLimitExceeded)


def test_threads_pool_warns_once(app: App, caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="stem.engine.worker"),
        app.worker(concurrency=1, pool="threads"),
    ):
        for _ in range(2):
            tasks.nap.s(0).set(time_limit=5).apply_async().get(WAIT_S)

    warnings = [message for message in caplog.messages if "does not enforce" in message]
    assert warnings == [
        "Task time_limit_tasks.nap has a time limit, which the threads pool does "
        "not enforce; start the worker with --pool processes."
    ]
