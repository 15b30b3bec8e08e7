"""The graph spec: a compiled canvas as nodes, ordered edges and input templates.

A `GraphSpec` is plain data. It round-trips exactly through JSON, names no
Python object, and is what a driver stores for a run. Node ids are strings of
dot-separated integers: compilation numbers nodes ``"0"``, ``"1"``, ... in
depth-first declaration order, and a node spliced in at run time in place of
node ``R`` gets ``"R.0"``, ``"R.1"``, ... Compare ids with `node_order`, which
sorts ``"R.k"`` right after ``R``.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Iterator
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from stem.canvas.gcpause import paused_gc
from stem.canvas.options import JoinPolicy

if TYPE_CHECKING:
    import networkx as nx

NodeId = str
NodeRole = Literal["task", "link", "errback"]

SPEC_VERSION: Literal[1] = 1

# Below these sizes a spec is parsed or indexed without pausing the cyclic
# collector, because it allocates too few objects for a collection to matter.
# The pause took 1.2 us of the 4.9 us that `GraphSpec.from_json` took for a
# one-node spec (CPython 3.11), and a worker parses one spec per run.
_SMALL_SPEC_CHARS = 4096
_SMALL_SPEC_NODES = 64
# Up to this many nodes, `GraphSpec.node` scans the list instead of indexing it.
_SCANNED_NODES = 8


def node_order(node_id: NodeId) -> tuple[int, ...]:
    """Return the sort key of a node id: declaration order, splices after their node."""
    return tuple(int(part) for part in node_id.split("."))


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _TemplatePart(_Frozen):
    kind: str

    @model_serializer(mode="wrap")
    def _keep_kind(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # The tag must survive exclude_defaults, or the union cannot be parsed.
        data: dict[str, Any] = handler(self)
        data["kind"] = self.kind
        return data


class NoInput(_TemplatePart):
    """The node gets no upstream value: it is a root, or it is immutable."""

    kind: Literal["none"] = "none"


class NodeInput(_TemplatePart):
    """The upstream value is one node's value."""

    kind: Literal["node"] = "node"
    node: NodeId


class ListInput(_TemplatePart):
    """The upstream value is a list built from other templates (a group's value)."""

    kind: Literal["list"] = "list"
    items: list[Template]


class CauseInput(_TemplatePart):
    """The upstream value is the task id of the failed task (errbacks only)."""

    kind: Literal["cause"] = "cause"


Template = Annotated[
    NoInput | NodeInput | ListInput | CauseInput, Field(discriminator="kind")
]
ListInput.model_rebuild()


def template_nodes(template: Template) -> Iterator[NodeId]:
    """Yield the node ids a template reads, in list order."""
    if isinstance(template, NodeInput):
        yield template.node
    elif isinstance(template, ListInput):
        for item in template.items:
            yield from template_nodes(item)


class NodeOptions(_Frozen):
    """Execution options of one node after defaults were applied.

    Unset options (``None``) take the task's or the app's default at run time.
    Durations are in seconds; ``eta`` is an ISO 8601 time in UTC.
    """

    queue: str | None = None
    priority: int | None = None
    countdown: float | None = None
    eta: str | None = None
    max_retries: int | None = None
    default_retry_delay: float | None = None
    retry_backoff: bool | float | None = None
    retry_backoff_max: float | None = None
    retry_jitter: bool | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    ignore_result: bool | None = None


# Defaults are shared instances rather than factories, which is safe because
# the models are frozen. With factories, ``to_json`` (``exclude_defaults``)
# and parsing called a factory per node and field, about 2 us each
# (pydantic 2.13, CPython 3.11).
_NO_INPUT = NoInput()
_NO_OPTIONS = NodeOptions()


