"""``stem inspect``: the live workers, from their heartbeats."""

from __future__ import annotations

import time
from dataclasses import asdict

import click
from rich.table import Table
from rich.text import Text

from stem.canvas.text import printable
from stem.commands.common import (
    EXIT_FAILED,
    CommandError,
    app_options,
    console,
    emit_json,
    format_span,
    json_option,
    reported_errors,
    shared_app,
)


@click.command()
@app_options()
@json_option
def inspect(app_spec: str | None, url: str | None, as_json: bool) -> None:
    """List live workers: queues, concurrency, tasks in flight and counters.

    A worker counts as live until it misses three heartbeats. Exits 1 when
    no worker is live, so scripts can use it as a health check.
    """
    app = shared_app(app_spec, url, "stem inspect")
    with reported_errors():
        beats = app.driver.workers()
    if as_json:
        emit_json({"workers": [asdict(beat) for beat in beats]})
    else:
        now = time.time()
        table = Table(box=None, pad_edge=False)
        for column in (
            "worker",
            "process",
            "queues",
            "busy",
            "done",
            "failed",
            "up",
            "seen",
        ):
            table.add_column(column, overflow="fold")
        for beat in beats:
            # Text, not a str, so rich shows brackets as they are; the names
            # come from the store, which another program may have written.
            table.add_row(
                Text(printable(beat.name)),
                Text(printable(f"{beat.pid}@{beat.host}")),
                Text(printable(",".join(beat.queues))),
                f"{beat.in_flight}/{beat.concurrency} {beat.pool}",
                str(beat.processed),
                str(beat.failed),
                format_span(max(0.0, now - beat.started_at)),
                f"{format_span(max(0.0, now - beat.last_seen))} ago",
            )
        if beats:
            console().print(table)
    if not beats:
        raise CommandError(
            "No worker is alive: none sent a heartbeat within the last three "
            "intervals. Start one with stem worker -A APP.",
            EXIT_FAILED,
        )
