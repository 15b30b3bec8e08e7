"""The reference interpreter: a canvas evaluated recursively, with no graph.

`interpret` walks a canvas the way its meaning is defined, not the way the
graph engine runs it. It uses neither the compiler nor the state machine, so
the graph engine and every driver can be property-tested against it.

Value rules, applied to the value ``p`` that flows in from upstream:

- a signature calls its task with ``p`` in front of its args, unless it is
  immutable or there is no value;
- a chain feeds ``p`` to its first step and each step's value to the next;
- a group feeds ``p`` to every member, and its value is the list of theirs;
- ``chord(header, body)`` is ``chain(group(header), body)``.

Failure rules: a failed task cancels what follows it through a chain step or
a ``fail_fast`` chord body, while its group siblings still run. An
``all_settled`` body runs once its header has ended, with an error record in
place of each member that did not succeed. A link runs only when its canvas
succeeds. An errback runs only when its canvas ends unsuccessfully because of
a failure, and receives the failed task's id. Links and errbacks whose
condition does not occur are skipped.

Signatures are numbered ``"0"``, ``"1"``, ... in depth-first declaration
order, with a canvas's links and then its errbacks numbered right after the
canvas's own signatures, as the compiler numbers graph nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from stem.canvas.primitives import Canvas, Chain, Chord, Group, Signature
from stem.canvas.spec import NodeId, node_order
from stem.engine.records import ERROR_RECORD_KEY

#: Calls a task by name with its positional and keyword arguments.
TaskCall = Callable[[str, list[Any], dict[str, Any]], Any]
#: Calls a task like `TaskCall`, and also receives the node id of the signature.
NodeCall = Callable[[NodeId, str, list[Any], dict[str, Any]], Any]

FinalState = Literal["succeeded", "failed", "cancelled", "skipped"]
Role = Literal["task", "link", "errback"]
#: The branch of a node: the main path, a link or an errback. An errback
#: branch includes the links nested inside it.
Branch = Literal["main", "link", "errback"]


@dataclass
class Interpretation:
    """The result of evaluating a canvas, node by node.

    ``error_node`` and ``error`` are the lowest-id failed node whose failure
    reached the canvas's result (an ``all_settled`` chord absorbs the
    failures of its header) and the exception it raised.
    """

    status: Literal["succeeded", "failed"]
    value: Any = None
    error_node: NodeId | None = None
    error: BaseException | None = None
    #: Positional and keyword arguments of each call, by node id.
    calls: dict[NodeId, list[tuple[list[Any], dict[str, Any]]]] = field(
        default_factory=dict
    )
    #: Number of calls of each node where a link branch starts.
    link_calls: dict[NodeId, int] = field(default_factory=dict)
    #: Number of calls of each node where an errback branch starts.
    errback_calls: dict[NodeId, int] = field(default_factory=dict)
    states: dict[NodeId, FinalState] = field(default_factory=dict)
    roles: dict[NodeId, Role] = field(default_factory=dict)
    branches: dict[NodeId, Branch] = field(default_factory=dict)
    #: For each errback node that ran: the node id of the failure it received.
    errback_causes: dict[NodeId, NodeId] = field(default_factory=dict)
    task_names: dict[NodeId, str] = field(default_factory=dict)


def interpret(
    canvas: Canvas,
    call: TaskCall | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    run_id: str = "run",
    node_call: NodeCall | None = None,
) -> Interpretation:
    """Evaluate a canvas recursively, calling each task through ``call``.

    Args:
        canvas: the signature, chain, group or chord to evaluate.
        call: runs one task and returns its value; raising fails that task.
        args: positional arguments given at submit, prepended like an
            upstream value to the first step of a chain, to every member of
            a group and to every header member of a chord.
        kwargs: keyword arguments given at submit, merged into the same
            signatures (the submitted value wins).
        run_id: the run id in the failed task ids that errbacks receive,
            which are ``f"{run_id}-{node_id}"``.
        node_call: used in place of ``call`` when given; it also receives the
            node id, so a test can choose each node's outcome.

    Raises:
        ValueError: if neither ``call`` nor ``node_call`` is given.
    """
    if node_call is None:
        if call is None:
            raise ValueError("interpret() needs a task call: pass call or node_call.")
        task_call = call

        def node_call(node: NodeId, task: str, a: list[Any], k: dict[str, Any]) -> Any:
            return task_call(task, a, k)

    evaluator = _Evaluator(node_call, run_id)
    inflow: _Inflow = _Ready(_NO_VALUE)
    if args or kwargs:
        inflow = _Submit(tuple(args), dict(kwargs or {}))
    outcome = evaluator.visit(canvas, inflow, "task", "main")
    result = evaluator.result
    if outcome.status == "succeeded":
        result.status = "succeeded"
        result.value = outcome.value
    else:
        result.status = "failed"
        result.error_node = min(outcome.failures, key=node_order, default=None)
        if result.error_node is not None:
            result.error = evaluator.errors[result.error_node]
    return result


# -- what flows in and out of a sub-canvas -------------------------------------


class _NoValue:
    """The absence of an upstream value, distinct from ``None``."""

    def __repr__(self) -> str:
        return "<no value>"


_NO_VALUE = _NoValue()


@dataclass(frozen=True)
class _Ready:
    """Upstream succeeded (or settled, for an ``all_settled`` body)."""

    value: Any


@dataclass(frozen=True)
class _Submit:
    """Arguments given at submit, which reach the start like a value."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class _Blocked:
    """Upstream failed: what would run here is cancelled."""

    failures: frozenset[NodeId]


