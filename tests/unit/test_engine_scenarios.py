"""Scenario tests of canvas shapes, failures, errbacks, links and joins.

Each test runs a real canvas on ``memory://`` with a thread-pool worker and
checks the run's value or error, the node states and how often callbacks ran.
"""

from __future__ import annotations

import pytest

from stem import chain, chord, group, is_error_record

from ..task_kit import Kit

TIMEOUT_S = 5.0


# -- values of each shape --------------------------------------------------------


def test_chain_feeds_each_step(kit: Kit) -> None:
    canvas = chain(kit.add.s(1, 2), kit.add.s(3), kit.add.s(4))
    with kit.app.worker(concurrency=4):
        assert canvas.apply_async().get(TIMEOUT_S) == 10


def test_chain_with_submit_args(kit: Kit) -> None:
    canvas = chain(kit.add.s(2), kit.add.s(3))
    with kit.app.worker(concurrency=4):
        assert canvas.apply_async((1,)).get(TIMEOUT_S) == 6


def test_immutable_step_ignores_value(kit: Kit) -> None:
    canvas = chain(kit.add.s(1, 1), kit.add.si(10, 10))
    with kit.app.worker(concurrency=4):
        assert canvas.apply_async().get(TIMEOUT_S) == 20


def test_none_value_is_passed_on(kit: Kit) -> None:
    canvas = chain(kit.record.s(), kit.echo.s())
    with kit.app.worker(concurrency=4):
        assert canvas.apply_async().get(TIMEOUT_S) is None
    assert kit.called("echo") == [(None,)]


def test_empty_group_gives_empty_list(kit: Kit) -> None:
    with kit.app.worker(concurrency=4):
        assert kit.app.submit(group()).get(TIMEOUT_S) == []


def test_one_member_group_gives_list(kit: Kit) -> None:
    with kit.app.worker(concurrency=4):
        assert group(kit.add.s(1, 1)).apply_async().get(TIMEOUT_S) == [2]


def test_nested_group_stays_nested(kit: Kit) -> None:
    canvas = group(
        group(kit.add.s(1, 1), kit.add.s(2, 2)),
        kit.add.s(3, 3),
        group(kit.add.s(4, 4)),
        group(),
    )
    with kit.app.worker(concurrency=4):
        assert canvas.apply_async().get(TIMEOUT_S) == [[2, 4], 6, [8], []]


def test_group_keeps_declaration_order(kit: Kit) -> None:
    canvas = group(kit.add.s(i, 0) for i in range(30))
    with kit.app.worker(concurrency=8):
        assert canvas.apply_async().get(TIMEOUT_S) == list(range(30))


def test_group_gets_upstream_value(kit: Kit) -> None:
    canvas = chain(kit.add.s(1, 1), group(kit.add.s(10), kit.add.s(20)))
    with kit.app.worker(concurrency=4):
        assert canvas.apply_async().get(TIMEOUT_S) == [12, 22]


def test_chord_sums_its_header(kit: Kit) -> None:
    canvas = chord([kit.add.s(1, 1), kit.add.s(2, 2)], kit.total.s())
    with kit.app.worker(concurrency=4):
        assert canvas.apply_async().get(TIMEOUT_S) == 6


def test_chord_with_empty_header(kit: Kit) -> None:
    canvas = chord([], kit.echo.s())
    with kit.app.worker(concurrency=4):
        assert canvas.apply_async().get(TIMEOUT_S) == []
    assert kit.called("echo") == [([],)]


def test_chord_equals_group_then_body(kit: Kit) -> None:
    header = [kit.add.s(1, 2), kit.add.s(3, 4)]
    with kit.app.worker(concurrency=4):
        as_chord = chord(header, kit.echo.s()).apply_async().get(TIMEOUT_S)
        as_chain = chain(group(header), kit.echo.s()).apply_async().get(TIMEOUT_S)
    assert as_chord == as_chain


def test_nested_chords(kit: Kit) -> None:
    inner = chord([kit.add.s(1, 1), kit.add.s(2, 2)], kit.total.s())
    outer = chord([inner, kit.add.s(10, 10)], kit.total.s())
    with kit.app.worker(concurrency=4):
        assert outer.apply_async().get(TIMEOUT_S) == 26


