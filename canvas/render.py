"""Drawing of a graph spec: a layered DAG and a tree for terminals, DOT, Mermaid, JSON.

Every function takes a `GraphSpec` and, optionally, what is known about a run
of it: a `NodeView` per node id. A node without a view is drawn as
``pending``, the state of every node before its run starts.

The terminal views (`render_dag`, `render_tree`) draw a large group whose
members are single signatures of one task as one counted row, so a
100,000-member chord header fits on a screen. Each function makes a few passes
over the nodes and edges and at most one sort, with no work per pair of
nodes. The text formats (`to_dot`,
`to_mermaid`, `to_json`) list every node, because tools read them.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from itertools import groupby
from typing import Any, NamedTuple

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.padding import Padding
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from stem.canvas.errors import InvalidCanvas
from stem.canvas.spec import GraphSpec, GroupSpec, NodeId, NodeSpec, node_order

NODE_STATES: tuple[str, ...] = (
    "pending",
    "queued",
    "running",
    "retrying",
    "succeeded",
    "failed",
    "cancelled",
    "skipped",
)


class StateStyle(NamedTuple):
    """Terminal style of a node state: a colour and a symbol."""

    #: A rich colour name.
    colour: str
    #: One character that identifies the state without colour.
    symbol: str


STATE_STYLES: Mapping[str, StateStyle] = {
    "pending": StateStyle("grey62", "·"),
    "queued": StateStyle("cyan", "◷"),
    "running": StateStyle("blue", "▶"),
    "retrying": StateStyle("yellow", "↻"),
    "succeeded": StateStyle("green", "✓"),
    "failed": StateStyle("red", "✗"),
    "cancelled": StateStyle("magenta", "⊘"),
    "skipped": StateStyle("grey50", "\N{MINUS SIGN}"),
}

# Fill colours for DOT and Mermaid, where a light fill keeps black text readable.
_FILL_COLOURS: Mapping[str, str] = {
    "pending": "#f1f3f5",
    "queued": "#d0ebff",
    "running": "#a5d8ff",
    "retrying": "#ffec99",
    "succeeded": "#b2f2bb",
    "failed": "#ffa8a8",
    "cancelled": "#e5dbff",
    "skipped": "#dee2e6",
}
_FAILURE_EDGE_COLOUR = "#c92a2a"

# The state a collapsed row shows: the first of these that any member is in,
# so one failed or running member is not hidden behind many succeeded ones.
_ATTENTION_ORDER: tuple[str, ...] = (
    "failed",
    "retrying",
    "running",
    "queued",
    "pending",
    "cancelled",
    "skipped",
    "succeeded",
)

# Spelled by name because they look like ASCII characters (ruff RUF001).
_RANGE_DASH = "\N{EN DASH}"
_TIMES = "\N{MULTIPLICATION SIGN}"

# How many upstream ids a DAG row lists before it only counts the rest.
_MAX_LISTED_IDS = 5

# Maximum widths of the DAG's id, task and facts columns. Longer content wraps.
_MAX_ID_WIDTH = 16
_MAX_TASK_WIDTH = 28
_MAX_FACTS_WIDTH = 24
# Layout of a DAG row: indent, then columns separated by gaps. Columns are only
# lined up across layers when that leaves the upstream column this much room.
_INDENT = 2
_GAP = 2
_MIN_UPSTREAM_WIDTH = 16


@dataclass(frozen=True, slots=True)
class NodeView:
    """Facts about one node in a run, for drawing.

    Raises:
        ValueError: if ``state`` is not one of `NODE_STATES`, ``duration_s``
            is negative or not finite, or ``attempts`` is negative.
    """

    state: str
    #: How long the node ran, or has run so far, in seconds.
    duration_s: float | None = None
    #: Attempts started so far, or 0 when not known.
    attempts: int = 0
    #: The failed node that fired this errback or cancelled this node, if known.
    cause: NodeId | None = None

    def __post_init__(self) -> None:
        # NOTE: these are plain ValueErrors because the StemError tree has no
        # class for invalid drawing input yet.
        if self.state not in STATE_STYLES:
            raise ValueError(
                f"Node state {self.state!r} is invalid. Pass one of "
                f"{', '.join(NODE_STATES)}."
            )
        duration = self.duration_s
        if duration is not None and not (math.isfinite(duration) and duration >= 0):
            raise ValueError(
                f"Node duration {duration!r} is invalid. Pass a finite number of "
                "seconds that is 0 or more, or None."
            )
        if self.attempts < 0:
            raise ValueError(
                f"Attempt count {self.attempts!r} is invalid. Pass 0 or more."
            )


_PENDING = NodeView("pending")


def _view_of(views: Mapping[str, NodeView] | None, node_id: NodeId) -> NodeView:
    if not views:
        return _PENDING
    return views.get(node_id, _PENDING)


def _format_duration(seconds: float) -> str:
    """Format a duration in at most six characters: ``12ms``, ``3.4s``, ``2m05s``."""
    milliseconds = round(seconds * 1000)
    if milliseconds < 1:
        return "<1ms"
    if milliseconds < 1000:
        return f"{milliseconds}ms"
    if round(seconds, 1) < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _view_facts(view: NodeView) -> str:
    """Describe a view's duration, and its attempt count when above one."""
    parts: list[str] = []
    if view.duration_s is not None:
        parts.append(_format_duration(view.duration_s))
    if view.attempts > 1:
        parts.append(f"{view.attempts} attempts")
    return "  ".join(parts)


