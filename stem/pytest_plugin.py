"""Pytest fixtures for Stem apps, registered through the ``pytest11`` entry point.

- ``stem_app``: an `App` on ``memory://``, closed after the test;
- ``stem_worker``: a running thread worker on ``stem_app``, stopped after
  the test;
- ``stem_redis_url``: the URL of a private ``redis-server`` on a free
  loopback port, started once per session (`stem.local_redis.LocalRedis`);
- ``stem_redis_cluster_url``: the ``redis+cluster://`` URL of a private
  3-primary Redis Cluster on loopback, started once per session.

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
from stem.local_redis import LocalRedis, LocalRedisCluster, LocalRedisError

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
    """Provide a thread worker that runs ``stem_app``'s tasks during one test.

    A message of a task that ``stem_app`` does not register is dead-lettered
    at once, because no other worker could register it, so the test fails
    without waiting out the grace period.
    """
    worker = stem_app.worker(concurrency=WORKER_CONCURRENCY, unknown_task_grace_s=0)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


@pytest.fixture(scope="session")
def stem_redis_url() -> Iterator[str]:
    """Start a private redis-server for the session and provide its URL.

    The test fails, and never skips, when the server cannot start, so a suite
    without ``redis-server`` on PATH does not pass without testing Redis.
    """
    server = LocalRedis()
    try:
        server.start()
    except LocalRedisError as err:
        server.stop()
        pytest.fail(str(err))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def stem_redis_cluster_url() -> Iterator[str]:
    """Start a private 3-primary Redis Cluster for the session and provide its URL.

    Like ``stem_redis_url``, it fails the test when the Cluster cannot start.
    """
    cluster = LocalRedisCluster()
    try:
        cluster.start()
    except LocalRedisError as err:
        pytest.fail(str(err))
    try:
        yield cluster.url
    finally:
        cluster.stop()
