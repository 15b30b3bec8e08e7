"""The run state machine: how a run's state changes as outcomes land.

Each transition takes a `RunState`, an event and the current time, changes
only that run, and returns the effects the store must carry out in the same
atomic step (messages to enqueue, the run's end). The in-process driver calls
these directly under its lock; the Redis scripts implement the same
transitions and are tested against them.

Failure rules: when a node fails for good, every node downstream of it
through a plain edge or a ``fail_fast`` join is cancelled. A link waiting on
it is skipped. An ``all_settled`` join runs once all its dependencies have
ended. Siblings of the failed node keep running, so the run ends when
every main-path node has ended. Errbacks fire as soon as a node they cover
fails or is cancelled by a failure.

Epochs: `reopen` starts the next epoch of a failed or cancelled run. Every
transition that applies a message or a report takes the epoch that message
carries, and ignores it unless it is the run's current epoch. `replay_node`
(a dead letter's replay) reopens nodes within the current epoch.

Values of ``ignore_result`` nodes: such a node's value is stored only while
a node that reads it as input has not ended, because a retry of that reader
reads it again. It is dropped when its last reader ends, and never stored
when no reader is open at its success. The run's value and its result
handle show None in its place at all times.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from stem.canvas.errors import StemInternalError
from stem.canvas.spec import (
    CauseInput,
    GraphSpec,
    ListInput,
    NodeId,
    NodeInput,
    NodeSpec,
    Template,
    node_order,
    template_nodes,
)
from stem.canvas.values import dumps, loads
from stem.engine.errors import RunNotRetryable
from stem.engine.records import (
    SETTLED,
    TERMINAL,
    ErrorInfo,
    NodeRecord,
    NodeState,
    RunState,
    error_record,
)


@dataclass(frozen=True)
class Enqueue:
    """Effect: put a message for one attempt of a node on its queue."""

    node: NodeId
    attempt: int
    delay_s: float = 0.0


@dataclass(frozen=True)
class RunEnded:
    """Effect: the run reached a final status, so callers waiting on it wake up."""

    status: str


Effect = Enqueue | RunEnded

_SUCCEEDED: frozenset[str] = frozenset({"succeeded"})


def start(run_id: str, spec: GraphSpec, now: float) -> tuple[RunState, list[Effect]]:
    """Create a run's state and queue the nodes that can start at once."""
    run = RunState(
        run_id=run_id,
        spec=spec,
        nodes={node.id: NodeRecord() for node in spec.nodes},
        created_at=now,
        open_main=sum(1 for node in spec.nodes if not node.side),
    )
    _count_open_readers(run, spec.nodes)
    effects: list[Effect] = []
    for node in spec.nodes:
        if node.role == "errback" and not node.covers:
            _end(run, node.id, "skipped", now, effects)
        elif not node.deps and node.role != "errback":
            _enqueue(run, node, now, effects)
    _maybe_finish(run, now, effects)
    return run, effects


def claim(
    run: RunState,
    node_id: NodeId,
    attempt: int,
    now: float,
    *,
    takeover: bool = False,
    epoch: int = 1,
) -> bool:
    """Mark an attempt as running. Returns False for a duplicate or stale message.

    A message of another epoch than the run's is stale too.

    The first claim of an attempt sets its lease to 1. With ``takeover`` (a
    message reclaimed from a worker presumed dead), a claim of an attempt
    that is already running raises its lease instead and restarts it, so
    reports carrying the old lease are ignored. The caller reads the new lease
    from ``run.nodes[node_id].lease``.
    """
    record = run.nodes.get(node_id)
    if record is None or record.attempt != attempt or epoch != run.epoch:
        return False
    if record.state in ("queued", "retrying"):
        record.lease = 1
    elif record.state == "running" and takeover:
        record.lease += 1
    else:
        return False
    record.state = "running"
    record.started_at = now
    run.events.append((now, node_id, "running"))
    return True


