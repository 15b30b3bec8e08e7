"""An app with test tasks that record their calls, for the engine and driver tests.

The unit tests and the conformance suite import `Kit` from here. Its tasks
are closures over one instance, so a process pool cannot import them by
name: tests of the ``processes`` pool use the module-level tasks of
``tests/unit/tasks_fixture.py``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from stem import App
from stem.engine.records import TERMINAL
from stem.engine.result import AsyncResult

#: Seconds a test waits for a run, or for its side branches, to end.
TIMEOUT_S = 10.0


class Kit:
    """An app on one driver with test tasks and a record of their calls.

    Each test builds its own, so no run, queue or call record leaks between
    tests. Calls are recorded per task name in call order.
    """

    def __init__(self, url: str = "memory://", **settings: Any) -> None:
        self.app = App(url, **settings)
        self.calls: dict[str, list[tuple[Any, ...]]] = {}
        #: Attempts per task name, for tasks that fail by attempt count.
        self.attempts: dict[str, int] = {}
        self.gate = threading.Event()
        #: The canvas that the ``replace_with`` task puts in its own place.
        self.replacement: Any = None
        self._lock = threading.Lock()
        self._register_plain_tasks()
        self._register_retrying_tasks()

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

    def _register_plain_tasks(self) -> None:
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

        @app.task(name="replace_with", bind=True)
        def replace_with(task: Any, *args: Any) -> None:
            note("replace_with", args)
            task.replace(self.replacement)

        self.add = add
        self.total = total
        self.echo = echo
        self.record = record
        self.fail = fail
        self.wait_gate = wait_gate
        self.replace_with = replace_with

    def _register_retrying_tasks(self) -> None:
        app = self.app
        note = self.note

        @app.task(name="flaky", bind=True, max_retries=5)
        def flaky(task: Any, value: Any, failures: int) -> Any:
            note("flaky", (value, failures))
            if task.request.retries < failures:
                task.retry(countdown=0.01, exc=ValueError("not yet"))
            return value

        @app.task(name="always_retry", bind=True, max_retries=2)
        def always_retry(task: Any, *args: Any) -> None:
            note("always_retry", args)
            task.retry(countdown=0.01, exc=KeyError("still missing"))

        @app.task(
            name="autoretry",
            autoretry_for=(ConnectionError,),
            retry_backoff=0.01,
            retry_backoff_max=0.05,
            max_retries=4,
        )
        def autoretry(value: Any, failures: int) -> Any:
            note("autoretry", (value, failures))
            with self._lock:
                count = self.attempts.get("autoretry", 0) + 1
                self.attempts["autoretry"] = count
            if count <= failures:
                raise ConnectionError(f"attempt {count} failed")
            return value

        self.flaky = flaky
        self.always_retry = always_retry
        self.autoretry = autoretry
