"""``stem dlq``: list, show, replay and purge dead-lettered messages."""

from __future__ import annotations

import shlex
from typing import Any

import click
from rich.cells import cell_len
from rich.text import Text

from stem.canvas.text import printable
from stem.commands.common import (
    EXIT_NOT_FOUND,
    EXIT_REJECTED,
    CommandError,
    app_options,
    confirm_or_reject,
    console,
    emit_json,
    format_time,
    json_option,
    reported_errors,
    shared_app,
    store_arguments,
    yes_option,
)
from stem.engine.ports import TASK_HEADER, DeadLetter

#: Exit code and message template of each replay outcome but ``replayed``.
_REPLAY_REJECTIONS = {
    "not_found": (EXIT_NOT_FOUND, "no dead letter has id {id}"),
    "run_not_found": (
        EXIT_NOT_FOUND,
        "run {run} of dead letter {id} no longer exists; purge the dead letter",
    ),
    "not_failed": (
        EXIT_REJECTED,
        "node {node} of run {run} is no longer failed at attempt {attempt}, so "
        "dead letter {id} has nothing to replay; purge it",
    ),
    "run_cancelled": (
        EXIT_REJECTED,
        "run {run} was cancelled, so dead letter {id} cannot be replayed",
    ),
    "in_shard": (
        EXIT_REJECTED,
        "node {node} ran in {run}, a shard run of a sharded chord, which "
        "cannot be replayed; purge dead letter {id} and submit the canvas again",
    ),
    "other_epoch": (
        EXIT_REJECTED,
        "run {run} was retried as a new epoch after dead letter {id}, so it "
        "has nothing to replay; purge it",
    ),
}

REPLAY_EXAMPLES = """
\b
Examples:
  stem dlq replay 0/1733338102345-0 --url redis://127.0.0.1:6379/0
  stem dlq replay --all
"""


@click.group()
def dlq() -> None:
    """List, show, replay and purge dead letters."""


@dlq.command("ls")
@app_options()
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Dead letters per page.",
)
@click.option("--cursor", default=None, help="Start after this dead letter id.")
@json_option
def list_dead(
    app_spec: str | None, url: str | None, limit: int, cursor: str | None, as_json: bool
) -> None:
    """List dead letters, oldest first."""
    app = shared_app(app_spec, url, "stem dlq ls")
    with reported_errors():
        page, next_cursor = app.driver.list_dead_letters(limit=limit, cursor=cursor)
    if as_json:
        emit_json(
            {"dead_letters": [_json(dead) for dead in page], "cursor": next_cursor}
        )
        return
    out = console()
    if not page:
        out.print("No dead letters.")
        return
    for line in _listing(page, out.width):
        out.print(line, no_wrap=True, overflow="ellipsis")
    if next_cursor:
        command = ["stem", "dlq", "ls", *store_arguments(app_spec, url)]
        command += ["--limit", str(limit), "--cursor", next_cursor]
        out.print(f"More: {shlex.join(command)}", markup=False, soft_wrap=True)


@dlq.command("show")
@app_options()
@click.argument("dead_id")
@json_option
def show_dead(
    app_spec: str | None, url: str | None, dead_id: str, as_json: bool
) -> None:
    """Show one dead letter."""
    app = shared_app(app_spec, url, "stem dlq show")
    with reported_errors():
        dead = app.driver.get_dead_letter(dead_id)
    if dead is None:
        raise CommandError(f"No dead letter has id {dead_id}.", EXIT_NOT_FOUND)
    if as_json:
        emit_json(_json(dead))
        return
    out = console()
    for key, value in _json(dead).items():
        line = printable(f"{key:<9} {value}")
        out.print(line, markup=False, highlight=False)