def claimable(run: RunState, node_id: NodeId, attempt: int, *, epoch: int = 1) -> bool:
    """Tell whether a message of this attempt and epoch could start it now.

    This is `claim` without a takeover and without the change: the attempt
    is the node's current one in the run's epoch, and the node is queued or
    retrying.
    """
    record = run.nodes.get(node_id)
    if record is None or record.attempt != attempt or epoch != run.epoch:
        return False
    return record.state in ("queued", "retrying")


def complete(
    run: RunState,
    node_id: NodeId,
    attempt: int,
    value: str,
    now: float,
    *,
    lease: int = 1,
    epoch: int = 1,
) -> list[Effect] | None:
    """Record an attempt's value. Returns None for a duplicate or late report.

    A report whose ``lease`` is not the attempt's current one comes from a
    worker whose lease was taken over, and is ignored too, and so is a report
    whose ``epoch`` is not the run's. The same holds for `fail`, `retry` and
    `splice`.
    """
    record = _running(run, node_id, attempt, lease, epoch)
    if record is None:
        return None
    record.value = value if _value_needed(run, node_id) else None
    # An earlier attempt's error goes: a succeeded node has no error.
    record.error = None
    effects: list[Effect] = []
    _end(run, node_id, "succeeded", now, effects)
    _maybe_finish(run, now, effects)
    return effects


def fail(
    run: RunState,
    node_id: NodeId,
    attempt: int,
    error: ErrorInfo,
    now: float,
    *,
    lease: int = 1,
    epoch: int = 1,
) -> list[Effect] | None:
    """Record that an attempt failed for good. Returns None for a stale report."""
    record = _running(run, node_id, attempt, lease, epoch)
    if record is None:
        return None
    return _fail_record(run, node_id, record, error, now)


def dead_letter(
    run: RunState,
    node_id: NodeId,
    attempt: int,
    error: ErrorInfo,
    now: float,
    *,
    abandoned: bool = False,
    epoch: int = 1,
) -> list[Effect] | None:
    """Fail a node whose message was dead-lettered.

    Returns None when the attempt is stale or already running: a dead-lettered
    duplicate must not fail the node that another worker is running. With
    ``abandoned`` (a message delivered too many times, so its workers are
    presumed dead) a running node fails too.
    """
    record = run.nodes.get(node_id)
    if record is None or record.attempt != attempt or epoch != run.epoch:
        return None
    allowed = ("queued", "retrying", "running") if abandoned else ("queued", "retrying")
    if record.state not in allowed:
        return None
    return _fail_record(run, node_id, record, error, now)


def _fail_record(
    run: RunState, node_id: NodeId, record: NodeRecord, error: ErrorInfo, now: float
) -> list[Effect]:
    record.error = error
    effects: list[Effect] = []
    _end(run, node_id, "failed", now, effects)
    _maybe_finish(run, now, effects)
    return effects


def retry(
    run: RunState,
    node_id: NodeId,
    attempt: int,
    error: ErrorInfo,
    delay_s: float,
    now: float,
    *,
    lease: int = 1,
    epoch: int = 1,
) -> list[Effect] | None:
    """Queue the next attempt after a delay. Returns None for a stale report.

    Joins never see a retry: the node stays open until an attempt ends it.
    """
    record = _running(run, node_id, attempt, lease, epoch)
    if record is None:
        return None
    record.state = "retrying"
    record.error = error
    record.attempt += 1
    record.queued_at = now
    run.events.append((now, node_id, "retrying"))
    return [Enqueue(node_id, record.attempt, max(0.0, delay_s))]


def cancel(run: RunState, now: float) -> list[Effect]:
    """Cancel a run on request: nothing more runs, and no errback fires."""
    if run.status != "running":
        return []
    effects: list[Effect] = []
    for node in run.spec.nodes:
        record = run.nodes[node.id]
        if record.state in TERMINAL:
            continue
        pending_side = node.role in ("link", "errback") and record.state == "pending"
        record.state = "skipped" if pending_side else "cancelled"
        record.ended_at = now
        run.events.append((now, node.id, record.state))
        _drop_read_values(run, node.id)
    run.open_main = 0
    run.status = "cancelled"
    run.ended_at = now
    effects.append(RunEnded("cancelled"))
    return effects


