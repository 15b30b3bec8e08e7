"""``stem runs``: list, show and cancel the runs of a shared store."""

from __future__ import annotations

import json
import shlex
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from stem.canvas.render import NODE_STATES, STATE_STYLES
from stem.canvas.text import printable
from stem.canvas.values import loads
from stem.commands.common import (
    EXIT_REJECTED,
    CommandError,
    app_options,
    console,
    emit_json,
    format_span,
    format_time,
    json_option,
    parse_age,
    reported_errors,
    shared_app,
    store_arguments,
)
from stem.commands.runs_retry import retry
from stem.engine.ports import RunSnapshot, RunSummary

RUN_STATUSES = ("running", "succeeded", "failed", "cancelled")
#: Style of each run status: the colour and symbol of the matching node state.
STATUS_STYLES = {status: STATE_STYLES[status] for status in RUN_STATUSES}
#: Characters of an error message `runs show` prints before cutting it.
_MAX_MESSAGE = 300

LS_EXAMPLES = """
\b
Examples:
  stem runs ls --url redis://127.0.0.1:6379/0
  stem runs ls --state failed --since 2h
  stem runs ls --state running --older-than 30m --limit 100 --json
"""


@click.group()
def runs() -> None:
    """List, show, cancel and retry runs."""


@runs.command("ls", epilog=LS_EXAMPLES)
@app_options()
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(RUN_STATUSES),
    help="Show only runs in this status; repeat for several.",
)
@click.option(
    "--since",
    default=None,
    help="Show only runs created within this age, such as 15m, 2h or 3d.",
)
@click.option(
    "--older-than",
    default=None,
    help="Show only runs created longer ago than this age.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Runs per page.",
)
@click.option(
    "--cursor", default=None, help="Start after the page that printed this cursor."
)
@json_option
def list_runs(
    app_spec: str | None,
    url: str | None,
    states: tuple[str, ...],
    since: str | None,
    older_than: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """List runs, newest first, one page at a time."""
    app = shared_app(app_spec, url, "stem runs ls")
    now = time.time()
    after = None if since is None else now - parse_age(since)
    before = None if older_than is None else now - parse_age(older_than)
    with reported_errors():
        page = app.driver.list_runs(
            statuses=states,
            created_after=after,
            created_before=before,
            limit=limit,
            cursor=cursor,
        )
    if as_json:
        emit_json(
            {"runs": [_summary_json(run) for run in page.runs], "cursor": page.cursor}
        )
        return
    out = console()
    if not page.runs:
        out.print("No runs match.")
        return
    table = Table(box=None, pad_edge=False)
    # Run ids stay whole so they can be copied, also from a pipe at 80 columns.
    # The creation time wraps instead when space is short.
    table.add_column("run", no_wrap=True)
    table.add_column("status")
    table.add_column("created", overflow="fold")
    table.add_column("duration", justify="right")
    for run in page.runs:
        end = run.ended_at if run.ended_at is not None else now
        table.add_row(
            # Text, not a str, so rich shows brackets in the id as they are.
            Text(printable(run.run_id)),
            status_text(run.status),
            format_time(run.created_at),
            format_span(end - run.created_at),
        )
    out.print(table)
    if page.cursor:
        command = ["stem", "runs", "ls", *store_arguments(app_spec, url)]
        for state in states:
            command += ["--state", state]
        if since is not None:
            command += ["--since", since]
        if older_than is not None:
            command += ["--older-than", older_than]
        command += ["--limit", str(limit), "--cursor", page.cursor]
        # soft_wrap keeps the hint on one line, so it can be copied at 80 columns.
        out.print(f"More runs: {shlex.join(command)}", markup=False, soft_wrap=True)


@runs.command("show")
@app_options()
@click.argument("run_id")
@json_option
def show_run(app_spec: str | None, url: str | None, run_id: str, as_json: bool) -> None:
    """Show a run's status, epoch, times, node counts and error.

    The epoch is 1 at submit and goes up by one with each `stem runs retry`.
    """
    app = shared_app(app_spec, url, "stem runs show")
    with reported_errors():
        snapshot = app.driver.snapshot(run_id)
    if as_json:
        emit_json(_snapshot_json(snapshot))
        return
    out = console()
    counts = Counter[str](record.state for record in snapshot.nodes.values())
    end = snapshot.ended_at if snapshot.ended_at is not None else time.time()
    heading = Text(f"Run {snapshot.run_id} ")
    heading.append_text(status_text(snapshot.status))
    out.print(heading)
    out.print(f"  epoch     {snapshot.epoch}", markup=False)
    out.print(f"  created   {format_time(snapshot.created_at)}", markup=False)
    if snapshot.ended_at is not None:
        out.print(f"  ended     {format_time(snapshot.ended_at)}", markup=False)
    out.print(f"  duration  {format_span(end - snapshot.created_at)}", markup=False)
    nodes = Text(f"  nodes     {len(snapshot.nodes)}: ")
    nodes.append_text(state_counts_text(counts))
    out.print(nodes)
    error = _error_of(snapshot)
    if error is not None:
        out.print(_field("error", error))
    if snapshot.status == "succeeded" and snapshot.value is not None:
        value = _cut(_spaced_json(snapshot.value), _MAX_MESSAGE)
        out.print(_field("value", value))
    command = [
        "stem",
        "graph",
        "show",
        snapshot.run_id,
        *store_arguments(app_spec, url),
    ]
    out.print(f"See the graph: {shlex.join(command)}", markup=False, soft_wrap=True)


@runs.command("cancel")
@app_options()
@click.argument("run_id")
def cancel_run(app_spec: str | None, url: str | None, run_id: str) -> None:
    """Cancel a running run: nothing more of it runs and no errback fires."""
    app = shared_app(app_spec, url, "stem runs cancel")
    with reported_errors():
        before = app.driver.snapshot(run_id).status
        if before != "running":
            raise CommandError(
                f"Run {run_id} already ended as {before}, so there is nothing to "
                "cancel.",
                EXIT_REJECTED,
            )
        app.driver.cancel(run_id)
        after = app.driver.snapshot(run_id).status
    if after != "cancelled":
        raise CommandError(
            f"Run {run_id} ended as {after} before the cancel reached it.",
            EXIT_REJECTED,
        )
    click.echo(f"Run {run_id} cancelled.")


runs.add_command(retry)


def status_text(status: str) -> Text:
    """Return a run status with its symbol, coloured."""
    style = STATUS_STYLES.get(status)
    if style is None:
        return Text(status)
    return Text(f"{style.symbol} {status}", style=style.colour)


def state_counts_text(counts: Mapping[str, int]) -> Text:
    """Return ``3 ✓ succeeded, 1 ✗ failed`` in node-state order, coloured."""
    text = Text()
    for state in NODE_STATES:
        if not counts.get(state):
            continue
        if text:
            text.append(", ")
        style = STATE_STYLES[state]
        text.append(f"{counts[state]} {style.symbol} {state}", style=style.colour)
    return text


def _error_of(snapshot: RunSnapshot) -> str | None:
    node_id = snapshot.error_node
    if node_id is None:
        failed = [key for key, record in snapshot.nodes.items() if record.error]
        if not failed or snapshot.status != "failed":
            return None
        node_id = failed[0]
    record = snapshot.nodes.get(node_id)
    if record is None or record.error is None:
        return None
    task = snapshot.spec.node(node_id).task
    message = (
        f"node {node_id} ({task}): {record.error.qualname}: {record.error.message}"
    )
    return _cut(" ".join(message.split()), _MAX_MESSAGE)


def _field(label: str, text: str) -> Table:
    """Lay out one ``runs show`` line whose text wraps under its own column.

    Rich wraps the text at spaces, so a number or word is split only when
    it is wider than the column on its own.
    """
    grid = Table.grid()
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    # Text, not a str, so rich does not read brackets in the text as markup.
    grid.add_row(f"  {label:<9} ", Text(printable(text)))
    return grid


def _spaced_json(stored: str) -> str:
    """Return a stored value's JSON with a space after each comma and colon.

    The stored text is compact, so without the spaces rich would find no
    place to wrap a list and would split a number at the line's end.
    """
    try:
        data = json.loads(stored)
    except ValueError:
        return stored
    return json.dumps(data, ensure_ascii=False)


def _cut(text: str, limit: int) -> str:
    """Cut text longer than ``limit`` characters at its last space, and add "..."."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    space = head.rfind(" ")
    # A text without a space in its second half is cut at the limit instead.
    if space > limit // 2:
        head = head[:space]
    return head + " ..."


def _summary_json(run: RunSummary) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "status": run.status,
        "created_at": run.created_at,
        "ended_at": run.ended_at,
    }


def _snapshot_json(snapshot: RunSnapshot) -> dict[str, Any]:
    counts = Counter(record.state for record in snapshot.nodes.values())
    error = None
    if snapshot.error_node is not None:
        record = snapshot.nodes.get(snapshot.error_node)
        if record is not None and record.error is not None:
            error = {
                "node": snapshot.error_node,
                "type": record.error.qualname,
                "module": record.error.module,
                "message": record.error.message,
            }
    return {
        "run_id": snapshot.run_id,
        "status": snapshot.status,
        "epoch": snapshot.epoch,
        "created_at": snapshot.created_at,
        "ended_at": snapshot.ended_at,
        "nodes": len(snapshot.nodes),
        "states": dict(counts),
        "error": error,
        # Decoded from the value codec's text, so scripts get JSON, not a string.
        "value": None if snapshot.value is None else loads(snapshot.value),
    }
