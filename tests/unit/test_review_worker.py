"""Tasks that misbehave: every run still ends, and the worker keeps working."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
import test_review_pool_tasks as pool_tasks

from stem import App, group
from stem.engine.errors import TaskError
from stem.engine.execution import backoff_s
from stem.engine.records import ErrorInfo
from stem.engine.result import rebuild_exception


class UnprintableError(Exception):
    """An exception whose ``str()`` itself raises."""

    def __str__(self) -> str:
        raise RuntimeError("str() failed")


class ExitError(BaseException):
    """A BaseException that is neither SystemExit nor KeyboardInterrupt."""


@pytest.fixture
def app() -> Iterator[App]:
    made = App()
    _register_bad_values(made)
    _register_bad_errors(made)
    yield made
    made.close()


def _register_bad_values(made: App) -> None:
    @made.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    @made.task(name="huge")
    def huge() -> int:
        return 10**5000

    @made.task(name="deep")
    def deep() -> list[Any]:
        value: list[Any] = []
        for _ in range(5000):
            value = [value]
        return value

    @made.task(name="replace_deep", bind=True)
    def replace_deep(task: Any) -> None:
        canvas: Any = add.s(1, 1)
        for _ in range(2000):
            canvas = group(canvas)
        task.replace(canvas)


def _register_bad_errors(made: App) -> None:
    @made.task(name="unprintable")
    def unprintable() -> None:
        raise UnprintableError()

    @made.task(name="deep_error")
    def deep_error() -> None:
        value: list[Any] = []
        for _ in range(5000):
            value = [value]
        raise ValueError(value)

    @made.task(name="system_exit")
    def system_exit() -> None:
        raise SystemExit(3)

    @made.task(name="base_exception")
    def base_exception() -> None:
        raise ExitError("stop")

    @made.task(name="retry_forever", bind=True)
    def retry_forever(task: Any) -> None:
        task.retry(countdown=10**400)


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("huge", "digits"),
        ("deep", "nested"),
        ("unprintable", "UnprintableError"),
        ("deep_error", "planned"),
        ("system_exit", "SystemExit"),
        ("base_exception", "ExitError"),
        ("retry_forever", "countdown"),
        ("replace_deep", "nested"),
    ],
)
def test_misbehaving_task_fails_run(app: App, task: str, expected: str) -> None:
    with app.worker(concurrency=1):
        result = app.tasks[task].s().apply_async()
        error = result.get(timeout=10, propagate=False)
        follow_up = app.tasks["add"].s(1, 2).apply_async().get(timeout=10)
    assert result.state == "failed"
    if expected != "planned":
        # str() would raise for UnprintableError, so describe the error by its args.
        assert expected in f"{type(error).__name__}: {error.args!r}"
    assert follow_up == 3


def test_process_pool_survives_child_exit() -> None:
    app = pool_tasks.app
    with app.worker(concurrency=1, pool="processes"):
        dead = pool_tasks.exit_child.s().apply_async()
        error = dead.get(timeout=20, propagate=False)
        after = pool_tasks.add.s(1, 2).apply_async().get(timeout=10)
    assert dead.state == "failed"
    assert "BrokenProcessPool" in f"{type(error).__name__}: {error}"
    assert after == 3


def test_rebuild_skips_module_getattr() -> None:
    # concurrent.futures imports its executors lazily from a module __getattr__.
    import concurrent.futures  # noqa: F401

    sys.modules.pop("concurrent.futures.thread", None)
    stored = ErrorInfo("concurrent.futures", "ThreadPoolExecutor", "x", [])
    error = rebuild_exception(stored, "run-0")
    assert isinstance(error, TaskError)
    assert "concurrent.futures.thread" not in sys.modules


def test_rebuild_finds_nested_class() -> None:
    stored = ErrorInfo(__name__, "UnprintableError", "x", [])
    assert isinstance(rebuild_exception(stored, "run-0"), UnprintableError)


def test_backoff_after_many_retries() -> None:
    policy = {"retry_backoff": True, "retry_jitter": False}
    assert backoff_s(policy, 5000) == 600.0