def reopen(run: RunState, now: float) -> list[Effect]:
    """Open the next epoch of a failed or cancelled run, to run again what failed.

    The nodes that `nodes_to_reopen` picks go back to ``pending`` with no
    attempt, so their attempts count from 1 again and each gets its full retry
    policy. Every other node keeps its state and value. The edges from kept
    nodes into reopened ones are then settled as when those kept nodes ended,
    and reopened nodes that can start at once are queued. Messages and
    reports of older epochs change nothing after this.

    Raises:
        RunNotRetryable: if the run is running or succeeded.
    """
    if run.status not in ("failed", "cancelled"):
        raise RunNotRetryable(run.run_id, run.status)
    reopened = nodes_to_reopen(run)
    run.epoch += 1
    run.status = "running"
    run.ended_at = None
    run.value = None
    run.error_node = None
    for node in run.spec.nodes:
        if node.id in reopened:
            _reset(run, node, now)
    # Reopened readers read their ignore_result inputs again, so each such
    # value is kept again until its open readers end.
    _count_open_readers(run, run.spec.nodes)

    effects: list[Effect] = []
    for node in run.spec.nodes:
        if node.id in reopened:
            continue
        outcome = run.nodes[node.id].state
        work: list[NodeId] = []
        for dependent in run.spec.dependents[node.id]:
            if dependent in reopened:
                _react(run, node.id, outcome, dependent, now, effects, work)
        for errback in run.spec.errbacks_covering[node.id]:
            if errback in reopened:
                _react_errback(run, node.id, outcome, errback, now, effects, work)
        _settle(run, work, now, effects)
    for node in run.spec.nodes:
        pending = run.nodes[node.id].state == "pending"
        if node.id in reopened and pending and not node.deps and node.role != "errback":
            _enqueue(run, node, now, effects)
    _maybe_finish(run, now, effects)
    return effects


def nodes_to_reopen(run: RunState) -> set[NodeId]:
    """Return the nodes that a run retry sends back to ``pending``.

    These are the nodes that failed, were cancelled or had not ended, and
    what depends on them: the nodes downstream that were cancelled or
    skipped, and every errback covering one of them, so errbacks can fire
    again. A node that succeeded keeps its value unless it is such an errback,
    depends on a succeeded node that is reopened (inside an errback's canvas),
    because then its input is about to change, or lies downstream of a
    reopened errback in that errback's canvas, because the errback may not
    fire again. So a join that succeeded over a failed member under
    ``all_settled`` is kept, unless it is part of a reopened errback's canvas.
    A node that a ``replace`` put a canvas in place of is never reopened, because
    splicing it again would add its canvas twice. When such a node would
    have been reopened (an errback, or a node inside an errback's canvas),
    the nodes of its canvas that ended keep their outcomes too, so that part
    of the errback does not run again on its own. Its nodes that had not
    ended are reopened, because messages of the old epoch no longer count.
    An ``ignore_result`` node that succeeded and that a reopened node reads
    is reopened too when its value was dropped (its last reader had ended),
    because the reader would find no value; then what depends on it is
    reopened as for any succeeded node that runs again.
    """
    states = {node_id: record.state for node_id, record in run.nodes.items()}
    reopened: set[NodeId] = set()
    # Reopened errbacks and the nodes downstream of them in their canvases:
    # the errback may not fire in the new epoch, so nothing after it keeps an
    # outcome, not even a join that succeeded over a failed member.
    rearmed: set[NodeId] = set()
    stack: list[NodeId] = []
    for node in run.spec.nodes:
        if states[node.id] not in ("succeeded", "skipped"):
            reopened.add(node.id)
            stack.append(node.id)
            if node.role == "errback":
                rearmed.add(node.id)
    kept_replaced: set[NodeId] = set()
    while stack:
        current = stack.pop()
        current_succeeded = states[current] == "succeeded"
        current_rearmed = current in rearmed
        dependents = [
            dependent
            for dependent in run.spec.dependents[current]
            if current_rearmed or current_succeeded or states[dependent] != "succeeded"
        ]
        errbacks = run.spec.errbacks_covering[current]
        candidates = [
            *dependents,
            *errbacks,
            *(
                read
                for read in dict.fromkeys(template_nodes(run.spec.node(current).input))
                if _value_dropped(run, read)
            ),
        ]
        for candidate in candidates:
            if run.nodes[candidate].replaced:
                kept_replaced.add(candidate)
                continue
            rearms = candidate in errbacks or (
                current_rearmed and candidate in dependents
            )
            if rearms and candidate not in rearmed:
                # Visit it again if it was reopened already, so its successes
                # downstream reopen too.
                rearmed.add(candidate)
                reopened.add(candidate)
                stack.append(candidate)
            elif candidate not in reopened:
                reopened.add(candidate)
                stack.append(candidate)
    prefixes = tuple(f"{node_id}." for node_id in kept_replaced)
    return {
        node_id
        for node_id in reopened
        if not (node_id.startswith(prefixes) and states[node_id] in TERMINAL)
    }


