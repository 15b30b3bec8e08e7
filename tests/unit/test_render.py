"""Tests of `stem.canvas.render`: the terminal DAG and tree, DOT, Mermaid and JSON."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest
from rich.console import Console, RenderableType

from stem.canvas import (
    GraphSpec,
    InvalidCanvas,
    NodeSpec,
    Signature,
    chain,
    chord,
    compile_canvas,
    group,
)
from stem.canvas.render import (
    NODE_STATES,
    STATE_STYLES,
    NodeView,
    mermaid_id,
    render_dag,
    render_tree,
    to_dot,
    to_json,
    to_mermaid,
)

# Spelled by name because they look like ASCII characters (ruff RUF001).
TIMES = "\N{MULTIPLICATION SIGN}"
DASH = "\N{EN DASH}"
MINUS = "\N{MINUS SIGN}"


def task(name: str, *args: Any) -> Signature:
    return Signature(name, args)


def plain_text(renderable: RenderableType, width: int = 80) -> str:
    """Render without colour at a fixed width, as a pipe or NO_COLOR would see it."""
    console = Console(width=width, no_color=True, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def lines_with(text: str, fragment: str) -> list[str]:
    return [line for line in text.splitlines() if fragment in line]


def layer_headings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("layer ")]


def chord_of_three() -> GraphSpec:
    return compile_canvas(
        chord(
            group(task("fetch", 1), task("fetch", 2), task("fetch", 3)), task("merge")
        )
    )


def wide_chord(size: int, name: str = "parse") -> GraphSpec:
    return compile_canvas(
        chord(group(task(name, i) for i in range(size)), task("merge"))
    )


def linked_chain() -> GraphSpec:
    """Compile fetch, a chord of (p | q) and r into m, a link and an errback."""
    canvas = chain(
        task("fetch"), group(chain(task("p"), task("q")), task("r")), task("m")
    )
    canvas.link(task("notify"))
    canvas.link_error(task("alert"))
    return compile_canvas(canvas)


def every_state_views() -> dict[str, NodeView]:
    """Give the seven nodes of `linked_chain` seven different states."""
    return {
        "0": NodeView("succeeded", duration_s=0.42),
        "1": NodeView("succeeded", duration_s=1.3),
        "2": NodeView("failed", duration_s=0.2, attempts=3),
        "3": NodeView("retrying", duration_s=75.0, attempts=2),
        "4": NodeView("cancelled"),
        "5": NodeView("skipped"),
        "6": NodeView("running", duration_s=12345.0),
    }


# -- the layered DAG -----------------------------------------------------------


def test_dag_chord_of_three_layers() -> None:
    text = plain_text(render_dag(chord_of_three()))

    assert layer_headings(text) == ["layer 0", "layer 1"]
    assert len(lines_with(text, "fetch")) == 3
    (merge,) = lines_with(text, "merge")
    assert "← 0, 1, 2" in merge
    assert text.index("layer 1") < text.index("merge")


def test_dag_layers_by_longest_path() -> None:
    text = plain_text(render_dag(linked_chain()))

    assert layer_headings(text) == [
        "layer 0",
        "layer 1",
        "layer 2",
        "layer 3",
        "layer 4, side branches",
    ]
    body = text.split("layer 3")[1]
    assert "← 2, 3" in lines_with(body, " m")[0]


def test_dag_side_branches_after_main_path() -> None:
    text = plain_text(render_dag(linked_chain()))
    side = text.split("side branches")[-1]

    (notify,) = lines_with(text, "notify")
    (alert,) = lines_with(text, "alert")
    assert "notify (link)" in notify
    assert "← 4" in notify
    assert "alert (errback)" in alert
    assert "on failure of 4 or upstream" in alert
    assert "notify" in side
    assert "alert" in side
    assert "7 nodes: 5 on the main path in 4 layers, 2 on side branches" in text


def test_dag_errback_names_its_trigger() -> None:
    # Node 2 failed, which cancelled node 4, the covered last node. The row
    # must name node 2, not the covered node 4 that only was cancelled.
    views = {
        **every_state_views(),
        "6": NodeView("succeeded", duration_s=0.1, cause="2"),
    }

    text = plain_text(render_dag(linked_chain(), views))

    (alert,) = lines_with(text, "alert")
    assert "fired by failure of 2" in alert
    assert "on failure of 4" not in alert


def test_dag_rows_show_state_and_facts() -> None:
    text = plain_text(render_dag(linked_chain(), every_state_views(), title="run 01J"))

    assert text.splitlines()[0] == "run 01J"
    assert "✓" in lines_with(text, " fetch")[0]
    assert "420ms" in lines_with(text, " fetch")[0]
    (q_row,) = lines_with(text, " q ")
    assert "✗" in q_row
    assert "200ms" in q_row
    assert "3 attempts" in q_row
    (r_row,) = lines_with(text, " r ")
    assert "↻" in r_row
    assert "1m15s" in r_row
    assert "3h25m" in lines_with(text, "alert")[0]
    assert "⊘" in lines_with(text, " m ")[0]
    assert MINUS in lines_with(text, "notify")[0]
    assert "attempts" not in lines_with(text, " p ")[0]


def test_dag_without_views_is_pending() -> None:
    text = plain_text(render_dag(chord_of_three()))

    assert "· pending 4" in text
    for line in lines_with(text, "fetch"):
        assert line.lstrip().startswith("·")


def test_dag_collapses_large_group() -> None:
    spec = wide_chord(1000)
    views = {str(i): NodeView("succeeded") for i in range(1000)}
    views["17"] = NodeView("failed")
    views["500"] = NodeView("failed")

    text = plain_text(render_dag(spec, views))

    (row,) = lines_with(text, "parse")
    assert f"parse {TIMES}1000" in row
    assert "998 ✓" in row
    assert "2 ✗" in row
    assert f"0{DASH}999" in row
    assert row.lstrip().startswith("✗")
    (merge,) = lines_with(text, "merge")
    assert f"← 0{DASH}999" in merge
    assert len(text.splitlines()) < 10


def test_dag_expand_shows_every_member() -> None:
    spec = wide_chord(1000)

    text = plain_text(render_dag(spec, expand=True))

    assert len(lines_with(text, "parse")) == 1000
    assert TIMES not in text
    (merge,) = lines_with(text, "merge")
    assert "← 0, 1, 2, 3, 4, … +995 more" in merge


def test_dag_collapse_threshold() -> None:
    at_limit = plain_text(render_dag(wide_chord(8), collapse_over=8))
    over_limit = plain_text(render_dag(wide_chord(9), collapse_over=8))

    assert len(lines_with(at_limit, "parse")) == 8
    assert len(lines_with(over_limit, "parse")) == 1
    assert f"parse {TIMES}9" in over_limit


def test_dag_mixed_group_not_collapsed() -> None:
    members = [task("parse", i) for i in range(20)] + [task("other")]
    text = plain_text(render_dag(compile_canvas(group(members))))

    assert len(lines_with(text, "parse")) == 20
    assert TIMES not in text


def test_dag_group_of_chains_not_collapsed() -> None:
    members = [chain(task("fetch", i), task("parse")) for i in range(20)]
    text = plain_text(render_dag(compile_canvas(group(members))))

    assert len(lines_with(text, "parse")) == 20


def test_dag_inner_group_collapses_alone() -> None:
    inner = group(task("leaf", i) for i in range(50))
    spec = compile_canvas(group(inner, task("solo")))

    text = plain_text(render_dag(spec))

    (row,) = lines_with(text, "leaf")
    assert f"leaf {TIMES}50" in row
    assert len(lines_with(text, "solo")) == 1


def test_dag_fits_80_columns_without_colour() -> None:
    long_name = "myproject.pipelines.ingestion.tasks.parse_and_normalise_document"
    canvas = chord(group(task(long_name, i) for i in range(6)), task(long_name + "_2"))
    canvas.link(task("x" * 120))
    views = {
        str(i): NodeView(state, duration_s=3600.0 * i, attempts=i)
        for i, state in enumerate(NODE_STATES)
    }
    spec = compile_canvas(canvas)

    text = plain_text(render_dag(spec, views, expand=True, title="run " + "Z" * 200))

    assert max(len(line) for line in text.splitlines()) <= 80
    for style in STATE_STYLES.values():
        assert style.symbol in text


@pytest.mark.parametrize("width", [40, 60, 120])
def test_dag_fits_other_widths(width: int) -> None:
    views = every_state_views()
    text = plain_text(render_dag(linked_chain(), views), width=width)

    assert max(len(line) for line in text.splitlines()) <= width
    assert "on failure" in text
    assert "3 attempts" in text


def test_dag_plain_console_writes_no_escapes() -> None:
    output = io.StringIO()
    Console(file=output, width=80).print(
        render_dag(linked_chain(), every_state_views())
    )

    text = output.getvalue()
    assert "\x1b[" not in text
    for state in ("succeeded", "failed", "retrying", "running"):
        assert STATE_STYLES[state].symbol in text


def test_dag_colour_follows_state() -> None:
    output = io.StringIO()
    console = Console(
        file=output, width=80, force_terminal=True, color_system="standard"
    )
    console.print(render_dag(chord_of_three(), {"0": NodeView("failed")}))

    assert "\x1b[31m✗" in output.getvalue()


def test_dag_renders_100000_member_group() -> None:
    spec = wide_chord(100_000)

    text = plain_text(render_dag(spec))

    (row,) = lines_with(text, "parse")
    assert f"parse {TIMES}100000" in row
    assert "100000 ·" in row
    assert f"← 0{DASH}99999" in lines_with(text, "merge")[0]


def test_dag_empty_canvas() -> None:
    text = plain_text(render_dag(compile_canvas(group()), title="empty"))

    assert "No nodes: the canvas is empty." in text


def test_dag_spec_out_of_order() -> None:
    spec = GraphSpec(
        nodes=[
            NodeSpec(id="2", task="last", deps=["1"]),
            NodeSpec(id="1", task="middle", deps=["0"]),
            NodeSpec(id="0", task="first"),
        ]
    )

    text = plain_text(render_dag(spec))

    assert layer_headings(text) == ["layer 0", "layer 1", "layer 2"]
    assert text.index("first") < text.index("middle") < text.index("last")


def test_dag_rejects_cycle() -> None:
    spec = GraphSpec(
        nodes=[
            NodeSpec(id="0", task="a", deps=["1"]),
            NodeSpec(id="1", task="b", deps=["0"]),
        ]
    )

    with pytest.raises(InvalidCanvas, match="cycle"):
        render_dag(spec)


# -- the tree ------------------------------------------------------------------


def test_tree_follows_canvas_nesting() -> None:
    text = plain_text(render_tree(linked_chain(), every_state_views()))
    lines = text.splitlines()

    assert lines[0] == "canvas  chain"
    assert "├── chain[1]  chord" in text
    assert "│   ├── chord.header[0]  chain" in text
    (q_line,) = lines_with(text, " q")
    assert q_line.startswith("│   │   └── chain[1]  ✗ 2  q")
    assert "3 attempts" in q_line
    assert lines[-2].startswith(f"├── link[0]  {MINUS} 5  notify (link)")
    assert lines[-1].startswith("└── link_error[0]  ▶ 6  alert (errback)")


def test_tree_collapses_large_group() -> None:
    views = {str(i): NodeView("succeeded") for i in range(1000)}
    views["3"] = NodeView("running")

    text = plain_text(render_tree(wide_chord(1000), views, title="run 01J"))

    assert text.splitlines()[0] == "run 01J  chord"
    (row,) = lines_with(text, "parse")
    assert f"chord.header[0{DASH}999]" in row
    assert f"parse {TIMES}1000" in row
    assert "1 ▶" in row
    assert "999 ✓" in row
    assert len(lines_with(text, "merge")) == 1


def test_tree_expand_shows_every_member() -> None:
    text = plain_text(render_tree(wide_chord(20), expand=True))

    assert len(lines_with(text, "parse")) == 20
    assert "chord.header[19]" in text


def test_tree_lone_signature_with_link() -> None:
    sig = task("add", 1)
    sig.link(task("notify"))

    text = plain_text(render_tree(compile_canvas(sig)))

    assert text.splitlines() == [
        "canvas",
        "├── · 0  add",
        "└── link[0]  · 1  notify (link)",
    ]


# -- DOT -----------------------------------------------------------------------

_DOT_NODE = re.compile(r'^\s*"((?:[^"\\]|\\.)*)" \[label="(?:[^"\\]|\\.)*", .*\];$')
_DOT_EDGE = re.compile(r'^\s*"((?:[^"\\]|\\.)*)" -> "((?:[^"\\]|\\.)*)"( \[.*\])?;$')
_DOT_OTHER = re.compile(
    r'^\s*(digraph stem \{|\}|subgraph "cluster_\d+" \{|\w+=.*;|node \[.*\];)$'
)


def parse_dot(text: str) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Check every DOT line against the statement forms `to_dot` writes.

    Returns:
        The node ids of node statements, and each edge as (source, target,
        attribute list).
    """
    nodes: list[str] = []
    edges: list[tuple[str, str, str]] = []
    for line in text.splitlines():
        if match := _DOT_NODE.match(line):
            nodes.append(match.group(1))
        elif match := _DOT_EDGE.match(line):
            edges.append((match.group(1), match.group(2), match.group(3) or ""))
        else:
            assert _DOT_OTHER.match(line), f"unexpected DOT line: {line!r}"
    return nodes, edges


