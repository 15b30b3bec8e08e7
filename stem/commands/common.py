"""Plumbing shared by the ``stem`` subcommands: the app, the URL, errors, output.

Exit codes, shared by every command:

====  ==================  ==================================================
code  name                meaning
====  ==================  ==================================================
0     EXIT_OK             the command did what was asked
1     EXIT_FAILED         the run failed or was cancelled (``run``, ``runs
                          retry --wait``, ``graph show --watch``), or no
                          worker is alive (``inspect``)
2     EXIT_USAGE          bad usage: a missing or invalid option, module, app
                          or URL, ``memory://`` for a shared-store command,
                          or a purge without ``--yes`` off a terminal
3     EXIT_TIMEOUT        the run did not end within ``--timeout``
4     EXIT_NOT_FOUND      no run, node or dead letter has the given id
5     EXIT_REJECTED       the store rejected the change: the run already
                          ended, or the dead letter's node is not failed
6     EXIT_UNAVAILABLE    the broker failed or could not be reached
130   EXIT_INTERRUPTED    interrupted with Ctrl+C
143   EXIT_COLD_STOP      a worker stopped at once by a second signal
====  ==================  ==================================================
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click
from rich.console import Console

from stem.canvas.errors import StemError
from stem.canvas.text import printable, printable_json
from stem.discovery import load_app
from stem.engine.app import URL_VARIABLE, App
from stem.engine.drivers import redact
from stem.engine.errors import DriverError, DriverNotFound, RunNotFound

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_NOT_FOUND = 4
EXIT_REJECTED = 5
EXIT_UNAVAILABLE = 6
EXIT_INTERRUPTED = 130
EXIT_COLD_STOP = 143

#: Key in the root click context's ``meta`` that ``--traceback`` sets.
TRACEBACK_KEY = "stem.traceback"

F = TypeVar("F", bound=Callable[..., Any])


class CommandError(click.ClickException):
    """A one-sentence error with the exit code that names its kind."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        # click 8.5 types exit_code as a ClassVar, so mypy rejects assigning it
        # through self; the instance dict gives this error its own code.
        vars(self)["exit_code"] = exit_code


def app_options(*, required: bool = False) -> Callable[[F], F]:
    """Add ``-A/--app`` and ``--url`` to a command."""

    def decorate(function: F) -> F:
        function = click.option(
            "--url",
            default=None,
            help="Broker URL, such as redis://host:6379/0; overrides STEM_URL "
            "and the app's own URL.",
        )(function)
        # No explicit default=None: with it, click 8.5.1 let a required -A go
        # missing without an error.
        return click.option(
            "-A",
            "--app",
            "app_spec",
            required=required,
            help="The app: MODULE:ATTRIBUTE, a module, or a path to a .py file.",
        )(function)

    return decorate


def json_option(function: F) -> F:
    """Add ``--json``: print machine-readable output instead of a table."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON for scripts."
    )(function)


def yes_option(function: F) -> F:
    """Add ``-y/--yes`` (also ``-f/--force``): go ahead without asking."""
    return click.option(
        "-y",
        "--yes",
        "-f",
        "--force",
        "yes",
        is_flag=True,
        help="Go ahead without asking; needed when stdin is not a terminal.",
    )(function)


def stdin_is_terminal() -> bool:
    """Tell whether stdin is a terminal that a person can answer a question on."""
    # A process started without stdin has None there, or a closed file.
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except ValueError:
        return False


def confirm_or_reject(question: str, command: str) -> None:
    """Ask ``question`` on a terminal, or reject the command without one.

    Without a terminal no person can answer, and click's prompt would read
    whatever stdin contains or end with a bare "Aborted!", so the command
    stops with `EXIT_USAGE` and names ``--yes``. On a terminal, a "no"
    aborts with click's exit code 1.
    """
    if not stdin_is_terminal():
        raise CommandError(
            f"{command} asks for confirmation, but stdin is not a terminal; "
            "pass --yes to go ahead without asking.",
            EXIT_USAGE,
        )
    click.confirm(question, abort=True, err=True)


def resolve_app(app_spec: str | None, url: str | None) -> App:
    """Load the app from ``-A`` and apply the URL precedence.

    The URL is ``--url``, else ``STEM_URL``, else the app's own. Without
    ``-A`` an app without tasks is made for the URL, which is enough for
    commands that only read and change the store.
    """
    chosen = url or os.environ.get(URL_VARIABLE) or None
    if app_spec:
        app = load_app(app_spec)
        if chosen:
            app.url = chosen
        return app
    if not chosen:
        raise CommandError(
            "No broker URL is given; pass --url redis://host:port/db, set "
            f"{URL_VARIABLE}, or pass -A with an app that has one.",
            EXIT_USAGE,
        )
    return App(chosen)


def store_arguments(app_spec: str | None, url: str | None) -> list[str]:
    """Return the ``-A`` and ``--url`` arguments of a command, for a hint to repeat.

    A command printed as a hint must reach the same store. Without either
    option the URL came from ``STEM_URL``, which the hinted command reads
    too. The URL's password shows as ``***``, so a hint for such a URL needs
    the password typed in again.
    """
    arguments = []
    if app_spec:
        arguments += ["-A", app_spec]
    if url:
        arguments += ["--url", redact(url)]
    return arguments


def require_shared_store(app: App, command: str) -> None:
    """Reject ``memory://``, whose state lives only inside one process."""
    if app.url.startswith("memory:"):
        raise CommandError(
            f"{command} needs a shared store, but {redact(app.url)} keeps runs "
            "inside the process that made them, so no other process sees them; "
            f"pass --url redis://host:port/db or set {URL_VARIABLE}.",
            EXIT_USAGE,
        )


