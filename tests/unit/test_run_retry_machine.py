"""Run retries in the state machine: which nodes reopen, epochs and fencing.

Each test drives `stem.engine.machine` by hand, claim by claim, so the state
of every node is known when the run is reopened.
"""

from __future__ import annotations

import pytest

from stem.canvas import Canvas, Chain, Chord, Group, Signature, compile_canvas
from stem.canvas.values import dumps, loads
from stem.engine import machine
from stem.engine.errors import RunNotRetryable
from stem.engine.records import ErrorInfo, RunState

ERROR = ErrorInfo("builtins", "ValueError", "planned failure")


def start(canvas: Canvas) -> tuple[RunState, list[machine.Effect]]:
    return machine.start("r1", compile_canvas(canvas), 0.0)


def queued(effects: list[machine.Effect]) -> list[tuple[str, int]]:
    return [
        (effect.node, effect.attempt)
        for effect in effects
        if isinstance(effect, machine.Enqueue)
    ]


def succeed(run: RunState, node: str, value: object = None) -> list[machine.Effect]:
    attempt = run.nodes[node].attempt
    assert machine.claim(run, node, attempt, 1.0, epoch=run.epoch)
    effects = machine.complete(run, node, attempt, dumps(value), 2.0, epoch=run.epoch)
    assert effects is not None
    return effects


def fail(run: RunState, node: str) -> list[machine.Effect]:
    attempt = run.nodes[node].attempt
    assert machine.claim(run, node, attempt, 1.0, epoch=run.epoch)
    effects = machine.fail(run, node, attempt, ERROR, 2.0, epoch=run.epoch)
    assert effects is not None
    return effects


def failed_chain() -> RunState:
    """Run a -> b -> c where b fails, so c is cancelled."""
    run, _ = start(Chain([Signature("a"), Signature("b"), Signature("c")]))
    succeed(run, "0", 1)
    fail(run, "1")
    assert run.status == "failed"
    return run


def test_reopen_rejects_running_run() -> None:
    run, _ = start(Signature("a"))
    with pytest.raises(RunNotRetryable, match=r"Run r1 .* status is 'running'") as info:
        machine.reopen(run, 1.0)
    assert info.value.run_id == "r1"
    assert info.value.status == "running"
    assert run.epoch == 1


def test_reopen_rejects_succeeded_run() -> None:
    run, _ = start(Signature("a"))
    succeed(run, "0", 5)
    with pytest.raises(RunNotRetryable, match=r"Run r1 .* because it succeeded"):
        machine.reopen(run, 3.0)
    assert run.status == "succeeded"
    assert run.epoch == 1


def test_reopen_requeues_failed_node() -> None:
    run = failed_chain()
    effects = machine.reopen(run, 5.0)
    assert run.epoch == 2
    assert run.status == "running"
    assert run.error_node is None
    assert run.ended_at is None
    assert queued(effects) == [("1", 1)]
    assert run.nodes["0"].state == "succeeded"
    assert run.nodes["1"].state == "queued"
    assert run.nodes["1"].error is None
    assert run.nodes["2"].state == "pending"
    assert run.nodes["2"].cause is None
    assert run.open_main == 2


def test_reopened_chain_reads_kept_value() -> None:
    run = failed_chain()
    machine.reopen(run, 5.0)
    succeed(run, "1", 2)
    has_value, value = machine.resolve_input(run, run.spec.node("2"))
    assert has_value
    assert value == 2
    succeed(run, "2", 3)
    assert run.status == "succeeded"
    assert run.value is not None
    assert loads(run.value) == 3
    assert run.nodes["0"].attempt == 1


def test_old_epoch_message_is_ignored() -> None:
    run = failed_chain()
    machine.reopen(run, 5.0)
    # Attempts restart at 1, so only the epoch identifies the old message.
    attempt = run.nodes["1"].attempt
    assert attempt == 1
    assert not machine.claim(run, "1", attempt, 6.0, epoch=1)
    assert machine.claim(run, "1", attempt, 6.0, epoch=2)
    assert machine.complete(run, "1", attempt, dumps(0), 7.0, epoch=1) is None
    assert machine.fail(run, "1", attempt, ERROR, 7.0, epoch=1) is None
    assert machine.retry(run, "1", attempt, ERROR, 0.0, 7.0, epoch=1) is None
    assert machine.dead_letter(run, "1", attempt, ERROR, 7.0, epoch=1) is None
    assert run.nodes["1"].state == "running"


def test_reopen_twice_counts_epochs() -> None:
    run = failed_chain()
    machine.reopen(run, 5.0)
    fail(run, "1")
    assert run.status == "failed"
    effects = machine.reopen(run, 9.0)
    assert run.epoch == 3
    assert queued(effects) == [("1", 1)]


