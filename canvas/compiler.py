"""Compilation of a canvas into a `GraphSpec`.

The compiler walks the canvas depth first, numbering each signature as it is
met, so the same canvas always gives the same spec. Each sub-canvas is
compiled against its inflow: the nodes it must wait for and the template of
the value it receives. It returns its outflow: the nodes that end it and the
template of its value. These four value rules are
the whole semantics:

- a signature's task receives the incoming value in front of its arguments,
  unless it is immutable or there is no value;
- a chain feeds the incoming value to its first step and each step's value to
  the next, and its value is the last step's;
- a group feeds the incoming value to every member, and its value is the list
  of their values (``[]`` for an empty group);
- ``chord(header, body)`` is ``chain(group(header), body)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from pydantic import BaseModel

from stem.canvas.errors import InvalidCanvas, NotSerializable
from stem.canvas.gcpause import paused_gc
from stem.canvas.options import DELAY_OPTIONS, JoinPolicy, check_options
from stem.canvas.primitives import Canvas, Chain, Chord, Group, Signature
from stem.canvas.spec import (
    CauseInput,
    GraphSpec,
    GroupSpec,
    ListInput,
    NodeId,
    NodeInput,
    NodeOptions,
    NodeRole,
    NodeSpec,
    NoInput,
    Template,
)
from stem.canvas.values import encode


@dataclass(frozen=True)
class _SubmitArgs:
    """Arguments given at submit; they reach roots the way a value would."""

    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]


@dataclass(frozen=True)
class _Inflow:
    """Inflow of a sub-canvas: its dependencies, input and inherited settings."""

    deps: tuple[NodeId, ...] = ()
    #: The part of ``deps`` whose failure was absorbed upstream.
    settled: tuple[NodeId, ...] = ()
    #: The nodes whose success starts the link being compiled, if any.
    triggers: tuple[NodeId, ...] = ()
    value: Template | _SubmitArgs | None = None
    join: JoinPolicy = "fail_fast"
    defaults: Mapping[str, Any] = field(default_factory=dict)
    #: Delay options for the nodes where this sub-canvas starts.
    delay: Mapping[str, Any] = field(default_factory=dict)
    side: bool = False
    role: NodeRole = "task"
    covers: tuple[NodeId, ...] = ()
    path: str = ""
    group: int | None = None
    #: How a group inside names its members in paths: ``group`` or ``chord.header``.
    member_label: str = "group"


@dataclass(frozen=True)
class _Outflow:
    """Outflow of a sub-canvas: the nodes that end it and its value template."""

    sinks: tuple[NodeId, ...]
    value: Template
    #: Nodes that end the sub-canvas but whose failure it absorbed: an
    #: ``all_settled`` join followed only by groups with no tasks.
    settled: tuple[NodeId, ...] = ()


def compile_canvas(
    canvas: Canvas,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    fill_options: Callable[[str, NodeOptions], NodeOptions] | None = None,
) -> GraphSpec:
    """Compile a canvas and the arguments it is submitted with into a graph spec.

    Args:
        canvas: the signature, chain, group or chord to compile.
        args: positional arguments given at submit, prepended like an upstream
            value to the first step of a chain, to every member of a group and
            to every header member of a chord.
        kwargs: keyword arguments given at submit, merged into the same
            signatures (the submitted value wins).
        options: options given at submit. ``countdown`` and ``eta`` delay the
            nodes where the run starts; the others are defaults for every node
            that does not set its own.
        fill_options: called with each node's task name and options, and
            returns the options the node gets, such as the task's defaults
            filled in. Filling them here rather than copying the nodes
            afterwards keeps one node object per task call in memory.

    Raises:
        NotSerializable: naming the place of a value that is not JSON.
        InvalidOption: naming the place of a bad option.
        InvalidCanvas: for a shape that cannot run, such as an empty chain.
    """
    if not isinstance(canvas, Canvas):
        raise InvalidCanvas(
            f"Cannot compile {canvas!r}, a {type(canvas).__name__}; pass a signature "
            "(task.s()), chain, group or chord."
        )
    with paused_gc():
        check_nesting(canvas)
    submitted = check_options(dict(options or {}), "apply_async()")
    delay = {k: v for k, v in submitted.items() if k in DELAY_OPTIONS}
    defaults = {k: v for k, v in submitted.items() if k not in DELAY_OPTIONS}
    value: _SubmitArgs | None = None
    if args or kwargs:
        value = _SubmitArgs(tuple(args), dict(kwargs or {}))
    compiler = _Compiler(fill_options)
    with paused_gc():
        outflow = compiler.visit(
            canvas, _Inflow(value=value, defaults=defaults, delay=delay)
        )
        return GraphSpec(
            nodes=compiler.nodes,
            output=outflow.value,
            sinks=list(outflow.sinks),
            settled=list(outflow.settled),
            groups=compiler.groups,
        )


#: Deepest nesting of canvases (chains, groups, chords, links and errbacks
#: inside one another) that compiles. The compiler, cloning and the spec's
#: value templates recurse once or twice per level, so this keeps them well
#: inside Python's default recursion limit of 1000, also in worker threads.
MAX_NESTING = 100


def check_nesting(canvas: Canvas) -> None:
    """Reject a canvas nested more than `MAX_NESTING` levels deep.

    It walks the canvas with a loop, so a canvas too deep for recursion gets
    this error rather than a RecursionError.

    Raises:
        InvalidCanvas: if the canvas is nested too deeply.
    """
    stack: list[tuple[Canvas, int]] = [(canvas, 1)]
    while stack:
        current, depth = stack.pop()
        if depth > MAX_NESTING:
            raise InvalidCanvas(
                f"The canvas is nested more than {MAX_NESTING} levels deep (chains, "
                "groups, chords, links and errbacks inside one another); build "
                "long sequences flat, as chain(steps), rather than nested."
            )
        inner = (*current.children(), *current.links, *current.errbacks)
        stack.extend((child, depth + 1) for child in inner)


class _Compiler:
    def __init__(
        self, fill_options: Callable[[str, NodeOptions], NodeOptions] | None = None
    ) -> None:
        self.fill_options = fill_options
        self.nodes: list[NodeSpec] = []
        self.groups: list[GroupSpec] = []
        # Most nodes of a large group share their options, and NodeOptions is
        # frozen, so one instance serves them all. The key includes each
        # value's type because True == 1 == 1.0 as dict keys.
        self._options: dict[tuple[tuple[str, type, Any], ...], NodeOptions] = {}
        self._fields_set = set(NodeSpec.model_fields)

    def node_options(self, options: Mapping[str, Any]) -> NodeOptions:
        key = tuple((name, type(value), value) for name, value in options.items())
        cached = self._options.get(key)
        if cached is None:
            cached = self._options[key] = NodeOptions(**options)
        return cached

    def visit(self, canvas: Canvas, inflow: _Inflow) -> _Outflow:
        own = check_options(canvas.options, inflow.path)
        if inflow.side and (canvas.links or canvas.errbacks) and not _has_task(canvas):
            # Its links would hang off the branch's trigger, not off the branch.
            raise InvalidCanvas(
                f"{inflow.path}: {canvas!r} has no task, so inside a link or "
                "errback it cannot carry links or errbacks of its own; attach "
                "them to a canvas that has a task."
            )
        if not isinstance(canvas, Signature):
            inflow = _with_own_options(inflow, own)
        if isinstance(canvas, Signature):
            outflow = self.visit_signature(canvas, inflow, own)
        elif isinstance(canvas, Chain):
            outflow = self.visit_chain(canvas, inflow)
        elif isinstance(canvas, Group):
            outflow = self.visit_group(canvas, inflow)
        elif isinstance(canvas, Chord):
            outflow = self.visit_chord(canvas, inflow)
        else:
            raise InvalidCanvas(
                f"{inflow.path or 'canvas'}: {type(canvas).__name__} is not a "
                "canvas type Stem can compile."
            )
        self.attach_links(canvas, inflow, outflow)
        return outflow

    def visit_signature(
        self, sig: Signature, inflow: _Inflow, own: Mapping[str, Any]
    ) -> _Outflow:
        node_id = str(len(self.nodes))
        args: list[Any] = list(sig.args)
        kwargs: dict[str, Any] = dict(sig.kwargs)
        template: Template = _NO_INPUT
        if isinstance(inflow.value, _SubmitArgs) and not sig.immutable:
            args = [*inflow.value.args, *args]
            kwargs = {**kwargs, **inflow.value.kwargs}
        elif inflow.value is not None and not isinstance(inflow.value, _SubmitArgs):
            template = _NO_INPUT if sig.immutable else inflow.value
        options = self.node_options({**inflow.defaults, **inflow.delay, **own})
        if self.fill_options is not None:
            options = self.fill_options(sig.task, options)
        # The compiler checked every value already (the signature, its
        # options and the encoded arguments), so the node is built without
        # pydantic's validation: 9.5 us per member of a 100,000-member chord
        # against 13 us (CPython 3.11, pydantic 2). It sets every field, so
        # all nodes share one set of field names instead of a 728-byte set
        # each.
        node = _unvalidated(
            NodeSpec,
            {
                "id": node_id,
                "task": sig.task,
                "args": encode_args(args, inflow.path),
                "kwargs": encode_kwargs(kwargs, inflow.path),
                "options": options,
                "immutable": sig.immutable,
                "deps": list(inflow.deps),
                "settled": list(inflow.settled),
                "triggers": [dep for dep in inflow.deps if dep in inflow.triggers],
                "input": template,
                "join": inflow.join,
                "role": inflow.role,
                "side": inflow.side,
                "covers": list(inflow.covers),
                "path": inflow.path,
                "group": inflow.group,
            },
            self._fields_set,
        )
        self.nodes.append(node)
        value = _unvalidated(
            NodeInput, {"kind": "node", "node": node_id}, _INPUT_FIELDS
        )
        return _Outflow(sinks=(node_id,), value=value)

    def visit_chain(self, chain: Chain, inflow: _Inflow) -> _Outflow:
        if not chain.tasks:
            raise InvalidCanvas(
                f"{inflow.path or 'chain()'}: the chain is empty; add a step, or "
                "leave the chain out."
            )
        outflow: _Outflow | None = None
        for i, step in enumerate(chain.tasks):
            step_inflow = _child(inflow, f"chain[{i}]")
            if outflow is not None:
                step_inflow = _after(step_inflow, outflow)
            outflow = self.visit(step, step_inflow)
        assert outflow is not None
        return outflow

    def visit_group(self, group: Group, inflow: _Inflow) -> _Outflow:
        group_id = len(self.groups)
        placeholder = GroupSpec(
            id=group_id, path=inflow.path, parent=inflow.group, members=[]
        )
        self.groups.append(placeholder)
        sinks: list[NodeId] = []
        settled: list[NodeId] = []
        values: list[Template] = []
        members: list[list[NodeId]] = []
        prefix = f"{inflow.path} > " if inflow.path else ""
        for i, member in enumerate(group.tasks):
            first = len(self.nodes)
            member_inflow = _evolve(
                inflow,
                path=f"{prefix}{inflow.member_label}[{i}]",
                group=group_id,
                member_label="group",
            )
            outflow = self.visit(member, member_inflow)
            members.append([node.id for node in self.nodes[first:]])
            sinks.extend(outflow.sinks)
            settled.extend(outflow.settled)
            values.append(outflow.value)
        self.groups[group_id] = placeholder.model_copy(update={"members": members})
        if not group.tasks:
            # An empty group ends as soon as its input is ready. After an
            # all_settled join, the failures of that input were absorbed.
            settled = list(inflow.settled)
            if inflow.join == "all_settled":
                settled = list(inflow.deps)
            sinks = [dep for dep in inflow.deps if dep not in settled]
        unique_sinks = _unique(sinks)
        # A node that one member settles but another member ends on is a
        # sink: that member, and so the group, fails with it.
        return _Outflow(
            sinks=unique_sinks,
            value=ListInput(items=values),
            settled=tuple(s for s in _unique(settled) if s not in unique_sinks),
        )

    def visit_chord(self, chord: Chord, inflow: _Inflow) -> _Outflow:
        if chord.body is None:
            raise InvalidCanvas(
                f"{inflow.path or 'chord'}: the chord has no body; pass one, as in "
                "chord(header, callback.s()), or submit the header as a group."
            )
        header = self.visit(chord.header, replace(inflow, member_label="chord.header"))
        body_inflow = _after(_child(inflow, "chord.body"), header, chord.join)
        return self.visit(chord.body, body_inflow)

    def attach_links(self, canvas: Canvas, inflow: _Inflow, outflow: _Outflow) -> None:
        """Compile the canvas's links and errbacks as side branches after it."""
        if not canvas.links and not canvas.errbacks:
            return
        side = replace(
            inflow, delay={}, side=True, join="fail_fast", member_label="group"
        )
        for i, callback in enumerate(canvas.links):
            self.visit(
                callback,
                replace(
                    _child(side, f"link[{i}]"),
                    deps=(*outflow.sinks, *outflow.settled),
                    settled=outflow.settled,
                    triggers=(*outflow.sinks, *outflow.settled),
                    value=outflow.value,
                    role="link",
                    covers=(),
                ),
            )
        # Inside a link, the link's own trigger can reach the sinks through an
        # empty group. Its failure skips the link, so it fires no errback here.
        covers = tuple(s for s in outflow.sinks if s not in inflow.triggers)
        for i, errback in enumerate(canvas.errbacks):
            self.visit(
                errback,
                replace(
                    _child(side, f"link_error[{i}]"),
                    deps=(),
                    settled=(),
                    triggers=(),
                    value=CauseInput(),
                    role="errback",
                    covers=covers,
                ),
            )


