"""``stem beat``: submit an app's schedule entries as runs at their fire times."""

from __future__ import annotations

import logging

import click

from stem.commands.common import (
    app_options,
    install_stop_signals,
    reported_errors,
    shared_app,
)

log = logging.getLogger(__name__)

BEAT_EXAMPLES = """
\b
Examples:
  stem beat -A myproject.tasks:app --url redis://127.0.0.1:6379/0 -l info
  stem beat -A myproject/schedules.py --starting-deadline 600
"""


@click.command(epilog=BEAT_EXAMPLES)
@app_options(required=True)
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
    with reported_errors():
        app = shared_app(app_spec, url, "stem beat")
    if not app.beat_entries:
        raise click.UsageError(
            f"{app!r} has no schedule entries; declare them with "
            "App(beat_schedule={...}) or @app.periodic(...)."
        )
    runner = app.beat(starting_deadline_s=starting_deadline_s)

    def warm_stop(number: int) -> None:
        log.warning("Stopping beat (signal %d) after the current step.", number)
        runner.stop()

    def cold_stop() -> None:
        log.warning("Second stop signal: exiting now.")

    install_stop_signals(warm_stop, cold_stop)
    runner.run()