def test_dot_structure() -> None:
    spec = linked_chain()
    text = to_dot(spec, every_state_views())

    nodes, edges = parse_dot(text)

    assert text.count("{") == text.count("}")
    assert text.startswith("digraph stem {\n")
    assert text.endswith("}\n")
    assert sorted(nodes) == sorted(node.id for node in spec.nodes)
    dep_edges = {(dep, node.id) for node in spec.nodes for dep in node.deps}
    assert {(source, target) for source, target, _ in edges} == dep_edges | {("4", "6")}


def test_dot_edge_styles() -> None:
    _, edges = parse_dot(to_dot(linked_chain()))
    styles = {(source, target): attributes for source, target, attributes in edges}

    assert "style=dashed" in styles[("4", "6")]
    assert 'color="#c92a2a"' in styles[("4", "6")]
    assert "style=dotted" in styles[("4", "5")]
    assert styles[("0", "1")] == ""


def test_dot_labels_and_fills() -> None:
    text = to_dot(linked_chain(), every_state_views())

    assert '"2" [label="2 q\\nfailed 200ms  3 attempts", fillcolor="#ffa8a8"' in text
    assert '"5" [label="5 notify\\nskipped", fillcolor="#dee2e6"' in text
    assert 'style="rounded,filled,dashed"' in lines_with(text, '"5" [label')[0]


