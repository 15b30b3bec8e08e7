"""How a worker treats a message of a task it does not register.

Within the grace period it defers the message through the delayed set, so
a worker that registers the task can run it. After the grace period the
message is dead-lettered. These are the cases that only the worker decides,
and tests/conformance runs the driver side on every driver.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from stem import group
from stem.canvas.primitives import Signature
from stem.engine.app import App
from stem.engine.ports import Message
from stem.engine.worker import Worker
from stem.errors import DeadLettered

from ..task_kit import TIMEOUT_S, Kit


@pytest.fixture
def kit() -> Any:
    instance = Kit("memory://")
    yield instance
    instance.app.close()


def _fetch_one(kit: Kit) -> Message:
    [message] = kit.app.driver.fetch(["default"], 1, TIMEOUT_S)
    return message


def _wait_until_delayed(kit: Kit, count: int) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while kit.app.driver.delayed_count() != count:
        assert time.monotonic() < deadline, f"{count} messages were never deferred."
        time.sleep(0.01)


def test_unknown_task_warned_once_per_name(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    canvas = group(
        Signature("tasks.first"), Signature("tasks.first"), Signature("tasks.second")
    )
    kit.app.submit(canvas)
    with (
        caplog.at_level(logging.WARNING, logger="stem.engine.worker"),
        kit.app.worker(concurrency=2, unknown_task_grace_s=3 * TIMEOUT_S),
    ):
        _wait_until_delayed(kit, 3)
    warnings = [record.getMessage() for record in caplog.records]
    assert sum("'tasks.first' is not registered" in text for text in warnings) == 1
    assert sum("'tasks.second' is not registered" in text for text in warnings) == 1
    assert kit.app.driver.dead_letters() == []


def test_reclaimed_unknown_task_left_pending(kit: Kit) -> None:
    driver = kit.app.driver
    result = kit.app.submit(Signature("tasks.missing"))
    message = dataclasses.replace(_fetch_one(kit), reclaimed=True)
    worker = kit.app.worker(unknown_task_grace_s=60)

    assert worker._claim_batch([message]) == []

    assert driver.delayed_count() == 0
    assert driver.dead_letters() == []
    assert result.node("0").state == "queued"


def test_unknown_enqueue_time_ends_grace(kit: Kit) -> None:
    driver = kit.app.driver
    result = kit.app.submit(Signature("tasks.missing"))
    message = dataclasses.replace(_fetch_one(kit), enqueued_at=0.0)
    worker = kit.app.worker(unknown_task_grace_s=60)

    assert worker._claim_batch([message]) == []

    [(_, reason)] = driver.dead_letters()
    assert "unknown_task_grace_s (60 s)" in reason
    assert reason.endswith("in the worker, then submit the run again.")
    assert result.state == "failed"


@pytest.mark.parametrize(
    ("age_s", "expected_s"),
    [(0.0, 1.0), (4.0, 4.0), (30.0, 10.0), (58.5, 1.5)],
)
def test_defer_delay_follows_age(
    kit: Kit, monkeypatch: pytest.MonkeyPatch, age_s: float, expected_s: float
) -> None:
    driver = kit.app.driver
    kit.app.submit(Signature("tasks.missing"))
    delays: list[float] = []
    monkeypatch.setattr(
        driver, "defer", lambda _message, delay_s: delays.append(delay_s)
    )
    now = 1_000_000.0
    monkeypatch.setattr(time, "time", lambda: now)
    message = dataclasses.replace(_fetch_one(kit), enqueued_at=now - age_s)
    worker = kit.app.worker(unknown_task_grace_s=60)

    worker._claim_batch([message])

    assert delays == [pytest.approx(expected_s)]


@pytest.mark.parametrize("grace", [-1, math.nan, math.inf, "60", True, None])
def test_invalid_grace_rejected(kit: Kit, grace: Any) -> None:
    with pytest.raises(ValueError, match=r"unknown_task_grace_s .* is invalid"):
        Worker(kit.app, unknown_task_grace_s=grace)


def test_zero_grace_dead_letters_at_once(kit: Kit) -> None:
    driver = kit.app.driver
    kit.app.submit(Signature("tasks.missing"))
    worker = kit.app.worker(unknown_task_grace_s=0)

    worker._claim_batch([_fetch_one(kit)])

    assert driver.delayed_count() == 0
    [(_, reason)] = driver.dead_letters()
    assert "'tasks.missing' is not registered" in reason


def test_stem_worker_fixture_dead_letters_at_once(
    stem_app: App, stem_worker: Worker
) -> None:
    result = stem_app.submit(Signature("tasks.missing"))

    error = result.get(TIMEOUT_S, propagate=False)

    assert isinstance(error, DeadLettered)


@pytest.mark.parametrize("grace", ["-1", "inf", "nan"])
def test_worker_command_rejects_grace(tmp_path: Path, grace: str) -> None:
    from stem.cli import main

    (tmp_path / "flows.py").write_text("from stem import App\n\napp = App()\n")
    # The grace is checked before the driver connects, so no server is needed.
    args = [
        "worker",
        "-A",
        str(tmp_path / "flows.py"),
        "--url",
        "redis://127.0.0.1:1/0",
    ]

    result = CliRunner().invoke(main, [*args, "--unknown-task-grace", grace])

    assert result.exit_code == 2, result.output


def test_zero_grace_ignores_clock_skew(kit: Kit) -> None:
    driver = kit.app.driver
    kit.app.submit(Signature("tasks.missing"))
    # Queued "in the future": the worker's clock is behind the broker's.
    message = dataclasses.replace(_fetch_one(kit), enqueued_at=time.time() + 5.0)
    worker = kit.app.worker(unknown_task_grace_s=0)

    worker._claim_batch([message])

    assert driver.delayed_count() == 0
    assert len(driver.dead_letters()) == 1