def splice(
    run: RunState,
    node_id: NodeId,
    attempt: int,
    sub: GraphSpec,
    now: float,
    *,
    lease: int = 1,
    epoch: int = 1,
) -> list[Effect] | None:
    """Put a compiled canvas in place of a running node (``self.replace``).

    The new nodes get ids ``R.0``, ``R.1``, ... after the replaced node ``R``.
    What depended on ``R`` now depends on the canvas's sinks and reads its
    value, and errbacks covering ``R`` cover those sinks. Returns None for a
    stale report or lease.
    """
    record = _running(run, node_id, attempt, lease, epoch)
    if record is None:
        return None
    replaced = run.spec.node(node_id)
    old_dependents = list(run.spec.dependents[node_id])
    old_errbacks = list(run.spec.errbacks_covering[node_id])
    run.spec = spliced_spec(run.spec, replaced, sub)
    for node in run.spec.nodes:
        run.nodes.setdefault(node.id, NodeRecord())
    added = [node for node in run.spec.nodes if node.id.startswith(f"{node_id}.")]
    run.open_main += sum(1 for node in added if not node.side)
    _count_open_readers(run, [*added, replaced])
    record.replaced = True
    # Readers of the replaced node now read the canvas, so an ignore_result
    # node keeps no value here.
    record.value = dumps(None) if _value_needed(run, node_id) else None
    effects: list[Effect] = []
    for node in added:
        if node.role == "errback" and not node.covers:
            _end(run, node.id, "skipped", now, effects)
        elif not node.deps and node.role != "errback":
            _enqueue(run, node, now, effects)
    # The replaced node ends as succeeded. Its old dependents now wait on the
    # canvas, and are released here because that canvas may have no nodes.
    _end(run, node_id, "succeeded", now, effects)
    for dependent in old_dependents:
        _release(run, dependent, now, effects)
    for errback in old_errbacks:
        covers = run.spec.node(errback).covers
        pending = run.nodes[errback].state == "pending"
        if pending and all(run.nodes[item].state in TERMINAL for item in covers):
            _end(run, errback, "skipped", now, effects)
    _maybe_finish(run, now, effects)
    return effects


def replay_node(
    run: RunState, node_id: NodeId, attempt: int, now: float, *, epoch: int = 1
) -> list[Effect] | None:
    """Queue a new attempt of a failed node and undo what its failure decided.

    Used to replay a dead letter, within the run's current epoch: unlike
    `reopen`, it starts no new epoch, and the new attempt follows the failed
    one. The nodes that the failure cancelled or skipped, directly or through
    other cancelled nodes, are pending again, unless another failure also
    decided them. The run is running again when a main-path node reopens.
    Errbacks that the failure fired are not undone. Returns None when the
    node is not failed at ``attempt``, ``epoch`` is not the run's epoch (a
    run retry reopened the node since) or the run was cancelled.
    """
    if epoch != run.epoch:
        return None
    record = run.nodes.get(node_id)
    if record is None or record.attempt != attempt or record.state != "failed":
        return None
    if run.status == "cancelled":
        return None
    reopened = replayed_nodes(run, node_id, replay_candidates(run, node_id))
    main_reopened = False
    for current in reopened:
        current_record = run.nodes[current]
        current_record.ended_at = None
        current_record.cause = None
        if current == node_id:
            current_record.error = None
        else:
            current_record.state = "pending"
        run.events.append((now, current, current_record.state))
        if not run.spec.node(current).side:
            run.open_main += 1
            main_reopened = True
    if main_reopened and run.status != "running":
        run.status = "running"
        run.ended_at = None
        run.value = None
        run.error_node = None
    effects: list[Effect] = []
    _enqueue(run, run.spec.node(node_id), now, effects)
    # The reopened nodes read their ignore_result inputs again, so each value
    # still stored is kept until they end.
    # NOTE: a value dropped when its last reader ended does not come back.
    # A replayed reader of it reads None, while a run retry reruns its node.
    _count_open_readers(run, run.spec.nodes)
    for current in reopened[1:]:
        _release(run, current, now, effects)
    return effects


