"""Run retries, driven step by step, against the reference interpreter.

Each example runs a random canvas with a random plan until it ends. When it
fails, the run is retried with every planned failure removed, while planned
retries, duplicates and takeovers stay. The second epoch must give the
interpreter's value for a canvas where nothing fails, computed with the
values that kept nodes stored. It must not run again any node that had
succeeded.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from stem.canvas import Canvas, Chord, Group, Signature, compile_canvas
from stem.canvas.spec import NodeId
from stem.canvas.values import dumps, loads
from stem.engine import machine
from stem.engine.errors import RunNotRetryable
from stem.engine.interpreter import interpret
from stem.engine.records import RunState
from stem.testing import NodePlan, StepDriver, canvases, echo_value, plans

TASKS = ("a", "b", "c")
SEEDS = st.integers(min_value=0, max_value=2**32 - 1)
PROPERTY_SETTINGS = settings(
    deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def succeeding(plan: dict[NodeId, NodePlan]) -> dict[NodeId, NodePlan]:
    """Return the same plan with every planned failure turned into a success."""
    return {node: replace(item, outcome="succeed") for node, item in plan.items()}


def kept_value_call(first: RunState) -> Any:
    """Build an interpreter node call that returns each kept node's stored value.

    A node that succeeded in the first epoch and is not reopened keeps its
    value, which may have been built from an error record (a join under
    ``all_settled``), so the interpreter must use it too.
    """
    kept = {
        node_id: record.value
        for node_id, record in first.nodes.items()
        if record.state == "succeeded" and record.value is not None
    }

    def call(
        node_id: NodeId, task: str, args: list[Any], kwargs: dict[str, Any]
    ) -> Any:
        if node_id in kept:
            return loads(kept[node_id])
        return echo_value(task, args, kwargs)

    return call


def copy_state(run: RunState) -> RunState:
    nodes = {key: replace(record) for key, record in run.nodes.items()}
    return replace(run, nodes=nodes, events=list(run.events))


@PROPERTY_SETTINGS
@given(
    canvas=canvases(TASKS, max_depth=3, max_leaves=10),
    data=st.data(),
    seed=SEEDS,
)
def test_retry_matches_interpreter(canvas: Canvas, data: Any, seed: int) -> None:
    spec = compile_canvas(canvas)
    plan = data.draw(plans(spec), label="plan")
    driver = StepDriver(plan, seed)
    first = driver.run(spec)
    if first.status == "succeeded":
        with pytest.raises(RunNotRetryable, match="succeeded"):
            machine.reopen(first, 0.0)
        event("run succeeded at once")
        return
    before = copy_state(first)
    reopened = machine.nodes_to_reopen(before)
    calls_before = {node: len(calls) for node, calls in driver.calls.items()}
    second = driver.retry_run(succeeding(plan))
    context = f"canvas {canvas!r}, seed {seed}"

    expected = interpret(canvas, run_id="run", node_call=kept_value_call(before))
    assert second.status == "succeeded", context
    assert second.epoch == 2
    assert second.value is not None
    assert loads(second.value) == loads(dumps(expected.value)), context

    # A node that succeeded and was not reopened never runs again.
    for node_id, record in before.nodes.items():
        if record.state != "succeeded" or node_id in reopened:
            continue
        ran = len(driver.calls.get(node_id, []))
        assert ran == calls_before.get(node_id, 0), f"node {node_id} ran, {context}"
        assert second.nodes[node_id].value == record.value, context

    # Reopened succeeded nodes exist only on errback branches.
    for node_id in reopened:
        if before.nodes[node_id].state == "succeeded":
            assert expected.branches[node_id] == "errback", context
            event("an errback branch that ran is reopened")

    states = {node_id: record.state for node_id, record in second.nodes.items()}
    assert states == expected.states, context


@PROPERTY_SETTINGS
@given(
    canvas=canvases(TASKS, max_depth=3, max_leaves=10),
    data=st.data(),
    seed=SEEDS,
)
def test_retry_of_clean_canvas_matches_plain_run(
    canvas: Canvas, data: Any, seed: int
) -> None:
    """Without ``all_settled`` joins, a retry gives a failure-free run's value."""
    spec = compile_canvas(canvas)
    if any(node.join == "all_settled" or node.settled for node in spec.nodes):
        event("skipped: has an all_settled join")
        return
    plan = data.draw(plans(spec), label="plan")
    driver = StepDriver(plan, seed)
    if driver.run(spec).status == "succeeded":
        return
    second = driver.retry_run(succeeding(plan))
    clean = StepDriver(succeeding(plan), seed).run(spec)
    assert second.status == clean.status == "succeeded"
    assert second.value is not None
    assert clean.value is not None
    assert loads(second.value) == loads(clean.value)


@PROPERTY_SETTINGS
@given(
    canvas=canvases(TASKS, max_depth=3, max_leaves=10),
    data=st.data(),
    seed=SEEDS,
)
def test_retry_with_same_failures_fails_again(
    canvas: Canvas, data: Any, seed: int
) -> None:
    """A retry with the same plan ends as the first epoch did, error node included."""
    spec = compile_canvas(canvas)
    plan = data.draw(plans(spec), label="plan")
    driver = StepDriver(plan, seed)
    first = driver.run(spec)
    if first.status == "succeeded":
        return
    error_node = first.error_node
    second = driver.retry_run()
    assert second.status == "failed"
    assert second.epoch == 2
    assert second.error_node == error_node


def test_retry_keeps_all_settled_join() -> None:
    """A join that succeeded over a failed member keeps its value and its input."""
    canvas: Canvas = Chord(
        Group([Signature("a", [1]), Signature("b", [2])]),
        Signature("c"),
        "all_settled",
    )
    canvas = Chord(Group([canvas, Signature("a", [3])]), Signature("b"))
    spec = compile_canvas(canvas)
    # Node 1 fails inside the all_settled chord, whose body 2 absorbs it, and
    # node 3 fails the outer chord.
    join = "2"
    assert spec.node(join).join == "all_settled"
    plan = {"1": NodePlan("fail"), "3": NodePlan("fail")}
    driver = StepDriver(plan, seed=1)
    first = driver.run(spec)
    assert first.status == "failed"
    joined = first.nodes[join].value
    second = driver.retry_run({})
    assert second.status == "succeeded"
    assert second.nodes[join].value == joined
    assert len(driver.calls[join]) == 1
    assert len(driver.calls["1"]) == 2
    assert len(driver.calls["3"]) == 2
    assert len(driver.calls["4"]) == 1
