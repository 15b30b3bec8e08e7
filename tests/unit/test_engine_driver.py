"""Tests of stored errors, value checks, dead letters, reports and the process pool.

Some tests drive the memory driver's ports by hand (fetch, claim, complete)
to send the duplicate and late reports that a real worker rarely sends.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import tasks_fixture
from tasks_fixture import FixtureError

from stem import Signature, chain, chord, group
from stem.canvas.values import dumps
from stem.engine.records import ErrorInfo
from stem.errors import DeadLettered, NotSerializable, TaskError

from ..task_kit import Kit

TIMEOUT_S = 5.0


def raise_in_task(kit: Kit, exc: BaseException) -> Exception:
    """Run a task that raises ``exc`` and return the error ``get()`` rebuilds."""

    @kit.app.task(name="raiser")
    def raiser() -> None:
        raise exc

    with kit.app.worker(concurrency=2):
        error = raiser.delay().get(TIMEOUT_S, propagate=False)
    assert isinstance(error, Exception)
    return error


# -- rebuilding errors -----------------------------------------------------------


def test_builtin_error_keeps_class(kit: Kit) -> None:
    error = raise_in_task(kit, KeyError("missing-key"))
    assert type(error) is KeyError
    assert error.args == ("missing-key",)


def test_imported_error_class_rebuilt(kit: Kit) -> None:
    error = raise_in_task(kit, FixtureError("detail", 7))
    assert type(error) is FixtureError
    assert error.args == ("detail", 7)


def test_rebuilt_error_notes_task_id(kit: Kit) -> None:
    @kit.app.task(name="raiser")
    def raiser() -> None:
        raise FixtureError("detail")

    with kit.app.worker(concurrency=2):
        result = raiser.delay()
        error = result.get(TIMEOUT_S, propagate=False)
    notes = getattr(error, "__notes__", [])
    assert len(notes) == 1
    assert notes[0].startswith(f"Raised by task {result.id}-0")
    assert "Traceback" in notes[0]


def test_error_propagates_from_get(kit: Kit) -> None:
    @kit.app.task(name="raiser")
    def raiser() -> None:
        raise FixtureError("propagated")

    with kit.app.worker(concurrency=2), pytest.raises(FixtureError, match="propagated"):
        raiser.delay().get(TIMEOUT_S)


def test_unimported_module_gives_task_error(kit: Kit) -> None:
    module_name = "stem_tests_never_imported_module"
    ghost = type("GhostError", (Exception,), {"__module__": module_name})
    assert module_name not in sys.modules
    error = raise_in_task(kit, ghost("boo", 3))
    assert module_name not in sys.modules
    assert isinstance(error, TaskError)
    assert error.exc_module == module_name
    assert error.exc_type == "GhostError"
    assert error.exc_args == ["boo", 3]
    assert "boo" in str(error)


def test_stored_module_never_imported(kit: Kit) -> None:
    # Importing the standard library's antigravity opens a web browser.
    ghost = type("Gravity", (Exception,), {"__module__": "antigravity"})
    assert "antigravity" not in sys.modules
    error = raise_in_task(kit, ghost("up"))
    assert "antigravity" not in sys.modules
    assert isinstance(error, TaskError)


def test_non_class_name_gives_task_error(kit: Kit) -> None:
    fake = type("system", (Exception,), {"__module__": "os"})
    error = raise_in_task(kit, fake("echo not run"))
    assert isinstance(error, TaskError)
    assert error.exc_type == "system"


def test_unbuildable_class_gives_task_error(kit: Kit) -> None:
    class NeedsKeyword(Exception):
        def __init__(self, *, code: int) -> None:
            super().__init__(f"code {code}")

    tasks_fixture.NeedsKeyword = NeedsKeyword  # type: ignore[attr-defined]
    NeedsKeyword.__module__ = "tasks_fixture"
    NeedsKeyword.__qualname__ = "NeedsKeyword"
    try:
        error = raise_in_task(kit, NeedsKeyword(code=5))
    finally:
        del tasks_fixture.NeedsKeyword  # type: ignore[attr-defined]
    assert isinstance(error, TaskError)
    assert "code 5" in str(error)


def test_unserialisable_error_args_kept_as_text(kit: Kit) -> None:
    error = raise_in_task(kit, ValueError(object()))
    assert "object object" in str(error)


# -- values that are not JSON ----------------------------------------------------


def test_unserialisable_return_fails_node(kit: Kit) -> None:
    @kit.app.task(name="returns_object")
    def returns_object() -> object:
        return object()

    result = chain(returns_object.s(), kit.echo.s()).apply_async()
    with kit.app.worker(concurrency=2):
        error = result.get(TIMEOUT_S, propagate=False)
    assert "return value of returns_object" in str(error)
    assert "not JSON-serialisable" in str(error)
    assert result.node("0").state == "failed"
    assert result.node("1").state == "cancelled"


def test_nan_return_fails_node(kit: Kit) -> None:
    @kit.app.task(name="returns_nan")
    def returns_nan() -> float:
        return float("nan")

    with kit.app.worker(concurrency=2):
        error = returns_nan.delay().get(TIMEOUT_S, propagate=False)
    assert "not finite" in str(error)


def test_not_serializable_rebuilt_as_itself(kit: Kit) -> None:
    @kit.app.task(name="returns_object")
    def returns_object() -> object:
        return object()

    with kit.app.worker(concurrency=2):
        error = returns_object.delay().get(TIMEOUT_S, propagate=False)
    assert isinstance(error, NotSerializable)
    assert "return value of returns_object" in str(error)


def test_tagged_values_round_trip(kit: Kit) -> None:
    import datetime as dt
    import decimal
    import uuid

    value = [
        dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        dt.date(2026, 1, 2),
        uuid.UUID(int=5),
        decimal.Decimal("1.10"),
        b"\x00\xff",
        (1, 2),
    ]
    with kit.app.worker(concurrency=2):
        echoed = kit.echo.delay(value).get(TIMEOUT_S)
    assert echoed[:5] == value[:5]
    assert echoed[5] == [1, 2]


@pytest.mark.parametrize(
    "bad",
    [object(), float("nan"), {1: "int key"}, {"a", "set"}],
    ids=["object", "nan", "int-key", "set"],
)
def test_bad_argument_rejected_at_submit(kit: Kit, bad: Any) -> None:
    before = kit.app.driver.runs()
    with pytest.raises(NotSerializable):
        kit.add.delay(bad, 1)
    assert kit.app.driver.runs() == before


def test_bad_nested_argument_names_place(kit: Kit) -> None:
    header = [kit.add.s(1, 1), chain(kit.add.s(1, 1), kit.add.s(object()))]
    canvas = chord(header, kit.total.s())
    with pytest.raises(NotSerializable) as caught:
        canvas.apply_async()
    assert kit.app.driver.runs() == []
    assert "args[0]" in str(caught.value)


def test_bad_kwarg_rejected_at_submit(kit: Kit) -> None:
    with pytest.raises(NotSerializable):
        group(kit.echo.s(1), kit.echo.s(value=object())).apply_async()
    assert kit.app.driver.runs() == []


def test_bad_submit_arg_rejected(kit: Kit) -> None:
    with pytest.raises(NotSerializable):
        group(kit.echo.s(), kit.echo.s()).apply_async((object(),))
    assert kit.app.driver.runs() == []


# -- unknown tasks ---------------------------------------------------------------


def test_unknown_task_dead_lettered(kit: Kit) -> None:
    canvas = chain(Signature("no.such.task"), kit.add.s(1))
    result = kit.app.submit(canvas, options={"link_error": kit.record.s()})
    with kit.app.worker(concurrency=2, unknown_task_grace_s=0):
        error = result.get(TIMEOUT_S, propagate=False)
        assert kit.app.driver.wait_idle(TIMEOUT_S)
    assert result.state == "failed"
    assert isinstance(error, DeadLettered)
    assert "no.such.task" in str(error)
    dead = kit.app.driver.dead_letters()
    assert len(dead) == 1
    assert dead[0][0].node_id == "0"
    assert "no.such.task" in dead[0][1]
    assert result.node("1").state == "cancelled"
    assert kit.called("record") == [(f"{result.id}-0",)]


# -- duplicate and late reports --------------------------------------------------


def fetch_one(kit: Kit) -> Any:
    messages = kit.app.driver.fetch(["default"], 1, 0.5)
    assert len(messages) == 1
    return messages[0]


def test_duplicate_complete_changes_nothing(kit: Kit) -> None:
    driver = kit.app.driver
    result = chain(kit.add.s(1, 1), kit.add.s(1)).apply_async()
    first = fetch_one(kit)
    assert driver.claim(first) is not None
    driver.complete(first, dumps(2))
    driver.complete(first, dumps(99))
    assert result.node("0").value == 2
    second = fetch_one(kit)
    assert second.node_id == "1"
    assert driver.fetch(["default"], 10, 0.1) == []


def test_message_names_its_task(kit: Kit) -> None:
    # Workers read the task name from this header instead of a full snapshot,
    # which made wide chords quadratic.
    kit.add.delay(1, 1)
    assert fetch_one(kit).headers["task"] == "add"


def test_duplicate_claim_is_dropped(kit: Kit) -> None:
    driver = kit.app.driver
    kit.add.delay(1, 1)
    message = fetch_one(kit)
    assert driver.claim(message) is not None
    assert driver.claim(message) is None


def test_late_report_after_end(kit: Kit) -> None:
    driver = kit.app.driver
    result = kit.add.delay(1, 1)
    message = fetch_one(kit)
    driver.claim(message)
    driver.complete(message, dumps(2))
    driver.fail(message, ErrorInfo("builtins", "ValueError", "late"))
    driver.retry(message, ErrorInfo("builtins", "ValueError", "late"), 0.0)
    assert result.state == "succeeded"
    assert result.node("0").value == 2
    assert driver.fetch(["default"], 10, 0.1) == []


def test_report_after_cancel_ignored(kit: Kit) -> None:
    driver = kit.app.driver
    result = chain(kit.add.s(1, 1), kit.add.s(1)).apply_async()
    message = fetch_one(kit)
    driver.claim(message)
    result.cancel()
    driver.complete(message, dumps(2))
    assert result.state == "cancelled"
    assert result.node("0").state == "cancelled"
    assert driver.fetch(["default"], 10, 0.1) == []


def test_stale_attempt_report_ignored(kit: Kit) -> None:
    driver = kit.app.driver
    result = kit.add.delay(1, 1)
    first = fetch_one(kit)
    driver.claim(first)
    driver.retry(first, ErrorInfo("builtins", "ValueError", "retry"), 0.0)
    second = fetch_one(kit)
    assert second.attempt == 2
    driver.claim(second)
    driver.complete(first, dumps(99))
    assert result.state == "running"
    driver.complete(second, dumps(2))
    assert result.node("0").value == 2


def test_duplicate_report_keeps_idle_accurate(kit: Kit) -> None:
    driver = kit.app.driver
    group(kit.add.s(1, 1), kit.add.s(2, 2)).apply_async()
    messages = driver.fetch(["default"], 2, 0.5)
    assert len(messages) == 2
    for message in messages:
        driver.claim(message)
    driver.complete(messages[0], dumps(2))
    driver.complete(messages[0], dumps(2))
    assert driver.wait_idle(0.2) is False
    driver.complete(messages[1], dumps(4))
    assert driver.wait_idle(0.2) is True


# -- process pool ----------------------------------------------------------------


@pytest.fixture
def fixture_app() -> Iterator[Any]:
    yield tasks_fixture.app
    tasks_fixture.app.close()


def test_process_pool_runs_chord(fixture_app: Any) -> None:
    canvas = chord(
        [tasks_fixture.add.s(1, 1), tasks_fixture.add.s(2, 2)], tasks_fixture.total.s()
    )
    with fixture_app.worker(concurrency=2, pool="processes"):
        assert canvas.apply_async().get(10) == 6
        pid = tasks_fixture.child_pid.delay().get(10)
        error = tasks_fixture.fail_with_fixture_error.delay().get(10, propagate=False)
    assert pid != os.getpid()
    assert type(error) is FixtureError
    assert error.args == ("raised in a child", 7)


def test_dead_letter_spares_running_node() -> None:
    from stem.canvas import compile_canvas
    from stem.drivers.memory import MemoryDriver

    driver = MemoryDriver()
    driver.submit("run-1", compile_canvas(Signature("t")))
    [message] = driver.fetch(["default"], 1, 1.0)
    assert driver.claim(message) is not None

    driver.dead_letter(message, "Task 't' is not registered on this worker.")

    assert driver.snapshot("run-1").nodes["0"].state == "running"
    driver.complete(message, dumps(5))
    snapshot = driver.snapshot("run-1")
    assert snapshot.status == "succeeded"
    assert len(driver.dead_letters()) == 1


def test_dead_letter_fails_queued_node() -> None:
    from stem.canvas import compile_canvas
    from stem.drivers.memory import MemoryDriver
    from stem.engine.result import rebuild_exception
    from stem.errors import DeadLettered

    driver = MemoryDriver()
    driver.submit("run-1", compile_canvas(Signature("t")))
    [message] = driver.fetch(["default"], 1, 1.0)

    driver.dead_letter(message, "Task 't' is not registered.")

    snapshot = driver.snapshot("run-1")
    assert snapshot.status == "failed"
    error = snapshot.nodes["0"].error
    assert error is not None
    assert isinstance(rebuild_exception(error, "run-1-0"), DeadLettered)
