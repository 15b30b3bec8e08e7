"""Drawing of a graph spec as an SVG picture, coloured by node state.

`to_svg` takes what `stem.canvas.render.render_dag` takes and lays the graph
out the same way: a node's layer is the length of the longest dependency path
to it, and a large group of single signatures of one task is one counted box.
Layers are columns from left to right, so a long chain grows the picture to
the right and a wide group grows it downwards, where a notebook scrolls. Each
box shows the node id, the task and the state with its symbol, duration and
attempt count. Edges are curves from one column to a later one.

The picture is made here, with no Graphviz binary. Its text is escaped and
stripped of characters that XML cannot hold, since task names are user input.
It carries no style sheet (a ``<style>`` element in a notebook would restyle
the whole page), no script and no id that differs between two calls, so the
same spec and views always give the same text.
"""

from __future__ import annotations

import html
from bisect import bisect_right
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from rich.cells import cell_len

from stem.canvas.render import (
    _FAILURE_EDGE_COLOUR,
    _FILL_COLOURS,
    NODE_STATES,
    STATE_STYLES,
    NodeView,
    _CollapsedGroup,
    _Collapsing,
    _count_states,
    _dag_rows,
    _node_depths,
    _Row,
)
from stem.canvas.spec import GraphSpec

# Border colours, darker than the fills of `_FILL_COLOURS`, for each state.
_STROKE_COLOURS: Mapping[str, str] = {
    "pending": "#868e96",
    "queued": "#1c7ed6",
    "running": "#1864ab",
    "retrying": "#e67700",
    "succeeded": "#2b8a3e",
    "failed": "#c92a2a",
    "cancelled": "#7048e8",
    "skipped": "#868e96",
}
_TEXT_COLOUR = "#212529"
_MUTED_COLOUR = "#495057"
_EDGE_COLOUR = "#868e96"
_FONT = "ui-monospace, SFMono-Regular, Menlo, Consolas, DejaVu Sans Mono, monospace"

# Sizes in pixels. Text is monospaced, so a line's width is its cell count
# times one character's advance, about 0.6 of the font size in common fonts.
_FONT_SIZE = 12
_CHAR_WIDTH = 7.25
_LINE_HEIGHT = 16
_PAD = 8
_BOX_HEIGHT = 2 * _LINE_HEIGHT + 2 * _PAD
_BAR_HEIGHT = 4
_ROW_GAP = 12
_SIDE_GAP = 28
_COLUMN_GAP = 64
_MARGIN = 16
_SWATCH = 12
_LEGEND_GAP = 20
# The narrowest width the legend wraps at, so a small picture keeps it on a
# few rows instead of one item per row.
_MIN_LEGEND_WIDTH = 520

# A box's text is cut to this many cells, with the full text in its tooltip.
_MAX_LINE_CELLS = 40
_MIN_LINE_CELLS = 12
# The title is cut to this many cells, with the full text in the picture's tooltip.
_MAX_TITLE_CELLS = 100

_ELLIPSIS = "\N{HORIZONTAL ELLIPSIS}"
_REPLACEMENT = "\N{REPLACEMENT CHARACTER}"
_TIMES = "\N{MULTIPLICATION SIGN}"

# Arrowheads, defined the same way in every picture. A notebook page contains
# several pictures in one document, where ids are shared, so a later picture
# may resolve these ids to an earlier picture's identical definitions.
_ARROW_ID = "stem-arrow"
_FAILURE_ARROW_ID = "stem-arrow-failure"


# -- text ----------------------------------------------------------------------


def _xml_char_allowed(code: int) -> bool:
    """Tell whether XML 1.0 can hold a character at all, escaped or not."""
    return (
        code in (0x9, 0xA, 0xD)
        or 0x20 <= code <= 0xD7FF
        or 0xE000 <= code <= 0xFFFD
        or 0x10000 <= code <= 0x10FFFF
    )


