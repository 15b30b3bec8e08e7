"""Task defaults that a submitted run's nodes get in place of unset options."""

from __future__ import annotations

from stem import App, chord
from stem.canvas.compiler import compile_canvas


def test_submit_fills_task_defaults() -> None:
    app = App("memory://", default_queue="main")
    member = app.task(name="member", queue="members", max_retries=7)(lambda i: i)
    total = app.task(name="total")(lambda values: sum(values))
    canvas = chord([member.s(1), member.s(2).set(queue="own"), member.s(3)], total.s())
    result = canvas.apply_async(priority=4)
    spec, _ = result.graph()
    expected = app.apply_task_defaults(compile_canvas(canvas, options={"priority": 4}))
    assert spec.nodes == expected.nodes
    options = [node.options for node in spec.nodes]
    assert [item.queue for item in options] == ["members", "own", "members", "main"]
    assert [item.max_retries for item in options] == [7, 7, 7, None]
    assert [item.priority for item in options] == [4, 4, 4, 4]
    # Members with equal options share one options object, as compiled.
    assert options[0] is options[2]
