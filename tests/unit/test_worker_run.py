"""Worker.run: a stop signal that arrives while the worker starts is a warm stop."""

from __future__ import annotations

import pytest

from stem import App


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
