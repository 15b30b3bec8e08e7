"""Run lifecycle on every driver: retention, value size limit, ignore_result,
state counts per group and lifecycle events.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from stem import chain, chord, group
from stem.engine.ports import LifecycleEvent
from stem.engine.result import AsyncResult
from stem.errors import RunNotFound, ValueTooLarge

from .conftest import TIMEOUT_S, Kit

#: Retention short enough for a test to outlive it.
SHORT_RETENTION_S = 0.2


def _wait_until_gone(result: AsyncResult) -> RunNotFound:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            result.snapshot()
        except RunNotFound as err:
            return err
        time.sleep(0.05)
    raise AssertionError(f"Run {result.id} was still stored after {TIMEOUT_S} s.")


def _events_of(kit: Kit, run_id: str) -> list[LifecycleEvent]:
    events = kit.app.driver.events(limit=10_000)
    return [event for event in events if event.run_id == run_id]


# -- retention ----------------------------------------------------------------------


def test_unknown_run_not_found(kit: Kit) -> None:
    with pytest.raises(RunNotFound, match="never submitted") as caught:
        kit.app.driver.snapshot("no-such-run")
    assert "retention_s" in str(caught.value)


def test_ended_run_expires(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit(retention_s=SHORT_RETENTION_S)
    with kit.app.worker(concurrency=2):
        result = chain(kit.add.s(1, 2), kit.add.s(3)).apply_async()
        assert result.get(TIMEOUT_S) == 6
    error = _wait_until_gone(result)
    assert "retention_s (0.2 s)" in str(error)
    with pytest.raises(RunNotFound):
        result.get(TIMEOUT_S)
    with pytest.raises(RunNotFound):
        kit.app.driver.group_counts(result.id)


def test_running_run_never_expires(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit(retention_s=SHORT_RETENTION_S)
    with kit.app.worker(concurrency=2):
        result = chain(kit.wait_gate.s(), kit.echo.s()).apply_async()
        deadline = time.monotonic() + TIMEOUT_S
        while not kit.called("wait_gate"):
            assert time.monotonic() < deadline, "wait_gate never started"
            time.sleep(0.02)
        # Several retentions pass while the run is still going.
        time.sleep(SHORT_RETENTION_S * 3)
        assert result.state == "running"
        kit.gate.set()
        assert result.get(TIMEOUT_S) == "opened"
    _wait_until_gone(result)


def test_cancelled_run_expires(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit(retention_s=SHORT_RETENTION_S)
    result = chain(kit.add.s(1, 2), kit.add.s(3)).apply_async()
    result.cancel()
    _wait_until_gone(result)


def test_retention_none_keeps_runs(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit(retention_s=None)
    result = kit.add.s(1, 2).apply_async()
    result.cancel()
    time.sleep(SHORT_RETENTION_S)
    assert result.state == "cancelled"


@pytest.mark.parametrize("value", [0, -1.0, float("inf"), "7d", True])
def test_invalid_retention_rejected(make_kit: Callable[..., Kit], value: Any) -> None:
    kit = make_kit(retention_s=value)
    with pytest.raises(ValueError, match=r"retention_s .* is invalid"):
        _ = kit.app.driver


# -- result size limit ---------------------------------------------------------------


def test_oversized_value_fails_node(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit(max_value_bytes=100)
    result = chain(kit.echo.s("x" * 200), kit.add.s(1)).apply_async()
    with (
        kit.app.worker(concurrency=2),
        pytest.raises(ValueTooLarge) as caught,
    ):
        result.get(TIMEOUT_S)
    message = str(caught.value)
    assert "202 bytes" in message
    assert "max_value_bytes (100 bytes)" in message
    assert "App(url, max_value_bytes=...)" in message
    snapshot = result.snapshot()
    assert snapshot.nodes["0"].state == "failed"
    assert snapshot.nodes["0"].value is None
    assert snapshot.nodes["1"].state == "cancelled"


def test_value_at_limit_stored(make_kit: Callable[..., Kit]) -> None:
    # "é" is 2 bytes in UTF-8: the JSON text '"éé"' is 6 bytes in 4 characters.
    kit = make_kit(max_value_bytes=6)
    with kit.app.worker(concurrency=2):
        assert kit.echo.s("éé").apply_async().get(TIMEOUT_S) == "éé"
        with pytest.raises(ValueTooLarge, match="7 bytes"):
            kit.echo.s("ééx").apply_async().get(TIMEOUT_S)


@pytest.mark.parametrize("value", [0, -5, 1.5, "16MiB"])
def test_invalid_value_limit_rejected(make_kit: Callable[..., Kit], value: Any) -> None:
    kit = make_kit(max_value_bytes=value)
    with pytest.raises(ValueError, match=r"max_value_bytes .* is invalid"):
        _ = kit.app.driver


# -- ignore_result --------------------------------------------------------------------


def test_ignored_value_feeds_next_step(kit: Kit) -> None:
    canvas = chain(kit.add.s(1, 2).set(ignore_result=True), kit.add.s(3))
    with kit.app.worker(concurrency=2):
        result = canvas.apply_async()
        assert result.get(TIMEOUT_S) == 6
    assert kit.called("add") == [(1, 2), (3, 3)]
    assert result.node("0").value is None
    assert result.node("1").value == 6
    assert result.snapshot().nodes["0"].value is None


def test_ignored_value_is_none_in_run_value(kit: Kit) -> None:
    canvas = group(kit.add.s(1, 1).set(ignore_result=True), kit.add.s(2, 2))
    with kit.app.worker(concurrency=2):
        result = canvas.apply_async()
        assert result.get(TIMEOUT_S) == [None, 4]
    assert result.snapshot().nodes["0"].value is None


def test_ignored_header_feeds_callback(kit: Kit) -> None:
    header = [kit.add.s(i, i).set(ignore_result=True) for i in range(4)]
    with kit.app.worker(concurrency=4):
        result = chord(header, kit.total.s()).apply_async()
        assert result.get(TIMEOUT_S) == 12
    assert kit.called("total") == [([0, 2, 4, 6],)]
    nodes = result.snapshot().nodes
    assert [nodes[str(i)].value for i in range(4)] == [None] * 4


def test_ignored_value_kept_for_retried_reader(kit: Kit) -> None:
    canvas = chain(kit.add.s(1, 2).set(ignore_result=True), kit.flaky.s(2))
    with kit.app.worker(concurrency=2):
        result = canvas.apply_async()
        assert result.get(TIMEOUT_S) == 3
    assert kit.called("flaky") == [(3, 2), (3, 2), (3, 2)]
    assert result.snapshot().nodes["0"].value is None


def test_ignore_result_as_task_default(kit: Kit) -> None:
    @kit.app.task(name="quiet", ignore_result=True)
    def quiet(x: int) -> int:
        return x * 10

    with kit.app.worker(concurrency=2):
        result = quiet.delay(4)
        assert result.get(TIMEOUT_S) is None
    assert result.node("0").state == "succeeded"
    assert result.snapshot().nodes["0"].value is None


# -- state counts per group ---------------------------------------------------------


def test_group_counts_after_chord(kit: Kit) -> None:
    canvas = chord([kit.add.s(i, 1) for i in range(3)], kit.total.s())
    with kit.app.worker(concurrency=2):
        result = canvas.apply_async()
        assert result.get(TIMEOUT_S) == 6
    header_group = result.snapshot().spec.node("0").group
    assert header_group is not None
    counts = result.group_counts()
    assert counts == {header_group: {"succeeded": 3}, None: {"succeeded": 1}}


def test_group_counts_follow_states(kit: Kit) -> None:
    canvas = chain(
        group(kit.wait_gate.s(), kit.fail.s()),
        kit.total.s(),
    )
    with kit.app.worker(concurrency=2):
        result = canvas.apply_async(link_error=kit.record.s())
        deadline = time.monotonic() + TIMEOUT_S
        while kit.app.driver.group_counts(result.id).get(0, {}).get("failed") != 1:
            assert time.monotonic() < deadline, "fail never failed"
            time.sleep(0.02)
        counts = kit.app.driver.group_counts(result.id)
        assert counts[0] == {"running": 1, "failed": 1}
        kit.gate.set()
        kit.settle(result)
    counts = kit.app.driver.group_counts(result.id)
    assert counts == {
        0: {"succeeded": 1, "failed": 1},
        None: {"cancelled": 1, "succeeded": 1},
    }


def test_group_counts_after_cancel(kit: Kit) -> None:
    canvas = group(kit.add.s(i, i) for i in range(3))
    result = canvas.apply_async()
    assert kit.app.driver.group_counts(result.id) == {0: {"queued": 3}}
    result.cancel()
    assert kit.app.driver.group_counts(result.id) == {0: {"cancelled": 3}}


# -- lifecycle events ---------------------------------------------------------------


def test_events_of_a_chain(kit: Kit) -> None:
    canvas = chain(kit.add.s(1, 2), kit.flaky.s(1))
    with kit.app.worker(concurrency=2):
        result = canvas.apply_async()
        assert result.get(TIMEOUT_S) == 3
    seen = [
        (event.kind, event.node_id, event.attempt)
        for event in _events_of(kit, result.id)
    ]
    assert seen == [
        ("submitted", "", 0),
        ("started", "0", 1),
        ("succeeded", "0", 1),
        ("started", "1", 1),
        ("retried", "1", 1),
        ("started", "1", 2),
        ("succeeded", "1", 2),
        ("ended", "", 0),
    ]
    ended = _events_of(kit, result.id)[-1]
    assert ended.status == "succeeded"
    assert ended.time_s > time.time() - 60


def test_events_of_failed_and_cancelled_runs(kit: Kit) -> None:
    with kit.app.worker(concurrency=2):
        failed = chain(kit.fail.s(), kit.add.s(1)).apply_async()
        with pytest.raises(ValueError, match="planned failure"):
            failed.get(TIMEOUT_S)
    kinds = [event.kind for event in _events_of(kit, failed.id)]
    assert kinds == ["submitted", "started", "failed", "ended"]
    assert _events_of(kit, failed.id)[-1].status == "failed"

    cancelled = kit.add.s(1, 2).apply_async()
    cancelled.cancel()
    events = _events_of(kit, cancelled.id)
    assert [event.kind for event in events] == ["submitted", "ended"]
    assert events[-1].status == "cancelled"


def test_events_after_cursor(kit: Kit) -> None:
    first = kit.add.s(1, 2).apply_async()
    second = kit.add.s(3, 4).apply_async()
    events = kit.app.driver.events()
    assert [event.run_id for event in events] == [first.id, second.id]
    later = kit.app.driver.events(after=events[0].id)
    assert [event.run_id for event in later] == [second.id]
    assert kit.app.driver.events(after=events[1].id) == []
    assert len(kit.app.driver.events(limit=1)) == 1
    with pytest.raises(ValueError, match="Event id 'x-y' is invalid"):
        kit.app.driver.events(after="x-y")


def test_events_turned_off(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit(events=False)
    with kit.app.worker(concurrency=2):
        assert kit.add.s(1, 2).apply_async().get(TIMEOUT_S) == 3
    assert kit.app.driver.events() == []


def test_events_capped(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit(events_max_len=5)
    # The cap holds per partition (each has its own stream), so every
    # partition gets about 300 events.
    keys = getattr(kit.app.driver, "_keys", None)
    submitted = 300 * (len(keys.partitions) if keys is not None else 1)
    for index in range(submitted):
        kit.add.s(index, 0).apply_async()
    stored = kit.app.driver.events(limit=submitted)
    # Redis trims with MAXLEN ~ only whole stream nodes (100 entries each by
    # default), so it keeps at least the cap and may keep more.
    assert 5 <= len(stored) < submitted