def replay_candidates(run: RunState, node_id: NodeId) -> list[NodeId]:
    """Return the cancelled or skipped nodes downstream of a node, in node order.

    The walk follows dependents and passes only through cancelled and
    skipped nodes, because a failure decides nothing past a node that ran.
    """
    found: set[NodeId] = set()
    stack = [node_id]
    while stack:
        current = stack.pop()
        for dependent in run.spec.dependents[current]:
            state = run.nodes[dependent].state
            if dependent not in found and state in ("cancelled", "skipped"):
                found.add(dependent)
                stack.append(dependent)
    return sorted(found, key=node_order)


def replayed_nodes(
    run: RunState, node_id: NodeId, candidates: list[NodeId]
) -> list[NodeId]:
    """Return the node and the candidates that replaying it reopens, in order.

    A candidate reopens when each of its dependencies reopens, has not ended,
    or ended in a state the candidate accepts. Passes over the candidates
    repeat until one adds nothing, and the Redis replay script makes the same
    passes, so both reopen the same nodes in the same order.
    """
    reopened = [node_id]
    chosen = {node_id}
    changed = True
    while changed:
        changed = False
        for candidate in candidates:
            if candidate in chosen:
                continue
            if run.nodes[candidate].state not in ("cancelled", "skipped"):
                continue
            node = run.spec.node(candidate)
            if all(
                dep in chosen
                or run.nodes[dep].state not in TERMINAL
                or run.nodes[dep].state in _accepted(node, dep)
                for dep in node.deps
            ):
                reopened.append(candidate)
                chosen.add(candidate)
                changed = True
    return reopened


def resolve_input(run: RunState, node: NodeSpec) -> tuple[bool, Any]:
    """Build a node's upstream value; ``(False, None)`` when there is none."""
    if node.input.kind == "none":
        return False, None
    return True, _resolve(run, node.input, node)


def run_value(run: RunState) -> Any:
    """Return the run's value, built from its output template.

    An ``ignore_result`` node's value is None here, whether or not it is kept.
    """
    if run.spec.output.kind == "none":
        return None
    return _resolve(run, run.spec.output, None)


# -- internals ----------------------------------------------------------------


def _running(
    run: RunState, node_id: NodeId, attempt: int, lease: int, epoch: int
) -> NodeRecord | None:
    if epoch != run.epoch:
        return None
    record = run.nodes.get(node_id)
    if record is None or record.attempt != attempt or record.state != "running":
        return None
    if record.lease != lease:
        return None
    return record


def _enqueue(run: RunState, node: NodeSpec, now: float, effects: list[Effect]) -> None:
    record = run.nodes[node.id]
    record.state = "queued"
    record.attempt += 1
    record.queued_at = now
    run.events.append((now, node.id, "queued"))
    effects.append(Enqueue(node.id, record.attempt, _delay_s(node, now)))


def _delay_s(node: NodeSpec, now: float) -> float:
    delay = node.options.countdown or 0.0
    if node.options.eta is not None:
        eta = dt.datetime.fromisoformat(node.options.eta).timestamp()
        delay = max(delay, eta - now)
    return max(0.0, delay)