class NodeSpec(_Frozen):
    """One task call in the graph.

    Invariant: every id in ``deps`` and in ``input`` is a node of the same
    spec, and every id that ``input`` reads or ``settled`` lists is also in
    ``deps``.
    """

    id: NodeId
    task: str
    #: Positional arguments in the value codec's JSON form; the upstream
    #: value, built by ``input``, goes in front of them.
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    options: NodeOptions = Field(default=_NO_OPTIONS)
    immutable: bool = False
    #: Nodes that must end before this one runs, in declaration order.
    deps: list[NodeId] = Field(default_factory=list)
    #: Dependencies whose failure an ``all_settled`` join upstream already
    #: absorbed: this node waits for them to end but is not cancelled by them.
    #: They reach it through a group with no tasks, such as an empty chord body.
    settled: list[NodeId] = Field(default_factory=list)
    #: Dependencies from outside the link this node belongs to, whose success
    #: is the link's condition: if one does not succeed, this node is skipped.
    #: They are all the deps of a link's first nodes, and reach a later node of
    #: the link through a group with no tasks, such as an empty header member.
    triggers: list[NodeId] = Field(default_factory=list)
    input: Template = Field(default=_NO_INPUT)
    #: How a failed dependency affects this node: ``fail_fast`` cancels it,
    #: ``all_settled`` runs it with an error record in the failed value's place.
    join: JoinPolicy = "fail_fast"
    #: ``link`` and ``errback`` mark where a side branch starts.
    role: NodeRole = "task"
    #: True for every node of a link or errback branch: its outcome never
    #: decides the run's outcome, and nothing on the main path waits for it.
    side: bool = False
    #: For an errback node: the nodes whose unsuccessful end fires it.
    covers: list[NodeId] = Field(default_factory=list)
    #: Where the signature sits in the canvas, as in error messages.
    path: str = ""
    #: The innermost group this node belongs to, if any.
    group: int | None = None


class GroupSpec(_Frozen):
    """A group of the canvas, kept for drawing: large groups show as one row."""

    id: int
    path: str
    parent: int | None = None
    #: Node ids of each member, one list per member in declaration order.
    members: list[list[NodeId]]


