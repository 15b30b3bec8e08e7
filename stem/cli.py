"""The ``stem`` command line.

Exit codes:
    0  the command did what was asked (for ``run``: the run succeeded).
    1  the run failed or was cancelled, or ``inspect`` found no live worker.
    2  bad usage: a missing file, module, app, option or shared store.
    3  the run did not end within ``--timeout``.
    4  no run, node or dead letter has the given id.
    5  the store rejected the change (the run already ended, say).
    6  the broker failed or could not be reached.
    130  interrupted with Ctrl+C.
    143  a worker stopped at once by a second SIGTERM or Ctrl+C.

`stem.commands.common` names them; each subcommand lives in `stem.commands`.
"""

from __future__ import annotations

import logging
import os
import shlex
import statistics
import sys
import time
import types
from collections import Counter
from collections.abc import Mapping
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
from rich.text import Text

from stem.canvas.errors import CanvasError
from stem.canvas.primitives import Canvas
from stem.canvas.spec import GraphSpec
from stem.canvas.text import printable
from stem.commands.beat import beat
from stem.commands.common import (
    TRACEBACK_KEY,
    install_stop_signals,
    print_value,
    reported_errors,
)
from stem.commands.dlq import dlq
from stem.commands.graph import graph
from stem.commands.inspect import inspect
from stem.commands.queues import queues
from stem.commands.runs import runs
from stem.commands.submit import submit
from stem.discovery import (
    find_app,
    find_attribute,
    import_target,
    load_app,
    split_target,
)
from stem.engine import result as result_module
from stem.engine.app import App
from stem.engine.drivers import redact
from stem.engine.errors import DriverNotFound
from stem.engine.ports import RunSnapshot
from stem.engine.records import TERMINAL
from stem.engine.result import AsyncResult
from stem.engine.worker import DEFAULT_UNKNOWN_TASK_GRACE_S, POOLS, Worker

EXIT_OK = 0
EXIT_RUN_FAILED = 1  # the run ended failed or cancelled
EXIT_USAGE = 2  # click's own code for bad usage
EXIT_TIMEOUT = 3  # the run was still going when --timeout ran out
EXIT_INTERRUPTED = 130  # Ctrl+C, as shells report a SIGINT
EXIT_COLD_STOP = 143  # a second SIGTERM or Ctrl+C stopped a worker at once

RUN_EXAMPLES = """
\b
Examples:
  stem run examples/wordcount.py
  stem run examples/wordcount.py:pipeline --pool threads -c 4
  stem run myproject.flows:nightly -Q default,cpu --timeout 600
"""


MAIN_EXAMPLES = """
\b
A first session with a shared Redis:
  export STEM_URL=redis://127.0.0.1:6379/0
  stem worker -A myproject.tasks:app -n worker-1 &
  RUN=$(stem submit -A myproject.tasks:app myproject.flows:nightly)
  stem graph show $RUN --watch
  stem dlq ls && stem dlq replay --all
  stem inspect

Exit codes: 0 ok, 1 run failed or no live worker, 2 bad usage, 3 timed out,
4 not found, 5 rejected by the store, 6 broker unavailable, 130 Ctrl+C,
143 cold stop.
"""


class _MainGroup(click.Group):
    """The ``stem`` group, which explains ``-A`` given before the command."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # The parser consumes the list it gets, so keep a copy for the message.
        original_args = list(args)
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as err:
            if err.option_name not in ("-A", "--app"):
                raise
            message = _app_first_message(original_args, self.commands)
            raise click.UsageError(message, ctx) from err


def _app_first_message(args: list[str], commands: Mapping[str, click.Command]) -> str:
    """Explain Celery's ``-A APP COMMAND`` order, with ``-A`` moved after COMMAND."""
    position = next((i for i, arg in enumerate(args) if arg in commands), None)
    if position is None:
        return "-A comes after the command in Stem, as in stem worker -A APP."
    stem_options: list[str] = []
    app_options: list[str] = []
    before = iter(args[:position])
    for arg in before:
        if arg in ("-A", "--app"):
            app_options += [arg, next(before, "APP")]
        elif arg.startswith("--app="):
            app_options.append(arg)
        else:
            stem_options.append(arg)
    # In `stem runs ls`, the options follow the subcommand.
    end = position + 1
    group = commands[args[position]]
    if (
        isinstance(group, click.Group)
        and end < len(args)
        and args[end] in group.commands
    ):
        end += 1
    command = ["stem", *stem_options, *args[position:end], *app_options]
    fixed = shlex.join([*command, *args[end:]])
    return (
        "-A comes after the command in Stem, unlike Celery's -A APP COMMAND. "
        f"Run: {fixed}"
    )