def _end(
    run: RunState, node_id: NodeId, state: NodeState, now: float, effects: list[Effect]
) -> None:
    """Move a node to a terminal state and settle everything it decides."""
    _set_terminal(run, node_id, state, now)
    _settle(run, [node_id], now, effects)


def _settle(
    run: RunState, work: list[NodeId], now: float, effects: list[Effect]
) -> None:
    """Propagate the outcome of every node on ``work``, which just ended."""
    while work:
        current = work.pop()
        outcome = run.nodes[current].state
        for dependent in run.spec.dependents[current]:
            _react(run, current, outcome, dependent, now, effects, work)
        for errback in run.spec.errbacks_covering[current]:
            _react_errback(run, current, outcome, errback, now, effects, work)


def _reset(run: RunState, node: NodeSpec, now: float) -> None:
    """Send a node back to ``pending`` for a new epoch, with no attempt yet.

    Attempt numbers restart in each epoch, so a message is identified by the
    epoch it carries as well as by its attempt.
    """
    record = run.nodes[node.id]
    if record.state in TERMINAL and not node.side:
        run.open_main += 1
    record.state = "pending"
    record.attempt = 0
    record.lease = 0
    record.value = None
    record.error = None
    record.cause = None
    record.started_at = None
    record.ended_at = None
    run.events.append((now, node.id, "pending"))


def _react(
    run: RunState,
    dep: NodeId,
    outcome: str,
    node_id: NodeId,
    now: float,
    effects: list[Effect],
    work: list[NodeId],
) -> None:
    record = run.nodes[node_id]
    if record.state != "pending":
        return
    node = run.spec.node(node_id)
    if outcome in _accepted(node, dep):
        _release(run, node_id, now, effects)
        return
    if outcome == "skipped" or node.role == "link" or dep in node.triggers:
        _set_terminal(run, node_id, "skipped", now)
    else:
        _set_terminal(run, node_id, "cancelled", now)
        record.cause = _cause_of(run, dep)
    work.append(node_id)


def _react_errback(
    run: RunState,
    covered: NodeId,
    outcome: str,
    errback: NodeId,
    now: float,
    effects: list[Effect],
    work: list[NodeId],
) -> None:
    record = run.nodes[errback]
    if record.state != "pending":
        return
    if outcome in ("failed", "cancelled"):
        record.cause = _cause_of(run, covered)
        _enqueue(run, run.spec.node(errback), now, effects)
        return
    covers = run.spec.node(errback).covers
    if all(run.nodes[item].state in TERMINAL for item in covers):
        _set_terminal(run, errback, "skipped", now)
        work.append(errback)


def _release(run: RunState, node_id: NodeId, now: float, effects: list[Effect]) -> None:
    """Queue a pending node if its dependencies allow it to start."""
    record = run.nodes[node_id]
    if record.state != "pending":
        return
    node = run.spec.node(node_id)
    if all(run.nodes[dep].state in _accepted(node, dep) for dep in node.deps):
        _enqueue(run, node, now, effects)


def _accepted(node: NodeSpec, dep: NodeId) -> frozenset[str]:
    """Return the end states of ``dep`` that let ``node`` run."""
    if dep in node.settled:
        return SETTLED
    if dep in node.triggers:
        # A link runs only after its canvas succeeded.
        return _SUCCEEDED
    if node.join == "all_settled" and node.role != "link":
        return SETTLED
    return _SUCCEEDED


def _cause_of(run: RunState, node_id: NodeId) -> NodeId:
    record = run.nodes[node_id]
    return node_id if record.state == "failed" or record.cause is None else record.cause


def _set_terminal(run: RunState, node_id: NodeId, state: NodeState, now: float) -> None:
    record = run.nodes[node_id]
    if record.state in TERMINAL:
        raise StemInternalError(
            f"Run {run.run_id}: node {node_id} is already {record.state} and cannot "
            f"become {state}. This is a bug in Stem."
        )
    record.state = state
    record.ended_at = now
    run.events.append((now, node_id, state))
    if not run.spec.node(node_id).side:
        run.open_main -= 1
    _drop_read_values(run, node_id)


