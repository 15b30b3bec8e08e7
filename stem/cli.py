"""The ``stem`` command line.

Exit codes:
    0  the command did what was asked (for ``run``: the run succeeded).
    1  the run failed or was cancelled.
    2  bad usage: a missing file, module, app or option.
    3  the run did not end within ``--timeout``.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import time
from collections import Counter
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from stem.canvas.primitives import Canvas
from stem.discovery import find_app, find_attribute, import_target, split_target
from stem.engine.drivers import redact
from stem.engine.ports import RunSnapshot
from stem.engine.records import TERMINAL
from stem.engine.result import AsyncResult
from stem.engine.worker import POOLS

EXIT_OK = 0
EXIT_RUN_FAILED = 1  # the run ended failed or cancelled
EXIT_USAGE = 2  # click's own code for bad usage
EXIT_TIMEOUT = 3  # the run was still going when --timeout ran out

RUN_EXAMPLES = """
\b
Examples:
  stem run examples/wordcount.py
  stem run examples/wordcount.py:pipeline --pool threads -c 4
  stem run myproject.flows:nightly --url redis://localhost:6379/0 --worker
"""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="stem")
@click.option(
    "-l",
    "--loglevel",
    default="warning",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    help="Log level of Stem's own loggers.",
)
def main(loglevel: str) -> None:
    """Stem: run Celery-style canvases (chains, groups, chords) as graphs."""
    logging.basicConfig(
        level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@main.command(epilog=RUN_EXAMPLES)
@click.argument("target")
@click.option(
    "-A",
    "--app",
    "app_name",
    default=None,
    help="Attribute of the app in the module, when it has several.",
)
@click.option(
    "--url", default=None, help="Broker URL; overrides STEM_URL and the app's own URL."
)
@click.option(
    "--worker/--no-worker",
    "start_worker",
    default=None,
    help="Run an in-process worker. On by default for memory://.",
)
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="Tasks run at once by the in-process worker. [default: CPU count]",
)
@click.option(
    "--pool",
    type=click.Choice(POOLS),
    default="processes",
    show_default=True,
    help="Where the in-process worker runs task bodies.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds to wait for the run to end. [default: no limit]",
)
def run(
    target: str,
    app_name: str | None,
    url: str | None,
    start_worker: bool | None,
    concurrency: int | None,
    pool: str,
    timeout: float | None,
) -> None:
    """Run the canvas returned by TARGET's factory and wait for its result.

    TARGET is FILE_OR_MODULE[:FACTORY]; FACTORY defaults to pipeline.
    """
    location, factory_name = split_target(target)
    module = import_target(location)
    factory = find_attribute(module, factory_name or "pipeline")
    app = find_app(module, app_name)
    chosen = url or os.environ.get("STEM_URL")
    if chosen:
        app.url = chosen
    canvas = factory() if callable(factory) else factory
    if not isinstance(canvas, Canvas):
        raise click.BadParameter(
            f"{module.__name__}:{factory_name or 'pipeline'} returned "
            f"{type(canvas).__name__}; it must return a signature, chain, group "
            "or chord."
        )
    if start_worker is None:
        start_worker = app.url.startswith("memory:")
    console = Console(stderr=True)
    result = app.submit(canvas)
    console.print(f"Run [bold]{result.id}[/] submitted to {redact(app.url)}.")
    if start_worker:
        with app.worker(concurrency=concurrency, pool=pool):
            snapshot = _follow(result, console, timeout)
    else:
        snapshot = _follow(result, console, timeout)
    sys.exit(_finish(result, snapshot, console))


def _follow(
    result: AsyncResult, console: Console, timeout: float | None
) -> RunSnapshot:
    deadline = None if timeout is None else time.monotonic() + timeout
    columns = (
        TextColumn("nodes"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        bar = progress.add_task("run", total=None)
        while True:
            snapshot = result.snapshot()
            ended = sum(
                1 for record in snapshot.nodes.values() if record.state in TERMINAL
            )
            progress.update(bar, total=len(snapshot.nodes), completed=ended)
            if snapshot.status != "running":
                return snapshot
            if deadline is not None and time.monotonic() >= deadline:
                return snapshot
            result.app.driver.wait(result.id, 0.1)


def _finish(result: AsyncResult, snapshot: RunSnapshot, console: Console) -> int:
    console.print(_summary(snapshot))
    if snapshot.status == "running":
        console.print(f"[yellow]Run {result.id} is still running; stopped waiting.[/]")
        return EXIT_TIMEOUT
    if snapshot.status != "succeeded":
        error = result.get(propagate=False)
        kind = type(error).__name__
        console.print(f"[red]Run {result.id} {snapshot.status}:[/] {kind}: {error}")
        return EXIT_RUN_FAILED
    _print_value(result.get(timeout=0))
    return EXIT_OK


def _print_value(value: Any) -> None:
    """Print rows of scalars one per line, space-separated; anything else as JSON."""
    is_rows = isinstance(value, list) and all(
        isinstance(row, list) and all(not isinstance(cell, list | dict) for cell in row)
        for row in value
    )
    if is_rows and value:
        for row in value:
            click.echo(" ".join(str(cell) for cell in row))
    else:
        click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def _summary(snapshot: RunSnapshot) -> Table:
    """Tabulate the run: per task, node states and durations."""
    states: dict[str, Counter[str]] = {}
    durations: dict[str, list[float]] = {}
    for node in snapshot.spec.nodes:
        record = snapshot.nodes[node.id]
        states.setdefault(node.task, Counter())[record.state] += 1
        if record.started_at is not None and record.ended_at is not None:
            durations.setdefault(node.task, []).append(
                record.ended_at - record.started_at
            )
    elapsed = (snapshot.ended_at or time.time()) - snapshot.created_at
    table = Table(title=f"run {snapshot.run_id}: {snapshot.status} in {elapsed:.2f} s")
    for column in ("task", "nodes", "states", "min s", "median s", "max s"):
        table.add_column(column, justify="right" if column.endswith(" s") else "left")
    for task, counter in states.items():
        times = durations.get(task, [])
        spread = (
            [
                f"{min(times):.3f}",
                f"{statistics.median(times):.3f}",
                f"{max(times):.3f}",
            ]
            if times
            else ["", "", ""]
        )
        described = ", ".join(
            f"{count} {state}" for state, count in sorted(counter.items())
        )
        table.add_row(task, str(sum(counter.values())), described, *spread)
    return table
