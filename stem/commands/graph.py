"""``stem graph show``: draw a run as a DAG, a tree, DOT, Mermaid, JSON or SVG."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import click
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from stem.canvas.render import (
    NODE_STATES,
    STATE_STYLES,
    NodeView,
    render_dag,
    render_tree,
    to_dot,
    to_json,
    to_mermaid,
)
from stem.canvas.spec import NodeId
from stem.canvas.svg import to_svg
from stem.canvas.text import printable
from stem.commands.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    CommandError,
    app_options,
    console,
    format_span,
    format_time,
    reported_errors,
    shared_app,
)
from stem.engine.app import App
from stem.engine.ports import RunSnapshot
from stem.engine.records import SETTLED, TERMINAL, NodeRecord
from stem.engine.worker import DEFAULT_UNKNOWN_TASK_GRACE_S

FORMATS = ("dag", "tree", "dot", "mermaid", "json", "svg")
#: Width of drawings written to a file with --output.
_FILE_WIDTH = 100

SHOW_EXAMPLES = """
\b
Examples:
  stem graph show 01JF3Q9ZK4V8T2N6M0C5H7R1XB --url redis://127.0.0.1:6379/0
  stem graph show RUN --expand --why 1.3
  stem graph show RUN --watch
  stem graph show RUN --format mermaid --output run.mmd
  stem graph show RUN --format svg --output run.svg
"""


@click.group()
def graph() -> None:
    """Draw runs."""


@graph.command("show", epilog=SHOW_EXAMPLES)
@app_options()
@click.argument("run_id")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(FORMATS),
    default="dag",
    show_default=True,
    help="dag and tree are for terminals; dot, mermaid and json list every "
    "node; svg is a picture, to write with --output.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to this file instead of stdout.",
)
@click.option("--expand", is_flag=True, help="Show every member of large groups.")
@click.option(
    "--collapse-over",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Draw a group of more members than this as one counted row.",
)
@click.option(
    "--why",
    "why_node",
    default=None,
    metavar="NODE",
    help="Explain what a node waits for, or why it ended as it did.",
)
@click.option(
    "--watch",
    is_flag=True,
    help="Redraw until the run ends; exit 1 if it failed or was cancelled.",
)
@click.option(
    "--interval",
    "interval_s",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds between redraws with --watch.",
)
def show(
    app_spec: str | None,
    url: str | None,
    run_id: str,
    output_format: str,
    output: Path | None,
    expand: bool,
    collapse_over: int,
    why_node: str | None,
    watch: bool,
    interval_s: float,
) -> None:
    """Draw run RUN_ID with each node's state, duration and attempts.

    The dag format lists nodes layer by layer: a node's layer is the longest
    path to it from a root, and side branches (links, errbacks) come last.
    Each snapshot costs a fixed number of store round trips, whatever the
    run's size. With --watch the exit code is 1 when the run ends failed or
    cancelled. Without it, drawing a failed run exits 0.
    """
    app = shared_app(app_spec, url, "stem graph show")
    if watch and output is not None:
        raise click.BadParameter(
            "--watch redraws the terminal and cannot write a file; drop one of "
            "--watch and --output.",
            param_hint="--watch",
        )
    with reported_errors():
        snapshot = app.driver.snapshot(run_id)
        if why_node is not None:
            _print_why(app, snapshot, why_node)
            return
        if watch:
            try:
                ended = _watch(
                    app, snapshot, output_format, collapse_over, expand, interval_s
                )
            except KeyboardInterrupt:
                raise SystemExit(EXIT_INTERRUPTED) from None
            # As `stem run` and `stem runs retry --wait` do, a followed run that
            # did not succeed is the command's failure.
            if ended.status in ("failed", "cancelled"):
                raise SystemExit(EXIT_FAILED)
            return
    drawing = draw(snapshot, output_format, collapse_over, expand)
    if output is None:
        _print(console(), drawing)
        return
    try:
        if isinstance(drawing, str):
            output.write_text(drawing + "\n", encoding="utf-8")
        else:
            with output.open("w", encoding="utf-8") as file:
                _print(Console(file=file, width=_FILE_WIDTH, no_color=True), drawing)
    except OSError as err:
        raise CommandError(
            f"Writing {output} failed: {err.strerror or err}; check that its "
            "folder exists and is writable.",
            EXIT_USAGE,
        ) from err
    click.echo(f"Wrote {output_format} of run {run_id} to {output}.", err=True)


def node_views(snapshot: RunSnapshot, now: float | None = None) -> dict[str, NodeView]:
    """Build each node's drawing facts: state, duration so far and attempts."""
    clock = time.time() if now is None else now
    views: dict[str, NodeView] = {}
    for node_id, record in snapshot.nodes.items():
        duration = None
        if record.started_at is not None:
            end = record.ended_at if record.ended_at is not None else clock
            duration = max(0.0, end - record.started_at)
        views[node_id] = NodeView(
            record.state, duration, record.attempt, cause=record.cause
        )
    return views