@click.group(
    cls=_MainGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=MAIN_EXAMPLES,
)
@click.version_option(package_name="stem")
@click.option(
    "-l",
    "--loglevel",
    default="warning",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    help="Log level of Stem's own loggers.",
)
@click.option(
    "--traceback",
    is_flag=True,
    envvar="STEM_TRACEBACK",
    help="Show the full traceback of an error instead of one sentence.",
)
def main(loglevel: str, traceback: bool) -> None:
    """Stem: run Celery-style canvases (chains, groups, chords) as graphs."""
    click.get_current_context().meta[TRACEBACK_KEY] = traceback
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
    help="The app, as ATTRIBUTE of the target module or MODULE:ATTRIBUTE, "
    "when the module has several.",
)
@click.option(
    "--url", default=None, help="Broker URL; overrides STEM_URL and the app's own URL."
)
@click.option(
    "--worker/--no-worker",
    "start_worker",
    default=None,
    help="Run an in-process worker. On by default for memory://, where it is "
    "the only worker there can be.",
)
@click.option(
    "-Q",
    "--queues",
    default=None,
    help="Comma-separated queues the in-process worker reads. "
    "[default: every queue the canvas uses]",
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
    help="Seconds to wait for the run to end; then stop waiting, abandon the "
    "tasks in progress and exit 3. [default: no limit]",
)
def run(
    target: str,
    app_name: str | None,
    url: str | None,
    start_worker: bool | None,
    queues: str | None,
    concurrency: int | None,
    pool: str,
    timeout: float | None,
) -> None:
    """Run the canvas returned by TARGET's factory and wait for its result.

    TARGET is FILE_OR_MODULE[:FACTORY]. FACTORY defaults to pipeline and is a
    function that returns a canvas, or a canvas itself.
    """
    location, factory_name = split_target(target)
    module = import_target(location)
    if factory_name is None and not hasattr(module, "pipeline"):
        functions = sorted(
            name
            for name, value in vars(module).items()
            if isinstance(value, types.FunctionType)
            and value.__module__ == module.__name__
            and not name.startswith("_")
        )
        listed = ", ".join(f"{location}:{name}" for name in functions[:5])
        hint = f" Functions it defines: {listed}." if listed else ""
        raise click.BadParameter(
            f"Module {module.__name__!r} has no function 'pipeline', the default "
            f"factory. Name the function that returns the canvas as "
            f"{location}:FACTORY.{hint}"
        )
    factory = find_attribute(module, factory_name or "pipeline")
    app = (
        load_app(app_name)
        if app_name and ":" in app_name
        else find_app(module, app_name)
    )
    chosen = url or os.environ.get("STEM_URL")
    if chosen:
        app.url = chosen
    if start_worker is None:
        start_worker = app.url.startswith("memory:")
    elif not start_worker and app.url.startswith("memory:"):
        raise click.UsageError(
            "memory:// runs tasks only inside this process, so --no-worker would "
            "wait forever; drop --no-worker, or pass --url for a shared broker."
        )
    # Checked before the submit, so a bad -Q leaves no run without a worker.
    named_queues = _queue_names(queues)
    canvas = _build_canvas(factory, f"{module.__name__}:{factory_name or 'pipeline'}")
    result = _submit(app, canvas)
    console = Console(stderr=True)
    if not start_worker:
        _announce(result, console)
        app_spec = location
        if app_name:
            app_spec = app_name if ":" in app_name else f"{location}:{app_name}"
        worker_hint = ["stem", "worker", "-A", app_spec]
        if url:
            worker_hint += ["--url", redact(url)]
        snapshot = _follow(result, console, timeout, worker_hint=worker_hint)
        sys.exit(_finish(result, snapshot, console, print_traceback=True))
    spec = result.snapshot().spec
    names = named_queues or _queues_of(spec, app.default_queue)
    # On memory:// no other worker can register a task later, so a message of
    # an unknown task is dead-lettered at once instead of after the grace.
    grace_s = 0.0 if app.url.startswith("memory:") else None
    worker = app.worker(
        concurrency=concurrency,
        pool=pool,
        queues=names,
        unknown_task_grace_s=grace_s,
    )
    try:
        worker.start()
        _announce(result, console)
        snapshot = _follow(result, console, timeout)
    except KeyboardInterrupt:
        console.print("[yellow]Interrupted; stopping the worker.[/]")
        worker.stop(abandon=True)
        sys.exit(EXIT_INTERRUPTED)
    worker.stop(abandon=snapshot.status == "running")
    if snapshot.status != "running":
        # Links and errbacks can still be queued or running when the run ends,
        # and the warm stop may finish them, so the summary reads them again.
        snapshot = result.snapshot()
    # The in-process worker has logged the traceback of each failed task.
    sys.exit(_finish(result, snapshot, console, print_traceback=False))


