"""``stem runs retry RUN``: run the failed parts of a finished run again.

The command reopens the run as its next epoch in the shared store and, with
``--wait``, follows it until the new epoch ends. Workers do the work, so a
worker must serve the run's queues.

Exit codes, the same as the rest of ``stem`` (`stem.commands.common`):
    0  the run was reopened (with ``--wait``: and then succeeded).
    1  with ``--wait``, the new epoch failed or was cancelled.
    2  bad usage: no URL, or a memory:// URL.
    3  with ``--wait``, the new epoch did not end within ``--timeout``.
    4  no run has the given id.
    5  the run is running or succeeded, so it cannot be retried.
    6  the store failed or could not be reached.
"""

from __future__ import annotations

import json
import sys

import click

from stem.canvas.spec import NodeId
from stem.canvas.text import printable
from stem.canvas.values import loads
from stem.commands.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_TIMEOUT,
    CommandError,
    print_value,
    reported_errors,
    shared_app,
)
from stem.engine import machine
from stem.engine.app import App
from stem.engine.drivers import redact
from stem.engine.errors import RunNotRetryable
from stem.engine.ports import RunSnapshot
from stem.engine.records import RunState
from stem.engine.result import AsyncResult

RETRY_EXAMPLES = """
\b
Examples:
  stem runs retry 01JEXAMPLE --url redis://127.0.0.1:6379/0
  stem runs retry 01JEXAMPLE -A myproject.tasks:app --wait --timeout 600
  STEM_URL=redis://127.0.0.1:6379/0 stem runs retry 01JEXAMPLE --json
"""


@click.command(
    epilog=RETRY_EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.argument("run_id", metavar="RUN")
@click.option(
    "-A",
    "--app",
    "app_spec",
    default=None,
    help="The app, as MODULE:ATTRIBUTE, a module or a .py file; its URL and "
    "driver settings (a key prefix, for one) are used.",
)
@click.option(
    "--url", default=None, help="Broker URL; overrides STEM_URL and the app's own URL."
)
@click.option(
    "--wait/--no-wait",
    default=False,
    show_default=True,
    help="Wait for the new epoch to end, print the value if it succeeded, and "
    "exit with its outcome.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="With --wait, seconds to wait before giving up with exit code 3. "
    "[default: no limit]",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON instead of text: one object per line, a second one for "
    "the outcome with --wait.",
)
def retry(
    run_id: str,
    app_spec: str | None,
    url: str | None,
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Run the failed and cancelled nodes of a finished run again.

    The run gets a new epoch. Its failed and cancelled nodes, and the nodes
    that never ran because of them, are queued again with new attempts.
    Succeeded nodes keep their values and do not run again. Links and
    errbacks fire again for the new epoch. Only a failed or cancelled run can
    be retried.
    """
    with reported_errors():
        app = shared_app(app_spec, url, "stem runs retry")
    try:
        sys.exit(retry_run(app, run_id, wait=wait, timeout_s=timeout, as_json=as_json))
    finally:
        app.close()


def retry_run(
    app: App,
    run_id: str,
    *,
    wait: bool = False,
    timeout_s: float | None = None,
    as_json: bool = False,
) -> int:
    """Reopen a run as its next epoch, report it, and return the exit code.

    Raises:
        CommandError: with the exit code of `stem.commands.common` for an
            unknown run, a run that cannot be retried, a URL that no driver
            serves, or a store that failed.
    """
    with reported_errors():
        try:
            before = app.driver.snapshot(run_id)
            result = app.AsyncResult(run_id).retry()
        except RunNotRetryable as err:
            raise CommandError(str(err), EXIT_REJECTED) from err
        snapshot = result.snapshot()
    _report_reopened(snapshot, _reopened_nodes(before), app, as_json)
    if not wait:
        return EXIT_OK

    with reported_errors():
        snapshot = app.driver.wait(run_id, timeout_s)
    _report_ended(snapshot, as_json)
    if snapshot.status == "running":
        return EXIT_TIMEOUT
    if snapshot.status != "succeeded":
        _print_error(result, snapshot)
        return EXIT_FAILED
    if not as_json:
        # The value goes last on stdout, as in `stem run`.
        print_value(result.get(timeout=0))
    return EXIT_OK


def _reopened_nodes(before: RunSnapshot) -> list[NodeId]:
    """Return, in node order, the nodes that the retry of this snapshot reopens.

    The snapshot is read just before the retry. Only links and errbacks of a
    finished run can still change in between, so the list may differ from
    what the store reopened by those.
    """
    run = RunState(run_id=before.run_id, spec=before.spec, nodes=before.nodes)
    reopened = machine.nodes_to_reopen(run)
    return [node.id for node in before.spec.nodes if node.id in reopened]


def _report_reopened(
    snapshot: RunSnapshot, reopened: list[NodeId], app: App, as_json: bool
) -> None:
    if as_json:
        payload = {
            "run_id": snapshot.run_id,
            "event": "reopened",
            "epoch": snapshot.epoch,
            "reopened_nodes": reopened,
        }
        click.echo(json.dumps(payload))
        return
    click.echo(
        f"Run {snapshot.run_id} reopened as epoch {snapshot.epoch} in "
        f"{redact(app.url)}: {len(reopened)} of its {len(snapshot.nodes)} nodes "
        "run again."
    )


def _report_ended(snapshot: RunSnapshot, as_json: bool) -> None:
    if as_json:
        payload = {
            "run_id": snapshot.run_id,
            "event": "ended" if snapshot.status != "running" else "timed_out",
            "epoch": snapshot.epoch,
            "status": snapshot.status,
            # Decoded from the value codec's text, as in `stem runs show --json`.
            "value": None if snapshot.value is None else loads(snapshot.value),
        }
        # str() writes the tagged types (datetime, Decimal, bytes) as
        # `stem runs show --json` does. ensure_ascii escapes control characters.
        click.echo(json.dumps(payload, default=str))
    elif snapshot.status == "running":
        click.echo(
            f"Run {snapshot.run_id} epoch {snapshot.epoch} is still running; "
            "stopped waiting."
        )
    else:
        click.echo(f"Run {snapshot.run_id} epoch {snapshot.epoch} {snapshot.status}.")


def _print_error(result: AsyncResult, snapshot: RunSnapshot) -> None:
    error = result.get(timeout=0, propagate=False)
    failed = snapshot.nodes.get(snapshot.error_node or "")
    where = f" in node {snapshot.error_node}" if failed is not None else ""
    click.echo(
        f"Run {snapshot.run_id} {snapshot.status}{where}: "
        f"{type(error).__name__}: {printable(str(error))}",
        err=True,
    )