# -- layering and collapsing ---------------------------------------------------


def _node_depths(spec: GraphSpec) -> dict[NodeId, int]:
    """Compute each node's layer: the length of the longest path to it from a root.

    Paths follow dependency edges and, for an errback, the edges from the
    nodes it covers, so an errback sits after what it guards. A compiled spec
    lists every node after its upstream nodes, so one pass in list order
    usually does. Otherwise the nodes are sorted topologically first.

    Raises:
        InvalidCanvas: if the edges form a cycle.
    """
    depths: dict[NodeId, int] = {}
    for node in spec.nodes:
        deps_depth = _max_depth(node.deps, depths)
        covers_depth = _max_depth(node.covers, depths)
        if deps_depth is None or covers_depth is None:
            return _sorted_node_depths(spec)
        depths[node.id] = 1 + max(deps_depth, covers_depth)
    return depths


def _max_depth(node_ids: Sequence[NodeId], depths: Mapping[NodeId, int]) -> int | None:
    """Return the maximum depth of some nodes: -1 for none, None if one is missing."""
    deepest = -1
    for node_id in node_ids:
        depth = depths.get(node_id)
        if depth is None:
            return None
        deepest = max(deepest, depth)
    return deepest


def _sorted_node_depths(spec: GraphSpec) -> dict[NodeId, int]:
    """Compute node depths in topological order, ignoring ids not in the spec."""
    upstream = {node.id: [*node.deps, *node.covers] for node in spec.nodes}
    try:
        order = list(TopologicalSorter(upstream).static_order())
    except CycleError as err:
        cycle = " -> ".join(str(node_id) for node_id in err.args[1])
        raise InvalidCanvas(
            f"The graph spec has a cycle: {cycle}. A compiled spec never has "
            "one, so this spec was damaged or built by hand. Compile the canvas "
            "again."
        ) from err
    depths: dict[NodeId, int] = {}
    for node_id in order:
        if node_id in upstream:
            above = [depths[up] for up in upstream[node_id] if up in depths]
            depths[node_id] = 1 + max(above, default=-1)
    return depths


@dataclass(frozen=True)
class _CollapsedGroup:
    """A group drawn as one counted row, with its members' ids in order."""

    group: GroupSpec
    task: str
    member_ids: list[NodeId]

    @property
    def label(self) -> str:
        return f"{self.member_ids[0]}{_RANGE_DASH}{self.member_ids[-1]}"


def _same_shape(node: NodeSpec, other: NodeSpec) -> bool:
    """Tell whether two group members can share one row."""
    # Compare field by field, because a tuple per member allocates enough to
    # trigger full garbage collections, and each walks every object of the spec.
    return (
        node.task == other.task
        and node.role == other.role
        and node.side == other.side
        and node.deps == other.deps
        and node.covers == other.covers
    )


