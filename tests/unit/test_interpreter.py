"""Hand-checked cases for the reference interpreter, `stem.engine.interpreter`."""

from __future__ import annotations

from typing import Any

import pytest

from stem.canvas import Chord, Group, Signature, chain, chord, group
from stem.engine.interpreter import interpret
from stem.engine.records import ERROR_RECORD_KEY


class Boom(Exception):
    """Raised by the ``boom`` task."""


def call(task: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Run the tiny task vocabulary of these tests."""
    if task == "add":
        return sum(args)
    if task == "collect":
        return list(args)
    if task == "boom":
        raise Boom("boom failed")
    if task == "note":
        return args
    raise AssertionError(f"Unknown task {task!r}.")


def add(*args: int) -> Signature:
    return Signature("add", args)


def test_chain_value_feeds_each_step() -> None:
    result = interpret(chain(add(1, 2), add(10), add(100)), call)
    assert result.status == "succeeded"
    assert result.value == 113
    assert result.calls["1"] == [([3, 10], {})]


def test_submit_args_reach_first_step_only() -> None:
    result = interpret(chain(add(1), add(10)), call, args=(5,))
    assert result.value == 16
    assert result.calls["0"] == [([5, 1], {})]


def test_immutable_signature_ignores_value() -> None:
    result = interpret(chain(add(1), Signature("add", (7,), immutable=True)), call)
    assert result.value == 7


def test_nested_group_gives_nested_list() -> None:
    canvas = group(add(1), group(add(2), group()), group(add(3)))
    result = interpret(canvas, call)
    assert result.value == [1, [2, []], [3]]
    assert sorted(result.states) == ["0", "1", "2"]


def test_empty_group_gives_empty_list() -> None:
    assert interpret(Group(), call).value == []


def test_chord_body_gets_header_list() -> None:
    result = interpret(chord([add(1), add(2)], Signature("collect")), call)
    assert result.value == [[1, 2]]


def test_fail_fast_chord_cancels_body() -> None:
    canvas = chord([add(1), Signature("boom")], Signature("collect"))
    result = interpret(canvas, call)
    assert result.status == "failed"
    assert result.error_node == "1"
    assert isinstance(result.error, Boom)
    assert result.states == {"0": "succeeded", "1": "failed", "2": "cancelled"}


def test_all_settled_chord_absorbs_failure() -> None:
    canvas = Chord(
        Group([add(1), chain(Signature("boom"), add(5))]),
        Signature("collect"),
        "all_settled",
    )
    result = interpret(canvas, call)
    assert result.status == "succeeded"
    settled = result.value[0]
    assert settled[0] == 1
    cancelled = settled[1][ERROR_RECORD_KEY]
    assert cancelled == {"state": "cancelled", "node": "2", "task": "add"}
    assert result.states["1"] == "failed"
    assert result.states["3"] == "succeeded"


def test_all_settled_record_names_error() -> None:
    canvas = Chord(Group([Signature("boom")]), Signature("collect"), "all_settled")
    record = interpret(canvas, call).value[0][0][ERROR_RECORD_KEY]
    assert record["state"] == "failed"
    assert record["type"] == "Boom"
    assert record["module"] == __name__
    assert record["message"] == "boom failed"


def test_errback_fires_once_with_task_id() -> None:
    canvas = group(Signature("boom"), Signature("boom")).on_error(Signature("note"))
    result = interpret(canvas, call, run_id="R1")
    assert result.errback_calls == {"2": 1}
    assert result.calls["2"] == [(["R1-0"], {})]
    assert result.errback_causes == {"2": "0"}
    assert result.error_node == "0"


def test_errback_skipped_on_success() -> None:
    result = interpret(add(1).on_error(Signature("note")), call)
    assert result.errback_calls == {"1": 0}
    assert result.states["1"] == "skipped"


def test_link_skipped_on_failure() -> None:
    canvas = chain(add(1), Signature("boom"))
    canvas.link(Signature("note"))
    result = interpret(canvas, call)
    assert result.status == "failed"
    assert result.link_calls == {"2": 0}
    assert result.states["2"] == "skipped"


def test_link_gets_canvas_value() -> None:
    canvas = group(add(1), add(2))
    canvas.link(Signature("note"))
    result = interpret(canvas, call)
    assert result.value == [1, 2]
    assert result.link_calls == {"2": 1}
    assert result.calls["2"] == [([[1, 2]], {})]


def test_links_numbered_after_canvas() -> None:
    inner = add(1)
    inner.link(Signature("note"))
    result = interpret(chain(inner, add(2)), call)
    # The link is numbered right after its own canvas, before the next step.
    assert result.roles == {"0": "task", "1": "link", "2": "task"}
    assert result.value == 3


def test_interpret_requires_a_call() -> None:
    with pytest.raises(ValueError, match="needs a task call"):
        interpret(add(1))
