"""Fixtures that run each conformance test on every driver.

``kit`` is parametrised over ``memory://`` and the Redis configurations of
the session (``redis_target_for`` in tests/conftest.py): a private Redis
server with one partition and with three, and a private 3-primary Redis
Cluster. ``redis-shards`` is the three-partition server with a shard size of
2, so every chord of three or more members whose header can be cut runs
through shard runs. On Redis each test gets its own key prefix, so no run,
queue or dead letter leaks between tests.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from stem import App
from stem.engine.records import TERMINAL
from stem.engine.result import AsyncResult

#: Seconds a test waits for a run, or for its side branches, to end.
TIMEOUT_S = 10.0
#: Redis driver settings small enough that most runs of the suite are large
#: runs: written in chunks, sealed, and their roots released in slices.
#: A callback that reads more than one node reads its inputs in pages.
REDIS_SMALL_LIMITS: dict[str, Any] = {
    "submit_chunk": 24,
    "release_slice": 2,
    "inline_input_chars": 2,
}


class Kit:
    """An app on one driver with test tasks and a record of their calls."""

    def __init__(self, url: str, **settings: Any) -> None:
        self.app = App(url, **settings)
        self.calls: dict[str, list[tuple[Any, ...]]] = {}
        self.gate = threading.Event()
        #: The canvas that the ``replace_with`` task puts in its own place.
        self.replacement: Any = None
        self._lock = threading.Lock()
        self._register()

    def note(self, name: str, args: tuple[Any, ...]) -> None:
        """Record one call of a task."""
        with self._lock:
            self.calls.setdefault(name, []).append(args)

    def called(self, name: str) -> list[tuple[Any, ...]]:
        """Return the recorded calls of one task, in call order."""
        with self._lock:
            return list(self.calls.get(name, []))

    def settle(self, result: AsyncResult, timeout_s: float = TIMEOUT_S) -> None:
        """Wait until every node of the run, links and errbacks too, has ended."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = [node.state for node in result.nodes().values()]
            if all(state in TERMINAL for state in states):
                return
            time.sleep(0.02)
        raise AssertionError(f"Run {result.id} still has open nodes: {result.nodes()}")

    def _register(self) -> None:
        app = self.app
        note = self.note

        @app.task(name="add")
        def add(x: int, y: int) -> int:
            note("add", (x, y))
            return x + y

        @app.task(name="total")
        def total(values: list[Any]) -> Any:
            note("total", (values,))
            return sum(values)

        @app.task(name="echo")
        def echo(*args: Any) -> Any:
            note("echo", args)
            return args[0] if len(args) == 1 else list(args)

        @app.task(name="record")
        def record(*args: Any) -> None:
            note("record", args)

        @app.task(name="fail")
        def fail(*args: Any) -> None:
            note("fail", args)
            raise ValueError("planned failure")

        @app.task(name="wait_gate")
        def wait_gate(*args: Any) -> str:
            note("wait_gate", args)
            self.gate.wait(TIMEOUT_S)
            return "opened"

        @app.task(name="flaky", bind=True, max_retries=5)
        def flaky(task: Any, value: Any, failures: int) -> Any:
            note("flaky", (value, failures))
            if task.request.retries < failures:
                task.retry(countdown=0.01, exc=ValueError("not yet"))
            return value

        @app.task(name="replace_with", bind=True)
        def replace_with(task: Any, *args: Any) -> None:
            note("replace_with", args)
            task.replace(self.replacement)

        self.add = add
        self.replace_with = replace_with
        self.total = total
        self.echo = echo
        self.record = record
        self.fail = fail
        self.wait_gate = wait_gate
        self.flaky = flaky


#: Driver settings of the ``redis-shards`` configuration, on ``redis-3p``.
REDIS_SHARDS: dict[str, Any] = {"shard_size": 2}


@pytest.fixture(params=["memory", "redis", "redis-3p", "redis-shards", "cluster"])
def driver_name(request: pytest.FixtureRequest) -> str:
    """Name each driver the conformance suite runs on."""
    name: str = request.param
    return name


@pytest.fixture
def make_kit(
    driver_name: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Kit]]:
    """Yield a factory of fresh apps on one driver with driver settings.

    Every app it made is closed after the test.
    """
    made: list[Kit] = []

    def make(**settings: Any) -> Kit:
        if driver_name == "memory":
            instance = Kit("memory://", **settings)
        else:
            sharded = driver_name == "redis-shards"
            target_name = "redis-3p" if sharded else driver_name
            target = request.getfixturevalue("redis_targets")(target_name)
            prefix = f"test-{uuid.uuid4().hex[:12]}:"
            shards = REDIS_SHARDS if sharded else {}
            instance = Kit(
                target.url,
                prefix=prefix,
                **{**target.settings, **REDIS_SMALL_LIMITS, **shards, **settings},
            )
        made.append(instance)
        return instance

    yield make
    for instance in made:
        instance.gate.set()
        instance.app.close()


@pytest.fixture
def kit(make_kit: Callable[..., Kit]) -> Kit:
    """Return a fresh app with the test tasks on one driver, closed after the test."""
    return make_kit()
