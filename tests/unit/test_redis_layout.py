"""The graph hash fields that layout.graph_fields writes for a new run."""

from __future__ import annotations

from typing import Any

from stem import App, chord, group
from stem.canvas.compiler import compile_canvas
from stem.drivers.redis.layout import graph_fields


def _fields(canvas: Any) -> dict[str, str]:
    flat = graph_fields(compile_canvas(canvas), defaults=False)
    return dict(zip(flat[::2], flat[1::2], strict=True))


def test_group_of_sinks_names_the_role_once() -> None:
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)

    fields = _fields(group(add.s(i, i) for i in range(50)))

    assert fields["end_role"] == "sink"
    assert not [name for name in fields if name.endswith("/end_role")]


def test_chord_members_take_the_reaching_default() -> None:
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    total = app.task(name="total")(lambda values: sum(values))

    fields = _fields(chord([add.s(i, i) for i in range(50)], total.s()))

    assert "end_role" not in fields
    assert [name for name in fields if name.endswith("/end_role")] == ["50/end_role"]
    assert fields["50/end_role"] == "sink"


def test_full_fields_name_every_role() -> None:
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    spec = compile_canvas(group(add.s(i, i) for i in range(3)))

    flat = graph_fields(spec)
    fields = dict(zip(flat[::2], flat[1::2], strict=True))

    assert "end_role" not in fields
    assert [fields[f"{i}/end_role"] for i in range(3)] == ["sink"] * 3


def test_same_shape_nodes_keep_their_own_fields() -> None:
    # Nodes that share a task and options share their fixed fields, but
    # each keeps its own group, dependents and reads.
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    total = app.task(name="total")(lambda values: sum(values))
    inner = group(add.s(1, 1), add.s(2, 2))
    canvas = chord([add.s(0, 0), inner, add.s(3, 3)], total.s()) | add.s(5)

    spec = compile_canvas(canvas)
    full = graph_fields(spec, defaults=True)
    fields = dict(zip(full[::2], full[1::2], strict=True))

    for node in spec.nodes:
        assert fields[f"{node.id}/task"] == node.task
        expected_group = "" if node.group is None else str(node.group)
        assert fields[f"{node.id}/group"] == expected_group
        assert fields[f"{node.id}/dependents"] == ",".join(spec.dependents[node.id])
        assert fields[f"{node.id}/ndeps"] == str(len(node.deps))
    last = spec.nodes[-1]
    assert fields[f"{last.id}/reads"] == spec.nodes[-2].id
