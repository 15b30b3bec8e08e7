"""``stem runs retry RUN``: run the failed parts of a finished run again.

The command reopens the run as its next epoch in the shared store and, with
``--wait``, follows it until the new epoch ends. Workers do the work, so a
worker must serve the run's queues.

Exit codes, the same as the rest of ``stem``:
    0  the run was reopened (with ``--wait``: and then succeeded).
    1  with ``--wait``, the new epoch failed or was cancelled; or the store
       failed.
    2  bad usage: no URL, a memory:// URL, an unknown run, or a run that is
       running or succeeded.
    3  with ``--wait``, the new epoch did not end within ``--timeout``.
"""

from __future__ import annotations

import json
import os
import sys

import click

from stem.canvas.spec import NodeId
from stem.discovery import load_app
from stem.engine import machine
from stem.engine.app import App
from stem.engine.drivers import redact
from stem.engine.errors import DriverError, DriverNotFound, RunNotFound, RunNotRetryable
from stem.engine.ports import RunSnapshot
from stem.engine.records import RunState
from stem.engine.result import AsyncResult

EXIT_OK = 0
EXIT_RUN_FAILED = 1  # the new epoch ended failed or cancelled
EXIT_USAGE = 2  # click's own code for bad usage
EXIT_TIMEOUT = 3  # the new epoch was still going when --timeout ran out

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
    help="Wait for the new epoch to end and exit with its outcome.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="With --wait, seconds to wait before giving up with exit code 3. "
    "[default: no limit]",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object instead of text."
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
    app = _app(app_spec, url)
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
        click.BadParameter: for an unknown run, or one that cannot be retried.
        click.UsageError: for a URL that no driver serves.
        click.ClickException: if the store failed.
    """
    try:
        before = app.driver.snapshot(run_id)
        result = app.AsyncResult(run_id).retry()
        snapshot = result.snapshot()
    except (RunNotFound, RunNotRetryable) as err:
        raise click.BadParameter(str(err), param_hint="RUN") from err
    except DriverNotFound as err:
        raise click.UsageError(str(err)) from err
    except DriverError as err:
        raise click.ClickException(str(err)) from err
    _report_reopened(snapshot, _reopened_nodes(before), app, as_json)
    if not wait:
        return EXIT_OK

    try:
        snapshot = app.driver.wait(run_id, timeout_s)
    except DriverError as err:
        raise click.ClickException(str(err)) from err
    _report_ended(snapshot, as_json)
    if snapshot.status == "running":
        return EXIT_TIMEOUT
    if snapshot.status != "succeeded":
        _print_error(result, snapshot)
        return EXIT_RUN_FAILED
    return EXIT_OK


def _app(app_spec: str | None, url: str | None) -> App:
    """Build the app whose store holds the run, from -A, --url and STEM_URL."""
    app = load_app(app_spec) if app_spec else None
    chosen = url or os.environ.get("STEM_URL")
    if app is None:
        if not chosen:
            raise click.UsageError(
                "No store to find the run in: pass --url redis://host:port/db, "
                "set STEM_URL, or pass -A with an app whose URL points at one."
            )
        app = App(chosen)
    elif chosen:
        app.url = chosen
    if app.url.startswith("memory:"):
        raise click.UsageError(
            "memory:// keeps runs inside the process that made them, so this "
            "command cannot reach them; pass --url redis://host:port/db, or call "
            "AsyncResult.retry() in that process."
        )
    return app


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
        }
        click.echo(json.dumps(payload))
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
        f"{type(error).__name__}: {error}",
        err=True,
    )
