"""``stem queues``: message counts per queue, and purging a queue."""

from __future__ import annotations

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
    yes_option,
)


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
    cancelled with `stem runs cancel`. On a terminal it prompts for
    confirmation. Elsewhere it needs --yes.
    """
    app = shared_app(app_spec, url, "stem queues purge")
    if not yes:
        confirm_or_reject(
            f"Delete every ready message of queue {name!r}?", "stem queues purge"
        )
    with reported_errors():
        count = app.driver.purge_queue(name)
    noun = "message" if count == 1 else "messages"
    click.echo(f"Purged {count} {noun} from queue {name}.")
