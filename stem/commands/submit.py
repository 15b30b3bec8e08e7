"""``stem submit``: send a canvas to the configured broker and print its run id."""

from __future__ import annotations

import json
from typing import Any

import click

from stem.canvas.errors import CanvasError
from stem.canvas.primitives import Canvas
from stem.canvas.values import MAX_DEPTH
from stem.commands.common import (
    EXIT_USAGE,
    CommandError,
    app_options,
    emit_json,
    json_option,
    reported_errors,
    shared_app,
)
from stem.discovery import find_attribute, import_target, split_target
from stem.engine.drivers import redact

EXAMPLES = """
\b
Examples:
  stem submit -A myproject.tasks:app myproject.flows:nightly
  stem submit -A myproject.tasks:app myproject.flows:report 2026-01-31 '{"top": 10}'
  RUN=$(stem submit --url redis://127.0.0.1:6379/0 -A flows.py flows.py:pipeline)
"""


@click.command(epilog=EXAMPLES)
@app_options(required=True)
@click.argument("target")
@click.argument("arguments", nargs=-1)
@click.option(
    "--run-id",
    default=None,
    help="The run's id; submitting the same id again returns the existing run.",
)
@json_option
def submit(
    app_spec: str,
    url: str | None,
    target: str,
    arguments: tuple[str, ...],
    run_id: str | None,
    as_json: bool,
) -> None:
    """Submit the canvas that TARGET's factory builds and print the run id.

    TARGET is MODULE_OR_FILE:FACTORY, a function that returns a canvas (or a
    canvas itself). ARGUMENTS are passed to the factory in order, each
    decoded as JSON when it is valid JSON, else as a string. A worker
    started with `stem worker` runs the canvas.
    """
    app = shared_app(app_spec, url, "stem submit")
    location, factory_name = split_target(target)
    if factory_name is None:
        raise click.BadParameter(
            f"Target {target!r} names no factory; pass MODULE:FACTORY, such as "
            "myproject.flows:nightly.",
            param_hint="TARGET",
        )
    factory = find_attribute(import_target(location), factory_name)
    canvas = _build(factory, target, [_decode(item) for item in arguments])
    options = {} if run_id is None else {"run_id": run_id}
    with reported_errors():
        try:
            result = app.submit(canvas, options=options)
        except CanvasError as err:
            raise CommandError(str(err), EXIT_USAGE) from err
    if as_json:
        emit_json({"run_id": result.id, "url": redact(app.url)})
        return
    click.echo(f"Run {result.id} submitted to {redact(app.url)}.", err=True)
    click.echo(result.id)


def _decode(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
    except RecursionError:
        raise click.BadParameter(
            f"{text[:40]!r}... is JSON nested too deep to decode; pass an "
            f"argument nested at most {MAX_DEPTH} lists or objects deep.",
            param_hint="ARGUMENTS",
        ) from None


def _build(factory: Any, target: str, arguments: list[Any]) -> Canvas:
    if isinstance(factory, Canvas):
        if arguments:
            raise click.BadParameter(
                f"{target} is a canvas, not a factory, so it takes no arguments; "
                "drop them or point at a function that builds the canvas.",
                param_hint="ARGUMENTS",
            )
        return factory
    if not callable(factory):
        raise click.BadParameter(
            f"{target} is a {type(factory).__name__}; pass a function that "
            "returns a canvas, or a canvas.",
            param_hint="TARGET",
        )
    try:
        canvas = factory(*arguments)
    except TypeError as err:
        raise click.BadParameter(
            f"{target} could not be called with {len(arguments)} arguments: {err}.",
            param_hint="ARGUMENTS",
        ) from err
    if not isinstance(canvas, Canvas):
        raise click.BadParameter(
            f"{target} returned {type(canvas).__name__}; it must return a "
            "signature, chain, group or chord.",
            param_hint="TARGET",
        )
    return canvas