def _collapse_target(
    spec: GraphSpec, group: GroupSpec, collapse_over: int
) -> _CollapsedGroup | None:
    """Return the group as a collapsed row if it is large and uniform enough."""
    if len(group.members) <= max(collapse_over, 0):
        return None
    if any(len(member) != 1 for member in group.members):
        return None
    member_ids = [member[0] for member in group.members]
    first = spec.node(member_ids[0])
    if not all(_same_shape(spec.node(node_id), first) for node_id in member_ids):
        return None
    return _CollapsedGroup(group=group, task=first.task, member_ids=member_ids)


@dataclass(frozen=True)
class _Collapsing:
    """The collapsed groups of a spec, indexed by member id."""

    #: The collapsed group that each member belongs to.
    group_of: dict[NodeId, _CollapsedGroup] = field(default_factory=dict)
    #: The collapsed group that each first member stands for.
    first_of: dict[NodeId, _CollapsedGroup] = field(default_factory=dict)

    @classmethod
    def of(cls, spec: GraphSpec, collapse_over: int, expand: bool) -> _Collapsing:
        collapsing = cls()
        if expand:
            return collapsing
        for group in spec.groups:
            target = _collapse_target(spec, group, collapse_over)
            if target is None:
                continue
            collapsing.first_of[target.member_ids[0]] = target
            for node_id in target.member_ids:
                collapsing.group_of[node_id] = target
        return collapsing

    def label(self, node_id: NodeId) -> str:
        """Return how a row refers to a node: its id, or its group's id range."""
        target = self.group_of.get(node_id)
        return node_id if target is None else target.label


def _count_states(
    views: Mapping[str, NodeView] | None, node_ids: Iterable[NodeId]
) -> Counter[str]:
    return Counter(_view_of(views, node_id).state for node_id in node_ids)


def _headline_state(counts: Counter[str]) -> str:
    return next(state for state in _ATTENTION_ORDER if counts[state])


def _counts_text(counts: Counter[str], *, with_names: bool = False) -> Text:
    """Write state counts in `NODE_STATES` order: ``998 ✓  2 ✗``, or with names."""
    parts: list[Text] = []
    for state in NODE_STATES:
        count = counts[state]
        if count:
            colour, symbol = STATE_STYLES[state]
            words = f"{symbol} {state} {count}" if with_names else f"{count} {symbol}"
            parts.append(Text(words, style=colour))
    return Text("  ").join(parts)


# -- the layered DAG -----------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    """One line of the layered DAG: a node, or a collapsed group."""

    order: tuple[int, ...]
    depth: int
    side: bool
    label: str
    task: Text
    state: str
    facts: Text
    upstream: str


def _task_text(task: str, role: str, count: int | None = None) -> Text:
    text = Text(task)
    if count is not None:
        text.append(f" {_TIMES}{count}", style="bold")
    if role != "task":
        text.append(f" ({role})", style="italic")
    return text


def _list_ids(node_ids: Sequence[NodeId], collapsing: _Collapsing) -> str:
    labels = list(dict.fromkeys(collapsing.label(node_id) for node_id in node_ids))
    if len(labels) <= _MAX_LISTED_IDS:
        return ", ".join(labels)
    hidden = len(labels) - _MAX_LISTED_IDS
    return f"{', '.join(labels[:_MAX_LISTED_IDS])}, … +{hidden} more"


def _upstream_text(node: NodeSpec, view: NodeView, collapsing: _Collapsing) -> str:
    """Describe how a node connects to the layers above it.

    An errback covers the last nodes of its canvas, and a failure upstream
    of them fires it too, because it cancels them. So an errback that fired
    names the node whose failure fired it, and one that did not names the
    covered nodes "or upstream".
    """
    parts: list[str] = []
    if node.deps:
        parts.append(f"← {_list_ids(node.deps, collapsing)}")
    if node.covers and view.cause is not None:
        parts.append(f"fired by failure of {collapsing.label(view.cause)}")
    elif node.covers:
        parts.append(f"on failure of {_list_ids(node.covers, collapsing)} or upstream")
    return "; ".join(parts)


