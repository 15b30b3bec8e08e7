"""Worker.run: a stop signal that arrives while the worker starts is a warm stop."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import stem.engine.worker as worker_module
from stem import App
from stem.canvas.spec import NodeOptions
from stem.engine.ports import Message


def test_interrupt_during_start_stops_warm(monkeypatch: pytest.MonkeyPatch) -> None:
    app = App()
    worker = app.worker(concurrency=1)
    first_beat = worker._beat

    def interrupted_beat() -> None:
        # The stop signal handler of stem worker raises KeyboardInterrupt in
        # the main thread, here while start() sends the first heartbeat.
        first_beat()
        raise KeyboardInterrupt

    monkeypatch.setattr(worker, "_beat", interrupted_beat)

    try:
        worker.run(1.0)
    except KeyboardInterrupt:
        pytest.fail("Worker.run let the KeyboardInterrupt raised in start() out.")

    assert worker.in_flight == 0
    assert worker.abandoned == 0
    app.close()


def _blocking_reports(
    monkeypatch: pytest.MonkeyPatch, app: App, *, fail_first: bool
) -> tuple[list[list[str]], threading.Event, threading.Event]:
    """Replace complete_many with one whose first call waits for a release.

    Returns the node ids of each batch sent, an event set once the first
    call started, and the event that releases it.
    """
    batches: list[list[str]] = []
    started = threading.Event()
    release = threading.Event()

    def complete_many(reports: list[tuple[Message, str]]) -> None:
        batches.append([message.node_id for message, _ in reports])
        if len(batches) == 1:
            started.set()
            assert release.wait(5.0), "the test never released the first batch"
            if fail_first:
                raise ConnectionError("planned failure")

    monkeypatch.setattr(app.driver, "complete_many", complete_many)
    return batches, started, release


def test_overlapping_successes_share_a_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    app = App()
    worker = app.worker(concurrency=4)
    batches, started, release = _blocking_reports(monkeypatch, app, fail_first=False)
    reporter = threading.Thread(
        target=worker._report_success, args=(Message("run", "0", 1), "0")
    )
    reporter.start()
    assert started.wait(5.0)

    # A report in progress: these return at once and join the next batch.
    worker._report_success(Message("run", "1", 1), "1")
    worker._report_success(Message("run", "2", 1), "2")
    release.set()
    reporter.join(5.0)

    assert not reporter.is_alive()
    assert batches == [["0"], ["1", "2"]]
    assert worker._successes == []
    assert not worker._reporting
    app.close()


def test_failed_batch_keeps_reporting(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app = App()
    worker = app.worker(concurrency=2)
    batches, started, release = _blocking_reports(monkeypatch, app, fail_first=True)
    reporter = threading.Thread(
        target=worker._report_success, args=(Message("run", "0", 1), "0")
    )
    reporter.start()
    assert started.wait(5.0)
    worker._report_success(Message("run", "1", 1), "1")
    release.set()
    reporter.join(5.0)

    assert not reporter.is_alive()
    assert batches == [["0"], ["1"]]
    assert not worker._reporting
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [
        "Reporting the values of 1 tasks failed, so their messages are "
        "delivered again after the visibility timeout: run/0."
    ]
    app.close()


def test_interrupted_report_frees_reporting(monkeypatch: pytest.MonkeyPatch) -> None:
    app = App()
    worker = app.worker(concurrency=1)
    sent: list[list[str]] = []

    def complete_many(reports: list[tuple[Message, str]]) -> None:
        if not sent:
            sent.append([])
            raise KeyboardInterrupt
        sent.append([message.node_id for message, _ in reports])

    monkeypatch.setattr(app.driver, "complete_many", complete_many)

    with pytest.raises(KeyboardInterrupt):
        worker._report_success(Message("run", "0", 1), "0")
    assert not worker._reporting
    worker._report_success(Message("run", "1", 1), "1")

    assert sent == [[], ["1"]]
    assert not worker._reporting
    app.close()


def _hold_slots(worker: Any, count: int) -> None:
    for _ in range(count):
        assert worker._slots.acquire(blocking=False)


def test_take_slots_takes_all_free() -> None:
    app = App()
    worker = app.worker(concurrency=4)

    assert worker._take_slots() == 8
    assert not worker._slots.acquire(blocking=False)
    app.close()


def test_take_slots_waits_for_half_concurrency() -> None:
    app = App()
    worker = app.worker(concurrency=4)
    # Seven claimed tasks hold their slots, so at least three are buffered.
    _hold_slots(worker, 7)
    releaser = threading.Timer(0.05, worker._slots.release)
    releaser.start()

    free = worker._take_slots()
    releaser.join()

    assert free == 2
    assert not worker._slots.acquire(blocking=False)
    app.close()


def test_take_slots_fetches_after_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    app = App()
    worker = app.worker(concurrency=4)
    monkeypatch.setattr(worker_module, "FETCH_TIMEOUT_S", 0.05)
    _hold_slots(worker, 7)

    assert worker._take_slots() == 1
    app.close()


def test_take_slots_returns_when_stopping() -> None:
    app = App()
    worker = app.worker(concurrency=4)
    _hold_slots(worker, 7)
    worker._stop.set()

    assert worker._take_slots() == 1
    app.close()


def test_take_slots_single_thread_takes_one() -> None:
    app = App()
    worker = app.worker(concurrency=1)
    _hold_slots(worker, 1)

    assert worker._take_slots() == 1
    app.close()


@pytest.mark.parametrize(
    ("task_options", "node_options", "expected"),
    [
        ({}, {}, {}),
        ({}, {"queue": "q"}, {}),
        ({"max_retries": None}, {"queue": "q"}, {"max_retries": None}),
        ({"max_retries": 5, "queue": "q"}, {}, {"max_retries": 5}),
        ({"retry_backoff": 2.0}, {}, {"retry_backoff": 2.0}),
        (
            {"retry_backoff": True},
            {"retry_jitter": False},
            {
                "retry_backoff": True,
                "retry_jitter": False,
            },
        ),
        ({"max_retries": 5}, {"max_retries": 2}, {"max_retries": 2}),
        (
            {"max_retries": None},
            {"default_retry_delay": 1.0},
            {
                "max_retries": None,
                "default_retry_delay": 1.0,
            },
        ),
        ({}, {"max_retries": None, "queue": "q"}, {}),
    ],
)
def test_retry_policy_node_over_task(
    task_options: dict[str, Any], node_options: dict[str, Any], expected: Any
) -> None:
    app = App("memory://")
    task = app.task(name="t", **task_options)(lambda: None)

    policy = worker_module._retry_policy(task, NodeOptions(**node_options))

    assert policy == expected
    app.close()
