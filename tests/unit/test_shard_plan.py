"""Tests of `plan_shards`: how the Redis driver cuts a chord header into shards."""

from __future__ import annotations

from typing import Any

from stem.canvas import Signature, chain, chord, compile_canvas, group
from stem.canvas.spec import GraphSpec, ListInput, NodeInput, template_nodes
from stem.drivers.redis.shards import (
    SHARD_INPUT_TASK,
    SHARD_TASK,
    merged_view,
    plan_shards,
)


def task(name: str, *args: Any) -> Signature:
    return Signature(name, args, {})


def chord_spec(members: int) -> GraphSpec:
    return compile_canvas(chord([task("add", i) for i in range(members)], task("sum")))


def test_small_header_is_not_cut() -> None:
    assert plan_shards(chord_spec(4), 4) is None


def test_zero_turns_sharding_off() -> None:
    assert plan_shards(chord_spec(10), 0) is None


def test_shard_counts_and_order() -> None:
    spec = chord_spec(7)
    plan = plan_shards(spec, 3)
    assert plan is not None
    assert [shard.members for shard in plan.shards] == [3, 3, 1]
    assert [shard.node for shard in plan.shards] == ["0", "3", "6"]
    member_ids = [node.id for shard in plan.shards for node in shard.spec.nodes]
    assert member_ids == [str(i) for i in range(7)]
    home_tasks = [node.task for node in plan.home.nodes]
    assert home_tasks == [SHARD_TASK, SHARD_TASK, SHARD_TASK, "sum"]


def test_callback_joins_shard_nodes() -> None:
    plan = plan_shards(chord_spec(7), 3)
    assert plan is not None
    callback = plan.home.node("7")
    assert callback.deps == ["0", "3", "6"]
    assert callback.input == ListInput(
        items=[NodeInput(node="0"), NodeInput(node="3"), NodeInput(node="6")]
    )
    assert plan.joins == {"7": ["0", "3", "6"]}


def test_shard_output_lists_its_members() -> None:
    plan = plan_shards(chord_spec(5), 2)
    assert plan is not None
    second = plan.shards[1].spec
    assert list(template_nodes(second.output)) == ["2", "3"]
    assert second.sinks == ["2", "3"]
    assert plan.shards[1].roots == ["2", "3"]


def test_chain_member_stays_whole() -> None:
    members = [chain(task("a", i), task("b"), task("c")) for i in range(5)]
    spec = compile_canvas(chord(members, task("sum")))
    plan = plan_shards(spec, 2)
    assert plan is not None
    assert [shard.members for shard in plan.shards] == [2, 2, 1]
    first = plan.shards[0]
    assert [node.id for node in first.spec.nodes] == ["0", "1", "2", "3", "4", "5"]
    # Only the first step of each chain is queued by activation.
    assert first.roots == ["0", "3"]
    assert first.spec.sinks == ["2", "5"]


def test_predecessor_becomes_placeholder() -> None:
    header = [task("add", i) for i in range(4)]
    spec = compile_canvas(chain(task("start"), chord(header, task("sum"))))
    plan = plan_shards(spec, 2)
    assert plan is not None
    shard = plan.shards[0]
    assert shard.inputs == ["0"]
    placeholder = shard.spec.node("0")
    assert placeholder.task == SHARD_INPUT_TASK
    assert shard.spec.node("1").input == NodeInput(node="0")
    assert shard.spec.node("1").deps == ["0"]
    assert shard.roots == ["1", "2"]
    assert plan.home.node("1").deps == ["0"]
    assert plan.home.node("0").task == "start"


def test_header_with_errback_is_not_cut() -> None:
    header = group(task("add", i) for i in range(4)).on_error(task("log"))
    spec = compile_canvas(chord(header, task("sum")))
    assert plan_shards(spec, 2) is None


def test_all_settled_header_is_not_cut() -> None:
    spec = compile_canvas(
        chord([task("add", i) for i in range(4)], task("sum"), join="all_settled")
    )
    assert plan_shards(spec, 2) is None


def test_plain_group_is_not_cut() -> None:
    spec = compile_canvas(group(task("add", i) for i in range(6)))
    assert plan_shards(spec, 2) is None


def test_merged_view_gives_back_the_spec() -> None:
    members = [chain(task("a", i), task("b")) for i in range(5)]
    spec = compile_canvas(chain(task("start"), chord(members, task("sum"))))
    plan = plan_shards(spec, 2)
    assert plan is not None
    shards = {shard.node: shard.spec for shard in plan.shards}
    assert merged_view(plan.home, shards) == spec


def test_nested_group_members_stay_whole() -> None:
    members = [group(task("a", i), task("b", i)) for i in range(5)]
    spec = compile_canvas(chord(members, task("sum")))
    plan = plan_shards(spec, 2)
    assert plan is not None
    assert [shard.members for shard in plan.shards] == [2, 2, 1]
    first = plan.shards[0].spec
    assert first.output == ListInput(
        items=[
            ListInput(items=[NodeInput(node="0"), NodeInput(node="1")]),
            ListInput(items=[NodeInput(node="2"), NodeInput(node="3")]),
        ]
    )
    shards = {shard.node: shard.spec for shard in plan.shards}
    assert merged_view(plan.home, shards) == spec


def test_group_predecessor_gives_placeholders() -> None:
    header = [task("add", i) for i in range(4)]
    canvas = chain(group(task("x"), task("y")), chord(header, task("sum")))
    plan = plan_shards(compile_canvas(canvas), 2)
    assert plan is not None
    shard = plan.shards[0]
    assert shard.inputs == ["0", "1"]
    assert [node.task for node in shard.spec.nodes[:2]] == [
        SHARD_INPUT_TASK,
        SHARD_INPUT_TASK,
    ]
    assert shard.spec.node("2").input == ListInput(
        items=[NodeInput(node="0"), NodeInput(node="1")]
    )


def test_inner_chord_in_member_stays_whole() -> None:
    members = [chord([task("a", i), task("b", i)], task("c")) for i in range(3)]
    spec = compile_canvas(chord(members, task("sum")))
    plan = plan_shards(spec, 2)
    assert plan is not None
    assert [shard.members for shard in plan.shards] == [2, 1]
    assert plan.shards[0].roots == ["0", "1", "3", "4"]
    shards = {shard.node: shard.spec for shard in plan.shards}
    assert merged_view(plan.home, shards) == spec
