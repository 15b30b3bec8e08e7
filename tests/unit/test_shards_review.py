"""Review tests of `plan_shards` and `merged_view` on nested canvases.

A plan's merged view is what `get()`, `graph()` and the group counts of a
sharded run show. Before any shard runs, it must read exactly like the spec
the run would have had without shards: same nodes, edges, inputs, output
and groups.
"""

from __future__ import annotations

from typing import Any

import pytest

from stem.canvas import Signature, chain, chord, compile_canvas, group
from stem.drivers.redis.shards import merged_view, plan_shards


def task(name: str, *args: Any) -> Signature:
    return Signature(name, args, {})


def _header(size: int, offset: int = 0) -> list[Any]:
    return [task("add", offset + i) for i in range(size)]


CANVASES: dict[str, Any] = {
    "plain": chord(_header(7), task("sum")),
    "chains": chord([task("a", i) | task("b") for i in range(7)], task("sum")),
    "nested groups": chord(
        [group(task("a", i), task("b", i)) for i in range(7)], task("sum")
    ),
    "in a chain": chain(task("first"), chord(_header(7), task("sum")), task("last")),
    "in a group": group(chord(_header(7), task("sum")), task("other")),
    "in a group in a chain": chain(
        task("first"), group(chord(_header(7), task("sum")), task("other")), task("x")
    ),
    "chord of chords": chord(
        [chord(_header(2, 10 * i), task("sum")) for i in range(7)], task("all")
    ),
    "after a group": chain(group(task("a"), task("b")), chord(_header(7), task("sum"))),
}


@pytest.mark.parametrize("shape", sorted(CANVASES))
def test_merged_view_is_unsharded_spec(shape: str) -> None:
    spec = compile_canvas(CANVASES[shape])
    plan = plan_shards(spec, 3)
    assert plan is not None
    shards = {shard.node: shard.spec for shard in plan.shards}
    view = merged_view(plan.home, shards)
    assert [node.id for node in view.nodes] == [node.id for node in spec.nodes]
    assert view.nodes == spec.nodes
    assert view.output == spec.output
    assert view.sinks == spec.sinks
    assert view.groups == spec.groups


@pytest.mark.parametrize("shape", sorted(CANVASES))
def test_home_keeps_outer_groups(shape: str) -> None:
    spec = compile_canvas(CANVASES[shape])
    plan = plan_shards(spec, 3)
    assert plan is not None
    cut = {group.id for shard in plan.shards for group in shard.spec.groups}
    home_groups = {group.id for group in plan.home.groups}
    # Every group of the spec is in the home run or in a shard.
    assert {group.id for group in spec.groups} <= cut | home_groups
