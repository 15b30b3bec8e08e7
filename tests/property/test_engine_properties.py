"""The state machine, driven step by step, against the reference interpreter.

Every test draws a random canvas over a three-task vocabulary, a random plan
(success, failure, retries, duplicated messages and reports for each node) and
a seed for the order of steps, then runs it through `stem.testing.StepDriver`.
The settings set only ``deadline``, so the hypothesis profile picked by
``HYPOTHESIS_PROFILE`` decides the number of examples.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stem.canvas import (
    Canvas,
    Chain,
    Chord,
    Group,
    InvalidCanvas,
    Signature,
    compile_canvas,
)
from stem.canvas.values import loads
from stem.engine import machine
from stem.engine.records import ErrorInfo, RunState
from stem.testing import (
    NodePlan,
    StepDriver,
    canvases,
    check_against_interpreter,
    plans,
    without_retries,
)

TASKS = ("a", "b", "c")
SEEDS = st.integers(min_value=0, max_value=2**32 - 1)
PROPERTY_SETTINGS = settings(
    deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Canvas, dict[str, NodePlan], int]:
    """Draw a canvas, a plan for it and a seed."""
    canvas = draw(canvases(TASKS, max_depth=3, max_leaves=10))
    plan = draw(plans(compile_canvas(canvas)))
    return canvas, plan, draw(SEEDS)


def run_plan(canvas: Canvas, plan: dict[str, NodePlan], seed: int) -> StepDriver:
    driver = StepDriver(plan, seed)
    driver.run(compile_canvas(canvas))
    return driver


def final_state(driver: StepDriver) -> RunState:
    assert driver.state is not None
    return driver.state


# -- agreement with the interpreter ------------------------------------------


@PROPERTY_SETTINGS
@given(scenarios())
def test_machine_matches_interpreter(
    scenario: tuple[Canvas, dict[str, NodePlan], int],
) -> None:
    canvas, plan, seed = scenario
    check_against_interpreter(canvas, plan, seed)


@PROPERTY_SETTINGS
@given(scenarios(), st.lists(st.integers(min_value=0, max_value=9), max_size=2))
def test_submit_args_match_interpreter(
    scenario: tuple[Canvas, dict[str, NodePlan], int], args: list[int]
) -> None:
    canvas, _, seed = scenario
    plan = {node.id: NodePlan() for node in compile_canvas(canvas, args).nodes}
    check_against_interpreter(canvas, plan, seed, args=args, kwargs={"k": 1})


# -- duplicate and late reports ------------------------------------------------


@PROPERTY_SETTINGS
@given(scenarios())
def test_repeated_reports_change_nothing(
    scenario: tuple[Canvas, dict[str, NodePlan], int],
) -> None:
    canvas, plan, seed = scenario
    duplicated = {
        node: NodePlan(p.outcome, p.retries, True) for node, p in plan.items()
    }
    # StepDriver re-applies every report late and raises if that changes the run.
    driver = run_plan(canvas, duplicated, seed)
    reports = sum(len(calls) for calls in driver.calls.values())
    assert driver.repeated_reports == reports


@PROPERTY_SETTINGS
@given(scenarios())
def test_takeover_fences_first_worker(
    scenario: tuple[Canvas, dict[str, NodePlan], int],
) -> None:
    canvas, plan, seed = scenario
    taken = {node: replace(p, takeover=True) for node, p in plan.items()}
    check_against_interpreter(canvas, taken, seed)
    # StepDriver raises if a fenced report is applied or changes the run. A
    # takeover happens only while the first claim's report is unapplied, so
    # each one fences exactly one report.
    driver = run_plan(canvas, taken, seed)
    assert driver.fenced_reports == driver.takeovers
    for (node_id, attempt), lease in driver.leases.items():
        record = final_state(driver).nodes[node_id]
        if record.attempt == attempt:
            assert record.lease == lease


@PROPERTY_SETTINGS
@given(scenarios())
def test_late_reports_after_end_ignored(
    scenario: tuple[Canvas, dict[str, NodePlan], int],
) -> None:
    canvas, plan, seed = scenario
    run = final_state(run_plan(canvas, plan, seed))
    error = ErrorInfo("tests", "Late", "late report")
    for node_id, record in run.nodes.items():
        for attempt in range(record.attempt + 1):
            before = _copy(run)
            late: list[Any] = [
                machine.complete(run, node_id, attempt, "1", 1e9),
                machine.fail(run, node_id, attempt, error, 1e9),
                machine.retry(run, node_id, attempt, error, 0.0, 1e9),
                machine.claim(run, node_id, attempt, 1e9),
            ]
            assert late == [None, None, None, False]
            assert run == before


def _copy(run: RunState) -> RunState:
    nodes = {key: replace(record) for key, record in run.nodes.items()}
    return replace(run, nodes=nodes, events=list(run.events))


# -- the execution contract ---------------------------------------------------


@PROPERTY_SETTINGS
@given(scenarios())
def test_each_attempt_enqueued_once(
    scenario: tuple[Canvas, dict[str, NodePlan], int],
) -> None:
    canvas, plan, seed = scenario
    driver = run_plan(canvas, plan, seed)
    run = final_state(driver)
    for (node_id, attempt), count in driver.enqueued.items():
        assert count == 1, f"node {node_id} attempt {attempt} enqueued {count} times"
    joins = [node for node in run.spec.nodes if len(node.deps) > 1]
    for node in joins:
        first = driver.enqueued[(node.id, 1)]
        ran = run.nodes[node.id].state in ("succeeded", "failed")
        assert first == (1 if ran else 0), f"chord callback {node.id}"


@PROPERTY_SETTINGS
@given(scenarios())
def test_retries_are_invisible(
    scenario: tuple[Canvas, dict[str, NodePlan], int],
) -> None:
    canvas, plan, seed = scenario
    with_retries = final_state(run_plan(canvas, plan, seed))
    plain = final_state(run_plan(canvas, without_retries(plan), seed))
    assert with_retries.status == plain.status
    assert with_retries.error_node == plain.error_node
    if plain.status == "succeeded":
        assert with_retries.value is not None
        assert plain.value is not None
        assert loads(with_retries.value) == loads(plain.value)
    states = {node: record.state for node, record in with_retries.nodes.items()}
    plain_states = {node: record.state for node, record in plain.nodes.items()}
    assert states == plain_states


# -- known mismatches ---------------------------------------------------------


def _ok(*nodes: str) -> dict[str, NodePlan]:
    return {node: NodePlan() for node in nodes}


def test_link_on_empty_errback_rejected() -> None:
    errback = Group()
    errback.link(Signature("c"))
    canvas = Signature("a").on_error(errback)

    with pytest.raises(InvalidCanvas, match="has no task"):
        compile_canvas(canvas)


def test_errback_on_empty_link_rejected() -> None:
    link = Group().on_error(Signature("c"))
    canvas = Signature("a")
    canvas.link(link)

    with pytest.raises(InvalidCanvas, match="cannot carry links or errbacks"):
        compile_canvas(canvas)


def test_all_settled_empty_body_absorbs() -> None:
    canvas = Chord(Group([Signature("a")]), Group(), "all_settled")
    check_against_interpreter(canvas, {"0": NodePlan("fail")}, seed=0)


def test_all_settled_body_with_empty_member() -> None:
    body = Group([Signature("x"), Group()])
    canvas = Chord(Group([Signature("a")]), body, "all_settled")
    check_against_interpreter(canvas, {"0": NodePlan("fail"), "1": NodePlan()}, 0)


def test_all_settled_nested_empty_chord_body() -> None:
    inner = Chord(Group([Signature("b").si(), Group()]), Group())
    canvas = Chord(Group([Signature("a").si()]), Chain([inner]), "all_settled")
    check_against_interpreter(canvas, {"0": NodePlan("fail"), "1": NodePlan()}, 0)


def test_empty_body_failure_still_cancels_after() -> None:
    canvas = Chain([Signature("x"), Chord(Group(), Group(), "all_settled")])
    canvas = Chain([canvas, Signature("y")])
    check_against_interpreter(canvas, {"0": NodePlan("fail"), "1": NodePlan()}, 0)
