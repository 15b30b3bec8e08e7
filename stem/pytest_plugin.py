"""Pytest fixtures for Stem apps, registered through the ``pytest11`` entry point.

- ``stem_app``: an `App` on ``memory://``, closed after the test;
- ``stem_worker``: a running thread worker on ``stem_app``, stopped after
  the test.

Register tasks on ``stem_app`` inside the test (or in a fixture of your own),
then submit canvases while ``stem_worker`` runs them. This module imports
nothing optional, so installing Stem without the ``testing`` extra does not
break pytest.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stem.engine.app import App
from stem.engine.worker import Worker

#: Threads of the ``stem_worker`` fixture's pool.
WORKER_CONCURRENCY = 4


@pytest.fixture
def stem_app() -> Iterator[App]:
    """Provide an in-process Stem app (``memory://``) for one test."""
    app = App("memory://", name="stem-test")
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def stem_worker(stem_app: App) -> Iterator[Worker]:
    """Provide a thread worker that runs ``stem_app``'s tasks during one test."""
    worker = stem_app.worker(concurrency=WORKER_CONCURRENCY)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()