def _value_needed(run: RunState, node_id: NodeId) -> bool:
    """Tell whether a node's value must be kept: always, unless ``ignore_result``."""
    return run.open_readers.get(node_id, 1) > 0


def _value_dropped(run: RunState, node_id: NodeId) -> bool:
    """Tell whether an ``ignore_result`` node succeeded and its value was dropped."""
    record = run.nodes[node_id]
    return (
        _ignored(run, node_id) and record.state == "succeeded" and record.value is None
    )


def _count_open_readers(run: RunState, nodes: list[NodeSpec]) -> None:
    """Set the open-reader counts of the ``ignore_result`` nodes among ``nodes``."""
    for node in nodes:
        if node.options.ignore_result:
            readers = run.spec.readers[node.id]
            run.open_readers[node.id] = sum(
                1 for reader in readers if run.nodes[reader].state not in TERMINAL
            )


def _drop_read_values(run: RunState, node_id: NodeId) -> None:
    """Count an ended node out of the readers of each ``ignore_result`` node it read.

    A value whose last open reader ended is dropped.
    """
    for read in dict.fromkeys(template_nodes(run.spec.node(node_id).input)):
        if read not in run.open_readers:
            continue
        run.open_readers[read] -= 1
        if run.open_readers[read] <= 0:
            run.nodes[read].value = None


def _maybe_finish(run: RunState, now: float, effects: list[Effect]) -> None:
    if run.status != "running" or run.open_main > 0:
        return
    run.ended_at = now
    if all(run.nodes[sink].state == "succeeded" for sink in run.spec.sinks):
        run.status = "succeeded"
        run.value = dumps(run_value(run))
    else:
        run.status = "failed"
        run.error_node = _error_node(run)
    effects.append(RunEnded(run.status))


def _error_node(run: RunState) -> NodeId | None:
    """Return the lowest-id failed node whose failure reached the run's result."""
    reaching = _nodes_reaching_sinks(run.spec)
    failed = [node_id for node_id in reaching if run.nodes[node_id].state == "failed"]
    return min(failed, key=node_order) if failed else None


def _nodes_reaching_sinks(spec: GraphSpec) -> set[NodeId]:
    """Nodes from which a failure travels to a sink through fail_fast edges."""
    reaching = set(spec.sinks)
    stack = list(spec.sinks)
    while stack:
        node = spec.node(stack.pop())
        if node.join != "fail_fast":
            continue
        for dep in node.deps:
            if dep not in reaching and dep not in node.settled:
                reaching.add(dep)
                stack.append(dep)
    return reaching


def _resolve(run: RunState, template: Template, reader: NodeSpec | None) -> Any:
    if isinstance(template, NodeInput):
        record = run.nodes[template.node]
        if record.state == "succeeded":
            if reader is None and _ignored(run, template.node):
                return None
            return loads(record.value) if record.value is not None else None
        task = run.spec.node(template.node).task
        return error_record(template.node, task, record)
    if isinstance(template, ListInput):
        return [_resolve(run, item, reader) for item in template.items]
    if isinstance(template, CauseInput):
        assert reader is not None
        cause = run.nodes[reader.id].cause
        return run.task_id(cause) if cause is not None else None
    return None


def _ignored(run: RunState, node_id: NodeId) -> bool:
    return bool(run.spec.node(node_id).options.ignore_result)


def group_counts(run: RunState) -> dict[int | None, dict[str, int]]:
    """Count the run's nodes in each state, per innermost group (None: no group).

    The Redis scripts keep the same counts up to date as nodes change state.
    """
    counts: dict[int | None, dict[str, int]] = {}
    for node in run.spec.nodes:
        states = counts.setdefault(node.group, {})
        state = run.nodes[node.id].state
        states[state] = states.get(state, 0) + 1
    return counts


