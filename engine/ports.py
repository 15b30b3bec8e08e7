"""The ports the engine needs from a driver, as typed protocols.

A driver implements `Broker` (moving messages), `GraphStore` (run state),
`ScheduleStore` (beat's claimed fire times) and `Lock` over one backing
store; `Driver` is all four. `Operations` adds what the ``stem`` commands for
operators read and change: the runs index, queue lengths, dead letters and
worker heartbeats. Every `GraphStore` method that
records an outcome also enqueues the nodes it made ready and acknowledges the
message, in one atomic step, and ignores a duplicate or late report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from stem.canvas.spec import GraphSpec, NodeId, NodeOptions
from stem.engine.records import ErrorInfo, NodeRecord, RunStatus

#: Message header with the node's task name, so a worker can pick the task
#: without reading the run's state. Optional: without it, the worker reads the
#: task name from the run's graph spec.
TASK_HEADER = "task"


@dataclass(frozen=True)
class Message:
    """The envelope of one attempt of one node: ids only, never the graph."""

    run_id: str
    node_id: NodeId
    attempt: int
    queue: str = "default"
    epoch: int = 1
    #: Broker-specific handle used to acknowledge, such as a stream entry id.
    receipt: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    #: Fencing token of the attempt. `GraphStore.claim` returns a copy with
    #: the lease it granted, and reports must carry that copy's lease. Leases
    #: start at 1, so a message reported without a takeover keeps the default.
    lease: int = 1
    #: True when the broker took this message over from a consumer that held
    #: it past the visibility timeout. Its claim may then take over the
    #: attempt if it is still running.
    reclaimed: bool = False
    #: When this message first entered a queue, in seconds since the epoch
    #: by the broker's clock. Redeliveries and `Broker.defer` keep it. 0.0
    #: means unknown, and then the worker's grace period for an unknown
    #: task counts as over.
    enqueued_at: float = 0.0


@dataclass(frozen=True)
class Claim:
    """Inputs of one attempt for a worker, returned by `GraphStore.claim`."""

    message: Message
    task: str
    task_id: str
    #: Positional arguments with the upstream value already in front.
    args: list[Any]
    kwargs: dict[str, Any]
    options: NodeOptions


@dataclass(frozen=True)
class RunSnapshot:
    """A consistent copy of a run's state at one moment."""

    run_id: str
    status: RunStatus
    spec: GraphSpec
    nodes: dict[NodeId, NodeRecord]
    created_at: float
    ended_at: float | None
    #: The run's value in JSON text, when it succeeded.
    value: str | None
    #: The node whose error the result raises, when it failed.
    error_node: NodeId | None
    #: The run's epoch: 1 at submit, raised by each run retry.
    epoch: int = 1


def failure_reached(snapshots: Sequence[RunSnapshot | None]) -> bool:
    """Tell whether a run that did not succeed has ended after all runs before it.

    Walking ``snapshots`` in order, this is true at the first run that
    failed or was cancelled, and false at the first run still running (None).
    """
    for snapshot in snapshots:
        if snapshot is None:
            return False
        if snapshot.status != "succeeded":
            return True
    return False


#: Kinds of `LifecycleEvent`. A run was submitted, reopened (retried as a new
#: epoch) or ended, or an attempt of a node started, succeeded, failed,
#: retried, or put a canvas in its place.
EVENT_KINDS = (
    "submitted",
    "reopened",
    "started",
    "succeeded",
    "failed",
    "retried",
    "replaced",
    "ended",
)


@dataclass(frozen=True)
class LifecycleEvent:
    """One entry of a store's lifecycle event stream."""

    #: Position in the stream, passed as ``after`` to read the events after it.
    id: str
    #: When the store wrote it, in seconds since the epoch.
    time_s: float
    run_id: str
    #: One of `EVENT_KINDS`.
    kind: str
    #: The node of a node event, or empty for a run event (``submitted``,
    #: ``reopened``, ``ended``).
    node_id: NodeId = ""
    #: The attempt of a node event, or 0 for run events.
    attempt: int = 0
    #: The run's final status for ``ended``, or empty for other kinds.
    status: str = ""


