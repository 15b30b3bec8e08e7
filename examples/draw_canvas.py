"""Compose a canvas, compile it to a graph and draw the graph in the terminal.

Run from anywhere after installing Stem::

    python examples/draw_canvas.py

The canvas counts words on three pages: one chain per page (fetch, then
count), a chord that merges the counts, then a step that keeps the top ten.
A link publishes the result, and an errback reports the failed task's id if
any step fails. Nothing runs: the tasks are referred to by name only, so no
app or worker is needed to build, compile or draw the canvas.
"""

from __future__ import annotations

from rich.console import Console

from stem.canvas import Canvas, Signature, chain, chord, compile_canvas, group
from stem.canvas.render import render_dag

PAGES = (
    "https://example.org/a",
    "https://example.org/b",
    "https://example.org/c",
)


def build_canvas() -> Canvas:
    """Build the word-count canvas from named signatures."""
    per_page = [
        chain(Signature("fetch", (url,)), Signature("count_words")) for url in PAGES
    ]
    merged = chord(group(per_page), Signature("merge_counts"))
    canvas = merged | Signature("top_words", (10,))
    canvas.link(Signature("publish"))
    canvas.link_error(Signature("report_failure"))
    return canvas


def main() -> None:
    spec = compile_canvas(build_canvas())
    Console().print(render_dag(spec))


if __name__ == "__main__":
    main()
