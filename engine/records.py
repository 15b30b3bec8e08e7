"""Records of a run's state: per node, per run, and stored errors."""

from __future__ import annotations

import json
import sys
import traceback as traceback_module
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from stem.canvas.errors import NotSerializable
from stem.canvas.spec import GraphSpec, NodeId
from stem.canvas.values import encode

NodeState = Literal[
    "pending",
    "queued",
    "running",
    "retrying",
    "succeeded",
    "failed",
    "cancelled",
    "skipped",
]
RunStatus = Literal["running", "succeeded", "failed", "cancelled"]

#: States a node never leaves.
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "skipped"})
#: Terminal states a join under ``all_settled`` accepts from a dependency.
SETTLED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})

#: Key of the error record that replaces a failed member's value under ``all_settled``.
ERROR_RECORD_KEY = "__stem_error__"

#: Largest message and largest traceback of a stored error, each in bytes of
#: UTF-8. A longer text keeps its head and tail around a marker that gives
#: the number of bytes cut, so a task that raises with a huge message cannot
#: fill the store, a worker's log or a terminal.
MAX_ERROR_TEXT_BYTES = 64 * 1024
# Bytes kept free for the marker, which is 77 bytes for a text of 1 PB.
_MARKER_ROOM = 128


@dataclass(frozen=True)
class ErrorInfo:
    """A task's exception as stored: never the exception object itself.

    ``args`` contains the exception's arguments in the value codec's JSON form,
    or None when they are not JSON-serialisable.

    ``message`` and ``traceback`` are cut to `MAX_ERROR_TEXT_BYTES` each when
    an instance is made, by whatever path. Arguments above that size are cut
    too when they are one string, as in ``ValueError(text)``, and dropped
    (None) otherwise, so the error comes back as `TaskError`.
    """

    module: str
    qualname: str
    message: str
    args: list[Any] | None = None
    traceback: str = ""

    def __post_init__(self) -> None:
        # The instance is frozen, so the cut values are set through object.
        object.__setattr__(self, "message", _cut_middle(self.message))
        object.__setattr__(self, "traceback", _cut_middle(self.traceback))
        object.__setattr__(self, "args", _capped_args(self.args))

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        """Capture an exception's class, arguments, message and traceback."""
        kind = type(exc)
        try:
            args: list[Any] | None = encode(list(exc.args))
        except NotSerializable:
            args = None
        try:
            message = str(exc)
        except Exception as err:
            # The same placeholder that the traceback module prints.
            message = f"<exception str() failed: {type(err).__name__}>"
        text = "".join(traceback_module.format_exception(kind, exc, exc.__traceback__))
        return cls(kind.__module__, kind.__qualname__, message, args, text)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-safe form that drivers store."""
        return {
            "module": self.module,
            "qualname": self.qualname,
            "message": self.message,
            "args": self.args,
            "traceback": self.traceback,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ErrorInfo:
        """Rebuild from `to_dict` output."""
        return cls(
            str(data.get("module", "")),
            str(data.get("qualname", "")),
            str(data.get("message", "")),
            data.get("args"),
            str(data.get("traceback", "")),
        )

    def rebuild(self) -> type[Exception] | None:
        """Find the exception class, without importing anything.

        Returns the class only if its module is already in `sys.modules` and
        the name resolves there to a subclass of `Exception`; otherwise None.
        """
        module = sys.modules.get(self.module)
        if module is None:
            return None
        found: Any = module
        for part in self.qualname.split("."):
            # Read the namespace itself: getattr would run a module __getattr__,
            # which may import a submodule, or a descriptor's code.
            namespace = getattr(found, "__dict__", None)
            if not isinstance(namespace, Mapping) or part not in namespace:
                return None
            found = namespace[part]
        if isinstance(found, type) and issubclass(found, Exception):
            return found
        return None


def _cut_middle(text: str) -> str:
    """Cut ``text`` to `MAX_ERROR_TEXT_BYTES` of UTF-8, keeping head and tail.

    The middle is replaced by a marker that gives the number of bytes cut.
    A character cut in half at either end is dropped, so the result is valid text.
    """
    limit = MAX_ERROR_TEXT_BYTES
    # A character takes at most 4 bytes in UTF-8, so most texts need no encoding.
    if len(text) * 4 <= limit:
        return text
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    keep = (limit - _MARKER_ROOM) // 2
    head = data[:keep].decode("utf-8", "ignore")
    tail = data[len(data) - keep :].decode("utf-8", "ignore")
    cut = len(data) - len(head.encode("utf-8", "surrogatepass"))
    cut -= len(tail.encode("utf-8", "surrogatepass"))
    marker = f"\n[... {cut:,} bytes cut: Stem stores at most {limit:,} bytes ...]\n"
    return head + marker + tail


def _capped_args(args: list[Any] | None) -> list[Any] | None:
    if args is None:
        return None
    size = len(json.dumps(args, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    if size <= MAX_ERROR_TEXT_BYTES:
        return args
    if len(args) == 1 and isinstance(args[0], str):
        return [_cut_middle(args[0])]
    return None


@dataclass
class NodeRecord:
    """State of one node of a run, as the store keeps it.

    Invariant: ``value`` is set only in state ``succeeded``, and ``error`` only
    in ``failed`` or in ``retrying`` (the error of the attempt that retried).
    """

    state: NodeState = "pending"
    #: Number of the current attempt; 0 until the node is first queued.
    attempt: int = 0
    #: Fencing token of the current attempt: 1 at its first claim, raised by
    #: each takeover, 0 until the attempt is claimed. Only reports that carry
    #: the current lease change the node.
    lease: int = 0
    #: The task's value in the value codec's JSON text.
    value: str | None = None
    error: ErrorInfo | None = None
    #: The failed node that cancelled this node, or that fired this errback.
    cause: NodeId | None = None
    #: True once a ``replace`` put a canvas in this node's place.
    replaced: bool = False
    queued_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None


@dataclass
class RunState:
    """State of one run, as the store keeps it."""

    run_id: str
    spec: GraphSpec
    nodes: dict[NodeId, NodeRecord]
    status: RunStatus = "running"
    epoch: int = 1
    created_at: float = 0.0
    ended_at: float | None = None
    #: The run's value in JSON text, once it has succeeded.
    value: str | None = None
    #: The node whose error the run's result raises, once it has failed.
    error_node: NodeId | None = None
    #: Main-path nodes not yet in a terminal state.
    open_main: int = 0
    #: For each ``ignore_result`` node, the nodes that read its value as input
    #: and have not ended. Its value is kept only while this is above zero.
    open_readers: dict[NodeId, int] = field(default_factory=dict)
    events: list[tuple[float, NodeId, str]] = field(default_factory=list)

    def task_id(self, node_id: NodeId) -> str:
        """Return the globally unique task id of a node of this run."""
        return task_id(self.run_id, node_id)


def task_id(run_id: str, node_id: NodeId) -> str:
    """Derive a node's task id from its run id and node id."""
    return f"{run_id}-{node_id}"


def error_record(node_id: NodeId, task: str, record: NodeRecord) -> dict[str, Any]:
    """Build the error record an ``all_settled`` join gets for a failed member."""
    detail: dict[str, Any] = {"state": record.state, "node": node_id, "task": task}
    if record.error is not None:
        detail["type"] = record.error.qualname
        detail["module"] = record.error.module
        detail["message"] = record.error.message
    return {ERROR_RECORD_KEY: detail}


def is_error_record(value: object) -> bool:
    """Tell whether a value from an ``all_settled`` join is an error record."""
    return isinstance(value, dict) and set(value) == {ERROR_RECORD_KEY}
