"""The worker: fetch messages, claim nodes, run task bodies, report outcomes."""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import contextlib
import itertools
import logging
import math
import multiprocessing
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from stem.canvas.spec import GraphSpec, NodeOptions
from stem.canvas.text import printable
from stem.engine.errors import TaskNotRegistered, TimeLimitExceeded, ValueTooLarge
from stem.engine.execution import (
    Outcome,
    Request,
    execute,
    execute_in_child,
    exit_with_parent,
)
from stem.engine.ports import TASK_HEADER, Claim, Message, WorkerBeat
from stem.engine.records import ErrorInfo

if TYPE_CHECKING:
    from stem.engine.app import App, Task

log = logging.getLogger(__name__)

POOLS = ("threads", "processes")
#: Fraction of the broker's visibility timeout after which a running task's
#: lease is renewed, so two renewals can fail before the message is taken over.
RENEW_FRACTION = 1 / 3
#: Seconds one fetch waits for messages, and so the longest a stopping worker
#: waits for its fetcher.
FETCH_TIMEOUT_S = 0.2
#: Heartbeats a worker may miss before it no longer counts as alive.
MISSED_HEARTBEATS = 3
#: Seconds after a message first entered a queue during which a worker that
#: does not register its task hands it back instead of dead-lettering it, so
#: that during a rolling deploy a worker of the new version can run it. One
#: minute covers replacing a few worker processes one by one, and a task name
#: that no worker registers still fails its run within about a minute.
DEFAULT_UNKNOWN_TASK_GRACE_S = 60.0
#: Shortest and longest delay, in seconds, of a message handed back for an
#: unknown task. The delay grows with the message's age, so a message costs a
#: few fetches over the grace period, not one per fetch.
DEFER_MIN_S = 1.0
DEFER_MAX_S = 10.0
# Numbers the workers of this process, so default names stay unique in it.
_worker_numbers = itertools.count(1)