def _node_row(
    node: NodeSpec, view: NodeView, depth: int, collapsing: _Collapsing
) -> _Row:
    return _Row(
        order=node_order(node.id),
        depth=depth,
        side=node.side,
        label=node.id,
        task=_task_text(node.task, node.role),
        state=view.state,
        facts=Text(_view_facts(view)),
        upstream=_upstream_text(node, view, collapsing),
    )


def _group_row(
    first: NodeSpec,
    target: _CollapsedGroup,
    views: Mapping[str, NodeView] | None,
    depth: int,
    collapsing: _Collapsing,
) -> _Row:
    counts = _count_states(views, target.member_ids)
    return _Row(
        order=node_order(first.id),
        depth=depth,
        side=first.side,
        label=target.label,
        task=_task_text(target.task, first.role, len(target.member_ids)),
        state=_headline_state(counts),
        facts=_counts_text(counts),
        upstream=_upstream_text(first, _PENDING, collapsing),
    )


def _dag_rows(
    spec: GraphSpec,
    views: Mapping[str, NodeView] | None,
    depths: Mapping[NodeId, int],
    collapsing: _Collapsing,
) -> list[_Row]:
    rows: list[_Row] = []
    for node in spec.nodes:
        target = collapsing.first_of.get(node.id)
        depth = depths[node.id]
        if target is not None:
            rows.append(_group_row(node, target, views, depth, collapsing))
        elif node.id not in collapsing.group_of:
            rows.append(_node_row(node, _view_of(views, node.id), depth, collapsing))
    rows.sort(key=lambda row: (row.side, row.depth, row.order))
    return rows


def _layers(rows: Sequence[_Row]) -> Iterator[tuple[str, list[_Row]]]:
    """Split sorted rows into layers, main path first, each with its heading."""
    for (side, depth), layer in groupby(rows, key=lambda row: (row.side, row.depth)):
        heading = f"layer {depth}, side branches" if side else f"layer {depth}"
        yield heading, list(layer)


@dataclass(frozen=True)
class _ColumnWidths:
    """Column widths shared by every layer's table, so columns line up.

    None lets a column take the width of its content.
    """

    label: int | None = None
    task: int | None = None
    facts: int | None = None

    @classmethod
    def of(cls, rows: Sequence[_Row]) -> _ColumnWidths:
        return cls(
            label=min(max(len(row.label) for row in rows), _MAX_ID_WIDTH),
            task=min(max(row.task.cell_len for row in rows), _MAX_TASK_WIDTH),
            facts=min(max(row.facts.cell_len for row in rows), _MAX_FACTS_WIDTH),
        )

    def total(self) -> int:
        """Return the width a row takes before its upstream column."""
        columns = (self.label, self.task, self.facts)
        return _INDENT + 1 + sum(width or 0 for width in columns) + 4 * _GAP


@dataclass(frozen=True)
class _LayerTable:
    """One layer's rows, lined up with the other layers where the console has room."""

    rows: Sequence[_Row]
    widths: _ColumnWidths

    def __rich_console__(
        self, console: Console, options: ConsoleOptions
    ) -> RenderResult:
        widths = self.widths
        if widths.total() + _MIN_UPSTREAM_WIDTH > options.max_width:
            # Too narrow to line up: each column takes its content's width, and
            # rich shrinks the widest ones until the row fits.
            widths = _ColumnWidths()
        table = Table.grid(padding=(0, _GAP))
        table.add_column(width=1, no_wrap=True)
        table.add_column(justify="right", width=widths.label, overflow="fold")
        table.add_column(width=widths.task, overflow="fold")
        table.add_column(width=widths.facts, overflow="fold")
        table.add_column(overflow="fold")
        for row in self.rows:
            colour, symbol = STATE_STYLES[row.state]
            table.add_row(
                Text(symbol, style=colour),
                row.label,
                row.task,
                row.facts,
                Text(row.upstream, style="dim"),
            )
        yield Padding(table, (0, 0, 0, _INDENT), expand=False)