def test_chord_inside_chain(kit: Kit) -> None:
    canvas = chain(
        kit.add.s(1, 1),
        chord([kit.add.s(1), kit.add.s(2)], kit.total.s()),
        kit.add.s(100),
    )
    with kit.app.worker(concurrency=4):
        assert canvas.apply_async().get(TIMEOUT_S) == 107


def test_chord_with_group_body(kit: Kit) -> None:
    canvas = chord(
        [kit.add.s(1, 1), kit.add.s(2, 2)], group(kit.total.s(), kit.echo.s())
    )
    with kit.app.worker(concurrency=4):
        assert canvas.apply_async().get(TIMEOUT_S) == [6, [2, 4]]


def test_group_pipe_task_is_chord(kit: Kit) -> None:
    canvas = group(kit.add.s(1, 1), kit.add.s(1, 2)) | kit.total.s()
    with kit.app.worker(concurrency=4):
        assert canvas.apply_async().get(TIMEOUT_S) == 5


def test_chord_body_runs_once(kit: Kit) -> None:
    canvas = chord([kit.add.s(i, i) for i in range(20)], kit.total.s())
    with kit.app.worker(concurrency=8):
        assert canvas.apply_async().get(TIMEOUT_S) == 380
    assert len(kit.called("total")) == 1


# -- failures in each position ---------------------------------------------------


def test_failure_first_in_chain(kit: Kit) -> None:
    result = chain(kit.fail.s(), kit.add.s(1), kit.add.s(2)).apply_async()
    with (
        kit.app.worker(concurrency=4),
        pytest.raises(ValueError, match="planned failure"),
    ):
        result.get(TIMEOUT_S)
    states = [node.state for node in result.nodes().values()]
    assert states == ["failed", "cancelled", "cancelled"]
    assert kit.called("add") == []


def test_failure_last_in_chain(kit: Kit) -> None:
    result = chain(kit.add.s(1, 1), kit.add.s(1), kit.fail.s()).apply_async()
    with (
        kit.app.worker(concurrency=4),
        pytest.raises(ValueError, match="planned failure"),
    ):
        result.get(TIMEOUT_S)
    assert result.state == "failed"
    assert kit.called("fail") == [(3,)]


def test_failed_group_member_keeps_siblings(kit: Kit) -> None:
    result = group(kit.add.s(1, 1), kit.fail.s(), kit.add.s(2, 2)).apply_async()
    with kit.app.worker(concurrency=4):
        with pytest.raises(ValueError, match="planned failure"):
            result.get(TIMEOUT_S)
        kit.app.driver.wait_idle(TIMEOUT_S)
    nodes = result.nodes()
    assert nodes["0"].state == "succeeded"
    assert nodes["1"].state == "failed"
    assert nodes["2"].state == "succeeded"


def test_failed_header_cancels_body(kit: Kit) -> None:
    result = chord([kit.add.s(1, 1), kit.fail.s()], kit.total.s()).apply_async()
    with (
        kit.app.worker(concurrency=4),
        pytest.raises(ValueError, match="planned failure"),
    ):
        result.get(TIMEOUT_S)
    assert result.node("2").state == "cancelled"
    assert kit.called("total") == []


def test_failed_body_fails_chord(kit: Kit) -> None:
    result = chord([kit.add.s(1, 1), kit.add.s(2, 2)], kit.fail.s()).apply_async()
    with (
        kit.app.worker(concurrency=4),
        pytest.raises(ValueError, match="planned failure"),
    ):
        result.get(TIMEOUT_S)
    assert kit.called("fail") == [([2, 4],)]


def test_lowest_failed_node_is_error(kit: Kit) -> None:
    @kit.app.task(name="fail_other")
    def fail_other() -> None:
        raise KeyError("second failure")

    result = group(kit.add.s(1, 1), kit.fail.s(), fail_other.s()).apply_async()
    with kit.app.worker(concurrency=4):
        error = result.get(TIMEOUT_S, propagate=False)
    assert isinstance(error, ValueError)


def test_get_without_propagate_returns_error(kit: Kit) -> None:
    with kit.app.worker(concurrency=4):
        error = kit.fail.delay().get(TIMEOUT_S, propagate=False)
    assert isinstance(error, ValueError)
    assert str(error) == "planned failure"


