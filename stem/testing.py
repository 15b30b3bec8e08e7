"""Property-testing helpers for Stem workflows (the ``stem[testing]`` extra).

- `canvases` draws random nested canvases over a task vocabulary;
- `plans` draws an outcome for every node of a compiled canvas;
- `StepDriver` runs a plan through the engine's state machine one step at a
  time, in an order chosen by a seeded random generator, with no threads;
- `check_against_interpreter` runs a canvas both ways and asserts that the
  graph engine agrees with the reference interpreter.

Tasks never run here: a planned success returns `echo_value` of the task's
name and arguments, so every value shows the path it took through the
canvas, and a planned failure raises `PlannedFailure`.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from hypothesis import strategies as st

from stem.canvas.compiler import compile_canvas
from stem.canvas.primitives import Canvas, Chain, Chord, Group, Signature
from stem.canvas.spec import GraphSpec, NodeId
from stem.canvas.values import decode, dumps, loads
from stem.engine import machine
from stem.engine.interpreter import Interpretation, interpret
from stem.engine.records import ErrorInfo, RunState

__all__ = [
    "NodePlan",
    "Plan",
    "PlannedFailure",
    "PlannedRetry",
    "StepDriver",
    "canvases",
    "check_against_interpreter",
    "echo_value",
    "plans",
    "without_retries",
]


class PlannedFailure(Exception):
    """The exception a node raises when its plan is to fail."""


class PlannedRetry(Exception):
    """The exception recorded for an attempt that its plan retries."""


@dataclass(frozen=True)
class NodePlan:
    """The planned outcome of each attempt of one node.

    The first ``retries`` attempts ask for a retry, and the next one ends as
    ``outcome``. With ``duplicate``, every message for the node is delivered
    twice and every report about it is applied a second time, late. With
    ``takeover``, each attempt's message is reclaimed once after its first
    claim, as when the worker seems dead: if the attempt is still running, a
    second worker takes its lease over and runs it again, and the first
    worker's report, now fenced, must change nothing.
    """

    outcome: Literal["succeed", "fail"] = "succeed"
    retries: int = 0
    duplicate: bool = False
    takeover: bool = False


#: A plan for each node id; a node that is missing succeeds at once.
Plan = Mapping[NodeId, NodePlan]


def echo_value(task: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
    """Return what a planned success returns: the task's name and arguments."""
    return {"task": task, "args": list(args), "kwargs": dict(kwargs)}


def failure_message(node_id: NodeId) -> str:
    """Return the message of the `PlannedFailure` that a node raises."""
    return f"node {node_id} failed as planned"


def without_retries(plan: Plan) -> dict[NodeId, NodePlan]:
    """Return the same plan with every retry removed."""
    return {node: replace(item, retries=0) for node, item in plan.items()}


# -- strategies -------------------------------------------------------------


def canvases(
    tasks: Sequence[str], max_depth: int = 3, max_leaves: int = 10
) -> st.SearchStrategy[Canvas]:
    """Draw nested canvases of signatures over the task names in ``tasks``.

    Canvases mix chains, groups (empty and one-member ones too), chords under
    both join policies, immutable signatures, links and errbacks, nested at
    most ``max_depth`` levels and with at most ``max_leaves`` signatures,
    links and errbacks included.

    Raises:
        ValueError: if ``tasks`` is empty or ``max_leaves`` is below 1.
    """
    names = list(tasks)
    if not names:
        raise ValueError("canvases() needs at least one task name in tasks.")
    if max_leaves < 1:
        raise ValueError(f"max_leaves is {max_leaves}; pass 1 or more.")

    @st.composite
    def draw_canvas(draw: st.DrawFn) -> Canvas:
        budget = _Budget(max_leaves)
        return _draw_canvas(draw, names, max(0, max_depth), budget)

    return draw_canvas()


