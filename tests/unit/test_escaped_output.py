"""Text from task code reaches logs and terminals with control characters escaped."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from stem import App
from stem.canvas.primitives import Signature
from stem.canvas.text import printable, printable_json
from stem.cli import main
from stem.engine.ports import TASK_HEADER

#: An erase-screen sequence, a window-title sequence, a carriage return that
#: overwrites the line, and a right-to-left override.
HOSTILE = "\x1b[2J\x1b]0;title\x07 cleared\r \u202e"
RAW = ("\x1b", "\x07", "\r", "\u202e")


@pytest.fixture
def app() -> Iterator[App]:
    made = App()

    @made.task(name="hostile")
    def hostile() -> None:
        raise ValueError(HOSTILE)

    yield made
    made.close()


def test_printable_escapes_controls() -> None:
    assert printable("a\x1b[2Jb\u202e") == "a\\x1b[2Jb\\u202e"
    assert printable("one\ntwo") == "one\\ntwo"


def test_printable_multiline_keeps_newlines() -> None:
    text = printable("one\n\ttwo\r\x1b", multiline=True)

    assert text == "one\n\ttwo\\r\\x1b"


def test_worker_log_escapes_error(app: App, caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.ERROR, logger="stem.engine.worker"),
        app.worker(concurrency=1),
    ):
        result = app.submit(Signature("hostile"))
        result.get(10, propagate=False)

    [record] = [r for r in caplog.records if "failed" in r.getMessage()]
    logged = record.getMessage()
    for char in RAW:
        assert char not in logged
    assert "\\x1b[2J" in logged
    # The traceback keeps its line breaks.
    assert "\nTraceback (most recent call last):\n" in logged


def test_dead_letter_log_escapes_task(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    result = app.submit(Signature("hostile"))
    [message] = app.driver.fetch([app.default_queue], 1, 1.0)
    message.headers[TASK_HEADER] = "missing\x1b[2J"

    with caplog.at_level(logging.WARNING):
        app.driver.dead_letter(message, f"Task {message.headers[TASK_HEADER]!s}")

    logged = " ".join(record.getMessage() for record in caplog.records)
    assert result.id in logged
    assert "\x1b" not in logged
    assert "missing\\x1b[2J" in logged


def test_stem_run_escapes_error(tmp_path: Path) -> None:
    (tmp_path / "hostileflow.py").write_text(
        "from stem import App\n"
        "app = App('memory://')\n"
        "@app.task(name='hostile')\n"
        "def hostile():\n"
        f"    raise ValueError({HOSTILE!r})\n"
        "pipeline = hostile.s()\n"
    )

    result = CliRunner().invoke(
        main, ["run", str(tmp_path / "hostileflow.py"), "--pool", "threads"]
    )

    assert result.exit_code == 1, result.output
    for char in RAW:
        assert char not in result.output
    assert "\\x1b[2J" in result.output


@pytest.mark.parametrize(
    "value",
    [HOSTILE, {"key\u202e": ["\x9b2J", "\U000e0041"]}, "plain é"],
)
def test_printable_json_decodes_back(value: object) -> None:
    text = printable_json(json.dumps(value, indent=2, ensure_ascii=False))

    assert json.loads(text) == value
    for char in (*RAW, "\x9b", "\U000e0041"):
        assert char not in text
    assert "é" in text or "é" not in json.dumps(value, ensure_ascii=False)


def test_stem_run_escapes_value(tmp_path: Path) -> None:
    (tmp_path / "valueflow.py").write_text(
        "from stem import App\n"
        "app = App('memory://')\n"
        "@app.task(name='echo')\n"
        "def echo(value):\n"
        "    return value\n"
        f"pipeline = echo.s({{'text': {HOSTILE!r}}})\n"
    )

    result = CliRunner().invoke(
        main, ["run", str(tmp_path / "valueflow.py"), "--pool", "threads"]
    )

    assert result.exit_code == 0, result.output
    for char in RAW:
        assert char not in result.stdout
    assert json.loads(result.stdout) == {"text": HOSTILE}