def draw(
    snapshot: RunSnapshot, output_format: str, collapse_over: int, expand: bool
) -> RenderableType | str:
    """Draw a snapshot: a rich renderable for dag and tree, text for the others.

    The svg text is the picture of `stem.canvas.svg.to_svg`, with the same
    collapsed groups as dag.
    """
    views = node_views(snapshot)
    spec = snapshot.spec
    if output_format == "dot":
        return to_dot(spec, views)
    if output_format == "mermaid":
        return to_mermaid(spec, views)
    if output_format == "json":
        return to_json(spec, views)
    title = _title(snapshot)
    if output_format == "svg":
        return to_svg(
            spec, views, collapse_over=collapse_over, expand=expand, title=title
        )
    if output_format == "tree":
        body: RenderableType = render_tree(
            spec, views, collapse_over=collapse_over, expand=expand, title=title
        )
    else:
        body = render_dag(
            spec, views, collapse_over=collapse_over, expand=expand, title=title
        )
    return Group(body, legend())


def legend() -> Text:
    """Return two lines that name each state's symbol, short enough for 80 columns."""
    text = Text()
    text.append("legend: ", style="dim")
    half = len(NODE_STATES) // 2
    for index, state in enumerate(NODE_STATES):
        if index == half:
            text.append("\n        ")
        elif index:
            text.append("  ")
        style = STATE_STYLES[state]
        text.append(f"{style.symbol} {state}", style=style.colour)
    return text


def _title(snapshot: RunSnapshot) -> str:
    end = snapshot.ended_at if snapshot.ended_at is not None else time.time()
    elapsed = format_span(max(0.0, end - snapshot.created_at))
    return f"run {snapshot.run_id}: {snapshot.status}, {elapsed}"


def _print(out: Console, drawing: RenderableType | str) -> None:
    if isinstance(drawing, str):
        out.print(drawing, markup=False, highlight=False, soft_wrap=True)
    else:
        out.print(drawing)


def _watch(
    app: App,
    snapshot: RunSnapshot,
    output_format: str,
    collapse_over: int,
    expand: bool,
    interval_s: float,
) -> RunSnapshot:
    """Redraw the run until it ends, and return its last snapshot."""
    out = console()
    if not out.is_terminal:
        # Without a terminal, print a new drawing each time a state changes.
        last: tuple[str, ...] | None = None
        while True:
            states = (snapshot.status, *(r.state for r in snapshot.nodes.values()))
            if states != last:
                _print(out, draw(snapshot, output_format, collapse_over, expand))
                last = states
            if snapshot.status != "running":
                return snapshot
            time.sleep(interval_s)
            snapshot = app.driver.snapshot(snapshot.run_id)
    with Live(console=out, auto_refresh=False, transient=False) as live:
        while True:
            drawing = draw(snapshot, output_format, collapse_over, expand)
            live.update(Text(drawing) if isinstance(drawing, str) else drawing)
            live.refresh()
            if snapshot.status != "running":
                return snapshot
            time.sleep(interval_s)
            snapshot = app.driver.snapshot(snapshot.run_id)


def _print_why(app: App, snapshot: RunSnapshot, node_id: NodeId) -> None:
    if node_id not in snapshot.spec.by_id:
        raise CommandError(
            f"Run {snapshot.run_id} has no node {node_id!r}; its node ids are "
            "shown in the first column of stem graph show.",
            EXIT_NOT_FOUND,
        )
    out = console()
    for line in explain(app, snapshot, node_id):
        out.print(printable(line), markup=False, highlight=False)


_ENDED_VERBS = frozenset({"succeeded", "failed"})


