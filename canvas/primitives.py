"""Signatures and the canvas primitives: chain, group and chord.

A canvas is a tree of these objects; nothing runs until it is compiled
(`stem.canvas.compile`) and submitted. The ``|`` operator builds the same
types Celery builds (``group | task`` is a chord, ``chord | task`` extends the
body), but only merges two canvases when that cannot move a link, an errback
or an option onto steps it was not attached to. Otherwise it nests them, which
gives the same value because chains are associative.
"""

from __future__ import annotations

import copy
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, overload

from stem.canvas.errors import InvalidCanvas, UnboundCanvas
from stem.canvas.options import JoinPolicy, check_join, check_options

if TYPE_CHECKING:
    from typing import Self

#: Unicode categories refused in task names: control characters (escape
#: sequences), format characters (bidirectional overrides) and surrogates.
_HIDDEN = frozenset({"Cc", "Cf", "Cs"})


class Submitter(Protocol):
    """Interface of the app that runs a canvas, implemented by the engine's `App`."""

    def submit(
        self,
        canvas: Canvas,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        options: Mapping[str, Any],
    ) -> Any:
        """Compile and submit a canvas, returning a result handle."""
        ...  # pragma: no cover

    def call(
        self, signature: Signature, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> Any:
        """Run a signature's task inline in this process and return its value."""
        ...  # pragma: no cover


class Canvas:
    """Base of every canvas object: options, links and errbacks.

    ``options`` set on a chain, group or chord are defaults for every
    signature inside that does not set its own, except ``countdown`` and
    ``eta``, which delay only the nodes where the canvas starts.
    """

    __slots__ = ("_app", "_errbacks", "_links", "options")

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options: dict[str, Any] = check_options(options or {})
        self._links: list[Canvas] = []
        self._errbacks: list[Canvas] = []
        self._app: Submitter | None = None

    # -- links and errbacks -------------------------------------------------

    @property
    def links(self) -> tuple[Canvas, ...]:
        """Canvases run once, with this canvas's value, after it succeeds."""
        return tuple(self._links)

    @property
    def errbacks(self) -> tuple[Canvas, ...]:
        """Canvases run once, with the failed task's id, if this canvas fails."""
        return tuple(self._errbacks)

    def link(self, callback: Canvas) -> Canvas:
        """Run ``callback`` with this canvas's value after it succeeds.

        A link is a side branch: the canvas's value and ``get()`` do not wait
        for it, and its failure does not fail the run. Returns ``callback``,
        as Celery does.
        """
        self._links.append(_require_canvas(callback, "link"))
        return callback

    def link_error(self, errback: Canvas) -> Canvas:
        """Run ``errback`` once if this canvas ends unsuccessfully.

        It fires on a failure inside this canvas or upstream of it (not when
        the run is cancelled), and receives the id of the failed task that
        caused it. Returns ``errback``, as Celery does.
        """
        self._errbacks.append(_require_canvas(errback, "link_error"))
        return errback

    def on_error(self, errback: Canvas) -> Self:
        """Attach an errback like `link_error`, and return this canvas."""
        self.link_error(errback)
        return self

    # -- options ------------------------------------------------------------

    def set(self, **options: Any) -> Self:
        """Update options in place, checking each one, and return this canvas.

        ``link`` and ``link_error`` may be passed here too, as a canvas or a
        list of canvases.

        Raises:
            InvalidOption: if a name is unknown or a value is out of range.
        """
        for callback in _as_list(options.pop("link", None), "link"):
            self.link(callback)
        for errback in _as_list(options.pop("link_error", None), "link_error"):
            self.link_error(errback)
        self.options.update(check_options(options))
        return self

    def clone(self) -> Self:
        """Return a deep copy that shares only the app binding."""
        return self._copy()

    def _copy(self) -> Self:
        duplicate = copy.copy(self)
        duplicate.options = copy.deepcopy(self.options)
        duplicate._links = [item.clone() for item in self._links]
        duplicate._errbacks = [item.clone() for item in self._errbacks]
        return duplicate

    def _is_plain(self) -> bool:
        """Tell whether this canvas carries nothing that scopes its members."""
        return not (self._links or self._errbacks or self.options)

    # -- submitting -----------------------------------------------------------

    @property
    def app(self) -> Submitter | None:
        """The app this canvas was built from, found on any signature inside."""
        # A loop, not recursion, so that a canvas nested too deeply to compile
        # still reaches the compiler and gets its InvalidCanvas error.
        stack: list[Canvas] = [self]
        while stack:
            current = stack.pop()
            if current._app is not None:
                return current._app
            stack.extend(reversed(current.children()))
        return None

    def bind(self, app: Submitter) -> Self:
        """Bind this canvas to the app that `apply_async` submits it to."""
        self._app = app
        return self

    def children(self) -> tuple[Canvas, ...]:
        """Return the canvases directly inside this one, in declaration order."""
        return ()

    def apply_async(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Submit this canvas as one run and return its result handle.

        ``args`` and ``kwargs`` reach the canvas the way an upstream value
        would: the first step of a chain, every member of a group, every
        header member of a chord. ``countdown`` and ``eta`` delay the nodes
        where the run starts; other options are defaults for every node.

        Raises:
            UnboundCanvas: if no signature inside came from an app.
            NotSerializable: if an argument is not JSON-serialisable.
        """
        app = self.app
        if app is None:
            raise UnboundCanvas(
                f"{self!r} is not bound to an app; build its signatures with "
                "task.s() from an app's task, or call app.submit(canvas)."
            )
        return app.submit(self, tuple(args), dict(kwargs or {}), options)

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        """Submit with the given arguments, as ``apply_async(args, kwargs)`` does."""
        return self.apply_async(args, kwargs)

    # -- drawing --------------------------------------------------------------

    def _repr_svg_(self) -> str:
        """Draw the compiled canvas for Jupyter, with every node ``pending``."""
        from stem.canvas.compiler import compile_canvas
        from stem.canvas.svg import to_svg

        return to_svg(compile_canvas(self))

    # -- composition ----------------------------------------------------------

    def __or__(self, other: Canvas) -> Canvas:
        if not isinstance(other, Canvas):
            return NotImplemented
        return _pipe(self, other)

    def __ior__(self, other: Canvas) -> Canvas:
        return self.__or__(other)

    def _extras_repr(self) -> str:
        parts = [f".set({k}={v!r})" for k, v in self.options.items()]
        parts += [f".link({item!r})" for item in self._links]
        parts += [f".on_error({item!r})" for item in self._errbacks]
        return "".join(parts)

    def _same_extras(self, other: Canvas) -> bool:
        return (
            self.options == other.options
            and self._links == other._links
            and self._errbacks == other._errbacks
        )


class Signature(Canvas):
    """One task call: a task name with its arguments, options and flags.

    Args:
        task: the registered name of the task.
        args: positional arguments; a value flowing in from upstream, or given
            at submit, is put in front of them unless the signature is immutable.
        kwargs: keyword arguments.
        options: per-call options (see `stem.canvas.options.CHECKERS`).
        immutable: ignore upstream values and submit arguments.
    """

    __slots__ = ("args", "immutable", "kwargs", "task")

    def __init__(
        self,
        task: str,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        *,
        immutable: bool = False,
    ) -> None:
        if not isinstance(task, str) or not task:
            raise InvalidCanvas(
                f"Task name {task!r} is invalid; pass the registered task name "
                "as a non-empty string."
            )
        hidden = [char for char in task if unicodedata.category(char) in _HIDDEN]
        if hidden:
            raise InvalidCanvas(
                f"Task name {task!r} contains the control or format character "
                f"{hidden[0]!r}, which would reach terminals and pictures "
                "unescaped; use printable characters only."
            )
        super().__init__(options)
        self.task = task
        self.args: tuple[Any, ...] = tuple(args)
        self.kwargs: dict[str, Any] = dict(kwargs or {})
        self.immutable = bool(immutable)

    @property
    def name(self) -> str:
        """The task name (Celery spells it both ``task`` and ``name``)."""
        return self.task

    def clone(
        self,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        """Return a copy with arguments and options merged in, Celery's way.

        New positional arguments go in front of the stored ones; new keyword
        arguments and options win over stored ones. An immutable signature
        keeps its arguments and merges only options.
        """
        duplicate = self._copy()
        if not self.immutable:
            duplicate.args = (*tuple(args), *self.args)
            duplicate.kwargs = {**self.kwargs, **dict(kwargs or {})}
        duplicate.set(**options)
        return duplicate

    partial = clone

    def si(self) -> Signature:
        """Return an immutable copy: it ignores upstream values and submit arguments."""
        return self._copy().set_immutable(True)

    def set_immutable(self, immutable: bool) -> Signature:
        """Set whether upstream values are ignored, and return this signature."""
        self.immutable = bool(immutable)
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task inline in this process with merged arguments."""
        app = self.app
        if app is None:
            raise UnboundCanvas(
                f"{self!r} is not bound to an app, so its task cannot run inline; "
                "build it with task.s() from an app's task."
            )
        merged = self.clone(args, kwargs)
        return app.call(merged, merged.args, merged.kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Return the signature as a plain dict (task, args, kwargs, options)."""
        return {
            "task": self.task,
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "options": dict(self.options),
            "immutable": self.immutable,
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Signature):
            return NotImplemented
        return (
            self.task == other.task
            and self.args == other.args
            and self.kwargs == other.kwargs
            and self.immutable == other.immutable
            and self._same_extras(other)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        arguments = [repr(a) for a in self.args]
        arguments += [f"{k}={v!r}" for k, v in self.kwargs.items()]
        method = "si" if self.immutable else "s"
        return f"{self.task}.{method}({', '.join(arguments)}){self._extras_repr()}"


class Chain(Canvas):
    """Steps run one after another, each step's value fed to the next.

    Build one with `chain` or ``a | b``. Its value is the last step's value.
    """

    __slots__ = ("tasks",)

    def __init__(
        self, tasks: Iterable[Canvas] = (), options: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(options)
        self.tasks: tuple[Canvas, ...] = tuple(
            _require_canvas(step, f"chain step {i}") for i, step in enumerate(tasks)
        )

    @classmethod
    def _of_checked(cls, tasks: tuple[Canvas, ...]) -> Chain:
        """Build a plain chain from steps already known to be canvases.

        ``|`` extends a chain one step at a time, so checking every step again
        would make building a long chain quadratic.
        """
        made = cls()
        made.tasks = tasks
        return made

    def children(self) -> tuple[Canvas, ...]:
        return self.tasks

    def _copy(self) -> Chain:
        duplicate = super()._copy()
        duplicate.tasks = tuple(step.clone() for step in self.tasks)
        return duplicate

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Chain):
            return NotImplemented
        return self.tasks == other.tasks and self._same_extras(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        inner = " | ".join(repr(step) for step in self.tasks)
        return f"chain({inner}){self._extras_repr()}"


class Group(Canvas):
    """Members run in parallel on the same input; the value lists theirs in order.

    A group's value is always a list: one member gives a one-element list, no
    members give ``[]``, and a nested group gives a nested list.
    """

    __slots__ = ("tasks",)

    def __init__(
        self, tasks: Iterable[Canvas] = (), options: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(options)
        self.tasks: tuple[Canvas, ...] = tuple(
            _require_canvas(member, f"group member {i}")
            for i, member in enumerate(tasks)
        )

    def children(self) -> tuple[Canvas, ...]:
        return self.tasks

    def _copy(self) -> Group:
        duplicate = super()._copy()
        duplicate.tasks = tuple(member.clone() for member in self.tasks)
        return duplicate

    def __len__(self) -> int:
        return len(self.tasks)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Group):
            return NotImplemented
        return self.tasks == other.tasks and self._same_extras(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        inner = ", ".join(repr(member) for member in self.tasks)
        return f"group({inner}){self._extras_repr()}"


class Chord(Canvas):
    """A header group followed by a body that receives the header's list.

    ``chord(header, body)`` has the value of ``chain(group(header), body)``.

    Args:
        header: the group whose members run in parallel.
        body: the callback canvas; its first steps receive the header's list.
        join: ``"fail_fast"`` (default: one failed member fails the chord, as
            in Celery) or ``"all_settled"`` (the body runs once every member
            has ended, with an error record in place of each failed member).
    """

    __slots__ = ("body", "header", "join")

    def __init__(
        self,
        header: Group,
        body: Canvas | None = None,
        join: str = "fail_fast",
        options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(options)
        self.header = header
        self.body = None if body is None else _require_canvas(body, "chord body")
        self.join: JoinPolicy = check_join(join)

    def children(self) -> tuple[Canvas, ...]:
        return (self.header,) if self.body is None else (self.header, self.body)

    def _copy(self) -> Chord:
        duplicate = super()._copy()
        duplicate.header = self.header.clone()
        duplicate.body = None if self.body is None else self.body.clone()
        return duplicate

    def __call__(self, body: Canvas, **options: Any) -> Any:
        """Submit this header with ``body`` as the callback: ``chord(header)(body)``."""
        return Chord(self.header, body, self.join, self.options).apply_async(**options)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Chord):
            return NotImplemented
        return (
            self.header == other.header
            and self.body == other.body
            and self.join == other.join
            and self._same_extras(other)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        join = "" if self.join == "fail_fast" else f", join={self.join!r}"
        return f"chord({self.header!r}, {self.body!r}{join}){self._extras_repr()}"


CanvasLike: TypeAlias = Canvas | Iterable[Canvas]


def signature(
    task: str | Signature,
    args: Iterable[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    **options: Any,
) -> Signature:
    """Build a signature by task name, or copy one: Celery's ``signature()``."""
    if isinstance(task, Signature):
        return task.clone(args, kwargs, **options)
    immutable = bool(options.pop("immutable", False))
    return Signature(task, args, kwargs, options, immutable=immutable)


@overload
def chain(*tasks: Canvas) -> Canvas: ...
@overload
def chain(tasks: Iterable[Canvas], /) -> Canvas: ...
def chain(*tasks: Any) -> Canvas:
    """Compose steps in sequence, exactly as ``a | b | c`` would.

    Accepts the steps as arguments or as one iterable. Like Celery,
    ``chain(group, task)`` is a chord.
    """
    steps = [
        _require_canvas(step, f"chain step {i}")
        for i, step in enumerate(_flatten_arguments(tasks))
    ]
    result: Canvas = Chain()
    if len(steps) > 1:
        # Start from the first step itself, so chain(group, task) is the chord
        # group | task and not a chain wrapped around it.
        result, steps = steps[0], steps[1:]
    for step in steps:
        result = result | step
    return result


def group(*tasks: Any, **options: Any) -> Group:
    """Compose members that run in parallel.

    Accepts the members as arguments or as one iterable, generators included.
    """
    return Group(_flatten_arguments(tasks), options or None)


def chord(
    header: Any,
    body: Canvas | None = None,
    *,
    join: str = "fail_fast",
    **options: Any,
) -> Chord:
    """Compose a header that runs in parallel and a body that gets its list.

    ``header`` is a group or an iterable of canvases. See `Chord` for ``join``.
    """
    if not isinstance(header, Group):
        header = Group(_flatten_arguments((header,)))
    return Chord(header, body, join, options or None)


def chunks(task: Signature, items: Iterable[Iterable[Any]], n: int) -> Group:
    """Split ``items`` into a group of chunks of ``n`` argument tuples.

    Each member calls the task once per tuple of its chunk, in one worker, and
    returns the list of values. The group's value is the list of those lists,
    which is the value Celery's ``chunks`` gives.
    """
    if type(n) is not int or n < 1:
        raise InvalidCanvas(f"Chunk size {n!r} is invalid; pass an int of 1 or more.")
    rows = [list(row) for row in items]
    members = [
        starmap(task, rows[start : start + n]) for start in range(0, len(rows), n)
    ]
    return Group(members)


def xmap(task: Signature, items: Iterable[Any]) -> Signature:
    """Call ``task`` once per item, in one worker, and return the list of values.

    This is Celery's ``task.map(items)``: one message, not parallel. The
    signature is immutable, as in Celery, so an upstream value does not reach it.
    """
    target = _call_target(task)
    return Signature(
        "stem.map", (), {"task": target, "it": list(items)}, immutable=True
    )


def starmap(task: Signature, items: Iterable[Iterable[Any]]) -> Signature:
    """Call ``task(*item)`` once per item, in one worker, and return the values.

    The signature is immutable, as in Celery, so an upstream value does not
    reach it.
    """
    rows = [list(row) for row in items]
    target = _call_target(task)
    return Signature("stem.starmap", (), {"task": target, "it": rows}, immutable=True)


def _call_target(task: Signature) -> dict[str, Any]:
    if not isinstance(task, Signature):
        raise InvalidCanvas(
            f"{task!r} cannot be mapped; pass a signature such as add.s()."
        )
    return {"task": task.task, "args": list(task.args), "kwargs": dict(task.kwargs)}


def _pipe(left: Canvas, right: Canvas) -> Canvas:
    """Build ``left | right`` with Celery's types, never widening a scope."""
    if isinstance(left, Group):
        return Chord(left, right)
    if isinstance(left, Chord) and left._is_plain() and left.body is not None:
        return Chord(left.header, left.body | right, left.join)
    if isinstance(left, Chain) and left._is_plain():
        return _extend_chain(left, right)
    return Chain._of_checked((left, *_steps_of(right)))


def _extend_chain(left: Chain, right: Canvas) -> Canvas:
    if not left.tasks:
        if isinstance(right, Chain) and right._is_plain():
            return Chain(right.tasks)
        return Chain._of_checked((right,))
    *head, last = left.tasks
    if isinstance(last, Group) and not isinstance(right, Chain):
        return Chain._of_checked((*head, Chord(last, right)))
    if isinstance(last, Chord) and last._is_plain() and last.body is not None:
        return Chain._of_checked((*head, last | right))
    return Chain._of_checked((*left.tasks, *_steps_of(right)))


def _steps_of(canvas: Canvas) -> tuple[Canvas, ...]:
    """Splice a plain chain's steps; keep anything else whole."""
    if isinstance(canvas, Chain) and canvas._is_plain():
        return canvas.tasks
    return (canvas,)


def _flatten_arguments(tasks: tuple[Any, ...]) -> list[Canvas]:
    if len(tasks) == 1 and not isinstance(tasks[0], Canvas):
        candidate = tasks[0]
        if isinstance(candidate, Iterable) and not isinstance(
            candidate, str | bytes | Mapping
        ):
            return list(candidate)
    return list(tasks)


def _require_canvas(value: Any, role: str) -> Canvas:
    if not isinstance(value, Canvas):
        raise InvalidCanvas(
            f"The {role} is {value!r}, a {type(value).__name__}; pass a signature "
            "(task.s()), chain, group or chord."
        )
    return value


def _as_list(value: Any, role: str) -> list[Canvas]:
    if value is None:
        return []
    if isinstance(value, Canvas):
        return [value]
    if isinstance(value, list | tuple):
        return list(value)
    raise InvalidCanvas(
        f"The {role} is {value!r}, a {type(value).__name__}; pass a signature "
        "(task.s()), chain, group or chord, or a list of them."
    )
