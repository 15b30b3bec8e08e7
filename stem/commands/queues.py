"""``stem queues``: message counts per queue, and purging a queue."""

from __future__ import annotations

import shlex

import click
from rich.table import Table
from rich.text import Text

from stem.canvas.text import printable
from stem.commands.common import (
    app_options,
    confirm_or_reject,
    console,
    emit_json,
    json_option,
    reported_errors,
    shared_app,
    store_arguments,
    yes_option,
)
from stem.engine.app import App
from stem.engine.errors import RunNotFound


@click.group()
def queues() -> None:
    """Show and purge queues."""


@queues.command("ls")
@app_options()
@json_option
def list_queues(app_spec: str | None, url: str | None, as_json: bool) -> None:
    """List each queue's ready and unacknowledged messages.

    Ready messages wait for a worker. Unacknowledged ones were fetched by a
    worker that has not reported yet; another worker takes them over when the
    visibility timeout passes.
    """
    app = shared_app(app_spec, url, "stem queues ls")
    with reported_errors():
        stats = app.driver.queue_stats()
        delayed = app.driver.delayed_count()
    if as_json:
        emit_json(
            {
                "queues": [
                    {"name": item.name, "ready": item.ready, "unacked": item.unacked}
                    for item in stats
                ],
                "delayed": delayed,
            }
        )
        return
    out = console()
    if not stats:
        out.print("No queue has messages.")
    else:
        table = Table(box=None, pad_edge=False)
        table.add_column("queue")
        table.add_column("ready", justify="right")
        table.add_column("unacked", justify="right")
        for item in stats:
            # Text, not a str, so rich shows brackets in the name as they are.
            name = Text(printable(item.name))
            table.add_row(name, str(item.ready), str(item.unacked))
        out.print(table)
    out.print(f"{delayed} delayed messages wait for a countdown, eta or retry.")


@queues.command("purge")
@app_options()
@click.argument("name")
@yes_option
def purge_queue(app_spec: str | None, url: str | None, name: str, yes: bool) -> None:
    """Delete queue NAME's messages that no worker has fetched.

    Their nodes stay queued, so their runs do not end until they are
    cancelled. The command prints a `stem runs cancel` command for each
    such run that is still running. On a terminal it prompts for
    confirmation. Elsewhere it needs --yes.
    """
    app = shared_app(app_spec, url, "stem queues purge")
    if not yes:
        confirm_or_reject(
            f"Delete every ready message of queue {name!r}?", "stem queues purge"
        )
    with reported_errors():
        purged = app.driver.purge_queue(name)
        running = _still_running(app, purged.run_ids)
    noun = "message" if purged.count == 1 else "messages"
    runs = len(purged.run_ids)
    of_runs = ""
    if runs:
        of_runs = f" of {runs} run" if runs == 1 else f" of {runs} runs"
    click.echo(f"Purged {purged.count} {noun}{of_runs} from queue {name}.")
    if not running:
        return
    if len(running) == 1:
        stays = "1 run stays running until cancelled. Cancel it with:"
    else:
        stays = f"{len(running)} runs stay running until cancelled. Cancel them with:"
    click.echo(f"Their nodes stay queued, so {stays}")
    for run_id in running:
        command = ["stem", "runs", "cancel", run_id, *store_arguments(app_spec, url)]
        click.echo(f"  {printable(shlex.join(command))}")


def _still_running(app: App, run_ids: list[str]) -> list[str]:
    """Return the runs that are still running, in order, out of ``run_ids``.

    A run that was cancelled before the purge has ended already, and one
    that expired is gone, so neither needs a cancel.
    """
    # NOTE: a message of a sharded chord's shard run names the shard run,
    # which is listed as it is, not as its home run.
    running = []
    for run_id in run_ids:
        try:
            ended = app.driver.wait_ended(run_id, 0, full=False)
        except RunNotFound:
            continue
        if ended is None:
            running.append(run_id)
    return running