class Broker(Protocol):
    """Moves messages between the store and workers."""

    #: Seconds a fetched message may stay unacknowledged before another worker
    #: takes it over, or None when the broker never takes messages over.
    visibility_timeout_s: float | None

    def fetch(
        self, queues: Sequence[str], limit: int, timeout_s: float
    ) -> list[Message]:
        """Return up to ``limit`` due messages, waiting up to ``timeout_s`` for one."""
        ...

    def renew(self, message: Message) -> bool:
        """Extend the lease of a claimed message by one visibility timeout.

        Returns False when the lease is no longer this worker's: another
        worker took the message over, or the attempt ended.
        """
        ...

    def dead_letter(self, message: Message, reason: str) -> None:
        """Move a message that cannot be processed aside; its node fails."""
        ...

    def defer(self, message: Message, delay_s: float) -> bool:
        """Hand back a fetched message that was not claimed, due in ``delay_s`` seconds.

        In one atomic step the message is acknowledged and put in the delayed
        set with the same attempt, epoch and ``enqueued_at``, so any worker
        may fetch it when it is due and no attempt is used up. Returns True
        when it was deferred, and False in two cases. When its attempt can no
        longer be claimed (its run ended, expired or moved to another epoch,
        or a worker runs or ended the attempt), the message is dropped. When
        another worker took the message over, nothing changes.
        """
        ...

    def dead_letters(self) -> list[tuple[Message, str]]:
        """Return the dead-lettered messages with their reasons."""
        ...