class GraphSpec(_Frozen):
    """A compiled canvas: everything a driver needs to run it, as plain data."""

    version: Literal[1] = SPEC_VERSION
    nodes: list[NodeSpec]
    #: How the run's value is built from node values.
    output: Template = Field(default=_NO_INPUT)
    #: Main-path nodes whose success means the canvas succeeded.
    sinks: list[NodeId] = Field(default_factory=list)
    #: Main-path nodes that end the canvas but whose failure an
    #: ``all_settled`` join absorbed, so their outcome does not decide the run.
    settled: list[NodeId] = Field(default_factory=list)
    groups: list[GroupSpec] = Field(default_factory=list)

    @cached_property
    def by_id(self) -> dict[NodeId, NodeSpec]:
        """Nodes keyed by id."""
        if len(self.nodes) <= _SMALL_SPEC_NODES:
            return {node.id: node for node in self.nodes}
        with paused_gc():
            return {node.id: node for node in self.nodes}

    def node(self, node_id: NodeId) -> NodeSpec:
        """Return one node by id; raises `KeyError` if it is not in the spec."""
        if len(self.nodes) <= _SCANNED_NODES:
            # A worker reads one node of each one-node run once, and a scan
            # costs 0.2 us where building `by_id` costs 1.2 us (CPython 3.11).
            for node in self.nodes:
                if node.id == node_id:
                    return node
            raise KeyError(node_id)
        return self.by_id[node_id]

    @cached_property
    def dependents(self) -> dict[NodeId, list[NodeId]]:
        """For each node, the nodes that list it in ``deps``, in id order."""
        with paused_gc():
            result: dict[NodeId, list[NodeId]] = {node.id: [] for node in self.nodes}
            for node in self.nodes:
                for dep in node.deps:
                    result[dep].append(node.id)
            return result

    @cached_property
    def readers(self) -> dict[NodeId, list[NodeId]]:
        """For each node, the nodes whose ``input`` reads its value, in spec order."""
        with paused_gc():
            result: dict[NodeId, list[NodeId]] = {node.id: [] for node in self.nodes}
            for node in self.nodes:
                for read in dict.fromkeys(template_nodes(node.input)):
                    result[read].append(node.id)
            return result

    @cached_property
    def errbacks_covering(self) -> dict[NodeId, list[NodeId]]:
        """For each node, the errback nodes that cover it."""
        with paused_gc():
            result: dict[NodeId, list[NodeId]] = {node.id: [] for node in self.nodes}
            for node in self.nodes:
                for covered in node.covers:
                    result[covered].append(node.id)
            return result

    def with_root_args(
        self, args: list[Any], kwargs: dict[str, Any] | None = None
    ) -> GraphSpec:
        """Return a copy of this spec whose first node has ``args`` and ``kwargs``.

        They must be in the value codec's JSON form already, because the
        copy is not validated. ``kwargs`` None keeps the node's own. Every
        field and node other than the first node and the node list is the
        same object as in this spec, which lets `same_layout` tell that two
        specs share their layout.
        """
        root = self.nodes[0]
        changes: dict[str, Any] = {"args": args}
        if kwargs is not None:
            changes["kwargs"] = kwargs
        nodes = [_copy_with(root, changes), *self.nodes[1:]]
        return _copy_with(self, {"nodes": nodes})

    def to_json(self) -> str:
        """Serialise to compact JSON; `from_json` gives back an equal spec."""
        with paused_gc():
            return self.model_dump_json(exclude_defaults=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> GraphSpec:
        """Parse a spec written by `to_json` (or by any JSON encoder)."""
        if len(text) <= _SMALL_SPEC_CHARS:
            return cls.model_validate_json(text)
        with paused_gc():
            return cls.model_validate_json(text)

    def to_networkx(self) -> nx.MultiDiGraph[NodeId]:
        """Build a networkx view for analysis, layout and drawing.

        Each node carries its `NodeSpec` as the ``spec`` attribute. Edges have
        a ``kind``: ``dep`` from a dependency to its dependent (with the
        dependent's ``join`` policy and the dependency's ``position`` in its
        ``deps``), ``covers`` from a covered node to its errback.
        """
        import networkx as nx

        graph: nx.MultiDiGraph[NodeId] = nx.MultiDiGraph()
        for node in self.nodes:
            graph.add_node(node.id, spec=node)
        for node in self.nodes:
            for position, dep in enumerate(node.deps):
                graph.add_edge(
                    dep, node.id, kind="dep", join=node.join, position=position
                )
            for covered in node.covers:
                graph.add_edge(covered, node.id, kind="covers")
        return graph


_Model = TypeVar("_Model", bound=BaseModel)


def _copy_with(model: _Model, changes: dict[str, Any]) -> _Model:
    """Return a shallow copy of a model with ``changes`` applied, not validated.

    It sets what ``model_copy(update=changes)`` sets (pydantic 2), in a
    third of the time, and leaves out a spec's cached properties, which
    describe the original's nodes. The copy shares the original's set of
    field names when it already names every change.
    """
    copy = object.__new__(type(model))
    fields = {**model.__dict__, **changes}
    for name in _CACHED_PROPERTIES:
        fields.pop(name, None)
    fields_set = model.__pydantic_fields_set__
    if not fields_set.issuperset(changes):
        fields_set = fields_set | changes.keys()
    object.__setattr__(copy, "__dict__", fields)
    object.__setattr__(copy, "__pydantic_fields_set__", fields_set)
    # Neither model allows extra fields or has private attributes.
    object.__setattr__(copy, "__pydantic_extra__", None)
    object.__setattr__(copy, "__pydantic_private__", None)
    return copy


_CACHED_PROPERTIES = tuple(
    name
    for name, value in vars(GraphSpec).items()
    if isinstance(value, cached_property)
)
_ROOT_FIELDS = operator.itemgetter(
    *(name for name in NodeSpec.model_fields if name not in ("args", "kwargs"))
)
_SPEC_FIELDS = operator.itemgetter(
    *(name for name in GraphSpec.model_fields if name != "nodes")
)


def same_layout(first: GraphSpec, second: GraphSpec) -> bool:
    """Tell whether two specs can differ only in their first node's arguments.

    True when every other field of the specs and of the first node, and
    every other node, is the same object in both, as in the copies that
    `GraphSpec.with_root_args` makes. Specs compiled apart give False even
    when equal, so the test costs one identity check per field and node,
    never a comparison of values.
    """
    if first is second:
        return True
    if not all(
        map(operator.is_, _SPEC_FIELDS(first.__dict__), _SPEC_FIELDS(second.__dict__))
    ):
        return False
    nodes_a, nodes_b = first.nodes, second.nodes
    if len(nodes_a) != len(nodes_b) or not nodes_a:
        return False
    root_a, root_b = nodes_a[0].__dict__, nodes_b[0].__dict__
    if not all(map(operator.is_, _ROOT_FIELDS(root_a), _ROOT_FIELDS(root_b))):
        return False
    return all(map(operator.is_, nodes_a[1:], nodes_b[1:]))


#: Stand-ins for the first node's arguments while `SpecText` cuts a spec's
#: JSON text around them. The NUL characters keep them apart from any value
#: a caller passes, and the text is checked to contain each one once.
_ARGS_MARK = ["\0stem:args"]
_KWARGS_MARK = {"\0stem:kwargs": None}
_ARGS_ENCODER = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


_ARGS_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


class SpecText:
    """The JSON text of the specs that share one layout, cut around the arguments.

    Specs that `same_layout` matches differ only in their first node's
    ``args`` and ``kwargs``. Their text is the same prefix, middle and
    suffix around those two values, so `write` and `read` serialise and
    parse the two values alone instead of the whole spec.

    Raises:
        ValueError: if the spec has no nodes, or its text contains a stand-in
            of the arguments more than once.
    """

    def __init__(self, spec: GraphSpec) -> None:
        if not spec.nodes:
            raise ValueError("A spec without nodes has no first node's arguments.")
        self.spec = spec
        args_mark = _mark_json(_ARGS_MARK)
        kwargs_mark = _mark_json(_KWARGS_MARK)
        marked = spec.with_root_args(_ARGS_MARK, _KWARGS_MARK).to_json()
        if marked.count(args_mark) != 1 or marked.count(kwargs_mark) != 1:
            raise ValueError(
                "The spec's JSON text contains a stand-in of the first node's "
                "arguments more than once, so it cannot be cut around them."
            )
        self.prefix, rest = marked.split(args_mark)
        self.middle, self.suffix = rest.split(kwargs_mark)
        # to_json leaves out empty arguments, so a text that it wrote may
        # lack the kwargs, or both.
        args_only = spec.with_root_args(_ARGS_MARK, {}).to_json()
        self.args_suffix = args_only.split(args_mark)[1]
        # `read` returns this one spec for every text without arguments,
        # because a frozen spec can be shared. A read of a one-node run's text
        # took 3.1 us with a copy per text and 0.3 us without (CPython 3.11).
        self._without_arguments = spec.with_root_args([], {})
        self.empty = self._without_arguments.to_json()

    def write(self, spec: GraphSpec) -> str:
        """Return the JSON text of a spec with this layout, as `GraphSpec.to_json`.

        The text differs from ``to_json``'s in form only: it always has the
        first node's ``args`` and ``kwargs``, even when they are empty.
        """
        root = spec.nodes[0]
        # Calls without arguments are common, and the encoder costs about
        # 1 us a call (CPython 3.11).
        args = _ARGS_ENCODER.encode(root.args) if root.args else "[]"
        kwargs = _ARGS_ENCODER.encode(root.kwargs) if root.kwargs else "{}"
        return "".join((self.prefix, args, self.middle, kwargs, self.suffix))

    def read(self, text: str) -> GraphSpec | None:
        """Parse a text of this layout; None for a text of any other.

        It reads what `write` writes, and what `GraphSpec.to_json` writes
        unless only the first node's ``args`` are empty. The arguments are
        checked to be a JSON array and a JSON object.
        """
        if not text.startswith(self.prefix):
            return self._without_arguments if text == self.empty else None
        try:
            args, end = _ARGS_DECODER.raw_decode(text, len(self.prefix))
            kwargs: Any = {}
            if text.startswith(self.middle, end):
                kwargs, end = _ARGS_DECODER.raw_decode(text, end + len(self.middle))
                suffix = self.suffix
            else:
                suffix = self.args_suffix
        except ValueError:
            return None
        if len(text) - end != len(suffix) or not text.endswith(suffix):
            return None
        if type(args) is not list or type(kwargs) is not dict:
            return None
        if not args and not kwargs:
            return self._without_arguments
        return self.spec.with_root_args(args, kwargs)


def _mark_json(mark: object) -> str:
    """Return a stand-in as GraphSpec.to_json writes it, NUL escaped."""
    return _ARGS_ENCODER.encode(mark).replace("\0", "\\u0000")