def _summary(
    spec: GraphSpec,
    views: Mapping[str, NodeView] | None,
    rows: Sequence[_Row],
) -> Text:
    main_layers = len({row.depth for row in rows if not row.side})
    side_nodes = sum(1 for node in spec.nodes if node.side)
    main_nodes = len(spec.nodes) - side_nodes
    if side_nodes:
        text = Text(
            f"{len(spec.nodes)} nodes: {main_nodes} on the main path in "
            f"{main_layers} layers, {side_nodes} on side branches"
        )
    else:
        text = Text(f"{len(spec.nodes)} nodes in {main_layers} layers")
    text.append("\n")
    text.append_text(
        _counts_text(_count_states(views, (n.id for n in spec.nodes)), with_names=True)
    )
    return text


def render_dag(
    spec: GraphSpec,
    views: Mapping[str, NodeView] | None = None,
    *,
    collapse_over: int = 8,
    expand: bool = False,
    title: str | None = None,
) -> RenderableType:
    """Draw a spec as a layered DAG for a terminal, coloured by node state.

    A node's layer is the length of the longest dependency path from a root
    to it. Main-path layers come first, then the side branches (links and
    errbacks), which nothing on the main path waits for. Each row shows the
    state symbol, node id, task name, duration and attempt count (when more
    than one), then its upstream nodes (``← 1, 2``) or, for an errback, the
    nodes whose failure fires it. Each symbol reads without colour, and rows
    wrap to the console's width.

    Args:
        spec: the compiled canvas.
        views: the run's facts per node id. A node without one is ``pending``.
        collapse_over: a group with more members than this, each a single
            node of the same task, shows as one row with the task, the member
            count and a count per state (``998 ✓  2 ✗``).
        expand: show every member of every group, whatever its size.
        title: a heading, such as the run id.

    Returns:
        A renderable to pass to a `rich.console.Console`.

    Raises:
        InvalidCanvas: if the spec's edges form a cycle.
    """
    header: list[RenderableType] = []
    if title:
        header.append(Text(title, style="bold"))
    if not spec.nodes:
        return Group(*header, Text("No nodes: the canvas is empty."))
    collapsing = _Collapsing.of(spec, collapse_over, expand)
    rows = _dag_rows(spec, views, _node_depths(spec), collapsing)
    widths = _ColumnWidths.of(rows)
    parts = [*header, _summary(spec, views, rows)]
    for heading, layer_rows in _layers(rows):
        parts.append(Text(heading, style="bold"))
        parts.append(_LayerTable(layer_rows, widths))
    return Group(*parts)


# -- the tree ------------------------------------------------------------------

_PATH_SEPARATOR = " > "


def _composite_kind(segment: str) -> str | None:
    """Name the composite that a path segment is a step of, as in ``chain[0]``."""
    name = segment.partition("[")[0]
    if name.startswith("chord."):
        return "chord"
    if name in ("chain", "group"):
        return name
    return None


def _node_label(segment: str, node: NodeSpec, view: NodeView) -> Text:
    colour, symbol = STATE_STYLES[view.state]
    text = Text(f"{segment}  " if segment else "", style="dim")
    text.append(symbol, style=colour)
    text.append(f" {node.id}  ")
    text.append_text(_task_text(node.task, node.role))
    facts = _view_facts(view)
    if facts:
        text.append(f"  {facts}")
    return text


def _group_label(
    first: NodeSpec, target: _CollapsedGroup, views: Mapping[str, NodeView] | None
) -> Text:
    counts = _count_states(views, target.member_ids)
    colour, symbol = STATE_STYLES[_headline_state(counts)]
    member = first.path.rpartition(_PATH_SEPARATOR)[2].partition("[")[0]
    last = len(target.member_ids) - 1
    text = Text(f"{member}[0{_RANGE_DASH}{last}]  ", style="dim")
    text.append(symbol, style=colour)
    text.append(f" {target.label}  ")
    text.append_text(_task_text(target.task, first.role, len(target.member_ids)))
    text.append("  ")
    text.append_text(_counts_text(counts))
    return text


