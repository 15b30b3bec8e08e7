"""The worker: fetch messages, claim nodes, run task bodies, report outcomes."""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import logging
import multiprocessing
import os
import queue
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from stem.canvas.spec import GraphSpec
from stem.engine.errors import TaskNotRegistered
from stem.engine.execution import Outcome, Request, execute, execute_in_child
from stem.engine.ports import TASK_HEADER, Claim, Message
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


class Worker:
    """Runs tasks from the app's queues with a pool of threads or processes.

    Args:
        app: the app whose tasks and driver it uses.
        concurrency: how many tasks run at once; defaults to the CPU count.
        queues: queue names to read, in priority order; defaults to the app's.
        pool: ``threads`` runs bodies in threads; ``processes`` runs them in
            child processes, while fetching and reporting stay in this one.
    """

    def __init__(
        self,
        app: App,
        *,
        concurrency: int | None = None,
        queues: Sequence[str] | None = None,
        pool: str = "threads",
    ) -> None:
        if pool not in POOLS:
            raise ValueError(
                f"Pool {pool!r} is unknown; pass 'threads' or 'processes'."
            )
        self.app = app
        self.concurrency = concurrency or os.cpu_count() or 1
        self.queues = list(queues or [app.default_queue])
        self.pool = pool
        self.processed = 0
        self.failed = 0
        self._stop = threading.Event()
        self._abandoned = False
        self._started = False
        self._threads: list[threading.Thread] = []
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
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
        self._slots = threading.Semaphore(2 * self.concurrency)
        self._fetcher_done = threading.Event()

    def start(self) -> Worker:
        """Start the worker's threads and return at once."""
        if self.pool == "processes":
            self._executor = self._new_pool()
        self.app.driver.worker_started()
        self._started = True
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
            timeout_s: how long to wait for each worker thread to finish.
            abandon: stop at once instead: child processes are terminated and
                thread-pool tasks are left running in their daemon threads.
                Their nodes are never reported, so on ``memory://`` their runs
                stay unfinished.
        """
        self._abandoned = abandon
        self._stop.set()
        wait_s = 0.0 if abandon else timeout_s
        for thread in self._threads:
            thread.join(wait_s)
        self._threads.clear()
        if self._executor is not None:
            if abandon:
                _terminate_children(self._executor)
            self._executor.shutdown(wait=not abandon, cancel_futures=True)
            self._executor = None
        if self._started:
            self._started = False
            self.app.driver.worker_stopped()
        log.info(
            "Worker stopped: %d tasks processed, %d failed.",
            self.processed,
            self.failed,
        )

    def run(self) -> None:
        """Run until interrupted (Ctrl+C) or `stop` is called from another thread."""
        self.start()
        try:
            while not self._stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            log.info("Interrupted; finishing the tasks in progress.")
        finally:
            self.stop()

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
            if not self._slots.acquire(timeout=FETCH_TIMEOUT_S):
                continue
            free = 1
            while self._slots.acquire(blocking=False):
                free += 1
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
        """Claim the messages of registered tasks, dead-lettering the others.

        Each claim's lease is renewed from here on, because a claimed task
        may wait in the buffer before a thread runs it.
        """
        driver = self.app.driver
        known: list[tuple[Task, Message]] = []
        for message in messages:
            try:
                known.append((self.app.get_task(self._task_name(message)), message))
            except TaskNotRegistered as err:
                driver.dead_letter(message, str(err))
        if not known:
            return []
        claims = driver.claim_many([message for _, message in known])
        claimed: list[tuple[Task, Claim]] = []
        now = time.monotonic()
        for (task, _), claim in zip(known, claims, strict=True):
            if claim is None:
                continue
            with self._leases_lock:
                self._leases[id(claim)] = (claim, now)
            claimed.append((task, claim))
        return claimed

    def _run(self, task: Task, claim: Claim) -> None:
        started = time.monotonic()
        try:
            outcome = self._execute(task, claim)
        finally:
            with self._leases_lock:
                self._leases.pop(id(claim), None)
        self._report(claim, outcome)
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
        # A snapshot copies every node record of the run, so reading one per
        # message makes a wide chord quadratic. The header avoids that.
        name = message.headers.get(TASK_HEADER)
        if name:
            return name
        return self.app.driver.snapshot(message.run_id).spec.node(message.node_id).task

    def _execute(self, task: Task, claim: Claim) -> Outcome:
        request = _request(task, claim)
        if self._executor is None:
            return execute(task, request)
        module, attribute = task.fn.__module__, task.fn.__qualname__
        if module == "__main__":
            module = task.name.rsplit(".", 1)[0]
        executor = self._executor
        try:
            future = executor.submit(
                execute_in_child, module, attribute, request, list(sys.path)
            )
            return future.result()
        except Exception as exc:  # the child died or could not import the task
            if self._abandoned:
                return Outcome("failed", error=ErrorInfo.from_exception(exc))
            log.error(
                "Task %s %s could not run in a child process.",
                claim.task,
                claim.task_id,
                exc_info=True,
            )
            if isinstance(exc, concurrent.futures.process.BrokenProcessPool):
                self._replace_pool(executor)
            return Outcome("failed", error=ErrorInfo.from_exception(exc))

    def _replace_pool(self, broken: concurrent.futures.ProcessPoolExecutor) -> None:
        """Swap a pool broken by a dead child for a new one, once per break."""
        with self._count_lock:
            if self._executor is not broken or self._stop.is_set():
                return
            self._executor = self._new_pool()
        broken.shutdown(wait=False, cancel_futures=True)
        log.warning("A child process died; replaced the process pool.")

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        context = multiprocessing.get_context("spawn")
        return concurrent.futures.ProcessPoolExecutor(
            self.concurrency, mp_context=context
        )

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
        with self._count_lock:
            self.processed += 1
            if outcome.kind == "failed":
                self.failed += 1
        if outcome.kind == "succeeded":
            driver.complete(message, outcome.payload)
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
            log.error(
                "Task %s %s failed: %s: %s\n%s",
                claim.task,
                claim.task_id,
                outcome.error.qualname,
                outcome.error.message,
                outcome.error.traceback.rstrip(),
            )
            driver.fail(message, outcome.error)


def _terminate_children(executor: concurrent.futures.ProcessPoolExecutor) -> None:
    # NOTE: ProcessPoolExecutor has no public way to end busy workers before
    # Python 3.14 (terminate_workers), so this reads its private _processes.
    processes = getattr(executor, "_processes", None) or {}
    for process in list(processes.values()):
        process.terminate()


def _request(task: Task, claim: Claim) -> Request:
    options = claim.options
    policy: dict[str, Any] = {}
    for key in (
        "max_retries",
        "retry_backoff",
        "retry_backoff_max",
        "retry_jitter",
        "default_retry_delay",
    ):
        value = getattr(options, key)
        if value is None:
            value = task.options.get(key)
        if value is not None or (key == "max_retries" and key in task.options):
            policy[key] = value
    message = claim.message
    return Request(
        id=claim.task_id,
        run_id=message.run_id,
        node_id=message.node_id,
        task=claim.task,
        attempt=message.attempt,
        args=tuple(claim.args),
        kwargs=claim.kwargs,
        retry_policy=policy,
    )