def test_dot_groups_are_clusters() -> None:
    text = to_dot(linked_chain())

    assert 'subgraph "cluster_0" {' in text
    cluster = text.split('subgraph "cluster_0" {')[1].split("}")[0]
    assert '"1" [label' in cluster
    assert '"3" [label' in cluster
    assert '"0" [label' not in cluster


def test_dot_escapes_quotes() -> None:
    text = to_dot(compile_canvas(task('say "hi" \\ bye')))

    nodes, _ = parse_dot(text)
    assert nodes == ["0"]
    assert 'label="0 say \\"hi\\" \\\\ bye\\npending"' in text


def test_dot_large_group_lists_every_node() -> None:
    nodes, edges = parse_dot(to_dot(wide_chord(1000)))

    assert len(nodes) == 1001
    assert len(edges) == 1000


# -- Mermaid -------------------------------------------------------------------


def spliced_spec() -> GraphSpec:
    """Build the spec of a run where node 3 replaced itself with nodes 3.0 and 3.1."""
    return GraphSpec(
        nodes=[
            NodeSpec(id="0", task="start"),
            NodeSpec(id="3", task="replaced", deps=["0"]),
            NodeSpec(id="3.0", task='say "hi" #1 <b>', deps=["0"]),
            NodeSpec(id="3.1", task="after", deps=["3.0"]),
        ]
    )