class GraphStore(Protocol):
    """Holds run state and applies the engine's transitions atomically."""

    def submit(self, run_id: str, spec: GraphSpec) -> bool:
        """Store a new run and enqueue its roots; False if the id already exists."""
        ...

    def submit_many(
        self, runs: Sequence[tuple[str, GraphSpec]]
    ) -> list[bool | Exception]:
        """Store each ``(run_id, spec)`` as `submit` does, in few round trips if it can.

        Each run is still stored in its own atomic step. Returns, in order,
        True for a run created, False for an id that already exists, or the
        exception of a run whose write failed. The other runs stand.
        """
        ...

    def claim(self, message: Message) -> Claim | None:
        """Start an attempt; None for a duplicate, stale or cancelled message.

        The returned claim's message carries the lease to report with. A
        message marked ``reclaimed`` takes over an attempt that is running.
        """
        ...

    def claim_many(self, messages: Sequence[Message]) -> list[Claim | None]:
        """Claim each message as `claim` does, in order, in one step if the store can.

        A claim that fails on its own gives None, and its message is
        delivered again after the visibility timeout.
        """
        ...

    def complete(self, message: Message, value: str) -> None:
        """Record an attempt's value (JSON text) and release what it unblocks."""
        ...

    def complete_many(self, reports: Sequence[tuple[Message, str]]) -> None:
        """Record each ``(message, value)`` as `complete` does, in one step if it can.

        A report that fails on its own is logged and skipped, so its message
        is delivered again after the visibility timeout. The others stand.
        """
        ...

    def fail(self, message: Message, error: ErrorInfo) -> None:
        """Record that an attempt failed for good."""
        ...

    def retry(self, message: Message, error: ErrorInfo, delay_s: float) -> None:
        """Schedule the next attempt after ``delay_s`` seconds."""
        ...

    def replace(self, message: Message, spec: GraphSpec) -> None:
        """Splice a compiled canvas in place of the running node."""
        ...

    def cancel(self, run_id: str) -> None:
        """Cancel a run: nothing more of it runs."""
        ...

    def retry_run(self, run_id: str) -> int:
        """Open the next epoch of a failed or cancelled run and return its number.

        The run's failed and cancelled nodes, and what never ran because of
        them, get new attempts, counted from 1 again. Succeeded nodes keep
        their values. Messages and reports of older epochs are ignored from
        then on.

        Raises:
            RunNotFound: if the run is unknown.
            RunNotRetryable: if the run is running or succeeded.
        """
        ...

    def snapshot(self, run_id: str) -> RunSnapshot:
        """Return the run's current state; raises `RunNotFound`."""
        ...

    def wait(self, run_id: str, timeout_s: float | None) -> RunSnapshot:
        """Block until the run ends or the timeout passes, then return its state."""
        ...

    def wait_ended(
        self, run_id: str, timeout_s: float | None, *, full: bool = True
    ) -> RunSnapshot | None:
        """Block until the run ends or the timeout passes; None if it is running.

        It may return None before the timeout when the driver can tell that
        the run cannot end (memory:// with no worker). Unlike `wait`, it
        builds no snapshot of a running run, which for a run of a million
        nodes costs seconds and gigabytes. With ``full=False`` the snapshot
        of a succeeded run needs only its status and value to be right: a
        driver may leave parts of its graph as they are stored (the Redis
        driver's shard nodes) instead of expanding them, or leave its node
        records out.
        """
        ...

    def wait_ended_many(
        self,
        run_ids: Sequence[str],
        timeout_s: float | None,
        *,
        stop_at_failure: bool = False,
        full: bool = True,
    ) -> list[RunSnapshot | None]:
        """Block until every run ends or the timeout passes, as `wait_ended` does.

        Returns, in order, each run's snapshot, or None for a run still
        running. It may return before the timeout for the same reason as
        `wait_ended`. With ``stop_at_failure`` it also returns once
        `failure_reached` is true of the snapshots, and the runs after that
        failure may then be None although they ended. ``full`` is
        `wait_ended`'s. Raises `RunNotFound` for the first unknown run.
        """
        ...

    def workers_alive(self) -> int | None:
        """Return how many workers serve this store, or None if it cannot tell."""
        ...

    #: Largest task value in bytes of JSON text that the worker may report
    #: with `complete`, or None for no limit. The worker fails a node whose
    #: value is larger, so the store never receives it.
    max_value_bytes: int | None

    def group_counts(self, run_id: str) -> dict[int | None, dict[str, int]]:
        """Return how many nodes of the run are in each state, per group.

        Keys are group ids of the run's spec (a node counts in its innermost
        group), and None for nodes outside every group. States with no node
        are left out. Raises `RunNotFound`.
        """
        ...

    def events(
        self, after: str | None = None, limit: int = 100
    ) -> list[LifecycleEvent]:
        """Return up to ``limit`` lifecycle events, oldest first.

        With ``after`` (an event id from an earlier call), only later events
        are returned. The store keeps a bounded number of recent events, and
        none when its ``events`` setting is off.
        """
        ...


class ScheduleStore(Protocol):
    """Records which beat fire times were claimed, so each fires once."""

    def claim_fire(self, entry: str, fire_time_s: float) -> bool:
        """Claim one fire time of a schedule entry; False if another beat has it.

        Also records the fire time as the entry's latest, unless a later one
        is already recorded, whether or not this call won the claim.
        """
        ...

    def last_fire(self, entry: str) -> float | None:
        """Return the latest fire time claimed for an entry, or None if none is."""
        ...


class Lock(Protocol):
    """A named lock with a lease, for work only one process may do at a time."""

    def acquire(self, name: str, lease_s: float) -> str | None:
        """Take the lock for ``lease_s`` seconds; returns a token, or None if held."""
        ...

    def release(self, name: str, token: str) -> bool:
        """Release the lock if ``token`` still holds it; False otherwise."""
        ...


@dataclass(frozen=True)
class RunSummary:
    """One entry of the runs index: what a listing shows without the graph."""

    run_id: str
    status: RunStatus
    created_at: float
    ended_at: float | None


@dataclass(frozen=True)
class RunPage:
    """A page of runs, newest first, and the cursor of the next page."""

    runs: list[RunSummary]
    #: Pass to `Operations.list_runs` for the next page; None on the last one.
    cursor: str | None


