"""Drawing a run for ``stem graph show``, on memory://: colour, width, ``--why``."""

from __future__ import annotations

import re
import time

import pytest
from rich.console import Console

from stem import App, chain, chord
from stem.canvas.primitives import Signature
from stem.commands.graph import draw, explain, legend, node_views
from stem.engine.ports import RunSnapshot, WorkerBeat

#: A foreground colour escape sequence: standard, bright or 256-colour.
COLOUR = re.compile(r"\x1b\[[0-9;]*(3[0-7]|9[0-7]|38;5;[0-9]+)[;m]")


@pytest.fixture
def app() -> App:
    made = App("memory://")
    made.task(name="add")(lambda x, y: x + y)
    made.task(name="total")(lambda values: sum(values))
    return made


def finished(app: App) -> RunSnapshot:
    canvas = chain(
        chord([Signature("add", (i, i)) for i in range(20)], Signature("total")),
        Signature("missing"),
        Signature("add", (1,)),
    )
    with app.worker(concurrency=2, unknown_task_grace_s=0):
        result = app.submit(canvas)
        result.get(10, propagate=False)
    return app.driver.snapshot(result.id)


def printed(renderable: object, **options: object) -> str:
    console = Console(width=80, force_terminal=True, **options)  # type: ignore[arg-type]
    with console.capture() as capture:
        console.print(renderable)
    return capture.get()


def test_dag_coloured_by_state(app: App) -> None:
    text = printed(draw(finished(app), "dag", 8, False))

    assert COLOUR.search(text)


def test_no_color_keeps_symbols(app: App) -> None:
    text = printed(draw(finished(app), "dag", 8, False), no_color=True)

    assert not COLOUR.search(text)
    assert "✓" in text
    assert "✗" in text
    assert "⊘" in text


def test_dag_fits_80_columns(app: App) -> None:
    console = Console(width=80, no_color=True)
    with console.capture() as capture:
        console.print(draw(finished(app), "dag", 8, False))
    lines = capture.get().splitlines()

    assert max(len(line) for line in lines) <= 80
    assert any("\N{MULTIPLICATION SIGN}20" in line for line in lines)


def test_expand_shows_members(app: App) -> None:
    console = Console(width=80, no_color=True)
    with console.capture() as capture:
        console.print(draw(finished(app), "dag", 8, True))

    assert "\N{MULTIPLICATION SIGN}20" not in capture.get()


def test_node_views_carry_attempts(app: App) -> None:
    views = node_views(finished(app))

    assert views["0"].state == "succeeded"
    assert views["0"].attempts == 1
    assert views["0"].duration_s is not None
    assert views["22"].state == "cancelled"
    assert views["22"].duration_s is None


def test_why_names_failed_cause(app: App) -> None:
    snapshot = finished(app)

    lines = explain(app, snapshot, "22")

    assert lines[0] == "⊘ node 22 (add) is cancelled."
    assert lines[1].startswith("Node 21 (missing) failed: DeadLettered:")


def test_why_ended_nodes_read_as_verbs(app: App) -> None:
    snapshot = finished(app)

    succeeded = explain(app, snapshot, "0")
    failed = explain(app, snapshot, "21")

    assert succeeded[0] == "✓ node 0 (add) succeeded."
    assert failed[0] == "✗ node 21 (missing) failed."


def test_why_pending_lists_dependencies(app: App) -> None:
    result = app.submit(chord([Signature("add", (1, 1))] * 12, Signature("total")))
    snapshot = app.driver.snapshot(result.id)

    [_, waits] = explain(app, snapshot, "12")
    [_, queued, hint] = explain(app, snapshot, "0")

    assert "waits for 12 of its 12 dependencies" in waits
    assert "0 (queued)" in waits
    assert "and 2 more" in waits
    assert "0 live workers read that queue" in queued
    assert hint == "Start one: stem worker -A APP -Q default"


def test_legend_names_every_state() -> None:
    text = legend().plain

    for state in ("pending", "queued", "running", "retrying", "succeeded"):
        assert state in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_why_pending_errback(app: App) -> None:
    canvas = Signature("add", (1, 2)).set(link_error=Signature("total"))
    result = app.submit(canvas)
    snapshot = app.driver.snapshot(result.id)
    [errback] = [node.id for node in snapshot.spec.nodes if node.role == "errback"]

    lines = explain(app, snapshot, errback)

    assert lines[1] == "It runs when one of these fails or is cancelled: 0 (queued)."


def test_errback_row_names_failed_node(app: App) -> None:
    # The unknown task at node 0 fails, which cancels nodes 1 and 2. The
    # errback covers node 2, the chain's last node, but node 0 fired it.
    app.task(name="note")(lambda *args: None)
    canvas = chain(
        Signature("missing"), Signature("add", (1,)), Signature("add", (2,))
    ).on_error(Signature("note"))
    with app.worker(concurrency=1, unknown_task_grace_s=0):
        result = app.submit(canvas)
        result.get(10, propagate=False)
    snapshot = app.driver.snapshot(result.id)
    [errback] = [node.id for node in snapshot.spec.nodes if node.role == "errback"]

    drawn = printed(draw(snapshot, "dag", 8, False), no_color=True)
    text = re.sub(r"\x1b\[[0-9;]*m", "", drawn)
    lines = explain(app, snapshot, errback)

    [row] = [line for line in text.splitlines() if "(errback)" in line]
    assert "fired by failure of 0" in row
    assert "on failure of 2" not in row
    assert "It fired because node 0 (missing) failed." in lines


def test_why_queued_names_unknown_task_defer(app: App) -> None:
    # A live worker reads the queue, but a worker that lacks the task hands
    # its message back until the grace period ends, so "waits for a worker"
    # would be wrong.
    beat = WorkerBeat(
        name="worker-1",
        host="host",
        pid=1,
        queues=["default"],
        concurrency=4,
        pool="threads",
        in_flight=0,
        processed=0,
        failed=0,
        started_at=time.time(),
        last_seen=time.time(),
    )
    app.driver.heartbeat(beat, 60.0)
    result = app.submit(Signature("missing"))
    snapshot = app.driver.snapshot(result.id)

    lines = explain(app, snapshot, "0")

    assert lines[0] == "◷ node 0 (missing) is queued."
    assert "for a worker" not in lines[1]
    assert "1 live worker reads that queue, 1 with free slots" in lines[1]
    assert "does not register missing hands the message back" in lines[2]
    assert "then dead-letters it" in lines[2]
