"""Tasks for engine tests that need them importable by module name.

A ``processes`` pool imports each task in a spawned child by its module and
attribute, so these tasks live at module level. Tests put this folder on
``sys.path`` and import the module as ``tasks_fixture``.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from stem import App

app = App()


class FixtureError(Exception):
    """An exception class that tests import, so ``get()`` can rebuild it."""


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def total(values: list[int]) -> int:
    return sum(values)


@app.task
def child_pid(*_: Any) -> int:
    return os.getpid()


@app.task
def fail_with_fixture_error(*_: Any) -> None:
    raise FixtureError("raised in a child", 7)


class Toolkit:
    """A fresh app with a set of test tasks and a record of their calls.

    Each test builds its own, so no run, queue or call record leaks between
    tests. Calls are recorded per task name in call order.
    """

    def __init__(self) -> None:
        self.app = App()
        self.calls: dict[str, list[tuple[Any, ...]]] = {}
        self.attempts: dict[str, int] = {}
        self._lock = threading.Lock()
        self.gate = threading.Event()
        self.replacement: Any = None
        self._register_plain_tasks()
        self._register_retrying_tasks()

    def note(self, name: str, args: tuple[Any, ...]) -> None:
        """Record one call of a task."""
        with self._lock:
            self.calls.setdefault(name, []).append(args)

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
            self.gate.wait(10)
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

    def called(self, name: str) -> list[tuple[Any, ...]]:
        """Return the recorded calls of one task, in call order."""
        with self._lock:
            return list(self.calls.get(name, []))