def spliced_spec(spec: GraphSpec, replaced: NodeSpec, sub: GraphSpec) -> GraphSpec:
    """Return ``spec`` with ``sub`` spliced in place of ``replaced``.

    Every driver splices through this function, so ids, rewiring and
    settled dependencies come out the same on each.
    """
    prefix = replaced.id
    offset = len(spec.groups)

    def rename(node_id: NodeId) -> NodeId:
        return f"{prefix}.{node_id}"

    new_nodes = []
    for node in sub.nodes:
        new_nodes.append(
            node.model_copy(
                update={
                    "id": rename(node.id),
                    "deps": [rename(dep) for dep in node.deps],
                    "settled": [rename(dep) for dep in node.settled],
                    "triggers": [rename(dep) for dep in node.triggers],
                    "input": _rename_template(node.input, rename),
                    "covers": [rename(item) for item in node.covers],
                    "side": node.side or replaced.side,
                    "path": f"{replaced.path} > replace > {node.path}".strip(" >"),
                    "group": None if node.group is None else node.group + offset,
                }
            )
        )
    sinks = [rename(sink) for sink in sub.sinks]
    settled = [rename(item) for item in sub.settled]
    output = _rename_template(sub.output, rename)
    rewired = [_rewire(node, prefix, sinks, settled, output) for node in spec.nodes]
    position = next(i for i, node in enumerate(rewired) if node.id == prefix) + 1
    while position < len(rewired) and rewired[position].id.startswith(f"{prefix}."):
        position += 1
    nodes = [*rewired[:position], *new_nodes, *rewired[position:]]
    groups = [
        *spec.groups,
        *(
            group.model_copy(
                update={
                    "id": group.id + offset,
                    "parent": None if group.parent is None else group.parent + offset,
                    "members": [
                        [rename(n) for n in member] for member in group.members
                    ],
                }
            )
            for group in sub.groups
        ),
    ]
    top_sinks = _replace_in_list(list(spec.sinks), prefix, sinks)
    top_settled = _rewire_settled(spec.settled, prefix, sinks, settled, spec.sinks)
    top_output = _substitute(spec.output, prefix, output)
    return GraphSpec(
        nodes=nodes,
        output=top_output,
        sinks=top_sinks,
        settled=top_settled,
        groups=groups,
    )


def _rewire(
    node: NodeSpec,
    prefix: NodeId,
    sinks: list[NodeId],
    settled: list[NodeId],
    output: Template,
) -> NodeSpec:
    """Point a node that waited on the replaced node at the new canvas."""
    if prefix not in node.deps and prefix not in node.covers:
        return node
    return node.model_copy(
        update={
            "deps": _replace_in_list(node.deps, prefix, [*sinks, *settled]),
            "settled": _rewire_settled(node.settled, prefix, sinks, settled, node.deps),
            "triggers": _replace_in_list(node.triggers, prefix, [*sinks, *settled]),
            "covers": _replace_in_list(node.covers, prefix, sinks),
            "input": _substitute(node.input, prefix, output),
        }
    )


def _rewire_settled(
    current: list[NodeId],
    prefix: NodeId,
    sinks: list[NodeId],
    settled: list[NodeId],
    waited_on: list[NodeId],
) -> list[NodeId]:
    """Return the settled list after the replaced node gave way to a canvas.

    If the replaced node was itself settled, the whole canvas is. Otherwise
    only the nodes whose failure the canvas absorbed are added.
    """
    if prefix in current:
        return _replace_in_list(current, prefix, [*sinks, *settled])
    if prefix in waited_on:
        return [*current, *(item for item in settled if item not in current)]
    return current


def _replace_in_list(
    items: list[NodeId], old: NodeId, new: list[NodeId]
) -> list[NodeId]:
    result: list[NodeId] = []
    for item in items:
        for replacement in new if item == old else [item]:
            if replacement not in result:
                result.append(replacement)
    return result


def _substitute(template: Template, old: NodeId, new: Template) -> Template:
    if isinstance(template, NodeInput) and template.node == old:
        return new
    if isinstance(template, ListInput):
        return ListInput(items=[_substitute(item, old, new) for item in template.items])
    return template


def _rename_template(template: Template, rename: Any) -> Template:
    if isinstance(template, NodeInput):
        return NodeInput(node=rename(template.node))
    if isinstance(template, ListInput):
        return ListInput(
            items=[_rename_template(item, rename) for item in template.items]
        )
    return template