@dlq.command("replay", epilog=REPLAY_EXAMPLES)
@app_options()
@click.argument("dead_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
def replay_dead(
    app_spec: str | None, url: str | None, dead_ids: tuple[str, ...], replay_all: bool
) -> None:
    """Run the nodes of dead letters again, so their runs can complete.

    Each replay queues a new attempt of the dead letter's failed node and
    reopens, in the same atomic step, the nodes its failure cancelled. Fix
    the cause first, such as a task missing from the workers.
    """
    app = shared_app(app_spec, url, "stem dlq replay")
    with reported_errors():
        ids = _chosen_ids(app.driver, dead_ids, replay_all)
        failures: list[tuple[int, str]] = []
        for dead_id in ids:
            dead = app.driver.get_dead_letter(dead_id)
            outcome = app.driver.replay_dead_letter(dead_id)
            if outcome == "replayed" and dead is not None:
                click.echo(
                    f"Replayed {dead_id}: node {dead.message.node_id} of run "
                    f"{dead.message.run_id} is queued again."
                )
                continue
            code, template = _REPLAY_REJECTIONS.get(
                outcome, (EXIT_REJECTED, "dead letter {id} was not replayed")
            )
            values = {"id": dead_id, "run": "", "node": "", "attempt": ""}
            if dead is not None:
                values.update(
                    run=dead.message.run_id,
                    node=dead.message.node_id,
                    attempt=str(dead.message.attempt),
                )
                if outcome == "run_not_found" and not dead.message.run_id:
                    # A malformed message that was dead-lettered has no run.
                    template = "dead letter {id} names no run; purge the dead letter"
            failures.append((code, template.format(**values)))
    for _, text in failures:
        click.echo(f"Error: {text[0].upper()}{text[1:]}.", err=True)
    if failures:
        raise SystemExit(max(code for code, _ in failures))


@dlq.command("purge")
@app_options()
@click.argument("dead_ids", nargs=-1)
@click.option("--all", "purge_all", is_flag=True, help="Purge every dead letter.")
@yes_option
def purge_dead(
    app_spec: str | None,
    url: str | None,
    dead_ids: tuple[str, ...],
    purge_all: bool,
    yes: bool,
) -> None:
    """Delete dead letters by id, or all of them with --all.

    On a terminal --all prompts for confirmation. Elsewhere it needs --yes.
    """
    app = shared_app(app_spec, url, "stem dlq purge")
    if purge_all == bool(dead_ids):
        raise click.UsageError("Pass dead letter ids, or --all, but not both.")
    if purge_all and not yes:
        confirm_or_reject("Delete every dead letter?", "stem dlq purge --all")
    with reported_errors():
        count = app.driver.purge_dead_letters(None if purge_all else list(dead_ids))
    noun = "dead letter" if count == 1 else "dead letters"
    click.echo(f"Purged {count} {noun}.")


def _chosen_ids(driver: Any, dead_ids: tuple[str, ...], every: bool) -> list[str]:
    if every == bool(dead_ids):
        raise click.UsageError("Pass dead letter ids, or --all, but not both.")
    if not every:
        return list(dead_ids)
    chosen: list[str] = []
    cursor = None
    while True:
        page, cursor = driver.list_dead_letters(limit=500, cursor=cursor)
        chosen += [dead.id for dead in page]
        if cursor is None:
            return chosen


def _listing(page: list[DeadLetter], width: int) -> list[Text]:
    """Lay out dead letters as rows of id, run, node and task, each over its reason.

    The reason has a line of its own, indented and cut to ``width`` with an
    ellipsis, because at 80 columns a last column would get 14 characters
    next to an 11-character task name, and wrap a word per line. `stem dlq
    show` prints it whole.
    """
    header = ("id", "run", "node", "task")
    # The task, run and reason come from messages, so their control
    # characters are escaped. Text is never read as markup.
    rows = [
        (
            dead.id,
            printable(dead.message.run_id),
            printable(dead.message.node_id),
            printable(dead.message.headers.get(TASK_HEADER, "")),
        )
        for dead in page
    ]
    widths = [
        max(cell_len(cell) for cell in column)
        for column in zip(header, *rows, strict=True)
    ]
    lines = [_aligned(header, widths, style="bold")]
    for dead, row in zip(page, rows, strict=True):
        lines.append(_aligned(row, widths))
        reason = Text("  " + printable(" ".join(dead.reason.split())))
        reason.truncate(width, overflow="ellipsis")
        lines.append(reason)
    return lines


def _aligned(cells: tuple[str, ...], widths: list[int], style: str = "") -> Text:
    """Join cells into one line, each padded to its column's width."""
    padded = [
        cell + " " * (width - cell_len(cell))
        for cell, width in zip(cells, widths, strict=True)
    ]
    return Text("  ".join(padded).rstrip(), style=style)


def _json(dead: DeadLetter) -> dict[str, Any]:
    message = dead.message
    return {
        "id": dead.id,
        "run": message.run_id,
        "node": message.node_id,
        "attempt": message.attempt,
        "epoch": message.epoch,
        "task": message.headers.get(TASK_HEADER, ""),
        "queue": message.queue,
        "reason": dead.reason,
        "dead_at": format_time(dead.dead_at),
    }