def plans(spec: GraphSpec | Canvas) -> st.SearchStrategy[dict[NodeId, NodePlan]]:
    """Draw a `NodePlan` for every node of a compiled spec (or of a canvas)."""
    if isinstance(spec, Canvas):
        spec = compile_canvas(spec)
    node_plan = st.builds(
        NodePlan,
        outcome=st.sampled_from(["succeed", "succeed", "fail"]),
        retries=st.integers(min_value=0, max_value=2),
        duplicate=st.booleans(),
        takeover=st.booleans(),
    )
    return st.fixed_dictionaries({node.id: node_plan for node in spec.nodes})


@dataclass
class _Budget:
    """Signatures that the canvas being drawn may still add."""

    leaves: int


_KINDS = ("signature", "chain", "group", "chord")


def _draw_canvas(
    draw: st.DrawFn, tasks: list[str], depth: int, budget: _Budget, side: bool = False
) -> Canvas:
    if budget.leaves <= 0:
        # An empty group adds no signature and can stand wherever a canvas can.
        return Group()
    kinds = _KINDS if depth > 0 and budget.leaves > 1 else ("signature",)
    kind = draw(st.sampled_from(kinds))
    canvas: Canvas
    if kind == "signature":
        canvas = _draw_signature(draw, tasks, budget)
    elif kind == "chain":
        canvas = Chain(_draw_children(draw, tasks, depth, budget, 1, side))
    elif kind == "group":
        canvas = Group(_draw_children(draw, tasks, depth, budget, 0, side))
    else:
        header = Group(_draw_children(draw, tasks, depth, budget, 0, side))
        body = _draw_canvas(draw, tasks, depth - 1, budget, side)
        join = draw(st.sampled_from(["fail_fast", "all_settled"]))
        canvas = Chord(header, body, join)
    if side and not _has_task(canvas):
        # Inside a link or errback, a canvas with no task cannot carry
        # callbacks of its own: the compiler rejects that shape.
        return canvas
    callback_depth = max(0, depth - 1)
    if budget.leaves > 0 and draw(st.integers(min_value=0, max_value=3)) == 0:
        canvas.link(_draw_canvas(draw, tasks, callback_depth, budget, side=True))
    if budget.leaves > 0 and draw(st.integers(min_value=0, max_value=3)) == 0:
        errback = _draw_canvas(draw, tasks, callback_depth, budget, side=True)
        canvas.link_error(errback)
    return canvas


def _has_task(canvas: Canvas) -> bool:
    if isinstance(canvas, Signature):
        return True
    return any(_has_task(child) for child in canvas.children())


def _draw_signature(draw: st.DrawFn, tasks: list[str], budget: _Budget) -> Signature:
    budget.leaves -= 1
    task = draw(st.sampled_from(tasks))
    args = draw(st.lists(st.integers(min_value=0, max_value=9), max_size=2))
    immutable = draw(st.integers(min_value=0, max_value=4)) == 0
    return Signature(task, args, immutable=immutable)


def _draw_children(
    draw: st.DrawFn,
    tasks: list[str],
    depth: int,
    budget: _Budget,
    minimum: int,
    side: bool,
) -> list[Canvas]:
    count = draw(st.integers(min_value=minimum, max_value=3))
    return [_draw_canvas(draw, tasks, depth - 1, budget, side) for _ in range(count)]


# -- the step driver ----------------------------------------------------------


@dataclass(frozen=True)
class _Report:
    """An attempt's outcome, waiting to be applied to the run."""

    kind: Literal["complete", "fail", "retry"]
    node: NodeId
    attempt: int
    payload: Any
    late: bool = False
    #: The lease the claim granted, which the report carries.
    lease: int = 1
    epoch: int = 1


@dataclass(frozen=True)
class _Delivery:
    """A message waiting on the queue; ``takeover`` marks a reclaimed one."""

    node: NodeId
    attempt: int
    takeover: bool = False
    epoch: int = 1