@dataclass(frozen=True)
class _Skipped:
    """The branch's condition did not occur: what would run here is skipped."""


_Inflow = _Ready | _Submit | _Blocked | _Skipped


@dataclass(frozen=True)
class _Outcome:
    """The end of a sub-canvas: its status, value and failures.

    ``settled`` is the value an ``all_settled`` chord body receives from it:
    its value, with an error record in place of each task that did not
    succeed. ``failures`` are the failed nodes whose failure reached its end.
    """

    status: Literal["succeeded", "failed", "skipped"]
    value: Any = None
    settled: Any = None
    failures: frozenset[NodeId] = frozenset()


class _Evaluator:
    def __init__(self, node_call: NodeCall, run_id: str) -> None:
        self.node_call = node_call
        self.run_id = run_id
        self.next_id = 0
        self.result = Interpretation(status="failed")
        self.errors: dict[NodeId, BaseException] = {}

    def visit(
        self, canvas: Canvas, inflow: _Inflow, role: Role, branch: Branch
    ) -> _Outcome:
        if isinstance(canvas, Signature):
            outcome = self.visit_signature(canvas, inflow, role, branch)
        elif isinstance(canvas, Chain):
            outcome = self.visit_chain(canvas, inflow, role, branch)
        elif isinstance(canvas, Group):
            outcome = self.visit_group(canvas, inflow, role, branch)
        elif isinstance(canvas, Chord):
            outcome = self.visit_chord(canvas, inflow, role, branch)
        else:
            raise TypeError(
                f"Cannot interpret {canvas!r}, a {type(canvas).__name__}; pass a "
                "signature, chain, group or chord."
            )
        self.visit_links(canvas, outcome, branch)
        return outcome

    def visit_signature(
        self, sig: Signature, inflow: _Inflow, role: Role, branch: Branch
    ) -> _Outcome:
        node_id = str(self.next_id)
        self.next_id += 1
        result = self.result
        result.roles[node_id] = role
        result.branches[node_id] = branch
        result.task_names[node_id] = sig.task
        if role == "link":
            result.link_calls[node_id] = 0
        elif role == "errback":
            result.errback_calls[node_id] = 0

        if isinstance(inflow, _Skipped):
            result.states[node_id] = "skipped"
            return _Outcome("skipped")
        if isinstance(inflow, _Blocked):
            result.states[node_id] = "cancelled"
            record = self.error_record(node_id, sig.task, "cancelled", None)
            return _Outcome("failed", settled=record, failures=inflow.failures)

        args, kwargs = self.arguments(sig, inflow)
        result.calls.setdefault(node_id, []).append((list(args), dict(kwargs)))
        if role == "link":
            result.link_calls[node_id] += 1
        elif role == "errback":
            result.errback_calls[node_id] += 1

        try:
            value = self.node_call(node_id, sig.task, args, kwargs)
        except Exception as exc:
            self.errors[node_id] = exc
            result.states[node_id] = "failed"
            record = self.error_record(node_id, sig.task, "failed", exc)
            return _Outcome("failed", settled=record, failures=frozenset({node_id}))
        result.states[node_id] = "succeeded"
        return _Outcome("succeeded", value=value, settled=value)

    def visit_chain(
        self, chain: Chain, inflow: _Inflow, role: Role, branch: Branch
    ) -> _Outcome:
        if not chain.tasks:
            raise ValueError("Cannot interpret an empty chain; add a step.")
        outcome: _Outcome | None = None
        for step in chain.tasks:
            if outcome is not None:
                # Only the first step starts a link or errback branch.
                inflow = _follow(outcome)
                role = "task"
            outcome = self.visit(step, inflow, role, branch)
        assert outcome is not None
        return outcome

    def visit_group(
        self, group: Group, inflow: _Inflow, role: Role, branch: Branch
    ) -> _Outcome:
        members = [self.visit(member, inflow, role, branch) for member in group.tasks]
        if not members:
            # An empty group ends as soon as its input does, and as it does.
            if isinstance(inflow, _Skipped):
                return _Outcome("skipped")
            if isinstance(inflow, _Blocked):
                return _Outcome("failed", settled=[], failures=inflow.failures)
            return _Outcome("succeeded", value=[], settled=[])
        settled = [member.settled for member in members]
        statuses = {member.status for member in members}
        if statuses == {"succeeded"}:
            values = [member.value for member in members]
            return _Outcome("succeeded", value=values, settled=settled)
        if "failed" in statuses:
            failures = frozenset().union(*(member.failures for member in members))
            return _Outcome("failed", settled=settled, failures=failures)
        # Members share their input, so they are all skipped or none is.
        return _Outcome("skipped")

    def visit_chord(
        self, chord: Chord, inflow: _Inflow, role: Role, branch: Branch
    ) -> _Outcome:
        if chord.body is None:
            raise ValueError("Cannot interpret a chord without a body; pass one.")
        header = self.visit(chord.header, inflow, role, branch)
        # A header without signatures has no members to settle, so the body
        # starts the chord as if the header were absent, and an upstream
        # failure cancels it under either policy.
        absorbs = chord.join == "all_settled" and _has_signature(chord.header)
        if absorbs and header.status != "skipped":
            body_inflow: _Inflow = _Ready(header.settled)
        else:
            body_inflow = _follow(header)
        return self.visit(chord.body, body_inflow, "task", branch)

    def visit_links(self, canvas: Canvas, outcome: _Outcome, branch: Branch) -> None:
        link_branch: Branch = "errback" if branch == "errback" else "link"
        link_inflow: _Inflow = _Skipped()
        if outcome.status == "succeeded":
            link_inflow = _Ready(outcome.value)
        for link in canvas.links:
            self.visit(link, link_inflow, "link", link_branch)
        for errback in canvas.errbacks:
            first = self.next_id
            if outcome.status == "failed":
                cause = min(outcome.failures, key=node_order)
                cause_id = f"{self.run_id}-{cause}"
                self.visit(errback, _Ready(cause_id), "errback", "errback")
                # Errbacks nested inside this one were visited first and
                # recorded their own causes; the skipped ones have none.
                for number in range(first, self.next_id):
                    node_id = str(number)
                    if (
                        self.result.roles[node_id] == "errback"
                        and self.result.states[node_id] != "skipped"
                    ):
                        self.result.errback_causes.setdefault(node_id, cause)
            else:
                self.visit(errback, _Skipped(), "errback", "errback")

    def arguments(
        self, sig: Signature, inflow: _Ready | _Submit
    ) -> tuple[list[Any], dict[str, Any]]:
        args = list(sig.args)
        kwargs = dict(sig.kwargs)
        if sig.immutable:
            return args, kwargs
        if isinstance(inflow, _Submit):
            return [*inflow.args, *args], {**kwargs, **inflow.kwargs}
        if inflow.value is not _NO_VALUE:
            args.insert(0, inflow.value)
        return args, kwargs

    def error_record(
        self,
        node_id: NodeId,
        task: str,
        state: str,
        exc: BaseException | None,
    ) -> dict[str, Any]:
        detail: dict[str, Any] = {"state": state, "node": node_id, "task": task}
        if exc is not None:
            detail["type"] = type(exc).__qualname__
            detail["module"] = type(exc).__module__
            detail["message"] = str(exc)
        return {ERROR_RECORD_KEY: detail}


def _follow(outcome: _Outcome) -> _Inflow:
    """Build what flows into the next step after a sub-canvas ended."""
    if outcome.status == "succeeded":
        return _Ready(outcome.value)
    if outcome.status == "failed":
        return _Blocked(outcome.failures)
    return _Skipped()


def _has_signature(canvas: Canvas) -> bool:
    """Tell whether a canvas contains a signature, not counting links and errbacks."""
    if isinstance(canvas, Signature):
        return True
    if isinstance(canvas, Chain | Group):
        return any(_has_signature(child) for child in canvas.tasks)
    if isinstance(canvas, Chord):
        parts = [canvas.header] if canvas.body is None else [canvas.header, canvas.body]
        return any(_has_signature(part) for part in parts)
    return False
