"""``stem beat``: submit an app's schedule entries as runs at their fire times."""

from __future__ import annotations

import logging
import os
import signal

import click

from stem.discovery import load_app
from stem.engine.app import App

log = logging.getLogger(__name__)

BEAT_EXAMPLES = """
\b
Examples:
  stem beat -A myproject.tasks:app --url redis://127.0.0.1:6379/0 -l info
  stem beat -A myproject/schedules.py --starting-deadline 600
"""


@click.command(epilog=BEAT_EXAMPLES)
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
    "-l",
    "--loglevel",
    default=None,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    help="Log level; overrides stem's own -l. Each fire is logged at info.",
)
@click.option(
    "--starting-deadline",
    "starting_deadline_s",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds after a fire time past which a missed fire is skipped rather "
    "than sent late. [default: no limit, the latest missed time fires]",
)
def beat(
    app_spec: str,
    url: str | None,
    loglevel: str | None,
    starting_deadline_s: float | None,
) -> None:
    """Submit the app's schedule entries as runs at their fire times, until stopped.

    Entries come from the app's beat_schedule and @app.periodic. Several beats
    may run against one broker: each fire time starts one run. SIGTERM or
    Ctrl+C stops after the current step; a second one exits at once.
    """
    if loglevel is not None:
        logging.getLogger().setLevel(loglevel.upper())
    app = load_app(app_spec)
    _use_url(app, url)
    if app.url.startswith("memory:"):
        raise click.UsageError(
            "memory:// keeps runs inside one process, so no worker would see the "
            "runs beat submits; pass --url redis://host:port/db."
        )
    if not app.beat_entries:
        raise click.UsageError(
            f"{app!r} has no schedule entries; declare them with "
            "App(beat_schedule={...}) or @app.periodic(...)."
        )
    runner = app.beat(starting_deadline_s=starting_deadline_s)
    signals = 0

    def on_signal(number: int, _frame: object) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            from stem.cli import EXIT_COLD_STOP

            log.warning("Second stop signal: exiting now.")
            os._exit(EXIT_COLD_STOP)
        log.warning("Stopping beat (signal %d) after the current step.", number)
        runner.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    runner.run()


def _use_url(app: App, url: str | None) -> None:
    """Apply the URL precedence: ``--url``, then ``STEM_URL``, then the app's."""
    chosen = url or os.environ.get("STEM_URL")
    if chosen:
        app.url = chosen
