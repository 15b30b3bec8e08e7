"""Errors of engine state, task execution and driver failures.

These extend the tree rooted at `stem.canvas.errors.StemError`::

    StemError
    ├── EngineError                 a run, node or task is not in a usable state
    │   ├── RunNotFound
    │   ├── RunNotRetryable         a run retry on a run that is running or succeeded
    │   ├── TaskNotRegistered
    │   ├── NoWorkerRunning         get() would wait for a worker that is not there
    │   ├── TimeoutError            get() timed out (also builtins.TimeoutError)
    │   ├── MaxRetriesExceededError self.retry() after the last retry, with no exc
    │   ├── DeadLettered            a node's message could not be processed
    │   ├── SoftTimeLimitExceeded   raised inside a task at its soft time limit
    │   ├── TimeLimitExceeded       a task's process was killed at its time limit
    │   ├── ValueTooLarge           a task returned more than max_value_bytes
    │   └── TaskError               a task failed with a class Stem would not rebuild
    ├── DriverError                 the store or broker underneath failed
    │   ├── DriverNotFound          no driver for a URL scheme
    │   └── PartialSubmitError      submit_many() stored some runs but not others
    ├── InvalidSchedule             a beat entry is declared wrongly (ValueError)
    └── Retry, Replace              raised inside tasks to steer the engine
"""

from __future__ import annotations

import builtins
from typing import Any

from stem.canvas.errors import StemError


class EngineError(StemError):
    """Raised when a run, node or task is missing or not in a usable state."""


class RunNotFound(EngineError, LookupError):
    """Raised when a run id is unknown to the store, or its run has expired."""


class RunNotRetryable(EngineError):
    """Raised when a run retry finds the run still running, or succeeded.

    Only a failed or cancelled run can be retried. Wait for a running run to
    end, or cancel it first.
    """

    def __init__(self, run_id: str, status: str) -> None:
        if status == "succeeded":
            reason = "it succeeded, so nothing in it needs to run again"
        else:
            reason = (
                f"its status is {status!r}. Only a failed or cancelled run can "
                "be retried: wait for it to end, or cancel it, then retry it"
            )
        super().__init__(f"Run {run_id} cannot be retried because {reason}.")
        self.run_id = run_id
        self.status = status


class TaskNotRegistered(EngineError, LookupError):
    """Raised when a task name is not registered with the app that runs it."""


class NoWorkerRunning(EngineError):
    """Raised by ``get()`` on ``memory://`` when no worker is running to do the work.

    Start one with ``with app.worker():`` around the call, or call
    ``app.worker().run()`` in another thread.
    """


class TimeoutError(EngineError, builtins.TimeoutError):
    """Raised by ``get(timeout=...)`` when the run has not ended in time."""


class TaskError(EngineError):
    """Raised in place of a task's exception when Stem does not rebuild its class.

    Stem rebuilds the original class only if its module is already imported
    and it subclasses `Exception`; otherwise this carries the stored fields.
    """

    def __init__(
        self,
        message: str,
        *,
        exc_module: str = "",
        exc_type: str = "",
        exc_args: list[Any] | None = None,
        traceback: str = "",
        task_id: str = "",
    ) -> None:
        super().__init__(message)
        self.exc_module = exc_module
        self.exc_type = exc_type
        self.exc_args = exc_args or []
        self.traceback = traceback
        self.task_id = task_id


class DeadLettered(EngineError):
    """Recorded for a node whose message could not be processed (an unknown task).

    The message is kept in the dead-letter stream with the same reason.
    """


class SoftTimeLimitExceeded(EngineError):
    """Raised inside a task body when it runs past its ``soft_time_limit``.

    The task may catch it to clean up. Uncaught, it fails the attempt like
    any other exception, and ``autoretry_for`` may list it. Raised only in
    the ``processes`` pool.
    """


class TimeLimitExceeded(EngineError):
    """Recorded for an attempt whose process was killed at its ``time_limit``.

    The worker kills the child process running the task and starts a new one,
    so the task gets no chance to clean up. Only in the ``processes`` pool.
    """


class ValueTooLarge(EngineError):
    """Recorded for a node whose task returned a value above ``max_value_bytes``.

    The value is never stored. Return a reference to the data (a path or an
    object-store key) instead, or raise the limit in the app's settings.
    """


class MaxRetriesExceededError(EngineError):
    """Recorded when a task calls ``self.retry()`` without ``exc`` past its limit."""


class DriverError(StemError):
    """Raised when the store or broker underneath fails; the cause is chained."""


class DriverNotFound(DriverError, LookupError):
    """Raised when no installed driver handles a URL's scheme."""


class PartialSubmitError(DriverError):
    """Raised by ``submit_many()`` when the store failed for some of the runs.

    The other runs were stored and run as usual. Making the same call
    again with ``run_ids=error.run_ids`` is safe: a run that was stored,
    even one reported as failed, is not stored twice.
    """

    def __init__(
        self,
        message: str,
        submitted: list[str],
        failed: dict[str, Exception],
        run_ids: list[str],
    ) -> None:
        super().__init__(message)
        #: Ids of the runs that were stored, in the order they were given.
        self.submitted = submitted
        #: The error of each run that failed, by run id.
        self.failed = failed
        #: The id of every run of the call, in the order of its canvases,
        #: including the ids the call generated.
        self.run_ids = run_ids


class InvalidSchedule(StemError, ValueError):
    """Raised when a beat schedule entry is declared wrongly.

    The message names the entry, the bad value (its name, schedule, timezone or
    canvas) and the fix. Nothing is scheduled when this is raised.
    """


class Retry(StemError):
    """Raised by ``self.retry()`` inside a task to run it again after a delay."""

    def __init__(
        self,
        countdown_s: float | None = None,
        exc: BaseException | None = None,
        max_retries: int | None = None,
    ) -> None:
        super().__init__(f"Retry in {countdown_s} s" if countdown_s else "Retry")
        self.countdown_s = countdown_s
        self.exc = exc
        self.max_retries = max_retries


class Replace(StemError):
    """Raised by ``self.replace(canvas)`` inside a task: the canvas takes its place."""

    def __init__(self, canvas: Any) -> None:
        super().__init__("Replaced by a canvas")
        self.canvas = canvas