WORKER_EXAMPLES = """
\b
Examples:
  stem worker -A examples/wordcount.py --url redis://127.0.0.1:6379/0
  stem worker -A myproject.tasks:app -Q default,cpu -c 8 --pool threads
  stem worker -A myproject.tasks:app -n cpu-1 -l info --shutdown-timeout 60
"""


@main.command(epilog=WORKER_EXAMPLES)
@click.option(
    "-A",
    "--app",
    "app_spec",
    required=True,
    help="The app: MODULE:ATTRIBUTE, a module, or a path to a .py file.",
)
@click.option(
    "--url", default=None, help="Broker URL; overrides STEM_URL and the app's own URL."
)
@click.option(
    "-Q",
    "--queues",
    default=None,
    help="Comma-separated queues to read, in priority order. [default: the "
    "app's default queue]",
)
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="Tasks run at once. [default: CPU count]",
)
@click.option(
    "--pool",
    type=click.Choice(POOLS),
    default="processes",
    show_default=True,
    help="Where task bodies run.",
)
@click.option(
    "-n",
    "--hostname",
    "name",
    default=None,
    help="The worker's name in heartbeats and `stem inspect`; unique per "
    "deployment. [default: HOST-PID]",
)
@click.option(
    "-l",
    "--loglevel",
    default=None,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    help="Log level of Stem's loggers for this worker; overrides stem -l.",
)
@click.option(
    "--shutdown-timeout",
    "shutdown_timeout_s",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds a warm stop waits for the tasks in progress; their messages "
    "are then left to be claimed again by another worker.",
)
@click.option(
    "--unknown-task-grace",
    "unknown_task_grace_s",
    type=click.FloatRange(min=0),
    default=DEFAULT_UNKNOWN_TASK_GRACE_S,
    show_default=True,
    help="Seconds after a message was first queued during which a message of a "
    "task this worker does not register is handed back for another worker "
    "(as in a rolling deploy) instead of dead-lettered; 0 dead-letters it at once.",
)
def worker(
    app_spec: str,
    url: str | None,
    queues: str | None,
    concurrency: int | None,
    pool: str,
    name: str | None,
    loglevel: str | None,
    shutdown_timeout_s: float,
    unknown_task_grace_s: float,
) -> None:
    """Run tasks from a shared broker until stopped.

    The first SIGTERM or Ctrl+C stops fetching and lets the tasks in progress
    finish for up to --shutdown-timeout seconds (a warm stop). A second one
    exits at once (a cold stop). Either way, the messages of unfinished tasks
    stay unacknowledged, and another worker takes them over once the broker's
    visibility timeout passes.
    """
    if loglevel:
        logging.getLogger().setLevel(loglevel.upper())
    app = load_app(app_spec)
    chosen = url or os.environ.get("STEM_URL")
    if chosen:
        app.url = chosen
    if app.url.startswith("memory:"):
        raise click.UsageError(
            "memory:// keeps runs inside one process, so a separate worker would "
            "never see them; pass --url redis://host:port/db, or use stem run."
        )
    names = _queue_names(queues)
    try:
        running = app.worker(
            concurrency=concurrency,
            queues=names,
            pool=pool,
            name=name,
            unknown_task_grace_s=unknown_task_grace_s,
        )
    except ValueError as err:
        # click's FloatRange lets "inf" and "nan" through; the worker rejects them.
        raise click.UsageError(str(err)) from None
    with reported_errors():
        # The driver connects when it is made, so an unreachable broker stops
        # the command here instead of in the worker's first heartbeat.
        app.driver  # noqa: B018

    def warm_stop(number: int) -> None:
        logging.getLogger(__name__).warning(
            "Warm stop (signal %d): finishing the tasks in progress.", number
        )
        # Worker.run turns KeyboardInterrupt into a warm stop.
        raise KeyboardInterrupt

    def cold_stop() -> None:
        logging.getLogger(__name__).warning("Cold stop: exiting now.")
        running.abandoned = running.in_flight
        click.echo(_closing_line(running, "cold stop"), err=True)

    signals = install_stop_signals(warm_stop, cold_stop)
    # -n and -Q are free text, so control characters in them are escaped.
    click.echo(
        f"Worker {printable(running.name)} started on {redact(app.url)}: queues "
        f"{printable(','.join(running.queues))}, concurrency "
        f"{running.concurrency} ({running.pool}).",
        err=True,
    )
    running.run(shutdown_timeout_s)
    click.echo(_closing_line(running, "warm stop" if signals else "stopped"), err=True)