class _TreeBuilder:
    """Builder of the tree of canvas paths, with one branch per path segment."""

    def __init__(self, root: Tree) -> None:
        self.branches: dict[str, Tree] = {"": root}
        #: The composite each branch turned out to be, from its children's segments.
        self.kinds: dict[str, str] = {}

    def branch(self, path: str) -> Tree:
        """Return the branch for a path, adding it and its ancestors if missing."""
        found = self.branches.get(path)
        if found is not None:
            return found
        parent_path, _, segment = path.rpartition(_PATH_SEPARATOR)
        branch = self.add(parent_path, segment, Text(segment))
        self.branches[path] = branch
        return branch

    def add(self, parent_path: str, segment: str, label: Text) -> Tree:
        """Add a child under a path, noting which composite the path is."""
        kind = _composite_kind(segment)
        if kind is not None:
            self.kinds.setdefault(parent_path, kind)
        return self.branch(parent_path).add(label)

    def label_kinds(self) -> None:
        """Append the composite kind to each branch label, as in ``chain[1]  chord``."""
        for path, kind in self.kinds.items():
            label = self.branches[path].label
            if isinstance(label, Text):
                label.append(f"  {kind}", style="italic")


def render_tree(
    spec: GraphSpec,
    views: Mapping[str, NodeView] | None = None,
    *,
    collapse_over: int = 8,
    expand: bool = False,
    title: str | None = None,
) -> Tree:
    """Draw a spec as a tree of its canvas: chains, groups and chords as branches.

    Each branch is one step of the canvas path in error messages
    (``chain[1] > chord.header[0]``), labelled with the composite it holds.
    Leaves are nodes, with the same facts as `render_dag`. Links and errbacks
    hang under the node or branch they are attached to.

    Args:
        spec: the compiled canvas.
        views: the run's facts per node id. A node without one is ``pending``.
        collapse_over: as in `render_dag`.
        expand: as in `render_dag`.
        title: the root's label; ``canvas`` by default.

    Returns:
        A `rich.tree.Tree` to pass to a `rich.console.Console`.
    """
    root = Tree(Text(title or "canvas", style="bold"))
    builder = _TreeBuilder(root)
    collapsing = _Collapsing.of(spec, collapse_over, expand)
    drawn = [node for node in spec.nodes if node.id not in collapsing.group_of]
    drawn += [spec.node(node_id) for node_id in collapsing.first_of]
    for node in sorted(drawn, key=lambda node: node_order(node.id)):
        parent_path, _, segment = node.path.rpartition(_PATH_SEPARATOR)
        target = collapsing.first_of.get(node.id)
        if target is not None:
            builder.add(parent_path, segment, _group_label(node, target, views))
        elif node.path:
            label = _node_label(segment, node, _view_of(views, node.id))
            builder.branches[node.path] = builder.add(parent_path, segment, label)
        else:
            root.add(_node_label("", node, _view_of(views, node.id)))
    builder.label_kinds()
    return root


# -- DOT -----------------------------------------------------------------------


def _dot_string(text: str) -> str:
    """Quote a DOT id or label: backslashes and quotes escaped, newlines as ``\\n``."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\r", "").replace("\n", "\\n") + '"'


def _text_label(node: NodeSpec, view: NodeView) -> tuple[str, str]:
    """Return a node's two label lines for DOT and Mermaid: id and task, then state."""
    facts = _view_facts(view)
    return f"{node.id} {node.task}", f"{view.state} {facts}".strip()


def _group_title(group: GroupSpec) -> str:
    return f"group {group.id} at {group.path}" if group.path else f"group {group.id}"


class _Scopes(NamedTuple):
    """Nodes and groups keyed by their innermost enclosing group, or None at the top."""

    nodes: dict[int | None, list[NodeSpec]]
    groups: dict[int | None, list[GroupSpec]]

    @classmethod
    def of(cls, spec: GraphSpec) -> _Scopes:
        scopes = cls({}, {})
        for node in spec.nodes:
            scopes.nodes.setdefault(node.group, []).append(node)
        for group in spec.groups:
            scopes.groups.setdefault(group.parent, []).append(group)
        return scopes


def _dot_node(node: NodeSpec, view: NodeView) -> str:
    style = "rounded,filled,dashed" if node.side else "rounded,filled"
    label = "\n".join(_text_label(node, view))
    return (
        f"{_dot_string(node.id)} [label={_dot_string(label)}, "
        f'fillcolor="{_FILL_COLOURS[view.state]}", style="{style}"];'
    )


