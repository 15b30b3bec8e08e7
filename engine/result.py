"""Result handles: follow a run, read its value, or get its error back."""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from stem.canvas.spec import GraphSpec, NodeId
from stem.canvas.values import decode, loads
from stem.engine.drivers import redact
from stem.engine.errors import (
    EngineError,
    NoWorkerRunning,
    TaskError,
    TimeoutError,
)
from stem.engine.ports import RunSnapshot, failure_reached
from stem.engine.records import ErrorInfo, NodeRecord, task_id

if TYPE_CHECKING:
    from stem.canvas.render import NodeView
    from stem.engine.app import App

log = logging.getLogger(__name__)

#: Seconds that ``get()`` waits with no live worker before it logs a warning.
#: Longer than a worker's heartbeat lifetime (3 heartbeats of 2 s), so a
#: worker restart that takes a few seconds does not set it off.
NO_WORKER_GRACE_S = 10.0


class RunCancelled(EngineError):
    """Raised by ``get()`` on a run that was cancelled before it ended."""


@dataclass(frozen=True)
class NodeResult:
    """One node of a run as the client sees it."""

    node_id: NodeId
    task: str
    task_id: str
    state: str
    attempts: int
    duration_s: float | None
    value: Any
    error: ErrorInfo | None


class AsyncResult:
    """A handle on one run, by id.

    Its state names follow Stem's run states: ``running``, ``succeeded``,
    ``failed``, ``cancelled``.
    """

    def __init__(self, run_id: str, app: App) -> None:
        self.id = run_id
        self.app = app

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id}>"

    def snapshot(self) -> RunSnapshot:
        """Return a consistent copy of the run's state."""
        return self.app.driver.snapshot(self.id)

    @property
    def state(self) -> str:
        """The run's state."""
        return self.snapshot().status

    #: Celery's name for `state`.
    status = state

    @property
    def task_id(self) -> str:
        """The run's id, under Celery's name for the id that ``delay()`` returns."""
        return self.id

    @property
    def result(self) -> Any:
        """The run's value, or its error once it failed or was cancelled.

        It is None while the run is running. This is Celery's
        ``AsyncResult.result``: it does not wait. The error is the exception
        that ``get()`` would raise.
        """
        snapshot = self.snapshot()
        if snapshot.status == "running":
            return None
        if snapshot.status == "succeeded":
            return loads(snapshot.value) if snapshot.value is not None else None
        return self._error(snapshot)

    def ready(self) -> bool:
        """Tell whether the run has ended."""
        return self.state != "running"

    def successful(self) -> bool:
        """Tell whether the run ended with a value."""
        return self.state == "succeeded"

    def failed(self) -> bool:
        """Tell whether the run ended with an error."""
        return self.state == "failed"

    def get(self, timeout: float | None = None, propagate: bool = True) -> Any:
        """Wait for the run to end and return its value.

        Args:
            timeout: seconds to wait; None waits as long as it takes.
            propagate: when False, return the run's error instead of raising it.

        Raises:
            TimeoutError: if the run has not ended within ``timeout``.
            NoWorkerRunning: on ``memory://`` when no worker is running. On
                Redis, get() keeps waiting instead, and logs one warning once
                no worker has been alive for `NO_WORKER_GRACE_S` seconds.
            Exception: the error of the lowest-id failed node whose failure
                reached the result, rebuilt as its own class when that class is
                already imported, else as `TaskError`.
        """
        started = time.monotonic()
        snapshot = self._wait(timeout)
        if snapshot is None:
            waited = time.monotonic() - started
            if self.app.driver.workers_alive() == 0 and (
                timeout is None or waited < timeout
            ):
                raise NoWorkerRunning(
                    f"Run {self.id} cannot finish: no worker is running on "
                    f"{redact(self.app.url)}. Wrap the call in 'with app.worker():' or "
                    "start 'stem worker' for a shared broker."
                )
            raise TimeoutError(f"Run {self.id} did not end within {timeout} s.")
        if snapshot.status == "succeeded":
            return loads(snapshot.value) if snapshot.value is not None else None
        error = self._error(snapshot)
        if propagate:
            raise error
        return error

    def _wait(self, timeout: float | None) -> RunSnapshot | None:
        """Wait like the driver's ``wait_ended``, warning once while no worker is alive.

        See `wait_warning_once` for the slices and the warning. A running
        run's snapshot is read only for the warning, because for a run of a
        million nodes one costs seconds and gigabytes.
        """
        driver = self.app.driver

        def wait_slice(seconds: float) -> RunSnapshot | None:
            # get() reads only the value of a succeeded run.
            return driver.wait_ended(self.id, seconds, full=False)

        def warn(idle_s: float, unread: list[str]) -> None:
            self._warn_no_worker(driver.snapshot(self.id), idle_s, unread)

        return wait_warning_once(self.app, timeout, wait_slice, warn)

    def _warn_no_worker(
        self, snapshot: RunSnapshot, idle_s: float, unread: list[str]
    ) -> None:
        """Log why the run waits: no worker alive, or none reads its nodes' queue.

        ``unread`` is empty when no worker is alive, else the queues that
        hold ready messages and that no live worker reads. The warning is
        left out when none of them is a queue of the run's queued nodes.
        """
        queued = [
            node.options.queue or self.app.default_queue
            for node in snapshot.spec.nodes
            if snapshot.nodes[node.id].state == "queued"
        ]
        queues = sorted(set(queued)) or [self.app.default_queue]
        if unread:
            waiting = [queue for queue in queues if queue in unread]
            if not waiting:
                return
            log.warning(
                "Run %s has waited %.0f s: its queued nodes wait on queue %s, "
                "which no live worker on %s reads. Start one with: stem worker "
                "-A APP -Q %s. get() keeps waiting.",
                self.id,
                idle_s,
                ", ".join(repr(queue) for queue in waiting),
                redact(self.app.url),
                ",".join(waiting),
            )
            return
        log.warning(
            "Run %s has waited %.0f s while no worker is alive on %s to run its "
            "queued nodes (queue %s). Start one with: stem worker -A APP -Q %s. "
            "get() keeps waiting.",
            self.id,
            idle_s,
            redact(self.app.url),
            ", ".join(repr(queue) for queue in queues),
            ",".join(queues),
        )

    def _error(self, snapshot: RunSnapshot) -> Exception:
        if snapshot.status == "cancelled":
            return RunCancelled(f"Run {self.id} was cancelled.")
        node_id = snapshot.error_node
        if node_id is None:
            return TaskError(f"Run {self.id} failed without a recorded task error.")
        record = snapshot.nodes[node_id]
        assert record.error is not None
        return rebuild_exception(record.error, task_id(self.id, node_id))

    def nodes(self) -> dict[NodeId, NodeResult]:
        """Return every node of the run with its state, value and error."""
        snapshot = self.snapshot()
        return {
            node.id: _node_result(
                self.id,
                node.id,
                node.task,
                snapshot.nodes[node.id],
                ignore_result=bool(node.options.ignore_result),
            )
            for node in snapshot.spec.nodes
        }

    def node(self, node_id: NodeId | int) -> NodeResult:
        """Return one node of the run; an int id is read as its string, 3 as "3".

        Raises:
            KeyError: if the run has no such node, naming some of its ids.
        """
        nodes = self.nodes()
        key = str(node_id) if isinstance(node_id, int) else node_id
        found = nodes.get(key)
        if found is None:
            first_ids = ", ".join(repr(node) for node in list(nodes)[:5])
            more = ", ..." if len(nodes) > 5 else ""
            raise KeyError(
                f"Run {self.id} has no node {node_id!r}. Node ids are strings "
                f"such as {first_ids}{more}; nodes() lists them all."
            )
        return found

    def group_counts(self) -> dict[int | None, dict[str, int]]:
        """Return how many nodes are in each state, per group (None: no group).

        The Redis driver keeps these counts as nodes change state, so there
        this reads no node record, however large the run.
        """
        return self.app.driver.group_counts(self.id)

    def graph(self) -> tuple[GraphSpec, dict[NodeId, NodeRecord]]:
        """Return the run's graph spec and each node's record."""
        snapshot = self.snapshot()
        return snapshot.spec, snapshot.nodes

    def to_svg(self, *, collapse_over: int = 8, expand: bool = False) -> str:
        """Draw the run as it is now: an SVG picture of its graph and node states.

        Args:
            collapse_over: a group with more members than this, each a single
                node of the same task, shows as one counted box.
            expand: show every member of every group, whatever its size.
        """
        # The drawing modules import rich; a client that never draws a run
        # does not pay for that import.
        from stem.canvas.svg import to_svg

        snapshot = self.snapshot()
        return to_svg(
            snapshot.spec,
            node_views(snapshot.nodes),
            collapse_over=collapse_over,
            expand=expand,
            title=f"run {self.id}: {snapshot.status}",
        )

    def _repr_svg_(self) -> str:
        """Draw the run for Jupyter, with its node states at the time of display."""
        return self.to_svg()

    def cancel(self) -> None:
        """Cancel the run: queued nodes never start, and no errback fires."""
        self.app.driver.cancel(self.id)

    revoke = cancel

    @property
    def epoch(self) -> int:
        """The run's current epoch: 1 at submit, raised by each `retry`."""
        return self.snapshot().epoch

    def retry(self) -> AsyncResult:
        """Run the failed and cancelled parts of a finished run again, as a new epoch.

        Failed and cancelled nodes, and the nodes that never ran because of
        them, get new attempts. Succeeded nodes keep their values and do not
        run again. Links and errbacks fire again for the new epoch.

        Returns:
            A handle on the run in its new epoch: `get` waits for that epoch's
            outcome. The run id stays the same.

        Raises:
            RunNotFound: if the run is unknown.
            RunNotRetryable: if the run is still running, or succeeded.
        """
        self.app.driver.retry_run(self.id)
        return AsyncResult(self.id, self.app)