def test_absorbed_failure_leaves_run_succeeded(kit: Kit) -> None:
    header = [kit.add.s(1, 1), kit.fail.s()]
    canvas = chain(chord(header, kit.echo.s(), join="all_settled"), kit.echo.s())
    with kit.app.worker(concurrency=4):
        value = canvas.apply_async().get(TIMEOUT_S)
    assert value[0] == 2
    assert is_error_record(value[1])


def test_absorbed_failure_fails_other_member(kit: Kit) -> None:
    # fail reaches the group twice through empty groups. The chord absorbs its
    # failure, but the group's empty second member needs fail's value.
    header = [kit.add.si(1, 1), group()]
    members = group(chord(header, group(), join="all_settled"), group())
    result = chain(kit.fail.s(), members).apply_async()
    with (
        kit.app.worker(concurrency=4),
        pytest.raises(ValueError, match="planned failure"),
    ):
        result.get(TIMEOUT_S)
    assert result.state == "failed"
    assert kit.called("add") == []


# -- errbacks --------------------------------------------------------------------


def test_errback_fires_once_with_task_id(kit: Kit) -> None:
    canvas = chain(kit.add.s(1, 1), kit.fail.s(), kit.add.s(1))
    result = canvas.apply_async(link_error=kit.record.s())
    with kit.app.worker(concurrency=4):
        result.get(TIMEOUT_S, propagate=False)
        assert kit.app.driver.wait_idle(TIMEOUT_S)
    assert kit.called("record") == [(f"{result.id}-1",)]


def test_errback_fires_once_for_two_failures(kit: Kit) -> None:
    canvas = group(kit.fail.s(), kit.fail.s(), kit.add.s(1, 1))
    result = canvas.apply_async(link_error=kit.record.s())
    with kit.app.worker(concurrency=4):
        result.get(TIMEOUT_S, propagate=False)
        assert kit.app.driver.wait_idle(TIMEOUT_S)
    calls = kit.called("record")
    assert len(calls) == 1
    assert calls[0][0] in (f"{result.id}-0", f"{result.id}-1")


def test_errback_fires_on_upstream_failure(kit: Kit) -> None:
    inner = group(kit.add.s(1), kit.add.s(2))
    inner.set(link_error=kit.record.s())
    result = chain(kit.fail.s(), inner).apply_async()
    with kit.app.worker(concurrency=4):
        result.get(TIMEOUT_S, propagate=False)
        assert kit.app.driver.wait_idle(TIMEOUT_S)
    assert kit.called("record") == [(f"{result.id}-0",)]
    assert kit.called("add") == []


def test_errback_skipped_on_success(kit: Kit) -> None:
    result = kit.add.apply_async((1, 1), link_error=kit.record.s())
    with kit.app.worker(concurrency=4):
        assert result.get(TIMEOUT_S) == 2
        assert kit.app.driver.wait_idle(TIMEOUT_S)
    assert kit.called("record") == []
    states = {node.task: node.state for node in result.nodes().values()}
    assert states["record"] == "skipped"


def test_errback_not_fired_on_cancel(kit: Kit) -> None:
    canvas = chain(kit.wait_gate.s(), kit.add.s(1, 1))
    result = canvas.apply_async(link_error=kit.record.s())
    with kit.app.worker(concurrency=4):
        result.cancel()
        kit.gate.set()
        assert kit.app.driver.wait_idle(TIMEOUT_S)
    assert result.state == "cancelled"
    assert kit.called("record") == []
    assert kit.called("add") == []


def test_member_errback_fires_under_all_settled(kit: Kit) -> None:
    member = kit.fail.s()
    member.set(link_error=kit.record.s())
    canvas = chord([kit.add.s(1, 1), member], kit.echo.s(), join="all_settled")
    result = canvas.apply_async()
    with kit.app.worker(concurrency=4):
        value = result.get(TIMEOUT_S)
        assert kit.app.driver.wait_idle(TIMEOUT_S)
    assert value[0] == 2
    assert len(kit.called("record")) == 1


def test_chord_errback_silent_when_absorbed(kit: Kit) -> None:
    canvas = chord([kit.add.s(1, 1), kit.fail.s()], kit.echo.s(), join="all_settled")
    result = canvas.apply_async(link_error=kit.record.s())
    with kit.app.worker(concurrency=4):
        result.get(TIMEOUT_S)
        assert kit.app.driver.wait_idle(TIMEOUT_S)
    assert kit.called("record") == []