def explain(app: App, snapshot: RunSnapshot, node_id: NodeId) -> list[str]:
    """Say why a node is in its state: what it waits for, or how it ended."""
    node = snapshot.spec.node(node_id)
    record = snapshot.nodes[node_id]
    symbol = STATE_STYLES[record.state].symbol
    # "succeeded" and "failed" read as verbs, the other states after "is".
    verb = record.state if record.state in _ENDED_VERBS else f"is {record.state}"
    lines = [f"{symbol} node {node_id} ({node.task}) {verb}."]
    now = time.time()
    if record.state == "pending":
        lines += _pending_reasons(snapshot, node_id)
    elif record.state == "queued":
        lines += _queued_reasons(app, snapshot, node_id, now)
    elif record.state == "retrying":
        lines.append(
            f"Attempt {record.attempt - 1} failed and attempt {record.attempt} "
            "waits for its retry delay, then for a worker."
        )
        lines += _error_lines(record)
    elif record.state == "running":
        started = (
            ""
            if record.started_at is None
            else (f", started {format_span(now - record.started_at)} ago")
        )
        lines.append(f"Attempt {record.attempt} is running{started}.")
    elif record.state in ("cancelled", "skipped"):
        lines += _ended_reasons(snapshot, node_id, record)
    elif record.state == "failed":
        lines += _error_lines(record)
    else:
        lines.append(f"It ended at {format_time(record.ended_at)}.")
    if node.role == "errback" and record.cause is not None:
        # When an errback fires, the state machine stores the failed node as its cause.
        cause_task = snapshot.spec.node(record.cause).task
        lines.append(f"It fired because node {record.cause} ({cause_task}) failed.")
    return lines


def _queued_reasons(
    app: App, snapshot: RunSnapshot, node_id: NodeId, now: float
) -> list[str]:
    node = snapshot.spec.node(node_id)
    record = snapshot.nodes[node_id]
    since = (
        ""
        if record.queued_at is None
        else f" for {format_span(now - record.queued_at)}"
    )
    queue = node.options.queue or app.default_queue
    readers = [w for w in app.driver.workers() if queue in w.queues]

    if not readers:
        return [
            f"Attempt {record.attempt} waits{since} on queue {queue!r} for a "
            "worker; 0 live workers read that queue.",
            f"Start one: stem worker -A APP -Q {queue}",
        ]
    # Heartbeats do not list a worker's tasks, so the text cannot tell
    # whether the readers register this task. It describes the case where not.
    idle = sum(1 for worker in readers if worker.in_flight < worker.concurrency)
    count = (
        "1 live worker reads"
        if len(readers) == 1
        else f"{len(readers)} live workers read"
    )
    grace = f"{DEFAULT_UNKNOWN_TASK_GRACE_S:g} s"

    return [
        f"Attempt {record.attempt} has been queued{since} on queue {queue!r}; "
        f"{count} that queue, {idle} with free slots.",
        f"A worker that does not register {node.task} hands the message back "
        "through the delayed set, to be fetched again, until its "
        f"--unknown-task-grace ({grace} by default) has passed since the "
        "message was first queued, and then dead-letters it (stem dlq ls). "
        "stem queues ls counts a handed-back message as delayed.",
    ]


def _pending_reasons(snapshot: RunSnapshot, node_id: NodeId) -> list[str]:
    node = snapshot.spec.node(node_id)
    if node.role == "errback":
        covers = _states_of(snapshot.nodes, node.covers)
        return [f"It runs when one of these fails or is cancelled: {covers}."]
    waiting = [dep for dep in node.deps if snapshot.nodes[dep].state not in TERMINAL]
    if not waiting:
        return ["Its dependencies have ended; the store queues it in the same step."]
    shown = _states_of(snapshot.nodes, waiting[:10])
    more = f" and {len(waiting) - 10} more" if len(waiting) > 10 else ""
    accept = "any end" if node.join == "all_settled" else "success"
    return [
        f"It waits for {len(waiting)} of its {len(node.deps)} dependencies to end "
        f"(it needs {accept} from each): {shown}{more}."
    ]


def _ended_reasons(
    snapshot: RunSnapshot, node_id: NodeId, record: NodeRecord
) -> list[str]:
    if snapshot.status == "cancelled" and record.cause is None:
        return ["The run was cancelled before it could run."]
    if record.cause is not None:
        cause = snapshot.nodes.get(record.cause)
        task = snapshot.spec.node(record.cause).task
        detail = (
            ""
            if cause is None or cause.error is None
            else (f": {cause.error.qualname}: {cause.error.message.rstrip('.')}")
        )
        return [f"Node {record.cause} ({task}) failed{detail}."]
    node = snapshot.spec.node(node_id)
    ended = [
        dep for dep in node.deps if snapshot.nodes[dep].state in SETTLED | {"skipped"}
    ]
    return [f"A dependency did not succeed: {_states_of(snapshot.nodes, ended)}."]


def _error_lines(record: NodeRecord) -> list[str]:
    if record.error is None:
        return []
    message = " ".join(record.error.message.split()).rstrip(".")
    return [f"{record.error.qualname}: {message}."]


def _states_of(nodes: Mapping[NodeId, NodeRecord], node_ids: list[NodeId]) -> str:
    return ", ".join(f"{item} ({nodes[item].state})" for item in node_ids)