def _dot_scope(
    scopes: _Scopes,
    group_id: int | None,
    indent: str,
    views: Mapping[str, NodeView] | None,
) -> list[str]:
    """Write a scope's node statements, then each inner group as a cluster."""
    lines = [
        indent + _dot_node(node, _view_of(views, node.id))
        for node in scopes.nodes.get(group_id, [])
    ]
    for group in scopes.groups.get(group_id, []):
        lines.append(f"{indent}subgraph {_dot_string(f'cluster_{group.id}')} {{")
        lines.append(f"{indent}  label={_dot_string(_group_title(group))};")
        lines.append(f'{indent}  style="rounded,dashed";')
        lines.extend(_dot_scope(scopes, group.id, indent + "  ", views))
        lines.append(f"{indent}}}")
    return lines


def _dot_edges(spec: GraphSpec) -> list[str]:
    lines: list[str] = []
    for node in spec.nodes:
        target = _dot_string(node.id)
        attributes = " [style=dotted]" if node.role == "link" else ""
        for dep in node.deps:
            lines.append(f"  {_dot_string(dep)} -> {target}{attributes};")
        for covered in node.covers:
            lines.append(
                f"  {_dot_string(covered)} -> {target} [style=dashed, "
                f'color="{_FAILURE_EDGE_COLOUR}", fontcolor="{_FAILURE_EDGE_COLOUR}", '
                'label="on failure"];'
            )
    return lines


def to_dot(spec: GraphSpec, views: Mapping[str, NodeView] | None = None) -> str:
    """Write a spec as Graphviz DOT text, one node statement per node.

    Nodes are labelled with id, task and state and filled by state; nodes of
    side branches have a dashed border. Groups are clusters. Dependency edges
    are solid, except dotted ones into the first node of a link, and an
    errback gets a dashed red edge from each node it covers.

    Args:
        spec: the compiled canvas.
        views: the run's facts per node id. A node without one is ``pending``.

    Returns:
        The DOT text of one ``digraph``, for ``dot -Tsvg`` and the like.
    """
    lines = [
        "digraph stem {",
        "  rankdir=LR;",
        '  node [shape=box, fontname="Helvetica"];',
        *_dot_scope(_Scopes.of(spec), None, "  ", views),
        *_dot_edges(spec),
        "}",
    ]
    return "\n".join(lines) + "\n"


# -- Mermaid -------------------------------------------------------------------

# Mermaid reads ``#<decimal>;`` in a label as that character, so these cannot
# end a label early or be taken for markup.
_MERMAID_ESCAPES = {ord(char): f"#{ord(char)};" for char in '"#&<>`'}


def mermaid_id(node_id: NodeId) -> str:
    """Return a Mermaid-safe id for a node id: ``"3.0"`` becomes ``n3_0``.

    Ids of the spec's form (dot-separated integers) keep their digits. Any
    other string becomes ``x`` and its UTF-8 bytes in hex, so two distinct ids
    never get the same Mermaid id.
    """
    parts = node_id.split(".")
    if all(part.isascii() and part.isdigit() for part in parts):
        return "n" + "_".join(parts)
    return "x" + node_id.encode().hex()


def _mermaid_text(*lines: str) -> str:
    escaped = [line.translate(_MERMAID_ESCAPES) for line in lines]
    return '"' + "<br/>".join(" ".join(line.splitlines()) for line in escaped) + '"'


def _mermaid_node(node: NodeSpec, view: NodeView) -> str:
    text = _mermaid_text(*_text_label(node, view))
    shape = f"([{text}])" if node.side else f"[{text}]"
    return f"{mermaid_id(node.id)}{shape}:::{view.state}"


def _mermaid_scope(
    scopes: _Scopes,
    group_id: int | None,
    indent: str,
    views: Mapping[str, NodeView] | None,
) -> list[str]:
    lines = [
        indent + _mermaid_node(node, _view_of(views, node.id))
        for node in scopes.nodes.get(group_id, [])
    ]
    for group in scopes.groups.get(group_id, []):
        lines.append(
            f"{indent}subgraph g{group.id}[{_mermaid_text(_group_title(group))}]"
        )
        lines.extend(_mermaid_scope(scopes, group.id, indent + "  ", views))
        lines.append(f"{indent}end")
    return lines