def _clean(text: str) -> str:
    """Make user text fit one line of XML: controls become spaces or U+FFFD."""
    chars: list[str] = []
    for char in text:
        code = ord(char)
        if char in "\t\n\r":
            chars.append(" ")
        elif _xml_char_allowed(code) and not 0x7F <= code <= 0x9F:
            chars.append(char)
        else:
            chars.append(_REPLACEMENT)
    return "".join(chars)


def _escape(text: str) -> str:
    """Escape cleaned text for an XML element or a double-quoted attribute."""
    return html.escape(_clean(text), quote=True)


def _fit(text: str, cells: int, *, keep_end: bool = False) -> str:
    """Cut text to at most ``cells`` terminal cells, marking the cut with ``…``.

    With ``keep_end`` the end is kept, as for a dotted task name whose last
    part is the function's name.
    """
    if cell_len(text) <= cells:
        return text
    kept: list[str] = []
    room = cells - 1
    for char in reversed(text) if keep_end else text:
        width = cell_len(char)
        if width > room:
            break
        kept.append(char)
        room -= width
    if keep_end:
        return _ELLIPSIS + "".join(reversed(kept))
    return "".join(kept) + _ELLIPSIS


def _num(value: float) -> str:
    """Write a coordinate with at most one decimal, the same way every time."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _text_width(cells: float) -> float:
    return cells * _CHAR_WIDTH


# -- boxes and edges -----------------------------------------------------------


@dataclass
class _Box:
    """One box of the picture: a node, or a collapsed group."""

    row: _Row
    #: The members of a collapsed group, or None for a single node.
    group: _CollapsedGroup | None
    #: The two text lines as they are drawn, and in full for the tooltip.
    lines: tuple[str, str]
    full: tuple[str, str]
    #: State counts of a collapsed group's members, in `NODE_STATES` order.
    counts: tuple[tuple[str, int], ...] = ()
    x: float = 0.0
    y: float = 0.0
    width: float = 0.0

    @property
    def centre_y(self) -> float:
        return self.y + _BOX_HEIGHT / 2


class _Edge(NamedTuple):
    source: str
    target: str
    #: ``dep``, ``link`` (into the first node of a link) or ``covers``.
    kind: str


def _counts_words(counts: Sequence[tuple[str, int]]) -> str:
    return ", ".join(f"{count} {state}" for state, count in counts)


def _box_of(
    row: _Row, group: _CollapsedGroup | None, views: Mapping[str, NodeView] | None
) -> _Box:
    symbol = STATE_STYLES[row.state].symbol
    task = _clean(row.task.plain)
    label = _clean(row.label)
    counts: tuple[tuple[str, int], ...] = ()
    if group is None:
        facts = row.facts.plain
        second = f"{symbol} {row.state}" + (f"  {facts}" if facts else "")
    else:
        tally = _count_states(views, group.member_ids)
        counts = tuple((state, tally[state]) for state in NODE_STATES if tally[state])
        second = f"{symbol} {_counts_words(counts)}"
    # The id stays whole. The task name is cut instead, keeping its end.
    task_room = max(_MAX_LINE_CELLS - cell_len(label) - 2, _MIN_LINE_CELLS)
    first = f"{label}  {_fit(task, task_room, keep_end=True)}"
    return _Box(
        row=row,
        group=group,
        lines=(first, _fit(second, _MAX_LINE_CELLS)),
        full=(f"{label}  {task}", second),
        counts=counts,
    )


def _boxes(
    spec: GraphSpec,
    views: Mapping[str, NodeView] | None,
    collapsing: _Collapsing,
) -> dict[str, _Box]:
    """Make one box per row of the terminal DAG, keyed by the row's label."""
    groups = {target.label: target for target in collapsing.first_of.values()}
    rows = _dag_rows(spec, views, _node_depths(spec), collapsing)
    return {row.label: _box_of(row, groups.get(row.label), views) for row in rows}


