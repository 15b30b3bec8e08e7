"""Scenario tests of retries, replace, delays, idempotent submit and cancel."""

from __future__ import annotations

import builtins
import datetime as dt
import time

import pytest

from stem import chain, chord, group
from stem.errors import (
    MaxRetriesExceededError,
    NoWorkerRunning,
    RunCancelled,
    TimeoutError,
)

from ..task_kit import Kit

TIMEOUT_S = 5.0


# -- retries ---------------------------------------------------------------------


def test_retry_then_succeed(kit: Kit) -> None:
    result = kit.flaky.delay("done", 2)
    with kit.app.worker(concurrency=2):
        assert result.get(TIMEOUT_S) == "done"
    node = result.node("0")
    assert node.state == "succeeded"
    assert node.attempts == 3


def test_retry_in_header_keeps_value(kit: Kit) -> None:
    header = [kit.flaky.s("a", 2), kit.add.s(1, 1), kit.flaky.s("b", 1)]
    result = chord(header, kit.echo.s()).apply_async()
    with kit.app.worker(concurrency=4):
        assert result.get(TIMEOUT_S) == ["a", 2, "b"]
        assert kit.app.driver.wait_idle(TIMEOUT_S)
    assert len(kit.called("echo")) == 1
    assert len(kit.called("flaky")) == 5


def test_retry_exhaustion_fails_node(kit: Kit) -> None:
    result = chain(kit.always_retry.s(), kit.add.s(1, 1)).apply_async()
    with kit.app.worker(concurrency=2), pytest.raises(KeyError, match="still missing"):
        result.get(TIMEOUT_S)
    assert len(kit.called("always_retry")) == 3
    assert result.node("0").state == "failed"
    assert result.node("1").state == "cancelled"
    assert kit.app.driver.dead_letters() == []


def test_autoretry_with_backoff_succeeds(kit: Kit) -> None:
    result = kit.autoretry.delay("value", 3)
    with kit.app.worker(concurrency=2):
        assert result.get(TIMEOUT_S) == "value"
    assert kit.attempts["autoretry"] == 4
    assert result.node("0").attempts == 4


def test_autoretry_exhaustion_raises_last(kit: Kit) -> None:
    result = kit.autoretry.delay("value", 100)
    with (
        kit.app.worker(concurrency=2),
        pytest.raises(ConnectionError, match="attempt 5 failed"),
    ):
        result.get(TIMEOUT_S)
    assert kit.attempts["autoretry"] == 5


def test_autoretry_ignores_other_errors(kit: Kit) -> None:
    @kit.app.task(name="wrong_error", autoretry_for=(ConnectionError,))
    def wrong_error() -> None:
        raise ValueError("not retried")

    result = wrong_error.delay()
    with kit.app.worker(concurrency=2), pytest.raises(ValueError, match="not retried"):
        result.get(TIMEOUT_S)
    assert result.node("0").attempts == 1


# -- replace ---------------------------------------------------------------------


def test_replace_in_chain_feeds_downstream(kit: Kit) -> None:
    kit.replacement = chain(kit.add.si(1, 1), kit.add.s(10))
    result = chain(kit.replace_with.s(), kit.add.s(100)).apply_async()
    with kit.app.worker(concurrency=4):
        assert result.get(TIMEOUT_S) == 112
    assert result.node("0.0").state == "succeeded"


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
        assert kit.app.driver.wait_idle(TIMEOUT_S)
    assert kit.called("record") == [(3,)]


def test_replaced_task_errback_follows(kit: Kit) -> None:
    kit.replacement = chain(kit.add.si(1, 1), kit.fail.s())
    result = kit.replace_with.apply_async(link_error=kit.record.s())
    with kit.app.worker(concurrency=4):
        with pytest.raises(ValueError, match="planned failure"):
            result.get(TIMEOUT_S)
        assert kit.app.driver.wait_idle(TIMEOUT_S)
    assert kit.called("record") == [(f"{result.id}-0.1",)]


def test_replace_failure_cancels_downstream(kit: Kit) -> None:
    kit.replacement = kit.fail.si()
    result = chain(kit.replace_with.s(), kit.add.s(1)).apply_async()
    with (
        kit.app.worker(concurrency=4),
        pytest.raises(ValueError, match="planned failure"),
    ):
        result.get(TIMEOUT_S)
    assert kit.called("add") == []


# -- countdown and eta -----------------------------------------------------------


def test_countdown_member_runs_after_others(kit: Kit) -> None:
    late = kit.record.s("late").set(countdown=0.5)
    canvas = group(late, kit.record.s("early"))
    with kit.app.worker(concurrency=4):
        assert canvas.apply_async().get(TIMEOUT_S) == [None, None]
    assert kit.called("record") == [("early",), ("late",)]


def test_submit_countdown_delays_roots(kit: Kit) -> None:
    with kit.app.worker(concurrency=4):
        delayed = kit.record.apply_async(("late",), countdown=0.5)
        kit.record.delay("early").get(TIMEOUT_S)
        delayed.get(TIMEOUT_S)
    assert kit.called("record") == [("early",), ("late",)]


def test_eta_delays_task(kit: Kit) -> None:
    eta = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.5)
    with kit.app.worker(concurrency=4):
        delayed = kit.record.apply_async(("late",), eta=eta)
        delayed.get(TIMEOUT_S)
    started_at = delayed.snapshot().nodes["0"].started_at
    # The start time is compared with the eta, not with another task, so a
    # slow machine cannot reorder what the test checks.
    assert started_at is not None
    assert started_at >= eta.timestamp()
    assert kit.called("record") == [("late",)]