def shared_app(app_spec: str | None, url: str | None, command: str) -> App:
    """Resolve the app and reject ``memory://`` in one step."""
    app = resolve_app(app_spec, url)
    require_shared_store(app, command)
    return app


@contextlib.contextmanager
def reported_errors() -> Iterator[None]:
    """Turn Stem's errors into one-sentence errors with named exit codes.

    With ``stem --traceback`` the original exception propagates instead.
    """
    try:
        yield
    except click.ClickException:
        raise
    except (StemError, ValueError) as err:
        context = click.get_current_context(silent=True)
        if context is not None and context.find_root().meta.get(TRACEBACK_KEY):
            raise
        if isinstance(err, RunNotFound):
            code = EXIT_NOT_FOUND
        elif isinstance(err, DriverNotFound | ValueError):
            code = EXIT_USAGE
        elif isinstance(err, DriverError):
            code = EXIT_UNAVAILABLE
        else:
            code = EXIT_FAILED
        raise CommandError(_one_line(str(err)), code) from err


def install_stop_signals(
    warm_stop: Callable[[int], None], cold_stop: Callable[[], None] | None = None
) -> list[int]:
    """Handle SIGTERM and SIGINT: the first stops warm, a second exits at once.

    The first signal calls ``warm_stop`` with its number. A second one calls
    ``cold_stop``, if given, and then ends the process with `EXIT_COLD_STOP`
    without any cleanup. Returns the list that the handler appends each
    signal's number to, so a command can tell whether it was stopped.
    """
    received: list[int] = []

    def handle(number: int, _frame: object) -> None:
        received.append(number)
        if len(received) > 1:
            if cold_stop is not None:
                cold_stop()
            os._exit(EXIT_COLD_STOP)
        warm_stop(number)

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return received


def _one_line(text: str) -> str:
    return " ".join(text.split())


def emit_json(data: Any) -> None:
    """Print data as indented JSON on stdout, with control characters escaped."""
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str)
    click.echo(printable_json(text))


def print_value(value: Any) -> None:
    """Print rows of scalars one per line, space-separated; anything else as JSON."""
    is_rows = isinstance(value, list) and all(
        isinstance(row, list) and all(not isinstance(cell, list | dict) for cell in row)
        for row in value
    )
    if is_rows and value:
        for row in value:
            click.echo(printable(" ".join(str(cell) for cell in row)))
    else:
        text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
        click.echo(printable_json(text))


def console() -> Console:
    """Return a console for stdout; rich honours NO_COLOR and non-terminals."""
    return Console(highlight=False, soft_wrap=False)


_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")
_AGE_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> float:
    """Parse an age such as ``90``, ``90s``, ``15m``, ``2h``, ``3d`` into seconds."""
    match = _AGE.match(text)
    if match is None:
        raise click.BadParameter(
            f"Age {text!r} is invalid; pass a number with an optional unit s, m, "
            "h, d or w, such as 15m or 2h."
        )
    return float(match.group(1)) * _AGE_UNITS_S[match.group(2) or "s"]


def format_time(seconds: float | None) -> str:
    """Format a time in seconds since the epoch as local ISO text, to the second."""
    if seconds is None:
        return ""
    moment = dt.datetime.fromtimestamp(seconds).astimezone()
    return moment.isoformat(timespec="seconds")


def format_span(seconds: float | None) -> str:
    """Format a duration as ``850ms``, ``12.3s``, ``4m05s`` or ``2h10m``."""
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