def _edges(spec: GraphSpec, collapsing: _Collapsing) -> list[_Edge]:
    """List the edges between boxes once each, in node order."""
    edges: dict[_Edge, None] = {}
    for node in spec.nodes:
        target = collapsing.label(node.id)
        kind = "link" if node.role == "link" else "dep"
        for dep in node.deps:
            edges[_Edge(collapsing.label(dep), target, kind)] = None
        for covered in node.covers:
            edges[_Edge(collapsing.label(covered), target, "covers")] = None
    return list(edges)


# -- layout --------------------------------------------------------------------


def _column_height(boxes: Sequence[_Box]) -> float:
    main = sum(1 for box in boxes if not box.row.side)
    side = len(boxes) - main
    height = len(boxes) * _BOX_HEIGHT + max(len(boxes) - 1, 0) * _ROW_GAP
    if main and side:
        height += _SIDE_GAP - _ROW_GAP
    return height


def _layout(
    boxes: Mapping[str, _Box], edges: Sequence[_Edge], top: float
) -> tuple[float, float]:
    """Place every box, and return the width and bottom of the drawn area.

    Each column is centred on the tallest. Within a column, main-path boxes
    come first and side branches after a wider gap. Each part is ordered by
    the mean height of the boxes its edges come from, then by node order.
    That keeps the members of a group of chains in line across columns.
    """
    columns: dict[int, list[_Box]] = {}
    for box in boxes.values():
        columns.setdefault(box.row.depth, []).append(box)
    upstream: dict[str, list[str]] = {}
    for edge in edges:
        upstream.setdefault(edge.target, []).append(edge.source)
    tallest = max((_column_height(column) for column in columns.values()), default=0)

    x = float(_MARGIN)
    for depth in sorted(columns):
        column = columns[depth]
        width = (
            max(_text_width(cell_len(line)) for box in column for line in box.lines)
            + 2 * _PAD
        )
        width = max(width, _text_width(_MIN_LINE_CELLS) + 2 * _PAD)

        def sort_key(box: _Box) -> tuple[bool, float, tuple[int, ...]]:
            sources = [boxes[label] for label in upstream.get(box.row.label, [])]
            mean = sum(source.centre_y for source in sources) / len(sources or [1])
            return (box.row.side, mean, box.row.order)

        column.sort(key=sort_key)
        y = top + (tallest - _column_height(column)) / 2
        for index, box in enumerate(column):
            if index and box.row.side and not column[index - 1].row.side:
                y += _SIDE_GAP - _ROW_GAP
            box.x, box.y, box.width = x, y, width
            y += _BOX_HEIGHT + _ROW_GAP
        x += width + _COLUMN_GAP
    return x - _COLUMN_GAP + _MARGIN, top + tallest


# -- drawing -------------------------------------------------------------------


def _draw_box(box: _Box) -> Iterator[str]:
    state = box.row.state
    fill, stroke = _FILL_COLOURS[state], _STROKE_COLOURS[state]
    dash = ' stroke-dasharray="5 3"' if box.row.side else ""
    thick = "2.5" if state in ("running", "retrying", "failed") else "1.2"
    members = f' data-members="{len(box.group.member_ids)}"' if box.group else ""
    x, y = box.x, box.y
    yield (
        f'<g class="stem-node" data-node="{_escape(box.row.label)}" '
        f'data-state="{state}"{members}>'
    )
    yield f"<title>{_escape(chr(10).join(box.full))}</title>"
    yield (
        f'<rect x="{_num(x)}" y="{_num(y)}" width="{_num(box.width)}" '
        f'height="{_BOX_HEIGHT}" rx="6" fill="{fill}" stroke="{stroke}" '
        f'stroke-width="{thick}"{dash}/>'
    )
    baseline = y + _PAD + _FONT_SIZE
    yield (
        f'<text x="{_num(x + _PAD)}" y="{_num(baseline)}" font-weight="bold">'
        f"{_escape(box.lines[0])}</text>"
    )
    yield (
        f'<text x="{_num(x + _PAD)}" y="{_num(baseline + _LINE_HEIGHT)}" '
        f'fill="{_MUTED_COLOUR}">{_escape(box.lines[1])}</text>'
    )
    if box.counts:
        yield from _draw_count_bar(box)
    yield "</g>"