#: The template of a node without input. Templates are frozen, so nodes share it.
_NO_INPUT = NoInput()
#: The fields that `visit_signature` sets on a `NodeInput`.
_INPUT_FIELDS = {"node"}

_Model = TypeVar("_Model", bound=BaseModel)


def _unvalidated(
    model: type[_Model], fields: dict[str, Any], fields_set: set[str]
) -> _Model:
    """Build a frozen model from values the compiler checked, without validation.

    ``fields`` must give every field of ``model`` a value of its declared
    type. It sets what pydantic 2's validation sets on a model without extra
    fields or private attributes.
    """
    built = object.__new__(model)
    object.__setattr__(built, "__dict__", fields)
    object.__setattr__(built, "__pydantic_fields_set__", fields_set)
    object.__setattr__(built, "__pydantic_extra__", None)
    object.__setattr__(built, "__pydantic_private__", None)
    return built


def _evolve(inflow: _Inflow, **changes: Any) -> _Inflow:
    """Return a copy of ``inflow`` with ``changes``, as `dataclasses.replace` does.

    It copies the instance dict instead of calling ``__init__`` with every
    field, which is four times faster for a group's members. The changes
    must name fields of `_Inflow`; `_Inflow` has no ``__post_init__`` to skip.
    """
    copy = object.__new__(_Inflow)
    copy.__dict__.update(inflow.__dict__)
    copy.__dict__.update(changes)
    return copy