@dataclass
class StepDriver:
    """Apply a plan to the state machine one step at a time, from a seed.

    Each step, ``random.Random(seed)`` picks one item among the messages
    waiting on the queue and the reports of attempts that have run, so tasks
    overlap and results land in any order, reproducibly. A claimed message
    runs its node as its `NodePlan` specifies. A node planned with ``duplicate``
    has each message delivered twice and each report applied again later;
    the second delivery must be dropped at claim, and the repeated report
    must return None and leave the run's state unchanged (else
    `AssertionError`). A node planned with ``takeover`` has each attempt's
    message reclaimed once after its first claim; if that claim takes the
    lease over, the report of the first claim is fenced and must likewise
    return None and change nothing. Delays (retry backoff, countdown) are
    ignored: every message is ready at once. After `run`, `retry_run` opens
    the run's next epoch and runs it to the end the same way.

    Args:
        plan: what happens to each node; a missing node succeeds at once.
        seed: seeds the order of steps.
        run_id: the run's id, which also appears in failed task ids.
    """

    plan: Plan
    seed: int
    run_id: str = "run"
    #: Number of times each attempt ``(node, attempt)`` of the current epoch
    #: was enqueued.
    enqueued: Counter[tuple[NodeId, int]] = field(default_factory=Counter)
    #: Arguments of every claimed attempt, by node id, in claim order.
    calls: dict[NodeId, list[tuple[list[Any], dict[str, Any]]]] = field(
        default_factory=dict
    )
    #: Number of repeated reports that were applied and changed nothing.
    repeated_reports: int = 0
    #: Number of duplicate messages that claim dropped.
    dropped_messages: int = 0
    #: Number of claims that took a running attempt's lease over.
    takeovers: int = 0
    #: Number of reports from fenced workers that were applied and changed nothing.
    fenced_reports: int = 0
    #: The latest lease granted for each attempt ``(node, attempt)`` of the
    #: current epoch.
    leases: dict[tuple[NodeId, int], int] = field(default_factory=dict)
    #: The run's final state, once `run` has returned.
    state: RunState | None = None
    _rng: random.Random = field(default_factory=random.Random, repr=False)
    _now: float = 0.0

    def run(self, spec: GraphSpec) -> RunState:
        """Run a compiled canvas to the end and return its final state."""
        self._rng = random.Random(self.seed)
        self._now = 0.0
        run, effects = machine.start(self.run_id, spec, self._now)
        return self._drive(run, effects)

    def retry_run(self, plan: Plan | None = None) -> RunState:
        """Retry the run that `run` ended, as its next epoch, and run it to the end.

        Args:
            plan: what happens to each node in the new epoch; by default the
                plan given at construction. It replaces `plan` for good.

        Returns the run's final state. `calls` keeps counting across epochs,
        so a test can tell which nodes ran again. Attempt numbers restart in
        each epoch, so `enqueued` and `leases` start empty for the new epoch.

        Raises:
            ValueError: if `run` has not been called yet.
            RunNotRetryable: if the run succeeded.
        """
        if self.state is None:
            raise ValueError("StepDriver.retry_run() needs a run: call run() first.")
        if plan is not None:
            self.plan = plan
        self._now += 1.0
        effects = machine.reopen(self.state, self._now)
        self.enqueued = Counter()
        self.leases = {}
        return self._drive(self.state, effects)

    def _drive(self, run: RunState, effects: list[machine.Effect]) -> RunState:
        """Apply steps until no message or report is left, then return the state."""
        rng = self._rng
        messages: list[_Delivery] = []
        reports: list[_Report] = []
        self._enqueue(run, effects, messages)
        while messages or reports:
            self._now += 1.0
            now = self._now
            index = rng.randrange(len(messages) + len(reports))
            if index < len(messages):
                delivery = messages.pop(index)
                report = self._deliver(run, delivery, now)
                if report is None:
                    continue
                reports.append(report)
                first_lease = report.lease == 1 and not delivery.takeover
                if first_lease and self._node_plan(report.node).takeover:
                    reclaimed = _Delivery(report.node, report.attempt, True, run.epoch)
                    messages.append(reclaimed)
                continue
            report = reports.pop(index - len(messages))
            if report.late:
                self._check_ignored(run, report, now, "repeated")
                self.repeated_reports += 1
                continue
            if report.lease < self.leases[(report.node, report.attempt)]:
                self._check_ignored(run, report, now, "fenced")
                self.fenced_reports += 1
                continue
            applied = _apply(run, report, now)
            if applied is None:
                raise AssertionError(
                    f"Run {self.run_id}: the first report for node {report.node} "
                    f"attempt {report.attempt} was rejected as a duplicate."
                )
            self._enqueue(run, applied, messages)
            if self._node_plan(report.node).duplicate:
                reports.append(replace(report, late=True))
        self.state = run
        return run

    def _node_plan(self, node_id: NodeId) -> NodePlan:
        return self.plan.get(node_id, NodePlan())

    def _enqueue(
        self, run: RunState, effects: list[machine.Effect], messages: list[_Delivery]
    ) -> None:
        for effect in effects:
            if not isinstance(effect, machine.Enqueue):
                continue
            self.enqueued[(effect.node, effect.attempt)] += 1
            delivery = _Delivery(effect.node, effect.attempt, epoch=run.epoch)
            messages.append(delivery)
            if self._node_plan(effect.node).duplicate:
                messages.append(delivery)

    def _deliver(
        self, run: RunState, delivery: _Delivery, now: float
    ) -> _Report | None:
        """Claim a message and run its attempt; None when claim drops it."""
        node_id, attempt, epoch = delivery.node, delivery.attempt, delivery.epoch
        claimed = machine.claim(
            run, node_id, attempt, now, takeover=delivery.takeover, epoch=epoch
        )
        if not claimed:
            self.dropped_messages += 1
            return None
        lease = run.nodes[node_id].lease
        if lease > 1:
            self.takeovers += 1
        self.leases[(node_id, attempt)] = lease
        node = run.spec.node(node_id)
        has_value, value = machine.resolve_input(run, node)
        args = [decode(item) for item in node.args]
        if has_value:
            args.insert(0, value)
        kwargs = {key: decode(item) for key, item in node.kwargs.items()}
        self.calls.setdefault(node_id, []).append((args, kwargs))
        node_plan = self._node_plan(node_id)
        if attempt <= node_plan.retries:
            error = ErrorInfo.from_exception(PlannedRetry(f"retry {attempt}"))
            return _Report("retry", node_id, attempt, error, lease=lease, epoch=epoch)
        if node_plan.outcome == "fail":
            error = ErrorInfo.from_exception(PlannedFailure(failure_message(node_id)))
            return _Report("fail", node_id, attempt, error, lease=lease, epoch=epoch)
        value = dumps(echo_value(node.task, args, kwargs))
        return _Report("complete", node_id, attempt, value, lease=lease, epoch=epoch)

    def _check_ignored(
        self, run: RunState, report: _Report, now: float, kind: str
    ) -> None:
        """Apply a report that must change nothing, and assert that it did not."""
        before = _copy_run(run)
        effects = _apply(run, report, now)
        what = (
            f"Run {self.run_id}: a {kind} {report.kind} report for node "
            f"{report.node} attempt {report.attempt} lease {report.lease}"
        )
        if effects is not None:
            raise AssertionError(f"{what} was applied: {effects}.")
        if not _same_run(before, run):
            raise AssertionError(f"{what} changed the run's state.")


