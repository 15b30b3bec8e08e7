"""Count the words of every .py file in this Python's standard library.

A map-reduce on the embedded default: chunks of files are counted in
parallel (a group), merged by a chord callback, and the top words are
picked by a chained step. Run it with::

    stem run examples/wordcount.py

or directly with ``python examples/wordcount.py``.
"""

from __future__ import annotations

import collections
import re
import sysconfig
from pathlib import Path

from stem import App, Canvas, chord

app = App()

#: A word is a run of letters, digits and underscores that starts with a letter.
WORD = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
#: Folders under the standard library that hold third-party code, not stdlib.
EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages"})


def source_files() -> list[str]:
    """Return every .py file of the running Python's standard library, sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(
        str(path)
        for path in root.rglob("*.py")
        if EXCLUDED_DIRS.isdisjoint(path.relative_to(root).parts)
    )


def words_of(path: str) -> list[str]:
    """Return the lower-cased words of one file, reading undecodable bytes as U+FFFD."""
    text = Path(path).read_bytes().decode("utf-8", errors="replace")
    return [word.lower() for word in WORD.findall(text)]


@app.task
def count_words(paths: list[str]) -> dict[str, int]:
    """Count the words of a chunk of files."""
    counts: collections.Counter[str] = collections.Counter()
    for path in paths:
        counts.update(words_of(path))
    return dict(counts)


@app.task
def merge(partials: list[dict[str, int]]) -> dict[str, int]:
    """Add up the counts of every chunk."""
    total: collections.Counter[str] = collections.Counter()
    for partial in partials:
        total.update(partial)
    return dict(total)


@app.task
def top_words(counts: dict[str, int], n: int = 25) -> list[list[object]]:
    """Return the ``n`` most frequent words as ``[word, count]``, ties by word."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [[word, count] for word, count in ranked[:n]]


def pipeline(chunk_size: int = 100, n: int = 25) -> Canvas:
    """Build the canvas: count chunks in parallel, merge, then pick the top words."""
    files = source_files()
    chunks = [files[i : i + chunk_size] for i in range(0, len(files), chunk_size)]
    counting = chord([count_words.s(chunk) for chunk in chunks], merge.s())
    return counting | top_words.s(n)


def count_directly(n: int = 25) -> list[list[object]]:
    """Count the same files in one process, with no engine, as the reference result."""
    counts: collections.Counter[str] = collections.Counter()
    for path in source_files():
        counts.update(words_of(path))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [[word, count] for word, count in ranked[:n]]


if __name__ == "__main__":
    with app.worker(pool="processes"):
        for word, count in pipeline().apply_async().get(timeout=600):
            print(word, count)
