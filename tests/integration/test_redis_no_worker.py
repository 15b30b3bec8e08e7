"""get() on Redis with no live worker: it warns once and keeps waiting."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from stem import App
from stem.cli import main
from stem.engine import result as result_module
from stem.engine.errors import TimeoutError

from .conftest import database_url

#: A flows file for `stem run`, with a task on a queue no worker reads.
FLOWS = """
from stem import App

app = App()


@app.task(name="add")
def add(x, y):
    return x + y


def pipeline():
    return add.s(1, 2).set(queue="reports") | add.s(3)
"""

#: Seconds without a live worker before get() warns, shortened for the tests.
GRACE_S = 0.5


@pytest.fixture
def app(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    monkeypatch.setattr(result_module, "NO_WORKER_GRACE_S", GRACE_S)
    instance = App(redis_url, prefix=f"stem-test-{uuid.uuid4().hex[:8]}")

    @instance.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    yield instance
    instance.close()


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "stem.engine.result" and record.levelno == logging.WARNING
    ]


def test_get_warns_once_then_waits(app: App, caplog: pytest.LogCaptureFixture) -> None:
    result = app.get_task("add").apply_async((1, 2), queue="reports")

    with (
        caplog.at_level(logging.WARNING, logger="stem.engine.result"),
        pytest.raises(TimeoutError),
    ):
        result.get(timeout=8 * GRACE_S)

    [warning] = warnings_of(caplog)
    assert result.id in warning
    assert "no worker is alive" in warning
    assert "'reports'" in warning
    assert "stem worker -A APP -Q reports" in warning


def test_get_without_timeout_waits_for_worker(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    result = app.get_task("add").delay(2, 3)
    outcome: dict[str, Any] = {}

    def wait() -> None:
        outcome["value"] = result.get()

    with caplog.at_level(logging.WARNING, logger="stem.engine.result"):
        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        waiter.join(6 * GRACE_S)
        # Still waiting after the warning, as Celery's get() does.
        assert waiter.is_alive()
        assert len(warnings_of(caplog)) == 1
        with app.worker(concurrency=1):
            waiter.join(30)

    assert not waiter.is_alive()
    assert outcome["value"] == 5
    assert len(warnings_of(caplog)) == 1


def test_get_warns_when_no_worker_reads_queue(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    # The worker is alive but reads another queue, so nothing runs this task.
    result = app.get_task("add").delay(1, 1)
    with (
        caplog.at_level(logging.WARNING, logger="stem.engine.result"),
        app.worker(concurrency=1, queues=["other"]),
        pytest.raises(TimeoutError),
    ):
        result.get(timeout=8 * GRACE_S)

    [warning] = warnings_of(caplog)
    assert result.id in warning
    assert "queue 'default', which no live worker" in warning
    assert "stem worker -A APP -Q default" in warning


def test_get_ignores_unread_queue_of_others(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task(name="nap")
    def nap(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    # A message on a queue no worker reads, but of another run.
    app.get_task("add").apply_async((1, 2), queue="reports")
    with (
        caplog.at_level(logging.WARNING, logger="stem.engine.result"),
        app.worker(concurrency=1),
    ):
        assert nap.delay(6 * GRACE_S).get(timeout=30) == 6 * GRACE_S

    assert warnings_of(caplog) == []


def test_stem_run_warns_without_worker(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Without --worker, stem run on Redis only waits. With no worker alive it
    # must print a warning, or a new user watches a progress bar that never moves.
    monkeypatch.setattr(result_module, "NO_WORKER_GRACE_S", GRACE_S)
    flows = tmp_path / f"noworker_{uuid.uuid4().hex[:8]}.py"
    flows.write_text(FLOWS, encoding="utf-8")
    # A database of its own, so no worker of another test counts as alive.
    url = database_url(redis_url, 13)
    arguments = ["run", str(flows), "--url", url, "--timeout", "3"]

    completed = CliRunner().invoke(main, arguments)

    assert completed.exit_code == 3
    assert "no worker is alive" in completed.output
    assert "(queue 'reports')" in completed.output
    assert f"stem worker -A {flows} --url {url} -Q default,reports" in completed.output
    assert "--worker" in completed.output


def test_finished_run_reads_no_heartbeats(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = app.driver
    calls: list[int | None] = []
    alive = driver.workers_alive

    def counted() -> int | None:
        found = alive()
        calls.append(found)
        return found

    monkeypatch.setattr(driver, "workers_alive", counted)
    with app.worker(concurrency=1):
        result = app.get_task("add").delay(1, 2)
        assert result.get(30) == 3
        assert result.get(30) == 3

    assert calls == []