# -- links -----------------------------------------------------------------------


def test_link_gets_canvas_value(kit: Kit) -> None:
    canvas = chain(kit.add.s(1, 1), kit.add.s(1))
    result = canvas.apply_async(link=kit.record.s())
    with kit.app.worker(concurrency=4):
        assert result.get(TIMEOUT_S) == 3
        assert kit.app.driver.wait_idle(TIMEOUT_S)
    assert kit.called("record") == [(3,)]


def test_link_on_group_gets_list(kit: Kit) -> None:
    result = group(kit.add.s(1, 1), kit.add.s(2, 2)).apply_async(link=kit.record.s())
    with kit.app.worker(concurrency=4):
        result.get(TIMEOUT_S)
        assert kit.app.driver.wait_idle(TIMEOUT_S)
    assert kit.called("record") == [([2, 4],)]


def test_link_skipped_on_failure(kit: Kit) -> None:
    result = kit.fail.apply_async(link=kit.record.s())
    with kit.app.worker(concurrency=4):
        result.get(TIMEOUT_S, propagate=False)
        assert kit.app.driver.wait_idle(TIMEOUT_S)
    assert kit.called("record") == []
    states = {node.task: node.state for node in result.nodes().values()}
    assert states["record"] == "skipped"


def test_failing_link_keeps_run_succeeded(kit: Kit) -> None:
    result = kit.add.apply_async((1, 1), link=kit.fail.s())
    with kit.app.worker(concurrency=4):
        assert result.get(TIMEOUT_S) == 2
        assert kit.app.driver.wait_idle(TIMEOUT_S)
    assert result.state == "succeeded"
    states = {node.task: node.state for node in result.nodes().values()}
    assert states["fail"] == "failed"


def test_get_does_not_wait_for_link(kit: Kit) -> None:
    result = kit.add.apply_async((1, 1), link=kit.wait_gate.s())
    with kit.app.worker(concurrency=4):
        assert result.get(TIMEOUT_S) == 2
        kit.gate.set()
        assert kit.app.driver.wait_idle(TIMEOUT_S)
    assert kit.called("wait_gate") == [(2,)]


# -- all_settled -----------------------------------------------------------------


def test_all_settled_passes_error_records(kit: Kit) -> None:
    header = [kit.add.s(1, 1), kit.fail.s(), kit.add.s(2, 2)]
    result = chord(header, kit.echo.s(), join="all_settled").apply_async()
    with kit.app.worker(concurrency=4):
        value = result.get(TIMEOUT_S)
    assert value[0] == 2
    assert value[2] == 4
    assert is_error_record(value[1])
    detail = value[1]["__stem_error__"]
    assert detail["type"] == "ValueError"
    assert detail["message"] == "planned failure"
    assert detail["state"] == "failed"


def test_all_settled_records_cancelled_member(kit: Kit) -> None:
    header = [chain(kit.fail.s(), kit.add.s(1)), kit.add.s(2, 2)]
    result = chord(header, kit.echo.s(), join="all_settled").apply_async()
    with kit.app.worker(concurrency=4):
        value = result.get(TIMEOUT_S)
    assert is_error_record(value[0])
    assert value[0]["__stem_error__"]["state"] == "cancelled"
    assert value[1] == 4


def test_fail_fast_chord_fails_run(kit: Kit) -> None:
    header = [kit.add.s(1, 1), kit.fail.s()]
    result = chord(header, kit.echo.s(), join="fail_fast").apply_async()
    with (
        kit.app.worker(concurrency=4),
        pytest.raises(ValueError, match="planned failure"),
    ):
        result.get(TIMEOUT_S)
    assert kit.called("echo") == []


def test_map_after_task_ignores_input(kit: Kit) -> None:
    canvas = kit.add.s(1, 1) | kit.echo.map([5, 6])

    with kit.app.worker(concurrency=2):
        value = canvas.apply_async().get(TIMEOUT_S)

    assert value == [5, 6]


def test_starmap_after_task_ignores_input(kit: Kit) -> None:
    canvas = kit.add.s(1, 1) | kit.add.starmap([(1, 2), (3, 4)])

    with kit.app.worker(concurrency=2):
        value = canvas.apply_async().get(TIMEOUT_S)

    assert value == [3, 7]