@dataclass(frozen=True)
class QueueStats:
    """Message counts of one queue."""

    name: str
    #: Messages no worker has fetched yet.
    ready: int
    #: Messages fetched by a worker and not yet acknowledged.
    unacked: int


@dataclass(frozen=True)
class PurgedQueue:
    """The outcome of a queue purge: the deleted messages and their runs."""

    #: Messages deleted.
    count: int
    #: The runs of the deleted messages, each once, in the order first deleted.
    run_ids: list[str]


@dataclass(frozen=True)
class DeadLetter:
    """A dead-lettered message with its id in the dead-letter list."""

    id: str
    message: Message
    reason: str
    #: When the message was dead-lettered, in seconds since the epoch.
    dead_at: float


@dataclass(frozen=True)
class WorkerBeat:
    """A worker's heartbeat: who it is, what it reads and how busy it is."""

    name: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    pool: str
    #: Tasks running when the heartbeat was sent.
    in_flight: int
    processed: int
    failed: int
    started_at: float
    #: When the heartbeat was sent, in seconds since the epoch.
    last_seen: float


class Operations(Protocol):
    """Operator reads and changes: runs index, queues, dead letters, heartbeats."""

    def list_runs(
        self,
        *,
        statuses: Sequence[str] = (),
        created_after: float | None = None,
        created_before: float | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        """Return runs newest first, filtered by status and creation time.

        Index entries whose run no longer exists are skipped and removed.
        """
        ...

    def queue_stats(self) -> list[QueueStats]:
        """Return the message counts of each queue that was sent to or is read."""
        ...

    def delayed_count(self) -> int:
        """Return how many messages wait for a countdown, eta or retry delay."""
        ...

    def purge_queue(self, name: str) -> PurgedQueue:
        """Delete the messages of a queue that no worker has fetched.

        Returns how many it deleted and the runs they belonged to. The nodes
        of purged messages stay queued, so those runs never end unless they
        are cancelled.
        """
        ...

    def list_dead_letters(
        self, *, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[DeadLetter], str | None]:
        """Return dead letters oldest first and the cursor of the next page."""
        ...

    def get_dead_letter(self, dead_id: str) -> DeadLetter | None:
        """Return one dead letter, or None when no dead letter has that id."""
        ...

    def replay_dead_letter(self, dead_id: str) -> str:
        """Queue a new attempt of a dead letter's node and delete the dead letter.

        The node's failure is undone in the same atomic step: the nodes it
        cancelled or skipped are pending again and the run is running again.
        Returns ``replayed``, ``not_found`` (no such dead letter),
        ``run_not_found`` (its run expired), ``not_failed`` (its node is no
        longer failed at that attempt, so there is nothing to replay),
        ``run_cancelled``, ``other_epoch`` (a run retry opened a later
        epoch after the dead letter, so its attempt is no longer the node's)
        or ``in_shard`` (the node ran in a shard run of a sharded chord,
        which a driver cannot replay).
        Only ``replayed`` deletes the dead letter. The replay stays in the
        run's current epoch.
        """
        ...

    def purge_dead_letters(self, dead_ids: Sequence[str] | None = None) -> int:
        """Delete the given dead letters, or all of them; return how many."""
        ...

    def heartbeat(self, beat: WorkerBeat, ttl_s: float) -> None:
        """Record a worker's heartbeat; it counts as alive for ``ttl_s`` seconds."""
        ...

    def forget_worker(self, name: str) -> None:
        """Remove a stopped worker's heartbeat."""
        ...

    def workers(self) -> list[WorkerBeat]:
        """Return the heartbeats of live workers, by name."""
        ...


class Driver(Broker, GraphStore, ScheduleStore, Lock, Operations, Protocol):
    """Every port over one backing store."""

    url: str

    def worker_started(self) -> None:
        """Note that a worker began serving this driver."""
        ...

    def worker_stopped(self) -> None:
        """Note that a worker stopped."""
        ...

    def close(self) -> None:
        """Release connections and threads."""
        ...