def _closing_line(running: Worker, ending: str) -> str:
    return (
        f"Worker {printable(running.name)} {ending}: {running.processed} tasks "
        f"processed, {running.failed} failed, {running.abandoned} abandoned."
    )


main.add_command(submit)
main.add_command(runs)
main.add_command(graph)
main.add_command(queues)
main.add_command(dlq)
main.add_command(inspect)


def _queue_names(queues: str | None) -> list[str] | None:
    """Split the value of -Q into queue names; None when it is not given."""
    if not queues:
        return None
    names = queues.split(",")
    if any(not name.strip() for name in names):
        raise click.BadParameter(
            f"{queues!r} names a blank queue; pass comma-separated names with "
            "nothing between the commas, such as default,cpu.",
            param_hint="-Q",
        )
    return names


def _announce(result: AsyncResult, console: Console) -> None:
    console.print(f"Run [bold]{result.id}[/] submitted to {redact(result.app.url)}.")


def _build_canvas(factory: Any, name: str) -> Canvas:
    """Return the canvas a factory builds, or the factory if it is a canvas."""
    if isinstance(factory, Canvas):
        return factory
    if not callable(factory):
        raise click.BadParameter(
            f"{name} is a {type(factory).__name__}; pass a function that returns "
            "a canvas, or a canvas."
        )
    try:
        canvas = factory()
    except TypeError as err:
        raise click.BadParameter(
            f"{name} could not be called without arguments ({err}); pass a "
            "factory that takes none."
        ) from err
    if not isinstance(canvas, Canvas):
        raise click.BadParameter(
            f"{name} returned {type(canvas).__name__}; it must return a "
            "signature, chain, group or chord."
        )
    return canvas


def _submit(app: App, canvas: Canvas) -> AsyncResult:
    """Submit a canvas, turning bad input into a usage error (exit code 2).

    A broker that fails or cannot be reached gives a one-sentence error with
    exit code 6, as in the operator commands.
    """
    with reported_errors():
        try:
            return app.submit(canvas)
        except (CanvasError, DriverNotFound) as err:
            raise click.UsageError(str(err)) from err


