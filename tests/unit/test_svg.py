"""Tests of `stem.canvas.svg`, the SVG picture of a graph, and of runs drawn with it."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from stem.canvas import GraphSpec, Signature, chain, chord, compile_canvas, group
from stem.canvas.render import NODE_STATES, NodeView
from stem.canvas.svg import to_svg
from stem.engine.app import App
from stem.engine.records import NodeRecord
from stem.engine.result import node_views
from stem.engine.worker import Worker

SVG = "{http://www.w3.org/2000/svg}"
TIMES = "\N{MULTIPLICATION SIGN}"
DASH = "\N{EN DASH}"


def task(name: str, *args: Any) -> Signature:
    return Signature(name, args)


def parse(svg: str) -> ET.Element:
    """Parse the picture as XML, which fails on anything malformed."""
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return root


def node_boxes(root: ET.Element) -> list[ET.Element]:
    return [g for g in root.iter(f"{SVG}g") if g.get("class") == "stem-node"]


def box_text(box: ET.Element) -> list[str]:
    return [text.text or "" for text in box.iter(f"{SVG}text")]


def edges(root: ET.Element) -> list[ET.Element]:
    return [p for p in root.iter(f"{SVG}path") if p.get("class") == "stem-edge"]


def linked_chain() -> GraphSpec:
    """Compile fetch, a chord of (p | q) and r into m, a link and an errback."""
    canvas = chain(
        task("fetch"), group(chain(task("p"), task("q")), task("r")), task("m")
    )
    canvas.link(task("notify"))
    canvas.link_error(task("alert"))
    return compile_canvas(canvas)


def wide_chord(size: int) -> GraphSpec:
    return compile_canvas(
        chord(group(task("parse", i) for i in range(size)), task("merge"))
    )


def test_svg_is_well_formed_with_one_box_per_node() -> None:
    root = parse(to_svg(linked_chain()))

    boxes = node_boxes(root)
    assert [box.get("data-node") for box in boxes] == [str(i) for i in range(7)]
    assert all(len(box.findall(f"{SVG}rect")) == 1 for box in boxes)
    assert root.get("viewBox") == f"0 0 {root.get('width')} {root.get('height')}"


def test_svg_without_views_draws_every_node_pending() -> None:
    root = parse(to_svg(linked_chain()))

    assert {box.get("data-state") for box in node_boxes(root)} == {"pending"}
    assert "pending 7" in "".join(root.itertext())


def test_svg_shows_each_state_duration_and_attempts() -> None:
    views = {
        "0": NodeView("succeeded", duration_s=0.42),
        "1": NodeView("succeeded", duration_s=1.3),
        "2": NodeView("failed", duration_s=0.2, attempts=3),
        "3": NodeView("retrying", duration_s=75.0, attempts=2),
        "4": NodeView("cancelled"),
        "5": NodeView("skipped"),
        "6": NodeView("running", duration_s=12345.0),
    }
    root = parse(to_svg(linked_chain(), views, title="run 01J"))

    states = {box.get("data-node"): box.get("data-state") for box in node_boxes(root)}
    assert states == {node_id: view.state for node_id, view in views.items()}
    texts = {box.get("data-node"): box_text(box) for box in node_boxes(root)}
    assert texts["0"] == ["0  fetch", "\N{CHECK MARK} succeeded  420ms"]
    assert texts["2"][1].endswith("failed  200ms  3 attempts")
    assert texts["3"][1].endswith("retrying  1m15s  2 attempts")
    assert texts["6"][0] == "6  alert (errback)"
    assert texts["6"][1].endswith("running  3h25m")
    assert "run 01J" in "".join(root.itertext())


def test_svg_fills_differ_by_state() -> None:
    spec = compile_canvas(group(task("t", i) for i in range(len(NODE_STATES))))
    views = {str(i): NodeView(state) for i, state in enumerate(NODE_STATES)}
    root = parse(to_svg(spec, views))

    fills = {
        box.get("data-state"): box.find(f"{SVG}rect").get("fill")  # type: ignore[union-attr]
        for box in node_boxes(root)
    }
    assert set(fills) == set(NODE_STATES)
    assert len(set(fills.values())) == len(NODE_STATES)


def test_svg_legend_lists_every_state_with_counts() -> None:
    views = {"0": NodeView("succeeded"), "1": NodeView("failed")}
    root = parse(to_svg(linked_chain(), views))

    legend = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "stem-legend")
    words = [text.text or "" for text in legend.iter(f"{SVG}text")]
    for state in NODE_STATES:
        assert any(state in word for word in words), state
    assert any(word.endswith("succeeded 1") for word in words)
    assert any(word.endswith("pending 5") for word in words)
    assert "on failure" in words


def test_svg_draws_each_edge_once_with_its_kind() -> None:
    root = parse(to_svg(linked_chain()))

    kinds = [edge.get("data-kind") for edge in edges(root)]
    # fetch to p and r, p to q, q and r to m, m to notify; alert covers m.
    assert kinds.count("dep") == 5
    assert kinds.count("link") == 1
    assert kinds.count("covers") == 1


def test_svg_collapses_a_large_group_into_one_counted_box() -> None:
    spec = wide_chord(1000)
    views = {str(i): NodeView("succeeded") for i in range(1000)}
    views["17"] = NodeView("failed")
    views["500"] = NodeView("failed")
    root = parse(to_svg(spec, views))

    boxes = node_boxes(root)
    assert len(boxes) == 2
    group_box = boxes[0]
    assert group_box.get("data-node") == f"0{DASH}999"
    assert group_box.get("data-members") == "1000"
    assert group_box.get("data-state") == "failed"
    first, second = box_text(group_box)
    assert first == f"0{DASH}999  parse {TIMES}1000"
    assert second.endswith("998 succeeded, 2 failed")
    # One edge from the counted box to the chord's body, not a thousand.
    assert len(edges(root)) == 1
    assert "1000 of them in 1 counted box" in "".join(root.itertext())


def test_svg_expand_and_collapse_over_control_collapsing() -> None:
    expanded = parse(to_svg(wide_chord(20), expand=True))
    at_limit = parse(to_svg(wide_chord(8), collapse_over=8))
    over_limit = parse(to_svg(wide_chord(9), collapse_over=8))

    assert len(node_boxes(expanded)) == 21
    assert len(node_boxes(at_limit)) == 9
    assert len(node_boxes(over_limit)) == 2


@pytest.mark.parametrize(
    "name",
    [
        '<script>alert("x")</script>',
        "a & b ]]> <!-- c -->",
        "quote\" apos' lt< gt>",
        "controls\x00\x01\x1b[31m\x7f\x85end",
        "line\nbreak\ttab\rreturn",
        # A lone surrogate reaches no spec: Signature and the JSON parser
        # both refuse it.
        "noncharacter \ufffe",
    ],
)
def test_svg_escapes_hostile_task_names(name: str) -> None:
    # Signature refuses control characters, but a spec read from the store
    # may have been written by another program, so the name goes in there.
    text = compile_canvas(chain(task("HOSTILE"), task("after"))).to_json()
    escaped = json.dumps(name)[1:-1]
    spec = GraphSpec.from_json(text.replace('"HOSTILE"', f'"{escaped}"'))
    svg = to_svg(spec, title=name)
    root = parse(svg)

    assert "<script" not in svg
    assert root.find(f".//{SVG}script") is None
    first_line = box_text(node_boxes(root)[0])[0]
    assert first_line.startswith("0  ")
    for char in "\x00\x01\x1b\x7f\x85\n\t\r\ud800\ufffe":
        assert char not in first_line
    if name.startswith("<script>"):
        assert first_line == '0  <script>alert("x")</script>'


def test_svg_keeps_the_end_of_a_long_task_name() -> None:
    name = "myproject." + "very_long_package_name." * 4 + "parse_page"
    root = parse(to_svg(compile_canvas(task(name))))

    box = node_boxes(root)[0]
    first = box_text(box)[0]
    assert first.endswith("parse_page")
    assert "\N{HORIZONTAL ELLIPSIS}" in first
    assert name in (box.findtext(f"{SVG}title") or "")


def test_svg_is_deterministic() -> None:
    views = {"2": NodeView("failed", duration_s=0.5, attempts=2)}

    assert to_svg(linked_chain(), views) == to_svg(linked_chain(), views)


def test_svg_of_an_empty_canvas_says_so() -> None:
    root = parse(to_svg(compile_canvas(group())))

    assert node_boxes(root) == []
    assert "No nodes: the canvas is empty." in "".join(root.itertext())


def test_svg_places_boxes_in_columns_by_layer() -> None:
    root = parse(to_svg(linked_chain()))

    x_of = {
        box.get("data-node"): float(box.find(f"{SVG}rect").get("x") or 0)  # type: ignore[union-attr]
        for box in node_boxes(root)
    }
    assert x_of["0"] < x_of["1"] == x_of["3"] < x_of["2"] < x_of["4"]
    # The link and the errback hang after m, in the column after it.
    assert x_of["4"] < x_of["5"] == x_of["6"]


def test_canvas_repr_svg_draws_the_compiled_canvas() -> None:
    canvas = chord(group(task("parse", i) for i in range(3)), task("merge"))
    root = parse(canvas._repr_svg_())

    assert len(node_boxes(root)) == 4


# -- runs ----------------------------------------------------------------------


def test_run_repr_svg_shows_node_states(stem_app: App, stem_worker: Worker) -> None:
    @stem_app.task(name="double")
    def double(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return 2 * x

    @stem_app.task(name="total")
    def total(values: list[int]) -> int:
        return sum(values)

    result = chord(group(double.s(i) for i in range(4)), total.s()).apply_async()
    result.get(timeout=10, propagate=False)
    root = parse(result._repr_svg_())

    states = {box.get("data-node"): box.get("data-state") for box in node_boxes(root)}
    assert states == {
        "0": "succeeded",
        "1": "succeeded",
        "2": "failed",
        "3": "succeeded",
        "4": "cancelled",
    }
    assert f"run {result.id}: failed" in "".join(root.itertext())


def test_node_views_times_running_and_ended_nodes() -> None:
    nodes = {
        "0": NodeRecord("succeeded", attempt=2, started_at=100.0, ended_at=101.5),
        "1": NodeRecord("running", attempt=1, started_at=102.0),
        "2": NodeRecord("pending"),
    }
    views = node_views(nodes, now_s=110.0)

    assert views == {
        "0": NodeView("succeeded", 1.5, 2),
        "1": NodeView("running", 8.0, 1),
        "2": NodeView("pending", None, 0),
    }


def test_svg_routes_long_edges_around_boxes() -> None:
    # m waits for q (two columns after fetch) and for r (one column after
    # fetch), so the edge from r to m crosses the column that holds q.
    root = parse(to_svg(linked_chain()))

    q_rect = next(box for box in node_boxes(root) if box.get("data-node") == "2")
    rect = q_rect.find(f"{SVG}rect")
    assert rect is not None
    top = float(rect.get("y") or 0)
    bottom = top + float(rect.get("height") or 0)
    long_edges = [edge for edge in edges(root) if " L" in (edge.get("d") or "")]
    assert len(long_edges) == 1
    lane_y = float(
        (long_edges[0].get("d") or "").split(" L")[1].split(",")[1].split()[0]
    )
    assert not top <= lane_y <= bottom


def test_svg_cuts_a_long_title_and_fits_it() -> None:
    title = "run " + "Z" * 300
    root = parse(to_svg(linked_chain(), title=title))

    heading = next(text.text or "" for text in root.iter(f"{SVG}text"))
    assert heading.startswith("run ZZZ")
    assert heading.endswith("\N{HORIZONTAL ELLIPSIS}")
    assert len(heading) == 100
    assert root.findtext(f"{SVG}title") == title
    assert float(root.get("width") or 0) >= 100 * 7