def _draw_count_bar(box: _Box) -> Iterator[str]:
    """Draw a collapsed group's state counts as a bar along the box's bottom."""
    total = sum(count for _, count in box.counts)
    left, width = box.x + _PAD, box.width - 2 * _PAD
    y = box.y + _BOX_HEIGHT - _BAR_HEIGHT - 3
    for state, count in box.counts:
        part = width * count / total
        yield (
            f'<rect x="{_num(left)}" y="{_num(y)}" width="{_num(part)}" '
            f'height="{_BAR_HEIGHT}" fill="{_STROKE_COLOURS[state]}"/>'
        )
        left += part


def _columns(boxes: Mapping[str, _Box]) -> dict[int, list[_Box]]:
    """Group the placed boxes by column, each column's boxes top to bottom."""
    columns: dict[int, list[_Box]] = {}
    for box in sorted(boxes.values(), key=lambda box: box.y):
        columns.setdefault(box.row.depth, []).append(box)
    return columns


def _lane(column: Sequence[_Box], ideal_y: float) -> float:
    """Return where an edge crosses a column: ``ideal_y``, or the nearest gap."""
    margin = 4
    # Boxes in a column do not overlap, so only the last one that starts
    # above the ideal line can be in its way.
    index = bisect_right(column, ideal_y + margin, key=lambda box: box.y)
    if index == 0:
        return ideal_y
    box = column[index - 1]
    if ideal_y > box.y + _BOX_HEIGHT + margin:
        return ideal_y
    above = box.y - _ROW_GAP / 2
    below = box.y + _BOX_HEIGHT + _ROW_GAP / 2
    return above if ideal_y - above <= below - ideal_y else below


def _curve(x1: float, y1: float, x2: float, y2: float) -> str:
    """Write a cubic that leaves and arrives horizontally, from the current point."""
    bend = max((x2 - x1) / 2, 24.0)
    return (
        f" C{_num(x1 + bend)},{_num(y1)} {_num(x2 - bend)},{_num(y2)} "
        f"{_num(x2)},{_num(y2)}"
    )


def _edge_path(
    source: _Box, target: _Box, columns: Mapping[int, Sequence[_Box]]
) -> str:
    """Route an edge, crossing each column between its ends through a gap.

    An edge that skips columns would otherwise run under the boxes in them.
    """
    x1, y1 = source.x + source.width, source.centre_y
    x2, y2 = target.x - 2, target.centre_y
    path = f"M{_num(x1)},{_num(y1)}"
    x, y = x1, y1
    for depth in range(source.row.depth + 1, target.row.depth):
        column = columns.get(depth)
        if not column:
            continue
        left, right = column[0].x, column[0].x + column[0].width
        middle = (left + right) / 2
        lane = _lane(column, y1 + (y2 - y1) * (middle - x1) / (x2 - x1))
        path += _curve(x, y, left, lane) + f" L{_num(right)},{_num(lane)}"
        x, y = right, lane
    return path + _curve(x, y, x2, y2)


def _draw_edge(
    edge: _Edge, boxes: Mapping[str, _Box], columns: Mapping[int, Sequence[_Box]]
) -> str:
    path = _edge_path(boxes[edge.source], boxes[edge.target], columns)
    if edge.kind == "covers":
        style = (
            f'stroke="{_FAILURE_EDGE_COLOUR}" stroke-dasharray="6 4" '
            f'marker-end="url(#{_FAILURE_ARROW_ID})"'
        )
    else:
        dots = ' stroke-dasharray="2 3"' if edge.kind == "link" else ""
        style = f'stroke="{_EDGE_COLOUR}"{dots} marker-end="url(#{_ARROW_ID})"'
    return (
        f'<path class="stem-edge" data-kind="{edge.kind}" d="{path}" fill="none" '
        f'stroke-width="1.4" {style}/>'
    )


