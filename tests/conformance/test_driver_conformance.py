"""Behaviour every driver must show, run on memory:// and on a private Redis.

Each test runs real canvases through a thread-pool worker and checks values,
errors, node states and how often side branches ran.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from stem import chain, chord, group, is_error_record
from stem.canvas.primitives import Signature
from stem.engine.ports import Message
from stem.engine.records import MAX_ERROR_TEXT_BYTES
from stem.errors import DeadLettered

from .conftest import TIMEOUT_S, Kit

# -- values of each shape --------------------------------------------------------


def test_chain_value(kit: Kit) -> None:
    canvas = chain(kit.add.s(1, 2), kit.add.s(3), kit.add.s(4))
    with kit.app.worker(concurrency=4):
        assert canvas.apply_async().get(TIMEOUT_S) == 10


def test_group_value_in_order(kit: Kit) -> None:
    canvas = group(kit.add.s(i, i) for i in range(6))
    with kit.app.worker(concurrency=4):
        assert canvas.apply_async().get(TIMEOUT_S) == [0, 2, 4, 6, 8, 10]


def test_chord_value(kit: Kit) -> None:
    canvas = chord([kit.add.s(i, 1) for i in range(5)], kit.total.s())
    with kit.app.worker(concurrency=4):
        assert canvas.apply_async().get(TIMEOUT_S) == 15
    assert len(kit.called("total")) == 1


def test_nested_groups_stay_nested(kit: Kit) -> None:
    canvas = group(
        group(kit.add.s(1, 1), kit.add.s(2, 2)),
        kit.add.s(3, 3),
        group(kit.add.s(4, 4)),
        group(),
    )
    with kit.app.worker(concurrency=4):
        assert canvas.apply_async().get(TIMEOUT_S) == [[2, 4], 6, [8], []]


def test_empty_group_gives_empty_list(kit: Kit) -> None:
    with kit.app.worker(concurrency=4):
        assert kit.app.submit(group()).get(TIMEOUT_S) == []


def test_one_member_group_gives_list(kit: Kit) -> None:
    with kit.app.worker(concurrency=4):
        assert group(kit.add.s(1, 1)).apply_async().get(TIMEOUT_S) == [2]


def test_chain_with_submit_args(kit: Kit) -> None:
    canvas = chain(kit.add.s(2), kit.add.s(3))
    with kit.app.worker(concurrency=4):
        assert canvas.apply_async((1,)).get(TIMEOUT_S) == 6


# -- failures --------------------------------------------------------------------


def test_failure_cancels_downstream(kit: Kit) -> None:
    result = chain(kit.fail.s(), kit.add.s(1), kit.add.s(2)).apply_async()
    with (
        kit.app.worker(concurrency=4),
        pytest.raises(ValueError, match="planned failure"),
    ):
        result.get(TIMEOUT_S)
    states = [node.state for node in result.nodes().values()]
    assert states == ["failed", "cancelled", "cancelled"]
    assert kit.called("add") == []


def test_failed_header_cancels_body(kit: Kit) -> None:
    result = chord([kit.add.s(1, 1), kit.fail.s()], kit.total.s()).apply_async()
    with kit.app.worker(concurrency=4):
        with pytest.raises(ValueError, match="planned failure"):
            result.get(TIMEOUT_S)
        kit.settle(result)
    assert result.node("2").state == "cancelled"
    assert kit.called("total") == []


def test_lowest_failed_node_is_error(kit: Kit) -> None:
    @kit.app.task(name="fail_other")
    def fail_other() -> None:
        raise KeyError("second failure")

    result = group(kit.add.s(1, 1), kit.fail.s(), fail_other.s()).apply_async()
    with kit.app.worker(concurrency=4):
        error = result.get(TIMEOUT_S, propagate=False)
    assert isinstance(error, ValueError)


def test_errback_once_with_failed_task_id(kit: Kit) -> None:
    canvas = chain(kit.add.s(1, 1), kit.fail.s(), kit.add.s(1))
    result = canvas.apply_async(link_error=kit.record.s())
    with kit.app.worker(concurrency=4):
        result.get(TIMEOUT_S, propagate=False)
        kit.settle(result)
    assert kit.called("record") == [(f"{result.id}-1",)]


def test_errback_once_for_two_failures(kit: Kit) -> None:
    canvas = group(kit.fail.s(), kit.fail.s(), kit.add.s(1, 1))
    result = canvas.apply_async(link_error=kit.record.s())
    with kit.app.worker(concurrency=4):
        result.get(TIMEOUT_S, propagate=False)
        kit.settle(result)
    calls = kit.called("record")
    assert len(calls) == 1
    assert calls[0][0] in (f"{result.id}-0", f"{result.id}-1")


def test_errback_skipped_on_success(kit: Kit) -> None:
    result = kit.add.apply_async((1, 1), link_error=kit.record.s())
    with kit.app.worker(concurrency=4):
        assert result.get(TIMEOUT_S) == 2
        kit.settle(result)
    states = {node.task: node.state for node in result.nodes().values()}
    assert states["record"] == "skipped"
    assert kit.called("record") == []


def test_link_gets_canvas_value(kit: Kit) -> None:
    result = chain(kit.add.s(1, 1), kit.add.s(1)).apply_async(link=kit.record.s())
    with kit.app.worker(concurrency=4):
        assert result.get(TIMEOUT_S) == 3
        kit.settle(result)
    assert kit.called("record") == [(3,)]


def test_link_skipped_on_failure(kit: Kit) -> None:
    result = kit.fail.apply_async(link=kit.record.s())
    with kit.app.worker(concurrency=4):
        result.get(TIMEOUT_S, propagate=False)
        kit.settle(result)
    states = {node.task: node.state for node in result.nodes().values()}
    assert states["record"] == "skipped"
    assert kit.called("record") == []


def test_link_skipped_through_empty_member(kit: Kit) -> None:
    # The empty header member passes fail on to echo, which is skipped with
    # the rest of the link because fail did not succeed.
    link = chord([kit.add.si(1, 1), group()], kit.echo.s())
    result = kit.fail.apply_async(link=link)
    with kit.app.worker(concurrency=4):
        result.get(TIMEOUT_S, propagate=False)
        kit.settle(result)
    states = {node.task: node.state for node in result.nodes().values()}
    assert states["add"] == "skipped"
    assert states["echo"] == "skipped"
    assert kit.called("echo") == []


def test_all_settled_error_records(kit: Kit) -> None:
    header = [kit.add.s(1, 1), kit.fail.s(), kit.add.s(2, 2)]
    canvas = chord(header, kit.echo.s(), join="all_settled")
    with kit.app.worker(concurrency=4):
        value = canvas.apply_async().get(TIMEOUT_S)
    assert value[0] == 2
    assert value[2] == 4
    assert is_error_record(value[1])
    detail = value[1]["__stem_error__"]
    assert detail["state"] == "failed"
    assert detail["task"] == "fail"
    assert detail["type"] == "ValueError"
    assert detail["message"] == "planned failure"


def test_absorbed_failure_keeps_errback_silent(kit: Kit) -> None:
    canvas = chord([kit.add.s(1, 1), kit.fail.s()], kit.echo.s(), join="all_settled")
    result = canvas.apply_async(link_error=kit.record.s())
    with kit.app.worker(concurrency=4):
        result.get(TIMEOUT_S)
        kit.settle(result)
    assert result.state == "succeeded"
    assert kit.called("record") == []


def test_absorbed_failure_fails_other_member(kit: Kit) -> None:
    # The chord absorbs fail's failure, but the group's empty second member
    # needs fail's value, so the run fails.
    header = [kit.add.si(1, 1), group()]
    members = group(chord(header, group(), join="all_settled"), group())
    result = chain(kit.fail.s(), members).apply_async()
    with (
        kit.app.worker(concurrency=4),
        pytest.raises(ValueError, match="planned failure"),
    ):
        result.get(TIMEOUT_S)
    assert result.state == "failed"


# -- retries, duplicates and idempotency -------------------------------------------


def test_retry_inside_chord_header(kit: Kit) -> None:
    canvas = chord([kit.flaky.s(5, 2), kit.add.s(1, 1)], kit.total.s())
    with kit.app.worker(concurrency=4):
        assert canvas.apply_async().get(TIMEOUT_S) == 7
    assert len(kit.called("flaky")) == 3
    assert kit.called("total") == [([5, 2],)]


def test_succeeded_node_keeps_no_error_of_its_retries(kit: Kit) -> None:
    result = kit.flaky.s(5, 2).apply_async()
    with kit.app.worker(concurrency=1):
        assert result.get(TIMEOUT_S) == 5
    [node] = result.nodes().values()
    assert node.state == "succeeded"
    assert node.attempts == 3
    assert node.error is None


def test_duplicate_report_changes_nothing(kit: Kit) -> None:
    driver = kit.app.driver
    result = chain(kit.add.s(1, 1), kit.add.s(2)).apply_async()
    [message] = driver.fetch(["default"], 1, TIMEOUT_S)
    claim = driver.claim(message)
    assert claim is not None
    driver.complete(message, "2")
    before = driver.snapshot(result.id)

    driver.complete(message, "99")
    driver.fail(message, _error())
    after = driver.snapshot(result.id)

    assert after.nodes == before.nodes
    [second] = driver.fetch(["default"], 5, TIMEOUT_S)
    assert second.node_id == "1"
    assert driver.fetch(["default"], 5, 0.1) == []


def test_duplicate_message_dropped_at_claim(kit: Kit) -> None:
    driver = kit.app.driver
    result = kit.add.apply_async((1, 1))
    [message] = driver.fetch(["default"], 1, TIMEOUT_S)
    copy = Message(message.run_id, message.node_id, message.attempt, message.queue)

    assert driver.claim(message) is not None
    assert driver.claim(copy) is None
    assert driver.snapshot(result.id).nodes["0"].state == "running"


def test_takeover_raises_lease(kit: Kit) -> None:
    driver = kit.app.driver
    result = kit.add.apply_async((1, 1))
    [message] = driver.fetch(["default"], 1, TIMEOUT_S)
    first = driver.claim(message)
    assert first is not None

    reclaimed = dataclasses.replace(message, reclaimed=True)
    second = driver.claim(reclaimed)

    assert second is not None
    assert first.message.lease == 1
    assert second.message.lease == 2
    assert not second.message.reclaimed
    assert second.args == [1, 1]
    node = driver.snapshot(result.id).nodes["0"]
    assert node.state == "running"
    assert node.lease == 2


def test_fenced_late_report_changes_nothing(kit: Kit) -> None:
    driver = kit.app.driver
    result = chain(kit.add.s(1, 1), kit.add.s(2)).apply_async()
    [message] = driver.fetch(["default"], 1, TIMEOUT_S)
    fenced = driver.claim(message)
    taken = driver.claim(dataclasses.replace(message, reclaimed=True))
    assert fenced is not None
    assert taken is not None
    before = driver.snapshot(result.id)

    driver.complete(fenced.message, "99")
    driver.fail(fenced.message, _error())
    driver.retry(fenced.message, _error(), 0.0)

    assert driver.snapshot(result.id).nodes == before.nodes
    assert driver.fetch(["default"], 5, 0.1) == []
    driver.complete(taken.message, "2")
    snapshot = driver.snapshot(result.id)
    assert snapshot.nodes["0"].value == "2"
    [second] = driver.fetch(["default"], 5, TIMEOUT_S)
    assert second.node_id == "1"


def test_takeover_of_ended_attempt_dropped(kit: Kit) -> None:
    driver = kit.app.driver
    result = kit.add.apply_async((1, 1))
    [message] = driver.fetch(["default"], 1, TIMEOUT_S)
    claim = driver.claim(message)
    assert claim is not None
    driver.complete(claim.message, "2")

    assert driver.claim(dataclasses.replace(message, reclaimed=True)) is None
    assert driver.snapshot(result.id).nodes["0"].lease == 1


def test_renew_keeps_lease(kit: Kit) -> None:
    driver = kit.app.driver
    kit.add.apply_async((1, 1))
    [message] = driver.fetch(["default"], 1, TIMEOUT_S)
    claim = driver.claim(message)
    assert claim is not None

    assert driver.renew(claim.message) is True


def test_run_id_makes_submit_idempotent(kit: Kit) -> None:
    canvas = chain(kit.add.s(1, 1), kit.add.s(1))
    first = canvas.apply_async(run_id="fixed-run")
    second = canvas.apply_async(run_id="fixed-run")
    with kit.app.worker(concurrency=4):
        assert first.get(TIMEOUT_S) == 3
        assert second.get(TIMEOUT_S) == 3
    assert first.id == second.id
    assert kit.called("add") == [(1, 1), (2, 1)]


# -- replace ---------------------------------------------------------------------


def test_replace_in_chain_feeds_downstream(kit: Kit) -> None:
    kit.replacement = chain(kit.add.si(1, 1), kit.add.s(10))
    result = chain(kit.replace_with.s(), kit.add.s(100)).apply_async()
    with kit.app.worker(concurrency=4):
        assert result.get(TIMEOUT_S) == 112
    assert result.node("0.0").state == "succeeded"
    assert result.node("0").state == "succeeded"


def test_replace_with_group_gives_list(kit: Kit) -> None:
    kit.replacement = group(kit.add.si(1, 1), kit.add.si(2, 2))
    result = chain(kit.replace_with.s(), kit.echo.s()).apply_async()
    with kit.app.worker(concurrency=4):
        assert result.get(TIMEOUT_S) == [2, 4]


def test_replace_in_chord_header(kit: Kit) -> None:
    kit.replacement = chain(kit.add.si(5, 5), kit.add.s(1))
    header = [kit.add.s(1, 1), kit.replace_with.s(), kit.add.s(2, 2)]
    result = chord(header, kit.echo.s()).apply_async()
    with kit.app.worker(concurrency=4):
        assert result.get(TIMEOUT_S) == [2, 11, 4]
    assert len(kit.called("echo")) == 1


def test_replace_as_last_step(kit: Kit) -> None:
    kit.replacement = kit.add.si(20, 22)
    with kit.app.worker(concurrency=4):
        assert kit.replace_with.delay().get(TIMEOUT_S) == 42


def test_replace_with_empty_group(kit: Kit) -> None:
    kit.replacement = group()
    result = chain(kit.replace_with.s(), kit.echo.s()).apply_async()
    with kit.app.worker(concurrency=4):
        assert result.get(TIMEOUT_S) == []


def test_replaced_task_link_follows(kit: Kit) -> None:
    kit.replacement = chain(kit.add.si(1, 1), kit.add.s(1))
    result = kit.replace_with.apply_async(link=kit.record.s())
    with kit.app.worker(concurrency=4):
        assert result.get(TIMEOUT_S) == 3
        kit.settle(result)
    assert kit.called("record") == [(3,)]


def test_replaced_task_errback_follows(kit: Kit) -> None:
    kit.replacement = chain(kit.add.si(1, 1), kit.fail.s())
    result = kit.replace_with.apply_async(link_error=kit.record.s())
    with kit.app.worker(concurrency=4):
        with pytest.raises(ValueError, match="planned failure"):
            result.get(TIMEOUT_S)
        kit.settle(result)
    assert kit.called("record") == [(f"{result.id}-0.1",)]


def test_replaced_task_errback_skipped(kit: Kit) -> None:
    kit.replacement = group()
    result = kit.replace_with.apply_async(link_error=kit.record.s())
    with kit.app.worker(concurrency=4):
        assert result.get(TIMEOUT_S) == []
        kit.settle(result)
    states = {node.task: node.state for node in result.nodes().values()}
    assert states["record"] == "skipped"
    assert kit.called("record") == []


def test_replace_failure_cancels_downstream(kit: Kit) -> None:
    kit.replacement = kit.fail.si()
    result = chain(kit.replace_with.s(), kit.add.s(1)).apply_async()
    with (
        kit.app.worker(concurrency=4),
        pytest.raises(ValueError, match="planned failure"),
    ):
        result.get(TIMEOUT_S)
    assert kit.called("add") == []


def test_replace_twice_in_one_group(kit: Kit) -> None:
    kit.replacement = chain(kit.add.si(1, 1), kit.add.s(1))
    canvas = chord([kit.replace_with.s(), kit.replace_with.s()], kit.total.s())
    with kit.app.worker(concurrency=4):
        assert canvas.apply_async().get(TIMEOUT_S) == 6


# -- waiting ----------------------------------------------------------------------


def test_wait_ended_none_while_running(kit: Kit) -> None:
    header = [kit.wait_gate.s(), kit.add.s(1, 1), kit.add.s(2, 2)]
    result = chord(header, kit.echo.s()).apply_async()
    driver = kit.app.driver
    with kit.app.worker(concurrency=4):
        _wait_for_call(kit, "wait_gate")
        assert driver.wait_ended(result.id, 0.05) is None
        with pytest.raises(TimeoutError, match="did not end within"):
            result.get(0.05)
        kit.gate.set()
        ended = driver.wait_ended(result.id, TIMEOUT_S)
    assert ended is not None
    assert ended.status == "succeeded"
    assert ended.value == '["opened",2,4]'
    assert ended.run_id == result.id


# -- cancel and dead letters -------------------------------------------------------


def test_cancel_stops_run(kit: Kit) -> None:
    canvas = chain(kit.wait_gate.s(), kit.add.s(1, 1))
    result = canvas.apply_async(link_error=kit.record.s())
    with kit.app.worker(concurrency=4):
        _wait_for_call(kit, "wait_gate")
        result.cancel()
        kit.gate.set()
        kit.settle(result)
    assert result.state == "cancelled"
    assert kit.called("add") == []
    assert kit.called("record") == []
    states = {node.task: node.state for node in result.nodes().values()}
    assert states["record"] == "skipped"


def test_unknown_task_dead_lettered(kit: Kit) -> None:
    canvas = chain(Signature("tasks.not_registered"), kit.add.s(1))
    result = kit.app.submit(canvas)
    with kit.app.worker(concurrency=2, unknown_task_grace_s=0):
        error = result.get(TIMEOUT_S, propagate=False)
    assert result.state == "failed"
    assert isinstance(error, DeadLettered)
    assert "tasks.not_registered" in str(error)
    [(message, reason)] = kit.app.driver.dead_letters()
    assert message.run_id == result.id
    assert message.node_id == "0"
    assert "tasks.not_registered" in reason
    assert result.node("1").state == "cancelled"


def test_unknown_task_runs_once_registered(kit: Kit) -> None:
    driver = kit.app.driver
    result = kit.app.submit(chain(Signature("tasks.late"), kit.add.s(1)))
    with kit.app.worker(concurrency=2, unknown_task_grace_s=3 * TIMEOUT_S):
        _wait_until(lambda: driver.delayed_count() == 1, "the message is deferred")
        kit.app.task(name="tasks.late")(lambda: 41)
        value = result.get(TIMEOUT_S)
    assert value == 42
    assert driver.dead_letters() == []
    assert result.node("0").attempts == 1


def test_unknown_task_dead_lettered_after_grace(kit: Kit) -> None:
    driver = kit.app.driver
    result = kit.app.submit(chain(Signature("tasks.never"), kit.add.s(1)))
    with kit.app.worker(concurrency=2, unknown_task_grace_s=2.0):
        _wait_until(lambda: driver.delayed_count() == 1, "the message is deferred")
        error = result.get(TIMEOUT_S, propagate=False)
    assert isinstance(error, DeadLettered)
    [(message, reason)] = driver.dead_letters()
    assert message.node_id == "0"
    assert message.attempt == 1
    assert "'tasks.never' is not registered" in reason
    assert "unknown_task_grace_s (2 s)" in reason
    assert "import the module that defines it in the worker" in reason
    assert result.node("0").attempts == 1
    assert result.node("1").state == "cancelled"


def test_defer_keeps_attempt_and_enqueue_time(kit: Kit) -> None:
    driver = kit.app.driver
    result = kit.add.apply_async((2, 3))
    [first] = driver.fetch(["default"], 1, TIMEOUT_S)

    assert driver.defer(first, 0.05) is True
    assert driver.snapshot(result.id).nodes["0"].state == "queued"
    [again] = driver.fetch(["default"], 1, TIMEOUT_S)

    assert again.node_id == first.node_id
    assert again.attempt == first.attempt
    assert again.epoch == first.epoch
    assert first.enqueued_at > 0
    assert again.enqueued_at == first.enqueued_at
    claim = driver.claim(again)
    assert claim is not None
    driver.complete(claim.message, "5")
    assert result.get(TIMEOUT_S) == 5


def test_defer_drops_message_of_cancelled_run(kit: Kit) -> None:
    driver = kit.app.driver
    result = kit.add.apply_async((2, 3))
    [message] = driver.fetch(["default"], 1, TIMEOUT_S)
    result.cancel()

    assert driver.defer(message, 0.0) is False
    assert driver.delayed_count() == 0
    assert driver.fetch(["default"], 1, 0.2) == []


def test_cancel_drops_deferred_message(kit: Kit) -> None:
    driver = kit.app.driver
    result = kit.add.apply_async((2, 3))
    [message] = driver.fetch(["default"], 1, TIMEOUT_S)
    assert driver.defer(message, 3600.0) is True
    assert driver.delayed_count() == 1

    result.cancel()

    assert driver.delayed_count() == 0
    assert result.state == "cancelled"


def test_dead_letter_spares_running_node(kit: Kit) -> None:
    driver = kit.app.driver
    result = kit.add.apply_async((2, 3))
    [message] = driver.fetch(["default"], 1, TIMEOUT_S)
    assert driver.claim(message) is not None

    driver.dead_letter(message, "Task 'add' is not registered on this worker.")

    assert driver.snapshot(result.id).nodes["0"].state == "running"
    driver.complete(message, "5")
    assert driver.snapshot(result.id).status == "succeeded"
    assert len(driver.dead_letters()) == 1


def test_dead_letter_fails_queued_node(kit: Kit) -> None:
    driver = kit.app.driver
    result = chain(kit.add.s(2, 3), kit.add.s(1)).apply_async()
    [message] = driver.fetch(["default"], 1, TIMEOUT_S)

    driver.dead_letter(message, "Task 'add' is not registered.")

    snapshot = driver.snapshot(result.id)
    assert snapshot.status == "failed"
    assert snapshot.error_node == "0"
    assert snapshot.nodes["1"].state == "cancelled"
    error = snapshot.nodes["0"].error
    assert error is not None
    assert error.qualname == "DeadLettered"
    assert isinstance(result.get(TIMEOUT_S, propagate=False), DeadLettered)


def _wait_until(condition: Callable[[], bool], description: str) -> None:
    import time

    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"Timed out waiting until {description}."
        time.sleep(0.01)


def _wait_for_call(kit: Kit, name: str) -> None:
    import time

    deadline = time.monotonic() + TIMEOUT_S
    while not kit.called(name):
        assert time.monotonic() < deadline, f"Task {name} never ran."
        time.sleep(0.01)


def _error() -> Any:
    from stem.engine.records import ErrorInfo

    return ErrorInfo("builtins", "ValueError", "late")


def _raise_huge() -> None:
    raise ValueError("start " + "x" * 5_000_000 + " end")


def test_huge_error_stored_capped(kit: Kit) -> None:
    huge = kit.app.task(name="raise_huge")(_raise_huge)
    with kit.app.worker(concurrency=1):
        result = huge.delay()
        with pytest.raises(ValueError, match="bytes cut") as caught:
            result.get(TIMEOUT_S)

    stored = kit.app.driver.snapshot(result.id).nodes["0"].error
    assert stored is not None
    assert len(stored.message.encode()) <= MAX_ERROR_TEXT_BYTES
    assert len(stored.traceback.encode()) <= MAX_ERROR_TEXT_BYTES
    assert stored.message.endswith(" end")
    assert str(caught.value).startswith("start xxx")