def test_mermaid_id_forms() -> None:
    assert mermaid_id("3") == "n3"
    assert mermaid_id("3.0") == "n3_0"
    assert mermaid_id("3.0.12") == "n3_0_12"
    assert mermaid_id("end") == "x656e64"
    assert mermaid_id("3_0") != mermaid_id("3.0")


def test_mermaid_safe_ids_and_labels() -> None:
    text = to_mermaid(spliced_spec())

    assert text.startswith("flowchart LR\n")
    assert 'n3_0["3.0 say #34;hi#34; #35;1 #60;b#62;<br/>pending"]:::pending' in text
    assert "n3_0 --> n3_1" in text
    assert "n0 --> n3_0" in text
    for line in text.splitlines()[1:]:
        node_id = line.split()[0].split("[")[0]
        assert "." not in node_id


def test_mermaid_class_per_state() -> None:
    text = to_mermaid(linked_chain(), every_state_views())

    for state in NODE_STATES:
        assert len(lines_with(text, f"classDef {state} fill:")) == 1
    assert 'n2["2 q<br/>failed 200ms  3 attempts"]:::failed' in text
    assert 'n5(["5 notify<br/>skipped"]):::skipped' in text


def test_mermaid_edge_styles() -> None:
    text = to_mermaid(linked_chain())
    edges = [line.strip() for line in text.splitlines() if "->" in line]

    assert "n4 -.-> n5" in edges
    assert "n0 --> n1" in edges
    failure_index = edges.index("n4 -.->|on failure| n6")
    assert f"linkStyle {failure_index} stroke:#c92a2a" in text