def _arrow_defs() -> list[str]:
    return [
        "<defs>",
        *(
            f'<marker id="{marker}" viewBox="0 0 10 10" refX="9" refY="5" '
            'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
            f'<path d="M0,0 L10,5 L0,10 z" fill="{colour}"/></marker>'
            for marker, colour in (
                (_ARROW_ID, _EDGE_COLOUR),
                (_FAILURE_ARROW_ID, _FAILURE_EDGE_COLOUR),
            )
        ),
        "</defs>",
    ]


class _LegendItem(NamedTuple):
    text: str
    #: ``state`` for a state swatch, else the kind of sample drawn.
    sample: str
    state: str = ""


def _legend_items(
    spec: GraphSpec, views: Mapping[str, NodeView] | None, edges: Sequence[_Edge]
) -> list[_LegendItem]:
    counts = _count_states(views, (node.id for node in spec.nodes))
    items = [
        _LegendItem(
            f"{STATE_STYLES[state].symbol} {state}"
            + (f" {counts[state]}" if counts[state] else ""),
            "state",
            state,
        )
        for state in NODE_STATES
    ]
    if any(node.side for node in spec.nodes):
        items.append(_LegendItem("link or errback", "side"))
    if any(edge.kind == "covers" for edge in edges):
        items.append(_LegendItem("on failure", "covers"))
    return items


def _draw_legend(
    items: Sequence[_LegendItem], top: float, width: float
) -> tuple[list[str], float]:
    """Draw legend items in rows that wrap at ``width``; return them and the bottom."""
    parts = ['<g class="stem-legend">']
    x, y = float(_MARGIN), top
    for item in items:
        item_width = _SWATCH + 6 + _text_width(cell_len(item.text))
        if x > _MARGIN and x + item_width > width - _MARGIN:
            x, y = float(_MARGIN), y + _LINE_HEIGHT + 4
        parts.append(_legend_sample(item, x, y))
        parts.append(
            f'<text x="{_num(x + _SWATCH + 6)}" y="{_num(y + _SWATCH - 1)}" '
            f'fill="{_MUTED_COLOUR}">{_escape(item.text)}</text>'
        )
        x += item_width + _LEGEND_GAP
    parts.append("</g>")
    return parts, y + _LINE_HEIGHT


def _legend_sample(item: _LegendItem, x: float, y: float) -> str:
    if item.sample == "covers":
        middle = y + _SWATCH / 2
        return (
            f'<path d="M{_num(x)},{_num(middle)} h{_SWATCH}" stroke-width="1.4" '
            f'stroke="{_FAILURE_EDGE_COLOUR}" stroke-dasharray="3 2"/>'
        )
    if item.sample == "side":
        fill, stroke, dash = "#ffffff", _EDGE_COLOUR, ' stroke-dasharray="3 2"'
    else:
        fill, stroke = _FILL_COLOURS[item.state], _STROKE_COLOURS[item.state]
        dash = ""
    return (
        f'<rect x="{_num(x)}" y="{_num(y)}" width="{_SWATCH}" height="{_SWATCH}" '
        f'rx="2" fill="{fill}" stroke="{stroke}"{dash}/>'
    )


def _plural(count: int, noun: str, plural: str | None = None) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {plural or noun + 's'}"


def _summary(spec: GraphSpec, boxes: Mapping[str, _Box]) -> str:
    """Count the nodes and layers, and the nodes that counted boxes stand for."""
    layers = len({box.row.depth for box in boxes.values()})
    text = f"{_plural(len(spec.nodes), 'node')} in {_plural(layers, 'layer')}"
    groups = [box.group for box in boxes.values() if box.group is not None]
    if groups:
        members = sum(len(group.member_ids) for group in groups)
        boxes_text = _plural(len(groups), "counted box", "counted boxes")
        text += f", {members} of them in {boxes_text}"
    return text