def _apply(run: RunState, report: _Report, now: float) -> list[machine.Effect] | None:
    node, attempt, payload = report.node, report.attempt, report.payload
    lease, epoch = report.lease, report.epoch
    if report.kind == "complete":
        return machine.complete(
            run, node, attempt, payload, now, lease=lease, epoch=epoch
        )
    if report.kind == "fail":
        return machine.fail(run, node, attempt, payload, now, lease=lease, epoch=epoch)
    return machine.retry(
        run, node, attempt, payload, 0.0, now, lease=lease, epoch=epoch
    )


def _copy_run(run: RunState) -> RunState:
    """Copy a run's state deeply enough to compare it after a transition."""
    nodes = {key: replace(record) for key, record in run.nodes.items()}
    return replace(run, nodes=nodes, events=list(run.events))


def _same_run(left: RunState, right: RunState) -> bool:
    return left == right


# -- comparing with the interpreter ---------------------------------------------


def planned_call(plan: Plan) -> Any:
    """Build the `interpret` node call that follows ``plan``."""

    def call(
        node_id: NodeId, task: str, args: list[Any], kwargs: dict[str, Any]
    ) -> Any:
        if plan.get(node_id, NodePlan()).outcome == "fail":
            raise PlannedFailure(failure_message(node_id))
        return echo_value(task, args, kwargs)

    return call