def _child(inflow: _Inflow, step: str) -> _Inflow:
    path = f"{inflow.path} > {step}" if inflow.path else step
    return replace(inflow, path=path)


def _after(
    inflow: _Inflow, upstream: _Outflow, join: JoinPolicy = "fail_fast"
) -> _Inflow:
    """Feed what ``upstream`` produced to the next step of a sequence.

    ``inflow`` is the next step's inflow as if it came first. If the upstream
    step added no node (an empty group), the sequence still starts at the next
    step. That step then waits for the same nodes and keeps the delay, join
    policy and link or errback role meant for the start.
    """
    deps = (*upstream.sinks, *upstream.settled)
    if set(deps) == set(inflow.deps):
        return replace(inflow, value=upstream.value, settled=upstream.settled)
    return replace(
        inflow,
        deps=deps,
        settled=upstream.settled,
        value=upstream.value,
        join=join,
        delay={},
        role="task",
        covers=(),
    )


def _with_own_options(inflow: _Inflow, own: Mapping[str, Any]) -> _Inflow:
    """Apply a composite's own options: delays to its start, the rest as defaults."""
    if not own:
        return inflow
    delay = {k: v for k, v in own.items() if k in DELAY_OPTIONS}
    defaults = {k: v for k, v in own.items() if k not in DELAY_OPTIONS}
    return replace(
        inflow,
        defaults={**inflow.defaults, **defaults},
        delay={**inflow.delay, **delay},
    )