def to_svg(
    spec: GraphSpec,
    views: Mapping[str, NodeView] | None = None,
    *,
    collapse_over: int = 8,
    expand: bool = False,
    title: str | None = None,
) -> str:
    """Draw a spec as an SVG picture of its layered DAG, coloured by node state.

    Layers and collapsed groups are those of `render_dag`. Each box holds the
    node id and task, then the state symbol and name, duration and attempt
    count (when more than one); hovering over it shows its text in full. A
    collapsed group's box counts its members per state
    (``998 succeeded, 2 failed``), takes the colour of the state that most
    needs attention (failed first), and has a bar of the counts along its
    bottom. Boxes of side branches (links and errbacks) have a dashed border,
    edges into a link are dotted, and an errback gets a dashed red edge from
    each node it covers. A legend lists every state with its node count.

    Args:
        spec: the compiled canvas.
        views: the run's facts per node id. A node without one is ``pending``.
        collapse_over: a group with more members than this, each a single
            node of the same task, shows as one counted box.
        expand: show every member of every group, whatever its size.
        title: a heading, such as the run id.

    Returns:
        The SVG document as text, the same for the same arguments.

    Raises:
        InvalidCanvas: if the spec's edges form a cycle.
    """
    collapsing = _Collapsing.of(spec, collapse_over, expand)
    boxes = _boxes(spec, views, collapsing)
    edges = _edges(spec, collapsing)

    header: list[str] = []
    y = float(_MARGIN)
    heading = _fit(_clean(title or ""), _MAX_TITLE_CELLS)
    if heading:
        y += _FONT_SIZE + 2
        header.append(
            f'<text x="{_MARGIN}" y="{_num(y)}" font-size="{_FONT_SIZE + 2}" '
            f'font-weight="bold">{_escape(heading)}</text>'
        )
        y += 8
    summary = _summary(spec, boxes) if boxes else "No nodes: the canvas is empty."
    y += _FONT_SIZE
    header.append(f'<text x="{_MARGIN}" y="{_num(y)}">{_escape(summary)}</text>')
    legend_top = y + 10

    # The legend wraps at the graph's width, so lay the graph out first with
    # a provisional top, then move it below the legend.
    graph_width, graph_bottom = _layout(boxes, edges, 0.0)
    # The heading is set a size larger, so its characters are wider.
    header_cells = max(cell_len(heading) * 1.2, cell_len(summary))
    width = max(graph_width, _MIN_LEGEND_WIDTH, _text_width(header_cells) + 2 * _MARGIN)
    legend, legend_bottom = _draw_legend(
        _legend_items(spec, views, edges), legend_top, width
    )
    graph_top = legend_bottom + 16
    for box in boxes.values():
        box.y += graph_top
    height = (graph_top + graph_bottom if boxes else legend_bottom) + _MARGIN

    columns = _columns(boxes)
    picture_title = title or "Stem graph"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_num(width)}" '
        f'height="{_num(height)}" viewBox="0 0 {_num(width)} {_num(height)}" '
        f'font-family="{_FONT}" font-size="{_FONT_SIZE}" fill="{_TEXT_COLOUR}" '
        'role="img">',
        f"<title>{_escape(picture_title)}</title>",
        *_arrow_defs(),
        f'<rect width="{_num(width)}" height="{_num(height)}" fill="#ffffff"/>',
        *header,
        *legend,
        '<g class="stem-edges">',
        *(_draw_edge(edge, boxes, columns) for edge in edges),
        "</g>",
        '<g class="stem-nodes">',
    ]
    for box in sorted(boxes.values(), key=lambda box: box.row.order):
        parts.extend(_draw_box(box))
    parts.append("</g>")
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