def test_eta_in_past_runs_now(kit: Kit) -> None:
    eta = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    with kit.app.worker(concurrency=4):
        assert kit.add.apply_async((1, 2), eta=eta).get(TIMEOUT_S) == 3


# -- submission and waiting ------------------------------------------------------


def test_same_run_id_makes_one_run(kit: Kit) -> None:
    first = kit.add.apply_async((1, 2), run_id="fixed-run")
    second = kit.add.apply_async((5, 5), run_id="fixed-run")
    with kit.app.worker(concurrency=4):
        assert first.get(TIMEOUT_S) == 3
        assert second.get(TIMEOUT_S) == 3
        assert kit.app.driver.wait_idle(TIMEOUT_S)
    assert kit.app.driver.runs() == ["fixed-run"]
    assert kit.called("add") == [(1, 2)]


def test_same_run_id_canvas_once(kit: Kit) -> None:
    canvas = chord([kit.add.s(1, 1), kit.add.s(2, 2)], kit.total.s())
    with kit.app.worker(concurrency=4):
        first = canvas.apply_async(run_id="canvas-run").get(TIMEOUT_S)
        second = canvas.apply_async(run_id="canvas-run").get(TIMEOUT_S)
    assert first == second
    assert len(kit.called("total")) == 1


def test_get_without_worker_raises_at_once(kit: Kit) -> None:
    result = kit.add.delay(1, 1)
    started = time.monotonic()
    with pytest.raises(NoWorkerRunning):
        result.get(30)
    assert time.monotonic() - started < 5


def test_get_timeout_raises_timeout_error(kit: Kit) -> None:
    with kit.app.worker(concurrency=2):
        result = kit.wait_gate.delay()
        with pytest.raises(TimeoutError) as caught:
            result.get(0.2)
        kit.gate.set()
        assert result.get(TIMEOUT_S) == "opened"
    assert isinstance(caught.value, builtins.TimeoutError)


# -- cancel ----------------------------------------------------------------------


def test_cancel_stops_downstream(kit: Kit) -> None:
    result = chain(kit.wait_gate.s(), kit.add.s(1, 1), kit.add.s(1)).apply_async()
    with kit.app.worker(concurrency=2):
        result.cancel()
        kit.gate.set()
        with pytest.raises(RunCancelled):
            result.get(TIMEOUT_S)
        assert kit.app.driver.wait_idle(TIMEOUT_S)
    assert result.state == "cancelled"
    assert kit.called("add") == []
    states = {node.state for node in result.nodes().values()}
    assert states == {"cancelled"}


def test_cancel_after_end_changes_nothing(kit: Kit) -> None:
    with kit.app.worker(concurrency=2):
        result = kit.add.delay(1, 1)
        assert result.get(TIMEOUT_S) == 2
        result.cancel()
    assert result.state == "succeeded"
    assert result.get(TIMEOUT_S) == 2


def test_cancel_leaves_link_skipped(kit: Kit) -> None:
    result = kit.wait_gate.apply_async(link=kit.record.s())
    with kit.app.worker(concurrency=2):
        result.cancel()
        kit.gate.set()
        assert kit.app.driver.wait_idle(TIMEOUT_S)
    states = {node.task: node.state for node in result.nodes().values()}
    assert states["record"] == "skipped"
    assert kit.called("record") == []


def test_replace_with_settled_chord(kit: Kit) -> None:
    kit.replacement = chord([kit.fail.si()], group(), join="all_settled")
    result = chain(kit.replace_with.s(), kit.echo.s()).apply_async()

    with kit.app.worker(concurrency=4):
        value = result.get(TIMEOUT_S)

    assert value == []
    assert result.state == "succeeded"
    assert len(kit.called("echo")) == 1


def test_retry_without_exc_exhausts(kit: Kit) -> None:
    @kit.app.task(name="retry_bare", bind=True, max_retries=1)
    def retry_bare(task: object) -> None:
        task.retry(countdown=0.01)  # type: ignore[attr-defined]

    result = retry_bare.delay()
    with kit.app.worker(concurrency=2), pytest.raises(MaxRetriesExceededError) as info:
        result.get(TIMEOUT_S)

    assert "after its last one (1 retries)" in str(info.value)
    assert result.node("0").attempts == 2


# -- Celery's result names ------------------------------------------------------


def test_celery_result_names(kit: Kit) -> None:
    ok = kit.add.delay(1, 2)
    failed = kit.fail.delay()
    assert ok.result is None
    assert ok.status == "running"
    assert ok.task_id == ok.id
    with kit.app.worker(concurrency=2):
        assert ok.get(TIMEOUT_S) == 3
        with pytest.raises(ValueError, match="planned failure"):
            failed.get(TIMEOUT_S)
    assert ok.result == 3
    assert ok.status == "succeeded"
    assert isinstance(failed.result, ValueError)
    assert failed.status == "failed"


def test_node_takes_int_and_names_ids(kit: Kit) -> None:
    result = chain(kit.add.s(1, 1), kit.add.s(2)).apply_async()
    with kit.app.worker(concurrency=2):
        assert result.get(TIMEOUT_S) == 4
    assert result.node(1) == result.node("1")
    with pytest.raises(KeyError, match=r"has no node 7\. Node ids are strings"):
        result.node(7)