def check_against_interpreter(
    canvas: Canvas,
    plan: Plan,
    seed: int,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    run_id: str = "run",
) -> tuple[RunState, Interpretation]:
    """Run a canvas through `StepDriver` and `interpret`, and assert they agree.

    Checks that the status, the value (when the run succeeded), the error
    node, the number of calls of every link and errback, every node's final
    state and every call's arguments are the same. Errback branches are
    compared by whether they ran, not by argument: when several covered tasks
    fail, which failed task id an errback receives depends on which failure
    lands first, and the interpreter gives the lowest id.

    Returns the final run state and the interpretation, for further checks.

    Raises:
        AssertionError: naming the first difference.
    """
    spec = compile_canvas(canvas, args, kwargs)
    driver = StepDriver(plan, seed, run_id)
    run = driver.run(spec)
    expected = interpret(
        canvas, args=args, kwargs=kwargs, run_id=run_id, node_call=planned_call(plan)
    )
    context = f"canvas {canvas!r}, seed {seed}"
    assert run.status == expected.status, (
        f"Run status is {run.status}, but the interpreter gives {expected.status} "
        f"({context})."
    )
    if expected.status == "succeeded":
        assert run.value is not None
        actual_value = loads(run.value)
        expected_value = loads(dumps(expected.value))
        assert actual_value == expected_value, (
            f"Run value is {actual_value!r}, but the interpreter gives "
            f"{expected_value!r} ({context})."
        )
    assert run.error_node == expected.error_node, (
        f"Run error node is {run.error_node}, but the interpreter gives "
        f"{expected.error_node} ({context})."
    )
    _check_nodes(run, driver, expected, context)
    return run, expected


def _check_nodes(
    run: RunState, driver: StepDriver, expected: Interpretation, context: str
) -> None:
    assert set(run.nodes) == set(expected.states), (
        f"Graph nodes {sorted(run.nodes)} differ from the interpreter's "
        f"{sorted(expected.states)} ({context})."
    )
    states = {node_id: record.state for node_id, record in run.nodes.items()}
    assert states == expected.states, (
        f"Node states {states} differ from the interpreter's {expected.states} "
        f"({context})."
    )
    for node_id, count in {**expected.link_calls, **expected.errback_calls}.items():
        # Retries are invisible, so a node that ran at all counts once.
        actual = 1 if driver.calls.get(node_id) else 0
        assert actual == count, (
            f"Node {node_id} ({expected.roles[node_id]}) ran {actual} times, but "
            f"the interpreter runs it {count} times ({context})."
        )
    for node_id, calls in expected.calls.items():
        actual_calls = driver.calls.get(node_id, [])
        assert actual_calls, f"Node {node_id} never ran ({context})."
        if expected.branches[node_id] == "errback":
            continue
        last_args, last_kwargs = actual_calls[-1]
        want_args, want_kwargs = calls[-1]
        assert loads(dumps(last_args)) == loads(dumps(want_args)), (
            f"Node {node_id} got args {last_args!r}, but the interpreter passes "
            f"{want_args!r} ({context})."
        )
        assert loads(dumps(last_kwargs)) == loads(dumps(want_kwargs)), (
            f"Node {node_id} got kwargs {last_kwargs!r}, but the interpreter passes "
            f"{want_kwargs!r} ({context})."
        )
    for node_id in set(driver.calls) - set(expected.calls):
        raise AssertionError(
            f"Node {node_id} ran, but the interpreter never runs it ({context})."
        )
    for node_id in expected.errback_causes:
        cause = run.nodes[node_id].cause
        assert cause is not None, f"Errback {node_id} ran with no cause ({context})."
        assert run.nodes[cause].state == "failed", (
            f"Errback {node_id} ran with cause {cause}, which did not fail ({context})."
        )