def test_mermaid_groups_are_subgraphs() -> None:
    text = to_mermaid(linked_chain())

    assert 'subgraph g0["group 0 at chain[1]"]' in text
    subgraph = text.split("subgraph g0")[1].split("\n  end")[0]
    assert "n1[" in subgraph
    assert "n0[" not in subgraph


# -- JSON ----------------------------------------------------------------------


def test_json_round_trip_fields() -> None:
    spec = linked_chain()
    views = every_state_views()

    document = json.loads(to_json(spec, views))

    assert list(document) == ["nodes", "edges", "groups"]
    assert [node["id"] for node in document["nodes"]] == [n.id for n in spec.nodes]
    q_node = document["nodes"][2]
    assert list(q_node) == [
        "id",
        "task",
        "state",
        "deps",
        "duration_s",
        "attempts",
        "role",
        "side",
        "group",
        "path",
    ]
    assert q_node["task"] == "q"
    assert q_node["state"] == "failed"
    assert q_node["deps"] == ["1"]
    assert q_node["duration_s"] == 0.2
    assert q_node["attempts"] == 3
    assert q_node["group"] == 0
    alert = document["nodes"][6]
    assert alert["role"] == "errback"
    assert alert["side"] is True


def test_json_edges_and_groups() -> None:
    document = json.loads(to_json(linked_chain()))

    assert document["edges"][0] == {
        "source": "0",
        "target": "1",
        "kind": "dep",
        "join": "fail_fast",
        "position": 0,
    }
    assert {
        "source": "4",
        "target": "6",
        "kind": "covers",
        "join": None,
        "position": None,
    } in document["edges"]
    assert len(document["edges"]) == 7
    assert document["groups"] == [
        {"id": 0, "path": "chain[1]", "parent": None, "members": [["1", "2"], ["3"]]}
    ]


def test_json_without_views() -> None:
    document = json.loads(to_json(chord_of_three()))

    assert {node["state"] for node in document["nodes"]} == {"pending"}
    assert {node["duration_s"] for node in document["nodes"]} == {None}
    assert document["nodes"][3]["deps"] == ["0", "1", "2"]


# -- NodeView ------------------------------------------------------------------


def test_node_view_rejects_unknown_state() -> None:
    with pytest.raises(ValueError, match=r"'success' is invalid\. Pass one of"):
        NodeView("success")


@pytest.mark.parametrize("duration_s", [-1.0, float("nan"), float("inf")])
def test_node_view_rejects_bad_duration(duration_s: float) -> None:
    with pytest.raises(ValueError, match="duration"):
        NodeView("running", duration_s=duration_s)


def test_node_view_rejects_negative_attempts() -> None:
    with pytest.raises(ValueError, match="Attempt count -1"):
        NodeView("running", attempts=-1)


def test_state_styles_cover_every_state() -> None:
    assert set(STATE_STYLES) == set(NODE_STATES)
    symbols = [style.symbol for style in STATE_STYLES.values()]
    assert all(len(symbol) == 1 for symbol in symbols)
    assert len(set(symbols)) == len(symbols)
