"""The in-process driver (``memory://``): the embedded default and the test driver.

All state lives in this process behind one lock, and each transition of the
engine's state machine is applied under it, so a recorded outcome, the nodes
it released and the acknowledgement of its message change together. Nothing
survives the process. Besides the ports, it offers what tests need:
`wait_idle`, `dead_letters` and `runs`. Ended runs are dropped once their
retention has passed, when the driver is next used.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from stem.canvas.spec import GraphSpec
from stem.canvas.text import printable
from stem.canvas.values import decode
from stem.engine import machine, settings
from stem.engine.errors import RunNotFound
from stem.engine.ports import (
    TASK_HEADER,
    Claim,
    DeadLetter,
    LifecycleEvent,
    Message,
    PurgedQueue,
    QueueStats,
    RunPage,
    RunSnapshot,
    RunSummary,
    WorkerBeat,
)
from stem.engine.records import ErrorInfo, RunState

log = logging.getLogger(__name__)


class MemoryDriver:
    """Runs, queues and delayed messages in this process's memory.

    Args:
        url: the ``memory://`` URL it was made from.
        clock: returns the current time in seconds; tests may inject one.
        retention_s: seconds an ended run is kept before it is dropped, or
            None to keep ended runs. A run that has not ended is never dropped.
        max_value_bytes: largest task value the worker reports, in bytes of
            JSON text, or None for no limit.
        events: whether to keep lifecycle events.
        events_max_len: how many of the latest lifecycle events to keep.
    """

    def __init__(
        self,
        url: str = "memory://",
        clock: Callable[[], float] = time.time,
        *,
        retention_s: float | None = settings.DEFAULT_RETENTION_S,
        max_value_bytes: int | None = settings.DEFAULT_MAX_VALUE_BYTES,
        events: bool = True,
        events_max_len: int = settings.DEFAULT_EVENTS_MAX_LEN,
    ) -> None:
        self.url = url
        self.retention_s = settings.check_retention_s(retention_s)
        self.max_value_bytes = settings.check_max_value_bytes(max_value_bytes)
        settings.check_events(events)
        max_len = settings.check_events_max_len(events_max_len)
        self._events: collections.deque[LifecycleEvent] | None = (
            collections.deque(maxlen=max_len) if events else None
        )
        self._last_event_id = (0, 0)
        # Ended runs by the time they expire, soonest first.
        self._expiry: list[tuple[float, str]] = []
        #: Messages stay with their worker until it reports, so none is taken over.
        self.visibility_timeout_s: float | None = None
        self._clock = clock
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._runs: dict[str, RunState] = {}
        self._queues: dict[str, collections.deque[Message]] = collections.defaultdict(
            collections.deque
        )
        self._delayed: list[tuple[float, int, Message]] = []
        self._sequence = itertools.count()
        self._dead: dict[str, DeadLetter] = {}
        self._dead_sequence = itertools.count(1)
        # Heartbeats by worker name, each with the clock time it expires at.
        self._beats: dict[str, tuple[WorkerBeat, float]] = {}
        self._workers = 0
        # Fetched messages not yet claimed-and-dropped or reported, counted per
        # attempt, so that a duplicate or late report cannot settle a message
        # that another worker still holds.
        self._in_flight: collections.Counter[tuple[str, str, int, int]] = (
            collections.Counter()
        )
        self._fired: set[tuple[str, float]] = set()
        self._last_fires: dict[str, float] = {}
        self._locks: dict[str, tuple[str, float]] = {}

    # -- graph store --------------------------------------------------------

    def submit(self, run_id: str, spec: GraphSpec) -> bool:
        with self._lock:
            self._drop_expired()
            if run_id in self._runs:
                return False
            run, effects = machine.start(run_id, spec, self._clock())
            self._runs[run_id] = run
            self._emit(run_id, "submitted")
            self._apply(run, effects)
            log.debug("Run %s submitted with %d nodes.", run_id, len(spec.nodes))
            return True

    def submit_many(
        self, runs: Sequence[tuple[str, GraphSpec]]
    ) -> list[bool | Exception]:
        return [self.submit(run_id, spec) for run_id, spec in runs]

    def claim(self, message: Message) -> Claim | None:
        with self._lock:
            self._drop_expired()
            run = self._runs.get(message.run_id)
            if run is None or not machine.claim(
                run,
                message.node_id,
                message.attempt,
                self._clock(),
                takeover=message.reclaimed,
                epoch=message.epoch,
            ):
                self._settle_in_flight(message)
                log.debug("Dropped duplicate message for %s.", _ids(message))
                return None
            node = run.spec.node(message.node_id)
            has_value, value = machine.resolve_input(run, node)
            args = [decode(item) for item in node.args]
            if has_value:
                args.insert(0, value)
            kwargs = {key: decode(item) for key, item in node.kwargs.items()}
            lease = run.nodes[node.id].lease
            leased = dataclasses.replace(message, lease=lease, reclaimed=False)
            self._emit(run.run_id, "started", node.id, message.attempt)
            return Claim(
                leased, node.task, run.task_id(node.id), args, kwargs, node.options
            )

    def claim_many(self, messages: Sequence[Message]) -> list[Claim | None]:
        return [self.claim(message) for message in messages]

    def complete(self, message: Message, value: str) -> None:
        self._report(message, "succeeded", machine.complete, value, lease=message.lease)

    def complete_many(self, reports: Sequence[tuple[Message, str]]) -> None:
        for message, value in reports:
            self.complete(message, value)

    def fail(self, message: Message, error: ErrorInfo) -> None:
        self._report(message, "failed", machine.fail, error, lease=message.lease)

    def retry(self, message: Message, error: ErrorInfo, delay_s: float) -> None:
        self._report(
            message, "retried", machine.retry, error, delay_s, lease=message.lease
        )

    def replace(self, message: Message, spec: GraphSpec) -> None:
        self._report(message, "replaced", machine.splice, spec, lease=message.lease)

    def cancel(self, run_id: str) -> None:
        with self._lock:
            run = self._run(run_id)
            self._apply(run, machine.cancel(run, self._clock()))
            if run.status == "cancelled":
                self._drop_delayed(run)

    def _drop_delayed(self, run: RunState) -> None:
        """Remove the delayed messages of ``run``'s epoch, which can no longer run."""
        remaining = [
            entry
            for entry in self._delayed
            if entry[2].run_id != run.run_id or entry[2].epoch != run.epoch
        ]
        if len(remaining) != len(self._delayed):
            heapq.heapify(remaining)
            self._delayed = remaining

    def retry_run(self, run_id: str) -> int:
        with self._lock:
            run = self._run(run_id)
            effects = machine.reopen(run, self._clock())
            self._emit(run_id, "reopened")
            self._apply(run, effects)
            log.info("Run %s reopened as epoch %d.", run_id, run.epoch)
            return run.epoch

    def snapshot(self, run_id: str) -> RunSnapshot:
        with self._lock:
            return _snapshot(self._run(run_id))

    def wait(self, run_id: str, timeout_s: float | None) -> RunSnapshot:
        with self._lock:
            return _snapshot(self._wait_for_end(run_id, timeout_s))

    def wait_ended(
        self, run_id: str, timeout_s: float | None, *, full: bool = True
    ) -> RunSnapshot | None:
        with self._lock:
            run = self._wait_for_end(run_id, timeout_s)
            return None if run.status == "running" else _snapshot(run)

    def wait_ended_many(
        self,
        run_ids: Sequence[str],
        timeout_s: float | None,
        *,
        stop_at_failure: bool = False,
        full: bool = True,
    ) -> list[RunSnapshot | None]:
        # Every snapshot here is full: building one costs no store read.
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        snapshots: list[RunSnapshot | None] = []
        all_ended = True
        for run_id in run_ids:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None:
                remaining = max(0.0, remaining)
            snapshot = self.wait_ended(run_id, remaining)
            snapshots.append(snapshot)
            if snapshot is None:
                all_ended = False
            elif stop_at_failure and all_ended and snapshot.status != "succeeded":
                # Every run before this one succeeded, so `failure_reached` is true.
                snapshots.extend([None] * (len(run_ids) - len(snapshots)))
                break
        return snapshots

    def _wait_for_end(self, run_id: str, timeout_s: float | None) -> RunState:
        """Return the run once it ended, the timeout passed or no worker runs.

        The caller holds the lock.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        run = self._run(run_id)
        while run.status == "running":
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            if self._workers == 0:
                break
            self._changed.wait(0.5 if remaining is None else min(remaining, 0.5))
        return run

    def workers_alive(self) -> int | None:
        with self._lock:
            return self._workers

    def group_counts(self, run_id: str) -> dict[int | None, dict[str, int]]:
        with self._lock:
            return machine.group_counts(self._run(run_id))

    def events(
        self, after: str | None = None, limit: int = 100
    ) -> list[LifecycleEvent]:
        with self._lock:
            if self._events is None:
                return []
            start = (-1, -1) if after is None else _event_position(after)
            found = [
                event for event in self._events if _event_position(event.id) > start
            ]
            return found[:limit]

    # -- broker -------------------------------------------------------------

    def fetch(
        self, queues: Sequence[str], limit: int, timeout_s: float
    ) -> list[Message]:
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                self._move_due()
                batch = self._take(queues, limit)
                if batch:
                    self._in_flight.update(_key(message) for message in batch)
                    return batch
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._changed.wait(min(remaining, self._next_due_in()))

    def renew(self, message: Message) -> bool:
        # Nothing to extend: a message is never taken over here.
        return True

    def dead_letter(self, message: Message, reason: str) -> None:
        with self._lock:
            dead_id = str(next(self._dead_sequence))
            self._dead[dead_id] = DeadLetter(dead_id, message, reason, self._clock())
            log.warning("Dead-lettered %s: %s", _ids(message), printable(reason))
        error = ErrorInfo("stem.engine.errors", "DeadLettered", reason, [reason])
        self._report(message, "failed", machine.dead_letter, error)

    def defer(self, message: Message, delay_s: float) -> bool:
        with self._lock:
            self._settle_in_flight(message)
            self._drop_expired()
            run = self._runs.get(message.run_id)
            if run is None or not machine.claimable(
                run, message.node_id, message.attempt, epoch=message.epoch
            ):
                log.debug("Dropped a stale deferred message for %s.", _ids(message))
                self._changed.notify_all()
                return False
            due = self._clock() + max(0.0, delay_s)
            heapq.heappush(self._delayed, (due, next(self._sequence), message))
            self._changed.notify_all()
            return True

    def dead_letters(self) -> list[tuple[Message, str]]:
        with self._lock:
            return [(dead.message, dead.reason) for dead in self._dead.values()]

    # -- schedule store and lock ------------------------------------------

    def claim_fire(self, entry: str, fire_time_s: float) -> bool:
        with self._lock:
            key = (entry, fire_time_s)
            latest = self._last_fires.get(entry)
            if latest is None or fire_time_s > latest:
                self._last_fires[entry] = fire_time_s
            if key in self._fired:
                return False
            self._fired.add(key)
            return True

    def last_fire(self, entry: str) -> float | None:
        with self._lock:
            return self._last_fires.get(entry)

    def acquire(self, name: str, lease_s: float) -> str | None:
        with self._lock:
            now = self._clock()
            held = self._locks.get(name)
            if held is not None and held[1] > now:
                return None
            token = uuid.uuid4().hex
            self._locks[name] = (token, now + lease_s)
            return token

    def release(self, name: str, token: str) -> bool:
        with self._lock:
            held = self._locks.get(name)
            if held is None or held[0] != token:
                return False
            del self._locks[name]
            return True

    # -- operations ---------------------------------------------------------

    def list_runs(
        self,
        *,
        statuses: Sequence[str] = (),
        created_after: float | None = None,
        created_before: float | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        with self._lock:
            # Runs past their retention are dropped first, so none is listed.
            self._drop_expired()
            newest_first = list(reversed(self._runs.values()))
        offset = _page_offset(cursor)
        found: list[RunSummary] = []
        for index in range(offset, len(newest_first)):
            run = newest_first[index]
            if created_after is not None and run.created_at < created_after:
                continue
            if created_before is not None and run.created_at >= created_before:
                continue
            if statuses and run.status not in statuses:
                continue
            found.append(
                RunSummary(run.run_id, run.status, run.created_at, run.ended_at)
            )
            if len(found) == limit:
                more = index + 1 < len(newest_first)
                return RunPage(found, str(index + 1) if more else None)
        return RunPage(found, None)

    def queue_stats(self) -> list[QueueStats]:
        with self._lock:
            unacked: collections.Counter[str] = collections.Counter()
            for run_id, node_id, _attempt, _epoch in self._in_flight:
                run = self._runs.get(run_id)
                if run is not None and node_id in run.spec.by_id:
                    queue = run.spec.node(node_id).options.queue or "default"
                    unacked[queue] += 1
            names = sorted(set(self._queues) | set(unacked))
            return [
                QueueStats(name, len(self._queues.get(name, ())), unacked[name])
                for name in names
            ]

    def delayed_count(self) -> int:
        with self._lock:
            return len(self._delayed)

    def purge_queue(self, name: str) -> PurgedQueue:
        with self._lock:
            queue = self._queues.get(name)
            if not queue:
                return PurgedQueue(0, [])
            run_ids = list(dict.fromkeys(message.run_id for message in queue))
            count = len(queue)
            queue.clear()
            return PurgedQueue(count, run_ids)

    def list_dead_letters(
        self, *, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[DeadLetter], str | None]:
        with self._lock:
            ordered = list(self._dead.values())
        after = int(cursor or 0)
        page = [dead for dead in ordered if int(dead.id) > after][:limit]
        more = bool(page) and int(page[-1].id) < int(ordered[-1].id)
        return page, page[-1].id if more else None

    def get_dead_letter(self, dead_id: str) -> DeadLetter | None:
        with self._lock:
            return self._dead.get(dead_id)

    def replay_dead_letter(self, dead_id: str) -> str:
        with self._lock:
            dead = self._dead.get(dead_id)
            if dead is None:
                return "not_found"
            message = dead.message
            self._drop_expired()
            run = self._runs.get(message.run_id)
            if run is None:
                return "run_not_found"
            if run.status == "cancelled":
                return "run_cancelled"
            if message.epoch != run.epoch:
                return "other_epoch"
            effects = machine.replay_node(
                run, message.node_id, message.attempt, self._clock(), epoch=run.epoch
            )
            if effects is None:
                return "not_failed"
            del self._dead[dead_id]
            self._apply(run, effects)
            log.info("Replayed dead letter %s: %s.", dead_id, _ids(message))
            return "replayed"

    def purge_dead_letters(self, dead_ids: Sequence[str] | None = None) -> int:
        with self._lock:
            chosen = list(self._dead) if dead_ids is None else dead_ids
            removed = [dead_id for dead_id in chosen if dead_id in self._dead]
            for dead_id in removed:
                del self._dead[dead_id]
            return len(removed)

    def heartbeat(self, beat: WorkerBeat, ttl_s: float) -> None:
        with self._lock:
            self._beats[beat.name] = (beat, self._clock() + ttl_s)

    def forget_worker(self, name: str) -> None:
        with self._lock:
            self._beats.pop(name, None)

    def workers(self) -> list[WorkerBeat]:
        with self._lock:
            now = self._clock()
            for name, (_beat, expires_at) in list(self._beats.items()):
                if expires_at <= now:
                    del self._beats[name]
            return [self._beats[name][0] for name in sorted(self._beats)]

    # -- worker bookkeeping and test helpers -------------------------------

    def worker_started(self) -> None:
        with self._lock:
            self._workers += 1

    def worker_stopped(self) -> None:
        with self._lock:
            self._workers -= 1
            self._changed.notify_all()

    def runs(self) -> list[str]:
        """Return the ids of every run this driver holds, oldest first."""
        with self._lock:
            self._drop_expired()
            return list(self._runs)

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Block until no message is queued, delayed or being worked on.

        Returns False if that did not happen within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._pending_work():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.05))
            return True

    def close(self) -> None:
        with self._lock:
            self._changed.notify_all()

    # -- internals ------------------------------------------------------------

    def _report(
        self,
        message: Message,
        event: str,
        transition: Any,
        *payload: Any,
        **options: Any,
    ) -> None:
        with self._lock:
            self._settle_in_flight(message)
            self._drop_expired()
            run = self._runs.get(message.run_id)
            if run is None:
                return
            effects = transition(
                run,
                message.node_id,
                message.attempt,
                *payload,
                self._clock(),
                epoch=message.epoch,
                **options,
            )
            if effects is None:
                log.debug("Ignored a duplicate or late report for %s.", _ids(message))
                return
            self._emit(run.run_id, event, message.node_id, message.attempt)
            self._apply(run, effects)

    def _apply(self, run: RunState, effects: list[machine.Effect]) -> None:
        now = self._clock()
        for effect in effects:
            if isinstance(effect, machine.Enqueue):
                node = run.spec.node(effect.node)
                message = Message(
                    run.run_id,
                    effect.node,
                    effect.attempt,
                    node.options.queue or "default",
                    epoch=run.epoch,
                    headers={TASK_HEADER: node.task},
                    # A delayed message gets its time when it is moved to its queue.
                    enqueued_at=0.0 if effect.delay_s > 0 else now,
                )
                if effect.delay_s > 0:
                    due = now + effect.delay_s
                    heapq.heappush(self._delayed, (due, next(self._sequence), message))
                else:
                    self._queues[message.queue].append(message)
            elif isinstance(effect, machine.RunEnded):
                self._emit(run.run_id, "ended", status=effect.status)
                if self.retention_s is not None:
                    expires = now + self.retention_s
                    heapq.heappush(self._expiry, (expires, run.run_id))
        self._changed.notify_all()

    def _emit(
        self, run_id: str, kind: str, node_id: str = "", attempt: int = 0, **extra: str
    ) -> None:
        if self._events is None:
            return
        now = self._clock()
        # Ids take the form of Redis stream ids, milliseconds and a sequence,
        # and only grow, so `events` reads after an id the same way.
        last_millis, last_sequence = self._last_event_id
        position = max((int(now * 1000), 0), (last_millis, last_sequence + 1))
        self._last_event_id = position
        event_id = f"{position[0]}-{position[1]}"
        self._events.append(
            LifecycleEvent(event_id, now, run_id, kind, node_id, attempt, **extra)
        )

    def _drop_expired(self) -> None:
        now = self._clock()
        while self._expiry and self._expiry[0][0] <= now:
            _, run_id = heapq.heappop(self._expiry)
            run = self._runs.get(run_id)
            # A run that runs again (a new epoch) is kept until it ends again.
            if run is None or run.status == "running" or run.ended_at is None:
                continue
            if self.retention_s is not None and run.ended_at + self.retention_s <= now:
                del self._runs[run_id]
                log.debug("Run %s expired and was dropped.", run_id)

    def _move_due(self) -> None:
        now = self._clock()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, message = heapq.heappop(self._delayed)
            # A deferred message keeps the time it first entered a queue.
            if not message.enqueued_at:
                message = dataclasses.replace(message, enqueued_at=now)
            self._queues[message.queue].append(message)

    def _next_due_in(self) -> float:
        if not self._delayed:
            return 0.5
        return max(0.001, min(0.5, self._delayed[0][0] - self._clock()))

    def _take(self, queues: Sequence[str], limit: int) -> list[Message]:
        batch: list[Message] = []
        for name in queues:
            queue = self._queues.get(name)
            while queue and len(batch) < limit:
                batch.append(queue.popleft())
        return batch

    def _settle_in_flight(self, message: Message) -> None:
        # A duplicate or late report finds no entry, and Counter's del ignores it.
        key = _key(message)
        if self._in_flight[key] > 1:
            self._in_flight[key] -= 1
        else:
            del self._in_flight[key]

    def _pending_work(self) -> bool:
        queued = any(self._queues.values())
        return bool(queued or self._delayed or self._in_flight)

    def _run(self, run_id: str) -> RunState:
        self._drop_expired()
        run = self._runs.get(run_id)
        if run is None:
            raise RunNotFound(
                f"Run {run_id!r} is not found in {self.url}: it was never "
                f"submitted here, or it ended more than retention_s "
                f"({self.retention_s} s) ago and was dropped."
            )
        return run


def _snapshot(run: RunState) -> RunSnapshot:
    import copy

    return RunSnapshot(
        run_id=run.run_id,
        status=run.status,
        spec=run.spec,
        nodes={key: copy.copy(record) for key, record in run.nodes.items()},
        created_at=run.created_at,
        ended_at=run.ended_at,
        value=run.value,
        error_node=run.error_node,
        epoch=run.epoch,
    )


def _event_position(event_id: str) -> tuple[int, int]:
    millis, _, sequence = event_id.partition("-")
    try:
        return int(millis), int(sequence or 0)
    except ValueError:
        raise ValueError(
            f"Event id {event_id!r} is invalid; pass the id of an event that "
            "events() returned."
        ) from None


def _key(message: Message) -> tuple[str, str, int, int]:
    return (message.run_id, message.node_id, message.attempt, message.epoch)


def _ids(message: Message) -> str:
    return (
        f"run {message.run_id} node {message.node_id} attempt {message.attempt} "
        f"epoch {message.epoch}"
    )


def _page_offset(cursor: str | None) -> int:
    """Return the offset that a run page's cursor holds, 0 for no cursor."""
    if not cursor:
        return 0
    if not (cursor.isascii() and cursor.isdigit()):
        raise ValueError(
            f"Cursor {cursor!r} is invalid; pass the cursor a previous page returned."
        )
    return int(cursor)