def _mermaid_edges(spec: GraphSpec) -> tuple[list[str], list[int]]:
    """Write the edges, and return the indexes of the errback edges for styling."""
    lines: list[str] = []
    failure_edges: list[int] = []
    for node in spec.nodes:
        target = mermaid_id(node.id)
        arrow = "-.->" if node.role == "link" else "-->"
        for dep in node.deps:
            lines.append(f"  {mermaid_id(dep)} {arrow} {target}")
        for covered in node.covers:
            failure_edges.append(len(lines))
            lines.append(f"  {mermaid_id(covered)} -.->|on failure| {target}")
    return lines, failure_edges


def to_mermaid(spec: GraphSpec, views: Mapping[str, NodeView] | None = None) -> str:
    """Write a spec as a Mermaid ``flowchart LR``.

    Node ids are made safe with `mermaid_id`, labels are escaped, and each
    state has a ``classDef``. Groups are subgraphs, nodes of side branches
    have round ends, edges into the first node of a link are dotted, and
    errback edges are dotted, red and labelled ``on failure``.

    Args:
        spec: the compiled canvas.
        views: the run's facts per node id. A node without one is ``pending``.

    Returns:
        The Mermaid text, for a Markdown ``mermaid`` block or ``mmdc``.
    """
    edges, failure_edges = _mermaid_edges(spec)
    lines = ["flowchart LR", *_mermaid_scope(_Scopes.of(spec), None, "  ", views)]
    lines.extend(edges)
    for state in NODE_STATES:
        lines.append(
            f"  classDef {state} fill:{_FILL_COLOURS[state]},"
            "stroke:#495057,color:#212529"
        )
    if failure_edges:
        indexes = ",".join(str(index) for index in failure_edges)
        lines.append(f"  linkStyle {indexes} stroke:{_FAILURE_EDGE_COLOUR}")
    return "\n".join(lines) + "\n"


# -- JSON ----------------------------------------------------------------------


def _json_node(node: NodeSpec, view: NodeView) -> dict[str, Any]:
    return {
        "id": node.id,
        "task": node.task,
        "state": view.state,
        "deps": list(node.deps),
        "duration_s": view.duration_s,
        "attempts": view.attempts,
        "role": node.role,
        "side": node.side,
        "group": node.group,
        "path": node.path,
    }


def _json_edges(spec: GraphSpec) -> list[dict[str, Any]]:
    edges: list[dict[str, Any]] = []
    for node in spec.nodes:
        for position, dep in enumerate(node.deps):
            edges.append(
                {
                    "source": dep,
                    "target": node.id,
                    "kind": "dep",
                    "join": node.join,
                    "position": position,
                }
            )
        for covered in node.covers:
            edges.append(
                {
                    "source": covered,
                    "target": node.id,
                    "kind": "covers",
                    "join": None,
                    "position": None,
                }
            )
    return edges


def to_json(spec: GraphSpec, views: Mapping[str, NodeView] | None = None) -> str:
    """Write a spec and its run's node states as JSON for scripts.

    The document is ``{"nodes": [...], "edges": [...], "groups": [...]}``
    with keys in a fixed order. A node has ``id``, ``task``, ``state``,
    ``deps``, ``duration_s`` (null when not known), ``attempts``, ``role``,
    ``side``, ``group`` and ``path``. An edge has ``source``, ``target``,
    ``kind`` (``dep``, or ``covers`` from a covered node to its errback), and
    for a ``dep`` edge the target's ``join`` policy and the source's
    ``position`` in its ``deps`` (both null for ``covers``). A group has
    ``id``, ``path``, ``parent`` and ``members``, one list of node ids per member.

    Args:
        spec: the compiled canvas.
        views: the run's facts per node id. A node without one is ``pending``.

    Returns:
        The JSON text, indented by two spaces.
    """
    document = {
        "nodes": [_json_node(node, _view_of(views, node.id)) for node in spec.nodes],
        "edges": _json_edges(spec),
        "groups": [
            {
                "id": group.id,
                "path": group.path,
                "parent": group.parent,
                "members": group.members,
            }
            for group in spec.groups
        ],
    }
    return json.dumps(document, indent=2, ensure_ascii=False)
