"""Stress tests: many concurrent runs, deep chains and wide chords.

Every wait has a timeout, so a hang fails the test instead of the suite.
"""

from __future__ import annotations

import pytest

from stem import chain, chord, group

from ..task_kit import Kit

TIMEOUT_S = 10.0


def test_many_runs_at_once(kit: Kit) -> None:
    results = []
    with kit.app.worker(concurrency=8):
        for index in range(60):
            header = [kit.add.s(index, member) for member in range(5)]
            canvas = chain(chord(header, kit.total.s()), kit.add.s(1))
            results.append((index, canvas.apply_async()))
        values = {index: result.get(TIMEOUT_S) for index, result in results}
        assert kit.app.driver.wait_idle(TIMEOUT_S)
    for index, value in values.items():
        assert value == 5 * index + 10 + 1, f"run {index}"
    assert len(kit.called("total")) == 60


def test_concurrent_retries_and_failures(kit: Kit) -> None:
    results = []
    with kit.app.worker(concurrency=8):
        for index in range(30):
            header = [kit.flaky.s(index, 1), kit.fail.s(), kit.add.s(index, 0)]
            canvas = chord(header, kit.echo.s(), join="all_settled")
            results.append(canvas.apply_async(link_error=kit.record.s()))
        values = [result.get(TIMEOUT_S) for result in results]
        assert kit.app.driver.wait_idle(TIMEOUT_S)
    for index, value in enumerate(values):
        assert value[0] == index
        assert value[2] == index
    assert len(kit.called("echo")) == 30
    assert kit.called("record") == []


def test_deep_chain_of_200(kit: Kit) -> None:
    canvas = chain(kit.add.s(0, 0), *(kit.add.s(1) for _ in range(199)))
    with kit.app.worker(concurrency=8):
        assert canvas.apply_async().get(TIMEOUT_S) == 199


def test_deep_chain_failure_cancels_rest(kit: Kit) -> None:
    steps = [kit.add.s(1) for _ in range(150)]
    canvas = chain(kit.add.s(0, 0), kit.fail.s(), *steps)
    result = canvas.apply_async(link_error=kit.record.s())
    with kit.app.worker(concurrency=8):
        with pytest.raises(ValueError, match="planned failure"):
            result.get(TIMEOUT_S)
        assert kit.app.driver.wait_idle(TIMEOUT_S)
    assert len(kit.called("record")) == 1
    assert len(kit.called("add")) == 1


def test_wide_chord_of_2000(kit: Kit) -> None:
    canvas = chord([kit.add.s(i, 0) for i in range(2000)], kit.total.s())
    with kit.app.worker(concurrency=8):
        assert canvas.apply_async().get(TIMEOUT_S) == sum(range(2000))
    assert len(kit.called("total")) == 1


def test_wide_group_keeps_order(kit: Kit) -> None:
    canvas = group(kit.add.s(i, 0) for i in range(1000))
    with kit.app.worker(concurrency=8):
        assert canvas.apply_async().get(TIMEOUT_S) == list(range(1000))


def test_cancel_races_running_runs(kit: Kit) -> None:
    with kit.app.worker(concurrency=8):
        results = []
        for _ in range(40):
            canvas = chain(kit.add.s(1, 1), group(kit.add.s(1), kit.add.s(2)))
            results.append(canvas.apply_async(link_error=kit.record.s()))
        for result in results[::2]:
            result.cancel()
        assert kit.app.driver.wait_idle(TIMEOUT_S)
    for index, result in enumerate(results):
        expected = "cancelled" if index % 2 == 0 else "succeeded"
        assert result.state in (expected, "succeeded"), f"run {index}"
    assert kit.called("record") == []


def test_errback_once_under_many_failures(kit: Kit) -> None:
    canvas = group(kit.fail.s() for _ in range(40))
    with kit.app.worker(concurrency=8):
        results = [canvas.apply_async(link_error=kit.record.s()) for _ in range(10)]
        for result in results:
            result.get(TIMEOUT_S, propagate=False)
        assert kit.app.driver.wait_idle(TIMEOUT_S)
    fired = sorted(call[0].rsplit("-", 1)[0] for call in kit.called("record"))
    assert fired == sorted(result.id for result in results)


def test_error_is_lowest_failed_member(kit: Kit) -> None:
    canvas = group(kit.add.s(1, 1), *(kit.fail.s() for _ in range(20)))
    with kit.app.worker(concurrency=8):
        result = canvas.apply_async()
        result.get(TIMEOUT_S, propagate=False)
        assert kit.app.driver.wait_idle(TIMEOUT_S)
    assert result.snapshot().error_node == "1"
