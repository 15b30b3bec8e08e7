"""Running one claimed attempt of a task and turning what happened into an outcome.

`execute` runs in a worker thread or in a child process; it never touches the
store. It returns an `Outcome` made of plain strings and numbers, so that it
crosses a process boundary, and the worker reports it to the store.
"""

from __future__ import annotations

import importlib
import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from signal import ITIMER_REAL, SIGALRM, setitimer
from signal import signal as set_signal_handler
from typing import TYPE_CHECKING, Any, Literal

from stem.canvas.compiler import compile_canvas
from stem.canvas.errors import CanvasError, NotSerializable
from stem.canvas.primitives import Canvas
from stem.canvas.values import dumps
from stem.engine.errors import (
    MaxRetriesExceededError,
    Replace,
    Retry,
    SoftTimeLimitExceeded,
)
from stem.engine.records import ErrorInfo

if TYPE_CHECKING:
    from stem.engine.app import Task

#: Celery's defaults, which users of ``self.retry()`` expect.
DEFAULT_MAX_RETRIES = 3
DEFAULT_RETRY_DELAY_S = 180.0
DEFAULT_BACKOFF_MAX_S = 600.0


@dataclass(frozen=True)
class Request:
    """Context of the running attempt, read by a bound task as ``self.request``."""

    id: str
    run_id: str
    node_id: str
    task: str
    attempt: int
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    retry_policy: dict[str, Any] = field(default_factory=dict)

    @property
    def retries(self) -> int:
        """How many times this node has been retried so far."""
        return self.attempt - 1


@dataclass(frozen=True)
class Outcome:
    """Result of one attempt: a value, a failure, a retry or a replacing canvas."""

    kind: Literal["succeeded", "failed", "retry", "replace"]
    #: JSON text of the value (succeeded) or of the replacing spec (replace).
    payload: str = ""
    error: ErrorInfo | None = None
    delay_s: float = 0.0


_local = threading.local()


def current_request() -> Request | None:
    """Return the request of the task running in this thread, if any."""
    return getattr(_local, "request", None)


def execute(task: Task, request: Request) -> Outcome:
    """Run one attempt of ``task`` and describe how it ended."""
    previous = current_request()
    _local.request = request
    try:
        value = task.run(*request.args, **request.kwargs)
    except Retry as signal:
        return _retry_outcome(task, request, signal.exc or signal, signal)
    except Replace as signal:
        return _replace_outcome(signal.canvas)
    except Exception as exc:
        if task.autoretry_for and isinstance(exc, task.autoretry_for):
            return _retry_outcome(task, request, exc, None)
        return Outcome("failed", error=ErrorInfo.from_exception(exc))
    except BaseException as exc:
        # SystemExit, KeyboardInterrupt or a custom BaseException raised by the
        # task body fails its node. Raised further, it would end the worker
        # thread and leave the node running forever.
        return Outcome("failed", error=ErrorInfo.from_exception(exc))
    finally:
        _local.request = previous
    try:
        return Outcome("succeeded", dumps(value, f"return value of {task.name}"))
    except NotSerializable as exc:
        return Outcome("failed", error=ErrorInfo.from_exception(exc))


#: Seconds between two checks by a child process that its worker still lives.
PARENT_CHECK_S = 1.0


def exit_with_parent(parent_pid: int) -> None:
    """Start a thread that ends this child process once its worker is gone.

    The initializer of a worker's child processes. A worker killed with
    SIGKILL cannot stop its children, which would otherwise run on as
    orphans, waiting for tasks that never come. The child notices within
    `PARENT_CHECK_S`, because a child whose parent died gets a new parent
    pid. A task it was running then stops too, and another worker runs the
    task again once the visibility timeout passes.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="stem-parent-watch", daemon=True).start()


def execute_in_child(
    module: str,
    attribute: str,
    request: Request,
    path: list[str],
    soft_time_limit_s: float | None = None,
) -> Outcome:
    """Import a task by module and attribute in a child process, then run it.

    Only task bodies run in children; the parent keeps all state. With
    ``soft_time_limit_s``, a SIGALRM timer raises `SoftTimeLimitExceeded` in
    the task body when the limit passes. The pool runs each call in the
    child's main thread, which is the thread that Python runs signal
    handlers in.
    """
    for entry in reversed(path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    target: Any = importlib.import_module(module)
    for part in attribute.split("."):
        target = getattr(target, part)
    if soft_time_limit_s is None:
        return execute(target, request)

    def on_alarm(_number: int, _frame: object) -> None:
        raise SoftTimeLimitExceeded(
            f"Task {request.task} {request.id} exceeded its soft time limit of "
            f"{soft_time_limit_s} s."
        )

    previous = set_signal_handler(SIGALRM, on_alarm)
    setitimer(ITIMER_REAL, soft_time_limit_s)
    try:
        return execute(target, request)
    finally:
        setitimer(ITIMER_REAL, 0)
        set_signal_handler(SIGALRM, previous)


def _retry_outcome(
    task: Task, request: Request, exc: BaseException, signal: Retry | None
) -> Outcome:
    policy = request.retry_policy
    limit = policy.get("max_retries", DEFAULT_MAX_RETRIES)
    if signal is not None and signal.max_retries is not None:
        limit = signal.max_retries
    error = ErrorInfo.from_exception(exc)
    if limit is not None and request.retries >= limit:
        if signal is not None and signal.exc is None:
            # As in Celery: with no error of its own, the task failed because
            # it ran out of retries.
            exhausted = MaxRetriesExceededError(
                f"Task {task.name} {request.id} asked for a retry after its "
                f"last one ({limit} retries)."
            )
            error = ErrorInfo.from_exception(exhausted)
        return Outcome("failed", error=error)
    if signal is not None and signal.countdown_s is not None:
        return Outcome("retry", error=error, delay_s=signal.countdown_s)
    return Outcome("retry", error=error, delay_s=backoff_s(policy, request.retries))


def backoff_s(policy: dict[str, Any], retries: int) -> float:
    """Return the delay before retry number ``retries + 1``.

    With ``retry_backoff`` (True means a 1 s base), the delay doubles with
    each retry up to ``retry_backoff_max``. ``retry_jitter``, on by default as
    in Celery, then picks a uniform delay between zero and that value.
    Without backoff the delay is ``default_retry_delay``.
    """
    backoff = policy.get("retry_backoff")
    if not backoff:
        return float(policy.get("default_retry_delay", DEFAULT_RETRY_DELAY_S))
    base = 1.0 if backoff is True else float(backoff)
    ceiling = float(policy.get("retry_backoff_max", DEFAULT_BACKOFF_MAX_S))
    # The exponent stops at 64 because 2.0**retries overflows a float after
    # 1,023 retries. So a base under ceiling / 2**64 never reaches the ceiling.
    delay: float = min(ceiling, base * 2.0 ** min(retries, 64))
    if policy.get("retry_jitter", True):
        delay = random.uniform(0, delay)
    return delay


def _replace_outcome(canvas: Any) -> Outcome:
    if not isinstance(canvas, Canvas):
        error = TypeError(
            f"self.replace() got {canvas!r}; pass a signature, chain, group or chord."
        )
        return Outcome("failed", error=ErrorInfo.from_exception(error))
    try:
        spec = compile_canvas(canvas)
    except CanvasError as exc:
        return Outcome("failed", error=ErrorInfo.from_exception(exc))
    return Outcome("replace", spec.to_json())