def test_reopen_cancelled_run() -> None:
    canvas = Group([Signature("a"), Signature("b")])
    run, _ = start(canvas)
    succeed(run, "0", 1)
    machine.cancel(run, 3.0)
    assert run.status == "cancelled"
    effects = machine.reopen(run, 4.0)
    assert queued(effects) == [("1", 1)]
    succeed(run, "1", 2)
    assert run.status == "succeeded"
    assert run.value is not None
    assert loads(run.value) == [1, 2]


def test_errback_fires_again() -> None:
    canvas = Signature("a").on_error(Signature("e"))
    run, _ = start(canvas)
    errback = next(node.id for node in run.spec.nodes if node.role == "errback")
    fail(run, "0")
    succeed(run, errback)
    assert run.nodes[errback].state == "succeeded"
    machine.reopen(run, 5.0)
    assert run.nodes[errback].state == "pending"
    assert run.nodes[errback].cause is None
    effects = fail(run, "0")
    assert queued(effects) == [(errback, 1)]
    assert run.nodes[errback].cause == "0"


def test_errback_skipped_when_retry_succeeds() -> None:
    canvas = Signature("a").on_error(Signature("e"))
    run, _ = start(canvas)
    errback = next(node.id for node in run.spec.nodes if node.role == "errback")
    fail(run, "0")
    succeed(run, errback)
    machine.reopen(run, 5.0)
    succeed(run, "0", 1)
    assert run.nodes[errback].state == "skipped"
    assert run.status == "succeeded"


def test_settled_join_in_errback_reopened() -> None:
    # The errback is a chord whose callback accepts a failed member: when the
    # retry succeeds, the errback does not fire and the callback is skipped too.
    header = Group([Signature("m")])
    errback = Chord(header, Signature("cb"), "all_settled")
    run, _ = start(Signature("a").on_error(errback))
    member = next(node.id for node in run.spec.nodes if node.task == "m")
    callback = next(node.id for node in run.spec.nodes if node.task == "cb")
    fail(run, "0")
    fail(run, member)
    succeed(run, callback, [])
    assert run.status == "failed"

    assert machine.nodes_to_reopen(run) == {"0", member, callback}
    machine.reopen(run, 5.0)
    succeed(run, "0", 1)

    assert run.nodes[member].state == "skipped"
    assert run.nodes[callback].state == "skipped"
    assert run.status == "succeeded"


def test_link_fires_in_new_epoch() -> None:
    canvas = Chain([Signature("a"), Signature("b")])
    canvas.link(Signature("l"))
    run, _ = start(canvas)
    link = next(node.id for node in run.spec.nodes if node.role == "link")
    succeed(run, "0", 1)
    fail(run, "1")
    assert run.nodes[link].state == "skipped"
    machine.reopen(run, 5.0)
    assert run.nodes[link].state == "pending"
    effects = succeed(run, "1", 2)
    assert queued(effects) == [(link, 1)]


def test_running_errback_is_requeued() -> None:
    canvas = Signature("a").on_error(Signature("e"))
    run, _ = start(canvas)
    errback = next(node.id for node in run.spec.nodes if node.role == "errback")
    fail(run, "0")
    assert run.status == "failed"
    assert machine.claim(run, errback, 1, 3.0, epoch=1)
    machine.reopen(run, 4.0)
    # The first epoch's worker reports late: its report changes nothing.
    assert machine.complete(run, errback, 1, dumps(None), 5.0, epoch=1) is None
    assert run.nodes[errback].state == "pending"
    assert run.nodes[errback].attempt == 0
    effects = fail(run, "0")
    assert queued(effects) == [(errback, 1)]


def test_nodes_to_reopen_keeps_successes() -> None:
    canvas = Chain(
        [Group([Signature("a"), Signature("b")]), Signature("c"), Signature("d")]
    )
    run, _ = start(canvas)
    succeed(run, "0", 1)
    fail(run, "1")
    assert machine.nodes_to_reopen(run) == {"1", "2", "3"}


def replaced_errback_run() -> RunState:
    """Fail a task whose errback replaced itself with the one-task canvas ``1.0``."""
    run, _ = start(Signature("a").on_error(Signature("e")))
    fail(run, "0")
    assert machine.claim(run, "1", 1, 3.0)
    spliced = machine.splice(run, "1", 1, compile_canvas(Signature("x")), 4.0)
    assert spliced is not None
    assert queued(spliced) == [("1.0", 1)]
    return run


def test_replaced_errback_canvas_kept() -> None:
    run = replaced_errback_run()
    fail(run, "1.0")

    effects = machine.reopen(run, 5.0)

    assert queued(effects) == [("0", 1)]
    assert run.nodes["1"].state == "succeeded"
    assert run.nodes["1.0"].state == "failed"


def test_replaced_errback_open_node_reopened() -> None:
    run = replaced_errback_run()
    assert run.nodes["1.0"].state == "queued"

    effects = machine.reopen(run, 5.0)

    assert queued(effects) == [("0", 1), ("1.0", 1)]
    assert run.nodes["1"].state == "succeeded"
    assert run.epoch == 2
