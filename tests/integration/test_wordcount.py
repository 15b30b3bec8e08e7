"""The main job on real input: word counts of the standard library."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def wordcount() -> Iterator[ModuleType]:
    sys.path.insert(0, str(EXAMPLES))
    try:
        yield importlib.import_module("wordcount")
    finally:
        sys.path.remove(str(EXAMPLES))


@pytest.fixture(scope="module")
def expected(wordcount: ModuleType) -> list[list[object]]:
    result: list[list[object]] = wordcount.count_directly()
    return result


@pytest.mark.slow
def test_chord_matches_direct_count(
    wordcount: ModuleType, expected: list[list[object]]
) -> None:
    app = wordcount.app
    with app.worker(concurrency=2, pool="threads"):
        result = wordcount.pipeline().apply_async().get(timeout=300)

    assert len(result) == 25
    assert result == expected


@pytest.mark.slow
def test_stem_run_prints_top_words(
    expected: list[list[object]], tmp_path: Path
) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "stem", "run", str(EXAMPLES / "wordcount.py")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines == [f"{word} {count}" for word, count in expected]
    assert "succeeded" in completed.stderr