def _queues_of(spec: GraphSpec, default: str) -> list[str]:
    """Return every queue a spec's nodes run on, the default queue first."""
    named = {node.options.queue or default for node in spec.nodes}
    return [default, *sorted(named - {default})]


def _follow(
    result: AsyncResult,
    console: Console,
    timeout: float | None,
    *,
    worker_hint: list[str] | None = None,
) -> RunSnapshot:
    """Show a progress bar until the run ends or ``timeout`` runs out.

    With ``worker_hint`` (the command has no worker of its own), it warns
    once when no worker has been alive for `NO_WORKER_GRACE_S` seconds, and
    names that command to start one.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    watch = _WorkerWatch(result, console, worker_hint)
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
            watch.check(snapshot)
            result.app.driver.wait(result.id, 0.1)


class _WorkerWatch:
    """Warn once when a run waits while no worker is alive to run it."""

    def __init__(
        self, result: AsyncResult, console: Console, hint: list[str] | None
    ) -> None:
        self.result = result
        self.console = console
        self.hint = hint
        self.none_since: float | None = None
        self.next_check = time.monotonic()
        # True once the warning is printed, or from the start without a hint.
        self.silent = hint is None

    def check(self, snapshot: RunSnapshot) -> None:
        """Read the live worker count about once a second and warn when due."""
        now = time.monotonic()
        if self.silent or now < self.next_check:
            return
        self.next_check = now + 1.0
        if self.result.app.driver.workers_alive() != 0:
            self.none_since = None
            return
        if self.none_since is None:
            self.none_since = now

        # Read at call time, so tests can shorten the grace period.
        if now - self.none_since >= result_module.NO_WORKER_GRACE_S:
            self.silent = True
            self.warn(snapshot, now - self.none_since)

    def warn(self, snapshot: RunSnapshot, waited_s: float) -> None:
        """Print which queues wait and the command that starts a worker for them."""
        app = self.result.app
        queued = {
            node.options.queue or app.default_queue
            for node in snapshot.spec.nodes
            if snapshot.nodes[node.id].state == "queued"
        }
        names = ", ".join(
            repr(queue) for queue in sorted(queued or {app.default_queue})
        )

        # The worker to start reads every queue of the canvas, as --worker does,
        # so the nodes queued later do not wait for a second worker.
        every_queue = _queues_of(snapshot.spec, app.default_queue)
        command = shlex.join([*(self.hint or []), "-Q", ",".join(every_queue)])
        self.console.print(
            f"Run {self.result.id} has waited {waited_s:.0f} s while no worker is "
            f"alive on {redact(app.url)} to run its queued nodes (queue {names}). "
            f"Start one with: {command}, or run again with --worker. Still waiting.",
            style="yellow",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def _finish(
    result: AsyncResult,
    snapshot: RunSnapshot,
    console: Console,
    *,
    print_traceback: bool,
) -> int:
    """Print the summary and the outcome, and return the exit code.

    ``print_traceback`` prints the traceback of the node that failed the
    run, for a run whose worker logged it in another process.
    """
    console.print(_summary(snapshot))
    if snapshot.status == "running":
        console.print(f"[yellow]Run {result.id} is still running; stopped waiting.[/]")
        return EXIT_TIMEOUT
    if snapshot.status != "succeeded":
        error = result.get(propagate=False)
        kind = type(error).__name__
        failed = snapshot.nodes.get(snapshot.error_node or "")
        if print_traceback and failed is not None and failed.error is not None:
            traceback = printable(failed.error.traceback.rstrip(), multiline=True)
            # soft_wrap keeps each frame on its line, so paths stay whole in a pipe.
            console.print(
                traceback, style="dim", markup=False, highlight=False, soft_wrap=True
            )
        # The error text comes from task code: no markup, no control characters.
        line = Text(f"Run {result.id} {snapshot.status}:", style="red")
        line.append(f" {kind}: {printable(str(error))}")
        console.print(line, highlight=False)
        return EXIT_RUN_FAILED
    print_value(result.get(timeout=0))
    return EXIT_OK


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


main.add_command(beat)
