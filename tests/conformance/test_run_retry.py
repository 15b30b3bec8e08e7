"""Run retries on every driver: a new epoch re-runs only what did not succeed.

A ``switch`` task fails while its switch is off, so a test can fail a run,
turn the switch on and retry it, counting the calls of every task.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from stem import chain, chord, group
from stem.engine.records import ErrorInfo
from stem.errors import RunNotFound, RunNotRetryable

from .conftest import TIMEOUT_S, Kit


class Switch:
    """A task that fails until `turn_on` is called."""

    def __init__(self, kit: Kit) -> None:
        self.on = threading.Event()
        on = self.on

        @kit.app.task(name="switch")
        def switch(*args: Any) -> Any:
            kit.note("switch", args)
            if not on.is_set():
                raise RuntimeError("switch is off")
            return args[0] if args else "on"

        self.task = switch

    def turn_on(self) -> None:
        self.on.set()


@pytest.fixture
def switch(kit: Kit) -> Switch:
    return Switch(kit)


def test_retry_reruns_failed_nodes_only(kit: Kit, switch: Switch) -> None:
    canvas = chord([kit.add.s(1, 1), switch.task.s(10), kit.add.s(2, 2)], kit.total.s())
    with kit.app.worker(concurrency=4):
        result = canvas.apply_async()
        with pytest.raises(RuntimeError, match="switch is off"):
            result.get(TIMEOUT_S)
        kit.settle(result)
        assert result.epoch == 1
        switch.turn_on()
        retried = result.retry()
        assert retried.id == result.id
        assert retried.get(TIMEOUT_S) == 16
    assert retried.epoch == 2
    assert sorted(kit.called("add")) == [(1, 1), (2, 2)]
    assert kit.called("switch") == [(10,), (10,)]
    assert kit.called("total") == [([2, 10, 4],)]
    nodes = retried.nodes()
    assert [nodes[key].attempts for key in ("0", "1", "2", "3")] == [1, 1, 1, 1]


def test_retry_policy_restarts_each_epoch(kit: Kit, switch: Switch) -> None:
    @kit.app.task(name="limited", bind=True, max_retries=1)
    def limited(task: Any) -> int:
        retries: int = task.request.retries
        kit.note("limited", (retries,))
        if not switch.on.is_set() or retries < 1:
            task.retry(countdown=0.01, exc=RuntimeError("not yet"))
        return retries

    with kit.app.worker(concurrency=2):
        result = limited.delay()
        with pytest.raises(RuntimeError, match="not yet"):
            result.get(TIMEOUT_S)
        switch.turn_on()
        assert result.retry().get(TIMEOUT_S) == 1
    assert kit.called("limited") == [(0,), (1,), (0,), (1,)]
    assert result.node("0").attempts == 2


def test_retry_keeps_chain_values(kit: Kit, switch: Switch) -> None:
    canvas = chain(kit.add.s(1, 2), switch.task.s(), kit.add.s(10))
    with kit.app.worker(concurrency=2):
        result = canvas.apply_async()
        assert isinstance(result.get(TIMEOUT_S, propagate=False), RuntimeError)
        assert [node.state for node in result.nodes().values()] == [
            "succeeded",
            "failed",
            "cancelled",
        ]
        switch.turn_on()
        assert result.retry().get(TIMEOUT_S) == 13
    assert kit.called("add") == [(1, 2), (3, 10)]
    assert kit.called("switch") == [(3,), (3,)]


def test_retry_failing_again_fails(kit: Kit, switch: Switch) -> None:
    canvas = group(kit.add.s(1, 1), switch.task.s())
    with kit.app.worker(concurrency=2):
        result = canvas.apply_async()
        result.get(TIMEOUT_S, propagate=False)
        second = result.retry()
        with pytest.raises(RuntimeError, match="switch is off"):
            second.get(TIMEOUT_S)
        assert second.epoch == 2
        switch.turn_on()
        third = second.retry()
        assert third.get(TIMEOUT_S) == [2, "on"]
        assert third.epoch == 3
    assert len(kit.called("add")) == 1
    assert len(kit.called("switch")) == 3


def test_retry_cancelled_run(kit: Kit) -> None:
    canvas = chain(kit.add.s(1, 1), kit.wait_gate.s(), kit.echo.s())
    with kit.app.worker(concurrency=2):
        result = canvas.apply_async()
        _wait_until(lambda: kit.called("wait_gate") != [])
        result.cancel()
        kit.gate.set()
        kit.settle(result)
        assert result.state == "cancelled"
        assert result.retry().get(TIMEOUT_S) == "opened"
    assert kit.called("add") == [(1, 1)]
    assert kit.called("wait_gate") == [(2,), (2,)]
    assert kit.called("echo") == [("opened",)]


def test_errback_fires_again_each_epoch(kit: Kit) -> None:
    result = kit.fail.apply_async(link_error=kit.record.s())
    with kit.app.worker(concurrency=2):
        result.get(TIMEOUT_S, propagate=False)
        kit.settle(result)
        second = result.retry()
        second.get(TIMEOUT_S, propagate=False)
        kit.settle(second)
    failed_task = f"{result.id}-0"
    assert kit.called("record") == [(failed_task,), (failed_task,)]
    assert len(kit.called("fail")) == 2


def test_settled_errback_join_skipped_on_success(kit: Kit, switch: Switch) -> None:
    errback = chord(group(kit.fail.si()), kit.echo.s(), join="all_settled")
    canvas = switch.task.si().on_error(errback)
    with kit.app.worker(concurrency=2):
        result = canvas.apply_async()
        result.get(TIMEOUT_S, propagate=False)
        kit.settle(result)
        switch.turn_on()
        second = result.retry()
        assert second.get(TIMEOUT_S) == "on"
        kit.settle(second)
    states = {node.task: node.state for node in second.nodes().values()}
    assert states["fail"] == "skipped"
    assert states["echo"] == "skipped"
    assert len(kit.called("echo")) == 1


def test_link_and_errback_in_new_epoch(kit: Kit, switch: Switch) -> None:
    canvas = chain(kit.add.s(1, 1), switch.task.s())
    canvas.link(kit.echo.s())
    canvas.link_error(kit.record.s())
    with kit.app.worker(concurrency=2):
        result = canvas.apply_async()
        result.get(TIMEOUT_S, propagate=False)
        kit.settle(result)
        switch.turn_on()
        second = result.retry()
        assert second.get(TIMEOUT_S) == 2
        kit.settle(second)
    assert kit.called("record") == [(f"{result.id}-1",)]
    assert kit.called("echo") == [(2,)]
    states = {node.task: node.state for node in second.nodes().values()}
    assert states["record"] == "skipped"
    assert states["echo"] == "succeeded"


def test_retry_rejects_running_run(kit: Kit) -> None:
    result = kit.wait_gate.delay()
    with pytest.raises(RunNotRetryable, match=f"Run {result.id} .* 'running'"):
        result.retry()


def test_retry_rejects_succeeded_run(kit: Kit) -> None:
    with kit.app.worker(concurrency=1):
        result = kit.add.delay(1, 1)
        assert result.get(TIMEOUT_S) == 2
    with pytest.raises(RunNotRetryable, match="because it succeeded") as info:
        result.retry()
    assert info.value.run_id == result.id
    assert info.value.status == "succeeded"
    assert result.epoch == 1


def test_retry_unknown_run(kit: Kit) -> None:
    with pytest.raises(RunNotFound, match="no-such-run"):
        kit.app.AsyncResult("no-such-run").retry()


def test_old_epoch_message_dropped(kit: Kit, switch: Switch) -> None:
    driver = kit.app.driver
    result = switch.task.delay()
    [message] = driver.fetch(["default"], 1, TIMEOUT_S)
    claim = driver.claim(message)
    assert claim is not None
    driver.fail(claim.message, ErrorInfo.from_exception(RuntimeError("off")))
    assert result.state == "failed"
    assert driver.retry_run(result.id) == 2

    [fresh] = driver.fetch(["default"], 1, TIMEOUT_S)
    assert fresh.epoch == 2
    # Attempts restart in each epoch, so the epoch alone rejects the message
    # of the first epoch, delivered again.
    assert fresh.attempt == message.attempt == 1
    stale = dataclasses.replace(message, receipt="")
    assert driver.claim(stale) is None
    fresh_claim = driver.claim(fresh)
    assert fresh_claim is not None
    stale_report = dataclasses.replace(stale, lease=fresh_claim.message.lease)
    driver.complete(stale_report, '"old"')
    assert result.state == "running"
    driver.complete(fresh_claim.message, '"new"')
    assert result.state == "succeeded"
    assert result.get(timeout=0) == "new"


def test_retry_reruns_ignored_input_whose_value_was_dropped(
    kit: Kit, switch: Switch
) -> None:
    # add's value was dropped when switch, its only reader, failed; switch
    # needs it again, so add runs again in the new epoch.
    canvas = chain(kit.add.s(1, 2).set(ignore_result=True), switch.task.s())
    with kit.app.worker(concurrency=2):
        result = canvas.apply_async()
        with pytest.raises(RuntimeError, match="switch is off"):
            result.get(TIMEOUT_S)
        kit.settle(result)
        assert result.group_counts() == {None: {"succeeded": 1, "failed": 1}}
        switch.turn_on()
        assert result.retry().get(TIMEOUT_S) == 3
    assert kit.called("add") == [(1, 2), (1, 2)]
    assert kit.called("switch") == [(3,), (3,)]
    assert result.node("0").value is None
    assert result.group_counts() == {None: {"succeeded": 2}}
    events = [
        (event.kind, event.node_id, event.status)
        for event in kit.app.driver.events(limit=10_000)
        if event.run_id == result.id
    ]
    reopened = events.index(("reopened", "", ""))
    assert events[reopened - 1] == ("ended", "", "failed")
    assert events[reopened + 1 :] == [
        ("started", "0", ""),
        ("succeeded", "0", ""),
        ("started", "1", ""),
        ("succeeded", "1", ""),
        ("ended", "", "succeeded"),
    ]


def test_reopened_run_does_not_expire_while_running(
    make_kit: Callable[..., Kit],
) -> None:
    retention_s = 2.0
    kit = make_kit(retention_s=retention_s)
    switch = Switch(kit)
    driver = kit.app.driver
    result = switch.task.delay()
    [message] = driver.fetch(["default"], 1, TIMEOUT_S)
    claim = driver.claim(message)
    assert claim is not None
    driver.fail(claim.message, ErrorInfo.from_exception(RuntimeError("off")))
    assert driver.retry_run(result.id) == 2
    time.sleep(retention_s + 0.5)
    assert result.state == "running"
    [fresh] = driver.fetch(["default"], 1, TIMEOUT_S)
    fresh_claim = driver.claim(fresh)
    assert fresh_claim is not None
    driver.complete(fresh_claim.message, '"on"')
    assert result.get(timeout=0) == "on"
    _wait_until_gone(result)


def _wait_until_gone(result: Any) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            result.snapshot()
        except RunNotFound:
            return
        time.sleep(0.05)
    raise AssertionError(f"Run {result.id} was still stored after {TIMEOUT_S} s.")


def _wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("The condition did not hold in time.")
        time.sleep(0.01)
