"""Task names and run ids that would reach a terminal as escape sequences."""

from __future__ import annotations

import pytest

from stem import App, signature
from stem.canvas.errors import InvalidCanvas, InvalidOption


@pytest.mark.parametrize(
    "name", ["red\x1b[31m", "title\x1b]0;x\x07", "bidi\u202eflip", "nul\x00", "\ud800"]
)
def test_task_name_with_hidden_character_rejected(name: str) -> None:
    app = App("memory://")
    with pytest.raises(InvalidCanvas, match="control or format character"):
        app.task(name=name)(lambda: None)
    with pytest.raises(InvalidCanvas, match="printable characters only"):
        signature(name)


@pytest.mark.parametrize("name", ["<b>&\"'", "résumé.über", "tasks.add two", "名前"])
def test_task_name_with_printable_characters_accepted(name: str) -> None:
    app = App("memory://")
    task = app.task(name=name)(lambda: 1)
    with app.worker():
        assert task.delay().get(10) == 1


@pytest.mark.parametrize("run_id", ["run\x1b[31m", "run\u202e", "run\n"])
def test_run_id_with_hidden_character_rejected(run_id: str) -> None:
    app = App("memory://")
    task = app.task(name="one")(lambda: 1)
    with pytest.raises(InvalidOption, match="control or format character"):
        task.apply_async(run_id=run_id)