_FROM_IDS = "ResultSet([app.AsyncResult(run_id) for run_id in run_ids])"


def _short(value: object, limit: int = 80) -> str:
    """Return ``repr(value)`` cut to ``limit`` characters, for an error message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _a_type(value: object) -> str:
    """Return the type name of ``value`` with its article, such as "an int"."""
    name = type(value).__name__
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return f"{article} {name}"


def _async_results(results: object) -> list[AsyncResult]:
    """Return the handles given to `ResultSet` as a list.

    Raises:
        TypeError: if ``results`` is not an iterable of `AsyncResult`,
            such as a list of run ids, naming the first wrong value.
    """
    if isinstance(results, (str, bytes)) or not isinstance(results, Iterable):
        raise TypeError(
            f"ResultSet(): results is {_short(results)}, {_a_type(results)}, not a "
            f"list of AsyncResult handles. For run ids, pass {_FROM_IDS}."
        )
    handles = list(results)
    for index, handle in enumerate(handles):
        if not isinstance(handle, AsyncResult):
            raise TypeError(
                f"ResultSet(): results[{index}] is {_short(handle)}, "
                f"{_a_type(handle)}, not an AsyncResult. For run ids, pass "
                f"{_FROM_IDS}."
            )
    return handles


class ResultSet:
    """Handles on many runs of one app, whose results are read together.

    Like Celery's ``ResultSet``: `get` returns every run's value in order.
    On Redis, it reads all runs in one pipelined round trip per poll rather
    than one round trip per run.
    """

    def __init__(self, results: Iterable[AsyncResult], app: App | None = None) -> None:
        self.results = _async_results(results)
        apps = {id(result.app) for result in self.results}
        if len(apps) > 1:
            raise ValueError(
                "ResultSet(): the results belong to different apps; make one "
                "ResultSet per app."
            )
        if app is None and self.results:
            app = self.results[0].app
        self.app = app

    def __repr__(self) -> str:
        count = len(self.results)
        return f"<ResultSet of {count} run{'' if count == 1 else 's'}>"

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[AsyncResult]:
        return iter(self.results)

    def __getitem__(self, index: int) -> AsyncResult:
        return self.results[index]

    @property
    def ids(self) -> list[str]:
        """The run ids, in order."""
        return [result.id for result in self.results]

    def _read_ended(self) -> list[RunSnapshot | None]:
        """Read every run once: the snapshot of each run that ended, else None.

        On Redis this is one pipeline per 500 runs, and an ended run's
        snapshot carries its value.
        """
        if self.app is None:
            return []
        return self.app.driver.wait_ended_many(self.ids, 0.0)

    def ready(self) -> bool:
        """Tell whether every run has ended, with one read of all of them."""
        return all(snapshot is not None for snapshot in self._read_ended())

    def waiting(self) -> bool:
        """Tell whether any run is still running, with one read of all of them."""
        return not self.ready()

    def completed_count(self) -> int:
        """Return how many runs succeeded. As in Celery, failed runs do not count."""
        return sum(
            1
            for snapshot in self._read_ended()
            if snapshot is not None and snapshot.status == "succeeded"
        )

    def successful(self) -> bool:
        """Tell whether every run ended with a value (True for an empty set)."""
        return all(
            snapshot is not None and snapshot.status == "succeeded"
            for snapshot in self._read_ended()
        )

    def failed(self) -> bool:
        """Tell whether any run ended with an error. A cancelled run does not count."""
        return any(
            snapshot is not None and snapshot.status == "failed"
            for snapshot in self._read_ended()
        )

    def cancel(self) -> None:
        """Cancel every run as `AsyncResult.cancel` does, one store call per run.

        A run that has already ended keeps its outcome.
        """
        for result in self.results:
            result.cancel()

    revoke = cancel

    def get(self, timeout: float | None = None, propagate: bool = True) -> list[Any]:
        """Wait for every run to end and return their values, in order.

        Args:
            timeout: seconds to wait for all runs together; None waits as
                long as it takes.
            propagate: when False, a failed or cancelled run's error takes
                its value's place in the list instead of being raised.

        Raises:
            TimeoutError: if a run has not ended within ``timeout`` and no
                run before it in the set failed.
            NoWorkerRunning: as `AsyncResult.get` does.
            Exception: with ``propagate``, the error of the first run in the
                set's order that failed or was cancelled, as
                `AsyncResult.get` raises it. It is raised as soon as that run
                and every run before it have ended, as Celery's
                ``ResultSet.join`` does, without waiting for the runs after it.
        """
        app = self.app
        if app is None:
            return []
        started = time.monotonic()
        # get() reads only the values of succeeded runs.
        snapshots = self._wait(app, timeout, stop_at_failure=propagate, full=False)
        values: list[Any] = []
        for result, snapshot in zip(self.results, snapshots, strict=True):
            if snapshot is None:
                self._raise_not_ended(app, result, snapshots, started, timeout)
            if snapshot.status == "succeeded":
                values.append(
                    loads(snapshot.value) if snapshot.value is not None else None
                )
                continue
            error = result._error(snapshot)
            if propagate:
                raise error
            values.append(error)
        return values

    join = get

    def _wait(
        self,
        app: App,
        timeout: float | None,
        *,
        stop_at_failure: bool = False,
        full: bool = True,
    ) -> list[RunSnapshot | None]:
        """Wait for every run, each slice reading only the runs still running.

        With ``stop_at_failure`` a slice also reads the first failed or
        cancelled run again, and the wait ends once `failure_reached` is
        true. The runs after that failure may then be left unread (None).
        """
        driver = app.driver
        run_ids = self.ids
        snapshots: list[RunSnapshot | None] = [None] * len(run_ids)

        def wait_slice(seconds: float) -> bool | None:
            pending = [index for index, found in enumerate(snapshots) if found is None]
            if stop_at_failure:
                # The driver stops at this failure once the runs before it
                # end, but only if the failure is among the runs it reads.
                failure = next(
                    (
                        index
                        for index, found in enumerate(snapshots)
                        if found is not None and found.status != "succeeded"
                    ),
                    None,
                )
                if failure is not None:
                    bisect.insort(pending, failure)
            found = driver.wait_ended_many(
                [run_ids[index] for index in pending],
                seconds,
                stop_at_failure=stop_at_failure,
                full=full,
            )
            for index, snapshot in zip(pending, found, strict=True):
                snapshots[index] = snapshot
            if stop_at_failure and failure_reached(snapshots):
                return True
            return True if all(found is not None for found in snapshots) else None

        def warn(idle_s: float, unread: list[str]) -> None:
            first = next(
                index for index, found in enumerate(snapshots) if found is None
            )
            result = self.results[first]
            result._warn_no_worker(driver.snapshot(result.id), idle_s, unread)

        wait_warning_once(app, timeout, wait_slice, warn)
        return snapshots

    def _raise_not_ended(
        self,
        app: App,
        result: AsyncResult,
        snapshots: Sequence[RunSnapshot | None],
        started: float,
        timeout: float | None,
    ) -> NoReturn:
        pending = sum(1 for snapshot in snapshots if snapshot is None)
        waited = time.monotonic() - started
        if app.driver.workers_alive() == 0 and (timeout is None or waited < timeout):
            others = pending - 1
            runs = f"Run {result.id}"
            if others:
                plural = "run" if others == 1 else "runs"
                runs += f" and {others} other {plural} of the set"
            raise NoWorkerRunning(
                f"{runs} cannot finish: no worker is running on "
                f"{redact(app.url)}. Wrap the call in 'with app.worker():' or "
                "start 'stem worker' for a shared broker."
            )
        raise TimeoutError(
            f"{pending} of {len(snapshots)} runs did not end within {timeout} s; "
            f"the first is run {result.id}."
        )


T = TypeVar("T")


def wait_warning_once(
    app: App,
    timeout: float | None,
    wait_slice: Callable[[float], T | None],
    warn: Callable[[float, list[str]], None],
) -> T | None:
    """Call ``wait_slice`` until it returns a result; warn once if no worker serves.

    The wait goes in slices of `NO_WORKER_GRACE_S` / 2 seconds. After each
    slice that returned None, the driver's `workers_alive` is read, and once
    it has returned 0 for `NO_WORKER_GRACE_S` seconds ``warn`` is called
    once with that time and an empty list. While workers are alive, the
    queues that hold ready messages and that no live worker reads are
    read instead, and once the same queues have stayed so for
    `NO_WORKER_GRACE_S` seconds ``warn`` gets them; it may decide that they
    do not concern its run. A slice that returns early with None (memory://
    with no worker) ends the wait, and None is returned at once.
    """
    driver = app.driver
    if timeout is not None and timeout <= NO_WORKER_GRACE_S:
        return wait_slice(timeout)
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    slice_s = NO_WORKER_GRACE_S / 2
    # When the current lack of workers began: no worker alive, or the same
    # queues with ready messages and no reader. It is first read after a
    # slice, so a get() of a run that ends within one slice reads nothing.
    none_since: float | None = None
    unread: list[str] | None = None
    checked = False
    warned = False
    while True:
        now = time.monotonic()
        wait_s = slice_s if deadline is None else min(slice_s, deadline - now)
        found = wait_slice(max(0.0, wait_s))
        ended_at = time.monotonic()
        done = deadline is not None and ended_at >= deadline
        if found is not None or done or ended_at - now < wait_s:
            return found
        if warned:
            continue
        first_check = not checked
        checked = True
        lacking = [] if driver.workers_alive() == 0 else unread_queues(driver)
        if lacking is None or lacking != unread:
            none_since = None
        unread = lacking
        if lacking is None:
            continue
        if none_since is None:
            # Lacking after the first slice: count from the start.
            none_since = started if first_check else ended_at
        if ended_at - none_since >= NO_WORKER_GRACE_S:
            warn(ended_at - none_since, lacking)
            warned = True


def unread_queues(driver: Any) -> list[str] | None:
    """Return the queues with ready messages that no live worker reads, or None.

    None means that every queue with ready messages has a live reader.
    """
    read = {queue for beat in driver.workers() for queue in beat.queues}
    lacking = sorted(
        stats.name
        for stats in driver.queue_stats()
        if stats.ready and stats.name not in read
    )
    return lacking or None


def node_views(
    nodes: Mapping[NodeId, NodeRecord], now_s: float | None = None
) -> dict[NodeId, NodeView]:
    """Describe each node of a run for drawing: state, duration and attempts.

    A node that ended has the duration of its last attempt. A running node
    has run for ``now_s`` less its start. Other nodes have no duration.

    Args:
        nodes: the run's node records, from a `RunSnapshot` or a `RunState`.
        now_s: the time the picture shows, on the clock the store stamps
            records with (``time.time()``, the default).
    """
    from stem.canvas.render import NodeView

    now = time.time() if now_s is None else now_s
    views: dict[NodeId, NodeView] = {}
    for node_id, record in nodes.items():
        duration = None
        if record.started_at is not None:
            if record.ended_at is not None:
                duration = record.ended_at - record.started_at
            elif record.state == "running":
                duration = now - record.started_at
        if duration is not None:
            # Clocks of different hosts may disagree by a little.
            duration = max(duration, 0.0)
        views[node_id] = NodeView(record.state, duration, record.attempt)
    return views


def rebuild_exception(error: ErrorInfo, failed_task_id: str) -> Exception:
    """Turn a stored error back into an exception without importing anything."""
    kind = error.rebuild()
    if kind is not None and error.args is not None:
        try:
            exc = kind(*decode(error.args))
        except Exception:
            exc = None
        if exc is not None:
            exc.add_note(
                f"Raised by task {failed_task_id}.\n{error.traceback}".rstrip()
            )
            return exc
    return TaskError(
        f"{error.qualname}: {error.message}",
        exc_module=error.module,
        exc_type=error.qualname,
        exc_args=error.args,
        traceback=error.traceback,
        task_id=failed_task_id,
    )


def _node_result(
    run_id: str,
    node_id: NodeId,
    task: str,
    record: NodeRecord,
    *,
    ignore_result: bool = False,
) -> NodeResult:
    duration = None
    if record.started_at is not None and record.ended_at is not None:
        duration = record.ended_at - record.started_at
    # An ignore_result value may still be kept for a reader, but the result
    # handle never shows it.
    value = None
    if record.value is not None and not ignore_result:
        value = loads(record.value)
    return NodeResult(
        node_id,
        task,
        task_id(run_id, node_id),
        record.state,
        record.attempt,
        duration,
        value,
        record.error,
    )