def encode_args(args: Sequence[Any], path: str = "") -> list[Any]:
    """Encode a node's positional arguments as compilation stores them.

    Raises:
        NotSerializable: naming ``path > args[i]`` of the first value that
            is not JSON.
    """
    prefix = f"{path} > " if path else ""
    return [encode(value, f"{prefix}args[{i}]") for i, value in enumerate(args)]


def encode_kwargs(kwargs: Mapping[str, Any], path: str = "") -> dict[str, Any]:
    """Encode a node's keyword arguments as compilation stores them.

    Raises:
        NotSerializable: naming ``path > kwargs`` for a keyword that is not
            an identifier, or ``path > kwargs['name']`` for a value that is
            not JSON.
    """
    prefix = f"{path} > " if path else ""
    encoded: dict[str, Any] = {}
    for key, value in kwargs.items():
        if type(key) is not str or not key.isidentifier():
            raise NotSerializable(
                f"{prefix}kwargs",
                f"the keyword {key!r} is not a valid Python identifier; pass "
                "keyword arguments by name",
            )
        encoded[key] = encode(value, f"{prefix}kwargs[{key!r}]")
    return encoded


def _has_task(canvas: Canvas) -> bool:
    """Tell whether a canvas contains a signature, not counting its callbacks."""
    if isinstance(canvas, Signature):
        return True
    return any(_has_task(child) for child in canvas.children())


def _unique(ids: Sequence[NodeId]) -> tuple[NodeId, ...]:
    return tuple(dict.fromkeys(ids))