class Worker:
    """Runs tasks from the app's queues with a pool of threads or processes.

    Args:
        app: the app whose tasks and driver it uses.
        concurrency: how many tasks run at once; defaults to the CPU count.
        queues: queue names to read, in priority order; defaults to the app's.
        pool: ``threads`` runs bodies in threads; ``processes`` runs them in
            child processes, while fetching and reporting stay in this one.
            Only ``processes`` enforces ``time_limit`` and ``soft_time_limit``.
        name: the worker's name in heartbeats and logs; defaults to
            ``<host>-<pid>``, with ``-<n>`` added for the n-th worker of the
            process from the second on. Names must be unique per deployment,
            because a heartbeat replaces the last one of the same name.
        heartbeat_s: seconds between heartbeats. A worker counts as alive
            for `MISSED_HEARTBEATS` intervals after its last one.
        unknown_task_grace_s: seconds after a message first entered a queue
            during which a message of a task this worker does not register
            is deferred (handed back through the delayed set) instead of
            dead-lettered, so another worker may run it. 0 dead-letters such
            messages at once.
    """

    def __init__(
        self,
        app: App,
        *,
        concurrency: int | None = None,
        queues: Sequence[str] | None = None,
        pool: str = "threads",
        name: str | None = None,
        heartbeat_s: float = 2.0,
        unknown_task_grace_s: float = DEFAULT_UNKNOWN_TASK_GRACE_S,
    ) -> None:
        if pool not in POOLS:
            raise ValueError(
                f"Pool {pool!r} is unknown; pass 'threads' or 'processes'."
            )
        self.app = app
        self.concurrency = concurrency or os.cpu_count() or 1
        self.queues = list(queues or [app.default_queue])
        for queue_name in self.queues:
            # Submit rejects a blank queue option, so a worker reading such a
            # queue would never receive a message.
            if not isinstance(queue_name, str) or not queue_name.strip():
                raise ValueError(
                    f"Queue {queue_name!r} is invalid; pass queue names that are "
                    "not blank, such as 'default'."
                )
        self.pool = pool
        self.name = name or _default_name()
        self.heartbeat_s = heartbeat_s
        self.unknown_task_grace_s = check_unknown_task_grace_s(unknown_task_grace_s)
        # Unknown task names already warned about, so each is logged once.
        self._deferred_tasks: set[str] = set()
        self.processed = 0
        self.failed = 0
        #: Tasks running when a stop abandoned them; their outcomes are not reported.
        self.abandoned = 0
        self._started_at = time.time()
        self._stop = threading.Event()
        self._abandoned = False
        self._started = False
        self._threads: list[threading.Thread] = []
        # One child process per worker thread, keyed by the thread's ident.
        self._children: dict[int, _Child] = {}
        self._children_lock = threading.Lock()
        self._unenforced_limits: set[str] = set()
        self._count_lock = threading.Lock()
        # Claims whose tasks are running, with the monotonic time of their last
        # claim or renewal, keyed by id() of the claim.
        self._leases: dict[int, tuple[Claim, float]] = {}
        self._leases_lock = threading.Lock()
        # One fetcher thread reads and claims batches of messages into this
        # buffer, so a batch costs one fetch and one claim round trip for many
        # tasks. Each slot is one message fetched and not yet handled: running
        # tasks plus at most `concurrency` claimed ahead, so a claimed task
        # waits for at most one task of each thread before it starts.
        self._buffer: queue.SimpleQueue[tuple[Task, Claim]] = queue.SimpleQueue()
        self._slots = _Slots(2 * self.concurrency)
        # Minimum number of slots a fetch waits for while tasks are buffered
        # (see `_take_slots`).
        self._min_fetch = max(1, self.concurrency // 2)
        self._fetcher_done = threading.Event()
        # Values of succeeded tasks not yet reported. The first worker thread
        # that finds no report in progress sends them, and all that other
        # threads add meanwhile, in batches, so that concurrent successes
        # share round trips (see `_report_success`).
        self._successes: list[tuple[Message, str]] = []
        self._successes_lock = threading.Lock()
        self._reporting = False

    def start(self) -> Worker:
        """Start the worker's threads and return at once."""
        self.app.driver.worker_started()
        self._started = True
        self._started_at = time.time()
        self._beat()
        beater = threading.Thread(
            target=self._heartbeat_loop, name="stem-heartbeat", daemon=True
        )
        beater.start()
        self._threads.append(beater)
        self._fetcher_done.clear()
        fetcher = threading.Thread(
            target=self._fetch_loop, name="stem-worker-fetcher", daemon=True
        )
        fetcher.start()
        self._threads.append(fetcher)
        for index in range(self.concurrency):
            thread = threading.Thread(
                target=self._loop, name=f"stem-worker-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        timeout_s = self.app.driver.visibility_timeout_s
        if timeout_s is not None:
            renewer = threading.Thread(
                target=self._renew_loop,
                args=(timeout_s * RENEW_FRACTION,),
                name="stem-lease-renewer",
                daemon=True,
            )
            renewer.start()
            self._threads.append(renewer)
        log.info(
            "Worker started on %s: queues %s, %d %s.",
            self.app,
            ",".join(self.queues),
            self.concurrency,
            self.pool,
        )
        return self

    def stop(self, timeout_s: float = 30.0, *, abandon: bool = False) -> None:
        """Stop fetching, let the tasks in progress finish, then stop.

        Args:
            timeout_s: how long to wait in total for the tasks in progress.
                Tasks still running then are abandoned as with ``abandon``.
            abandon: stop at once instead: child processes are terminated and
                thread-pool tasks are left running in their daemon threads.
                Their nodes are never reported. Their messages stay
                unacknowledged, so a broker with a visibility timeout hands
                them to another worker, and on ``memory://`` their runs stay
                unfinished.
        """
        self._abandoned = abandon
        self._stop.set()
        deadline = time.monotonic() + (0.0 if abandon else timeout_s)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        running = self.in_flight
        if running and not abandon:
            log.warning(
                "Warm stop took longer than %.1f s; abandoning %d running tasks, "
                "whose messages will be claimed again.",
                timeout_s,
                running,
            )
            self._abandoned = abandon = True
        if abandon:
            self.abandoned = running
        self._threads.clear()
        with self._children_lock:
            children = list(self._children.values())
            self._children.clear()
        for child in children:
            if abandon:
                child.kill()
            else:
                child.executor.shutdown(wait=True, cancel_futures=True)
        if self._started:
            self._started = False
            self.app.driver.worker_stopped()
            try:
                self.app.driver.forget_worker(self.name)
            except Exception:
                log.error(
                    "Removing the heartbeat of %s failed.", self.name, exc_info=True
                )
        log.info(
            "Worker %s stopped: %d tasks processed, %d failed, %d abandoned.",
            self.name,
            self.processed,
            self.failed,
            self.abandoned,
        )

    @property
    def in_flight(self) -> int:
        """Tasks claimed and not yet run to the end: running, or fetched ahead."""
        with self._leases_lock:
            return len(self._leases)

    def heartbeat(self) -> WorkerBeat:
        """Return this worker's heartbeat as of now."""
        return WorkerBeat(
            name=self.name,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=list(self.queues),
            concurrency=self.concurrency,
            pool=self.pool,
            in_flight=self.in_flight,
            processed=self.processed,
            failed=self.failed,
            started_at=self._started_at,
            last_seen=time.time(),
        )

    def _beat(self) -> None:
        ttl_s = self.heartbeat_s * MISSED_HEARTBEATS
        self.app.driver.heartbeat(self.heartbeat(), ttl_s)

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._beat()
            except Exception:
                log.error(
                    "Sending the heartbeat of %s failed; retrying in %.1f s.",
                    self.name,
                    self.heartbeat_s,
                    exc_info=True,
                )

    def run(self, stop_timeout_s: float = 30.0) -> None:
        """Run until interrupted (Ctrl+C) or `stop` is called from another thread.

        Args:
            stop_timeout_s: how long a warm stop waits for the tasks in progress.
        """
        try:
            # Inside the try: a stop signal that arrives while the threads
            # start is a warm stop too, not an error out of run.
            self.start()
            while not self._stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            log.info("Interrupted; finishing the tasks in progress.")
        finally:
            self.stop(stop_timeout_s)

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- the loop -------------------------------------------------------------

    def _fetch_loop(self) -> None:
        """Fetch and claim as many messages as there are free slots."""
        try:
            self._fetch_batches()
        finally:
            self._fetcher_done.set()

    def _fetch_batches(self) -> None:
        driver = self.app.driver
        while not self._stop.is_set():
            free = self._take_slots()
            if not free:
                continue
            claimed: list[tuple[Task, Claim]] = []
            try:
                messages = driver.fetch(self.queues, free, FETCH_TIMEOUT_S)
                claimed = self._claim_batch(messages)
            except Exception:
                log.critical("Worker fetch failed; retrying it.", exc_info=True)
                time.sleep(0.5)
            finally:
                for _ in range(free - len(claimed)):
                    self._slots.release()
            for item in claimed:
                self._buffer.put(item)

    def _take_slots(self) -> int:
        """Take the free buffer slots for one fetch and return how many, or 0.

        At most ``concurrency`` tasks run, so with ``free`` slots taken at
        least ``concurrency - free`` claimed tasks wait in the buffer. While
        fewer than half of ``concurrency`` slots are free, the buffer is not
        empty, so a thread that ends a task takes the next one at once, and
        waiting for more slots delays no task. The fetch and claim that
        follow then carry more messages per round trip. It waits at most
        `FETCH_TIMEOUT_S` for each slot.
        """
        if not self._slots.acquire(timeout=FETCH_TIMEOUT_S):
            return 0
        free = 1
        while True:
            while self._slots.acquire(blocking=False):
                free += 1
            if free >= self._min_fetch or self._stop.is_set():
                return free
            if not self._slots.acquire(timeout=FETCH_TIMEOUT_S):
                return free
            free += 1

    def _loop(self) -> None:
        # After a stop, the tasks already claimed still run, unless the
        # worker is abandoned, so none waits for a visibility timeout.
        while not self._abandoned:
            try:
                task, claim = self._buffer.get(timeout=FETCH_TIMEOUT_S)
            except queue.Empty:
                if self._fetcher_done.is_set():
                    return
                continue
            try:
                self._run(task, claim)
            except Exception:
                log.critical("Worker loop failed; restarting it.", exc_info=True)
                time.sleep(0.5)
            finally:
                self._slots.release()

    def _claim_batch(self, messages: Sequence[Message]) -> list[tuple[Task, Claim]]:
        """Claim the messages of registered tasks; defer or dead-letter the others.

        Each claim's lease is renewed from here on, because a claimed task
        may wait in the buffer before a thread runs it.
        """
        driver = self.app.driver
        known: list[tuple[Task, Message]] = []
        for message in messages:
            # One message that cannot be handled must not stop the others of
            # the batch, or they would come back with it after every
            # visibility timeout until all of them were dead-lettered.
            try:
                name = self._task_name(message)
            except LookupError as err:
                self._dead_letter(message, str(err))
                continue
            except Exception:
                log.error(
                    "Reading the task of run %s node %s failed; its message is "
                    "delivered again after the visibility timeout.",
                    message.run_id,
                    message.node_id,
                    exc_info=True,
                )
                continue
            try:
                known.append((self.app.get_task(name), message))
            except TaskNotRegistered:
                self._unknown_task(message, name)
        if not known:
            return []
        claims = driver.claim_many([message for _, message in known])
        claimed = [
            (task, claim)
            for (task, _), claim in zip(known, claims, strict=True)
            if claim is not None
        ]
        now = time.monotonic()
        with self._leases_lock:
            for _, claim in claimed:
                self._leases[id(claim)] = (claim, now)
        return claimed

    def _unknown_task(self, message: Message, name: str) -> None:
        """Defer a message of an unregistered task, or dead-letter it after the grace.

        The grace period runs from the message's first enqueue, which
        redeliveries and deferrals keep, so it ends whichever workers see it.
        """
        grace_s = self.unknown_task_grace_s
        # NOTE: enqueued_at comes from the broker's clock (Redis TIME), so a
        # worker clock that is off by some seconds moves the end by as much.
        age_s = time.time() - message.enqueued_at
        # A grace of 0 dead-letters at once, even when the worker's clock is
        # behind the broker's and the age comes out below 0.
        if not grace_s or age_s >= grace_s:
            # A memory:// store lives in one process, where no stem dlq
            # command can reach its dead letters.
            then = (
                "submit the run again"
                if self.app.url.startswith("memory:")
                else "replay the dead letter"
            )
            self._dead_letter(
                message,
                f"Task {name!r} is not registered with {self.app!r}, and no worker "
                f"that registers it took the message within unknown_task_grace_s "
                f"({grace_s:g} s) of its first enqueue; import the module that "
                f"defines it in the worker, then {then}.",
            )
            return
        if name not in self._deferred_tasks:
            self._deferred_tasks.add(name)
            log.warning(
                "Task %r is not registered with %s; its messages are handed back "
                "for another worker until %g s after each was first queued "
                "(unknown_task_grace_s), then dead-lettered. Import the module "
                "that defines it in this worker if it should run it.",
                name,
                self.app,
                grace_s,
            )
        if message.reclaimed:
            # The node may be running on a worker presumed dead, and only a
            # takeover claim can restart it, which a deferred copy is not.
            log.info(
                "Left the reclaimed message of %s run %s node %s unacknowledged "
                "for another worker; it is delivered again after the visibility "
                "timeout.",
                name,
                message.run_id,
                message.node_id,
            )
            return
        delay_s = min(max(DEFER_MIN_S, age_s), DEFER_MAX_S, grace_s - age_s)
        # NOTE: the deferred message goes to whichever worker fetches first,
        # which is often this one when it is idle. A worker that registers
        # the task is not favoured, so some messages can still miss it when
        # the grace period ends (docs/cli.md, stem worker).
        try:
            self.app.driver.defer(message, delay_s)
        except Exception:
            log.error(
                "Deferring run %s node %s of unknown task %r failed; its message "
                "is delivered again after the visibility timeout.",
                message.run_id,
                message.node_id,
                name,
                exc_info=True,
            )

    def _dead_letter(self, message: Message, reason: str) -> None:
        """Dead-letter one message; a failure leaves it for redelivery."""
        try:
            self.app.driver.dead_letter(message, reason)
        except Exception:
            log.error(
                "Dead-lettering run %s node %s failed; its message is delivered "
                "again after the visibility timeout.",
                message.run_id,
                message.node_id,
                exc_info=True,
            )

    def _run(self, task: Task, claim: Claim) -> None:
        debug = log.isEnabledFor(logging.DEBUG)
        started = time.monotonic() if debug else 0.0
        try:
            outcome = self._execute(task, claim)
        finally:
            with self._leases_lock:
                self._leases.pop(id(claim), None)
        self._report(claim, outcome)
        if debug:
            log.debug(
                "Task %s %s %s in %.3f s.",
                claim.task,
                claim.task_id,
                outcome.kind,
                time.monotonic() - started,
            )

    def _renew_loop(self, renew_after_s: float) -> None:
        """Renew each running task's lease ``renew_after_s`` after the last one."""
        driver = self.app.driver
        while not self._stop.wait(max(0.01, renew_after_s / 2)):
            now = time.monotonic()
            with self._leases_lock:
                due = [
                    claim
                    for claim, renewed in self._leases.values()
                    if now - renewed >= renew_after_s
                ]
            for claim in due:
                try:
                    kept = driver.renew(claim.message)
                except Exception:
                    log.error(
                        "Renewing the lease of task %s %s failed; retrying in %.1f s.",
                        claim.task,
                        claim.task_id,
                        renew_after_s / 2,
                        exc_info=True,
                    )
                    continue
                with self._leases_lock:
                    if id(claim) not in self._leases:
                        continue
                    if kept:
                        self._leases[id(claim)] = (claim, now)
                    else:
                        # Another worker took the message over, so this task's
                        # report will be ignored and renewing it is pointless.
                        del self._leases[id(claim)]

    def _task_name(self, message: Message) -> str:
        """Return the task a message runs, from its header or else its run.

        Raises:
            LookupError: if the message has no task header and its run or
                node is not found.
        """
        # A snapshot copies every node record of the run, so reading one per
        # message makes a wide chord quadratic. The header avoids that.
        name = message.headers.get(TASK_HEADER)
        if name:
            return name
        spec = self.app.driver.snapshot(message.run_id).spec
        if message.node_id not in spec.by_id:
            raise LookupError(
                f"Node {message.node_id!r} of run {message.run_id} is not found, "
                "and the message names no task."
            )
        return spec.node(message.node_id).task

    def _execute(self, task: Task, claim: Claim) -> Outcome:
        request = _request(task, claim)
        hard_s, soft_s = _time_limits(task, claim)
        if self.pool != "processes":
            if (hard_s or soft_s) and task.name not in self._unenforced_limits:
                self._unenforced_limits.add(task.name)
                log.warning(
                    "Task %s has a time limit, which the threads pool does not "
                    "enforce; start the worker with --pool processes.",
                    task.name,
                )
            return execute(task, request)
        module, attribute = task.fn.__module__, task.fn.__qualname__
        if module == "__main__":
            module = task.name.rsplit(".", 1)[0]
        child: _Child | None = None
        future: concurrent.futures.Future[Outcome] | None = None
        try:
            child = self._child()
            future = child.executor.submit(
                execute_in_child, module, attribute, request, list(sys.path), soft_s
            )
            return future.result(timeout=hard_s)
        except Exception as exc:
            # The hard time limit passed, the child died, or it could not
            # import the task.
            timed_out = future is not None and not future.done()
            if child is not None and hard_s is not None and timed_out:
                return self._kill_at_time_limit(child, claim, hard_s)
            if self._abandoned:
                return Outcome("failed", error=ErrorInfo.from_exception(exc))
            log.error(
                "Task %s %s could not run in a child process.",
                claim.task,
                claim.task_id,
                exc_info=True,
            )
            if child is not None and isinstance(
                exc, concurrent.futures.process.BrokenProcessPool
            ):
                self._drop_child(child)
                log.warning("A child process died; the next task starts a new one.")
            return Outcome("failed", error=ErrorInfo.from_exception(exc))

    def _kill_at_time_limit(
        self, child: _Child, claim: Claim, limit_s: float
    ) -> Outcome:
        """Kill the child running a task past its hard time limit; fail the task."""
        self._drop_child(child)
        log.error(
            "Task %s %s exceeded its time limit of %.1f s; killed its process %d.",
            claim.task,
            claim.task_id,
            limit_s,
            child.pid,
        )
        error = TimeLimitExceeded(
            f"Task {claim.task} {claim.task_id} exceeded its time limit of "
            f"{limit_s} s, so its process was killed."
        )
        return Outcome("failed", error=ErrorInfo.from_exception(error))

    def _child(self) -> _Child:
        """Return this worker thread's child process, starting it if needed."""
        key = threading.get_ident()
        with self._children_lock:
            child = self._children.get(key)
        if child is None:
            child = _Child()
            with self._children_lock:
                self._children[key] = child
        return child

    def _drop_child(self, child: _Child) -> None:
        """Kill a child and forget it; its thread starts a new one when needed."""
        with self._children_lock:
            for key, value in list(self._children.items()):
                if value is child:
                    del self._children[key]
        child.kill()

    def _report(self, claim: Claim, outcome: Outcome) -> None:
        driver = self.app.driver
        message = claim.message
        if self._abandoned:
            # Its child process may have been terminated under it, so the
            # outcome is not a reliable result of the task.
            log.info(
                "Abandoned task %s %s without a report.", claim.task, claim.task_id
            )
            return
        if outcome.kind == "succeeded":
            outcome = _check_value_size(outcome, claim, driver.max_value_bytes)
        with self._count_lock:
            self.processed += 1
            if outcome.kind == "failed":
                self.failed += 1
        if outcome.kind == "succeeded":
            self._report_success(message, outcome.payload)
        elif outcome.kind == "retry":
            assert outcome.error is not None
            log.warning(
                "Task %s %s failed on attempt %d, retrying in %.1f s.",
                claim.task,
                claim.task_id,
                message.attempt,
                outcome.delay_s,
            )
            driver.retry(message, outcome.error, outcome.delay_s)
        elif outcome.kind == "replace":
            driver.replace(message, GraphSpec.from_json(outcome.payload))
        else:
            assert outcome.error is not None
            # The message and traceback come from task code, so escape sequences
            # in them would act on the terminal that shows the log.
            log.error(
                "Task %s %s failed: %s: %s\n%s",
                claim.task,
                claim.task_id,
                outcome.error.qualname,
                printable(outcome.error.message),
                printable(outcome.error.traceback.rstrip(), multiline=True),
            )
            driver.fail(message, outcome.error)

    def _report_success(self, message: Message, value: str) -> None:
        """Report a success, together with those of other threads when they overlap.

        If another thread is sending reports, this one adds its report for
        that thread's next batch and returns at once. Otherwise it sends
        batches until none is left, so no report waits for a later success.
        The sending thread is a worker thread, so a warm stop that ends
        within its timeout has sent every report.
        """
        with self._successes_lock:
            self._successes.append((message, value))
            if self._reporting:
                return
            self._reporting = True
        try:
            self._send_successes()
        except BaseException:
            # An interrupt: the next success sends what is left.
            with self._successes_lock:
                self._reporting = False
            raise

    def _send_successes(self) -> None:
        """Send the successes added so far, in batches, until none is left."""
        driver = self.app.driver
        while True:
            with self._successes_lock:
                batch = self._successes
                if not batch:
                    self._reporting = False
                    return
                self._successes = []
            try:
                driver.complete_many(batch)
            except Exception:
                log.error(
                    "Reporting the values of %d tasks failed, so their messages "
                    "are delivered again after the visibility timeout: %s.",
                    len(batch),
                    ", ".join(f"{m.run_id}/{m.node_id}" for m, _ in batch),
                    exc_info=True,
                )


def check_unknown_task_grace_s(value: Any) -> float:
    """Return a valid ``unknown_task_grace_s``: a finite number of seconds, 0 or more.

    Raises:
        ValueError: naming the value and what to pass instead.
    """
    is_number = type(value) in (int, float) and math.isfinite(value)
    if not is_number or value < 0:
        raise ValueError(
            f"unknown_task_grace_s {value!r} is invalid; pass a finite number of "
            f"seconds, 0 or more (the default is {DEFAULT_UNKNOWN_TASK_GRACE_S:g}); "
            "0 dead-letters a message of an unknown task at once."
        )
    return float(value)


class _Slots:
    """A counting semaphore on `queue.SimpleQueue`, one token per free slot.

    Its acquire and release run in C. A pair of them took 0.2 us, and 1.7 us
    with `threading.Semaphore`, whose condition variable runs in Python
    (CPython 3.11, no contention). The worker takes and frees one slot per
    task.
    """

    def __init__(self, count: int) -> None:
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(count):
            self._tokens.put(None)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take one slot, waiting at most ``timeout`` seconds, and tell if it did."""
        try:
            self._tokens.get(blocking, timeout)
        except queue.Empty:
            return False
        return True

    def release(self) -> None:
        """Free one slot."""
        self._tokens.put(None)


def _default_name() -> str:
    number = next(_worker_numbers)
    name = f"{socket.gethostname()}-{os.getpid()}"
    return name if number == 1 else f"{name}-{number}"


class _Child:
    """A pool of one child process that runs one worker thread's tasks.

    Each worker thread has its own, so killing a child at a task's time limit
    stops no other thread's task.
    """

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.executor = concurrent.futures.ProcessPoolExecutor(
            1,
            mp_context=context,
            initializer=exit_with_parent,
            initargs=(os.getpid(),),
        )
        # Starting the process now keeps its start-up out of the first task's
        # time limit, and gives the pid to kill at a time limit.
        self.pid: int = self.executor.submit(os.getpid).result()

    def kill(self) -> None:
        """Kill the process at once and release the pool."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.executor.shutdown(wait=False, cancel_futures=True)


def _time_limits(task: Task, claim: Claim) -> tuple[float | None, float | None]:
    """Return the hard and soft time limits in seconds, from the node or task."""
    hard = claim.options.time_limit
    if hard is None:
        hard = task.options.get("time_limit")
    soft = claim.options.soft_time_limit
    if soft is None:
        soft = task.options.get("soft_time_limit")
    return hard, soft


def _check_value_size(outcome: Outcome, claim: Claim, limit: int | None) -> Outcome:
    """Turn a success whose value is above ``limit`` bytes into a failure.

    The check runs before the report, so an oversized value never reaches
    the store, and the node fails for good: running the task again would
    return the same value.
    """
    payload = outcome.payload
    # A character takes 1 to 4 bytes in UTF-8, so most values need no encoding.
    if limit is None or len(payload) * 4 <= limit:
        return outcome
    size = len(payload) if len(payload) > limit else len(payload.encode())
    if size <= limit:
        return outcome
    error = ValueTooLarge(
        f"Task {claim.task} {claim.task_id} returned a value of {size:,} bytes "
        f"of JSON, more than max_value_bytes ({limit:,} bytes); the value was "
        "not stored. Return a reference to the data (a file path or an "
        "object-store key) instead, or raise the limit with "
        "App(url, max_value_bytes=...)."
    )
    return Outcome("failed", error=ErrorInfo.from_exception(error))


#: The options that make up `Request.retry_policy`, each taken from the node
#: or else from the task.
_POLICY_KEYS = (
    "max_retries",
    "retry_backoff",
    "retry_backoff_max",
    "retry_jitter",
    "default_retry_delay",
)
_POLICY_KEY_SET = frozenset(_POLICY_KEYS)


def _request(task: Task, claim: Claim) -> Request:
    return Request(
        id=claim.task_id,
        run_id=claim.message.run_id,
        node_id=claim.message.node_id,
        task=claim.task,
        attempt=claim.message.attempt,
        args=tuple(claim.args),
        kwargs=claim.kwargs,
        retry_policy=_retry_policy(task, claim.options),
    )


def _retry_policy(task: Task, options: NodeOptions) -> dict[str, Any]:
    policy: dict[str, Any] = {}
    if options.model_fields_set.isdisjoint(_POLICY_KEY_SET):
        # The node sets none of them, so the task's options alone give the
        # policy. Most nodes and tasks set none, and this skips five getattr
        # calls per task.
        for key, value in task.options.items():
            if key in _POLICY_KEY_SET and (value is not None or key == "max_retries"):
                policy[key] = value
        return policy
    for key in _POLICY_KEYS:
        value = getattr(options, key)
        if value is None:
            value = task.options.get(key)
        if value is not None or (key == "max_retries" and key in task.options):
            policy[key] = value
    return policy
